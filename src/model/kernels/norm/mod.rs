//! Batch normalisation (optionally fused with the ReLU after it) as candle custom ops.
//!
//! The per-channel parameters travel as one (4, C) tensor `p` = [weight; bias; mean; var]
//! ([`NormParams`]): the first two rows carry gradients, the statistics rows are constants
//! (batch statistics are taken by [`BatchStats`] and their own gradient is folded into the
//! backward formula).
//!
//! - [`stats`]: batch statistics ([`ChannelStats`]), from the batch or from per-image moments;
//! - [`backward`]: the training-mode backward pass;
//! - `cuda` (the `cuda` feature): the three ops' CUDA kernels (batch_norm.cu), so that on a GPU
//!   batch norm is three to four kernel launches instead of candle-nn's chain of small ops;
//! - here: the parameter types, the normalisation itself, the forward op and the functions
//!   the model calls.

mod backward;
// Allocating device memory for a kernel to fill and launching kernels are unsafe in cudarc;
// each such call says what makes it sound.
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod cuda;
mod stats;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};

use super::operands::{Planes, f32_slice};
use super::simd;
pub use backward::BatchNormBackward;
pub(super) use backward::{BackwardSums, FirstPass, GradSums};
pub(super) use stats::Moments;
pub use stats::{BatchStats, ChannelStats};

/// The most channels the CUDA kernels take: their backward pass keeps 7 rows of C f32
/// coefficients in a block's 48 KiB of shared memory (`cuda.rs`). Wider batch norms run as
/// candle-nn's chain of ops on CUDA ([`super::batch_norm_applies`]).
pub const CUDA_MAX_CHANNELS: usize = 48 * 1024 / (7 * 4);

/// What a training-mode batch norm gives: the output (N, C, H, W) and the batch's per-channel
/// mean and biased variance, each (C,), for the running statistics.
pub struct BatchNormOutput {
    pub y: Tensor,
    pub mean: Tensor,
    pub var: Tensor,
}

/// One channel's batch norm as an affine map: the normalised value is `x · scale + shift`;
/// `inv_std` = 1/√(var + ε) for the backward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Coef {
    /// weight / √(var + ε).
    pub(super) scale: f32,
    /// bias − mean · scale.
    pub(super) shift: f32,
    /// 1/√(var + ε).
    pub(super) inv_std: f32,
}

/// How a batch norm is applied: ε added to the variance, and whether a ReLU follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct NormAct {
    pub(super) eps: f32,
    pub(super) relu: bool,
}

/// A batch norm's learnt per-channel scale and shift (γ, β), C values each.
#[derive(Clone, Copy, Debug)]
pub(super) struct Affine<'a> {
    pub(super) weight: &'a [f32],
    pub(super) bias: &'a [f32],
}

impl<'a> Affine<'a> {
    /// The packed [weight; bias] (2·C values) for `c` channels.
    pub(super) fn unpack(wb: &'a [f32], c: usize, what: &str) -> Result<Self> {
        if wb.len() != 2 * c {
            bail!("{what}: {} affine values for {c} channels", wb.len());
        }
        let (weight, bias) = wb.split_at(c);
        Ok(Self { weight, bias })
    }
}

/// ∂L/∂weight and ∂L/∂bias of one batch norm, C values each.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct AffineGrads {
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
}

/// All per-channel values one batch norm normalises with, C each: its [`Affine`] parameters
/// and the statistics (the batch's in training, the running ones in evaluation).
#[derive(Clone, Copy, Debug)]
pub(super) struct NormParams<'a> {
    pub(super) affine: Affine<'a>,
    pub(super) mean: &'a [f32],
    /// Biased variance.
    pub(super) var: &'a [f32],
}

impl<'a> NormParams<'a> {
    /// The packed [weight; bias; mean; var] (4·C values) for `c` channels.
    pub(super) fn unpack(p: &'a [f32], c: usize, what: &str) -> Result<Self> {
        if p.len() != 4 * c {
            bail!("{what}: parameters hold {} values, need 4 × {c}", p.len());
        }
        let (wb, stats) = p.split_at(2 * c);
        let (mean, var) = stats.split_at(c);
        Ok(Self {
            affine: Affine::unpack(wb, c, what)?,
            mean,
            var,
        })
    }

    /// `affine` with `stats`.
    pub(super) fn new(affine: Affine<'a>, stats: &'a ChannelStats) -> Self {
        Self {
            affine,
            mean: &stats.mean,
            var: &stats.var,
        }
    }

    /// Per channel, the [`Coef`]s that normalise with these values.
    pub(super) fn coef(&self, eps: f32) -> Vec<Coef> {
        let Affine { weight, bias } = self.affine;
        (0..weight.len())
            .map(|ch| {
                let (w, b, mean, var) = (weight[ch], bias[ch], self.mean[ch], self.var[ch]);
                let inv = 1.0 / (var + eps).sqrt();
                Coef {
                    scale: w * inv,
                    shift: b - mean * w * inv,
                    inv_std: inv,
                }
            })
            .collect()
    }
}

/// `x · scale + shift` (then ReLU) over one plane, value by value.
#[inline(always)]
fn normalised(x: &[f32], k: Coef, relu: bool) -> impl Iterator<Item = f32> + '_ {
    let Coef { scale, shift, .. } = k;
    x.iter().map(move |v| {
        let y = v * scale + shift;
        if relu { y.max(0.0) } else { y }
    })
}

/// `x · scale + shift` per channel (then ReLU) over a batch of planes of `hw` values.
pub(super) fn apply(x: &[f32], coef: &[Coef], relu: bool, hw: usize) -> Vec<f32> {
    let (c, hw) = (coef.len().max(1), hw.max(1));
    simd::collect_chunks(
        x.len(),
        hw,
        #[inline(always)]
        |plane| normalised(simd::chunk(x, plane, hw), coef[plane % c], relu),
    )
}

/// [`apply`] to one image (C planes of `hw` values) into `out`.
pub(super) fn apply_image(x: &[f32], coef: &[Coef], relu: bool, hw: usize, out: &mut [f32]) {
    simd::wide(
        #[inline(always)]
        || {
            for ((o, xp), &k) in out.chunks_mut(hw.max(1)).zip(x.chunks(hw.max(1))).zip(coef) {
                for (o, y) in o.iter_mut().zip(normalised(xp, k, relu)) {
                    *o = y;
                }
            }
        },
    );
}

/// `y = (x − mean) / √(var + eps) · weight + bias`, then ReLU when `relu` is set. Operands:
/// x, the packed parameters [weight; bias; mean; var] (4, C).
pub struct BatchNorm {
    pub(super) act: NormAct,
}

impl CustomOp2 for BatchNorm {
    fn name(&self) -> &'static str {
        "pretext-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "batch norm input")?;
        let p = f32_slice(s2, l2, "batch norm parameters")?;
        let planes = Planes::of(l1.dims(), "batch norm")?;
        let coef = NormParams::unpack(p, planes.c, "batch norm")?.coef(self.act.eps);
        let y = apply(x, &coef, self.act.relu, planes.hw);
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::apply(s1, l1, s2, l2, self.act)
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c = p.dim(1)?;
        let grad = grad.contiguous()?;
        let packed = x.apply_op3_no_bwd(p, &grad, &BatchNormBackward { act: self.act })?;
        let numel = x.elem_count();
        let dx = packed.narrow(0, 0, numel)?.reshape(x.shape())?;
        let dwb = packed.narrow(0, numel, 2 * c)?.reshape((2, c))?;
        let dp = Tensor::cat(&[&dwb, &Tensor::zeros((2, c), p.dtype(), p.device())?], 0)?;
        Ok((Some(dx), Some(dp)))
    }
}

/// Training-mode batch norm (+ ReLU): returns the output and the batch (mean, biased variance),
/// each of shape (C,), for the running statistics.
///
/// # Errors
/// A tensor error from candle.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormOutput> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&BatchStats)?;
    let p = Tensor::cat(&[&weight.unsqueeze(0)?, &bias.unsqueeze(0)?, &stats], 0)?;
    let y = x.apply_op2(
        &p,
        BatchNorm {
            act: NormAct {
                eps: eps as f32,
                relu,
            },
        },
    )?;
    Ok(BatchNormOutput {
        y,
        mean: stats.get(0)?,
        var: stats.get(1)?,
    })
}

/// Batch norm (+ ReLU) with given statistics (evaluation mode); differentiable with respect to
/// the input as if the statistics were the batch's own is not wanted here, so no gradient flows.
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let p = Tensor::stack(&[weight, bias, mean, var], 0)?;
    x.apply_op2_no_bwd(
        &p,
        &BatchNorm {
            act: NormAct {
                eps: eps as f32,
                relu,
            },
        },
    )
}
