//! The Augmentations tab: views T(x) of the first images for the current settings. The picture
//! is drawn on a background thread ([`views`]); the tab asks for it when the settings change.

use eframe::egui;

use super::preview_ui;
use crate::config::Augment;
use crate::data::Dataset;
use crate::tasks::Canvas;
use crate::ui::{Action, AugmentTab, DataState};

/// Rows (images) and augmented views per row.
const ROWS: usize = 6;
const VIEWS: usize = 6;

/// Draws the Augmentations tab; asks for new views when the settings or the seed change.
pub fn show(
    ui: &mut egui::Ui,
    data: &DataState,
    augment: &Augment,
    tab: &mut AugmentTab,
    actions: &mut Vec<Action>,
) {
    let DataState::Ready(d) = data else {
        ui.label("Load data to see augmentations.");
        return;
    };
    ui.horizontal(|ui| {
        ui.label("Random views x⁺ = T(x) with the settings on the left (contrastive task); each row is one image.");
        if ui.button("Resample").clicked() {
            tab.seed += 1;
        }
    });
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{augment:?}{}{}", tab.seed, d.summary.source).hash(&mut h);
        h.finish()
    };
    if tab.view.as_ref().map(|v| v.0) != Some(key) {
        actions.push(Action::AugmentViews { key });
    }
    if let Some((_, v)) = &tab.view {
        preview_ui(ui, v, ui.available_width().min(900.0));
    }
}

/// The original of up to six images and six views T(x) of each, one row per image; views
/// smaller than the working size (`view_scale`) are drawn at their own size, centred in their
/// cell.
pub fn views(data: &Dataset, augment: &Augment, seed: u64) -> Canvas {
    let s = data.size;
    let v_size = augment.view_size(s);
    let f = crate::tasks::preview_factor(s);
    let cell = s * f;
    let rows = data.len().min(ROWS);
    let mut canvas = Canvas::new(
        (VIEWS + 1) * (cell + 6) + 6,
        rows * (cell + 6) + 6,
        [24, 24, 28],
    );
    for r in 0..rows {
        let i = (r * (data.len() / rows) + r) % data.len();
        canvas.blit(data.image(i), s, s, f, 6, 6 + r * (cell + 6));
        let mut rng = crate::rng::Rng::derive(seed, &[i as u64]);
        for v in 0..VIEWS {
            let (img, _) =
                crate::data::augment::augment_to(data.image(i), s, v_size, augment, &mut rng);
            let bytes = crate::data::augment::unit_to_bytes(&img);
            let inset = (cell - v_size * f) / 2;
            canvas.blit(
                &bytes,
                v_size,
                v_size,
                f,
                6 + (v + 1) * (cell + 6) + 6 + inset,
                6 + r * (cell + 6) + inset,
            );
        }
    }
    canvas
}
