//! Inpainting (Context Encoders, Pathak et al. 2016): a region is hidden (a central square,
//! a random square, or random blocks; size configurable) and the network reconstructs it from
//! its context. The loss is the mean squared error over the hidden pixels only (the visible
//! context has weight 0: the network is never rewarded for copying what it sees). Proxy metric:
//! PSNR of the hidden region, next to the PSNR of filling it with the mean colour of the
//! visible context.

use std::sync::Arc;

use super::heads::Decoder;
use super::{
    Batch, BatchMaker, Canvas, Explained, HostBatch, HostTensor, MetricInfo, PretextTask, Preview,
    TaskOutput, inputs_to_bytes, per_image, per_sample, preview_batch, preview_factor, rows,
};
use crate::config::{MaskKind, TaskKind, TaskSettings};
use crate::data::ops::{INPUT_MEAN, INPUT_STD};
use crate::data::{Dataset, augment};
use crate::model::{Model, ModelError};

pub struct Inpainting {
    decoder: Decoder,
    maker: Arc<InpaintingMaker>,
}

pub struct InpaintingMaker {
    pub mask: MaskKind,
    pub fraction: f64,
}

/// PSNR in dB of a mean squared error on [0, 1] pixels.
pub fn psnr(mse: f64) -> f64 {
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

fn to_unit(v: f32) -> f32 {
    v * INPUT_STD + INPUT_MEAN
}

/// Sum of squared errors over hidden pixels (in [0, 1] units) and the number of hidden values.
pub fn hidden_sse(pred: &[f32], target: &[f32], mask: &[f32], plane: usize) -> (f64, usize) {
    let images = mask.len() / plane.max(1);
    let (mut sse, mut count) = (0f64, 0usize);
    for i in 0..images {
        for p in 0..plane {
            if mask[i * plane + p] > 0.5 {
                for c in 0..3 {
                    let o = (i * 3 + c) * plane + p;
                    let d = f64::from(to_unit(pred[o]) - to_unit(target[o]));
                    sse += d * d;
                    count += 1;
                }
            }
        }
    }
    (sse, count)
}

/// One image's arrays: masked input, target, mask, and the mean-fill baseline.
struct Sample {
    input: Vec<f32>,
    target: Vec<f32>,
    mask: Vec<f32>,
    fill: Vec<f32>,
}

impl BatchMaker for InpaintingMaker {
    fn make(&self, data: &Dataset, indices: &[usize], seed: u64) -> HostBatch {
        let s = data.size;
        let plane = s * s;
        let per: Vec<Sample> = per_sample(indices, seed, |idx, rng| {
            let m = augment::mask(self.mask, self.fraction, s, rng);
            let mut target = Vec::with_capacity(3 * plane);
            crate::data::ops::push_chw(data.image(idx), s, &mut target);
            let mut input = target.clone();
            // Hidden pixels become the input mean (0 after normalisation).
            for c in 0..3 {
                for p in 0..plane {
                    if m[p] == 1 {
                        input[c * plane + p] = 0.0;
                    }
                }
            }
            // Mean-fill baseline: the mean colour of the visible context.
            let visible = m.iter().filter(|&&v| v == 0).count().max(1) as f32;
            let mut fill = target.clone();
            for c in 0..3 {
                let mean = (0..plane)
                    .filter(|&p| m[p] == 0)
                    .map(|p| target[c * plane + p])
                    .sum::<f32>()
                    / visible;
                for p in 0..plane {
                    if m[p] == 1 {
                        fill[c * plane + p] = mean;
                    }
                }
            }
            let mask: Vec<f32> = m.iter().map(|&v| f32::from(v)).collect();
            Sample {
                input,
                target,
                mask,
                fill,
            }
        });
        let n = indices.len();
        let mut inputs = Vec::with_capacity(n * 3 * plane);
        let mut targets = Vec::with_capacity(n * 3 * plane);
        let mut masks = Vec::with_capacity(n * plane);
        let mut fills = Vec::with_capacity(n * 3 * plane);
        for x in per {
            inputs.extend(x.input);
            targets.extend(x.target);
            masks.extend(x.mask);
            fills.extend(x.fill);
        }
        let (sse, count) = hidden_sse(&fills, &targets, &masks, plane);
        HostBatch {
            inputs: HostTensor::new(inputs, &[n, 3, s, s]),
            target: Some(HostTensor::new(targets, &[n, 3, s, s])),
            mask: Some(HostTensor::new(masks, &[n, 1, s, s])),
            sources: indices.to_vec(),
            baseline: Some(psnr(sse / count.max(1) as f64)),
            ..HostBatch::default()
        }
    }
}

impl Inpainting {
    pub fn new(model: &Model, settings: &TaskSettings) -> Result<Self, ModelError> {
        let vb = model.head_builder("inpainting");
        Ok(Self {
            decoder: Decoder::new(&vb, model.encoder.z_dim(), 3)?,
            maker: Arc::new(InpaintingMaker {
                mask: settings.mask,
                fraction: settings.mask_size,
            }),
        })
    }

    fn predict(
        &self,
        model: &Model,
        batch: &Batch,
        train: bool,
    ) -> Result<candle_core::Tensor, ModelError> {
        let fmap = model.encoder.forward(&batch.inputs, train)?.fmap;
        Ok(self.decoder.forward(&fmap)?)
    }
}

/// Mean squared error over the hidden pixels: Σ mask·(pred − target)² / (3 Σ mask).
pub fn masked_mse(
    pred: &candle_core::Tensor,
    target: &candle_core::Tensor,
    mask: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    let diff = (pred - target)?.broadcast_mul(mask)?;
    let hidden = (mask.sum_all()? * 3.0)?.maximum(1.0)?;
    diff.sqr()?.sum_all()?.div(&hidden)
}

/// How this task's proxy metric reads.
pub const METRIC: MetricInfo =
    MetricInfo::measure("hidden-region PSNR", "Proxy PSNR", " dB", Some("mean fill"));

impl PretextTask for Inpainting {
    fn kind(&self) -> TaskKind {
        TaskKind::Inpainting
    }

    fn maker(&self) -> Arc<dyn BatchMaker> {
        self.maker.clone()
    }

    fn forward(&self, model: &Model, batch: &Batch, train: bool) -> Result<TaskOutput, ModelError> {
        let pred = self.predict(model, batch, train)?;
        let mask = batch
            .mask
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("inpainting batch without mask".into()))?;
        let loss = masked_mse(&pred, batch.target()?, mask)?;
        // The loss is in normalised units; PSNR wants [0, 1] pixels.
        let mse_unit = f64::from(loss.to_scalar::<f32>()?) * f64::from(INPUT_STD * INPUT_STD);
        Ok(TaskOutput {
            loss,
            metric: psnr(mse_unit),
            baseline: batch.host.baseline,
            images: batch.len(),
        })
    }

    fn explain(&self, model: &Model, batch: &Batch) -> Result<Explained, ModelError> {
        let out = model.encoder.forward(&batch.inputs, true)?;
        let pred = self.decoder.forward(&out.fmap)?;
        let mask = batch
            .mask
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("inpainting batch without mask".into()))?;
        Ok(Explained {
            math: crate::math::TaskMath::Reconstruction {
                prediction: per_image(&pred)?,
                target: per_image(batch.target()?)?,
                weight: per_image(mask)?,
                channels: 3,
                size: batch.host.inputs.shape[2],
            },
            z: rows(&out.z)?,
            inputs: inputs_to_bytes(&batch.host.inputs),
            input_size: batch.host.inputs.shape[2],
            transforms: Vec::new(),
        })
    }

    /// One row per image: masked input | inpainted (prediction inside the hole) | original.
    fn preview(
        &self,
        model: &Model,
        data: &Dataset,
        indices: &[usize],
    ) -> Result<Preview, ModelError> {
        let batch = preview_batch(self.maker.as_ref(), model, data, indices)?;
        let pred = self
            .predict(model, &batch, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let host = &batch.host;
        let s = data.size;
        let plane = s * s;
        let masks = host
            .mask
            .as_ref()
            .map(|m| m.data.clone())
            .unwrap_or_default();
        let targets = host
            .target
            .as_ref()
            .map(|t| t.data.clone())
            .unwrap_or_default();
        let (sse, count) = hidden_sse(&pred, &targets, &masks, plane);
        let model_psnr = psnr(sse / count.max(1) as f64);
        let fill_psnr = host.baseline.unwrap_or(f64::NAN);
        let to_bytes = |chw: &[f32]| super::chw_to_rgb_bytes(chw, 3, plane);
        let f = preview_factor(s);
        let cell = s * f;
        let pad = 6;
        let mut canvas = Canvas::new(
            3 * (cell + pad) + pad,
            indices.len() * (cell + pad) + pad,
            [24, 24, 28],
        );
        for row in 0..indices.len() {
            let r = row * 3 * plane..(row + 1) * 3 * plane;
            let m = &masks[row * plane..(row + 1) * plane];
            let mut composed = targets[r.clone()].to_vec();
            for c in 0..3 {
                for p in 0..plane {
                    if m[p] > 0.5 {
                        composed[c * plane + p] = pred[r.start + c * plane + p];
                    }
                }
            }
            let y = pad + row * (cell + pad);
            for (col, img) in [
                to_bytes(&host.inputs.data[r.clone()]),
                to_bytes(&composed),
                to_bytes(&targets[r]),
            ]
            .iter()
            .enumerate()
            {
                canvas.blit(img, s, s, f, pad + col * (cell + pad), y);
            }
        }
        Ok(Preview {
            task: TaskKind::Inpainting,
            caption: format!(
                "inpainting: masked | inpainted | original; hidden-region PSNR {model_psnr:.1} dB (mean fill {fill_psnr:.1} dB)"
            ),
            image: canvas,
            pixels: None,
        })
    }
}
