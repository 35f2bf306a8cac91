//! Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by
//! Solving Jigsaw Puzzles"): each image is cut into a 3×3 grid of tiles, smaller than their
//! cells by a gap and placed with random jitter (the layout of [`augment::patch_layout`], shared
//! with patch prediction and its `patch_gap`), so the network cannot solve the puzzle by
//! continuing edges across tiles. The tiles are shuffled by one permutation of a fixed set and
//! each goes through the shared encoder at its own size (8 px at 32 px: the encoder's two stride-2
//! stages leave a 2×2 map, as for patch prediction). The 9 tile embeddings, concatenated in the
//! shuffled order, go into an MLP head that predicts which permutation of the set was applied.
//! Loss −Σ log P(y|x); proxy metric: permutation accuracy, baseline chance 1/P.
//!
//! The permutation set is the paper's Algorithm 1 made deterministic: greedy farthest-point
//! selection over all 9! orders under the Hamming distance, starting from the identity. Each
//! next permutation is one whose smallest distance to those already chosen is largest (ties:
//! the largest summed distance, the paper's own criterion, then the lexicographically first).
//! The greedy set's minimal Hamming distance is 9 up to 8 permutations, 7 for 30, 6 for 100 and 5
//! for 1,000 (`tests/tasks.rs` checks 30 and 100). Few permutations far apart make the task learnable; many close ones
//! make it ambiguous (the paper's Table 3).

use std::sync::Arc;

use candle_core::Tensor;

use super::heads::Mlp;
use super::rotation::{argmax, verdict_color};
use super::{
    Batch, BatchExtra, BatchMaker, Canvas, Explained, HostBatch, HostTensor, MetricInfo,
    PretextTask, Preview, TaskOutput, chw_to_rgb_bytes, per_sample, preview_batch, rows,
};
use crate::config::{TaskKind, TaskSettings};
use crate::data::augment::{self, PatchLayout};
use crate::data::{Dataset, ops};
use crate::model::{Model, ModelError, ops as nn};

/// Tiles of a puzzle: a 3×3 grid.
pub const TILES: usize = 9;

/// An order of the 9 tiles: position `k` of the shuffled puzzle holds original tile `p[k]`
/// (tiles and positions in reading order).
pub type Permutation = [u8; TILES];

/// Number of orders of 9 tiles (9!).
pub const ALL_ORDERS: usize = 362_880;

/// Positions at which two orders differ.
pub fn hamming(a: &Permutation, b: &Permutation) -> u32 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as u32
}

/// All 9! orders, lexicographically.
pub fn all_permutations() -> Vec<Permutation> {
    let mut p: Permutation = [0, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut out = Vec::with_capacity(ALL_ORDERS);
    loop {
        out.push(p);
        // Next permutation in lexicographic order.
        let Some(i) = (0..TILES - 1).rev().find(|&i| p[i] < p[i + 1]) else {
            return out;
        };
        let j = (i + 1..TILES).rev().find(|&j| p[j] > p[i]).unwrap_or(i + 1);
        p.swap(i, j);
        p[i + 1..].reverse();
    }
}

/// The permutation set: `count` orders (at least 1, at most 9!) chosen greedily for maximal
/// Hamming distance, starting from the identity. Deterministic: the same `count` always gives
/// the same set, and a smaller set is a prefix of a larger one.
pub fn permutation_set(count: usize) -> Vec<Permutation> {
    let all = all_permutations();
    let count = count.clamp(1, all.len());
    let mut chosen = vec![all[0]];
    // Per candidate: distance to the nearest chosen order, and summed distance to all of them.
    let mut nearest: Vec<u8> = all.iter().map(|p| hamming(p, &all[0]) as u8).collect();
    let mut total: Vec<u32> = nearest.iter().map(|&d| u32::from(d)).collect();
    while chosen.len() < count {
        let mut best = 0;
        for k in 1..all.len() {
            if (nearest[k], total[k]) > (nearest[best], total[best]) {
                best = k;
            }
        }
        let pick = all[best];
        chosen.push(pick);
        for ((p, n), t) in all.iter().zip(&mut nearest).zip(&mut total) {
            let d = hamming(p, &pick);
            *n = (*n).min(d as u8);
            *t += d;
        }
    }
    chosen
}

/// The smallest Hamming distance between two orders of a set (9 for a set of one).
pub fn min_hamming(set: &[Permutation]) -> u32 {
    let mut min = TILES as u32;
    for (i, a) in set.iter().enumerate() {
        for b in &set[i + 1..] {
            min = min.min(hamming(a, b));
        }
    }
    min
}

/// Tiles in reading order → the shuffled puzzle: position `k` gets tile `p[k]`.
pub fn shuffle<T: Clone>(tiles: &[T], p: &Permutation) -> Vec<T> {
    p.iter().map(|&t| tiles[usize::from(t)].clone()).collect()
}

/// The shuffled puzzle → tiles in reading order, undoing [`shuffle`] by the same `p`.
pub fn unshuffle<T: Clone>(shuffled: &[T], p: &Permutation) -> Vec<T> {
    let mut out = shuffled.to_vec();
    for (k, &t) in p.iter().enumerate() {
        out[usize::from(t)] = shuffled[k].clone();
    }
    out
}

/// `"0123…"`: the original tile at each position of the shuffled puzzle.
pub fn permutation_name(p: &Permutation) -> String {
    p.iter().map(|d| char::from(b'0' + d)).collect()
}

pub struct Jigsaw {
    head: Mlp,
    maker: Arc<JigsawMaker>,
}

/// Makes puzzles: inputs (9N, 3, p, p), the 9 shuffled tiles of each image in a row (position
/// order), labels the permutation's index in the set, the layouts in [`BatchExtra::Patches`].
pub struct JigsawMaker {
    pub gap: f64,
    pub permutations: Arc<Vec<Permutation>>,
}

impl BatchMaker for JigsawMaker {
    fn make(&self, data: &Dataset, indices: &[usize], seed: u64) -> HostBatch {
        let s = data.size;
        let per: Vec<(Vec<f32>, u32, PatchLayout)> = per_sample(indices, seed, |idx, rng| {
            let layout = augment::patch_layout(s, self.gap, rng);
            let label = rng.below(self.permutations.len());
            let p = layout.patch;
            let tiles: Vec<(usize, usize)> = layout.origins.to_vec();
            let mut v = Vec::with_capacity(TILES * 3 * p * p);
            for (x, y) in shuffle(&tiles, &self.permutations[label]) {
                ops::push_chw(&augment::extract(data.image(idx), s, x, y, p), p, &mut v);
            }
            (v, label as u32, layout)
        });
        let n = indices.len();
        let p = per.first().map_or(1, |x| x.2.patch);
        let mut inputs = Vec::with_capacity(n * TILES * 3 * p * p);
        for (v, _, _) in &per {
            inputs.extend_from_slice(v);
        }
        HostBatch {
            inputs: HostTensor::new(inputs, &[TILES * n, 3, p, p]),
            labels: per.iter().map(|x| x.1).collect(),
            sources: indices.to_vec(),
            extra: BatchExtra::Patches(per.into_iter().map(|x| x.2).collect()),
            ..HostBatch::default()
        }
    }
}

/// One puzzle of the inspection batch and the model's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct JigsawSample {
    pub image_index: usize,
    pub layout: PatchLayout,
    /// Index of the applied permutation in the set.
    pub label: u32,
    /// P(permutation | tiles) over the set.
    pub probs: Vec<f32>,
}

impl Jigsaw {
    /// Builds the permutation set and the head `heads.jigsaw.` (9·z → 2·z → P).
    ///
    /// # Errors
    /// When the head's parameters cannot be made.
    pub fn new(model: &Model, settings: &TaskSettings) -> Result<Self, ModelError> {
        let vb = model.head_builder("jigsaw");
        let z = model.encoder.z_dim();
        // Validated settings are within the limit; others are held to it rather than asking
        // for a greedy pass over all 9! orders per permutation.
        let limit = crate::config::JIGSAW_PERMUTATIONS_RANGE;
        let count = settings
            .jigsaw_permutations
            .clamp(*limit.start(), *limit.end());
        let permutations = Arc::new(permutation_set(count));
        Ok(Self {
            head: Mlp::new(&vb, TILES * z, 2 * z, permutations.len())?,
            maker: Arc::new(JigsawMaker {
                gap: settings.patch_gap,
                permutations,
            }),
        })
    }

    /// The permutation set the head tells apart.
    pub fn permutations(&self) -> &[Permutation] {
        &self.maker.permutations
    }

    /// Tile embeddings (9N, D) → per puzzle (N, 9·D), the shuffled order kept.
    fn concatenated(z: &Tensor) -> candle_core::Result<Tensor> {
        let (tiles, d) = z.dims2()?;
        z.reshape((tiles / TILES, TILES * d))
    }

    /// (N, 9·D) concatenated tile embeddings and (N, P) logits.
    fn logits(
        &self,
        model: &Model,
        batch: &Batch,
        train: bool,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let z = model.encoder.forward(&batch.inputs, train)?.z;
        let joined = Self::concatenated(&z)?;
        let logits = self.head.forward(&joined)?;
        Ok((joined, logits))
    }
}

/// How this task's proxy metric reads.
pub const METRIC: MetricInfo =
    MetricInfo::percent("permutation accuracy", "Proxy accuracy", Some("chance 1/P"));

/// The 9 tiles of one puzzle (normalised CHW, position order) → RGB bytes of the 3×3 grid,
/// tiles abutting (side 3p).
fn puzzle_bytes(tiles: &[f32], p: usize) -> Vec<u8> {
    let side = 3 * p;
    let mut out = vec![0u8; side * side * 3];
    for (k, tile) in tiles.chunks(3 * p * p).take(TILES).enumerate() {
        let rgb = chw_to_rgb_bytes(tile, 3, p * p);
        let (ox, oy) = ((k % 3) * p, (k / 3) * p);
        for y in 0..p {
            let d = ((oy + y) * side + ox) * 3;
            out[d..d + 3 * p].copy_from_slice(&rgb[y * p * 3..(y + 1) * p * 3]);
        }
    }
    out
}

impl PretextTask for Jigsaw {
    fn kind(&self) -> TaskKind {
        TaskKind::Jigsaw
    }

    fn maker(&self) -> Arc<dyn BatchMaker> {
        self.maker.clone()
    }

    fn forward(&self, model: &Model, batch: &Batch, train: bool) -> Result<TaskOutput, ModelError> {
        let (_, logits) = self.logits(model, batch, train)?;
        let mut out = super::classification_output(&logits, batch)?;
        out.baseline = Some(1.0 / self.permutations().len() as f64);
        Ok(out)
    }

    fn explain(&self, model: &Model, batch: &Batch) -> Result<Explained, ModelError> {
        let (joined, logits) = self.logits(model, batch, true)?;
        let p = batch.host.inputs.shape[2];
        let inputs = batch
            .host
            .inputs
            .data
            .chunks(TILES * 3 * p * p)
            .map(|tiles| puzzle_bytes(tiles, p))
            .collect();
        Ok(Explained {
            math: crate::math::TaskMath::Likelihood {
                logits: rows(&logits)?,
                labels: batch.host.labels.clone(),
                classes: self.permutations().iter().map(permutation_name).collect(),
            },
            z: rows(&joined)?,
            inputs,
            input_size: 3 * p,
            transforms: Vec::new(),
        })
    }

    /// Per image: the shuffled puzzle as the network sees it (left), and its tiles put where the
    /// predicted permutation says they belong (right, framed green when right, red when wrong:
    /// a right answer shows the image whole again); under them P(permutation) with the true one
    /// blue (when the set is small enough for a bar each).
    fn preview(
        &self,
        model: &Model,
        data: &Dataset,
        indices: &[usize],
    ) -> Result<Preview, ModelError> {
        let batch = preview_batch(self.maker.as_ref(), model, data, indices)?;
        let (_, logits) = self.logits(model, &batch, false)?;
        let probs = nn::softmax(&logits)?.to_vec2::<f32>()?;
        let layouts = match &batch.host.extra {
            BatchExtra::Patches(l) => l.clone(),
            _ => Vec::new(),
        };
        let samples: Vec<JigsawSample> = indices
            .iter()
            .zip(layouts)
            .zip(probs)
            .zip(&batch.host.labels)
            .map(|(((&image_index, layout), probs), &label)| JigsawSample {
                image_index,
                layout,
                label,
                probs,
            })
            .collect();
        let p = samples.first().map_or(1, |sm| sm.layout.patch);
        let tf = (32 / p).max(1);
        let (tile, gap, pad, bars_h) = (p * tf, 2, 8, 18);
        let grid = 3 * tile + 2 * gap;
        let width = 2 * grid + pad;
        let per_row = 4;
        let rows = samples.len().div_ceil(per_row);
        let mut canvas = Canvas::new(
            per_row * (width + pad) + pad,
            rows * (grid + bars_h + 2 * pad) + pad,
            [24, 24, 28],
        );
        let set = self.permutations();
        let mut correct = 0;
        for (n, sm) in samples.iter().enumerate() {
            let x = pad + (n % per_row) * (width + pad);
            let y = pad + (n / per_row) * (grid + bars_h + 2 * pad);
            let img = data.image(sm.image_index);
            let tiles: Vec<Vec<u8>> = sm
                .layout
                .origins
                .iter()
                .map(|&(ox, oy)| augment::extract(img, data.size, ox, oy, p))
                .collect();
            let predicted = argmax(&sm.probs);
            let right = predicted as u32 == sm.label;
            correct += usize::from(right);
            let (Some(truth), Some(guess)) = (set.get(sm.label as usize), set.get(predicted))
            else {
                continue;
            };
            let shuffled = shuffle(&tiles, truth);
            let placed = unshuffle(&shuffled, guess);
            for (k, (a, b)) in shuffled.iter().zip(&placed).enumerate() {
                let (tx, ty) = ((k % 3) * (tile + gap), (k / 3) * (tile + gap));
                canvas.blit(a, p, p, tf, x + tx, y + ty);
                canvas.blit(b, p, p, tf, x + grid + pad + tx, y + ty);
            }
            canvas.frame(
                x + grid + pad - 3,
                y.saturating_sub(3),
                grid + 6,
                grid + 6,
                2,
                verdict_color(right),
            );
            if width / sm.probs.len().max(1) >= 2 {
                canvas.bars(
                    x,
                    y + grid + pad,
                    width,
                    bars_h,
                    &sm.probs,
                    Some(sm.label as usize),
                );
            }
        }
        Ok(Preview {
            task: TaskKind::Jigsaw,
            caption: format!(
                "jigsaw: {correct}/{} right (chance 1/{}); shuffled tiles | tiles where the predicted permutation puts them (green right, red wrong); bars P(permutation), true one blue",
                samples.len(),
                set.len()
            ),
            image: canvas,
            pixels: None,
        })
    }
}
