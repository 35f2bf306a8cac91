//! Rotation prediction (Gidaris et al. 2018): every image is turned by 0°, 90°, 180° or 270°
//! and the encoder predicts which; loss −Σ log P(y|x) (softmax cross-entropy), proxy metric
//! rotation accuracy (chance 25%).

use std::sync::Arc;

use super::{
    Batch, BatchMaker, Canvas, Explained, HostBatch, HostTensor, MetricInfo, PretextTask, Preview,
    TaskOutput, inputs_to_bytes, preview_factor, rows,
};
use crate::config::TaskKind;
use crate::data::{Dataset, ops};
use crate::model::{Linear, Model, ModelError, ops as nn};
use crate::rng::Rng;

pub struct Rotation {
    head: Linear,
}

/// One image of the inspection batch under one rotation, with the model's belief.
#[derive(Clone, Debug, PartialEq)]
pub struct RotationSample {
    pub image_index: usize,
    /// The rotation that was applied, in quarter turns counter-clockwise (0..4).
    pub quarter_turns: u32,
    /// P(rotation = k·90° | x) for k = 0..4.
    pub probs: [f32; 4],
}

impl RotationSample {
    pub fn predicted(&self) -> u32 {
        argmax(&self.probs) as u32
    }
}

pub(crate) fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for k in 1..v.len() {
        if v[k] > v[best] {
            best = k;
        }
    }
    best
}

/// Makes rotated batches.
pub struct RotationMaker;

impl RotationMaker {
    /// Images with the given rotations (quarter turns).
    pub fn batch_with(data: &Dataset, items: &[(usize, u32)]) -> HostBatch {
        let s = data.size;
        let mut inputs = Vec::with_capacity(items.len() * 3 * s * s);
        let mut turned = vec![0u8; data.image_bytes()];
        for &(idx, k) in items {
            ops::rotate90(data.image(idx), s, k as usize, &mut turned);
            ops::push_chw(&turned, s, &mut inputs);
        }
        HostBatch {
            inputs: HostTensor::new(inputs, &[items.len(), 3, s, s]),
            labels: items.iter().map(|&(_, k)| k).collect(),
            sources: items.iter().map(|&(i, _)| i).collect(),
            ..HostBatch::default()
        }
    }
}

impl BatchMaker for RotationMaker {
    /// Each image gets one rotation; rotations cycle through the batch from a random offset,
    /// so every batch is balanced over the four classes.
    fn make(&self, data: &Dataset, indices: &[usize], seed: u64) -> HostBatch {
        let offset = Rng::derive(seed, &[u64::MAX]).below(4);
        let items: Vec<(usize, u32)> = indices
            .iter()
            .enumerate()
            .map(|(p, &i)| (i, ((p + offset) % 4) as u32))
            .collect();
        Self::batch_with(data, &items)
    }
}

impl Rotation {
    pub fn new(model: &Model) -> Result<Self, ModelError> {
        let vb = model.head_builder("rotation");
        Ok(Self {
            head: Linear::new(&vb, model.encoder.z_dim(), 4)?,
        })
    }
}

/// How this task's proxy metric reads.
pub const METRIC: MetricInfo = MetricInfo::percent("rotation accuracy", "Proxy accuracy", None);

impl PretextTask for Rotation {
    fn kind(&self) -> TaskKind {
        TaskKind::Rotation
    }

    fn maker(&self) -> Arc<dyn BatchMaker> {
        Arc::new(RotationMaker)
    }

    fn forward(&self, model: &Model, batch: &Batch, train: bool) -> Result<TaskOutput, ModelError> {
        let z = model.encoder.forward(&batch.inputs, train)?.z;
        let logits = self.head.forward(&z)?;
        super::classification_output(&logits, batch)
    }

    fn explain(&self, model: &Model, batch: &Batch) -> Result<Explained, ModelError> {
        let z = model.encoder.forward(&batch.inputs, true)?.z;
        let logits = self.head.forward(&z)?;
        Ok(Explained {
            math: crate::math::TaskMath::Likelihood {
                logits: rows(&logits)?,
                labels: batch.host.labels.clone(),
                classes: ["0°", "90°", "180°", "270°"]
                    .iter()
                    .map(|s| (*s).to_string())
                    .collect(),
            },
            z: rows(&z)?,
            inputs: inputs_to_bytes(&batch.host.inputs),
            input_size: batch.host.inputs.shape[2],
            transforms: Vec::new(),
        })
    }

    /// Every inspection image under all four rotations; one row per image, one cell per
    /// rotation, with the four probabilities as bars under each cell (the true rotation's bar
    /// in blue) and a green frame where the prediction is right, red where it is wrong.
    fn preview(
        &self,
        model: &Model,
        data: &Dataset,
        indices: &[usize],
    ) -> Result<Preview, ModelError> {
        let items: Vec<(usize, u32)> = indices
            .iter()
            .flat_map(|&i| (0..4).map(move |k| (i, k)))
            .collect();
        let batch = RotationMaker::batch_with(data, &items).upload(&model.device)?;
        let z = model.encoder.forward(&batch.inputs, false)?.z;
        let probs = nn::softmax(&self.head.forward(&z)?)?.to_vec2::<f32>()?;
        let samples: Vec<RotationSample> = items
            .iter()
            .zip(&probs)
            .map(|(&(image_index, quarter_turns), p)| RotationSample {
                image_index,
                quarter_turns,
                probs: [p[0], p[1], p[2], p[3]],
            })
            .collect();

        let s = data.size;
        let cell = s * preview_factor(s);
        let (pad, bars_h) = (6, 18);
        let mut canvas = Canvas::new(
            4 * (cell + pad) + pad,
            indices.len() * (cell + bars_h + 2 * pad) + pad,
            [24, 24, 28],
        );
        let mut turned = vec![0u8; data.image_bytes()];
        let mut correct = 0;
        for (n, sample) in samples.iter().enumerate() {
            let (row, col) = (n / 4, n % 4);
            let x = pad + col * (cell + pad);
            let y = pad + row * (cell + bars_h + 2 * pad);
            ops::rotate90(
                data.image(sample.image_index),
                s,
                sample.quarter_turns as usize,
                &mut turned,
            );
            canvas.blit(&turned, s, s, preview_factor(s), x, y);
            let right = sample.predicted() == sample.quarter_turns;
            correct += usize::from(right);
            canvas.frame(
                x.saturating_sub(2),
                y.saturating_sub(2),
                cell + 4,
                cell + 4,
                2,
                verdict_color(right),
            );
            canvas.bars(
                x,
                y + cell + pad,
                cell,
                bars_h,
                &sample.probs,
                Some(sample.quarter_turns as usize),
            );
        }
        Ok(Preview {
            task: TaskKind::Rotation,
            caption: format!(
                "rotation: {correct}/{} right; columns 0°, 90°, 180°, 270°; bars P(k·90°), true angle in blue",
                samples.len()
            ),
            image: canvas,
            pixels: None,
        })
    }
}

/// Green for right, red for wrong.
pub fn verdict_color(right: bool) -> [u8; 3] {
    if right { [60, 200, 90] } else { [220, 60, 60] }
}
