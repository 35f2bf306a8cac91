//! The training tab's plots, one function each, drawn from the run model's curves.

use eframe::egui::{self, Color32, RichText};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use crate::config::TaskKind;
use crate::ui::{Persisted, RunView};
use crate::view::history::smooth;

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

/// A colour per encoder stage, in [`crate::eval::embed::STAGES`] order.
const STAGE_COLORS: [Color32; 4] = [
    Color32::from_rgb(120, 160, 255),
    Color32::from_rgb(110, 210, 170),
    Color32::from_rgb(240, 200, 90),
    Color32::from_rgb(240, 120, 120),
];

/// How a series is drawn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Raw,
    Smoothed,
    Baseline,
}

/// What the plots read: the run's curves and how the person wants them shown.
pub struct Plots<'a> {
    pub run: &'a RunView,
    pub settings: &'a Persisted,
}

impl Plots<'_> {
    fn line<'b>(&self, name: &str, label: String, style: Style) -> Option<Line<'b>> {
        let h = self.run.curves.series.get(name)?;
        let mut pts = h.points();
        if style != Style::Raw {
            pts = smooth(&pts, self.settings.smoothing);
        }
        let per_epoch = self.run.curves.batches_per_epoch.max(1) as f64;
        let log = self.settings.log_scale;
        let pts: Vec<[f64; 2]> = pts
            .into_iter()
            .map(|[x, y]| {
                let x = if self.settings.x_in_epochs {
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

    /// A plot; `y_range` fixes the value axis (e.g. 0 to the largest learning rate, so a
    /// constant curve does not sit on an arbitrary axis).
    fn plot(
        &self,
        ui: &mut egui::Ui,
        id: &str,
        title: &str,
        lines: Vec<Line<'_>>,
        height: f32,
        y_range: Option<(f64, f64)>,
    ) {
        ui.vertical(|ui| {
            ui.label(RichText::new(title).strong());
            let log = self.settings.log_scale;
            let mut p = Plot::new(id)
                .height(height)
                .legend(Legend::default())
                .x_axis_label(if self.settings.x_in_epochs {
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

    /// Each task's loss, raw and smoothed, and the weighted total of several.
    pub fn loss(&self, ui: &mut egui::Ui, tasks: &[TaskKind]) {
        let mut lines = Vec::new();
        for t in tasks {
            let n = format!("loss/{t}");
            lines.extend(self.line(&n, format!("{t}"), Style::Raw));
            lines.extend(self.line(&n, format!("{t}"), Style::Smoothed));
        }
        lines.extend(self.line("loss/total", "total".into(), Style::Smoothed));
        self.plot(ui, "loss", "Loss", lines, 190.0, None);
    }

    /// Each task's proxy metric with its trivial baseline dashed.
    pub fn metric(&self, ui: &mut egui::Ui, tasks: &[TaskKind]) {
        let mut lines = Vec::new();
        for t in tasks {
            lines.extend(self.line(&format!("metric/{t}"), format!("{t}"), Style::Smoothed));
            lines.extend(self.line(
                &format!("baseline/{t}"),
                format!("{t} baseline"),
                Style::Baseline,
            ));
        }
        self.plot(ui, "metric", "Proxy metric (% or dB)", lines, 190.0, None);
    }

    /// Two gauges of z in one plot, drawn once `series` has been measured: each `(series,
    /// label, colour)`.
    fn gauges(&self, ui: &mut egui::Ui, id: &str, title: &str, lines: [(&str, &str, Color32); 2]) {
        if !self.run.curves.series.contains_key(lines[0].0) {
            return;
        }
        let lines = lines
            .into_iter()
            .filter_map(|(name, label, color)| {
                self.line(name, label.into(), Style::Raw)
                    .map(|l| l.width(2.0).color(color))
            })
            .collect();
        self.plot(ui, id, title, lines, 110.0, None);
    }

    /// RankMe / d and std × √d of z, on a common 0..1 scale; and the same of each two-view
    /// method's projector output (dashed), where a collapse can hide from z.
    pub fn collapse_gauges(&self, ui: &mut egui::Ui) {
        if !self.run.curves.series.contains_key("gauge/rankme") {
            return;
        }
        let mut lines: Vec<Line<'_>> = [
            (
                "gauge/rankme",
                "RankMe / d of z (share of dimensions in use)".to_string(),
                Color32::from_rgb(120, 200, 255),
            ),
            (
                "gauge/std",
                "std of L2-normalised z × √d (1 = evenly spread)".to_string(),
                Color32::from_rgb(240, 170, 90),
            ),
        ]
        .into_iter()
        .filter_map(|(name, label, color)| {
            self.line(name, label, Style::Raw)
                .map(|l| l.width(2.0).color(color))
        })
        .collect();
        for name in self.run.curves.series.keys() {
            let Some(rest) = name.strip_prefix("gauge/") else {
                continue;
            };
            let (task, label, color) = if let Some(task) = rest.strip_suffix(" output rankme") {
                (task, "RankMe / d", Color32::from_rgb(120, 200, 255))
            } else if let Some(task) = rest.strip_suffix(" output std") {
                (task, "std × √d", Color32::from_rgb(240, 170, 90))
            } else {
                continue;
            };
            if let Some(l) = self.line(name, format!("{label} of {task}'s output"), Style::Raw) {
                lines.push(
                    l.width(1.5)
                        .color(color)
                        .style(egui_plot::LineStyle::dashed_dense()),
                );
            }
        }
        self.plot(
            ui,
            "gauges",
            "Collapse gauges (1 = fully spread, 0 = collapsed)",
            lines,
            110.0,
            None,
        );
    }

    /// Alignment of two views and uniformity of z (Wang & Isola 2020).
    pub fn alignment(&self, ui: &mut egui::Ui) {
        self.gauges(
            ui,
            "align",
            "Alignment and uniformity of z (Wang & Isola 2020)",
            [
                (
                    "gauge/alignment",
                    "alignment E‖z − z⁺‖² of two views (lower = views agree)",
                    Color32::from_rgb(130, 220, 130),
                ),
                (
                    "gauge/uniformity",
                    "uniformity log E exp(−2‖zᵢ − zⱼ‖²) (lower = more spread)",
                    Color32::from_rgb(220, 130, 220),
                ),
            ],
        );
    }

    /// kNN accuracy per stage, with raw pixels and z before training as dashed floors; or why
    /// it was not measured.
    pub fn knn(&self, ui: &mut egui::Ui) {
        if !self.run.curves.series.keys().any(|k| k.starts_with("knn/")) {
            if let Some(why) = &self.run.knn.not_measured {
                ui.label(
                    RichText::new(format!("kNN accuracy: not measured ({why})"))
                        .color(super::MUTED),
                );
            }
            return;
        }
        let lines: Vec<Line<'_>> = crate::eval::embed::STAGES
            .iter()
            .zip(STAGE_COLORS)
            .filter_map(|(stage, color)| {
                self.line(&format!("knn/{stage}"), stage.to_string(), Style::Raw)
                    .map(|l| l.width(2.0).color(color))
            })
            .collect();
        let pixels = self.run.knn.pixels;
        let start = self.run.knn.start;
        ui.vertical(|ui| {
            ui.label(
                RichText::new("kNN accuracy per encoder stage (%) — held-out labels, k = 20")
                    .strong(),
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
                                .color(STAGE_COLORS[3])
                                .style(egui_plot::LineStyle::dotted_loose()),
                        );
                    }
                });
        });
    }

    /// The learning rate on an axis from 0 (or a decade below, on a log scale).
    pub fn learning_rate(&self, ui: &mut egui::Ui) {
        let lr_max = self
            .run
            .curves
            .series
            .get("lr")
            .map_or(self.settings.config.lr, |h| {
                h.points().iter().fold(0.0f64, |m, p| m.max(p[1]))
            });
        let range = if self.settings.log_scale {
            (lr_max / 10.0, lr_max * 2.0)
        } else {
            (0.0, lr_max * 1.2)
        };
        let lines = self
            .line("lr", "lr".into(), Style::Raw)
            .into_iter()
            .collect();
        self.plot(ui, "lr", "Learning rate", lines, 120.0, Some(range));
    }

    /// Training throughput, smoothed.
    pub fn throughput(&self, ui: &mut egui::Ui) {
        let lines = self
            .line("images_per_s", "images/s".into(), Style::Smoothed)
            .into_iter()
            .collect();
        self.plot(ui, "ips", "Images per second", lines, 120.0, None);
    }
}
