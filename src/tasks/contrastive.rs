//! Contrastive learning (SimCLR, Chen et al. 2020): two random views x⁺ = T(x) of every image
//! (random resized crop, horizontal flip, colour jitter, random grey, optional blur), the
//! shared encoder, a projection head, and a contrastive loss over the 2N views with cosine
//! similarity and temperature τ: NT-Xent / InfoNCE (the default) or DCL (Yeh et al. 2022)
//! ([`ContrastiveLoss`]). Proxy metric: how often an anchor's positive is the most
//! similar of the other 2N − 1 views (chance 1/(2N − 1)).

use std::sync::Arc;

use super::heads::Mlp;
use super::{
    Batch, BatchExtra, BatchMaker, Canvas, Explained, HostBatch, HostTensor, MetricInfo,
    PretextTask, Preview, TaskOutput, inputs_to_bytes, per_sample, preview_batch, preview_factor,
    rows,
};
use crate::config::{Augment, ContrastiveLoss, TaskKind, TaskSettings};
use crate::data::Dataset;
use crate::data::augment::{self, AugmentRecord};
use crate::data::ops::{INPUT_MEAN, INPUT_STD};
use crate::model::{Model, ModelError, ops as nn};

/// Output size of the projection head.
pub const PROJECTION_DIM: usize = 64;

pub struct Contrastive {
    projector: Mlp,
    maker: Arc<ContrastiveMaker>,
    temperature: f64,
    loss: ContrastiveLoss,
}

pub struct ContrastiveMaker {
    pub augment: Augment,
}

/// HWC floats in [0, 1] → normalised CHW.
fn unit_hwc_to_chw(img: &[f32], size: usize, out: &mut Vec<f32>) {
    let plane = size * size;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    for p in 0..plane {
        for c in 0..3 {
            out[start + c * plane + p] = (img[p * 3 + c] - INPUT_MEAN) / INPUT_STD;
        }
    }
}

impl BatchMaker for ContrastiveMaker {
    fn make(&self, data: &Dataset, indices: &[usize], seed: u64) -> HostBatch {
        let size = data.size;
        let s = self.augment.view_size(size);
        let per: Vec<(Vec<f32>, Vec<f32>, AugmentRecord, AugmentRecord)> =
            per_sample(indices, seed, |idx, rng| {
                let (a, ra) = augment::augment_to(data.image(idx), size, s, &self.augment, rng);
                let (b, rb) = augment::augment_to(data.image(idx), size, s, &self.augment, rng);
                (a, b, ra, rb)
            });
        let n = indices.len();
        let mut inputs = Vec::with_capacity(2 * n * 3 * s * s);
        for (a, _, _, _) in &per {
            unit_hwc_to_chw(a, s, &mut inputs);
        }
        for (_, b, _, _) in &per {
            unit_hwc_to_chw(b, s, &mut inputs);
        }
        HostBatch {
            inputs: HostTensor::new(inputs, &[2 * n, 3, s, s]),
            sources: indices.to_vec(),
            extra: BatchExtra::Views(per.into_iter().map(|x| (x.2, x.3)).collect()),
            ..HostBatch::default()
        }
    }
}

impl Contrastive {
    pub fn new(model: &Model, settings: &TaskSettings) -> Result<Self, ModelError> {
        let vb = model.head_builder("contrastive");
        let z = model.encoder.z_dim();
        Ok(Self {
            projector: Mlp::new(&vb, z, z, PROJECTION_DIM)?,
            maker: Arc::new(ContrastiveMaker {
                augment: settings.augment.clone(),
            }),
            temperature: settings.temperature,
            loss: settings.contrastive_loss,
        })
    }

    /// Projections h = g(f(x)) of all 2N views.
    pub fn project(
        &self,
        model: &Model,
        batch: &Batch,
        train: bool,
    ) -> Result<candle_core::Tensor, ModelError> {
        let z = model.encoder.forward(&batch.inputs, train)?.z;
        Ok(self.projector.forward(&z)?)
    }
}

/// What T did to each image's two views, one sentence per image (the Math panel's text).
pub fn describe_views(extra: &BatchExtra) -> Vec<String> {
    let describe = |r: &AugmentRecord| {
        let mut parts = vec![format!(
            "crop {:.0}×{:.0} at ({:.0}, {:.0})",
            r.crop[2], r.crop[3], r.crop[0], r.crop[1]
        )];
        if r.flipped {
            parts.push("flipped".into());
        }
        if let Some(j) = r.jitter {
            parts.push(format!(
                "brightness ×{:.2}, contrast ×{:.2}, saturation ×{:.2}, hue {:+.2}",
                j[0], j[1], j[2], j[3]
            ));
        }
        if r.gray {
            parts.push("grey".into());
        }
        if let Some(s) = r.blur_sigma {
            parts.push(format!("blur σ {s:.1}"));
        }
        parts.join(", ")
    };
    match extra {
        BatchExtra::Views(v) => v
            .iter()
            .map(|(a, b)| format!("View 1: {}. View 2: {}.", describe(a), describe(b)))
            .collect(),
        _ => Vec::new(),
    }
}

/// How this task's proxy metric reads.
pub const METRIC: MetricInfo = MetricInfo::percent(
    "positive top-1",
    "Proxy positive top-1",
    Some("chance 1/(2N-1)"),
);

impl PretextTask for Contrastive {
    fn kind(&self) -> TaskKind {
        TaskKind::Contrastive
    }

    fn maker(&self) -> Arc<dyn BatchMaker> {
        self.maker.clone()
    }

    fn forward(&self, model: &Model, batch: &Batch, train: bool) -> Result<TaskOutput, ModelError> {
        let h = self.project(model, batch, train)?;
        let (loss, sim) = nn::contrastive_loss(&h, self.temperature, self.loss)?;
        let sim = sim.to_vec2::<f32>()?;
        let two_n = sim.len();
        Ok(TaskOutput {
            loss,
            metric: nn::positive_top1(&sim),
            baseline: Some(1.0 / (two_n.saturating_sub(1)).max(1) as f64),
            images: two_n,
        })
    }

    fn explain(&self, model: &Model, batch: &Batch) -> Result<Explained, ModelError> {
        let z = model.encoder.forward(&batch.inputs, true)?.z;
        let h = self.projector.forward(&z)?;
        let transforms = describe_views(&batch.host.extra);
        Ok(Explained {
            math: crate::math::TaskMath::Contrastive {
                projections: rows(&h)?,
                temperature: self.temperature,
                loss: self.loss,
            },
            z: rows(&z)?,
            inputs: inputs_to_bytes(&batch.host.inputs),
            input_size: batch.host.inputs.shape[2],
            transforms,
        })
    }

    /// Left: each image's two views side by side; right: the 2k × 2k cosine-similarity matrix
    /// of the views (rows and columns: first views, then second views; positives on the two
    /// off-diagonals).
    fn preview(
        &self,
        model: &Model,
        data: &Dataset,
        indices: &[usize],
    ) -> Result<Preview, ModelError> {
        let batch = preview_batch(self.maker.as_ref(), model, data, indices)?;
        let h = self.project(model, &batch, false)?;
        let sim = nn::cosine_similarity_matrix(&h)?.to_vec2::<f32>()?;
        let top1 = nn::positive_top1(&sim);
        let s = batch.host.inputs.shape[2];
        let f = preview_factor(s);
        let cell = s * f;
        let pad = 6;
        let k = indices.len();
        let views = inputs_to_bytes(&batch.host.inputs);
        let heat_cell = ((k * (cell + pad)) / (2 * k).max(1)).max(2);
        let heat = 2 * k * heat_cell;
        let mut canvas = Canvas::new(
            2 * (cell + pad) + 2 * pad + heat + pad,
            (k * (cell + pad) + pad).max(heat + 2 * pad),
            [24, 24, 28],
        );
        for row in 0..k {
            let y = pad + row * (cell + pad);
            canvas.blit(&views[row], s, s, f, pad, y);
            canvas.blit(&views[row + k], s, s, f, 2 * pad + cell, y);
        }
        let flat: Vec<f32> = sim.iter().flatten().copied().collect();
        canvas.heatmap(
            (2 * (cell + pad) + 2 * pad, pad),
            &flat,
            2 * k,
            heat_cell,
            (-1.0, 1.0),
        );
        Ok(Preview {
            task: TaskKind::Contrastive,
            caption: format!(
                "contrastive: view pairs x⁺ = T(x) | cosine similarity of the {} views (blue −1, white 0, red 1); positive top-1 {:.0}%",
                2 * k,
                top1 * 100.0
            ),
            image: canvas,
            pixels: None,
        })
    }
}
