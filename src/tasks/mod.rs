//! Pretext tasks: each turns unlabelled images into inputs and self-made labels, computes its
//! loss and proxy metric from the shared encoder plus its own head, and draws previews.
//!
//! A task has two halves: a [`BatchMaker`] that builds batches on the CPU from the data alone
//! (so batches can be made ahead of time on another thread), and the [`PretextTask`] itself,
//! which owns the head and computes loss, metric and previews. Adding a task means adding a
//! [`TaskKind`] variant, a file here, and a line in [`build`].

pub mod canvas;
pub mod colorization;
pub mod colorization_bins;
pub mod contrastive;
pub mod heads;
pub mod inpainting;
pub mod jigsaw;
pub mod patch;
pub mod rotation;
pub mod siamese;

use std::sync::Arc;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::config::{TaskKind, TaskSettings};
use crate::data::Dataset;
use crate::data::augment::{AugmentRecord, PatchLayout};
use crate::model::{Model, ModelError};
use crate::rng::Rng;
pub use canvas::Canvas;

/// Seed of the inspection batch: previews always show the same images under the same masks,
/// crops and rotations, so change over time is visible.
pub const PREVIEW_SEED: u64 = 0x5EE_D1E5;

/// A host-side array.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostTensor {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

impl HostTensor {
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Self {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Self {
            data,
            shape: shape.to_vec(),
        }
    }

    pub fn upload(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_slice(&self.data, self.shape.as_slice(), device)
    }
}

/// Task-specific facts about a batch, kept for metrics and previews.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum BatchExtra {
    #[default]
    None,
    /// Patch prediction and jigsaw: each sample's layout.
    Patches(Vec<PatchLayout>),
    /// Contrastive: what T did to each image's two views.
    Views(Vec<(AugmentRecord, AugmentRecord)>),
}

/// A batch built on the CPU.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostBatch {
    /// Network inputs (B, C, H, W); for two-view tasks the first views of all images, then
    /// the second views.
    pub inputs: HostTensor,
    /// Regression targets (colour, pixels).
    pub target: Option<HostTensor>,
    /// Inpainting: 1 where hidden, (B, 1, H, W).
    pub mask: Option<HostTensor>,
    /// Class labels for classification tasks, one per sample; for colorization-bins the K
    /// target bins of every pixel, (N, K, H, W) flattened.
    pub labels: Vec<u32>,
    /// Weights of soft targets, (N, K, H, W): colorization-bins' soft encoding of each pixel's
    /// K nearest bins times the pixel's class-rebalancing weight.
    pub weights: Option<HostTensor>,
    /// Which data-set image each sample came from.
    pub sources: Vec<usize>,
    /// A trivial method's score on this batch, in the proxy metric's unit.
    pub baseline: Option<f64>,
    pub extra: BatchExtra,
}

impl HostBatch {
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Copies the arrays to the device.
    pub fn upload(self, device: &Device) -> candle_core::Result<Batch> {
        let labels = if self.labels.is_empty() {
            None
        } else {
            Some(Tensor::new(self.labels.as_slice(), device)?)
        };
        Ok(Batch {
            inputs: self.inputs.upload(device)?,
            target: self.target.as_ref().map(|t| t.upload(device)).transpose()?,
            mask: self.mask.as_ref().map(|t| t.upload(device)).transpose()?,
            weights: self
                .weights
                .as_ref()
                .map(|t| t.upload(device))
                .transpose()?,
            labels,
            host: self,
        })
    }
}

/// A batch on the model's device, with its host copy.
pub struct Batch {
    pub inputs: Tensor,
    pub target: Option<Tensor>,
    pub mask: Option<Tensor>,
    pub weights: Option<Tensor>,
    pub labels: Option<Tensor>,
    pub host: HostBatch,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    pub fn labels(&self) -> Result<&Tensor, ModelError> {
        self.labels
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("batch without labels".into()))
    }

    pub fn weights(&self) -> Result<&Tensor, ModelError> {
        self.weights
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("batch without target weights".into()))
    }

    pub fn target(&self) -> Result<&Tensor, ModelError> {
        self.target
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("batch without targets".into()))
    }
}

/// What one forward pass of a task gives.
pub struct TaskOutput {
    /// Scalar loss, part of the autograd graph when training.
    pub loss: Tensor,
    /// The proxy metric on this batch (a fraction in [0, 1] for accuracies, dB for PSNR).
    pub metric: f64,
    /// A trivial method's score on the same batch, when the metric needs one to mean anything.
    pub baseline: Option<f64>,
    /// Images that went into the loss.
    pub images: usize,
}

/// How a proxy metric reads.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct MetricInfo {
    /// e.g. "rotation accuracy".
    pub name: &'static str,
    /// Short label for the classic epoch line, e.g. "Proxy accuracy".
    pub label: &'static str,
    /// Shown as a percentage (fractions) or as a number with `unit`.
    pub percent: bool,
    pub unit: &'static str,
    /// What the baseline is, when the task reports one (e.g. "mean fill").
    pub baseline: Option<&'static str>,
}

impl MetricInfo {
    /// A fraction shown in percent (accuracy, agreement).
    pub const fn percent(
        name: &'static str,
        label: &'static str,
        baseline: Option<&'static str>,
    ) -> Self {
        Self {
            name,
            label,
            percent: true,
            unit: "%",
            baseline,
        }
    }

    /// A number with a unit (e.g. PSNR in dB).
    pub const fn measure(
        name: &'static str,
        label: &'static str,
        unit: &'static str,
        baseline: Option<&'static str>,
    ) -> Self {
        Self {
            name,
            label,
            percent: false,
            unit,
            baseline,
        }
    }

    /// `62%` or `23.4 dB`.
    pub fn format(&self, value: f64) -> String {
        if self.percent {
            // One decimal below 10%, so small values (chance of a contrastive batch) show.
            let p = value * 100.0;
            if p > 0.0 && p < 10.0 {
                format!("{p:.1}%")
            } else {
                format!("{p:.0}%")
            }
        } else {
            format!("{value:.2}{}", self.unit)
        }
    }
}

/// How a task's proxy metric reads, without building the task (e.g. for a run read back from
/// its directory).
pub fn metric_info(kind: TaskKind) -> MetricInfo {
    match kind {
        TaskKind::Colorization => colorization::METRIC,
        TaskKind::ColorizationBins => colorization_bins::METRIC,
        TaskKind::Inpainting => inpainting::METRIC,
        TaskKind::Rotation => rotation::METRIC,
        TaskKind::Patch => patch::METRIC,
        TaskKind::Jigsaw => jigsaw::METRIC,
        TaskKind::Contrastive => contrastive::METRIC,
        TaskKind::Moco
        | TaskKind::Byol
        | TaskKind::Simsiam
        | TaskKind::BarlowTwins
        | TaskKind::Vicreg => siamese::METRIC,
    }
}

/// A picture of what a task sees and predicts, for the inspection batch.
#[derive(Clone, Debug)]
pub struct Preview {
    pub task: TaskKind,
    pub caption: String,
    pub image: Canvas,
    /// Where the preview draws images whose pixels can be clicked (see
    /// [`PretextTask::select_pixel`]); None when clicks mean nothing to the task.
    pub pixels: Option<PixelGrid>,
}

/// The images of a preview laid out in rows (one per inspection image) and columns, each
/// `side` pixels drawn `factor` times larger, with their top-left corners at every
/// (`columns[c]`, `rows[r]`) of the canvas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PixelGrid {
    pub columns: Vec<usize>,
    pub rows: Vec<usize>,
    pub side: usize,
    pub factor: usize,
}

impl PixelGrid {
    /// The image pixel (row, column) under canvas point (x, y), if any.
    pub fn pixel_at(&self, x: f32, y: f32) -> Option<(usize, usize)> {
        let span = (self.side * self.factor) as f32;
        let inside = |origin: usize, v: f32| {
            let d = v - origin as f32;
            (d >= 0.0 && d < span).then(|| (d / self.factor.max(1) as f32) as usize)
        };
        let col = self.columns.iter().find_map(|&c| inside(c, x))?;
        let row = self.rows.iter().find_map(|&r| inside(r, y))?;
        Some((row.min(self.side - 1), col.min(self.side - 1)))
    }
}

/// Builds batches from the data alone; shared with the thread that makes batches ahead.
pub trait BatchMaker: Send + Sync {
    /// Builds the batch for data-set images `indices`; all randomness comes from `seed`
    /// (one stream per position in the batch, so the result does not depend on threads).
    fn make(&self, data: &Dataset, indices: &[usize], seed: u64) -> HostBatch;
}

/// One pretext task behind the common interface.
pub trait PretextTask: Send {
    fn kind(&self) -> TaskKind;
    /// How the task's proxy metric reads.
    fn metric(&self) -> MetricInfo {
        metric_info(self.kind())
    }
    fn maker(&self) -> Arc<dyn BatchMaker>;
    fn forward(&self, model: &Model, batch: &Batch, train: bool) -> Result<TaskOutput, ModelError>;
    /// Predictions on a fixed set of images, in evaluation mode.
    fn preview(
        &self,
        model: &Model,
        data: &Dataset,
        indices: &[usize],
    ) -> Result<Preview, ModelError>;
    /// The raw numbers behind the loss on `batch` (training mode, as the step computes them),
    /// for the Math panel.
    fn explain(&self, model: &Model, batch: &Batch) -> Result<Explained, ModelError>;
    /// The task's own output for encoder features `z` (N, D) in evaluation mode, when it is the
    /// part that can collapse without the encoder showing it (the projections of the two-view
    /// methods: SimSiam's collapse is measured there, Chen & He 2021, Fig. 2).
    ///
    /// # Errors
    /// When the head fails.
    fn head_output(&self, _z: &Tensor) -> Result<Option<Tensor>, ModelError> {
        Ok(None)
    }
    /// A pixel (row, column) of the working size that a person clicked in the task's preview
    /// (colorization-bins then shows the predicted colour distribution there). Ignored by
    /// tasks whose previews have no such detail.
    fn select_pixel(&self, _pixel: (usize, usize)) {}
    /// Once the weights are initialised or loaded from `--init-from`: a momentum teacher starts
    /// as a copy of the student, MoCo's queue as random unit vectors drawn from `seed` (the
    /// run's). A resumed run then loads this state from its checkpoint over it.
    ///
    /// # Errors
    /// When the state cannot be written.
    fn start(&self, _model: &Model, _seed: u64) -> Result<(), ModelError> {
        Ok(())
    }
    /// When a run resumes from its checkpoint, `progress` ∈ [0, 1] of it done: what the task
    /// shows of its schedules before its first update here (BYOL's and MoCo's momentum m in
    /// the Math panel) is the next update's, not the schedule's start; state an older build
    /// saved differently is brought up to date (MoCo's never-written queue slots).
    ///
    /// # Errors
    /// When the state cannot be read or written.
    fn resumed(&self, _progress: f64) -> Result<(), ModelError> {
        Ok(())
    }
    /// After every optimiser update, with `progress` ∈ [0, 1] of the run done: a momentum
    /// teacher follows the student, MoCo's queue takes the batch's keys.
    ///
    /// # Errors
    /// When the state cannot be updated.
    fn after_update(&self, _model: &Model, _progress: f64) -> Result<(), ModelError> {
        Ok(())
    }
}

/// What [`PretextTask::explain`] gives.
pub struct Explained {
    pub math: crate::math::TaskMath,
    /// z = f(x) of each input shown.
    pub z: Vec<Vec<f32>>,
    /// The inputs shown, as RGB bytes, and their side.
    pub inputs: Vec<Vec<u8>>,
    pub input_size: usize,
    /// What was done to each input (contrastive views).
    pub transforms: Vec<String>,
}

/// The inspection batch of a preview, made with the fixed preview seed and uploaded.
///
/// # Errors
/// When the batch cannot be uploaded to the model's device.
pub fn preview_batch(
    maker: &dyn BatchMaker,
    model: &Model,
    data: &Dataset,
    indices: &[usize],
) -> Result<Batch, ModelError> {
    Ok(maker
        .make(data, indices, PREVIEW_SEED)
        .upload(&model.device)?)
}

/// One normalised CHW image (`channels` planes of `plane` pixels) → RGB bytes (grey for one
/// channel). Colorization's L* input uses the same normalisation, so it comes back as grey L*.
pub fn chw_to_rgb_bytes(chw: &[f32], channels: usize, plane: usize) -> Vec<u8> {
    use crate::data::ops::{INPUT_MEAN, INPUT_STD};
    (0..plane)
        .flat_map(|p| {
            (0..3).map(move |k| {
                let ch = if channels >= 3 { k } else { 0 };
                ((chw[ch * plane + p] * INPUT_STD + INPUT_MEAN).clamp(0.0, 1.0) * 255.0).round()
                    as u8
            })
        })
        .collect()
}

/// Normalised CHW network inputs of a batch (N, C, S, S) → RGB bytes per image.
pub fn inputs_to_bytes(inputs: &HostTensor) -> Vec<Vec<u8>> {
    let (c, s) = (inputs.shape[1], inputs.shape[2]);
    let plane = s * s;
    inputs
        .data
        .chunks(c * plane)
        .map(|img| chw_to_rgb_bytes(img, c, plane))
        .collect()
}

/// Cross-entropy loss and accuracy of classification `logits` against the batch's labels.
pub fn classification_output(logits: &Tensor, batch: &Batch) -> Result<TaskOutput, ModelError> {
    let loss = crate::model::ops::cross_entropy(logits, batch.labels()?)?;
    let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
    let correct = predicted
        .iter()
        .zip(&batch.host.labels)
        .filter(|(p, y)| p == y)
        .count();
    Ok(TaskOutput {
        loss,
        metric: correct as f64 / batch.len().max(1) as f64,
        baseline: None,
        images: batch.len(),
    })
}

/// Rows of a 2-D tensor.
pub fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>, ModelError> {
    Ok(t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

/// Per-image flat values of a 4-D tensor.
pub fn per_image(t: &Tensor) -> Result<Vec<Vec<f32>>, ModelError> {
    let n = t.dim(0)?;
    let flat = t.flatten_all()?.to_vec1::<f32>()?;
    let each = flat.len() / n.max(1);
    Ok(flat.chunks(each.max(1)).map(<[f32]>::to_vec).collect())
}

/// Creates the tasks (and their heads in the model's parameter map). `data` is the training
/// data: colorization-bins counts its colour prior there.
pub fn build(
    kinds: &[TaskKind],
    settings: &TaskSettings,
    model: &Model,
    data: &Dataset,
) -> Result<Vec<Box<dyn PretextTask>>, ModelError> {
    let channels = model.encoder.in_channels;
    kinds
        .iter()
        .map(|k| -> Result<Box<dyn PretextTask>, ModelError> {
            Ok(match k {
                TaskKind::Rotation => Box::new(rotation::Rotation::new(model)?),
                TaskKind::Colorization => {
                    Box::new(colorization::Colorization::new(model, channels, settings)?)
                }
                TaskKind::ColorizationBins => Box::new(colorization_bins::ColorizationBins::new(
                    model, channels, settings, data,
                )?),
                TaskKind::Inpainting => Box::new(inpainting::Inpainting::new(model, settings)?),
                TaskKind::Patch => Box::new(patch::Patch::new(model, settings)?),
                TaskKind::Jigsaw => Box::new(jigsaw::Jigsaw::new(model, settings)?),
                TaskKind::Contrastive => Box::new(contrastive::Contrastive::new(model, settings)?),
                TaskKind::Moco
                | TaskKind::Byol
                | TaskKind::Simsiam
                | TaskKind::BarlowTwins
                | TaskKind::Vicreg => Box::new(siamese::Siamese::new(*k, model, settings)?),
            })
        })
        .collect()
}

/// Input channels of the shared encoder: colorization (either variant, or both) alone sees only
/// lightness (1 channel, as the reference); with other tasks the encoder takes RGB and
/// colorization repeats L three times.
pub fn input_channels(kinds: &[TaskKind]) -> usize {
    let lightness = |k: &TaskKind| matches!(k, TaskKind::Colorization | TaskKind::ColorizationBins);
    if !kinds.is_empty() && kinds.iter().all(lightness) {
        1
    } else {
        3
    }
}

/// Runs `f` for each position of a batch in parallel, each with its own random stream.
pub fn per_sample<T: Send>(
    indices: &[usize],
    seed: u64,
    f: impl Fn(usize, &mut Rng) -> T + Sync,
) -> Vec<T> {
    indices
        .par_iter()
        .enumerate()
        .map(|(pos, &idx)| {
            let mut rng = Rng::derive(seed, &[pos as u64]);
            f(idx, &mut rng)
        })
        .collect()
}

/// Scale of the preview cells: images are drawn at least 64 px wide.
pub fn preview_factor(size: usize) -> usize {
    (64 / size).max(1)
}
