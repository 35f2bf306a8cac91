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
    pub(super) fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Columns of the im2col matrix: output pixels of one image.
    pub(super) fn hw_out(&self) -> usize {
        self.ho() * self.wo()
    }
    pub(super) fn in_image(&self) -> usize {
        self.c * self.h * self.w
    }
    pub(super) fn out_image(&self) -> usize {
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
        if self.stride > 1 {
            return self.im2col_strided(x, col);
        }
        let (ho, wo, k) = (self.ho(), self.wo(), self.k);
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
                    if wo == self.w && oy1 > oy0 {
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
                        // Columns outside ox0..ox1 (one per side for a 3×3 kernel) read across
                        // a row edge: clear them, column by column down the block.
                        for j in (0..ox0).chain(ox1..wo) {
                            for v in dst[d0 + j..d1].iter_mut().step_by(wo) {
                                *v = 0.0;
                            }
                        }
                        continue;
                    }
                    for oy in oy0..oy1 {
                        let iy = oy + ky - self.pad;
                        let src = &plane[iy * self.w..(iy + 1) * self.w];
                        let d = &mut dst[oy * wo..(oy + 1) * wo];
                        d[..ox0].fill(0.0);
                        d[ox1..].fill(0.0);
                        let ix0 = ox0 + kx - self.pad;
                        d[ox0..ox1].copy_from_slice(&src[ix0..ix0 + (ox1 - ox0)]);
                    }
                }
            }
        }
    }

    /// Adds `col` (C·K·K × Ho·Wo) back onto one image `dx` (C × H × W), which the caller
    /// zeroed: the adjoint of `im2col`. Entries of `col` that belong to no input pixel may be
    /// overwritten.
    fn col2im(&self, col: &mut [f32], dx: &mut [f32]) {
        if self.stride > 1 {
            return self.col2im_strided(col, dx);
        }
        let (ho, wo, k) = (self.ho(), self.wo(), self.k);
        let hw = ho * wo;
        for c in 0..self.c {
            let plane = &mut dx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..k {
                let (oy0, oy1) = self.valid(ky, self.h, ho);
                for kx in 0..k {
                    let (ox0, ox1) = self.valid(kx, self.w, wo);
                    let row = (c * k + ky) * k + kx;
                    let src = &mut col[row * hw..(row + 1) * hw];
                    if wo == self.w && oy1 > oy0 {
                        // "Same" convolution: the valid rows map onto one shifted block of
                        // the plane. Clear the columns that wrapped around a row edge (they
                        // belong to no input pixel), then add the block at once.
                        let (d0, d1) = (oy0 * wo, oy1 * wo);
                        for j in (0..ox0).chain(ox1..wo) {
                            for v in src[d0 + j..d1].iter_mut().step_by(wo) {
                                *v = 0.0;
                            }
                        }
                        // Column d0 + j lands on plane[s0 + j]; the block's first or last
                        // value may fall just outside the plane, and it is a cleared one.
                        let s0 = ((oy0 + ky - self.pad) * self.w + kx) as isize - self.pad as isize;
                        let skip = (-s0).max(0) as usize;
                        let p0 = (s0 + skip as isize) as usize;
                        let len = (d1 - d0 - skip).min(plane.len().saturating_sub(p0));
                        for (v, g) in plane[p0..p0 + len].iter_mut().zip(&src[d0 + skip..]) {
                            *v += g;
                        }
                        continue;
                    }
                    let src = &*src;
                    for oy in oy0..oy1 {
                        let iy = oy + ky - self.pad;
                        let d = &mut plane[iy * self.w..(iy + 1) * self.w];
                        let sr = &src[oy * wo + ox0..oy * wo + ox1];
                        let ix0 = ox0 + kx - self.pad;
                        for (v, g) in d[ix0..ix0 + sr.len()].iter_mut().zip(sr) {
                            *v += g;
                        }
                    }
                }
            }
        }
    }

    /// For strided convolutions: per kernel column kx, the valid outputs `ox0..ox1` and where
    /// they read in the phases of an input row: phase `r` holds row[r], row[r + s], …, and
    /// output ox reads phase r at index j0 + (ox − ox0).
    fn phase_reads(&self) -> Vec<(usize, usize, usize, usize)> {
        let s = self.stride;
        (0..self.k)
            .map(|kx| {
                let (ox0, ox1) = self.valid(kx, self.w, self.wo());
                let ix0 = (ox0 * s + kx).saturating_sub(self.pad);
                (ox0, ox1, ix0 % s, ix0 / s)
            })
            .collect()
    }

    /// [`ConvGeom::im2col`] for stride > 1: each input row is split once into its `s` phases,
    /// after which every kernel column copies one contiguous run of a phase (instead of a
    /// strided gather per kernel column).
    fn im2col_strided(&self, x: &[f32], col: &mut [f32]) {
        let (ho, wo, k, s) = (self.ho(), self.wo(), self.k, self.stride);
        let hw = ho * wo;
        let plen = self.w.div_ceil(s);
        let mut phases = vec![0f32; s * plen];
        let reads = self.phase_reads();
        for c in 0..self.c {
            let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..k {
                let (oy0, oy1) = self.valid(ky, self.h, ho);
                let rows = (c * k + ky) * k..(c * k + ky + 1) * k;
                for row in rows.clone() {
                    let dst = &mut col[row * hw..(row + 1) * hw];
                    dst[..oy0 * wo].fill(0.0);
                    dst[oy1 * wo..].fill(0.0);
                }
                for oy in oy0..oy1 {
                    let iy = oy * s + ky - self.pad;
                    let src = &plane[iy * self.w..(iy + 1) * self.w];
                    split_phases(src, s, plen, &mut phases);
                    for (row, &(ox0, ox1, r, j0)) in rows.clone().zip(&reads) {
                        let d = &mut col[row * hw + oy * wo..row * hw + (oy + 1) * wo];
                        d[..ox0].fill(0.0);
                        d[ox1..].fill(0.0);
                        let from = r * plen + j0;
                        d[ox0..ox1].copy_from_slice(&phases[from..from + (ox1 - ox0)]);
                    }
                }
            }
        }
    }

    /// [`ConvGeom::col2im`] for stride > 1, the adjoint of [`ConvGeom::im2col_strided`]: the
    /// kernel columns are summed into the phases of an input row, which are then added back
    /// into the row once.
    fn col2im_strided(&self, col: &[f32], dx: &mut [f32]) {
        let (ho, wo, k, s) = (self.ho(), self.wo(), self.k, self.stride);
        let hw = ho * wo;
        let plen = self.w.div_ceil(s);
        let mut phases = vec![0f32; s * plen];
        let reads = self.phase_reads();
        for c in 0..self.c {
            let plane = &mut dx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..k {
                let (oy0, oy1) = self.valid(ky, self.h, ho);
                let rows = (c * k + ky) * k..(c * k + ky + 1) * k;
                for oy in oy0..oy1 {
                    phases.fill(0.0);
                    for (row, &(ox0, ox1, r, j0)) in rows.clone().zip(&reads) {
                        let g = &col[row * hw + oy * wo + ox0..row * hw + oy * wo + ox1];
                        let from = r * plen + j0;
                        for (p, v) in phases[from..from + g.len()].iter_mut().zip(g) {
                            *p += v;
                        }
                    }
                    let iy = oy * s + ky - self.pad;
                    let dst = &mut plane[iy * self.w..(iy + 1) * self.w];
                    add_phases(&phases, s, plen, dst);
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

/// `phases[r·plen + j] = row[j·s + r]`.
fn split_phases(row: &[f32], s: usize, plen: usize, phases: &mut [f32]) {
    if s == 2 {
        let (even, odd) = phases.split_at_mut(plen);
        let pairs = row.chunks_exact(2);
        if let [last] = pairs.remainder() {
            even[row.len() / 2] = *last;
        }
        for ((e, o), p) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
            *e = p[0];
            *o = p[1];
        }
        return;
    }
    for (j, v) in row.iter().enumerate() {
        phases[(j % s) * plen + j / s] = *v;
    }
}

/// `row[j·s + r] += phases[r·plen + j]`, the adjoint of [`split_phases`].
fn add_phases(phases: &[f32], s: usize, plen: usize, row: &mut [f32]) {
    if s == 2 {
        let (even, odd) = phases.split_at(plen);
        let n = row.len();
        let mut pairs = row.chunks_exact_mut(2);
        for ((p, e), o) in (&mut pairs).zip(even).zip(odd) {
            p[0] += e;
            p[1] += o;
        }
        if let [last] = pairs.into_remainder() {
            *last += even[n / 2];
        }
        return;
    }
    for (j, v) in row.iter_mut().enumerate() {
        *v += phases[(j % s) * plen + j / s];
    }
}

/// A per-thread im2col buffer (none for pointwise convolutions).
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
    /// One image: `yi = w · im2col(xi)`.
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

    /// Images per run, for loops that keep per-run partial sums over contiguous runs of
    /// images: a few runs per thread, so a thread slowed by other work does not hold the
    /// others up.
    pub(super) fn per_run(&self) -> usize {
        self.n
            .div_ceil(4 * rayon::current_num_threads().max(1))
            .max(1)
    }

    /// How many runs of [`ConvGeom::per_run`] images cover the batch.
    pub(super) fn image_runs(&self) -> usize {
        self.n.div_ceil(self.per_run()).max(1)
    }
}

/// `y = conv(x, w)` for a batch laid out as `g` says.
pub(super) fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Result<Vec<f32>> {
    let mut y = vec![0f32; g.n * g.out_image()];
    y.par_chunks_mut(g.out_image().max(1))
        .zip(x.par_chunks(g.in_image().max(1)))
        .try_for_each_init(
            || col_buffer(g),
            |col, (yi, xi)| g.forward_image(w, xi, yi, col),
        )?;
    Ok(y)
}

/// ∂L/∂x from ∂L/∂y: per image wᵀ · dy, then col2im.
pub(super) fn backward_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Result<Vec<f32>> {
    let mut dx = vec![0f32; g.n * g.in_image()];
    dx.par_chunks_mut(g.in_image().max(1))
        .zip(dy.par_chunks(g.out_image().max(1)))
        .try_for_each_init(
            || col_buffer(g),
            |col, (dxi, dyi)| g.backward_input_image(w, dyi, dxi, col),
        )?;
    Ok(dx)
}

/// ∂L/∂w from the input and ∂L/∂y, summed over the batch: one partial sum per run of images,
/// then summed and transposed.
pub(super) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    let per = g.per_run();
    let partials: Vec<Vec<f32>> = (0..g.image_runs())
        .into_par_iter()
        .map(|run| -> Result<Vec<f32>> {
            let mut dw = vec![0f32; g.o * g.ckk()];
            let mut col = col_buffer(g);
            for i in run * per..((run + 1) * per).min(g.n) {
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
