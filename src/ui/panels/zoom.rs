//! A preview enlarged in its own window.

use std::collections::BTreeMap;

use eframe::egui;

use crate::config::TaskKind;
use crate::train::Command;
use crate::ui::{Action, PreviewView};

/// Draws the zoomed preview's window while one is chosen; a click on a pixel of a preview that
/// shows something per pixel (colorization-bins' colour distribution) asks for it.
pub fn show(
    ui: &mut egui::Ui,
    previews: &BTreeMap<TaskKind, PreviewView>,
    zoom: &mut Option<TaskKind>,
    actions: &mut Vec<Action>,
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
                    let image = egui::Image::new((p.texture.id(), size));
                    let Some(grid) = &p.pixels else {
                        ui.add(image);
                        return;
                    };
                    let resp = ui
                        .add(image.sense(egui::Sense::click()))
                        .on_hover_text("Click a pixel to see its predicted colour distribution");
                    if resp.clicked()
                        && let Some(pos) = resp.interact_pointer_pos()
                    {
                        let at = (pos - resp.rect.min) / 2.0;
                        if let Some(pixel) = grid.pixel_at(at.x, at.y) {
                            actions.push(Action::Send(Command::SelectPixel { task: k, pixel }));
                        }
                    }
                });
            });
    }
    if !open {
        *zoom = None;
    }
}
