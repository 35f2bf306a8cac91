//! The Training tab: curve options, the last epoch's line, the plots, and the pretext outputs
//! on the inspection batch (click one to zoom).

use std::collections::BTreeMap;

use eframe::egui::{self, RichText};

use super::plots::Plots;
use super::{MUTED, preview_ui};
use crate::config::TaskKind;
use crate::ui::{Persisted, PreviewView, RunView};

/// Draws the Training tab: curve options, the plots, and the previews (a click zooms).
pub fn show(
    ui: &mut egui::Ui,
    run: &RunView,
    settings: &mut Persisted,
    previews: &BTreeMap<TaskKind, PreviewView>,
    zoom: &mut Option<TaskKind>,
) {
    ui.horizontal(|ui| {
        ui.add(egui::Slider::new(&mut settings.smoothing, 0.0..=0.99).text("smoothing"));
        ui.checkbox(&mut settings.log_scale, "log scale");
        ui.checkbox(&mut settings.x_in_epochs, "x in epochs");
    });
    if let Some(e) = &run.last_epoch {
        ui.add(egui::Label::new(RichText::new(crate::report::epoch_line(e)).color(MUTED)).wrap());
    }
    let tasks = run.shown_tasks(&settings.config.tasks);
    let plots = Plots {
        run,
        settings: &*settings,
    };
    let width = ui.available_width();
    let plot_w = (width * 0.55).max(300.0);
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width(plot_w);
            egui::ScrollArea::vertical()
                .id_salt("plots")
                .show(ui, |ui| {
                    plots.loss(ui, &tasks);
                    plots.metric(ui, &tasks);
                    if let Some(hint) = super::plots::monitor_hint(run) {
                        ui.add(egui::Label::new(RichText::new(hint).color(MUTED)).wrap());
                    }
                    // What the representation is worth first: in view at 1400 × 900.
                    plots.knn(ui);
                    plots.collapse_gauges(ui);
                    plots.alignment(ui);
                    ui.columns(2, |cols| {
                        plots.learning_rate(&mut cols[0]);
                        plots.throughput(&mut cols[1]);
                    });
                });
        });
        ui.vertical(|ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Pretext outputs on the inspection batch").strong());
            if previews.is_empty() {
                ui.label(
                    RichText::new(
                        "Press Start: previews appear before the first step and every few seconds after.",
                    )
                    .color(MUTED),
                );
            }
            egui::ScrollArea::vertical()
                .id_salt("previews")
                .show(ui, |ui| {
                    for (k, p) in previews {
                        if preview_ui(ui, p, ui.available_width().min(420.0)).clicked() {
                            *zoom = Some(*k);
                        }
                    }
                });
        });
    });
}
