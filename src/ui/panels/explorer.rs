//! The Explorer tab: every image in a 2-D map of z — PCA, or t-SNE computed in the background —
//! coloured by class; hover to see it, click to see its nearest neighbours; the collapse gauges
//! and the linear probe beside it.

use eframe::egui::{self, Color32, RichText};
use egui_plot::{Legend, Plot, PlotPoints, Points};

use crate::eval::embed::{Embedding, collapsed, neighbours};
use crate::train::Command;
use crate::ui::{Action, DataState, ExplorerTab, MapKind, RunStatus, RunView, TsneMap};

/// Width of a nearest neighbour's cell (its 64 px picture, its cosine and class), px.
const NEIGHBOUR_CELL: f32 = 76.0;

const PALETTE: [Color32; 10] = [
    Color32::from_rgb(230, 120, 60),
    Color32::from_rgb(80, 160, 240),
    Color32::from_rgb(100, 200, 120),
    Color32::from_rgb(220, 90, 140),
    Color32::from_rgb(240, 210, 80),
    Color32::from_rgb(160, 120, 230),
    Color32::from_rgb(90, 210, 210),
    Color32::from_rgb(200, 200, 200),
    Color32::from_rgb(170, 110, 60),
    Color32::from_rgb(120, 230, 60),
];

fn image_texture(
    x: &mut ExplorerTab,
    data: &DataState,
    ctx: &egui::Context,
    i: usize,
) -> Option<egui::TextureHandle> {
    let DataState::Ready(d) = data else {
        return None;
    };
    if i >= d.data.len() {
        return None;
    }
    let s = d.data.size;
    Some(
        x.textures
            .entry(i)
            .or_insert_with(|| {
                ctx.load_texture(
                    format!("image-{i}"),
                    egui::ColorImage::from_rgb([s, s], d.data.image(i)),
                    egui::TextureOptions::NEAREST,
                )
            })
            .clone(),
    )
}

/// Draws the Explorer tab; asks for an embedding or an export.
pub fn show(
    ui: &mut egui::Ui,
    run: &RunView,
    data: &DataState,
    x: &mut ExplorerTab,
    actions: &mut Vec<Action>,
) {
    ui.horizontal(|ui| {
        let can = run.is_training() || matches!(run.status, RunStatus::Finished(_));
        if ui
            .add_enabled(can, egui::Button::new("Embed all images"))
            .on_hover_text("Compute z for every image with the current weights")
            .clicked()
        {
            actions.push(Action::Send(Command::Embed));
        }
        if x.embedding.is_some()
            && ui
                .button("Export")
                .on_hover_text("Write z of every image with its name and label to embeddings/embeddings.csv and .npy")
                .clicked()
        {
            actions.push(Action::ExportEmbeddings);
        }
        match &x.embedding {
            Some(e) => ui.label(format!("{} images embedded at step {}", e.z.len(), e.step)),
            None => ui.label(
                "Start a run (or let one finish), then embed the images to see the representation.",
            ),
        };
    });
    let Some(step) = x.embedding.as_ref().map(|e| e.step) else {
        return;
    };
    map_choice(ui, x, step, actions);
    // Taken out while drawing (no per-frame copy of every z), put back at the end.
    let Some(e) = x.embedding.take() else {
        return;
    };
    draw(ui, data, x, &e);
    x.embedding = Some(e);
}

/// PCA or t-SNE; t-SNE is asked for once per embedding and shows its progress.
fn map_choice(ui: &mut egui::Ui, x: &mut ExplorerTab, step: u64, actions: &mut Vec<Action>) {
    ui.horizontal(|ui| {
        ui.label("Map");
        ui.selectable_value(&mut x.map, MapKind::Pca, "PCA")
            .on_hover_text("The two directions of largest variance of z: linear, instant");
        ui.selectable_value(&mut x.map, MapKind::Tsne, "t-SNE")
            .on_hover_text(
                "t-SNE (Barnes-Hut, perplexity 30): keeps each image's neighbours together; \
             distances between far clusters mean little",
            );
        if x.map != MapKind::Tsne {
            return;
        }
        match &x.tsne {
            Some(TsneMap::Running {
                step: s,
                epochs_done,
            }) if *s == step => {
                let done = epochs_done.load(std::sync::atomic::Ordering::Relaxed);
                let total = crate::eval::tsne::EPOCHS;
                ui.add(
                    egui::ProgressBar::new(done as f32 / total as f32)
                        .desired_width(200.0)
                        .text(format!("t-SNE {done}/{total}")),
                );
                ui.ctx()
                    .request_repaint_after(std::time::Duration::from_millis(100));
            }
            Some(TsneMap::Failed { step: s, why }) if *s == step => {
                ui.label(RichText::new(format!("t-SNE: {why}")).color(Color32::LIGHT_RED));
            }
            Some(TsneMap::Ready {
                step: s,
                points,
                trust,
            }) if *s == step => {
                let mut text = format!("t-SNE of {} images", points.len());
                if let Some(t) = trust {
                    text.push_str(&format!(", trustworthiness T(5) {t:.3}"));
                }
                ui.label(text).on_hover_text(
                    "Trustworthiness (Venna & Kaski 2001): 1 when each image's 5 nearest \
                     neighbours in the map are among its nearest in z",
                );
            }
            _ => actions.push(Action::Tsne),
        }
    });
}

fn draw(ui: &mut egui::Ui, data: &DataState, x: &mut ExplorerTab, e: &Embedding) {
    let tsne = match (&x.map, &x.tsne) {
        (MapKind::Tsne, Some(TsneMap::Ready { step, points, .. }))
            if *step == e.step && points.len() == e.z.len() =>
        {
            Some(points.clone())
        }
        _ => None,
    };
    let (projection, x_label, y_label) = match &tsne {
        Some(points) => (
            points.as_slice(),
            "t-SNE 1".to_string(),
            "t-SNE 2".to_string(),
        ),
        None => (
            e.projection.as_slice(),
            format!("PC 1 ({:.0}%)", e.explained[0] * 100.0),
            format!("PC 2 ({:.0}%)", e.explained[1] * 100.0),
        ),
    };
    let (labels, classes) = match data {
        DataState::Ready(d) if d.data.len() == e.z.len() => {
            (d.data.labels.clone(), d.data.class_names.clone())
        }
        _ => (None, Vec::new()),
    };
    let g = &e.gauges;
    if collapsed(g) {
        egui::Frame::new().fill(Color32::from_rgb(70, 25, 25)).inner_margin(8.0).show(ui, |ui| {
            ui.label(
                RichText::new(
                    "The representation has collapsed: the images map to nearly the same direction. Try a lower \
                     learning rate, another task, or (contrastive) a higher temperature.",
                )
                .color(Color32::WHITE),
            );
        });
    }
    ui.horizontal_wrapped(|ui| {
        ui.label(format!(
            "std of L2-normalised z {:.4} (1/√d = {:.4})",
            g.std_of_l2_normalized, g.std_reference
        ))
        .on_hover_text(
            "0 when everything collapses to one direction; about 1/√d when spread evenly",
        );
        ui.separator();
        ui.label(format!("RankMe {:.1} of {}", g.rankme, g.dimensions))
            .on_hover_text("effective number of dimensions used (Garrido et al. 2023)");
        ui.separator();
        ui.label(format!("uniformity {:.3}", g.uniformity))
            .on_hover_text("log mean exp(−2‖zᵢ − zⱼ‖²): lower is more uniform on the sphere");
        if let Some(a) = g.alignment {
            ui.separator();
            ui.label(format!("alignment {a:.3}")).on_hover_text(
                "E‖z − z⁺‖² over two augmented views of the same images: lower means the views agree",
            );
        }
        ui.separator();
        match &e.probe {
            Ok((acc, _)) => {
                ui.label(RichText::new(format!("linear probe {:.1}%", acc * 100.0)).strong());
            }
            Err(why) => {
                ui.label("linear probe: not measured")
                    .on_hover_text(why.to_string());
            }
        }
    });
    spectrum_ui(ui, &g.spectrum);
    let mut hovered = None;
    let mut clicked = false;
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width((ui.available_width() * 0.62).max(320.0));
            let plot = Plot::new("explorer")
                .height(460.0)
                .legend(Legend::default())
                .x_axis_label(x_label)
                .y_axis_label(y_label)
                .data_aspect(1.0);
            let resp = plot.show(ui, |plot_ui| {
                let groups = classes.len().max(1);
                for c in 0..groups {
                    let pts: Vec<[f64; 2]> = projection
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| labels.as_ref().is_none_or(|l| l[*i] as usize == c))
                        .map(|(_, p)| *p)
                        .collect();
                    let name = classes.get(c).cloned().unwrap_or_else(|| "images".into());
                    plot_ui.points(
                        Points::new(name, PlotPoints::from(pts))
                            .radius(2.5)
                            .color(PALETTE[c % PALETTE.len()]),
                    );
                }
                if let Some(sel) = x.selected
                    && let Some(p) = projection.get(sel)
                {
                    plot_ui.points(
                        Points::new("selected", PlotPoints::from(vec![*p]))
                            .radius(6.0)
                            .color(Color32::WHITE),
                    );
                }
                plot_ui.pointer_coordinate().and_then(|c| {
                    let b = plot_ui.plot_bounds();
                    let (w, h) = (b.width().max(1e-12), b.height().max(1e-12));
                    projection
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (i, ((p[0] - c.x) / w).powi(2) + ((p[1] - c.y) / h).powi(2)))
                        .min_by(|a, b| a.1.total_cmp(&b.1))
                        .filter(|(_, d)| *d < 0.0004)
                        .map(|(i, _)| i)
                })
            });
            hovered = resp.inner;
            clicked = resp.response.clicked();
            if let Some(i) = hovered
                && let Some(tex) = image_texture(x, data, ui.ctx(), i)
            {
                let name = match data {
                    DataState::Ready(d) => d.data.names.get(i).cloned().unwrap_or_default(),
                    _ => String::new(),
                };
                resp.response.on_hover_ui(|ui| {
                    ui.label(name);
                    ui.add(egui::Image::new((tex.id(), egui::vec2(96.0, 96.0))));
                });
            }
        });
        ui.vertical(|ui| {
            if let Some(sel) = x.selected {
                let class_of = |j: usize| {
                    labels
                        .as_ref()
                        .and_then(|l| l.get(j))
                        .and_then(|&c| classes.get(c as usize))
                        .cloned()
                };
                ui.label(
                    RichText::new(format!(
                        "Image {sel} and its nearest neighbours in z (cosine)"
                    ))
                    .strong(),
                );
                // Which file it is, and its class where the folder has them.
                let name = match data {
                    DataState::Ready(d) => d.data.names.get(sel).cloned().unwrap_or_default(),
                    _ => String::new(),
                };
                let what = match class_of(sel) {
                    Some(c) => format!("{name} · class {c}"),
                    None => name,
                };
                ui.add(egui::Label::new(RichText::new(what).small()).truncate());
                if let Some(tex) = image_texture(x, data, ui.ctx(), sel) {
                    ui.add(egui::Image::new((tex.id(), egui::vec2(96.0, 96.0))));
                }
                if x.neighbours.as_ref().is_none_or(|(i, _)| *i != sel) {
                    x.neighbours = Some((sel, neighbours(&e.z, sel, 8)));
                }
                let near = x
                    .neighbours
                    .as_ref()
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default();
                // Rows of as many fixed-width cells as fit (egui cannot wrap a nested layout
                // whose width it learns only after drawing it: the last one was cut off).
                let gap = ui.spacing().item_spacing.x;
                let per_row = (((ui.available_width() + gap) / (NEIGHBOUR_CELL + gap)).floor()
                    as usize)
                    .max(1);
                for row in near.chunks(per_row) {
                    ui.horizontal(|ui| {
                        for &(j, sim) in row {
                            if let Some(tex) = image_texture(x, data, ui.ctx(), j) {
                                ui.vertical(|ui| {
                                    ui.set_width(NEIGHBOUR_CELL);
                                    ui.add(egui::Image::new((tex.id(), egui::vec2(64.0, 64.0))));
                                    let class = class_of(j).unwrap_or_default();
                                    ui.add(
                                        egui::Label::new(
                                            RichText::new(format!("{sim:.3} {class}")).small(),
                                        )
                                        .truncate(),
                                    )
                                    .on_hover_text(format!("cosine {sim:.4}, class {class}"));
                                });
                            }
                        }
                    });
                }
            } else {
                ui.label("Hover a point to see its image; click it to see its nearest neighbours.");
            }
            if let Err(why) = &e.probe {
                ui.add_space(8.0);
                ui.label(format!("Linear probe on z: not measured ({why})"));
            }
            if let Ok((acc, confusion)) = &e.probe {
                ui.add_space(8.0);
                ui.label(
                    RichText::new(format!(
                        "Linear probe on z: {:.1}% on held-out images",
                        acc * 100.0
                    ))
                    .strong(),
                );
                confusion_ui(ui, confusion, &classes);
            }
        });
    });
    if clicked && hovered.is_some() {
        x.selected = hovered;
    }
}

/// The normalised singular values of z: a few tall bars mean few dimensions in use.
fn spectrum_ui(ui: &mut egui::Ui, spectrum: &[f64]) {
    let shown = &spectrum[..spectrum.len().min(64)];
    let (resp, painter) = ui.allocate_painter(egui::vec2(320.0, 40.0), egui::Sense::hover());
    let max = shown.iter().fold(1e-12f64, |m, v| m.max(*v));
    let w = resp.rect.width() / shown.len().max(1) as f32;
    for (k, v) in shown.iter().enumerate() {
        let h = (v / max) as f32 * resp.rect.height();
        let r = egui::Rect::from_min_max(
            egui::pos2(resp.rect.left() + k as f32 * w, resp.rect.bottom() - h),
            egui::pos2(resp.rect.left() + (k as f32 + 0.8) * w, resp.rect.bottom()),
        );
        painter.rect_filled(r, 0.0, Color32::from_rgb(120, 200, 255));
    }
    resp.on_hover_text("singular values of z, largest first (first 64), scaled to sum to 1: RankMe is exp of their entropy");
}

/// The confusion matrix as a picture: rows are the true classes, columns the predictions.
fn confusion_ui(ui: &mut egui::Ui, m: &[Vec<usize>], classes: &[String]) {
    let n = m.len().max(1);
    let cell = (220.0 / n as f32).clamp(8.0, 28.0);
    // Each row's class name at its left (the columns are in the same order).
    let font = egui::FontId::proportional(cell.clamp(9.0, 12.0));
    let name = |k: usize| classes.get(k).cloned().unwrap_or_else(|| k.to_string());
    let names: Vec<String> = (0..m.len())
        .map(|k| {
            let s = name(k);
            if s.chars().count() > 14 {
                s.chars().take(13).chain(['…']).collect()
            } else {
                s
            }
        })
        .collect();
    let label_w = names
        .iter()
        .map(|s| {
            ui.painter()
                .layout_no_wrap(s.clone(), font.clone(), Color32::WHITE)
                .size()
                .x
        })
        .fold(0.0f32, f32::max)
        + 6.0;
    let (resp, painter) = ui.allocate_painter(
        egui::vec2(label_w + cell * n as f32, cell * n as f32),
        egui::Sense::hover(),
    );
    let text = ui.visuals().text_color();
    for (r, s) in names.iter().enumerate() {
        painter.text(
            resp.rect.min + egui::vec2(label_w - 6.0, (r as f32 + 0.5) * cell),
            egui::Align2::RIGHT_CENTER,
            s,
            font.clone(),
            text,
        );
    }
    let max = m.iter().flatten().copied().max().unwrap_or(1).max(1) as f32;
    for (r, row) in m.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let t = v as f32 / max;
            let color = if r == c {
                Color32::from_rgb(
                    (30.0 + 40.0 * t) as u8,
                    (40.0 + 180.0 * t) as u8,
                    (40.0 + 90.0 * t) as u8,
                )
            } else {
                Color32::from_rgb((30.0 + 200.0 * t) as u8, 40, 45)
            };
            let rect = egui::Rect::from_min_size(
                resp.rect.min + egui::vec2(label_w + c as f32 * cell, r as f32 * cell),
                egui::vec2(cell - 1.0, cell - 1.0),
            );
            painter.rect_filled(rect, 1.0, color);
        }
    }
    if let Some(pos) = resp.hover_pos() {
        let x = pos.x - resp.rect.left() - label_w;
        let c = (x / cell) as usize;
        let r = ((pos.y - resp.rect.top()) / cell) as usize;
        if let Some(v) = m.get(r).and_then(|row| row.get(c)).filter(|_| x >= 0.0) {
            resp.on_hover_text(format!("true {} → predicted {}: {v}", name(r), name(c)));
        }
    }
    ui.label(
        RichText::new(
            "rows: true class, columns: predicted in the same order (green diagonal = right)",
        )
        .small(),
    );
}
