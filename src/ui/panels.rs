//! The panels of the window; functions taking `&mut egui::Ui` only draw and send commands.

use std::path::Path;

use eframe::egui::{self, Color32, RichText};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::history::smooth;
use super::{DataState, PretextApp, PreviewView, RunStatus, THUMBNAILS_MAX, Tab, texture};
use crate::config::{DataSource, MaskKind, TaskKind};
use crate::data::Dataset;
use crate::tasks::Canvas;
use crate::train::{Command, Outcome, PauseReason};

const ERROR: Color32 = Color32::from_rgb(235, 90, 90);
const MUTED: Color32 = Color32::from_rgb(150, 150, 160);
const WARN: Color32 = Color32::from_rgb(230, 180, 80);

/// A folder dropped on the window opens.
pub fn dropped_folder(app: &mut PretextApp, ui: &egui::Ui) {
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
        app.open_folder(&folder);
    }
}

pub fn top_bar(app: &mut PretextApp, ui: &mut egui::Ui) {
    egui::Panel::top("top").show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            ui.heading("pretext");
            ui.separator();
            if ui
                .button("Open folder…")
                .on_hover_text("Choose a folder of images with the system dialog")
                .clicked()
            {
                app.pick_folder();
            }
            let label = ui.label("Folder path");
            ui.add(
                egui::TextEdit::singleline(&mut app.path_input)
                    .hint_text("type a folder path, or drop a folder on the window")
                    .desired_width(280.0),
            )
            .labelled_by(label.id);
            if ui.button("Open").clicked() {
                let p = std::path::PathBuf::from(app.path_input.trim());
                app.open_folder(&p);
            }
            ui.menu_button("Examples", |ui| {
                if ui.button("Built-in scenes").clicked() {
                    app.open_data(DataSource::default());
                    ui.close();
                }
                if ui.button("Example photos").clicked() {
                    app.open_folder(&example_photos());
                    ui.close();
                }
            });
            ui.menu_button("Recent", |ui| {
                if app.settings.recent.is_empty() {
                    ui.label("no recent folders");
                }
                for r in app.settings.recent.clone() {
                    if ui.button(&r).clicked() {
                        app.open_folder(Path::new(&r));
                        ui.close();
                    }
                }
            });
            ui.separator();
            let label = ui.label("Run dir");
            ui.add(
                egui::TextEdit::singleline(&mut app.run_input)
                    .hint_text("runs/…")
                    .desired_width(180.0),
            )
            .labelled_by(label.id);
            if ui
                .button("Continue run")
                .on_hover_text("Load a run directory's curves and model and train on, up to the Epochs set on the left")
                .clicked()
            {
                let p = std::path::PathBuf::from(app.run_input.trim());
                let epochs = app.settings.config.epochs;
                app.continue_run(&p, Some(epochs));
            }
            ui.separator();
            ui.checkbox(&mut app.settings.show_frame_time, "Frame time");
            if app.settings.show_frame_time
                && let Some((median, p95)) = app.frame_time()
            {
                ui.label(
                    RichText::new(format!("{median:.1} ms (p95 {p95:.1})"))
                        .monospace()
                        .color(MUTED),
                );
            }
        });
    });
}

/// The folder of example photos: next to the executable's crate, or in the working directory.
pub fn example_photos() -> std::path::PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/examples/photos");
    if here.is_dir() {
        here
    } else {
        std::path::PathBuf::from("assets/examples/photos")
    }
}

pub fn status_bar(app: &mut PretextApp, ui: &mut egui::Ui) {
    egui::Panel::bottom("status").show(ui, |ui| {
        ui.horizontal(|ui| {
            let (text, color) = match &app.status {
                RunStatus::Idle => ("ready".to_string(), MUTED),
                RunStatus::Starting => ("starting…".to_string(), MUTED),
                RunStatus::Running => ("training".to_string(), Color32::from_rgb(90, 200, 120)),
                RunStatus::Paused(PauseReason::NonFiniteLoss) => {
                    ("paused: the loss was not finite".to_string(), ERROR)
                }
                RunStatus::Paused(_) => ("paused".to_string(), Color32::from_rgb(230, 190, 80)),
                RunStatus::Finished(Outcome::Completed) => ("finished".to_string(), MUTED),
                RunStatus::Finished(Outcome::Stopped) => ("stopped".to_string(), MUTED),
                RunStatus::Finished(Outcome::InvalidInput(_) | Outcome::Failed(_)) => {
                    ("failed".to_string(), ERROR)
                }
            };
            ui.label(RichText::new(text).color(color).strong());
            if let Some(m) = &app.last_step {
                ui.separator();
                ui.label(format!(
                    "epoch {}/{}  batch {}/{}  step {}  loss {:.4}  {:.0} img/s",
                    m.epoch, m.epochs, m.batch, m.batches, m.step, m.loss, m.images_per_s
                ));
            }
            if let Some(d) = &app.run_dir {
                ui.separator();
                ui.label(RichText::new(d.display().to_string()).color(MUTED));
            }
        });
        if let Some(m) = app.messages.last() {
            let color = if m.error { ERROR } else { MUTED };
            ui.horizontal(|ui| {
                ui.label(RichText::new(&m.text).color(color));
                if app.messages.len() > 1 {
                    ui.collapsing(format!("{} messages", app.messages.len()), |ui| {
                        for m in app.messages.iter().rev() {
                            ui.label(RichText::new(&m.text).color(if m.error {
                                ERROR
                            } else {
                                MUTED
                            }));
                        }
                    });
                }
            });
        }
    });
}

/// Which images the thumbnails show: all of a small set, an even spread of a large one (so
/// every class of a sorted folder shows).
pub fn thumbnail_indices(len: usize) -> Vec<usize> {
    let n = len.min(THUMBNAILS_MAX);
    (0..n).map(|i| i * len / n.max(1)).collect()
}

/// One picture of the thumbnails, `cols` a row.
pub fn thumbnail_atlas(
    ctx: &egui::Context,
    d: &Dataset,
    indices: &[usize],
) -> (Option<egui::TextureHandle>, usize) {
    let n = indices.len();
    if n == 0 {
        return (None, 1);
    }
    let cols = 10usize;
    let rows = n.div_ceil(cols);
    let s = d.size;
    let mut canvas = Canvas::new(cols * s, rows * s, [20, 20, 24]);
    for (i, &idx) in indices.iter().enumerate() {
        canvas.blit(d.image(idx), s, s, 1, (i % cols) * s, (i / cols) * s);
    }
    let img = egui::ColorImage::from_rgb([canvas.width, canvas.height], &canvas.rgb);
    (
        Some(ctx.load_texture("thumbnails", img, egui::TextureOptions::NEAREST)),
        cols,
    )
}

pub fn data_panel(app: &mut PretextApp, ui: &mut egui::Ui) {
    ui.heading("Data");
    let mut inspect = None;
    let mut cancel = false;
    match &app.data {
        DataState::Empty => {
            ui.label("No data: open a folder, or choose Examples → Built-in scenes.");
        }
        DataState::Loading(l) => {
            let (done, total) = l.progress();
            ui.label(format!("Loading {} …", l.source));
            let frac = if total > 0 {
                done as f32 / total as f32
            } else {
                0.0
            };
            ui.add(egui::ProgressBar::new(frac).text(format!("{done}/{total}")));
            cancel = ui.button("Cancel loading").clicked();
        }
        DataState::Failed(e) => {
            ui.label(RichText::new(e).color(ERROR));
        }
        DataState::Ready(d) => {
            let s = &d.summary;
            ui.label(RichText::new(&s.source).strong());
            ui.label(format!("{} images at {} px", s.images, s.size))
                .on_hover_text(format!("loaded in {:.2} s", s.load_secs));
            if s.classes.is_empty() {
                ui.label("unlabelled (no class subfolders)");
            } else {
                egui::CollapsingHeader::new(format!("{} classes", s.classes.len())).show(
                    ui,
                    |ui| {
                        egui::Grid::new("classes").striped(true).show(ui, |ui| {
                            for (name, count) in &s.classes {
                                ui.label(name);
                                ui.label(count.to_string());
                                ui.end_row();
                            }
                        });
                    },
                );
            }
            for (list, what, color) in [
                (&s.skipped, "file(s) skipped", ERROR),
                (&s.partial, "file(s) partly decoded", WARN),
                (&s.ignored, "entr(ies) ignored", MUTED),
            ] {
                if list.is_empty() {
                    continue;
                }
                egui::CollapsingHeader::new(
                    RichText::new(format!("{} {what}", list.len())).color(color),
                )
                .show(ui, |ui| {
                    for (path, reason) in list.iter().take(100) {
                        ui.label(format!("{path}: {reason}"));
                    }
                    if list.len() > 100 {
                        ui.label(format!("… and {} more", list.len() - 100));
                    }
                });
            }
            if let Some(tex) = &d.thumbnails {
                let shown = s.images.min(THUMBNAILS_MAX);
                ui.label(
                    RichText::new(format!(
                        "{shown} of {} shown, spread over the set; click one to inspect it",
                        s.images
                    ))
                    .color(MUTED),
                );
                egui::ScrollArea::vertical()
                    .max_height(220.0)
                    .show(ui, |ui| {
                        let width = ui.available_width().min(320.0);
                        let scale = width / tex.size()[0] as f32;
                        let size = egui::vec2(width, tex.size()[1] as f32 * scale);
                        let r =
                            ui.add(egui::Image::new((tex.id(), size)).sense(egui::Sense::click()));
                        if r.clicked()
                            && let Some(pos) = r.interact_pointer_pos()
                        {
                            let cell = width / d.thumb_cols as f32;
                            let col = ((pos.x - r.rect.left()) / cell) as usize;
                            let row = ((pos.y - r.rect.top()) / cell) as usize;
                            if let Some(&i) = d.thumb_indices.get(row * d.thumb_cols + col) {
                                inspect = Some(i);
                            }
                        }
                    });
            }
        }
    }
    if cancel && let DataState::Loading(l) = &app.data {
        l.cancel();
    }
    if let Some(i) = inspect {
        app.inspect(i);
    }
}

pub fn controls(app: &mut PretextApp, ui: &mut egui::Ui) {
    ui.heading("Training");
    let busy = app.is_training();
    let ready = matches!(app.data, DataState::Ready(_));
    ui.add_enabled_ui(!busy, |ui| settings_ui(app, ui));
    ui.separator();
    ui.horizontal_wrapped(|ui| {
        let paused = matches!(app.status, RunStatus::Paused(_));
        if ui
            .add_enabled(!busy && ready, egui::Button::new("Start"))
            .clicked()
        {
            app.start();
        }
        if ui
            .add_enabled(busy && !paused, egui::Button::new("Pause"))
            .clicked()
        {
            app.send(Command::Pause);
        }
        if ui
            .add_enabled(paused, egui::Button::new("Resume"))
            .clicked()
        {
            app.send(Command::Resume);
        }
        if ui
            .add_enabled(paused, egui::Button::new("Step"))
            .on_hover_text("Train one batch, then pause")
            .clicked()
        {
            app.send(Command::Step);
        }
        if ui
            .add_enabled(busy, egui::Button::new("Stop"))
            .on_hover_text("End the run; it can be continued later")
            .clicked()
        {
            app.send(Command::Stop);
        }
        if ui
            .button("Reset")
            .on_hover_text("Stop and clear curves and previews")
            .clicked()
        {
            app.reset();
        }
    });
    ui.add_enabled_ui(busy, |ui| {
        ui.horizontal(|ui| {
            let l = ui.label("Learning rate now");
            ui.add(
                egui::DragValue::new(&mut app.lr_input)
                    .speed(1e-5)
                    .range(1e-7..=10.0),
            )
            .labelled_by(l.id);
            if ui.button("Set").clicked() {
                let lr = app.lr_input;
                app.send(Command::SetLr(lr));
            }
        });
        if ui.button("Save checkpoint").clicked() {
            app.send(Command::SaveCheckpoint);
        }
    });
}

fn settings_ui(app: &mut PretextApp, ui: &mut egui::Ui) {
    let c = &mut app.settings.config;
    ui.label("Tasks");
    ui.horizontal_wrapped(|ui| {
        for kind in TaskKind::ALL {
            let mut on = c.tasks.contains(&kind);
            if ui.checkbox(&mut on, kind.name()).changed() {
                if on {
                    c.tasks.push(kind);
                    c.tasks.sort();
                } else {
                    c.tasks.retain(|t| *t != kind);
                }
                c.task_weights = vec![1.0; c.tasks.len()];
            }
        }
    });
    let old_size = c.size;
    egui::Grid::new("settings").num_columns(2).show(ui, |ui| {
        let l = ui.label("Epochs");
        ui.add(egui::DragValue::new(&mut c.epochs).range(1..=10_000))
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Batch");
        ui.add(egui::DragValue::new(&mut c.batch).range(2..=4096))
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Learning rate");
        ui.add(
            egui::DragValue::new(&mut c.lr)
                .speed(1e-5)
                .range(1e-7..=10.0),
        )
        .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Image size");
        egui::ComboBox::from_id_salt("size")
            .selected_text(format!("{} px", c.size))
            .show_ui(ui, |ui| {
                for s in [16, 32, 48, 64, 96, 128] {
                    ui.selectable_value(&mut c.size, s, format!("{s} px"));
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Seed");
        ui.add(egui::DragValue::new(&mut c.seed)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Device");
        egui::ComboBox::from_id_salt("device")
            .selected_text(c.device.to_string())
            .show_ui(ui, |ui| {
                for d in crate::model::compiled_devices() {
                    ui.selectable_value(&mut c.device, d, d.to_string());
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();
    });
    ui.horizontal(|ui| {
        let l = ui.label("Start from weights");
        let mut text = c
            .init_from
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if ui
            .add(
                egui::TextEdit::singleline(&mut text)
                    .hint_text("random, or a .safetensors path")
                    .desired_width(170.0),
            )
            .labelled_by(l.id)
            .on_hover_text("A pretext checkpoint or a PyTorch state_dict saved with safetensors")
            .changed()
        {
            c.init_from = if text.trim().is_empty() {
                None
            } else {
                Some(text.trim().into())
            };
        }
    });
    let t = &mut c.settings;
    egui::CollapsingHeader::new("Task settings").show(ui, |ui| {
        ui.add(egui::Slider::new(&mut t.temperature, 0.05..=2.0).text("temperature τ"));
        ui.horizontal(|ui| {
            ui.label("mask");
            for (k, name) in [
                (MaskKind::Center, "centre"),
                (MaskKind::Random, "random"),
                (MaskKind::Blocks, "blocks"),
            ] {
                ui.selectable_value(&mut t.mask, k, name);
            }
        });
        ui.add(egui::Slider::new(&mut t.mask_size, 0.1..=0.8).text("mask size"));
        ui.add(
            egui::Slider::new(&mut t.color_threshold, 1.0..=40.0).text("colour threshold (a*b*)"),
        );
        ui.add(egui::Slider::new(&mut t.patch_gap, 0.0..=0.5).text("patch gap"));
    });
    egui::CollapsingHeader::new("Augmentation strengths").show(ui, |ui| {
        let a = &mut t.augment;
        ui.add(egui::Slider::new(&mut a.crop_min_scale, 0.05..=1.0).text("crop min scale"));
        ui.add(egui::Slider::new(&mut a.flip_p, 0.0..=1.0).text("flip p"));
        ui.add(egui::Slider::new(&mut a.jitter_p, 0.0..=1.0).text("jitter p"));
        ui.add(egui::Slider::new(&mut a.brightness, 0.0..=1.0).text("brightness"));
        ui.add(egui::Slider::new(&mut a.contrast, 0.0..=1.0).text("contrast"));
        ui.add(egui::Slider::new(&mut a.saturation, 0.0..=1.0).text("saturation"));
        ui.add(egui::Slider::new(&mut a.hue, 0.0..=0.5).text("hue"));
        ui.add(egui::Slider::new(&mut a.gray_p, 0.0..=1.0).text("grey p"));
        ui.add(egui::Slider::new(&mut a.blur_p, 0.0..=1.0).text("blur p"));
    });
    if c.size != old_size {
        // The data is kept at the working size: load it again.
        let source = c.data.clone();
        app.open_data(source);
    }
}

pub fn central(app: &mut PretextApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.selectable_value(&mut app.tab, Tab::Training, "Training");
        ui.selectable_value(&mut app.tab, Tab::Augmentations, "Augmentations");
        ui.selectable_value(&mut app.tab, Tab::Inspect, "Inspect image");
        ui.selectable_value(&mut app.tab, Tab::Math, "Math");
        ui.selectable_value(&mut app.tab, Tab::Explorer, "Explorer");
    });
    ui.separator();
    if let Some(m) = app.messages.iter().rev().find(|m| m.error) {
        let show = matches!(
            app.status,
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
    match app.tab {
        Tab::Training => training_tab(app, ui),
        Tab::Augmentations => augment_tab(app, ui),
        Tab::Inspect => inspect_tab(app, ui),
        Tab::Math => super::math_panel::math_tab(app, ui),
        Tab::Explorer => super::explorer::explorer_tab(app, ui),
    }
}

/// A colour per task, so a task's raw, smoothed and baseline curves read as one.
fn task_color(name: &str) -> Color32 {
    match name.rsplit('/').next().unwrap_or(name) {
        "colorization" => Color32::from_rgb(240, 150, 60),
        "inpainting" => Color32::from_rgb(170, 120, 240),
        "rotation" => Color32::from_rgb(70, 200, 190),
        "patch" => Color32::from_rgb(230, 210, 80),
        "contrastive" => Color32::from_rgb(240, 100, 140),
        _ => Color32::from_rgb(200, 200, 210),
    }
}

/// A tick value with as many decimals as the grid step needs (scientific for tiny values).
fn tick_label(v: f64, step: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        return format!("{v:.0e}");
    }
    let decimals = (-step.abs().max(1e-12).log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{v:.decimals$}")
}

fn stage_color(stage: &str) -> Color32 {
    match stage {
        "stem" => Color32::from_rgb(120, 160, 255),
        "l1" => Color32::from_rgb(110, 210, 170),
        "l2" => Color32::from_rgb(240, 200, 90),
        _ => Color32::from_rgb(240, 120, 120),
    }
}

/// kNN accuracy per stage, with raw pixels as a dashed floor.
fn plot_knn(app: &PretextApp, ui: &mut egui::Ui, lines: Vec<Line<'_>>) {
    let pixels = app.knn_pixels;
    let start = app.knn_start;
    ui.vertical(|ui| {
        ui.label(
            RichText::new("kNN accuracy per encoder stage (%) — held-out labels, k = 20").strong(),
        );
        Plot::new("knn")
            .height(140.0)
            .legend(Legend::default())
            .x_axis_label("step")
            .include_y(0.0)
            .include_y(100.0)
            .show(ui, |plot_ui| {
                for l in lines {
                    plot_ui.line(l);
                }
                if let Some(p) = pixels {
                    plot_ui.hline(
                        egui_plot::HLine::new("raw pixels", p)
                            .color(Color32::from_gray(160))
                            .style(egui_plot::LineStyle::dashed_loose()),
                    );
                }
                if let Some(z) = start {
                    plot_ui.hline(
                        egui_plot::HLine::new("z before training (random init)", z)
                            .color(stage_color("l3 (z)"))
                            .style(egui_plot::LineStyle::dotted_loose()),
                    );
                }
            });
    });
}

/// How a series is drawn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Raw,
    Smoothed,
    Baseline,
}

fn series_line<'a>(app: &PretextApp, name: &str, label: String, style: Style) -> Option<Line<'a>> {
    let h = app.curves.series.get(name)?;
    let mut pts = h.points();
    if style != Style::Raw {
        pts = smooth(&pts, app.settings.smoothing);
    }
    let per_epoch = app.curves.batches_per_epoch.max(1) as f64;
    let log = app.settings.log_scale;
    let pts: Vec<[f64; 2]> = pts
        .into_iter()
        .map(|[x, y]| {
            let x = if app.settings.x_in_epochs {
                x / per_epoch
            } else {
                x
            };
            let y = if log { y.max(1e-12).log10() } else { y };
            [x, y]
        })
        .collect();
    let color = task_color(name);
    let line = Line::new(label, PlotPoints::from(pts));
    Some(match style {
        Style::Raw => line.color(color.gamma_multiply(0.35)).width(1.0),
        Style::Smoothed => line.color(color).width(2.0),
        Style::Baseline => line
            .color(color.gamma_multiply(0.7))
            .style(egui_plot::LineStyle::dashed_loose()),
    })
}

fn plot(
    app: &PretextApp,
    ui: &mut egui::Ui,
    id: &str,
    title: &str,
    lines: Vec<Line<'_>>,
    height: f32,
) {
    plot_with(app, ui, id, title, lines, height, None);
}

/// A plot; `y_range` fixes the value axis (e.g. 0 to the largest learning rate, so a constant
/// curve does not sit on an arbitrary axis).
fn plot_with(
    app: &PretextApp,
    ui: &mut egui::Ui,
    id: &str,
    title: &str,
    lines: Vec<Line<'_>>,
    height: f32,
    y_range: Option<(f64, f64)>,
) {
    ui.vertical(|ui| {
        ui.label(RichText::new(title).strong());
        let log = app.settings.log_scale;
        let mut p = Plot::new(id)
            .height(height)
            .legend(Legend::default())
            .x_axis_label(if app.settings.x_in_epochs {
                "epoch"
            } else {
                "step"
            });
        if log {
            p = p.y_axis_formatter(|m, _| format!("1e{:.1}", m.value));
        } else {
            p = p.y_axis_formatter(|m, _| tick_label(m.value, m.step_size));
        }
        p.show(ui, |plot_ui| {
            for l in lines {
                plot_ui.line(l);
            }
            if let Some((lo, hi)) = y_range {
                let (lo, hi) = if log {
                    (lo.max(1e-12).log10(), hi.max(1e-12).log10())
                } else {
                    (lo, hi)
                };
                plot_ui.set_plot_bounds_y(lo..=hi);
            }
        });
    });
}

fn training_tab(app: &mut PretextApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.add(egui::Slider::new(&mut app.settings.smoothing, 0.0..=0.99).text("smoothing"));
        ui.checkbox(&mut app.settings.log_scale, "log scale");
        ui.checkbox(&mut app.settings.x_in_epochs, "x in epochs");
    });
    if let Some(e) = &app.last_epoch {
        ui.add(
            egui::Label::new(
                RichText::new(crate::cli::epoch_line(e))
                    .small()
                    .color(MUTED),
            )
            .wrap(),
        );
    }
    let tasks: Vec<TaskKind> = app.settings.config.tasks.clone();
    let width = ui.available_width();
    let plot_w = (width * 0.55).max(300.0);
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width(plot_w);
            egui::ScrollArea::vertical()
                .id_salt("plots")
                .show(ui, |ui| {
                    let mut loss_lines = Vec::new();
                    for t in &tasks {
                        let n = format!("loss/{t}");
                        loss_lines.extend(series_line(app, &n, format!("{t}"), Style::Raw));
                        loss_lines.extend(series_line(app, &n, format!("{t}"), Style::Smoothed));
                    }
                    loss_lines.extend(series_line(
                        app,
                        "loss/total",
                        "total".into(),
                        Style::Smoothed,
                    ));
                    plot(app, ui, "loss", "Loss", loss_lines, 190.0);
                    let mut metric_lines = Vec::new();
                    for t in &tasks {
                        metric_lines.extend(series_line(
                            app,
                            &format!("metric/{t}"),
                            format!("{t}"),
                            Style::Smoothed,
                        ));
                        metric_lines.extend(series_line(
                            app,
                            &format!("baseline/{t}"),
                            format!("{t} baseline"),
                            Style::Baseline,
                        ));
                    }
                    plot(
                        app,
                        ui,
                        "metric",
                        "Proxy metric (% or dB)",
                        metric_lines,
                        190.0,
                    );
                    if app.curves.series.contains_key("gauge/rankme") {
                        let lines = vec![
                            series_line(
                                app,
                                "gauge/rankme",
                                "RankMe / d (share of dimensions in use)".into(),
                                Style::Raw,
                            )
                            .map(|l| l.width(2.0).color(Color32::from_rgb(120, 200, 255))),
                            series_line(
                                app,
                                "gauge/std",
                                "std of L2-normalised z × √d (1 = evenly spread)".into(),
                                Style::Raw,
                            )
                            .map(|l| l.width(2.0).color(Color32::from_rgb(240, 170, 90))),
                        ];
                        plot(
                            app,
                            ui,
                            "gauges",
                            "Collapse gauges of z (1 = fully spread, 0 = collapsed)",
                            lines.into_iter().flatten().collect(),
                            110.0,
                        );
                    }
                    if app.curves.series.contains_key("gauge/alignment") {
                        let lines = vec![
                            series_line(
                                app,
                                "gauge/alignment",
                                "alignment E‖z − z⁺‖² of two views (lower = views agree)".into(),
                                Style::Raw,
                            )
                            .map(|l| l.width(2.0).color(Color32::from_rgb(130, 220, 130))),
                            series_line(
                                app,
                                "gauge/uniformity",
                                "uniformity log E exp(−2‖zᵢ − zⱼ‖²) (lower = more spread)".into(),
                                Style::Raw,
                            )
                            .map(|l| l.width(2.0).color(Color32::from_rgb(220, 130, 220))),
                        ];
                        plot(
                            app,
                            ui,
                            "align",
                            "Alignment and uniformity of z (Wang & Isola 2020)",
                            lines.into_iter().flatten().collect(),
                            110.0,
                        );
                    }
                    if app.curves.series.keys().any(|k| k.starts_with("knn/")) {
                        let mut knn_lines = Vec::new();
                        for stage in crate::eval::embed::STAGES {
                            knn_lines.extend(
                                series_line(
                                    app,
                                    &format!("knn/{stage}"),
                                    stage.to_string(),
                                    Style::Raw,
                                )
                                .map(|l| l.width(2.0).color(stage_color(stage))),
                            );
                        }
                        plot_knn(app, ui, knn_lines);
                    } else if let Some(why) = &app.knn_not_measured {
                        ui.label(
                            RichText::new(format!("kNN accuracy: not measured ({why})"))
                                .color(MUTED),
                        );
                    }
                    ui.columns(2, |cols| {
                        let lr_max = app
                            .curves
                            .series
                            .get("lr")
                            .map_or(app.settings.config.lr, |h| {
                                h.points().iter().fold(0.0f64, |m, p| m.max(p[1]))
                            });
                        let lr = series_line(app, "lr", "lr".into(), Style::Raw)
                            .into_iter()
                            .collect();
                        let range = if app.settings.log_scale {
                            (lr_max / 10.0, lr_max * 2.0)
                        } else {
                            (0.0, lr_max * 1.2)
                        };
                        plot_with(
                            app,
                            &mut cols[0],
                            "lr",
                            "Learning rate",
                            lr,
                            120.0,
                            Some(range),
                        );
                        let ips =
                            series_line(app, "images_per_s", "images/s".into(), Style::Smoothed)
                                .into_iter()
                                .collect();
                        plot(app, &mut cols[1], "ips", "Images per second", ips, 120.0);
                    });
                });
        });
        ui.vertical(|ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Pretext outputs on the inspection batch").strong());
            if app.previews.is_empty() {
                ui.label(
                    RichText::new(
                        "Press Start: previews appear before the first step and after each epoch.",
                    )
                    .color(MUTED),
                );
            }
            egui::ScrollArea::vertical()
                .id_salt("previews")
                .show(ui, |ui| {
                    let kinds: Vec<TaskKind> = app.previews.keys().copied().collect();
                    for k in kinds {
                        if let Some(p) = app.previews.get(&k)
                            && preview_ui(ui, p, ui.available_width().min(420.0)).clicked()
                        {
                            app.zoom = Some(k);
                        }
                    }
                });
        });
    });
}

fn preview_ui(ui: &mut egui::Ui, p: &PreviewView, max_width: f32) -> egui::Response {
    ui.label(RichText::new(&p.caption).small());
    let scale = (max_width / p.size[0] as f32).min(2.0);
    let size = egui::vec2(p.size[0] as f32 * scale, p.size[1] as f32 * scale);
    ui.add(egui::Image::new((p.texture.id(), size)).sense(egui::Sense::click()))
        .on_hover_text("Click to zoom")
}

pub fn zoom_window(app: &mut PretextApp, ui: &mut egui::Ui) {
    let Some(k) = app.zoom else {
        return;
    };
    let mut open = true;
    if let Some(p) = app.previews.get(&k) {
        egui::Window::new(format!("{k} preview"))
            .open(&mut open)
            .resizable(true)
            .show(ui.ctx(), |ui| {
                ui.label(&p.caption);
                egui::ScrollArea::both().show(ui, |ui| {
                    let size = egui::vec2(p.size[0] as f32 * 2.0, p.size[1] as f32 * 2.0);
                    ui.add(egui::Image::new((p.texture.id(), size)));
                });
            });
    }
    if !open {
        app.zoom = None;
    }
}

/// T(x) samples of the first images for the current augmentation settings.
fn augment_tab(app: &mut PretextApp, ui: &mut egui::Ui) {
    let DataState::Ready(d) = &app.data else {
        ui.label("Load data to see augmentations.");
        return;
    };
    ui.horizontal(|ui| {
        ui.label("Random views x⁺ = T(x) with the settings on the left (contrastive task); each row is one image.");
        if ui.button("Resample").clicked() {
            app.augment_seed += 1;
        }
    });
    let a = &app.settings.config.settings.augment;
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{a:?}{}{}", app.augment_seed, d.summary.source).hash(&mut h);
        h.finish()
    };
    if app.augment_view.as_ref().map(|v| v.0) != Some(key) {
        let data = &d.data;
        let s = data.size;
        let f = crate::tasks::preview_factor(s);
        let cell = s * f;
        let rows = data.len().min(6);
        let per_row = 6;
        let mut canvas = Canvas::new(
            (per_row + 1) * (cell + 6) + 6,
            rows * (cell + 6) + 6,
            [24, 24, 28],
        );
        for r in 0..rows {
            let i = (r * (data.len() / rows) + r) % data.len();
            canvas.blit(data.image(i), s, s, f, 6, 6 + r * (cell + 6));
            let mut rng = crate::rng::Rng::derive(app.augment_seed, &[i as u64]);
            for v in 0..per_row {
                let (img, _) = crate::data::augment::augment(data.image(i), s, a, &mut rng);
                let bytes = crate::data::augment::unit_to_bytes(&img);
                canvas.blit(
                    &bytes,
                    s,
                    s,
                    f,
                    6 + (v + 1) * (cell + 6) + 6,
                    6 + r * (cell + 6),
                );
            }
        }
        let view = PreviewView {
            caption: "original | six views T(x)".into(),
            texture: texture(ui.ctx(), "augment", &canvas),
            size: [canvas.width, canvas.height],
        };
        app.augment_view = Some((key, view));
    }
    if let Some((_, v)) = &app.augment_view {
        preview_ui(ui, v, ui.available_width().min(900.0));
    }
}

fn inspect_tab(app: &mut PretextApp, ui: &mut egui::Ui) {
    match &app.inspection {
        None => {
            ui.label("Click a thumbnail in the data panel during or after a run to see every task's prediction for it.");
        }
        Some((i, views)) => {
            let name = match &app.data {
                DataState::Ready(d) => d.data.names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            };
            ui.label(RichText::new(format!("Image {i}: {name}")).strong());
            egui::ScrollArea::vertical().show(ui, |ui| {
                for v in views {
                    preview_ui(ui, v, ui.available_width().min(600.0));
                }
            });
        }
    }
}
