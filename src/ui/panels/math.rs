//! The Math tab: draws the steps that [`crate::math::steps`] derives from a frozen batch; clicks
//! on its pictures choose the anchor, the pair or the pixel.

use std::hash::{Hash, Hasher};

use eframe::egui::{self, Color32, RichText, Sense};

use super::MUTED;
use crate::math::{self, MathReport, Picture, Step};
use crate::train::Command;
use crate::ui::{Action, MathTab, RunStatus, RunView};

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

/// Draws the Math tab; asks the engine to freeze a batch.
pub fn show(ui: &mut egui::Ui, run: &RunView, m: &mut MathTab, actions: &mut Vec<Action>) {
    ui.horizontal(|ui| {
        let can = run.is_training() || matches!(run.status, RunStatus::Finished(_));
        if ui
            .add_enabled(can, egui::Button::new("Freeze batch"))
            .on_hover_text("Take a batch of the data as the model sees it now and derive every step from it")
            .clicked()
        {
            actions.push(Action::Send(Command::Freeze {
                images: FROZEN_IMAGES,
                eta: None,
            }));
        }
        match &m.report {
            Some(r) => ui.label(format!("batch of {FROZEN_IMAGES} images frozen at step {}", r.step)),
            None => ui.label("Start a run, then freeze a batch to step through what the network computes with its numbers."),
        };
    });
    // Taken out while drawing (no per-frame copy of the report), put back at the end.
    if let Some(report) = m.report.take() {
        steps_ui(ui, m, &report);
        m.report = Some(report);
    }
}

/// The task chooser, the step navigation and the step shown.
fn steps_ui(ui: &mut egui::Ui, m: &mut MathTab, report: &MathReport) {
    ui.horizontal(|ui| {
        for (i, t) in report.tasks.iter().enumerate() {
            if ui
                .selectable_label(m.sel.task == i, t.task.name())
                .clicked()
            {
                m.sel.task = i;
                m.sel.temperature = None;
                m.step = 0;
            }
        }
    });
    let steps = math::steps(report, &m.sel);
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
        m.step = m.step.saturating_sub(1);
    }
    if next {
        m.step = (m.step + 1).min(steps.len() - 1);
    }
    m.step = m.step.min(steps.len() - 1);
    ui.horizontal(|ui| {
        if ui
            .add_enabled(m.step > 0, egui::Button::new("Previous"))
            .clicked()
        {
            m.step -= 1;
        }
        if ui
            .add_enabled(m.step + 1 < steps.len(), egui::Button::new("Next"))
            .clicked()
        {
            m.step += 1;
        }
        ui.label(format!("step {} of {} (← → keys)", m.step + 1, steps.len()));
        ui.separator();
        let examples = report.tasks.get(m.sel.task).map_or(1, |t| t.z.len()).max(1);
        let l = ui.label("example");
        ui.add(egui::DragValue::new(&mut m.sel.example).range(0..=examples - 1))
            .labelled_by(l.id);
        if let Some(t) = report.tasks.get(m.sel.task)
            && let math::TaskMath::Contrastive { temperature, .. } = t.math
        {
            let mut tau = m.sel.temperature.unwrap_or(temperature);
            let l = ui.label("τ");
            if ui
                .add(egui::Slider::new(&mut tau, 0.02..=2.0).logarithmic(true))
                .labelled_by(l.id)
                .changed()
            {
                m.sel.temperature = Some(tau);
            }
        }
    });
    ui.separator();
    let step = &steps[m.step];
    egui::ScrollArea::vertical().id_salt("math").show(ui, |ui| {
        if let Some(pick) = step_ui(m, ui, step) {
            match pick {
                Pick::Example(i) => m.sel.example = i,
                Pick::Cell(a, b)
                    if matches!(
                        step.kind,
                        math::StepKind::Reconstruction | math::StepKind::ColorClasses
                    ) =>
                {
                    m.sel.pixel = Some((a, b));
                }
                Pick::Cell(a, b) => {
                    m.sel.example = a;
                    m.sel.other = b;
                }
            }
        }
    });
}

fn step_ui(m: &mut MathTab, ui: &mut egui::Ui, step: &Step) -> Option<Pick> {
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
                if let Some(x) = picture_ui(m, ui, p) {
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

fn picture_ui(m: &mut MathTab, ui: &mut egui::Ui, p: &Picture) -> Option<Pick> {
    match p {
        Picture::Image { label, size, rgb } => {
            ui.label(RichText::new(label).small());
            if rgb.len() != size * size * 3 {
                // Never handed to egui, which panics on a mismatch: the whole app would go.
                ui.label(
                    RichText::new(format!(
                        "(no picture: {} bytes for {size}×{size} px)",
                        rgb.len()
                    ))
                    .color(MUTED),
                );
                return None;
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            rgb.hash(&mut h);
            let key = h.finish();
            let tex = m.textures.entry(key).or_insert_with(|| {
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
