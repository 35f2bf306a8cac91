//! Nearest ×2 upsampling followed by a 3×3 convolution (the decoders' `c1` and `c2`), computed
//! in sub-pixel form on the small map.
//!
//! Each of the four output phases (a, b) ∈ {0, 1}² of the upsampled map — output pixel
//! (2i + a, 2j + b) — sees only a 2×2 neighbourhood of the small map: rows i − 1 + a and i + a,
//! columns j − 1 + b and j + b. The 3×3 kernel's rows fold onto those two rows as
//! `R₀ = [[1, 0, 0], [0, 1, 1]]` (phase a = 0: the top row alone, then the middle and bottom
//! rows summed) and `R₁ = [[1, 1, 0], [0, 0, 1]]`, its columns likewise, so the phase's kernel
//! is `R_a · W · R_bᵀ` (2×2). One convolution of the small (N, C, H, W) map with all four
//! phases' kernels stacked — (4·O, C, 2, 2), padding 1 — gives an (N, 4·O, H + 1, W + 1) map
//! in which phase (a, b)'s output pixel (i, j) sits at (i + a, j + b) of channel block 2a + b;
//! [`SubpixelBiasAct`] crops and interleaves the phases back into (N, O, 2H, 2W) in one pass,
//! with the bias and ReLU. 16·O·C·(H + 1)·(W + 1) multiplications instead of 36·O·C·H·W: 0.56 of
//! them on 8×8 maps, 0.50 on 16×16, tending to 4/9. This is the sub-pixel convolution
//! equivalence (Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an
//! Efficient Sub-Pixel Convolutional Neural Network"), exact for nearest upsampling: the
//! result is the upsample-then-convolve composition up to rounding, with the same weights, so
//! checkpoints keep PyTorch's (O, C, 3, 3) layout.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::operands::{Nchw, f32_slice};
use super::pointwise::bias_act_backward;

/// The folding of a 3×3 kernel's taps onto each phase's 2×2 taps: (9, 16), row `3·ky + kx`,
/// column `4·(2a + b) + 2·ty + tx`, the entry `R_a[ty][ky] · R_b[tx][kx]`.
fn fold_matrix() -> Vec<f32> {
    const R: [[[f32; 3]; 2]; 2] = [[[1., 0., 0.], [0., 1., 1.]], [[1., 1., 0.], [0., 0., 1.]]];
    let mut f = vec![0f32; 9 * 16];
    for (at, v) in f.iter_mut().enumerate() {
        let (tap3, col) = (at / 16, at % 16);
        let (ky, kx) = (tap3 / 3, tap3 % 3);
        let (phase, tap2) = (col / 4, col % 4);
        let (a, b, ty, tx) = (phase / 2, phase % 2, tap2 / 2, tap2 % 2);
        *v = R[a][ty][ky] * R[b][tx][kx];
    }
    f
}

/// The four phases' 2×2 kernels of a 3×3 kernel `w` (O, C, 3, 3), stacked phase-major:
/// (4·O, C, 2, 2), phase (a, b)'s kernels at channels (2a + b)·O … (2a + b + 1)·O. Built from
/// candle's matmul and reshapes, so the gradient flows back to `w`; the weights are small
/// (O·C·9 values), so this costs next to nothing per step.
///
/// # Errors
/// When `w` is not (O, C, 3, 3).
pub fn fold_weight(w: &Tensor) -> Result<Tensor> {
    let (o, c, kh, kw) = w.dims4()?;
    if (kh, kw) != (3, 3) {
        bail!("sub-pixel fold: expected a 3×3 kernel, got {kh}×{kw}");
    }
    let f = Tensor::from_vec(fold_matrix(), (9, 16), w.device())?.to_dtype(w.dtype())?;
    w.reshape((o * c, 9))?
        .matmul(&f)?
        .reshape((o, c, 4, 4))?
        .permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((4 * o, c, 2, 2))
}

/// The sizes of a phase-stacked map (N, 4·O, H + 1, W + 1): (N, O, H, W) of the small map.
fn phases_of(dims: &[usize], what: &str) -> Result<Nchw> {
    let Nchw { n, c, h, w } = Nchw::of(dims, what)?;
    if c % 4 != 0 || h < 2 || w < 2 {
        bail!("{what}: expected (N, 4·O, H + 1, W + 1) with H, W ≥ 1, got {dims:?}");
    }
    Ok(Nchw {
        n,
        c: c / 4,
        h: h - 1,
        w: w - 1,
    })
}

/// The phases of `z` (N, 4·O, H + 1, W + 1) interleaved into (N, O, 2H, 2W), plus a per-channel
/// bias `b` (O,), then ReLU when `relu` is set: `y[n, o, 2i + a, 2j + b] = act(z[n, (2a + b)·O
/// + o, i + a, j + b] + bias[o])`. Its backward pass scatters the (masked) gradient back to
/// the phases ([`SubpixelScatter`]) and sums it per channel for the bias.
pub struct SubpixelBiasAct {
    /// ReLU after the bias.
    pub relu: bool,
}

impl CustomOp2 for SubpixelBiasAct {
    fn name(&self) -> &'static str {
        "pretext-subpixel-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = f32_slice(s1, l1, "sub-pixel input")?;
        let bias = f32_slice(s2, l2, "sub-pixel bias")?;
        let Nchw { n, c: o, h, w } = phases_of(l1.dims(), "sub-pixel interleave")?;
        if bias.len() != o {
            bail!(
                "sub-pixel interleave: {} bias values for {o} channels",
                bias.len()
            );
        }
        let (zh, zw) = (h + 1, w + 1);
        let zplane = zh * zw;
        let yplane = 4 * h * w;
        let relu = self.relu;
        let mut y = vec![0f32; n * o * yplane];
        y.par_chunks_mut((o * yplane).max(1))
            .zip(z.par_chunks((4 * o * zplane).max(1)))
            .for_each(|(yi, zi)| {
                for (ch, yp) in yi.chunks_exact_mut(yplane.max(1)).enumerate() {
                    let bch = bias[ch];
                    for (r, yrow) in yp.chunks_exact_mut((2 * w).max(1)).enumerate() {
                        let (i, a) = (r / 2, r % 2);
                        for b in 0..2 {
                            let start = ((2 * a + b) * o + ch) * zplane + (i + a) * zw + b;
                            let zrow = &zi[start..start + w];
                            for (dst, v) in yrow[b..].iter_mut().step_by(2).zip(zrow) {
                                let t = v + bch;
                                *dst = if relu { t.max(0.0) } else { t };
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((n, o, 2 * h, 2 * w))))
    }

    fn bwd(
        &self,
        _z: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, db) = bias_act_backward(grad, res, self.relu)?;
        let dz = g.apply_op1_no_bwd(&SubpixelScatter)?;
        Ok((Some(dz), Some(db)))
    }
}

/// The adjoint of [`SubpixelBiasAct`]'s interleave: (N, O, 2H, 2W) → (N, 4·O, H + 1, W + 1),
/// each value back at its phase's place, zeros where no output pixel read.
pub struct SubpixelScatter;

impl CustomOp1 for SubpixelScatter {
    fn name(&self) -> &'static str {
        "pretext-subpixel-scatter"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, "sub-pixel gradient")?;
        let Nchw {
            n,
            c: o,
            h: h2,
            w: w2,
        } = Nchw::of(l.dims(), "sub-pixel scatter")?;
        if h2 % 2 != 0 || w2 % 2 != 0 || h2 == 0 || w2 == 0 {
            bail!("sub-pixel scatter: expected an even size, got {h2}×{w2}");
        }
        let (h, w) = (h2 / 2, w2 / 2);
        let (zh, zw) = (h + 1, w + 1);
        let zplane = zh * zw;
        let yplane = h2 * w2;
        let mut dz = vec![0f32; n * 4 * o * zplane];
        dz.par_chunks_mut((4 * o * zplane).max(1))
            .zip(g.par_chunks((o * yplane).max(1)))
            .for_each(|(di, gi)| {
                for (ch, gp) in gi.chunks_exact(yplane).enumerate() {
                    for (r, grow) in gp.chunks_exact(w2).enumerate() {
                        let (i, a) = (r / 2, r % 2);
                        for b in 0..2 {
                            let start = ((2 * a + b) * o + ch) * zplane + (i + a) * zw + b;
                            let drow = &mut di[start..start + w];
                            for (dst, v) in drow.iter_mut().zip(grow[b..].iter().step_by(2)) {
                                *dst = *v;
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(dz), Shape::from((n, 4 * o, zh, zw))))
    }
}

/// `act(conv3×3(upsample2x(x), w) + b)` for `x` (N, C, H, W), `w` (O, C, 3, 3) with padding 1
/// and `b` (O,): (N, O, 2H, 2W), ReLU when `relu` is set. Computed in sub-pixel form (see the
/// module's documentation): one 2×2 convolution of the small map, then one interleave.
///
/// # Errors
/// When the shapes do not fit, or a tensor is not f32 on the CPU.
pub fn upsample_conv3x3_bias_act(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    let z = super::conv::conv2d(x, &fold_weight(w)?, 1, 1)?;
    z.apply_op2(&b.contiguous()?, SubpixelBiasAct { relu })
}
