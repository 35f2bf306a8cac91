//! The top bar: open a folder (dialog, typed path, examples, recent), continue or follow a run
//! directory, and the frame-time readout.

use std::path::{Path, PathBuf};

use eframe::egui::{self, RichText};

use super::MUTED;
use crate::config::DataSource;
use crate::ui::{Action, Inputs, Persisted};

/// Draws the top bar; asks to open data, pick a folder or continue a run.
pub fn show(
    ui: &mut egui::Ui,
    settings: &mut Persisted,
    inputs: &mut Inputs,
    frame_time: Option<(f32, f32)>,
    actions: &mut Vec<Action>,
) {
    let folder = |p: &Path| Action::OpenData(DataSource::Folder(p.to_path_buf()));
    egui::Panel::top("top").show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            ui.heading("pretext");
            ui.separator();
            if ui
                .button("Open folder…")
                .on_hover_text("Choose a folder of images with the system dialog")
                .clicked()
            {
                actions.push(Action::PickFolder);
            }
            let label = ui.label("Folder path");
            ui.add(
                egui::TextEdit::singleline(&mut inputs.path)
                    .hint_text("type a folder path, or drop a folder on the window")
                    .desired_width(230.0),
            )
            .labelled_by(label.id);
            if ui.button("Open").clicked() {
                actions.push(folder(Path::new(inputs.path.trim())));
            }
            ui.menu_button("Examples", |ui| {
                if ui.button("Built-in scenes").clicked() {
                    actions.push(Action::OpenData(DataSource::default()));
                    ui.close();
                }
                if ui.button("Example photos").clicked() {
                    actions.push(folder(&example_photos()));
                    ui.close();
                }
            });
            ui.menu_button("Recent", |ui| {
                if settings.recent.is_empty() {
                    ui.label("no recent folders");
                }
                for r in &settings.recent {
                    if ui.button(r).clicked() {
                        actions.push(folder(Path::new(r)));
                        ui.close();
                    }
                }
            });
            ui.separator();
            let label = ui.label("Run dir");
            ui.add(
                egui::TextEdit::singleline(&mut inputs.run)
                    .hint_text("runs/…")
                    .desired_width(150.0),
            )
            .labelled_by(label.id);
            if ui
                .button("Continue run")
                .on_hover_text("Load a run directory's curves and model and train on, up to the Epochs set on the left")
                .clicked()
            {
                actions.push(Action::ContinueRun {
                    dir: PathBuf::from(inputs.run.trim()),
                    epochs: Some(settings.config.epochs),
                });
            }
            if ui
                .button("Follow run")
                .on_hover_text(
                    "Show a run directory that another process writes (pretext train in a \
                     terminal, a synced folder from a server) and follow it live",
                )
                .clicked()
            {
                actions.push(Action::FollowRun(PathBuf::from(inputs.run.trim())));
            }
            ui.separator();
            ui.checkbox(&mut settings.show_frame_time, "Frame time");
            if settings.show_frame_time
                && let Some((median, p95)) = frame_time
            {
                // One piece: moved whole to the next row if the bar is full, never split.
                ui.add(
                    egui::Label::new(
                        RichText::new(format!("{median:.1} ms (p95 {p95:.1})"))
                            .monospace()
                            .color(MUTED),
                    )
                    .extend(),
                );
            }
        });
    });
}

/// The folder of example photos: next to the executable's crate, or in the working directory.
pub fn example_photos() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/examples/photos");
    if here.is_dir() {
        here
    } else {
        PathBuf::from("assets/examples/photos")
    }
}
