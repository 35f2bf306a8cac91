//! The data panel: what was loaded (classes, skipped, partly decoded and ignored files with
//! their reasons, how much came from the image cache), loading progress with the thumbnails of
//! the images so far, the thumbnails (click one to inspect it), and the image cache's setting
//! and its Clear button.

use eframe::egui::{self, RichText};

use super::{ERROR, MUTED, WARN};
use crate::data::{Dataset, DatasetSummary};
use crate::tasks::Canvas;
use crate::ui::{Action, DataState, LoadedData, LoadingData, THUMBNAILS_MAX};

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
    atlas(
        ctx,
        "thumbnails",
        d.size,
        indices.iter().map(|&i| d.image(i)),
    )
}

/// One picture of `size × size` RGB images, ten a row, as the texture `name`; (texture,
/// columns).
pub fn atlas<'a>(
    ctx: &egui::Context,
    name: &str,
    s: usize,
    images: impl ExactSizeIterator<Item = &'a [u8]>,
) -> (Option<egui::TextureHandle>, usize) {
    let n = images.len();
    if n == 0 || s == 0 {
        return (None, 1);
    }
    let cols = 10usize;
    let rows = n.div_ceil(cols);
    let mut canvas = Canvas::new(cols * s, rows * s, [20, 20, 24]);
    for (i, image) in images.enumerate() {
        if image.len() == s * s * 3 {
            canvas.blit(image, s, s, 1, (i % cols) * s, (i / cols) * s);
        }
    }
    let img = egui::ColorImage::from_rgb([canvas.width, canvas.height], &canvas.rgb);
    (
        Some(ctx.load_texture(name, img, egui::TextureOptions::NEAREST)),
        cols,
    )
}

/// Draws the data panel; asks to cancel loading, to inspect a clicked thumbnail or to clear
/// the image cache, and edits the setting `use_cache`.
pub fn show(ui: &mut egui::Ui, data: &DataState, use_cache: &mut bool, actions: &mut Vec<Action>) {
    // The image cache's setting and button share the heading's line: the controls below keep
    // their place.
    ui.horizontal(|ui| {
        ui.heading("Data");
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            if ui
                .add(egui::Button::new("Clear image cache").small())
                .on_hover_text("Remove the cache's files: folders are decoded again next time")
                .clicked()
            {
                actions.push(Action::ClearImageCache);
            }
            ui.checkbox(use_cache, "Image cache").on_hover_text(
                "Keep the decoded working-size pixels of folders in the cache folder, so the \
                 next opening of the same folder decodes only the files that changed",
            );
        });
    });
    match data {
        DataState::Empty => {
            ui.label("No data: open a folder, or choose Examples → Built-in scenes.");
        }
        DataState::Loading(l) => {
            let (done, total) = l.loader.progress();
            ui.label(format!("Loading {} …", l.loader.source));
            let frac = if total > 0 {
                done as f32 / total as f32
            } else {
                0.0
            };
            ui.add(egui::ProgressBar::new(frac).text(format!("{done}/{total}")));
            if ui.button("Cancel loading").clicked() {
                actions.push(Action::CancelLoading);
            }
            loading_thumbnails(ui, l);
        }
        DataState::Failed(e) => {
            ui.label(RichText::new(e).color(ERROR));
        }
        DataState::Ready(d) => {
            summary(ui, &d.summary);
            if let Some(i) = thumbnails(ui, d) {
                actions.push(Action::Inspect(i));
            }
        }
    }
}

/// The images that have arrived while a folder loads.
fn loading_thumbnails(ui: &mut egui::Ui, l: &LoadingData) {
    let Some(tex) = &l.thumbnails else {
        return;
    };
    ui.label(RichText::new(format!("{} images so far", l.thumbnail_count)).color(MUTED));
    egui::ScrollArea::vertical()
        .id_salt("loading-thumbnails")
        .max_height(220.0)
        .show(ui, |ui| {
            let width = ui.available_width().min(320.0);
            let scale = width / tex.size()[0] as f32;
            let size = egui::vec2(width, tex.size()[1] as f32 * scale);
            ui.add(egui::Image::new((tex.id(), size)));
        });
}

fn summary(ui: &mut egui::Ui, s: &DatasetSummary) {
    ui.label(RichText::new(&s.source).strong());
    let cached = s
        .cache
        .as_ref()
        .map(|c| format!(" · files: {} from the cache, {} decoded", c.hits, c.decoded))
        .unwrap_or_default();
    ui.label(format!("{} images at {} px{cached}", s.images, s.size))
        .on_hover_text(format!("loaded in {:.2} s", s.load_secs));
    if let Some(note) = s.cache.as_ref().and_then(|c| c.note.as_ref()) {
        ui.label(RichText::new(format!("image cache: {note}")).color(WARN));
    }
    if s.classes.is_empty() {
        ui.label("unlabelled (no class subfolders)");
    } else {
        egui::CollapsingHeader::new(format!("{} classes", s.classes.len())).show(ui, |ui| {
            egui::Grid::new("classes").striped(true).show(ui, |ui| {
                for (name, count) in &s.classes {
                    ui.label(name);
                    ui.label(count.to_string());
                    ui.end_row();
                }
            });
        });
    }
    for (list, one, many, color) in [
        (&s.skipped, "file skipped", "files skipped", ERROR),
        (
            &s.partial,
            "file partly decoded",
            "files partly decoded",
            WARN,
        ),
        (&s.ignored, "entry ignored", "entries ignored", MUTED),
    ] {
        if list.is_empty() {
            continue;
        }
        let heading = crate::text::count(list.len(), one, many);
        egui::CollapsingHeader::new(RichText::new(heading).color(color)).show(ui, |ui| {
            for (path, reason) in list.iter().take(100) {
                ui.label(format!("{path}: {reason}"));
            }
            if list.len() > 100 {
                ui.label(format!("… and {} more", list.len() - 100));
            }
        });
    }
}

/// The thumbnail atlas; returns the data-set image clicked, if any.
fn thumbnails(ui: &mut egui::Ui, d: &LoadedData) -> Option<usize> {
    let tex = d.thumbnails.as_ref()?;
    let shown = d.summary.images.min(THUMBNAILS_MAX);
    ui.label(
        RichText::new(format!(
            "{shown} of {} shown, spread over the set; click one to inspect it",
            d.summary.images
        ))
        .color(MUTED),
    );
    let mut clicked = None;
    egui::ScrollArea::vertical()
        .max_height(220.0)
        .show(ui, |ui| {
            let width = ui.available_width().min(320.0);
            let scale = width / tex.size()[0] as f32;
            let size = egui::vec2(width, tex.size()[1] as f32 * scale);
            let r = ui.add(egui::Image::new((tex.id(), size)).sense(egui::Sense::click()));
            if r.clicked()
                && let Some(pos) = r.interact_pointer_pos()
            {
                let cell = width / d.thumb_cols as f32;
                let col = ((pos.x - r.rect.left()) / cell) as usize;
                let row = ((pos.y - r.rect.top()) / cell) as usize;
                clicked = d.thumb_indices.get(row * d.thumb_cols + col).copied();
            }
        });
    clicked
}
