//! Batch normalisation (optionally fused with the ReLU after it) as candle custom ops.
//!
//! The per-channel parameters travel as one (4, C) tensor `p` = [weight; bias; mean; var]:
//! the first two rows carry gradients, the statistics rows are constants (batch statistics are
//! taken by [`BatchStats`] and their own gradient is folded into the backward formula).

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail,
};
use rayon::prelude::*;

use super::f32_slice;

pub(super) fn nchw(dims: &[usize], what: &str) -> Result<(usize, usize, usize)> {
    match *dims {
        [n, c, h, w] => Ok((n, c, h * w)),
        [n, c] => Ok((n, c, 1)),
        _ => bail!("{what}: expected an (N, C, H, W) or (N, C) tensor, got {dims:?}"),
    }
}

/// Independent accumulators, so that sums vectorise (a single f32 accumulator is a serial
/// dependency chain the compiler may not reorder).
const LANES: usize = 16;

/// `Σ f(v)` over `xs`, in [`LANES`] partial sums.
pub(super) fn lanes(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// (Σg, Σg·(x − mean)) with g zeroed where the fused ReLU's output `x·scale + shift` is not
/// positive.
fn masked_sums(x: &[f32], g: &[f32], relu: bool, scale: f32, shift: f32, mean: f32) -> (f32, f32) {
    let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
    let mask = |xv: f32, gv: f32| {
        if relu && xv * scale + shift <= 0.0 {
            0.0
        } else {
            gv
        }
    };
    let (xc, gc) = (x.chunks_exact(LANES), g.chunks_exact(LANES));
    let (mut ta, mut tb) = (0f32, 0f32);
    for (&xv, &gv) in xc.remainder().iter().zip(gc.remainder()) {
        let gv = mask(xv, gv);
        ta += gv;
        tb += gv * (xv - mean);
    }
    for (xs, gs) in xc.zip(gc) {
        for l in 0..LANES {
            let gv = mask(xs[l], gs[l]);
            a[l] += gv;
            b[l] += gv * (xs[l] - mean);
        }
    }
    (a.iter().sum::<f32>() + ta, b.iter().sum::<f32>() + tb)
}

/// (mean, Σ(v − mean)²) of one plane, in f64 for [`combine_moments`].
pub(super) fn plane_moments(xs: &[f32]) -> (f64, f64) {
    let mean = lanes(xs, |v| v) / xs.len().max(1) as f32;
    let m2 = lanes(xs, |v| (v - mean) * (v - mean));
    (f64::from(mean), f64::from(m2))
}

/// Per-channel (mean, biased variance) of a batch from each image's [`plane_moments`]
/// (`moments[i·C + ch]`, `hw` values each), by Chan et al.'s pairwise formula:
/// M2 = Σᵢ M2ᵢ + hw·Σᵢ (meanᵢ − mean)².
pub(super) fn combine_moments(moments: &[(f64, f64)], c: usize, hw: usize) -> Vec<(f32, f32)> {
    let n = moments.len() / c.max(1);
    let count = (n * hw).max(1) as f64;
    (0..c)
        .map(|ch| {
            let per = moments.iter().skip(ch).step_by(c.max(1));
            let mean = per.clone().map(|m| m.0).sum::<f64>() / n.max(1) as f64;
            let m2: f64 = per
                .map(|&(mi, m2i)| m2i + hw as f64 * (mi - mean) * (mi - mean))
                .sum();
            (mean as f32, (m2 / count) as f32)
        })
        .collect()
}

/// Per-channel (mean, biased variance) of an (N, C, H·W) batch.
pub(super) fn stats(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<(f32, f32)> {
    let count = (n * hw).max(1) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = (0..n).map(|i| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw]);
            let sum: f64 = planes.clone().map(|p| f64::from(lanes(p, |v| v))).sum();
            let mean = sum / count;
            let m = mean as f32;
            let sq: f64 = planes
                .map(|p| f64::from(lanes(p, |v| (v - m) * (v - m))))
                .sum();
            (mean as f32, (sq / count) as f32)
        })
        .collect()
}

/// `x · scale + shift` (then ReLU) over one plane.
fn apply_plane(x: &[f32], out: &mut [f32], scale: f32, shift: f32, relu: bool) {
    if relu {
        for (o, v) in out.iter_mut().zip(x) {
            *o = (v * scale + shift).max(0.0);
        }
    } else {
        for (o, v) in out.iter_mut().zip(x) {
            *o = v * scale + shift;
        }
    }
}

/// `x · scale + shift` per channel (then ReLU).
pub(super) fn apply(x: &[f32], coef: &[(f32, f32, f32)], relu: bool, hw: usize) -> Vec<f32> {
    let c = coef.len().max(1);
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(hw.max(1))
        .zip(x.par_chunks(hw.max(1)))
        .enumerate()
        .for_each(|(plane, (yo, xi))| {
            let (scale, shift, _) = coef[plane % c];
            apply_plane(xi, yo, scale, shift, relu);
        });
    y
}

/// [`apply`] to one image (C planes of `hw` values) into `out`.
pub(super) fn apply_image(
    x: &[f32],
    coef: &[(f32, f32, f32)],
    relu: bool,
    hw: usize,
    out: &mut [f32],
) {
    for ((o, xp), &(scale, shift, _)) in
        out.chunks_mut(hw.max(1)).zip(x.chunks(hw.max(1))).zip(coef)
    {
        apply_plane(xp, o, scale, shift, relu);
    }
}

/// The second operand of [`apply_add_relu`].
pub(super) enum Skip<'a> {
    /// Added as it is.
    Identity(&'a [f32]),
    /// Normalised per channel with (scale, shift, _) first.
    Normalised(&'a [f32], Vec<(f32, f32, f32)>),
}

/// `relu(x · scale + shift + skip)` per channel, `skip` as [`Skip`] says: a residual block's
/// last batch norm, its shortcut and the ReLU in one pass.
pub(super) fn apply_add_relu(
    x: &[f32],
    coef: &[(f32, f32, f32)],
    skip: &Skip<'_>,
    hw: usize,
) -> Result<Vec<f32>> {
    let c = coef.len().max(1);
    let hw = hw.max(1);
    let (b, bcoef) = match skip {
        Skip::Identity(b) => (*b, None),
        Skip::Normalised(b, k) => (*b, Some(k.as_slice())),
    };
    if b.len() != x.len() || bcoef.is_some_and(|k| k.len() != coef.len()) {
        bail!("residual add: the shortcut does not match the main path");
    }
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw).zip(b.par_chunks(hw)))
        .enumerate()
        .for_each(|(plane, (yo, (xp, bp)))| {
            let (scale, shift, _) = coef[plane % c];
            match bcoef {
                Some(k) => {
                    let (bs, bt, _) = k[plane % c];
                    for ((o, v), u) in yo.iter_mut().zip(xp).zip(bp) {
                        *o = (v * scale + shift + u * bs + bt).max(0.0);
                    }
                }
                None => {
                    for ((o, v), u) in yo.iter_mut().zip(xp).zip(bp) {
                        *o = (v * scale + shift + u).max(0.0);
                    }
                }
            }
        });
    Ok(y)
}

/// What the training-mode backward pass needs per channel, after a first pass over the batch:
/// the affine coefficients and the sums Σg and Σg·x̂ (g masked by the fused ReLU).
pub(super) struct BackwardSums {
    coef: Vec<(f32, f32, f32)>,
    sums: Vec<(f32, f32)>,
    relu: bool,
    /// Values per channel in the batch, N·H·W.
    count: f32,
}

impl BackwardSums {
    /// The first pass over (x, g) of an (N, C, H·W) batch, for parameters `p` = [weight; bias;
    /// mean; var].
    pub(super) fn new(
        x: &[f32],
        p: &[f32],
        g: &[f32],
        eps: f32,
        relu: bool,
        (n, c, hw): (usize, usize, usize),
    ) -> Self {
        let coef = affine(p, c, eps);
        let sums = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (scale, shift, inv) = coef[ch];
                let mean = p[2 * c + ch];
                let (mut sg, mut sgx) = (0f64, 0f64);
                for i in 0..n {
                    let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                    let (a, b) = masked_sums(&x[r.clone()], &g[r], relu, scale, shift, mean);
                    sg += f64::from(a);
                    sgx += f64::from(b);
                }
                (sg as f32, (sgx * f64::from(inv)) as f32)
            })
            .collect();
        Self {
            coef,
            sums,
            relu,
            count: (n * hw).max(1) as f32,
        }
    }

    /// Adds one image's (Σg, Σg·(x − mean)) per channel to `acc` (C entries): the first pass
    /// taken image by image by a caller that has the image's gradient at hand anyway.
    pub(super) fn add_image(
        coef: &[(f32, f32, f32)],
        p: &[f32],
        relu: bool,
        hw: usize,
        (x, g): (&[f32], &[f32]),
        acc: &mut [(f64, f64)],
    ) {
        let c = coef.len();
        let hw = hw.max(1);
        for (ch, ((a, xp), gp)) in acc
            .iter_mut()
            .zip(x.chunks(hw))
            .zip(g.chunks(hw))
            .enumerate()
        {
            let (scale, shift, _) = coef[ch];
            let (sg, sgx) = masked_sums(xp, gp, relu, scale, shift, p[2 * c + ch]);
            a.0 += f64::from(sg);
            a.1 += f64::from(sgx);
        }
    }

    /// The first pass from totals gathered with [`BackwardSums::add_image`] over all `n`
    /// images.
    pub(super) fn from_totals(
        coef: Vec<(f32, f32, f32)>,
        relu: bool,
        (n, hw): (usize, usize),
        totals: &[(f64, f64)],
    ) -> Self {
        let sums = totals
            .iter()
            .zip(&coef)
            .map(|(&(sg, sgx), &(_, _, inv))| (sg as f32, (sgx * f64::from(inv)) as f32))
            .collect();
        Self {
            coef,
            sums,
            relu,
            count: (n * hw).max(1) as f32,
        }
    }

    /// ∂L/∂weight and ∂L/∂bias, C values each.
    pub(super) fn param_grads(&self) -> (Vec<f32>, Vec<f32>) {
        (
            self.sums.iter().map(|s| s.1).collect(),
            self.sums.iter().map(|s| s.0).collect(),
        )
    }

    /// ∂L/∂x for one channel's plane of one image; `p` as for [`BackwardSums::new`].
    pub(super) fn plane(&self, p: &[f32], ch: usize, x: &[f32], g: &[f32], dx: &mut [f32]) {
        let c = self.coef.len();
        let (scale, shift, inv) = self.coef[ch];
        let (w, mean) = (p[ch], p[2 * c + ch]);
        let (sg, sgx) = self.sums[ch];
        let m = self.count;
        let k = w * inv / m;
        let relu = self.relu;
        for ((dv, &xv), &gv) in dx.iter_mut().zip(x).zip(g) {
            let gv = if relu && xv * scale + shift <= 0.0 {
                0.0
            } else {
                gv
            };
            let xhat = (xv - mean) * inv;
            *dv = k * (m * gv - sg - xhat * sgx);
        }
    }

    /// ∂L/∂x for one image (C planes of `hw` values).
    pub(super) fn image(&self, p: &[f32], hw: usize, x: &[f32], g: &[f32], dx: &mut [f32]) {
        let hw = hw.max(1);
        for (ch, ((d, xp), gp)) in dx
            .chunks_mut(hw)
            .zip(x.chunks(hw))
            .zip(g.chunks(hw))
            .enumerate()
        {
            self.plane(p, ch, xp, gp, d);
        }
    }
}

/// The training-mode backward pass into `out` = [dx (N·C·H·W); dweight (C); dbias (C)], for
/// parameters `p` = [weight; bias; mean; var].
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_into(
    x: &[f32],
    p: &[f32],
    g: &[f32],
    eps: f32,
    relu: bool,
    (n, c, hw): (usize, usize, usize),
    out: &mut [f32],
) {
    let sums = BackwardSums::new(x, p, g, eps, relu, (n, c, hw));
    let numel = n * c * hw;
    let (dx, dwb) = out.split_at_mut(numel);
    dx.par_chunks_mut(hw.max(1))
        .enumerate()
        .for_each(|(plane, d)| {
            let r = plane * hw..(plane + 1) * hw;
            sums.plane(p, plane % c.max(1), &x[r.clone()], &g[r], d);
        });
    let (dw, db) = sums.param_grads();
    dwb[..c].copy_from_slice(&dw);
    dwb[c..].copy_from_slice(&db);
}

/// Per-channel mean and biased variance over (N, H, W), as a (2, C) tensor; two passes in f64
/// so large batches do not lose precision.
pub struct BatchStats;

impl CustomOp1 for BatchStats {
    fn name(&self) -> &'static str {
        "pretext-batch-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "batch norm input")?;
        let (n, c, hw) = nchw(l.dims(), "batch norm")?;
        let stats = stats(x, n, c, hw);
        let mut out = Vec::with_capacity(2 * c);
        out.extend(stats.iter().map(|s| s.0));
        out.extend(stats.iter().map(|s| s.1));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// `y = (x − mean) / √(var + eps) · weight + bias`, then ReLU when `relu` is set.
pub struct BatchNorm {
    pub eps: f32,
    pub relu: bool,
}

/// Per-channel scale and shift so that the normalised value is `x · scale + shift`, and the
/// inverse standard deviation.
pub(super) fn affine(p: &[f32], c: usize, eps: f32) -> Vec<(f32, f32, f32)> {
    (0..c)
        .map(|ch| {
            let (w, b, mean, var) = (p[ch], p[c + ch], p[2 * c + ch], p[3 * c + ch]);
            let inv = 1.0 / (var + eps).sqrt();
            (w * inv, b - mean * w * inv, inv)
        })
        .collect()
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
        let (_, c, hw) = nchw(l1.dims(), "batch norm")?;
        if p.len() != 4 * c {
            bail!(
                "batch norm: parameters hold {} values, need 4 × {c}",
                p.len()
            );
        }
        let coef = affine(p, c, self.eps);
        let y = apply(x, &coef, self.relu, hw);
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
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
        let packed = x.apply_op3_no_bwd(
            p,
            &grad,
            &BatchNormBackward {
                eps: self.eps,
                relu: self.relu,
            },
        )?;
        let numel = x.elem_count();
        let dx = packed.narrow(0, 0, numel)?.reshape(x.shape())?;
        let dwb = packed.narrow(0, numel, 2 * c)?.reshape((2, c))?;
        let dp = Tensor::cat(&[&dwb, &Tensor::zeros((2, c), p.dtype(), p.device())?], 0)?;
        Ok((Some(dx), Some(dp)))
    }
}

/// The training-mode backward pass: the gradient with respect to x includes the paths through
/// the batch mean and variance, `dx = inv/M · (M·g − Σg − x̂·Σ(g·x̂)) · weight`. Returns one flat
/// tensor [dx; dweight; dbias].
pub struct BatchNormBackward {
    pub eps: f32,
    pub relu: bool,
}

impl CustomOp3 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "pretext-batch-norm-backward"
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
        let x = f32_slice(s1, l1, "batch norm input")?;
        let p = f32_slice(s2, l2, "batch norm parameters")?;
        let g = f32_slice(s3, l3, "batch norm output gradient")?;
        let (n, c, hw) = nchw(l1.dims(), "batch norm")?;
        if p.len() != 4 * c || g.len() != x.len() {
            bail!("batch norm backward: shapes do not match");
        }
        let numel = n * c * hw;
        let mut out = vec![0f32; numel + 2 * c];
        backward_into(x, p, g, self.eps, self.relu, (n, c, hw), &mut out);
        Ok((CpuStorage::F32(out), Shape::from(numel + 2 * c)))
    }
}

/// Training-mode batch norm (+ ReLU): returns the output and the batch (mean, biased variance),
/// each of shape (C,), for the running statistics.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&BatchStats)?;
    let p = Tensor::cat(&[&weight.unsqueeze(0)?, &bias.unsqueeze(0)?, &stats], 0)?;
    let y = x.apply_op2(
        &p,
        BatchNorm {
            eps: eps as f32,
            relu,
        },
    )?;
    Ok((y, stats.get(0)?, stats.get(1)?))
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
            eps: eps as f32,
            relu,
        },
    )
}
