//! Element-wise and layout kernels: fused residual add + ReLU, bias + ReLU, nearest ×2
//! upsampling, each with its backward pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::operands::{Nchw, Planes, f32_slice};
use super::reduce::channel_sum;
use super::simd;

/// `relu(a + b)` in one pass (the end of a residual block); its backward passes the gradient
/// where the output is positive to both operands.
pub struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "pretext-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = f32_slice(s1, l1, "residual")?;
        let b = f32_slice(s2, l2, "shortcut")?;
        if l1.dims() != l2.dims() {
            bail!(
                "add-relu: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            );
        }
        let y = add_relu_values(a, b);
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?.apply_op2_no_bwd(res, &ReluMask)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `grad · [out > 0]`: the gradient through a ReLU given its output.
pub struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "pretext-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s1, l1, "gradient")?;
        let out = f32_slice(s2, l2, "relu output")?;
        if g.len() != out.len() {
            bail!("relu mask: sizes {} and {} differ", g.len(), out.len());
        }
        let d = relu_mask_values(g, out);
        Ok((CpuStorage::F32(d), Shape::from(l1.dims())))
    }
}

/// Elements per parallel work item in the element-wise kernels.
const CHUNK: usize = 1 << 14;

/// `relu(a + b)` element-wise (same lengths).
pub(super) fn add_relu_values(a: &[f32], b: &[f32]) -> Vec<f32> {
    simd::collect_chunks(
        a.len(),
        CHUNK,
        #[inline(always)]
        |i| {
            simd::chunk(a, i, CHUNK)
                .iter()
                .zip(simd::chunk(b, i, CHUNK))
                .map(|(x, z)| (x + z).max(0.0))
        },
    )
}

/// `g · [out > 0]` element-wise (same lengths).
pub(super) fn relu_mask_values(g: &[f32], out: &[f32]) -> Vec<f32> {
    simd::collect_chunks(
        g.len(),
        CHUNK,
        #[inline(always)]
        |i| {
            simd::chunk(g, i, CHUNK)
                .iter()
                .zip(simd::chunk(out, i, CHUNK))
                .map(|(g, o)| if *o > 0.0 { *g } else { 0.0 })
        },
    )
}

/// `relu(a + b)` for same-shaped tensors.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// `x + b` per channel, then ReLU when `relu` is set (the decoder's convolutions).
pub struct BiasAct {
    /// ReLU after the bias.
    pub relu: bool,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "pretext-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "bias input")?;
        let b = f32_slice(s2, l2, "bias")?;
        let Planes { c, hw, .. } = Planes::of(l1.dims(), "bias")?;
        if b.len() != c {
            bail!("bias: {} values for {c} channels", b.len());
        }
        let mut y = vec![0f32; x.len()];
        let relu = self.relu;
        y.par_chunks_mut(hw.max(1))
            .zip(x.par_chunks(hw.max(1)))
            .enumerate()
            .for_each(|(plane, (yo, xi))| {
                let bias = b[plane % c];
                for (o, v) in yo.iter_mut().zip(xi) {
                    let t = v + bias;
                    *o = if relu { t.max(0.0) } else { t };
                }
            });
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, db) = bias_act_backward(grad, res, self.relu)?;
        Ok((Some(g), Some(db)))
    }
}

/// The backward pass of a per-channel bias (then ReLU when `relu` is set) whose output was
/// `out` (N, C, H, W): the gradient through the ReLU, same shape, and the bias's gradient, its
/// per-channel sum, (C,). Shared by [`BiasAct`] and the sub-pixel interleave.
///
/// # Errors
/// When `grad` and `out` differ in size or are not f32 on the CPU.
pub(super) fn bias_act_backward(
    grad: &Tensor,
    out: &Tensor,
    relu: bool,
) -> Result<(Tensor, Tensor)> {
    let g = grad.contiguous()?;
    let g = if relu {
        g.apply_op2_no_bwd(out, &ReluMask)?
    } else {
        g
    };
    let db = g.apply_op1_no_bwd(&ChannelSum)?;
    Ok((g, db))
}

/// Per-channel sum over (N, H, W): (N, C, H, W) → (C,).
pub struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "pretext-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "channel sum input")?;
        let planes = Planes::of(l.dims(), "channel sum")?;
        let sums: Vec<f32> = (0..planes.c)
            .into_par_iter()
            .map(|ch| channel_sum(x, planes, ch, |v| v) as f32)
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(planes.c)))
    }
}

/// Nearest-neighbour ×2 upsampling, (N, C, H, W) → (N, C, 2H, 2W); its backward sums each
/// 2×2 block ([`Downsum2x`]).
pub struct Upsample2x;

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "pretext-upsample2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "upsample input")?;
        let Nchw { n, c, h, w } = Nchw::of(l.dims(), "upsample")?;
        let mut y = vec![0f32; x.len() * 4];
        y.par_chunks_mut((4 * h * w).max(1))
            .zip(x.par_chunks((h * w).max(1)))
            .for_each(|(yo, xi)| {
                for (r, row) in xi.chunks_exact(w.max(1)).enumerate() {
                    let (top, bottom) = yo[4 * r * w..4 * (r + 1) * w].split_at_mut(2 * w);
                    for (pair, v) in top.chunks_exact_mut(2).zip(row) {
                        pair[0] = *v;
                        pair[1] = *v;
                    }
                    bottom.copy_from_slice(top);
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((n, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Downsum2x)?))
    }
}

/// Sum of each 2×2 block, (N, C, 2H, 2W) → (N, C, H, W): the adjoint of [`Upsample2x`].
pub struct Downsum2x;

impl CustomOp1 for Downsum2x {
    fn name(&self) -> &'static str {
        "pretext-downsum2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, "upsample gradient")?;
        let Nchw { n, c, h: h2, w: w2 } = Nchw::of(l.dims(), "downsum")?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            bail!("downsum: odd size {h2}×{w2}");
        }
        let (h, w) = (h2 / 2, w2 / 2);
        let mut d = vec![0f32; n * c * h * w];
        d.par_chunks_mut((h * w).max(1))
            .zip(g.par_chunks((h2 * w2).max(1)))
            .for_each(|(dp, gp)| {
                for (r, drow) in dp.chunks_exact_mut(w.max(1)).enumerate() {
                    let top = &gp[2 * r * w2..(2 * r + 1) * w2];
                    let bottom = &gp[(2 * r + 1) * w2..(2 * r + 2) * w2];
                    for ((o, t), b) in drow
                        .iter_mut()
                        .zip(top.chunks_exact(2))
                        .zip(bottom.chunks_exact(2))
                    {
                        *o = t[0] + t[1] + b[0] + b[1];
                    }
                }
            });
        Ok((CpuStorage::F32(d), Shape::from((n, c, h, w))))
    }
}

/// `x + b` per channel (then ReLU) for (N, C, H, W) `x` and (C,) `b`.
pub fn bias_act(x: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&b.contiguous()?, BiasAct { relu })
}

/// Nearest-neighbour ×2 upsampling.
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Upsample2x)
}
