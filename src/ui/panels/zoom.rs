//! A preview enlarged in its own window.

use std::collections::BTreeMap;

use eframe::egui;

use crate::config::TaskKind;
use crate::ui::PreviewView;

/// Draws the zoomed preview's window while one is chosen.
pub fn show(
    ui: &mut egui::Ui,
    previews: &BTreeMap<TaskKind, PreviewView>,
    zoom: &mut Option<TaskKind>,
) {
    let Some(k) = *zoom else {
        return;
    };
    let mut open = true;
    if let Some(p) = previews.get(&k) {
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
        *zoom = None;
    }
}
