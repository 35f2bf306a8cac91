//! Convolution + batch norm (+ ReLU) in training mode as one custom op: the convolution's
//! output stays inside the op (kept for the backward pass), its batch statistics are taken
//! while it is fresh, and the backward pass runs batch norm's and the convolution's backward
//! back to back — no intermediate tensor and no gradient accumulation between them in
//! candle's graph.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::conv::{self, ConvGeom};
use super::{f32_slice, norm, poisoned, with_values};

/// One convolution + batch norm as kept for the backward pass and the running statistics.
pub(super) struct Stage {
    pub(super) geom: ConvGeom,
    /// Convolution output (N, C, H', W').
    pub(super) conv_out: Vec<f32>,
    /// [weight; bias; batch mean; batch biased variance], 4·C values.
    pub(super) params: Vec<f32>,
}

impl Stage {
    /// Per channel: the scale and shift that normalise the convolution's output, and the
    /// inverse standard deviation.
    pub(super) fn coef(&self, eps: f32) -> Vec<(f32, f32, f32)> {
        norm::affine(&self.params, self.geom.o, eps)
    }

    /// The batch (mean, biased variance) per channel.
    pub(super) fn stats(&self) -> (&[f32], &[f32]) {
        let c = self.geom.o;
        (&self.params[2 * c..3 * c], &self.params[3 * c..4 * c])
    }
}

/// conv → batch statistics → normalise (+ ReLU): the stage and its output.
pub(super) fn conv_bn(
    geom: ConvGeom,
    x: &[f32],
    w: &[f32],
    affine: (&[f32], &[f32]),
    eps: f32,
    relu: bool,
) -> Result<(Stage, Vec<f32>)> {
    let stage = conv_stats(geom, x, w, affine)?;
    let y = norm::apply(&stage.conv_out, &stage.coef(eps), relu, geom.hw_out());
    Ok((stage, y))
}

/// conv → batch statistics: the stage, whose normalised output the caller makes.
pub(super) fn conv_stats(
    geom: ConvGeom,
    x: &[f32],
    w: &[f32],
    affine: (&[f32], &[f32]),
) -> Result<Stage> {
    conv_stats_impl(geom, x, None, w, affine)
}

/// The next stage after `prev`, whose normalised output (then ReLU) is this stage's input:
/// each image is normalised just before its convolution, while it is in cache. Returns the
/// stage and its input (kept for the backward pass).
pub(super) fn conv_stats_after(
    prev: &Stage,
    (eps, relu): (f32, bool),
    geom: ConvGeom,
    w: &[f32],
    affine: (&[f32], &[f32]),
) -> Result<(Stage, Vec<f32>)> {
    let coef = prev.coef(eps);
    let mut input = vec![0f32; prev.conv_out.len()];
    let stage = conv_stats_impl(
        geom,
        &prev.conv_out,
        Some((&coef, relu, &mut input)),
        w,
        affine,
    )?;
    Ok((stage, input))
}

/// Per channel: scale, shift, inverse standard deviation (see [`norm::affine`]).
type Coef = (f32, f32, f32);

/// Per-channel normalisation (then ReLU) applied to `x` image by image into a buffer first.
type Normalise<'a> = (&'a [Coef], bool, &'a mut [f32]);

/// One run of images' backward results: its ∂L/∂w partial sum and the previous stage's
/// first-pass sums per channel.
type RunSums = (Vec<f32>, Vec<(f64, f64)>);

fn conv_stats_impl(
    geom: ConvGeom,
    x: &[f32],
    normalise: Option<Normalise<'_>>,
    w: &[f32],
    (weight, bias): (&[f32], &[f32]),
) -> Result<Stage> {
    let (c, hw) = (geom.o, geom.hw_out());
    if weight.len() != c || bias.len() != c {
        bail!("conv+batch-norm: affine parameters do not match {c} channels");
    }
    let in_image = geom.in_image();
    if x.len() != geom.n * in_image {
        bail!("conv+batch-norm: input does not match the convolution");
    }
    let (norm_with, mut into) = match normalise {
        Some((k, relu, buf)) => {
            if buf.len() != x.len() || k.len() != geom.c {
                bail!("conv+batch-norm: normalisation does not match the input");
            }
            (
                Some((k, relu)),
                buf.chunks_mut(in_image.max(1)).collect::<Vec<_>>(),
            )
        }
        None => (None, Vec::new()),
    };
    into.resize_with(geom.n, Default::default);
    // The convolution image by image, each image's moments per channel taken while its
    // output is still in cache.
    let mut conv_out = vec![0f32; geom.n * geom.out_image()];
    let mut moments = vec![(0f64, 0f64); geom.n * c];
    conv_out
        .par_chunks_mut(geom.out_image().max(1))
        .zip(moments.par_chunks_mut(c.max(1)))
        .zip(into.into_par_iter())
        .enumerate()
        .try_for_each_init(
            || conv::col_buffer(&geom),
            |col, (i, ((yi, mi), di))| {
                let src = &x[i * in_image..(i + 1) * in_image];
                let xi: &[f32] = match norm_with {
                    Some((coef, relu)) => {
                        norm::apply_image(src, coef, relu, geom.h * geom.w, di);
                        di
                    }
                    None => src,
                };
                geom.forward_image(w, xi, yi, col)?;
                for (m, plane) in mi.iter_mut().zip(yi.chunks(hw.max(1))) {
                    *m = norm::plane_moments(plane);
                }
                Ok::<(), candle_core::Error>(())
            },
        )?;
    let stats = norm::combine_moments(&moments, c, hw);
    let mut params = Vec::with_capacity(4 * c);
    params.extend_from_slice(weight);
    params.extend_from_slice(bias);
    params.extend(stats.iter().map(|s| s.0));
    params.extend(stats.iter().map(|s| s.1));
    Ok(Stage {
        geom,
        conv_out,
        params,
    })
}

/// (∂L/∂input if asked for, ∂L/∂conv weight, ∂L/∂bn weight, ∂L/∂bn bias).
pub(super) type StageGrads = (Option<Vec<f32>>, Vec<f32>, Vec<f32>, Vec<f32>);

/// Work shared between two stages' backward passes (see [`conv_bn_backward`]).
#[derive(Default)]
pub(super) struct Chain<'a> {
    /// This stage's first batch-norm pass, already taken by the stage after it.
    pub(super) sums: Option<norm::BackwardSums>,
    /// The stage whose output, through its batch norm (then ReLU when `.1`), is this stage's
    /// input: its first pass is taken here from ∂L/∂input, image by image as it is made.
    pub(super) prev: Option<(&'a Stage, bool)>,
}

/// Backward through one conv + bn (+ ReLU) stage, given the stage's input and weight. `dx`:
/// `None` when the input needs no gradient, else a buffer of the input's size that ∂L/∂input
/// is added into (zeros, or gradient already gathered from elsewhere) and returned.
///
/// After one pass for batch norm's per-channel sums (or none, given `chain.sums`), each image
/// runs its whole backward back to back: batch norm's ∂L/∂conv for that image into a small
/// buffer, then the convolution's ∂L/∂x and ∂L/∂w products from it while it is in cache, and
/// with `chain.prev` the previous stage's sums from the finished ∂L/∂x (which must then start
/// as zeros). Returns the gradients and, with `chain.prev`, the previous stage's sums.
pub(super) fn conv_bn_backward(
    st: &Stage,
    input: &[f32],
    w: &[f32],
    grad: &[f32],
    (eps, relu): (f32, bool),
    mut dx: Option<Vec<f32>>,
    chain: Chain<'_>,
) -> Result<(StageGrads, Option<norm::BackwardSums>)> {
    let g = st.geom;
    let (c, hw) = (g.o, g.hw_out());
    if grad.len() != st.conv_out.len() || input.len() != g.n * g.in_image() {
        bail!("conv+batch-norm backward: gradient or input does not match the forward pass");
    }
    let sums = match chain.sums {
        Some(s) => s,
        None => norm::BackwardSums::new(&st.conv_out, &st.params, grad, eps, relu, (g.n, c, hw)),
    };
    let per = g.per_run();
    if let Some(d) = &dx
        && d.len() != g.n * g.in_image()
    {
        bail!("conv+batch-norm backward: input gradient buffer has the wrong size");
    }
    let mut dx_runs: Vec<&mut [f32]> = match dx.as_mut() {
        Some(d) => d.chunks_mut((per * g.in_image()).max(1)).collect(),
        None => Vec::new(),
    };
    let want_input = !dx_runs.is_empty();
    let prev = match chain.prev {
        Some((ps, prelu)) if want_input => {
            if ps.conv_out.len() != input.len() {
                bail!("conv+batch-norm backward: the previous stage does not feed this one");
            }
            Some((ps, prelu, ps.coef(eps)))
        }
        _ => None,
    };
    let prev_c = prev.as_ref().map_or(0, |p| p.0.geom.o);
    dx_runs.resize_with(g.image_runs(), Default::default);
    let partials: Vec<RunSums> = dx_runs
        .into_par_iter()
        .enumerate()
        .map(|(run, dx_run)| -> Result<RunSums> {
            let mut dw = vec![0f32; g.o * g.ckk()];
            let mut acc = vec![(0f64, 0f64); prev_c];
            let mut col = conv::col_buffer(&g);
            let mut d_conv = vec![0f32; g.out_image()];
            for i in run * per..((run + 1) * per).min(g.n) {
                let out = i * g.out_image()..(i + 1) * g.out_image();
                sums.image(
                    &st.params,
                    hw,
                    &st.conv_out[out.clone()],
                    &grad[out],
                    &mut d_conv,
                );
                let inp = i * g.in_image()..(i + 1) * g.in_image();
                if want_input {
                    let j = (i - run * per) * g.in_image();
                    let dxi = &mut dx_run[j..j + g.in_image()];
                    g.backward_input_image(w, &d_conv, dxi, &mut col)?;
                    if let Some((ps, prelu, pcoef)) = &prev {
                        let pin = (&ps.conv_out[inp.clone()], &*dxi);
                        let phw = ps.geom.hw_out();
                        norm::BackwardSums::add_image(
                            pcoef, &ps.params, *prelu, phw, pin, &mut acc,
                        );
                    }
                }
                g.backward_weight_image(&input[inp], &d_conv, &mut dw, &mut col)?;
            }
            Ok((dw, acc))
        })
        .collect::<Result<_>>()?;
    let prev_sums = prev.map(|(ps, prelu, pcoef)| {
        let mut totals = vec![(0f64, 0f64); prev_c];
        for (_, acc) in &partials {
            for (t, a) in totals.iter_mut().zip(acc) {
                t.0 += a.0;
                t.1 += a.1;
            }
        }
        norm::BackwardSums::from_totals(pcoef, prelu, (ps.geom.n, ps.geom.hw_out()), &totals)
    });
    let dws: Vec<Vec<f32>> = partials.into_iter().map(|p| p.0).collect();
    let (dgamma, dbeta) = sums.param_grads();
    Ok(((dx, g.weight_grad(&dws), dgamma, dbeta), prev_sums))
}

/// Operands: input x (N, Cin, H, W), convolution weight (C, Cin, K, K), batch-norm weight and
/// bias stacked as (2, C).
pub struct ConvBatchNorm {
    pub stride: usize,
    pub pad: usize,
    pub eps: f32,
    pub relu: bool,
    saved: Arc<Mutex<Option<Stage>>>,
}

const NAME: &str = "conv+batch-norm";

impl CustomOp3 for ConvBatchNorm {
    fn name(&self) -> &'static str {
        "pretext-conv-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "conv input")?;
        let w = f32_slice(s2, l2, "conv weight")?;
        let wb = f32_slice(s3, l3, "batch norm weight and bias")?;
        let geom = ConvGeom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let c = geom.o;
        if wb.len() != 2 * c {
            bail!("{NAME}: {} affine values for {c} channels", wb.len());
        }
        let (stage, y) = conv_bn(geom, x, w, wb.split_at(c), self.eps, self.relu)?;
        *self.saved.lock().map_err(|_| poisoned(NAME))? = Some(stage);
        Ok((
            CpuStorage::F32(y),
            Shape::from((geom.n, c, geom.ho(), geom.wo())),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().map_err(|_| poisoned(NAME))?;
        let Some(stage) = guard.as_ref() else {
            bail!("{NAME}: backward before forward");
        };
        let c = stage.geom.o;
        let (dx, dw, dgamma, dbeta) = with_values(grad, |g| {
            with_values(w, |ws| {
                with_values(x, |xs| {
                    let dx = x.track_op().then(|| vec![0f32; xs.len()]);
                    let chain = Chain::default();
                    Ok(conv_bn_backward(stage, xs, ws, g, (self.eps, self.relu), dx, chain)?.0)
                })
            })
        })?;
        let dwb = Tensor::from_vec([dgamma, dbeta].concat(), (2, c), wb.device())?;
        let dx = match dx {
            Some(v) => Some(Tensor::from_vec(v, x.shape(), x.device())?),
            None => None,
        };
        let dw = Tensor::from_vec(dw, w.shape(), w.device())?;
        Ok((dx, Some(dw), Some(dwb)))
    }
}

/// `bn(conv(x, w))` (then ReLU) with batch statistics; returns the output and the batch mean
/// and biased variance per channel, each (C,).
#[allow(clippy::too_many_arguments)]
pub fn conv_batch_norm_train(
    x: &Tensor,
    w: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: usize,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBatchNorm {
        stride,
        pad,
        eps: eps as f32,
        relu,
        saved: saved.clone(),
    };
    let wb = Tensor::stack(&[weight, bias], 0)?;
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &wb, op)?;
    let guard = saved.lock().map_err(|_| poisoned(NAME))?;
    let Some(stage) = guard.as_ref() else {
        bail!("{NAME}: forward left no statistics");
    };
    let (mean, var) = stage.stats();
    let c = mean.len();
    Ok((
        y,
        Tensor::from_slice(mean, c, x.device())?,
        Tensor::from_slice(var, c, x.device())?,
    ))
}
