//! The window's panels, one file each. A panel reads the run model and the data, changes only
//! its own state (its tab, its text fields, the settings it edits), and returns what it wants
//! done as [`Action`]s; it never sends a command, reads a file or computes a picture itself.

pub mod augment;
mod contest;
mod controls;
mod data;
mod explorer;
mod inspect;
mod math;
mod plots;
mod runs;
mod status_bar;
mod top_bar;
mod training;
mod zoom;

use std::path::Path;

use eframe::egui::{self, Color32, RichText};

use super::{Action, DataState, PretextApp, PreviewView, RunStatus, Tab};
use crate::train::{Outcome, PauseReason};
pub use data::{atlas, thumbnail_atlas, thumbnail_indices};

const ERROR: Color32 = Color32::from_rgb(235, 90, 90);
const MUTED: Color32 = Color32::from_rgb(150, 150, 160);
const WARN: Color32 = Color32::from_rgb(230, 180, 80);

/// Draws the whole window; returns what the panels asked for.
pub fn draw(app: &mut PretextApp, ui: &mut egui::Ui) -> Vec<Action> {
    let mut actions = Vec::new();
    dropped_folder(ui, &mut actions);
    let frame_time = app.frame_time();
    top_bar::show(
        ui,
        &mut app.settings,
        &mut app.inputs,
        frame_time,
        &mut actions,
    );
    status_bar::show(ui, &app.run, &mut actions);
    egui::Panel::left("controls")
        .default_size(330.0)
        .show(ui, |ui| {
            // The run's buttons stay in view however far the settings above them scroll.
            egui::Panel::bottom("run buttons").show(ui, |ui| {
                controls::run_buttons(ui, &app.run, &app.data, &mut app.inputs.lr, &mut actions);
            });
            // The bar always shows: the settings go on below the run's buttons.
            egui::ScrollArea::vertical()
                .scroll_bar_visibility(egui::scroll_area::ScrollBarVisibility::AlwaysVisible)
                .show(ui, |ui| {
                    data::show(ui, &app.data, &mut app.settings.config.cache, &mut actions);
                    ui.separator();
                    controls::show(ui, &app.run, &mut app.settings.config, &mut actions);
                });
        });
    egui::CentralPanel::default_margins().show(ui, |ui| central(ui, app, &mut actions));
    zoom::show(ui, &app.tabs.previews, &mut app.tabs.zoom, &mut actions);
    actions
}

/// A folder dropped on the window opens.
fn dropped_folder(ui: &egui::Ui, actions: &mut Vec<Action>) {
    let dropped: Vec<std::path::PathBuf> = ui.ctx().input(|i| {
        i.raw
            .dropped_files
            .iter()
            .map(|f| f.path().to_path_buf())
            .filter(|p| !p.as_os_str().is_empty())
            .collect()
    });
    if let Some(p) = dropped.first() {
        let folder = if p.is_dir() {
            p.clone()
        } else {
            p.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        actions.push(Action::OpenData(crate::config::DataSource::Folder(folder)));
    }
}

/// The tab bar, an error banner when the run failed, and the tab.
fn central(ui: &mut egui::Ui, app: &mut PretextApp, actions: &mut Vec<Action>) {
    ui.horizontal(|ui| {
        let tab = &mut app.tabs.tab;
        ui.selectable_value(tab, Tab::Training, "Training");
        ui.selectable_value(tab, Tab::Augmentations, "Augmentations");
        ui.selectable_value(tab, Tab::Inspect, "Inspect image");
        ui.selectable_value(tab, Tab::Math, "Math");
        ui.selectable_value(tab, Tab::Explorer, "Explorer");
        ui.selectable_value(tab, Tab::Runs, "Runs");
    });
    ui.separator();
    error_banner(ui, app);
    match app.tabs.tab {
        Tab::Training => training::show(
            ui,
            &app.run,
            &mut app.settings,
            &app.tabs.previews,
            &mut app.tabs.zoom,
        ),
        Tab::Augmentations => augment::show(
            ui,
            &app.data,
            &app.settings.config.settings.augment,
            &mut app.tabs.augment,
            actions,
        ),
        Tab::Inspect => inspect::show(ui, app.tabs.inspection.as_ref(), &app.data),
        Tab::Math => math::show(ui, &app.run, &mut app.tabs.math, actions),
        Tab::Explorer => explorer::show(ui, &app.run, &app.data, &mut app.tabs.explorer, actions),
        Tab::Runs => {
            let can_start = if app.run.is_training() {
                Err("stop the current run first: a contest needs the CPU to itself")
            } else if !matches!(app.data, DataState::Ready(_)) {
                Err("open the data to compare the tasks on first")
            } else {
                Ok(())
            };
            egui::ScrollArea::vertical()
                .id_salt("runs-tab")
                .show(ui, |ui| {
                    egui::CollapsingHeader::new(
                        RichText::new("Compare tasks on this data: a fair contest").strong(),
                    )
                    .default_open(true)
                    .show(ui, |ui| {
                        contest::show(
                            ui,
                            &mut app.settings.contest,
                            &mut app.tabs.runs.contest,
                            can_start,
                            actions,
                        );
                    });
                    ui.separator();
                    runs::show(
                        ui,
                        &mut app.tabs.runs,
                        &mut app.inputs.runs_root,
                        app.following.as_deref(),
                        app.settings.smoothing,
                        actions,
                    );
                });
        }
    }
}

/// The last error, on red, while the run or the data failed.
fn error_banner(ui: &mut egui::Ui, app: &PretextApp) {
    let Some(m) = app.run.messages.iter().rev().find(|m| m.error) else {
        return;
    };
    let show = matches!(
        app.run.status,
        RunStatus::Paused(PauseReason::NonFiniteLoss)
            | RunStatus::Finished(Outcome::Failed(_) | Outcome::InvalidInput(_))
    ) || matches!(app.data, DataState::Failed(_));
    if show {
        egui::Frame::new()
            .fill(Color32::from_rgb(70, 25, 25))
            .inner_margin(8.0)
            .show(ui, |ui| {
                ui.label(RichText::new(&m.text).color(Color32::WHITE));
            });
    }
}

/// A picture with its caption, at most `max_width` wide; clicking it is the caller's to read.
fn preview_ui(ui: &mut egui::Ui, p: &PreviewView, max_width: f32) -> egui::Response {
    ui.label(RichText::new(&p.caption).small());
    let scale = (max_width / p.size[0] as f32).min(2.0);
    let size = egui::vec2(p.size[0] as f32 * scale, p.size[1] as f32 * scale);
    ui.add(egui::Image::new((p.texture.id(), size)).sense(egui::Sense::click()))
        .on_hover_text("Click to zoom")
}
