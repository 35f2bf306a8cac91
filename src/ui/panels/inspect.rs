//! The Inspect tab: every task's prediction for one data-set image.

use eframe::egui::{self, RichText};

use super::preview_ui;
use crate::ui::{DataState, PreviewView};

/// Draws every task's prediction for the inspected image.
pub fn show(ui: &mut egui::Ui, inspection: Option<&(usize, Vec<PreviewView>)>, data: &DataState) {
    let Some((i, views)) = inspection else {
        ui.label("Click a thumbnail in the data panel during or after a run to see every task's prediction for it.");
        return;
    };
    let name = match data {
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
