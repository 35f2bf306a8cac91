//! Rotation prediction (Gidaris et al. 2018): every image is turned by 0°, 90°, 180° or 270°
//! and the encoder predicts which; loss −Σ log P(y|x) (softmax cross-entropy), proxy metric
//! rotation accuracy (chance 25%).

use candle_core::{Device, Tensor};

use super::{Batch, Canvas, MetricInfo, PretextTask, Preview, PreviewDetail, TaskOutput};
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
        let mut best = 0;
        for k in 1..4 {
            if self.probs[k] > self.probs[best] {
                best = k;
            }
        }
        best as u32
    }
}

impl Rotation {
    pub fn new(model: &Model) -> Result<Self, ModelError> {
        let vb = model.head_builder("rotation");
        Ok(Self {
            head: Linear::new(&vb, model.encoder.z_dim(), 4)?,
        })
    }

    fn batch_with(
        data: &Dataset,
        items: &[(usize, u32)],
        device: &Device,
    ) -> Result<Batch, ModelError> {
        let s = data.size;
        let mut inputs = Vec::with_capacity(items.len() * 3 * s * s);
        let mut turned = vec![0u8; data.image_bytes()];
        for &(idx, k) in items {
            ops::rotate90(data.image(idx), s, k as usize, &mut turned);
            ops::push_chw(&turned, s, &mut inputs);
        }
        let labels: Vec<u32> = items.iter().map(|&(_, k)| k).collect();
        Ok(Batch {
            inputs: Tensor::from_vec(inputs, (items.len(), 3, s, s), device)?,
            labels: Some(Tensor::new(labels.as_slice(), device)?),
            label_values: labels,
            sources: items.iter().map(|&(i, _)| i).collect(),
        })
    }
}

impl PretextTask for Rotation {
    fn kind(&self) -> TaskKind {
        TaskKind::Rotation
    }

    fn metric(&self) -> MetricInfo {
        MetricInfo {
            name: "rotation accuracy",
            label: "Proxy accuracy",
            percent: true,
            chance: 0.25,
        }
    }

    /// Each image gets one rotation; rotations cycle through the batch from a random offset,
    /// so every batch is balanced over the four classes.
    fn prepare(
        &self,
        data: &Dataset,
        indices: &[usize],
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Batch, ModelError> {
        let offset = rng.below(4);
        let items: Vec<(usize, u32)> = indices
            .iter()
            .enumerate()
            .map(|(p, &i)| (i, ((p + offset) % 4) as u32))
            .collect();
        Self::batch_with(data, &items, device)
    }

    fn forward(&self, model: &Model, batch: &Batch, train: bool) -> Result<TaskOutput, ModelError> {
        let z = model.encoder.forward(&batch.inputs, train)?.z;
        let logits = self.head.forward(&z)?;
        let labels = batch
            .labels
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("rotation batch without labels".into()))?;
        let loss = nn::cross_entropy(&logits, labels)?;
        let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
        let correct = predicted
            .iter()
            .zip(&batch.label_values)
            .filter(|(p, y)| p == y)
            .count();
        Ok(TaskOutput {
            loss,
            metric: correct as f64 / batch.len().max(1) as f64,
            images: batch.len(),
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
        let batch = Self::batch_with(data, &items, &model.device)?;
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
        let factor = (64 / s).max(1);
        let cell = s * factor;
        let pad = 6;
        let bars_h = 18;
        let cols = 4;
        let rows = indices.len();
        let mut canvas = Canvas::new(
            cols * (cell + pad) + pad,
            rows * (cell + bars_h + 2 * pad) + pad,
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
            canvas.blit(&turned, s, s, factor, x, y);
            let right = sample.predicted() == sample.quarter_turns;
            correct += usize::from(right);
            let frame = if right { [60, 200, 90] } else { [220, 60, 60] };
            canvas.frame(
                x.saturating_sub(2),
                y.saturating_sub(2),
                cell + 4,
                cell + 4,
                2,
                frame,
            );
            let bar_w = cell / 4;
            for (k, &p) in sample.probs.iter().enumerate() {
                let h = ((p.clamp(0.0, 1.0)) * bars_h as f32).round() as usize;
                let color = if k as u32 == sample.quarter_turns {
                    [80, 150, 255]
                } else {
                    [170, 170, 170]
                };
                canvas.fill_rect(
                    x + k * bar_w + 1,
                    y + cell + pad + bars_h - h,
                    bar_w.saturating_sub(2),
                    h,
                    color,
                );
            }
        }
        Ok(Preview {
            task: TaskKind::Rotation,
            caption: format!(
                "rotation: {correct}/{} right; columns 0°, 90°, 180°, 270°; bars P(k·90°), true angle in blue",
                samples.len()
            ),
            image: canvas,
            detail: PreviewDetail::Rotation(samples),
        })
    }
}
