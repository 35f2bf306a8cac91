//! 2-D convolution (NCHW, square kernel, no groups, no dilation) as candle custom ops:
//! the forward pass and both backward passes are im2col / col2im plus one matrix product per
//! image, images in parallel on rayon and the product single-threaded inside each.
//!
//! - [`geometry`]: [`ConvGeom`], the output range each kernel offset reaches, runs of images;
//! - [`im2col`]: one image to and from its column matrix;
//! - here: the per-image products (also used by [`super::fused`]), the batch loops, the ops.

mod geometry;
mod im2col;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::gemm::{MatRef, matmul};
use super::operands::{Nchw, f32_slice};
pub use geometry::ConvGeom;

/// A per-thread im2col buffer, C·K·K × Ho·Wo (none for pointwise convolutions).
pub(super) fn col_buffer(g: &ConvGeom) -> Vec<f32> {
    vec![
        0f32;
        if g.is_pointwise() {
            0
        } else {
            g.ckk() * g.hw_out()
        }
    ]
}

impl ConvGeom {
    /// One image: `yi = w · im2col(xi)`; `w` (O × C·K·K), `xi` (C, H, W), `yi` (O, Ho, Wo),
    /// `col` from [`col_buffer`].
    pub(super) fn forward_image(
        &self,
        w: &[f32],
        xi: &[f32],
        yi: &mut [f32],
        col: &mut [f32],
    ) -> Result<()> {
        let wmat = MatRef::rows(w, self.o, self.ckk());
        matmul(yi, false, wmat, self.columns(xi, col))
    }

    /// The im2col matrix (C·K·K × Ho·Wo) of one image: made in `col`, or the image itself for
    /// a pointwise convolution.
    fn columns<'a>(&self, xi: &'a [f32], col: &'a mut [f32]) -> MatRef<'a> {
        if self.is_pointwise() {
            MatRef::rows(xi, self.ckk(), self.hw_out())
        } else {
            self.im2col(xi, col);
            MatRef::rows(col, self.ckk(), self.hw_out())
        }
    }

    /// One image: `dxi += col2im(wᵀ · dyi)` (`dxi` as zeroed or partly summed by the caller).
    pub(super) fn backward_input_image(
        &self,
        w: &[f32],
        dyi: &[f32],
        dxi: &mut [f32],
        col: &mut [f32],
    ) -> Result<()> {
        let wt = MatRef::rows(w, self.o, self.ckk()).t();
        let dyi = MatRef::rows(dyi, self.o, self.hw_out());
        if self.is_pointwise() {
            return matmul(dxi, true, wt, dyi);
        }
        matmul(col, false, wt, dyi)?;
        self.col2im(col, dxi);
        Ok(())
    }

    /// One image: `dw += im2col(xi) · dyiᵀ`, with `dw` laid out (C·K·K × O) — both operands
    /// are read along their contiguous rows, which packs far faster than the (O × C·K·K)
    /// product `dy · colᵀ` for large images. [`ConvGeom::weight_grad`] turns the sums around.
    pub(super) fn backward_weight_image(
        &self,
        xi: &[f32],
        dyi: &[f32],
        dw: &mut [f32],
        col: &mut [f32],
    ) -> Result<()> {
        let dyi = MatRef::rows(dyi, self.o, self.hw_out());
        matmul(dw, true, self.columns(xi, col), dyi.t())
    }

    /// ∂L/∂w (O × C·K·K) from partial sums laid out (C·K·K × O).
    pub(super) fn weight_grad(&self, partials: &[Vec<f32>]) -> Vec<f32> {
        let ckk = self.ckk();
        let mut dw = vec![0f32; self.o * ckk];
        for p in partials {
            for (r, row) in p.chunks_exact(self.o.max(1)).enumerate() {
                for (oc, v) in row.iter().enumerate() {
                    dw[oc * ckk + r] += v;
                }
            }
        }
        dw
    }
}

/// Runs `f(col, dst_i, src_i)` for every image on rayon, `dst` and `src` cut into images of
/// `dst_image` and `src_image` values, with one [`col_buffer`] per thread.
fn each_image(
    g: &ConvGeom,
    dst: &mut [f32],
    dst_image: usize,
    src: &[f32],
    src_image: usize,
    f: impl Fn(&mut Vec<f32>, &mut [f32], &[f32]) -> Result<()> + Send + Sync,
) -> Result<()> {
    dst.par_chunks_mut(dst_image.max(1))
        .zip(src.par_chunks(src_image.max(1)))
        .try_for_each_init(|| col_buffer(g), |col, (d, s)| f(col, d, s))
}

/// `y = conv(x, w)` for a batch laid out as `g` says.
pub(super) fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Result<Vec<f32>> {
    let mut y = vec![0f32; g.n * g.out_image()];
    each_image(g, &mut y, g.out_image(), x, g.in_image(), |col, yi, xi| {
        g.forward_image(w, xi, yi, col)
    })?;
    Ok(y)
}

/// ∂L/∂x from ∂L/∂y: per image wᵀ · dy, then col2im.
pub(super) fn backward_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Result<Vec<f32>> {
    let mut dx = vec![0f32; g.n * g.in_image()];
    each_image(
        g,
        &mut dx,
        g.in_image(),
        dy,
        g.out_image(),
        |col, dxi, dyi| g.backward_input_image(w, dyi, dxi, col),
    )?;
    Ok(dx)
}

/// ∂L/∂w from the input and ∂L/∂y, summed over the batch: one partial sum per run of images,
/// then summed and transposed.
pub(super) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    let runs = g.runs();
    let partials: Vec<Vec<f32>> = (0..runs.count())
        .into_par_iter()
        .map(|run| -> Result<Vec<f32>> {
            let mut dw = vec![0f32; g.o * g.ckk()];
            let mut col = col_buffer(g);
            for i in runs.images(run) {
                let xi = &x[i * g.in_image()..(i + 1) * g.in_image()];
                let dyi = &dy[i * g.out_image()..(i + 1) * g.out_image()];
                g.backward_weight_image(xi, dyi, &mut dw, &mut col)?;
            }
            Ok(dw)
        })
        .collect::<Result<_>>()?;
    Ok(g.weight_grad(&partials))
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
    /// (N, C, H, W) of the convolution's input.
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
    /// Kernel side, K.
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
        let xd = Nchw::of(l1.dims(), "conv2d backward input")?;
        let yd = Nchw::of(l2.dims(), "conv2d backward gradient")?;
        let g = ConvGeom::new(
            l1.dims(),
            &[yd.c, xd.c, self.k, self.k],
            self.stride,
            self.pad,
        )?;
        if l2.dims() != [xd.n, yd.c, g.ho(), g.wo()] {
            bail!("conv2d backward: gradient {:?} does not match", l2.dims());
        }
        let dw = backward_weight(&g, x, dy)?;
        Ok((CpuStorage::F32(dw), Shape::from((g.o, g.c, g.k, g.k))))
    }
}

/// `conv2d(x, w)` with the kernels above; `x` and `w` are made contiguous first.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    if !x.device().same_device(w.device()) {
        bail!("conv2d: input and weight on different devices");
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Conv2d { stride, pad })
}
