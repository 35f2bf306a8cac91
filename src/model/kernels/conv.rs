//! 2-D convolution (NCHW, square kernel, no groups, no dilation) as candle custom ops:
//! the forward pass and both backward passes are im2col / col2im plus one matrix product per
//! image, images in parallel on rayon and the product single-threaded inside each.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::gemm::{MatRef, matmul};
use super::{f32_slice, same_device_contiguous};

/// Geometry of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    pub fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[n, c, h, wd], &[o, wc, k, k2]) = (x, w) else {
            bail!("conv2d: expected 4-D input and weight, got {x:?} and {w:?}");
        };
        if wc != c || k != k2 {
            bail!("conv2d: weight {w:?} does not fit input {x:?} (square kernels only)");
        }
        if stride == 0 || h + 2 * pad < k || wd + 2 * pad < k {
            bail!("conv2d: kernel {k} with stride {stride} and padding {pad} does not fit {x:?}");
        }
        Ok(Self {
            n,
            c,
            h,
            w: wd,
            o,
            k,
            stride,
            pad,
        })
    }
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Rows of the im2col matrix: C·K·K.
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Columns of the im2col matrix: output pixels of one image.
    fn hw_out(&self) -> usize {
        self.ho() * self.wo()
    }
    fn in_image(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_image(&self) -> usize {
        self.o * self.hw_out()
    }

    /// For kernel offset `kk` along one axis: the first and one-past-last output positions
    /// whose input position `o·stride + kk − pad` lies inside `0..len`.
    fn valid(&self, kk: usize, len: usize, out_len: usize) -> (usize, usize) {
        let s = self.stride;
        // o·s + kk ≥ pad  ⇔  o ≥ ceil((pad − kk) / s)
        let lo = self.pad.saturating_sub(kk).div_ceil(s);
        // o·s + kk − pad ≤ len − 1  ⇔  o ≤ (len − 1 + pad − kk) / s
        let hi = match (len + self.pad).checked_sub(kk + 1) {
            Some(v) => (v / s + 1).min(out_len),
            None => 0,
        };
        (lo.min(hi), hi)
    }

    /// Fills `col` (C·K·K × Ho·Wo, row-major) from one image `x` (C × H × W).
    fn im2col(&self, x: &[f32], col: &mut [f32]) {
        let (ho, wo, k, s) = (self.ho(), self.wo(), self.k, self.stride);
        let hw = ho * wo;
        for c in 0..self.c {
            let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..k {
                let (oy0, oy1) = self.valid(ky, self.h, ho);
                for kx in 0..k {
                    let (ox0, ox1) = self.valid(kx, self.w, wo);
                    let row = (c * k + ky) * k + kx;
                    let dst = &mut col[row * hw..(row + 1) * hw];
                    dst[..oy0 * wo].fill(0.0);
                    dst[oy1 * wo..].fill(0.0);
                    if s == 1 && wo == self.w && oy1 > oy0 {
                        // "Same" convolution: the valid rows are one shifted block of the
                        // plane; copy it at once, then clear the columns that wrapped around.
                        let shift = kx as isize - self.pad as isize;
                        let iy0 = oy0 + ky - self.pad;
                        let (d0, d1) = (oy0 * wo, oy1 * wo);
                        let s0 = iy0 * self.w;
                        let len = d1 - d0;
                        if shift >= 0 {
                            let sh = shift as usize;
                            let n = len - sh.min(len);
                            dst[d0..d0 + n].copy_from_slice(&plane[s0 + sh..s0 + sh + n]);
                            dst[d0 + n..d1].fill(0.0);
                        } else {
                            let sh = (-shift) as usize;
                            let n = len - sh.min(len);
                            dst[d0 + sh.min(len)..d1].copy_from_slice(&plane[s0..s0 + n]);
                            dst[d0..d0 + sh.min(len)].fill(0.0);
                        }
                        for oy in oy0..oy1 {
                            let r = &mut dst[oy * wo..(oy + 1) * wo];
                            r[..ox0].fill(0.0);
                            r[ox1..].fill(0.0);
                        }
                        continue;
                    }
                    for oy in oy0..oy1 {
                        let iy = oy * s + ky - self.pad;
                        let src = &plane[iy * self.w..(iy + 1) * self.w];
                        let d = &mut dst[oy * wo..(oy + 1) * wo];
                        d[..ox0].fill(0.0);
                        d[ox1..].fill(0.0);
                        let ix0 = ox0 * s + kx - self.pad;
                        if s == 1 {
                            d[ox0..ox1].copy_from_slice(&src[ix0..ix0 + (ox1 - ox0)]);
                        } else {
                            for (v, ix) in d[ox0..ox1].iter_mut().zip((ix0..).step_by(s)) {
                                *v = src[ix];
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds `col` (C·K·K × Ho·Wo) back onto one image `dx` (C × H × W), which the caller
    /// zeroed: the adjoint of `im2col`.
    fn col2im(&self, col: &[f32], dx: &mut [f32]) {
        let (ho, wo, k, s) = (self.ho(), self.wo(), self.k, self.stride);
        let hw = ho * wo;
        for c in 0..self.c {
            let plane = &mut dx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..k {
                let (oy0, oy1) = self.valid(ky, self.h, ho);
                for kx in 0..k {
                    let (ox0, ox1) = self.valid(kx, self.w, wo);
                    let row = (c * k + ky) * k + kx;
                    let src = &col[row * hw..(row + 1) * hw];
                    for oy in oy0..oy1 {
                        let iy = oy * s + ky - self.pad;
                        let d = &mut plane[iy * self.w..(iy + 1) * self.w];
                        let sr = &src[oy * wo + ox0..oy * wo + ox1];
                        let ix0 = ox0 * s + kx - self.pad;
                        if s == 1 {
                            for (v, g) in d[ix0..ix0 + sr.len()].iter_mut().zip(sr) {
                                *v += g;
                            }
                        } else {
                            for (g, ix) in sr.iter().zip((ix0..).step_by(s)) {
                                d[ix] += g;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A 1×1 convolution with stride 1 and no padding needs no im2col: the image is its own
    /// column matrix.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
}

/// A per-thread im2col buffer (none for pointwise convolutions).
fn col_buffer(g: &ConvGeom) -> Vec<f32> {
    vec![
        0f32;
        if g.is_pointwise() {
            0
        } else {
            g.ckk() * g.hw_out()
        }
    ]
}

/// `y = conv(x, w)` for a batch laid out as `g` says.
pub(super) fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Result<Vec<f32>> {
    let mut y = vec![0f32; g.n * g.out_image()];
    let wmat = MatRef::rows(w, g.o, g.ckk());
    y.par_chunks_mut(g.out_image().max(1))
        .zip(x.par_chunks(g.in_image().max(1)))
        .try_for_each_init(
            || col_buffer(g),
            |col, (yi, xi)| {
                let cols = if g.is_pointwise() {
                    MatRef::rows(xi, g.ckk(), g.hw_out())
                } else {
                    g.im2col(xi, col);
                    MatRef::rows(col, g.ckk(), g.hw_out())
                };
                matmul(yi, false, wmat, cols)
            },
        )?;
    Ok(y)
}

/// ∂L/∂x from ∂L/∂y: per image wᵀ · dy, then col2im.
pub(super) fn backward_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Result<Vec<f32>> {
    let mut dx = vec![0f32; g.n * g.in_image()];
    let wt = MatRef::rows(w, g.o, g.ckk()).t();
    dx.par_chunks_mut(g.in_image().max(1))
        .zip(dy.par_chunks(g.out_image().max(1)))
        .try_for_each_init(
            || col_buffer(g),
            |col, (dxi, dyi)| {
                let dyi = MatRef::rows(dyi, g.o, g.hw_out());
                if g.is_pointwise() {
                    return matmul(dxi, false, wt, dyi);
                }
                matmul(col, false, wt, dyi)?;
                g.col2im(col, dxi);
                Ok(())
            },
        )?;
    Ok(dx)
}

/// ∂L/∂w from the input and ∂L/∂y, summed over the batch: one partial sum per thread, each
/// (C·K·K × O) += col · dyᵀ (both operands read along their contiguous rows, which packs far
/// faster than colᵀ for large images), then summed and transposed to (O × C·K·K).
pub(super) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    let (ckk, size) = (g.ckk(), g.o * g.ckk());
    let threads = rayon::current_num_threads().max(1);
    let per = g.n.div_ceil(threads).max(1);
    let partials: Vec<Vec<f32>> = (0..g.n.div_ceil(per))
        .into_par_iter()
        .map(|chunk| -> Result<Vec<f32>> {
            let mut dw = vec![0f32; size];
            let mut col = col_buffer(g);
            for i in chunk * per..((chunk + 1) * per).min(g.n) {
                let xi = &x[i * g.in_image()..(i + 1) * g.in_image()];
                let dyi = MatRef::rows(
                    &dy[i * g.out_image()..(i + 1) * g.out_image()],
                    g.o,
                    g.hw_out(),
                );
                let cols = if g.is_pointwise() {
                    MatRef::rows(xi, ckk, g.hw_out())
                } else {
                    g.im2col(xi, &mut col);
                    MatRef::rows(&col, ckk, g.hw_out())
                };
                matmul(&mut dw, true, cols, dyi.t())?;
            }
            Ok(dw)
        })
        .collect::<Result<_>>()?;
    let mut dw = vec![0f32; size];
    for p in &partials {
        for (r, row) in p.chunks_exact(g.o.max(1)).enumerate() {
            for (oc, v) in row.iter().enumerate() {
                dw[oc * ckk + r] += v;
            }
        }
    }
    Ok(dw)
}

/// Forward: `y = conv2d(x, w)`.
pub struct Conv2d {
    pub stride: usize,
    pub pad: usize,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "pretext-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "conv2d input")?;
        let w = f32_slice(s2, l2, "conv2d weight")?;
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let y = forward(&g, x, w)?;
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.ho(), g.wo()))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The network's input images need no gradient.
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                w,
                &Conv2dBackwardInput {
                    stride: self.stride,
                    pad: self.pad,
                    input_dims: x.dims().to_vec(),
                },
            )?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(
            &grad,
            &Conv2dBackwardWeight {
                stride: self.stride,
                pad: self.pad,
                k: w.dims().get(2).copied().unwrap_or(1),
            },
        )?;
        Ok((dx, Some(dw)))
    }
}

/// ∂L/∂x from ∂L/∂y (first operand) and the weight (second operand).
pub struct Conv2dBackwardInput {
    pub stride: usize,
    pub pad: usize,
    pub input_dims: Vec<usize>,
}

impl CustomOp2 for Conv2dBackwardInput {
    fn name(&self) -> &'static str {
        "pretext-conv2d-backward-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dy = f32_slice(s1, l1, "conv2d output gradient")?;
        let w = f32_slice(s2, l2, "conv2d weight")?;
        let g = ConvGeom::new(&self.input_dims, l2.dims(), self.stride, self.pad)?;
        if l1.dims() != [g.n, g.o, g.ho(), g.wo()] {
            bail!(
                "conv2d backward: gradient {:?} does not match output ({}, {}, {}, {})",
                l1.dims(),
                g.n,
                g.o,
                g.ho(),
                g.wo()
            );
        }
        let dx = backward_input(&g, dy, w)?;
        Ok((CpuStorage::F32(dx), Shape::from(self.input_dims.as_slice())))
    }
}

/// ∂L/∂w from the input (first operand) and ∂L/∂y (second operand).
pub struct Conv2dBackwardWeight {
    pub stride: usize,
    pub pad: usize,
    pub k: usize,
}

impl CustomOp2 for Conv2dBackwardWeight {
    fn name(&self) -> &'static str {
        "pretext-conv2d-backward-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "conv2d input")?;
        let dy = f32_slice(s2, l2, "conv2d output gradient")?;
        let (&[n, c, ..], &[_, o, ..]) = (l1.dims(), l2.dims()) else {
            bail!("conv2d backward: expected 4-D tensors");
        };
        let g = ConvGeom::new(l1.dims(), &[o, c, self.k, self.k], self.stride, self.pad)?;
        if l2.dims() != [n, o, g.ho(), g.wo()] {
            bail!("conv2d backward: gradient {:?} does not match", l2.dims());
        }
        let dw = backward_weight(&g, x, dy)?;
        Ok((CpuStorage::F32(dw), Shape::from((g.o, g.c, g.k, g.k))))
    }
}

/// `conv2d(x, w)` with the kernels above; `x` and `w` are made contiguous first.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (x, w) = same_device_contiguous(x, w)?;
    x.apply_op2(&w, Conv2d { stride, pad })
}
