//! The Math panel: draws the steps that [`crate::math::steps`] derives from a frozen batch.

use std::hash::{Hash, Hasher};

use eframe::egui::{self, Color32, RichText, Sense};

use super::PretextApp;
use crate::math::{self, Picture, Step};
use crate::train::Command;

const ACCENT: Color32 = Color32::from_rgb(80, 150, 255);
const BAR: Color32 = Color32::from_rgb(170, 170, 180);
/// Images in a frozen batch.
pub const FROZEN_IMAGES: usize = 8;

fn heat(t: f32) -> Color32 {
    let t = t.clamp(0.0, 1.0);
    if t < 0.5 {
        let u = t * 2.0;
        Color32::from_rgb(
            (40.0 + 215.0 * u) as u8,
            (70.0 + 185.0 * u) as u8,
            (200.0 + 55.0 * u) as u8,
        )
    } else {
        let u = (t - 0.5) * 2.0;
        Color32::from_rgb(255, (255.0 - 195.0 * u) as u8, (255.0 - 215.0 * u) as u8)
    }
}

/// What a click on a picture chose.
enum Pick {
    Example(usize),
    /// A cell of a heat map: a pair of views, or a pixel.
    Cell(usize, usize),
}

pub fn math_tab(app: &mut PretextApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        let can = app.is_training() || matches!(app.status, super::RunStatus::Finished(_));
        if ui
            .add_enabled(can, egui::Button::new("Freeze batch"))
            .on_hover_text("Take a batch of the data as the model sees it now and derive every step from it")
            .clicked()
        {
            app.send(Command::Freeze {
                images: FROZEN_IMAGES,
                eta: None,
            });
        }
        match &app.math {
            Some(r) => ui.label(format!("batch of {FROZEN_IMAGES} images frozen at step {}", r.step)),
            None => ui.label("Start a run, then freeze a batch to step through what the network computes with its numbers."),
        };
    });
    let Some(report) = app.math.clone() else {
        return;
    };
    ui.horizontal(|ui| {
        for (i, t) in report.tasks.iter().enumerate() {
            if ui
                .selectable_label(app.math_sel.task == i, t.task.name())
                .clicked()
            {
                app.math_sel.task = i;
                app.math_sel.temperature = None;
                app.math_step = 0;
            }
        }
    });
    let steps = math::steps(&report, &app.math_sel);
    if steps.is_empty() {
        return;
    }
    let (prev, next) = ui.input(|i| {
        (
            i.key_pressed(egui::Key::ArrowLeft),
            i.key_pressed(egui::Key::ArrowRight),
        )
    });
    if prev {
        app.math_step = app.math_step.saturating_sub(1);
    }
    if next {
        app.math_step = (app.math_step + 1).min(steps.len() - 1);
    }
    app.math_step = app.math_step.min(steps.len() - 1);
    ui.horizontal(|ui| {
        if ui
            .add_enabled(app.math_step > 0, egui::Button::new("Previous"))
            .clicked()
        {
            app.math_step -= 1;
        }
        if ui
            .add_enabled(app.math_step + 1 < steps.len(), egui::Button::new("Next"))
            .clicked()
        {
            app.math_step += 1;
        }
        ui.label(format!(
            "step {} of {} (← → keys)",
            app.math_step + 1,
            steps.len()
        ));
        ui.separator();
        let examples = report
            .tasks
            .get(app.math_sel.task)
            .map_or(1, |t| t.z.len())
            .max(1);
        let l = ui.label("example");
        ui.add(egui::DragValue::new(&mut app.math_sel.example).range(0..=examples - 1))
            .labelled_by(l.id);
        if let Some(t) = report.tasks.get(app.math_sel.task)
            && let math::TaskMath::Contrastive { temperature, .. } = t.math
        {
            let mut tau = app.math_sel.temperature.unwrap_or(temperature);
            let l = ui.label("τ");
            if ui
                .add(egui::Slider::new(&mut tau, 0.02..=2.0).logarithmic(true))
                .labelled_by(l.id)
                .changed()
            {
                app.math_sel.temperature = Some(tau);
            }
        }
    });
    ui.separator();
    let step = &steps[app.math_step];
    egui::ScrollArea::vertical().id_salt("math").show(ui, |ui| {
        if let Some(pick) = step_ui(app, ui, step) {
            match pick {
                Pick::Example(i) => app.math_sel.example = i,
                Pick::Cell(a, b) if step.kind == math::StepKind::Reconstruction => {
                    app.math_sel.pixel = Some((a, b));
                }
                Pick::Cell(a, b) => {
                    app.math_sel.example = a;
                    app.math_sel.other = b;
                }
            }
        }
    });
}

fn step_ui(app: &mut PretextApp, ui: &mut egui::Ui, step: &Step) -> Option<Pick> {
    ui.heading(&step.title);
    ui.label(
        RichText::new(&step.formula)
            .size(17.0)
            .monospace()
            .color(Color32::from_rgb(235, 235, 180)),
    );
    ui.add(egui::Label::new(&step.text).wrap());
    ui.add_space(6.0);
    egui::Grid::new("values").striped(true).show(ui, |ui| {
        for v in &step.values {
            ui.label(&v.label);
            ui.label(RichText::new(format_value(v.value)).monospace().strong())
                .on_hover_text(format!("{} = {}", v.how, v.value));
            ui.end_row();
        }
    });
    ui.add_space(6.0);
    let mut pick = None;
    ui.horizontal_wrapped(|ui| {
        for p in &step.pictures {
            ui.vertical(|ui| {
                if let Some(x) = picture_ui(app, ui, p) {
                    pick = Some(x);
                }
            });
        }
    });
    pick
}

fn format_value(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else if v.abs() >= 1e4 || v.abs() < 1e-3 {
        format!("{v:.4e}")
    } else {
        format!("{v:.5}")
    }
}

fn picture_ui(app: &mut PretextApp, ui: &mut egui::Ui, p: &Picture) -> Option<Pick> {
    match p {
        Picture::Image { label, size, rgb } => {
            ui.label(RichText::new(label).small());
            let mut h = std::collections::hash_map::DefaultHasher::new();
            rgb.hash(&mut h);
            let key = h.finish();
            let tex = app.math_textures.entry(key).or_insert_with(|| {
                let img = egui::ColorImage::from_rgb([*size, *size], rgb);
                ui.ctx()
                    .load_texture(format!("math-{key}"), img, egui::TextureOptions::NEAREST)
            });
            let side = (*size as f32 * 4.0).min(160.0);
            ui.add(egui::Image::new((tex.id(), egui::vec2(side, side))));
            None
        }
        Picture::Bars {
            label,
            values,
            highlight,
            names,
        } => {
            ui.label(RichText::new(label).small());
            let width = if values.len() > 16 { 420.0 } else { 260.0 };
            let (resp, painter) = ui.allocate_painter(egui::vec2(width, 110.0), Sense::click());
            let rect = resp.rect;
            painter.rect_filled(rect, 2.0, Color32::from_gray(28));
            let max = values.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let has_neg = values.iter().any(|v| *v < 0.0);
            let label_h = if !names.is_empty() && names.len() <= 12 {
                16.0
            } else {
                0.0
            };
            let plot_h = rect.height() - label_h;
            let zero = if has_neg {
                rect.top() + plot_h / 2.0
            } else {
                rect.top() + plot_h
            };
            let scale = if has_neg { plot_h / 2.0 } else { plot_h } / max;
            let bw = rect.width() / values.len().max(1) as f32;
            for (k, v) in values.iter().enumerate() {
                let x0 = rect.left() + k as f32 * bw;
                let y = zero - v * scale;
                let r = egui::Rect::from_x_y_ranges(
                    x0 + bw * 0.1..=x0 + bw * 0.9,
                    y.min(zero)..=y.max(zero),
                );
                painter.rect_filled(r, 0.0, if Some(k) == *highlight { ACCENT } else { BAR });
                if label_h > 0.0 {
                    painter.text(
                        egui::pos2(x0 + bw / 2.0, rect.bottom() - 8.0),
                        egui::Align2::CENTER_CENTER,
                        &names[k],
                        egui::FontId::proportional(11.0),
                        Color32::from_gray(200),
                    );
                }
            }
            let hovered = resp.hover_pos().map(|pos| {
                (((pos.x - rect.left()) / bw) as usize).min(values.len().saturating_sub(1))
            });
            let resp = match hovered {
                Some(k) => resp.on_hover_text(format!(
                    "[{k}]{} = {}",
                    names.get(k).map(|n| format!(" {n}")).unwrap_or_default(),
                    values[k]
                )),
                None => resp,
            };
            if resp.clicked()
                && let Some(k) = hovered
                && (label.contains("per anchor") || label.contains("per example"))
            {
                return Some(Pick::Example(k));
            }
            None
        }
        Picture::Heatmap {
            label,
            rows,
            cols,
            values,
            range,
            mark,
        } => {
            ui.label(RichText::new(label).small());
            let side = 300.0f32;
            let (resp, painter) = ui.allocate_painter(
                egui::vec2(side, side * *rows as f32 / (*cols).max(1) as f32),
                Sense::click(),
            );
            let rect = resp.rect;
            let cw = rect.width() / (*cols).max(1) as f32;
            let ch = rect.height() / (*rows).max(1) as f32;
            for r in 0..*rows {
                for c in 0..*cols {
                    let v = values[r * cols + c];
                    let t = (v - range.0) / (range.1 - range.0).max(1e-12);
                    let cell = egui::Rect::from_min_size(
                        egui::pos2(rect.left() + c as f32 * cw, rect.top() + r as f32 * ch),
                        egui::vec2(cw + 0.5, ch + 0.5),
                    );
                    painter.rect_filled(cell, 0.0, heat(t));
                }
            }
            if let Some((r, c)) = mark {
                let cell = egui::Rect::from_min_size(
                    egui::pos2(rect.left() + *c as f32 * cw, rect.top() + *r as f32 * ch),
                    egui::vec2(cw, ch),
                );
                painter.rect_stroke(
                    cell,
                    0.0,
                    egui::Stroke::new(2.0, Color32::BLACK),
                    egui::StrokeKind::Inside,
                );
            }
            let at = resp.hover_pos().map(|pos| {
                (
                    (((pos.y - rect.top()) / ch) as usize).min(rows.saturating_sub(1)),
                    (((pos.x - rect.left()) / cw) as usize).min(cols.saturating_sub(1)),
                )
            });
            let resp = match at {
                Some((r, c)) => {
                    resp.on_hover_text(format!("row {r}, column {c}: {}", values[r * cols + c]))
                }
                None => resp,
            };
            if resp.clicked()
                && let Some((r, c)) = at
                && mark.is_some()
            {
                return Some(Pick::Cell(r, c));
            }
            None
        }
    }
}
