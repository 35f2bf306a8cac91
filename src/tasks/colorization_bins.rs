//! Colorization as classification (Zhang, Isola & Efros 2016, "Colorful Image Colorization"):
//! the input is the lightness L*, as for the regression variant ([`super::colorization`]); the
//! output, per pixel, a distribution over the Q bins of a*b* (grid 10, only the bins the sRGB
//! gamut reaches: Q = 261) from the dense decoder with Q output channels, (N, Q, H, W).
//!
//! - Target: the soft encoding of the true a*b* over its 5 nearest bins, Gaussian σ = 5 (§2.1).
//! - Loss: class-rebalanced cross-entropy `−(1/HW) Σ_{h,w} v(Z_hw) Σ_q Z_hw,q log Ẑ_hw,q` with
//!   `v(Z_hw) = w_{q*}`, q* the pixel's nearest bin and `w ∝ ((1−λ)p̃ + λ/Q)⁻¹`, λ = 1/2,
//!   normalised so that `E_p̃[w] = Σ_q p̃_q w_q = 1` (§2.2). p̃ is the empirical a*b* prior of
//!   the training data (the nearest-bin histogram of up to [`PRIOR_IMAGES`] images spread over
//!   the data set), smoothed with a Gaussian of σ = 5 a*b* units; it is computed once, when the
//!   task is built.
//! - Decoding: the annealed mean `H(Z) = E[softmax(log Ẑ / T)]` over the bin centres, T = 0.38
//!   (§2.3), for the previews and the proxy metric.
//! - Proxy metric: the regression variant's, the share of pixels whose decoded a*b* is within
//!   `color_threshold` of the truth, next to the best constant colour, so the two variants read
//!   on one scale.
//!
//! A task of its own ([`TaskKind::ColorizationBins`], head under `heads.colorization_bins.`, an
//! identifier PyTorch can name a submodule by)
//! rather than a mode of colorization: its head has Q output channels instead of 2, so a mode
//! would give one checkpoint name two shapes (a run could not be resumed or initialised from the
//! other variant without a shape error); its batches carry soft targets and weights the
//! regression does not; its Math step differs; and as two tasks both variants can train side
//! by side on one encoder, their metrics on the same scale.

use std::sync::{Arc, OnceLock};

use candle_core::Tensor;
use rayon::prelude::*;

use super::colorization::{AB_SCALE, agreement, constant_baseline, normalize_l};
use super::heads::Decoder;
use super::{
    Batch, BatchMaker, Canvas, Explained, HostBatch, HostTensor, MetricInfo, PretextTask, Preview,
    TaskOutput, inputs_to_bytes, per_image, per_sample, preview_batch, preview_factor, rows,
};
use crate::config::{TaskKind, TaskSettings};
use crate::data::{Dataset, color};
use crate::model::{Model, ModelError, ops as nn};

/// Spacing of the a*b* grid (the paper's grid size).
pub const GRID_STEP: f32 = 10.0;
/// Bin centres per axis: −110, −100, …, 110 (every sRGB colour's a* and b* lie within ±110).
pub const GRID_SIDE: usize = 23;
/// Bins of the soft encoding.
pub const SOFT_NEIGHBOURS: usize = 5;
/// σ of the soft encoding, in a*b* units.
pub const SOFT_SIGMA: f32 = 5.0;
/// σ of the Gaussian that smooths the empirical prior, in a*b* units.
pub const PRIOR_SIGMA: f64 = 5.0;
/// Weight λ of the uniform distribution mixed into the prior for the rebalancing weights.
pub const PRIOR_LAMBDA: f64 = 0.5;
/// Temperature of the annealed mean.
pub const ANNEAL_T: f32 = 0.38;
/// Most images the empirical prior is counted from.
pub const PRIOR_IMAGES: usize = 512;

/// The grid cell (row b*, column a*) of an a*b* pair (the nearest grid point), if the grid
/// holds it.
pub fn grid_cell(a: f32, b: f32) -> Option<(usize, usize)> {
    let half = (GRID_SIDE / 2) as f32;
    let col = (a / GRID_STEP).round() + half;
    let row = (b / GRID_STEP).round() + half;
    let inside = |v: f32| (0.0..GRID_SIDE as f32).contains(&v);
    (inside(col) && inside(row)).then_some((row as usize, col as usize))
}

/// The quantised a*b* space: the grid's bins that some 8-bit sRGB colour falls into.
#[derive(Clone, Debug, PartialEq)]
pub struct Bins {
    /// (a*, b*) of each bin's centre, in grid order (b* rows, then a* columns).
    centres: Vec<[f32; 2]>,
    /// Grid cell (row b*, column a*) of each bin.
    cells: Vec<(usize, usize)>,
    /// Bin of each grid cell, row-major; `None` outside the gamut.
    bin_of_cell: Vec<Option<u32>>,
}

impl Bins {
    /// The bins every sRGB colour with 8 bits per channel falls into, found by converting all
    /// 2²⁴ of them with [`color`]'s own sRGB → L*a*b* (so every pixel of the data lands in a
    /// bin); computed once per process. 261 bins (the paper keeps 313 by a criterion it does not
    /// state; the grid points that are themselves in gamut at some L* number 229).
    pub fn in_gamut() -> Arc<Bins> {
        static BINS: OnceLock<Arc<Bins>> = OnceLock::new();
        BINS.get_or_init(|| Arc::new(Self::sweep())).clone()
    }

    fn sweep() -> Self {
        let lut: Vec<f64> = (0..=255u8)
            .map(|v| color::srgb_to_linear(f64::from(v) / 255.0))
            .collect();
        let hit = (0..256usize)
            .into_par_iter()
            .map(|r| {
                let mut hit = vec![false; GRID_SIDE * GRID_SIDE];
                for g in 0..256 {
                    for b in 0..256 {
                        let lab = color::linear_rgb_to_lab([lut[r], lut[g], lut[b]]);
                        if let Some((row, col)) = grid_cell(lab[1] as f32, lab[2] as f32) {
                            hit[row * GRID_SIDE + col] = true;
                        }
                    }
                }
                hit
            })
            .reduce(
                || vec![false; GRID_SIDE * GRID_SIDE],
                |a, b| a.iter().zip(&b).map(|(x, y)| *x || *y).collect(),
            );
        Self::from_cells(&hit)
    }

    /// Bins for the grid cells marked in `hit` (row-major, [`GRID_SIDE`]²).
    pub fn from_cells(hit: &[bool]) -> Self {
        let half = (GRID_SIDE / 2) as f32;
        let mut bins = Self {
            centres: Vec::new(),
            cells: Vec::new(),
            bin_of_cell: vec![None; GRID_SIDE * GRID_SIDE],
        };
        for (i, _) in hit.iter().enumerate().filter(|(_, h)| **h) {
            let (row, col) = (i / GRID_SIDE, i % GRID_SIDE);
            bins.bin_of_cell[i] = Some(bins.centres.len() as u32);
            bins.centres.push([
                (col as f32 - half) * GRID_STEP,
                (row as f32 - half) * GRID_STEP,
            ]);
            bins.cells.push((row, col));
        }
        bins
    }

    /// Q, the number of bins.
    pub fn len(&self) -> usize {
        self.centres.len()
    }

    pub fn is_empty(&self) -> bool {
        self.centres.is_empty()
    }

    /// (a*, b*) of every bin's centre.
    pub fn centres(&self) -> &[[f32; 2]] {
        &self.centres
    }

    /// Grid cell (row b*, column a*) of every bin.
    pub fn cells(&self) -> &[(usize, usize)] {
        &self.cells
    }

    /// The bin whose centre is nearest to (a*, b*).
    pub fn nearest(&self, a: f32, b: f32) -> u32 {
        match grid_cell(a, b).and_then(|(r, c)| self.bin_of_cell[r * GRID_SIDE + c]) {
            Some(q) => q,
            None => self.soft_encode(a, b)[0].0,
        }
    }

    /// The soft encoding of (a*, b*): its [`SOFT_NEIGHBOURS`] nearest bins, nearest first, each
    /// weighted by a Gaussian (σ = [`SOFT_SIGMA`]) of its distance, the weights summing to 1.
    pub fn soft_encode(&self, a: f32, b: f32) -> [(u32, f32); SOFT_NEIGHBOURS] {
        let d2 = |q: usize| {
            let [ca, cb] = self.centres[q];
            (ca - a).powi(2) + (cb - b).powi(2)
        };
        // The bins within two cells of the nearest cell; those outside it are at least
        // 2.5 cells − half a cell = 20 a*b* units away, so the window is exact when its fifth
        // nearest is within that.
        let half = (GRID_SIDE / 2) as f32;
        let clampi = |v: f32| (v.round() + half).clamp(0.0, (GRID_SIDE - 1) as f32) as usize;
        let (r0, c0) = (clampi(b / GRID_STEP), clampi(a / GRID_STEP));
        let mut near: Vec<(f32, usize)> = Vec::with_capacity(25);
        for r in r0.saturating_sub(2)..(r0 + 3).min(GRID_SIDE) {
            for c in c0.saturating_sub(2)..(c0 + 3).min(GRID_SIDE) {
                if let Some(q) = self.bin_of_cell[r * GRID_SIDE + c] {
                    near.push((d2(q as usize), q as usize));
                }
            }
        }
        near.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        let reach = (2.0 * GRID_STEP).powi(2);
        if near.len() < SOFT_NEIGHBOURS || near[SOFT_NEIGHBOURS - 1].0 > reach {
            near = (0..self.len()).map(|q| (d2(q), q)).collect();
            near.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        }
        let mut out = [(0u32, 0f32); SOFT_NEIGHBOURS];
        let nearest = near.first().map_or(0.0, |n| n.0);
        let mut total = 0f32;
        for (o, &(d, q)) in out.iter_mut().zip(&near) {
            // Relative to the nearest, so far-away colours do not underflow to all zeros.
            let w = (-(d - nearest) / (2.0 * SOFT_SIGMA * SOFT_SIGMA)).exp();
            *o = (q as u32, w);
            total += w;
        }
        for o in &mut out {
            o.1 /= total.max(f32::MIN_POSITIVE);
        }
        out
    }

    /// Per-bin values laid out on the whole a*b* grid (row b*, column a*, [`GRID_SIDE`]²),
    /// `outside` where the gamut does not reach.
    pub fn on_grid(&self, per_bin: &[f32], outside: f32) -> Vec<f32> {
        let mut grid = vec![outside; GRID_SIDE * GRID_SIDE];
        for (&(r, c), &v) in self.cells.iter().zip(per_bin) {
            grid[r * GRID_SIDE + c] = v;
        }
        grid
    }
}

/// The colour prior of the training data and the class-rebalancing weights it gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Prior {
    /// p: the share of the counted pixels whose nearest bin is each bin.
    pub empirical: Vec<f64>,
    /// p̃: p smoothed by a Gaussian of σ = [`PRIOR_SIGMA`] over the bin centres.
    pub smoothed: Vec<f64>,
    /// w ∝ ((1−λ)p̃ + λ/Q)⁻¹ with Σ_q p̃_q w_q = 1.
    pub weights: Vec<f64>,
    /// Images counted.
    pub images: usize,
}

impl Prior {
    /// Counts the nearest bins of every pixel of up to [`PRIOR_IMAGES`] images spread evenly
    /// over `data` (all of them when there are fewer), smooths and rebalances.
    pub fn of(data: &Dataset, bins: &Bins) -> Self {
        let n = data.len();
        let take = n.min(PRIOR_IMAGES);
        let picked: Vec<usize> = (0..take).map(|i| i * n / take.max(1)).collect();
        let counts = picked
            .par_iter()
            .map(|&idx| {
                let mut c = vec![0u64; bins.len()];
                let (_, a, b) = color::image_to_lab_planes(data.image(idx));
                for (&a, &b) in a.iter().zip(&b) {
                    c[bins.nearest(a, b) as usize] += 1;
                }
                c
            })
            .reduce(
                || vec![0u64; bins.len()],
                |x, y| x.iter().zip(&y).map(|(p, q)| p + q).collect(),
            );
        Self::from_counts(&counts, bins, take)
    }

    /// The prior of per-bin pixel counts (uniform when nothing was counted).
    pub fn from_counts(counts: &[u64], bins: &Bins, images: usize) -> Self {
        let total: u64 = counts.iter().sum();
        let q = bins.len().max(1) as f64;
        let empirical: Vec<f64> = if total == 0 {
            vec![1.0 / q; bins.len()]
        } else {
            counts.iter().map(|&c| c as f64 / total as f64).collect()
        };
        let smoothed = smooth(&empirical, bins, PRIOR_SIGMA);
        let weights = rebalancing_weights(&smoothed, PRIOR_LAMBDA);
        Self {
            empirical,
            smoothed,
            weights,
            images,
        }
    }
}

/// A distribution over the bins convolved with a Gaussian of `sigma` a*b* units over their
/// centres, renormalised over the bins.
pub fn smooth(p: &[f64], bins: &Bins, sigma: f64) -> Vec<f64> {
    let c = bins.centres();
    let mut out: Vec<f64> = c
        .iter()
        .map(|x| {
            c.iter()
                .zip(p)
                .map(|(y, &py)| {
                    let d2 = f64::from(x[0] - y[0]).powi(2) + f64::from(x[1] - y[1]).powi(2);
                    py * (-d2 / (2.0 * sigma * sigma)).exp()
                })
                .sum()
        })
        .collect();
    let total: f64 = out.iter().sum();
    if total > 0.0 {
        out.iter_mut().for_each(|v| *v /= total);
    }
    out
}

/// Class-rebalancing weights `w_q ∝ ((1−λ) p̃_q + λ/Q)⁻¹`, scaled so that `Σ_q p̃_q w_q = 1`
/// (the paper's E[w] = 1).
pub fn rebalancing_weights(smoothed: &[f64], lambda: f64) -> Vec<f64> {
    let q = smoothed.len().max(1) as f64;
    let raw: Vec<f64> = smoothed
        .iter()
        .map(|&p| 1.0 / ((1.0 - lambda) * p + lambda / q))
        .collect();
    let mean: f64 = raw.iter().zip(smoothed).map(|(w, p)| w * p).sum();
    raw.iter()
        .map(|w| w / mean.max(f64::MIN_POSITIVE))
        .collect()
}

/// The annealed mean of dense logits, flat (N, Q, H, W) with `plane` = H·W → a*b*, flat
/// (N, 2, H, W): per pixel `Σ_q softmax(logits / T)_q · centre_q`, i.e. the mean of `Ẑ^(1/T)`
/// renormalised. T = 1 is the distribution's mean, T → 0 its mode; the paper's T = 0.38 sits
/// between (§2.3).
pub fn annealed_mean(logits: &[f32], centres: &[[f32; 2]], plane: usize, t: f32) -> Vec<f32> {
    let q = centres.len();
    let mut out = vec![0f32; logits.len() / q.max(1) * 2];
    out.par_chunks_mut((2 * plane).max(1))
        .zip(logits.par_chunks((q * plane).max(1)))
        .for_each(|(o, x)| {
            let mut max = vec![f32::NEG_INFINITY; plane];
            for c in x.chunks_exact(plane) {
                for (m, v) in max.iter_mut().zip(c) {
                    *m = m.max(*v);
                }
            }
            let (mut sum, mut a, mut b) = (vec![0f32; plane], vec![0f32; plane], vec![0f32; plane]);
            for (c, [ca, cb]) in x.chunks_exact(plane).zip(centres) {
                for p in 0..plane {
                    let e = ((c[p] - max[p]) / t).exp();
                    sum[p] += e;
                    a[p] += e * ca;
                    b[p] += e * cb;
                }
            }
            let (oa, ob) = o.split_at_mut(plane);
            for p in 0..plane {
                oa[p] = a[p] / sum[p];
                ob[p] = b[p] / sum[p];
            }
        });
    out
}

/// Softmax over the bins of one pixel's logits, taken from a flat (N, Q, H, W) array.
fn pixel_distribution(
    logits: &[f32],
    q: usize,
    plane: usize,
    image: usize,
    pixel: usize,
) -> Vec<f32> {
    let at: Vec<f32> = (0..q)
        .map(|k| logits[(image * q + k) * plane + pixel])
        .collect();
    let max = at.iter().fold(f32::MIN, |m, v| m.max(*v));
    let e: Vec<f32> = at.iter().map(|v| (v - max).exp()).collect();
    let total: f32 = e.iter().sum();
    e.iter().map(|v| v / total).collect()
}

pub struct ColorizationBins {
    decoder: Decoder,
    maker: Arc<BinsMaker>,
    threshold: f64,
    /// The pixel (row, column) whose colour distribution the preview shows: the centre until
    /// a person clicks one.
    selected: std::sync::Mutex<Option<(usize, usize)>>,
}

/// Makes batches: inputs L* (N, C, H, W) as the regression variant; target the true a*b*/100
/// (N, 2, H, W) for the metric; labels the [`SOFT_NEIGHBOURS`] bins of each pixel (N, K, H, W)
/// and weights their soft encoding times the pixel's rebalancing weight (N, K, H, W).
pub struct BinsMaker {
    /// Input channels: 1 (L) or 3 (L repeated, when the encoder is shared with RGB tasks).
    pub channels: usize,
    pub bins: Arc<Bins>,
    pub prior: Arc<Prior>,
}

impl BatchMaker for BinsMaker {
    fn make(&self, data: &Dataset, indices: &[usize], _seed: u64) -> HostBatch {
        let s = data.size;
        let plane = s * s;
        let k = SOFT_NEIGHBOURS;
        type Sample = (Vec<f32>, Vec<f32>, Vec<u32>, Vec<f32>);
        let per: Vec<Sample> = per_sample(indices, 0, |idx, _| {
            let (l, a, b) = color::image_to_lab_planes(data.image(idx));
            let l: Vec<f32> = l.iter().map(|&v| normalize_l(v)).collect();
            let mut input = Vec::with_capacity(self.channels * plane);
            for _ in 0..self.channels {
                input.extend_from_slice(&l);
            }
            let target: Vec<f32> = a.iter().chain(&b).map(|&v| v / AB_SCALE).collect();
            let mut bins = vec![0u32; k * plane];
            let mut weights = vec![0f32; k * plane];
            for p in 0..plane {
                let soft = self.bins.soft_encode(a[p], b[p]);
                let v = self.prior.weights[self.bins.nearest(a[p], b[p]) as usize] as f32;
                for (j, &(q, z)) in soft.iter().enumerate() {
                    bins[j * plane + p] = q;
                    weights[j * plane + p] = z * v;
                }
            }
            (input, target, bins, weights)
        });
        let n = indices.len();
        let mut inputs = Vec::with_capacity(n * self.channels * plane);
        let mut targets = Vec::with_capacity(n * 2 * plane);
        let mut labels = Vec::with_capacity(n * k * plane);
        let mut weights = Vec::with_capacity(n * k * plane);
        for (i, t, l, w) in per {
            inputs.extend(i);
            targets.extend(t);
            labels.extend(l);
            weights.extend(w);
        }
        HostBatch {
            inputs: HostTensor::new(inputs, &[n, self.channels, s, s]),
            target: Some(HostTensor::new(targets, &[n, 2, s, s])),
            labels,
            weights: Some(HostTensor::new(weights, &[n, k, s, s])),
            sources: indices.to_vec(),
            ..HostBatch::default()
        }
    }
}

/// How this task's proxy metric reads: the regression variant's, so the two compare.
pub const METRIC: MetricInfo = MetricInfo::percent(
    "colour agreement",
    "Proxy colour agreement",
    Some("constant a*b*"),
);

impl ColorizationBins {
    /// The in-gamut bins, the prior of `data` and the head `heads.colorization_bins.` (the dense
    /// decoder with Q outputs).
    ///
    /// # Errors
    /// When the head's parameters cannot be made.
    pub fn new(
        model: &Model,
        channels: usize,
        settings: &TaskSettings,
        data: &Dataset,
    ) -> Result<Self, ModelError> {
        let bins = Bins::in_gamut();
        let prior = Arc::new(Prior::of(data, &bins));
        let vb = model.head_builder("colorization_bins");
        Ok(Self {
            decoder: Decoder::new(&vb, model.encoder.z_dim(), bins.len())?,
            maker: Arc::new(BinsMaker {
                channels,
                bins,
                prior,
            }),
            threshold: settings.color_threshold,
            selected: std::sync::Mutex::new(None),
        })
    }

    pub fn bins(&self) -> &Bins {
        &self.maker.bins
    }

    /// The colour prior the rebalancing weights came from.
    pub fn prior(&self) -> &Prior {
        &self.maker.prior
    }

    /// Per-bin logits (N, Q, H, W) and z (N, D).
    fn logits(
        &self,
        model: &Model,
        batch: &Batch,
        train: bool,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let out = model.encoder.forward(&batch.inputs, train)?;
        Ok((self.decoder.forward(&out.fmap)?, out.z))
    }

    /// The predicted distribution over the bins (Ẑ, T = 1) at `pixel` (row, column) of data-set
    /// image `image`, in evaluation mode: what the preview's heat map shows for the selected pixel.
    ///
    /// # Errors
    /// When the pixel lies outside the image, or the model fails.
    pub fn distribution_at(
        &self,
        model: &Model,
        data: &Dataset,
        image: usize,
        pixel: (usize, usize),
    ) -> Result<Vec<f32>, ModelError> {
        let s = data.size;
        if pixel.0 >= s || pixel.1 >= s || image >= data.len() {
            return Err(ModelError::Invalid(format!(
                "pixel {pixel:?} of image {image}: outside the {s}×{s} images or the data set"
            )));
        }
        let batch = preview_batch(self.maker.as_ref(), model, data, &[image])?;
        let (logits, _) = self.logits(model, &batch, false)?;
        let flat = logits.flatten_all()?.to_vec1::<f32>()?;
        Ok(pixel_distribution(
            &flat,
            self.bins().len(),
            s * s,
            0,
            pixel.0 * s + pixel.1,
        ))
    }
}

impl PretextTask for ColorizationBins {
    fn kind(&self) -> TaskKind {
        TaskKind::ColorizationBins
    }

    fn maker(&self) -> Arc<dyn BatchMaker> {
        self.maker.clone()
    }

    fn select_pixel(&self, pixel: (usize, usize)) {
        *self
            .selected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pixel);
    }

    fn forward(&self, model: &Model, batch: &Batch, train: bool) -> Result<TaskOutput, ModelError> {
        let (logits, _) = self.logits(model, batch, train)?;
        let weights = batch.weights()?;
        let indices = batch.labels()?.reshape(weights.shape())?;
        let loss = nn::dense_soft_cross_entropy(&logits, &indices, weights)?;
        let s = batch.host.inputs.shape[2];
        let flat = logits.detach().flatten_all()?.to_vec1::<f32>()?;
        let pred_ab = annealed_mean(&flat, self.bins().centres(), s * s, ANNEAL_T);
        let true_ab: Vec<f32> = batch
            .host
            .target
            .as_ref()
            .map(|t| t.data.iter().map(|x| x * AB_SCALE).collect())
            .unwrap_or_default();
        Ok(TaskOutput {
            loss,
            metric: agreement(&pred_ab, &true_ab, s * s, self.threshold),
            baseline: Some(constant_baseline(&true_ab, s * s, self.threshold)),
            images: batch.len(),
        })
    }

    fn explain(&self, model: &Model, batch: &Batch) -> Result<Explained, ModelError> {
        let (logits, z) = self.logits(model, batch, true)?;
        let s = batch.host.inputs.shape[2];
        let k = SOFT_NEIGHBOURS * s * s;
        let weights = batch
            .host
            .weights
            .as_ref()
            .map(|w| w.data.chunks(k).map(<[f32]>::to_vec).collect())
            .unwrap_or_default();
        Ok(Explained {
            math: crate::math::TaskMath::ColorClasses {
                logits: per_image(&logits)?,
                indices: batch.host.labels.chunks(k).map(<[u32]>::to_vec).collect(),
                weights,
                bins: self.bins().centres().to_vec(),
                size: s,
            },
            z: rows(&z)?,
            inputs: inputs_to_bytes(&batch.host.inputs),
            input_size: s,
            transforms: Vec::new(),
        })
    }

    /// One row per image: lightness L* (the selected pixel framed: the centre until a person
    /// clicks one in the enlarged preview) | colour decoded by the annealed mean | truth | the
    /// predicted distribution Ẑ at that pixel over the a*b* grid (a*
    /// left to right, b* top to bottom; dark outside the gamut; the true colour's bin framed green).
    fn preview(
        &self,
        model: &Model,
        data: &Dataset,
        indices: &[usize],
    ) -> Result<Preview, ModelError> {
        let batch = preview_batch(self.maker.as_ref(), model, data, indices)?;
        let (logits, _) = self.logits(model, &batch, false)?;
        let flat = logits.flatten_all()?.to_vec1::<f32>()?;
        let s = data.size;
        let plane = s * s;
        let pred = annealed_mean(&flat, self.bins().centres(), plane, ANNEAL_T);
        let q = self.bins().len();
        let f = preview_factor(s);
        let cell = s * f;
        let hm = (cell / GRID_SIDE).max(3);
        let pad = 6;
        let mut canvas = Canvas::new(
            3 * (cell + pad) + GRID_SIDE * hm + 2 * pad,
            indices.len() * (cell.max(GRID_SIDE * hm) + pad) + pad,
            [24, 24, 28],
        );
        let (pr, pc) = self
            .selected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .unwrap_or((s / 2, s / 2));
        let (pr, pc) = (pr.min(s - 1), pc.min(s - 1));
        let centre = pr * s + pc;
        let zeros = vec![0f32; plane];
        let mut rows = Vec::new();
        let mut agreements = Vec::new();
        for (row, &idx) in indices.iter().enumerate() {
            let (l, a, b) = color::image_to_lab_planes(data.image(idx));
            let p = &pred[row * 2 * plane..(row + 1) * 2 * plane];
            let true_ab: Vec<f32> = a.iter().chain(&b).copied().collect();
            agreements.push(agreement(p, &true_ab, plane, self.threshold));
            let y = pad + row * (cell.max(GRID_SIDE * hm) + pad);
            rows.push(y);
            for (col, img) in [
                color::lab_planes_to_image(&l, &zeros, &zeros),
                color::lab_planes_to_image(&l, &p[..plane], &p[plane..]),
                data.image(idx).to_vec(),
            ]
            .iter()
            .enumerate()
            {
                canvas.blit(img, s, s, f, pad + col * (cell + pad), y);
            }
            for col in 0..3 {
                canvas.frame(
                    (pad + col * (cell + pad) + pc * f).saturating_sub(1),
                    (y + pr * f).saturating_sub(1),
                    f + 2,
                    f + 2,
                    1,
                    [255, 60, 60],
                );
            }
            let dist = pixel_distribution(&flat, q, plane, row, centre);
            let hi = dist.iter().fold(0f32, |m, v| m.max(*v)).max(1e-6);
            let x0 = pad + 3 * (cell + pad);
            canvas.heatmap(
                (x0, y),
                &self.bins().on_grid(&dist, 0.0),
                GRID_SIDE,
                hm,
                (0.0, hi),
            );
            let grid = self.bins().on_grid(&vec![1.0; q], 0.0);
            for (i, _) in grid.iter().enumerate().filter(|(_, v)| **v == 0.0) {
                let (r, c) = (i / GRID_SIDE, i % GRID_SIDE);
                canvas.fill_rect(x0 + c * hm, y + r * hm, hm, hm, [40, 40, 44]);
            }
            let (tr, tc) = self.bins().cells()[self.bins().nearest(a[centre], b[centre]) as usize];
            canvas.frame(x0 + tc * hm, y + tr * hm, hm, hm, 1, [60, 220, 60]);
        }
        let mean = agreements.iter().sum::<f64>() / agreements.len().max(1) as f64;
        Ok(Preview {
            task: TaskKind::ColorizationBins,
            caption: format!(
                "colorization (bins): lightness L* | annealed mean (T = {ANNEAL_T}) | truth | P(a*b* bin) at the framed pixel (row {pr}, column {pc}; click another) over the {q} in-gamut bins, true bin green; {:.0}% of pixels within {} a*b* units",
                mean * 100.0,
                self.threshold
            ),
            image: canvas,
            pixels: Some(super::PixelGrid {
                columns: (0..3).map(|col| pad + col * (cell + pad)).collect(),
                rows,
                side: s,
                factor: f,
            }),
        })
    }
}
