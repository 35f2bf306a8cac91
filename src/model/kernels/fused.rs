//! Convolution + batch norm (+ ReLU) in training mode as one custom op: the convolution's
//! output stays inside the op (kept for the backward pass), its batch statistics are taken
//! while it is fresh, and the backward pass runs batch norm's and the convolution's backward
//! back to back — no intermediate tensor and no gradient accumulation between them in
//! candle's graph. The stage functions here ([`conv_stats`], [`conv_stats_after`],
//! [`conv_bn_backward`]) are also what [`super::block`] chains.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::conv::{self, ConvGeom};
use super::norm::{
    self, Affine, AffineGrads, BackwardSums, BatchNormOutput, ChannelStats, Coef, FirstPass,
    GradSums, Moments, NormAct, NormParams,
};
use super::operands::{SavedState, f32_slice, grad_like, tensor_like, with_values};
use super::pool::{self, Pooled};
use super::simd;

/// One convolution + batch norm as kept for the backward pass and the running statistics.
pub(super) struct Stage {
    pub(super) geom: ConvGeom,
    /// Convolution output (N, O, Ho, Wo): what the batch norm normalises. Given back to
    /// [`pool`] for the next step when the stage is dropped.
    pub(super) conv_out: Pooled,
    /// Batch norm's weight, O values.
    pub(super) weight: Vec<f32>,
    /// Batch norm's bias, O values.
    pub(super) bias: Vec<f32>,
    /// The batch statistics of `conv_out`.
    pub(super) stats: ChannelStats,
}

impl Stage {
    /// Batch norm's parameters with the batch statistics.
    pub(super) fn norm(&self) -> NormParams<'_> {
        let affine = Affine {
            weight: &self.weight,
            bias: &self.bias,
        };
        NormParams::new(affine, &self.stats)
    }

    /// Per channel: the coefficients that normalise the convolution's output.
    pub(super) fn coef(&self, eps: f32) -> Vec<Coef> {
        self.norm().coef(eps)
    }
}

/// conv → batch statistics: the stage, whose normalised output the caller makes. `x` is the
/// input (N, C, H, W), `w` the weight (O, C, K, K), `bn` the batch norm's parameters.
pub(super) fn conv_stats(geom: ConvGeom, x: &[f32], w: &[f32], bn: Affine<'_>) -> Result<Stage> {
    conv_stats_impl(geom, x, None, w, bn)
}

/// The next stage after `prev`, whose output normalised as `act` says is this stage's input:
/// each group of images is normalised into a small buffer just before its convolution, while
/// it is in cache. The normalised input is not kept: the backward pass makes it again the
/// same way ([`Input::Normalised`]), which costs less than writing it to memory and reading
/// it back.
pub(super) fn conv_stats_after(
    prev: &Stage,
    act: NormAct,
    geom: ConvGeom,
    w: &[f32],
    bn: Affine<'_>,
) -> Result<Stage> {
    let coef = prev.coef(act.eps);
    let normalise = Normalise {
        coef: &coef,
        relu: act.relu,
    };
    conv_stats_impl(geom, &prev.conv_out, Some(normalise), w, bn)
}

/// A per-channel normalisation (then ReLU) applied to a stage's input group by group, just
/// before the group's convolution.
#[derive(Clone, Copy)]
struct Normalise<'a> {
    coef: &'a [Coef],
    relu: bool,
}

impl Normalise<'_> {
    /// The normalised images of `src` (whole images of `g`'s input) in `scratch`.
    fn images<'s>(&self, g: &ConvGeom, src: &[f32], scratch: &'s mut [f32]) -> &'s [f32] {
        let image = g.in_image().max(1);
        let out = &mut scratch[..src.len()];
        for (xi, di) in src.chunks(image).zip(out.chunks_mut(image)) {
            norm::apply_image(xi, self.coef, self.relu, g.h * g.w, di);
        }
        out
    }
}

/// A buffer for one group's normalised input images, from [`pool`] where it has one.
fn group_scratch(g: &ConvGeom) -> Pooled {
    let len = g.group() * g.in_image();
    Pooled::new(pool::take(len).unwrap_or_else(|| vec![0.0; len]))
}

fn conv_stats_impl(
    geom: ConvGeom,
    x: &[f32],
    normalise: Option<Normalise<'_>>,
    w: &[f32],
    bn: Affine<'_>,
) -> Result<Stage> {
    let (c, hw) = (geom.o, geom.hw_out());
    if bn.weight.len() != c || bn.bias.len() != c {
        bail!("conv+batch-norm: affine parameters do not match {c} channels");
    }
    let in_image = geom.in_image();
    if x.len() != geom.n * in_image {
        bail!("conv+batch-norm: input does not match the convolution");
    }
    let group = geom.group();
    if normalise.is_some_and(|nz| nz.coef.len() != geom.c) {
        bail!("conv+batch-norm: normalisation does not match the input");
    }
    // The convolution group by group ([`ConvGeom::group`]), each image's moments per channel
    // taken while its output is still in cache. Every kernel of `forward_group` writes all of
    // its output, so the buffer may come from the pool unzeroed.
    let mut moments = vec![Moments::default(); geom.n * c];
    let plan = geom.forward_plan(w);
    let conv_out = simd::overwritten_chunks(
        geom.n * geom.out_image(),
        group * geom.out_image(),
        moments.par_chunks_mut((group * c).max(1)),
        || {
            let scratch = normalise.map(|_| group_scratch(&geom)).unwrap_or_default();
            (conv::work(&geom), scratch)
        },
        |(work, scratch), gi, ys, ms| {
            let first = gi * group;
            let images = ys.len() / geom.out_image().max(1);
            let src = &x[first * in_image..(first + images) * in_image];
            let xs: &[f32] = match &normalise {
                Some(nz) => nz.images(&geom, src, scratch),
                None => src,
            };
            geom.forward_group(&plan, xs, ys, work)?;
            for (m, plane) in ms.iter_mut().zip(ys.chunks(hw.max(1))) {
                *m = Moments::of_plane(plane);
            }
            Ok::<(), candle_core::Error>(())
        },
    )?;
    Ok(Stage {
        geom,
        conv_out: Pooled::new(conv_out),
        weight: bn.weight.to_vec(),
        bias: bn.bias.to_vec(),
        stats: ChannelStats::from_moments(&moments, c, hw),
    })
}

/// What [`conv_bn_backward`] gives.
pub(super) struct StageBackward {
    /// ∂L/∂input (N, C, H, W), when it was asked for.
    pub(super) dx: Option<Vec<f32>>,
    /// ∂L/∂(conv weight), (O, C, K, K).
    pub(super) dw: Vec<f32>,
    /// ∂L/∂(bn weight) and ∂L/∂(bn bias), O values each.
    pub(super) bn: AffineGrads,
    /// With [`Chain::prev`], the previous stage's first batch-norm pass, taken here.
    pub(super) prev_sums: Option<BackwardSums>,
}

impl StageBackward {
    /// Appends the parameter gradients in a parameter vector's order: conv weight, bn weight,
    /// bn bias.
    pub(super) fn append_param_grads(&self, out: &mut Vec<f32>) {
        for v in [&self.dw, &self.bn.weight, &self.bn.bias] {
            out.extend_from_slice(v);
        }
    }
}

/// The stage whose output, through its batch norm (then ReLU when `relu`), is a stage's input.
#[derive(Clone, Copy)]
pub(super) struct PrevStage<'a> {
    pub(super) stage: &'a Stage,
    pub(super) relu: bool,
}

/// Work shared between two stages' backward passes (see [`conv_bn_backward`]).
#[derive(Default)]
pub(super) struct Chain<'a> {
    /// This stage's first batch-norm pass, already taken by the stage after it.
    pub(super) sums: Option<BackwardSums>,
    /// The stage before this one: its first pass is taken here from ∂L/∂input, image by image
    /// as it is made.
    pub(super) prev: Option<PrevStage<'a>>,
}

/// One run of images' backward results.
struct RunSums {
    /// The run's ∂L/∂w partial sum, laid out (C·K·K × O).
    dw: Vec<f32>,
    /// The previous stage's first-pass sums over the run, per channel.
    prev: Vec<GradSums>,
}

/// A stage's input as its backward pass gets it.
#[derive(Clone, Copy)]
pub(super) enum Input<'a> {
    /// The values themselves (N, C, H, W).
    Values(&'a [f32]),
    /// The previous stage's output through its batch norm (then ReLU as `act` says), made
    /// again group by group as [`conv_stats_after`] made it.
    Normalised { prev: &'a Stage, act: NormAct },
}

/// Where a stage's backward pass puts ∂L/∂input.
pub(super) enum InputGrad {
    /// The input needs no gradient.
    Skip,
    /// Added into this buffer of the input's size (zeros, or gradient already gathered from
    /// elsewhere).
    AddTo(Vec<f32>),
    /// Written into this buffer of the input's size, whatever it holds now (one from
    /// [`pool::take`]): by the ∂L/∂x kernels that can write instead of adding, else into
    /// each group's part zeroed just before, while it is in cache
    /// ([`conv::BackwardPlan::overwriting_input`]).
    Write(Vec<f32>),
}

/// Backward through one conv + bn (+ ReLU) stage, given the stage's input and weight and the
/// gradient of its output; ∂L/∂input goes where `dx` says and is returned.
///
/// After one pass for batch norm's per-channel sums (or none, given `chain.sums`), each image
/// runs its whole backward back to back: batch norm's ∂L/∂conv for that image into a small
/// buffer, then the convolution's ∂L/∂x and ∂L/∂w products from it while it is in cache, and
/// with `chain.prev` the previous stage's sums from the finished ∂L/∂x (which must then start
/// as zeros, or be [`InputGrad::Write`]: nothing may have been added into it before).
pub(super) fn conv_bn_backward(
    st: &Stage,
    input: Input<'_>,
    w: &[f32],
    grad: &[f32],
    act: NormAct,
    dx: InputGrad,
    chain: Chain<'_>,
) -> Result<StageBackward> {
    let g = st.geom;
    let hw = g.hw_out();
    let (input_values, normalise, coef) = match input {
        Input::Values(v) => (v, None, Vec::new()),
        Input::Normalised { prev, act } => {
            if prev.geom.out_image() != g.in_image() || prev.geom.o != g.c {
                bail!("conv+batch-norm backward: the previous stage does not feed this one");
            }
            (&prev.conv_out[..], Some(act.relu), prev.coef(act.eps))
        }
    };
    let normalise = normalise.map(|relu| Normalise { coef: &coef, relu });
    if grad.len() != st.conv_out.len() || input_values.len() != g.n * g.in_image() {
        bail!("conv+batch-norm backward: gradient or input does not match the forward pass");
    }
    let (mut dx, overwrite) = match dx {
        InputGrad::Skip => (None, false),
        InputGrad::AddTo(d) => (Some(d), false),
        InputGrad::Write(d) => (Some(d), true),
    };
    let sums = match chain.sums {
        Some(s) => s,
        None => BackwardSums::new(&st.conv_out, st.norm(), grad, act, g.out_planes()),
    };
    let want_input = dx.as_ref().is_some_and(|d| !d.is_empty());
    let plan = match g.backward_plan(w, want_input) {
        plan if overwrite => plan.overwriting_input(),
        plan => plan,
    };
    let runs = g.runs(g.weight_partial_len(&plan));
    if let Some(d) = &dx
        && d.len() != g.n * g.in_image()
    {
        bail!("conv+batch-norm backward: input gradient buffer has the wrong size");
    }
    let mut dx_runs: Vec<&mut [f32]> = match dx.as_mut() {
        Some(d) => d.chunks_mut((runs.per_run * g.in_image()).max(1)).collect(),
        None => Vec::new(),
    };
    let prev = match chain.prev {
        Some(p) if want_input => {
            let ps = p.stage;
            if ps.conv_out.len() != input_values.len() || ps.geom.out_image() != g.in_image() {
                bail!("conv+batch-norm backward: the previous stage does not feed this one");
            }
            let pact = NormAct {
                eps: act.eps,
                relu: p.relu,
            };
            Some(FirstPass::new(
                &ps.conv_out,
                ps.norm(),
                pact,
                ps.geom.out_planes(),
            ))
        }
        _ => None,
    };
    let prev_c = prev.as_ref().map_or(0, FirstPass::channels);
    dx_runs.resize_with(runs.count(), Default::default);
    let partials: Vec<RunSums> = dx_runs
        .into_par_iter()
        .enumerate()
        .map(|(run, dx_run)| -> Result<RunSums> {
            let mut dw = vec![0f32; g.weight_partial_len(&plan)];
            let mut acc = vec![GradSums::default(); prev_c];
            let mut work = conv::work(&g);
            let group = g.group();
            let mut d_conv = vec![0f32; group * g.out_image()];
            let mut scratch = normalise.map(|_| group_scratch(&g)).unwrap_or_default();
            let params = st.norm();
            let images = runs.images(run);
            for start in images.clone().step_by(group) {
                let end = (start + group).min(images.end);
                let d_conv = &mut d_conv[..(end - start) * g.out_image()];
                for (i, d) in (start..end).zip(d_conv.chunks_mut(g.out_image().max(1))) {
                    let out = i * g.out_image()..(i + 1) * g.out_image();
                    sums.image(&params, hw, &st.conv_out[out.clone()], &grad[out], d);
                }
                let inp = start * g.in_image()..end * g.in_image();
                let mut dxs = if want_input {
                    let j = (start - images.start) * g.in_image();
                    Some(&mut dx_run[j..j + (end - start) * g.in_image()])
                } else {
                    None
                };
                let xs = match &normalise {
                    Some(nz) => nz.images(&g, &input_values[inp], &mut scratch),
                    None => &input_values[inp],
                };
                let weight = Some((xs, &mut dw[..]));
                g.backward_group(&plan, d_conv, dxs.as_deref_mut(), weight, &mut work)?;
                if let (Some(dxs), Some(pass)) = (dxs, &prev) {
                    for (i, dxi) in (start..end).zip(dxs.chunks(g.in_image().max(1))) {
                        pass.add_image(i, dxi, &mut acc);
                    }
                }
            }
            Ok(RunSums { dw, prev: acc })
        })
        .collect::<Result<_>>()?;
    let prev_sums = prev.map(|pass| {
        let mut totals = vec![GradSums::default(); prev_c];
        for run in &partials {
            for (t, a) in totals.iter_mut().zip(&run.prev) {
                *t += *a;
            }
        }
        pass.finish(&totals)
    });
    let dws: Vec<Vec<f32>> = partials.into_iter().map(|p| p.dw).collect();
    Ok(StageBackward {
        dx,
        dw: g.weight_grad(&dws, &plan)?,
        bn: sums.into_grads(),
        prev_sums,
    })
}

/// Operands: input x (N, Cin, H, W), convolution weight (C, Cin, K, K), batch-norm weight and
/// bias stacked as (2, C).
pub struct ConvBatchNorm {
    pub stride: usize,
    pub pad: usize,
    pub eps: f32,
    pub relu: bool,
    saved: SavedState<Stage>,
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
        let stage = conv_stats(geom, x, w, Affine::unpack(wb, geom.o, NAME)?)?;
        let y = norm::apply(
            &stage.conv_out,
            &stage.coef(self.eps),
            self.relu,
            geom.hw_out(),
        );
        self.saved.put(stage)?;
        let shape = Shape::from((geom.n, geom.o, geom.ho(), geom.wo()));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let act = NormAct {
            eps: self.eps,
            relu: self.relu,
        };
        let back = self.saved.with("backward before forward", |stage| {
            with_values(grad, |g| {
                with_values(w, |ws| {
                    with_values(x, |xs| {
                        let dx = if x.track_op() {
                            InputGrad::AddTo(simd::zeros(xs.len()))
                        } else {
                            InputGrad::Skip
                        };
                        let input = Input::Values(xs);
                        conv_bn_backward(stage, input, ws, g, act, dx, Chain::default())
                    })
                })
            })
        })?;
        let dwb = tensor_like([back.bn.weight, back.bn.bias].concat(), wb)?;
        Ok((
            grad_like(back.dx, x)?,
            Some(tensor_like(back.dw, w)?),
            Some(dwb),
        ))
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
) -> Result<BatchNormOutput> {
    let saved = SavedState::new(NAME);
    let op = ConvBatchNorm {
        stride,
        pad,
        eps: eps as f32,
        relu,
        saved: saved.clone(),
    };
    let wb = Tensor::stack(&[weight, bias], 0)?;
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &wb, op)?;
    saved.with("forward left no statistics", |stage| {
        let ChannelStats { mean, var } = &stage.stats;
        let dev = x.device();
        Ok(BatchNormOutput {
            y,
            mean: Tensor::from_slice(mean, mean.len(), dev)?,
            var: Tensor::from_slice(var, var.len(), dev)?,
        })
    })
}
