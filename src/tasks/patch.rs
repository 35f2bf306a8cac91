//! Relative patch position (Doersch et al. 2015): the image is cut into a 3×3 grid of patches,
//! smaller than their cells by a gap and placed with random jitter (so the network cannot match
//! edges or lines across patches). The centre patch and one of its eight neighbours go through
//! the shared encoder; from the two representations a head predicts where the neighbour sits
//! (8 classes, chance 12.5%). Loss −Σ log P(y|x); proxy metric: position accuracy.

use std::sync::Arc;

use super::heads::Mlp;
use super::rotation::{argmax, verdict_color};
use super::{
    Batch, BatchExtra, BatchMaker, Canvas, Explained, HostBatch, HostTensor, MetricInfo,
    PretextTask, Preview, TaskOutput, inputs_to_bytes, per_sample, preview_batch, preview_factor,
    rows,
};
use crate::config::{TaskKind, TaskSettings};
use crate::data::augment::{self, NEIGHBOUR_CELLS, PatchLayout};
use crate::data::{Dataset, ops};
use crate::model::{Model, ModelError, ops as nn};

pub struct Patch {
    head: Mlp,
    maker: Arc<PatchMaker>,
}

pub struct PatchMaker {
    pub gap: f64,
}

/// One inspection sample: where the neighbour was and what the model believed.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchSample {
    pub image_index: usize,
    pub layout: PatchLayout,
    /// True neighbour class (0..8, see [`NEIGHBOUR_CELLS`]).
    pub position: u32,
    pub probs: [f32; 8],
}

impl BatchMaker for PatchMaker {
    fn make(&self, data: &Dataset, indices: &[usize], seed: u64) -> HostBatch {
        let s = data.size;
        let per: Vec<(Vec<f32>, Vec<f32>, u32, PatchLayout)> =
            per_sample(indices, seed, |idx, rng| {
                let layout = augment::patch_layout(s, self.gap, rng);
                let k = rng.below(8);
                let p = layout.patch;
                let take = |cell: usize| {
                    let (x, y) = layout.origins[cell];
                    let mut v = Vec::with_capacity(3 * p * p);
                    ops::push_chw(&augment::extract(data.image(idx), s, x, y, p), p, &mut v);
                    v
                };
                (take(4), take(NEIGHBOUR_CELLS[k]), k as u32, layout)
            });
        let n = indices.len();
        let p = per.first().map_or(1, |x| x.3.patch);
        let mut inputs = Vec::with_capacity(2 * n * 3 * p * p);
        for (c, _, _, _) in &per {
            inputs.extend_from_slice(c);
        }
        for (_, nb, _, _) in &per {
            inputs.extend_from_slice(nb);
        }
        HostBatch {
            inputs: HostTensor::new(inputs, &[2 * n, 3, p, p]),
            labels: per.iter().map(|x| x.2).collect(),
            sources: indices.to_vec(),
            extra: BatchExtra::Patches(per.into_iter().map(|x| x.3).collect()),
            ..HostBatch::default()
        }
    }
}

impl Patch {
    pub fn new(model: &Model, settings: &TaskSettings) -> Result<Self, ModelError> {
        let vb = model.head_builder("patch");
        let z = model.encoder.z_dim();
        Ok(Self {
            head: Mlp::new(&vb, 2 * z, z, 8)?,
            maker: Arc::new(PatchMaker {
                gap: settings.patch_gap,
            }),
        })
    }

    fn logits(
        &self,
        model: &Model,
        batch: &Batch,
        train: bool,
    ) -> Result<candle_core::Tensor, ModelError> {
        let n = batch.len();
        let z = model.encoder.forward(&batch.inputs, train)?.z;
        let pair = candle_core::Tensor::cat(&[z.narrow(0, 0, n)?, z.narrow(0, n, n)?], 1)?;
        Ok(self.head.forward(&pair)?)
    }
}

/// How this task's proxy metric reads.
pub const METRIC: MetricInfo = MetricInfo::percent("position accuracy", "Proxy accuracy", None);

impl PretextTask for Patch {
    fn kind(&self) -> TaskKind {
        TaskKind::Patch
    }

    fn maker(&self) -> Arc<dyn BatchMaker> {
        self.maker.clone()
    }

    fn forward(&self, model: &Model, batch: &Batch, train: bool) -> Result<TaskOutput, ModelError> {
        let logits = self.logits(model, batch, train)?;
        super::classification_output(&logits, batch)
    }

    fn explain(&self, model: &Model, batch: &Batch) -> Result<Explained, ModelError> {
        let n = batch.len();
        let z = model.encoder.forward(&batch.inputs, true)?.z;
        let pair = candle_core::Tensor::cat(&[z.narrow(0, 0, n)?, z.narrow(0, n, n)?], 1)?;
        let logits = self.head.forward(&pair)?;
        let names = ["↖", "↑", "↗", "←", "→", "↙", "↓", "↘"];
        let mut inputs = inputs_to_bytes(&batch.host.inputs);
        inputs.truncate(n);
        let mut z_rows = rows(&z)?;
        z_rows.truncate(n);
        Ok(Explained {
            math: crate::math::TaskMath::Likelihood {
                logits: rows(&logits)?,
                labels: batch.host.labels.clone(),
                classes: names.iter().map(|s| (*s).to_string()).collect(),
            },
            z: z_rows,
            inputs,
            input_size: batch.host.inputs.shape[2],
            transforms: Vec::new(),
        })
    }

    /// Per image: the picture with the centre patch framed white, the true neighbour blue and
    /// the predicted position green (right) or red (wrong); then the eight probabilities.
    fn preview(
        &self,
        model: &Model,
        data: &Dataset,
        indices: &[usize],
    ) -> Result<Preview, ModelError> {
        let batch = preview_batch(self.maker.as_ref(), model, data, indices)?;
        let probs = nn::softmax(&self.logits(model, &batch, false)?)?.to_vec2::<f32>()?;
        let layouts = match &batch.host.extra {
            BatchExtra::Patches(l) => l.clone(),
            _ => Vec::new(),
        };
        let samples: Vec<PatchSample> = indices
            .iter()
            .zip(layouts)
            .zip(&probs)
            .zip(&batch.host.labels)
            .map(|(((&image_index, layout), p), &position)| {
                let mut probs = [0f32; 8];
                probs.copy_from_slice(&p[..8]);
                PatchSample {
                    image_index,
                    layout,
                    position,
                    probs,
                }
            })
            .collect();
        let s = data.size;
        let f = preview_factor(s);
        let cell = s * f;
        let (pad, bars_h) = (6, 18);
        let per_row = 4;
        let rows = samples.len().div_ceil(per_row);
        let mut canvas = Canvas::new(
            per_row * (cell + pad) + pad,
            rows * (cell + bars_h + 2 * pad) + pad,
            [24, 24, 28],
        );
        let mut correct = 0;
        for (n, sm) in samples.iter().enumerate() {
            let x = pad + (n % per_row) * (cell + pad);
            let y = pad + (n / per_row) * (cell + bars_h + 2 * pad);
            // Dim everything but the patches, so the gaps show.
            let mut img: Vec<u8> = data.image(sm.image_index).iter().map(|&v| v / 4).collect();
            for &(px, py) in &sm.layout.origins {
                for yy in py..py + sm.layout.patch {
                    for xx in px..px + sm.layout.patch {
                        let o = (yy * s + xx) * 3;
                        img[o..o + 3].copy_from_slice(&data.image(sm.image_index)[o..o + 3]);
                    }
                }
            }
            canvas.blit(&img, s, s, f, x, y);
            let predicted = argmax(&sm.probs);
            let right = predicted as u32 == sm.position;
            correct += usize::from(right);
            let p = sm.layout.patch * f;
            let frame_at =
                |canvas: &mut Canvas, cell_index: usize, color: [u8; 3], inset: usize| {
                    let (px, py) = sm.layout.origins[cell_index];
                    canvas.frame(
                        x + px * f + inset,
                        y + py * f + inset,
                        p - 2 * inset,
                        p - 2 * inset,
                        2,
                        color,
                    );
                };
            frame_at(&mut canvas, 4, [255, 255, 255], 0);
            frame_at(
                &mut canvas,
                NEIGHBOUR_CELLS[sm.position as usize],
                [80, 150, 255],
                0,
            );
            frame_at(
                &mut canvas,
                NEIGHBOUR_CELLS[predicted],
                verdict_color(right),
                3,
            );
            canvas.bars(
                x,
                y + cell + pad,
                cell,
                bars_h,
                &sm.probs,
                Some(sm.position as usize),
            );
        }
        Ok(Preview {
            task: TaskKind::Patch,
            caption: format!(
                "patch position: {correct}/{} right; centre white, true neighbour blue, prediction green/red; bars P(position)",
                samples.len()
            ),
            image: canvas,
            pixels: None,
        })
    }
}
