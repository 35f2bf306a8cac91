//! Batch norm's training-mode backward pass (+ the fused ReLU's): a first pass for the
//! per-channel sums Σg and Σg·x̂ (over the batch, or image by image as a caller makes the
//! gradient), then ∂L/∂x plane by plane.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::super::operands::{Planes, f32_slice};
use super::super::reduce::LANES;
use super::super::simd;
use super::{AffineGrads, Coef, NormAct, NormParams};

/// Σg and Σg·(x − mean) over some values of one channel, with g zeroed where the fused
/// ReLU's output is not positive; f64 so that totals over many planes keep their precision.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(in crate::model::kernels) struct GradSums {
    /// Σg.
    pub(in crate::model::kernels) g: f64,
    /// Σg·(x − mean).
    pub(in crate::model::kernels) gx: f64,
}

impl std::ops::AddAssign for GradSums {
    fn add_assign(&mut self, other: Self) {
        self.g += other.g;
        self.gx += other.gx;
    }
}

/// [`GradSums`] of one plane: `x` the values batch norm normalised, `g` the gradient of its
/// output, `k` the channel's coefficients, `mean` its mean. Sums in [`LANES`] f32 partial sums.
fn masked_sums(x: &[f32], g: &[f32], relu: bool, k: Coef, mean: f32) -> GradSums {
    simd::wide(
        #[inline(always)]
        || masked_sums_in(x, g, relu, k, mean),
    )
}

/// [`masked_sums`], inlined into its wide form.
#[inline(always)]
fn masked_sums_in(x: &[f32], g: &[f32], relu: bool, k: Coef, mean: f32) -> GradSums {
    let Coef { scale, shift, .. } = k;
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
    GradSums {
        g: f64::from(a.iter().sum::<f32>() + ta),
        gx: f64::from(b.iter().sum::<f32>() + tb),
    }
}

/// The first backward pass of one batch norm over a batch `x` (the values it normalised,
/// laid out as `planes`): its per-channel [`GradSums`], over the whole batch at once
/// ([`FirstPass::batch_totals`]) or image by image ([`FirstPass::add_image`]) by a caller that
/// has each image's gradient at hand anyway.
pub(in crate::model::kernels) struct FirstPass<'a> {
    x: &'a [f32],
    params: NormParams<'a>,
    coef: Vec<Coef>,
    relu: bool,
    planes: Planes,
}

impl<'a> FirstPass<'a> {
    pub(in crate::model::kernels) fn new(
        x: &'a [f32],
        params: NormParams<'a>,
        act: NormAct,
        planes: Planes,
    ) -> Self {
        Self {
            x,
            coef: params.coef(act.eps),
            params,
            relu: act.relu,
            planes,
        }
    }

    /// Channels, C.
    pub(in crate::model::kernels) fn channels(&self) -> usize {
        self.planes.c
    }

    /// Values of one image, C·H·W.
    pub(in crate::model::kernels) fn image_len(&self) -> usize {
        self.planes.c * self.planes.hw
    }

    /// Adds image `i`'s sums per channel to `acc` (C entries), `g` the gradient of that
    /// image's output (C·H·W values).
    pub(in crate::model::kernels) fn add_image(&self, i: usize, g: &[f32], acc: &mut [GradSums]) {
        let hw = self.planes.hw.max(1);
        let x = &self.x[i * self.image_len()..(i + 1) * self.image_len()];
        for (ch, ((a, xp), gp)) in acc
            .iter_mut()
            .zip(x.chunks(hw))
            .zip(g.chunks(hw))
            .enumerate()
        {
            *a += masked_sums(xp, gp, self.relu, self.coef[ch], self.params.mean[ch]);
        }
    }

    /// The sums of every channel over the whole batch, `g` the gradient of the batch's
    /// output: channels in parallel, images in order.
    fn batch_totals(&self, g: &[f32]) -> Vec<GradSums> {
        let p = self.planes;
        (0..p.c)
            .into_par_iter()
            .map(|ch| {
                let mut total = GradSums::default();
                for i in 0..p.n {
                    let r = p.plane(i, ch);
                    let (x, g) = (&self.x[r.clone()], &g[r]);
                    total += masked_sums(x, g, self.relu, self.coef[ch], self.params.mean[ch]);
                }
                total
            })
            .collect()
    }

    /// The finished first pass from the totals over all images.
    pub(in crate::model::kernels) fn finish(self, totals: &[GradSums]) -> BackwardSums {
        let (weight, bias) = totals
            .iter()
            .zip(&self.coef)
            .map(|(t, k)| ((t.gx * f64::from(k.inv_std)) as f32, t.g as f32))
            .unzip();
        BackwardSums {
            coef: self.coef,
            grads: AffineGrads { weight, bias },
            relu: self.relu,
            count: self.planes.per_channel() as f32,
        }
    }
}

/// What the training-mode backward pass needs per channel after its first pass: the affine
/// coefficients and the sums Σg·x̂ and Σg (g masked by the fused ReLU), which are also the
/// gradients of the weight and the bias.
pub(in crate::model::kernels) struct BackwardSums {
    coef: Vec<Coef>,
    /// Σg·x̂ (∂L/∂weight) and Σg (∂L/∂bias), C values each.
    grads: AffineGrads,
    relu: bool,
    /// Values per channel in the batch, N·H·W.
    count: f32,
}

impl BackwardSums {
    /// The first pass over (x, g) of a batch laid out as `planes`, for parameters `params`.
    pub(in crate::model::kernels) fn new(
        x: &[f32],
        params: NormParams<'_>,
        g: &[f32],
        act: NormAct,
        planes: Planes,
    ) -> Self {
        let pass = FirstPass::new(x, params, act, planes);
        let totals = pass.batch_totals(g);
        pass.finish(&totals)
    }

    /// ∂L/∂weight and ∂L/∂bias, C values each.
    pub(in crate::model::kernels) fn into_grads(self) -> AffineGrads {
        self.grads
    }

    /// ∂L/∂x for one channel's plane of one image; `params` as for [`BackwardSums::new`].
    #[inline(always)]
    fn plane(&self, params: &NormParams<'_>, ch: usize, x: &[f32], g: &[f32], dx: &mut [f32]) {
        let Coef {
            scale,
            shift,
            inv_std: inv,
        } = self.coef[ch];
        let (w, mean) = (params.affine.weight[ch], params.mean[ch]);
        let (sg, sgx) = (self.grads.bias[ch], self.grads.weight[ch]);
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
    pub(in crate::model::kernels) fn image(
        &self,
        params: &NormParams<'_>,
        hw: usize,
        x: &[f32],
        g: &[f32],
        dx: &mut [f32],
    ) {
        let hw = hw.max(1);
        simd::wide(
            #[inline(always)]
            || {
                for (ch, ((d, xp), gp)) in dx
                    .chunks_mut(hw)
                    .zip(x.chunks(hw))
                    .zip(g.chunks(hw))
                    .enumerate()
                {
                    self.plane(params, ch, xp, gp, d);
                }
            },
        );
    }
}

/// The training-mode backward pass into `out` = [dx (N·C·H·W); dweight (C); dbias (C)] for a
/// batch `x` laid out as `planes`, its output's gradient `g` and parameters `params`.
fn backward_into(
    x: &[f32],
    params: NormParams<'_>,
    g: &[f32],
    act: NormAct,
    planes: Planes,
    out: &mut [f32],
) {
    let sums = BackwardSums::new(x, params, g, act, planes);
    let Planes { c, hw, .. } = planes;
    let (dx, dwb) = out.split_at_mut(planes.numel());
    dx.par_chunks_mut(hw.max(1))
        .enumerate()
        .for_each(|(plane, d)| {
            let r = plane * hw..(plane + 1) * hw;
            let (xp, gp) = (&x[r.clone()], &g[r]);
            simd::wide(
                #[inline(always)]
                || sums.plane(&params, plane % c.max(1), xp, gp, d),
            );
        });
    let grads = sums.into_grads();
    dwb[..c].copy_from_slice(&grads.weight);
    dwb[c..].copy_from_slice(&grads.bias);
}

/// The training-mode backward pass: the gradient with respect to x includes the paths through
/// the batch mean and variance, `dx = inv/M · (M·g − Σg − x̂·Σ(g·x̂)) · weight`. Operands: x,
/// the packed parameters [weight; bias; mean; var] (4, C), ∂L/∂y. Returns one flat tensor
/// [dx; dweight; dbias].
pub struct BatchNormBackward {
    pub(super) act: NormAct,
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
        let planes = Planes::of(l1.dims(), "batch norm")?;
        let params = NormParams::unpack(p, planes.c, "batch norm backward")?;
        if g.len() != x.len() {
            bail!("batch norm backward: the gradient does not match the input");
        }
        let len = planes.numel() + 2 * planes.c;
        let mut out = vec![0f32; len];
        backward_into(x, params, g, self.act, planes, &mut out);
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::backward(s1, l1, s2, l2, s3, l3, self.act)
    }
}
