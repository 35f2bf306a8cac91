//! Colorization (Zhang et al. 2016): the input is the lightness L* of CIE L*a*b* (D65), the
//! target the colour a*b*. Regression with mean squared error on a*b*/100. Proxy metric: the
//! share of pixels whose predicted a*b* lies within the threshold (default 10 units, Euclidean)
//! of the truth; baseline: the best constant guess, the batch's mean a*b*.

use std::sync::Arc;

use super::heads::Decoder;
use super::{
    Batch, BatchMaker, Canvas, Explained, HostBatch, HostTensor, MetricInfo, PretextTask, Preview,
    TaskOutput, inputs_to_bytes, per_image, per_sample, preview_batch, preview_factor, rows,
};
use crate::config::{TaskKind, TaskSettings};
use crate::data::{Dataset, color};
use crate::model::{Model, ModelError, ops as nn};

/// a*b* are divided by this for the network.
pub const AB_SCALE: f32 = 100.0;

pub struct Colorization {
    decoder: Decoder,
    maker: Arc<ColorizationMaker>,
    threshold: f64,
}

pub struct ColorizationMaker {
    /// Input channels: 1 (L) or 3 (L repeated, when the encoder is shared with RGB tasks).
    pub channels: usize,
}

/// L* in [0, 100] → network input.
pub fn normalize_l(l: f32) -> f32 {
    (l / 100.0 - 0.5) / 0.25
}

/// Share of pixels whose a*b* (in a*b* units) differ by less than `threshold`.
pub fn agreement(pred_ab: &[f32], true_ab: &[f32], plane: usize, threshold: f64) -> f64 {
    let images = pred_ab.len() / (2 * plane).max(1);
    let mut hits = 0usize;
    for i in 0..images {
        let (pa, pb) = pred_ab[i * 2 * plane..].split_at(plane);
        let (ta, tb) = true_ab[i * 2 * plane..].split_at(plane);
        for p in 0..plane {
            let da = f64::from(pa[p] - ta[p]);
            let db = f64::from(pb[p] - tb[p]);
            if (da * da + db * db).sqrt() < threshold {
                hits += 1;
            }
        }
    }
    hits as f64 / (images * plane).max(1) as f64
}

/// Share of pixels within `threshold` of the batch's mean a*b* (the best constant guess).
pub fn constant_baseline(true_ab: &[f32], plane: usize, threshold: f64) -> f64 {
    let images = true_ab.len() / (2 * plane).max(1);
    let (mut ma, mut mb) = (0f64, 0f64);
    for i in 0..images {
        let (a, b) = true_ab[i * 2 * plane..(i + 1) * 2 * plane].split_at(plane);
        ma += a.iter().map(|&v| f64::from(v)).sum::<f64>();
        mb += b.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
    let n = (images * plane).max(1) as f64;
    let constant: Vec<f32> = (0..images)
        .flat_map(|_| {
            std::iter::repeat_n((ma / n) as f32, plane)
                .chain(std::iter::repeat_n((mb / n) as f32, plane))
        })
        .collect();
    agreement(&constant, true_ab, plane, threshold)
}

impl BatchMaker for ColorizationMaker {
    fn make(&self, data: &Dataset, indices: &[usize], _seed: u64) -> HostBatch {
        let s = data.size;
        let plane = s * s;
        let per: Vec<(Vec<f32>, Vec<f32>)> = per_sample(indices, 0, |idx, _| {
            let (l, a, b) = color::image_to_lab_planes(data.image(idx));
            let l: Vec<f32> = l.iter().map(|&v| normalize_l(v)).collect();
            let mut input = Vec::with_capacity(self.channels * plane);
            for _ in 0..self.channels {
                input.extend_from_slice(&l);
            }
            let target: Vec<f32> = a.iter().chain(&b).map(|&v| v / AB_SCALE).collect();
            (input, target)
        });
        let (inputs, targets): (Vec<Vec<f32>>, Vec<Vec<f32>>) = per.into_iter().unzip();
        let n = indices.len();
        HostBatch {
            inputs: HostTensor::new(inputs.concat(), &[n, self.channels, s, s]),
            target: Some(HostTensor::new(targets.concat(), &[n, 2, s, s])),
            sources: indices.to_vec(),
            ..HostBatch::default()
        }
    }
}

impl Colorization {
    pub fn new(
        model: &Model,
        channels: usize,
        settings: &TaskSettings,
    ) -> Result<Self, ModelError> {
        let vb = model.head_builder("colorization");
        Ok(Self {
            decoder: Decoder::new(&vb, model.encoder.z_dim(), 2)?,
            maker: Arc::new(ColorizationMaker { channels }),
            threshold: settings.color_threshold,
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

/// How this task's proxy metric reads.
pub const METRIC: MetricInfo = MetricInfo::percent(
    "colour agreement",
    "Proxy colour agreement",
    Some("constant a*b*"),
);

impl PretextTask for Colorization {
    fn kind(&self) -> TaskKind {
        TaskKind::Colorization
    }

    fn maker(&self) -> Arc<dyn BatchMaker> {
        self.maker.clone()
    }

    fn forward(&self, model: &Model, batch: &Batch, train: bool) -> Result<TaskOutput, ModelError> {
        let pred = self.predict(model, batch, train)?;
        let target = batch.target()?;
        let loss = nn::mse(&pred, target)?;
        let s = batch.host.inputs.shape[2];
        let plane = s * s;
        let scale = |v: Vec<f32>| v.into_iter().map(|x| x * AB_SCALE).collect::<Vec<_>>();
        let pred_ab = scale(pred.flatten_all()?.to_vec1::<f32>()?);
        let true_ab: Vec<f32> = batch
            .host
            .target
            .as_ref()
            .map(|t| t.data.iter().map(|x| x * AB_SCALE).collect())
            .unwrap_or_default();
        Ok(TaskOutput {
            loss,
            metric: agreement(&pred_ab, &true_ab, plane, self.threshold),
            baseline: Some(constant_baseline(&true_ab, plane, self.threshold)),
            images: batch.len(),
        })
    }

    fn explain(&self, model: &Model, batch: &Batch) -> Result<Explained, ModelError> {
        let out = model.encoder.forward(&batch.inputs, true)?;
        let pred = self.decoder.forward(&out.fmap)?;
        let s = batch.host.inputs.shape[2];
        Ok(Explained {
            math: crate::math::TaskMath::Reconstruction {
                prediction: per_image(&pred)?,
                target: per_image(batch.target()?)?,
                weight: vec![vec![1.0; s * s]; batch.len()],
                channels: 2,
                size: s,
            },
            z: rows(&out.z)?,
            inputs: inputs_to_bytes(&batch.host.inputs),
            input_size: s,
            transforms: Vec::new(),
        })
    }

    /// One row per image: lightness only | predicted colour | true colour.
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
        let s = data.size;
        let plane = s * s;
        let f = preview_factor(s);
        let cell = s * f;
        let pad = 6;
        let mut canvas = Canvas::new(
            3 * (cell + pad) + pad,
            indices.len() * (cell + pad) + pad,
            [24, 24, 28],
        );
        let mut agreements = Vec::new();
        let zeros = vec![0f32; plane];
        for (row, &idx) in indices.iter().enumerate() {
            let (l, a, b) = color::image_to_lab_planes(data.image(idx));
            let p = &pred[row * 2 * plane..(row + 1) * 2 * plane];
            let (pa, pb): (Vec<f32>, Vec<f32>) = (
                p[..plane].iter().map(|v| v * AB_SCALE).collect(),
                p[plane..].iter().map(|v| v * AB_SCALE).collect(),
            );
            let true_ab: Vec<f32> = a.iter().chain(&b).copied().collect();
            let pred_ab: Vec<f32> = pa.iter().chain(&pb).copied().collect();
            agreements.push(agreement(&pred_ab, &true_ab, plane, self.threshold));
            let y = pad + row * (cell + pad);
            for (col, img) in [
                color::lab_planes_to_image(&l, &zeros, &zeros),
                color::lab_planes_to_image(&l, &pa, &pb),
                data.image(idx).to_vec(),
            ]
            .iter()
            .enumerate()
            {
                canvas.blit(img, s, s, f, pad + col * (cell + pad), y);
            }
        }
        let mean = agreements.iter().sum::<f64>() / agreements.len().max(1) as f64;
        Ok(Preview {
            task: TaskKind::Colorization,
            caption: format!(
                "colorization: lightness L* | predicted a*b* | truth; {:.0}% of pixels within {} a*b* units",
                mean * 100.0,
                self.threshold
            ),
            image: canvas,
            pixels: None,
        })
    }
}
