//! 2-D convolution (NCHW, square kernel, no groups, no dilation) as candle custom ops:
//! the forward pass and both backward passes are im2col / col2im plus one matrix product per
//! image — or per group of images where an image's output map is small — images in parallel
//! on rayon and the product single-threaded inside each; the 3×3 convolutions run as Winograd
//! F(2×2, 3×3) (stride 1 and 2, all three passes; stride 2's ∂L/∂x turned round) or direct (stride 1)
//! where the CPU and the shape allow.
//!
//! - [`geometry`]: [`ConvGeom`], the output range each kernel offset reaches, runs of images;
//! - [`im2col`]: one image to and from its block of a column matrix;
//! - [`direct`]: 3×3 stride-1 register tiles on the padded image (AVX2 / AVX-512);
//! - [`winograd`]: F(2×2, 3×3) and F(4×4, 3×3) for stride 1 and the stride-2 form, all
//!   three passes (the stride-2 ∂L/∂x as the algorithm turned round; on 4×4 maps one tile per
//!   image, the images along the lanes);
//! - here: the per-image and per-group products (also used by [`super::fused`]), the plans
//!   that choose among them, the batch loops, the ops.

mod direct;
mod geometry;
mod im2col;
mod winograd;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::gemm::{MatRef, matmul};
use super::operands::{Nchw, f32_slice};
use super::simd;
pub use geometry::ConvGeom;

/// Output pixels a group's matrix product should have at least: images whose output map is
/// smaller (8×8 and 4×4 maps at 16 and 32 px) are multiplied together, so the product's long
/// side fills the matrix kernel's register tiles and the weight is packed once per group
/// instead of once per image.
const GROUP_COLUMNS: usize = 128;

/// The fewest input channels for which the backward pass runs flipped ([`BackwardPlan`]):
/// with fewer, its ∂L/∂x product has too few rows to fill the matrix kernel (a 3-channel
/// input's ∂L/∂x took 2.5 times as long flipped, measured).
const FLIP_MIN_CHANNELS: usize = 8;

/// A thread's working buffers for one convolution: the column matrix of a group of images
/// (C·K·K × G·Ho·Wo; none for a pointwise convolution of single images) and, for groups, the
/// product (O × G·Ho·Wo) before it is scattered into the images — or, for the direct kernels
/// ([`direct`]), a padded image and ∂L/∂y transposed, and for [`winograd`] the split input,
/// a chunk's transforms, and ∂L/∂y transposed. Their memory is the thread's
/// own and is reused: taken from the thread when made, given back when dropped, so the many
/// small jobs of a batch loop neither allocate nor zero it again (every value is written
/// before it is read).
pub(super) struct Work {
    col: Vec<f32>,
    product: Vec<f32>,
}

/// The most values a thread keeps in its spare [`Work`] buffers (16 MiB): enough for every
/// convolution of the encoder at 96 px; larger ones are freed after use.
const KEEP_WORK: usize = 4 << 20;

thread_local! {
    /// The buffers the last [`Work`] dropped on this thread gave back.
    static SPARE: std::cell::Cell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

impl Drop for Work {
    fn drop(&mut self) {
        let bufs = (
            std::mem::take(&mut self.col),
            std::mem::take(&mut self.product),
        );
        let size = |b: &(Vec<f32>, Vec<f32>)| b.0.capacity() + b.1.capacity();
        if size(&bufs) > KEEP_WORK {
            return;
        }
        // Keep the larger set; a nested job's smaller buffers are freed. A thread being torn
        // down has no spare to give them to, and frees them.
        let _ = SPARE.try_with(|spare| {
            let old = spare.take();
            spare.set(if size(&old) > size(&bufs) { old } else { bufs });
        });
    }
}

/// The working buffers for `g` ([`Work`]).
pub(super) fn work(g: &ConvGeom) -> Work {
    let group = g.group();
    let cols = group * g.hw_out();
    // A flipped backward pass ([`BackwardPlan`]) makes dy's columns (O·K·K rows) and a
    // product of C rows: where it may run (also where the direct ∂L/∂x makes the plan flip),
    // size for the larger of the two channel counts.
    let (col_channels, product_rows) = if g.flips() || g.direct_input() {
        (g.c.max(g.o), g.c.max(g.o))
    } else {
        (g.c, g.o)
    };
    // No columns where nothing runs im2col: pointwise convolutions one image at a time, and
    // 4×4 and 8×8 maps (stride 1, or stride 2 from 8×8) whose every pass runs Winograd with
    // the images along the lanes.
    let whole = winograd::whole::all_passes(g)
        || winograd::whole8::all_passes(g)
        || winograd::whole_s2::all_passes(g);
    let mut col = if g.is_pointwise() && group == 1 || whole {
        0
    } else {
        col_channels * g.k * g.k * cols
    };
    let mut product = if group > 1 && !whole {
        product_rows * cols
    } else {
        0
    };
    // The direct kernels ([`direct`]) keep a padded image (of x, or of dy for ∂L/∂x) in the
    // column buffer and ∂L/∂y transposed in the product buffer.
    if g.direct_forward() || g.direct_input() || g.direct_weight() {
        col = col.max(g.c.max(g.o) * direct::padded_plane(g));
    }
    if g.direct_weight() {
        product = product.max(g.o * g.hw_out());
    }
    // Winograd ([`winograd`]) keeps the input's phases and its transforms in the column
    // buffer, for the forward pass or for ∂L/∂x (C and O swapped).
    if g.winograd_forward() || g.winograd_input() {
        col = col.max(winograd::buffer_len(g));
    }
    if g.winograd_strided_input() {
        col = col.max(winograd::strided_input_len(g));
    }
    if g.winograd_weight() {
        let (c, p) = winograd::weight_buffer_len(g);
        col = col.max(c);
        product = product.max(p);
    }
    // Grown where too short, never cut: a buffer cut to a smaller convolution's length and
    // grown again for the next larger one would be zeroed again past the cut. Every kernel
    // takes the part it needs from the front.
    let (mut c, mut p) = SPARE.with(std::cell::Cell::take);
    if c.len() < col {
        c.resize(col, 0.0);
    }
    if p.len() < product {
        p.resize(product, 0.0);
    }
    Work { col: c, product: p }
}

/// How many images of `len` values each `values` holds, checked against `group`.
fn images_in(values: usize, len: usize, group: usize, what: &str) -> Result<usize> {
    let n = values / len.max(1);
    if n * len != values || n == 0 || n > group {
        bail!("conv2d: {what} holds {values} values, not 1 to {group} images of {len}");
    }
    Ok(n)
}

/// Checks that `values` holds exactly `n` images of `len` values.
fn exactly(values: usize, len: usize, n: usize, what: &str) -> Result<()> {
    if values != n * len {
        bail!("conv2d: {what} holds {values} values, not {n} images of {len}");
    }
    Ok(())
}

impl ConvGeom {
    /// Images per matrix product: enough that the product has [`GROUP_COLUMNS`] columns.
    pub(in crate::model::kernels) fn group(&self) -> usize {
        if let Some(group) = winograd::whole::group(self) {
            // 4×4 maps whose images go along Winograd's lanes: chunks of 32 images.
            return group;
        }
        if let Some(group) = winograd::whole8::group(self) {
            // 8×8 maps with F(4×4, 3×3), the images along Winograd's lanes: chunks of 16.
            return group;
        }
        if let Some(group) = winograd::whole_s2::group(self) {
            // Stride 2 on 8×8 maps, the images along Winograd's lanes: chunks of 16 images.
            return group;
        }
        let group = (GROUP_COLUMNS / self.hw_out().max(1)).max(1);
        // Two where Winograd takes images two at a time (16×16 maps with F(4×4, 3×3) on
        // AVX-512), so that its pairs see two images at once.
        if group == 1 && winograd::pairs(self) {
            2
        } else {
            group
        }
    }

    /// How the forward pass for weight `w` (O, C, K, K) multiplies, decided once per batch:
    /// with Winograd where [`ConvGeom::winograd_forward`] (the weight transformed here),
    /// else as [`ConvGeom::forward_group`] says.
    pub(in crate::model::kernels) fn forward_plan<'a>(&self, w: &'a [f32]) -> ForwardPlan<'a> {
        let winograd = (self.winograd_forward() && w.len() == self.o * self.ckk())
            .then(|| winograd::transform_weight(self, w));
        ForwardPlan { w, winograd }
    }

    /// A group of 1 to [`ConvGeom::group`] images: `ys = w · im2col(xs)` image by image, as
    /// one matrix product over the group's columns — or image by image with Winograd or the
    /// direct kernels, as `plan` and the geometry say. `xs` (G, C, H, W), `ys`
    /// (G, O, Ho, Wo).
    pub(super) fn forward_group(
        &self,
        plan: &ForwardPlan<'_>,
        xs: &[f32],
        ys: &mut [f32],
        work: &mut Work,
    ) -> Result<()> {
        let n = images_in(xs.len(), self.in_image(), self.group(), "input group")?;
        exactly(ys.len(), self.out_image(), n, "output group")?;
        let w = plan.w;
        if let Some(u) = &plan.winograd {
            return winograd::forward_images(self, u, xs, ys, false, &mut work.col);
        }
        if self.direct_forward() {
            for (xi, yi) in xs
                .chunks_exact(self.in_image())
                .zip(ys.chunks_exact_mut(self.out_image()))
            {
                direct::forward_image(self, w, xi, yi, false, &mut work.col)?;
            }
            return Ok(());
        }
        if n == 1 {
            return self.forward_image(w, xs, ys, &mut work.col);
        }
        let (hw, ckk) = (self.hw_out(), self.ckk());
        let cols = n * hw;
        for (j, xi) in xs.chunks_exact(self.in_image()).enumerate() {
            self.im2col_at(xi, &mut work.col, cols, j * hw);
        }
        let product = &mut work.product[..self.o * cols];
        matmul(
            product,
            false,
            MatRef::rows(w, self.o, ckk),
            MatRef::rows(&work.col[..ckk * cols], ckk, cols),
        )?;
        for (j, yi) in ys.chunks_exact_mut(self.out_image()).enumerate() {
            for (o, plane) in yi.chunks_exact_mut(hw).enumerate() {
                let at = o * cols + j * hw;
                plane.copy_from_slice(&product[at..at + hw]);
            }
        }
        Ok(())
    }

    /// A group's backward pass, as `plan` says ([`BackwardPlan`]): `dxs += ∂L/∂x` image by
    /// image when `dxs` is given (zeroed or partly summed by the caller; with
    /// [`BackwardPlan::overwriting_input`] `dxs = ∂L/∂x` over whatever it held), and `dw += ∂L/∂w`
    /// as a partial sum for [`ConvGeom::weight_grad`] when `weight = (xs, dw)` is given, each
    /// as one product over the group's columns. Unflipped, that is `col2im(wᵀ · dys)` and
    /// `im2col(xs) · dysᵀ` (laid out C·K·K × O, as [`ConvGeom::backward_weight_image`]; the
    /// plan's weight may be empty without `dxs`); with Winograd's ∂L/∂w the partial sum is
    /// ∂L/∂U's ([`ConvGeom::weight_partial_len`]). `xs`, `dxs` (G, C, H, W); `dys` (G, O, Ho, Wo).
    pub(super) fn backward_group(
        &self,
        plan: &BackwardPlan<'_>,
        dys: &[f32],
        dxs: Option<&mut [f32]>,
        weight: Option<(&[f32], &mut [f32])>,
        work: &mut Work,
    ) -> Result<()> {
        let n = images_in(dys.len(), self.out_image(), self.group(), "gradient group")?;
        if let Some(dx) = &dxs {
            exactly(dx.len(), self.in_image(), n, "input gradient group")?;
        }
        // Only the stride-1 Winograd and direct ∂L/∂x kernels can write instead of adding.
        let writes = plan.winograd_input.is_some() && self.stride != 2
            || plan.winograd_input.is_none() && plan.flipped.is_some() && plan.direct_input;
        let mut dxs = dxs;
        if plan.overwrite_input
            && !writes
            && let Some(dx) = dxs.as_deref_mut()
        {
            dx.fill(0.0);
        }
        if let Some((xs, _)) = &weight {
            exactly(xs.len(), self.in_image(), n, "input group")?;
        }
        if plan.direct_input
            || plan.direct_weight
            || plan.winograd_input.is_some()
            || plan.winograd_weight
        {
            return self.backward_group_direct(plan, dys, n, dxs, weight, work);
        }
        self.backward_group_gemm(plan, dys, n, dxs, weight, work)
    }

    /// [`ConvGeom::backward_group`] with the matrix kernel, for `n` images.
    fn backward_group_gemm(
        &self,
        plan: &BackwardPlan<'_>,
        dys: &[f32],
        n: usize,
        dxs: Option<&mut [f32]>,
        weight: Option<(&[f32], &mut [f32])>,
        work: &mut Work,
    ) -> Result<()> {
        if let Some(flipped) = &plan.flipped {
            return self.backward_group_flipped(flipped, dys, n, dxs, weight, work);
        }
        let w = plan.w;
        if n == 1 {
            if let Some(dx) = dxs {
                self.backward_input_image(w, dys, dx, &mut work.col)?;
            }
            if let Some((xs, dw)) = weight {
                self.backward_weight_image(xs, dys, dw, &mut work.col)?;
            }
            return Ok(());
        }
        let (hw, ckk) = (self.hw_out(), self.ckk());
        let cols = n * hw;
        // ∂L/∂y of the group as one (O × G·Ho·Wo) matrix.
        let dy = &mut work.product[..self.o * cols];
        for (j, dyi) in dys.chunks_exact(self.out_image()).enumerate() {
            for (o, plane) in dyi.chunks_exact(hw).enumerate() {
                let at = o * cols + j * hw;
                dy[at..at + hw].copy_from_slice(plane);
            }
        }
        let dy = MatRef::rows(dy, self.o, cols);
        let col = &mut work.col[..ckk * cols];
        if let Some(dx) = dxs {
            let wt = MatRef::rows(w, self.o, ckk).t();
            matmul(col, false, wt, dy)?;
            for (j, dxi) in dx.chunks_exact_mut(self.in_image()).enumerate() {
                self.col2im_at(col, cols, j * hw, dxi);
            }
        }
        if let Some((xs, dw)) = weight {
            for (j, xi) in xs.chunks_exact(self.in_image()).enumerate() {
                self.im2col_at(xi, col, cols, j * hw);
            }
            matmul(dw, true, MatRef::rows(col, ckk, cols), dy.t())?;
        }
        Ok(())
    }

    /// One image: `yi = w · im2col(xi)`; `w` (O × C·K·K), `xi` (C, H, W), `yi` (O, Ho, Wo),
    /// `col` at least C·K·K × Ho·Wo (unused for a pointwise convolution).
    fn forward_image(&self, w: &[f32], xi: &[f32], yi: &mut [f32], col: &mut [f32]) -> Result<()> {
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
    fn backward_input_image(
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
    fn backward_weight_image(
        &self,
        xi: &[f32],
        dyi: &[f32],
        dw: &mut [f32],
        col: &mut [f32],
    ) -> Result<()> {
        let dyi = MatRef::rows(dyi, self.o, self.hw_out());
        matmul(dw, true, self.columns(xi, col), dyi.t())
    }

    /// ∂L/∂w (O × C·K·K) from the partial sums [`ConvGeom::backward_group`] made with
    /// `plan`: laid out (C·K·K × O), (O·K·K × C) with flipped taps for a flipped plan, or
    /// ∂L/∂U ([`ConvGeom::weight_partial_len`]) for Winograd's.
    ///
    /// # Errors
    /// If Winograd's partial sums do not have its size.
    pub(super) fn weight_grad(
        &self,
        partials: &[Vec<f32>],
        plan: &BackwardPlan<'_>,
    ) -> Result<Vec<f32>> {
        if plan.winograd_weight {
            let mut du = vec![0f32; self.weight_partial_len(plan)];
            for p in partials {
                exactly(p.len(), du.len(), 1, "∂L/∂U partial sum")?;
            }
            // The runs' sums (up to 2.4 MB each) added a block at a time in parallel.
            const BLOCK: usize = 1 << 14;
            du.par_chunks_mut(BLOCK).enumerate().for_each(|(b, d)| {
                for p in partials {
                    for (s, v) in d.iter_mut().zip(&p[b * BLOCK..]) {
                        *s += v;
                    }
                }
            });
            return winograd::weight_from_transform(self, &du);
        }
        let ckk = self.ckk();
        let mut dw = vec![0f32; self.o * ckk];
        if plan.flipped.is_some() && !plan.direct_weight {
            let kk = self.k * self.k;
            for p in partials {
                for (r, row) in p.chunks_exact(self.c.max(1)).enumerate() {
                    // Row (o, tap) holds the turned-round tap of dw[o, c] for every c.
                    let (o, tap) = (r / kk, r % kk);
                    for (c, v) in row.iter().enumerate() {
                        dw[self.turned_tap(o, c, tap)] += v;
                    }
                }
            }
            return Ok(dw);
        }
        for p in partials {
            for (r, row) in p.chunks_exact(self.o.max(1)).enumerate() {
                for (oc, v) in row.iter().enumerate() {
                    dw[oc * ckk + r] += v;
                }
            }
        }
        Ok(dw)
    }

    /// Values of one partial sum of ∂L/∂w made with `plan` ([`ConvGeom::backward_group`]):
    /// O·C·K·K, or those of ∂L/∂U with Winograd (16·C·O, 25·C·O for stride 2, 36·C·O for
    /// F(4×4, 3×3)).
    pub(in crate::model::kernels) fn weight_partial_len(&self, plan: &BackwardPlan<'_>) -> usize {
        if plan.winograd_weight {
            winograd::transform_len(self)
        } else {
            self.o * self.ckk()
        }
    }

    /// Whether the backward pass can run flipped ([`BackwardPlan`]): a stride-1 convolution
    /// with a kernel wider than one pixel whose output map is at least as large as its input
    /// ("same", or padded further, as the sub-pixel decoders' 2×2 kernels with padding 1), of
    /// at least [`FLIP_MIN_CHANNELS`] input channels.
    fn flips(&self) -> bool {
        self.stride == 1
            && self.k > 1
            && 2 * self.pad + 1 >= self.k
            && self.pad < self.k
            && self.c >= FLIP_MIN_CHANNELS
    }

    /// Where tap `tap` (0..K·K, row-major) of w[o, c] turned round by 180° — tap (K−1−a,
    /// K−1−b) for (a, b) — sits in the weight (O, C, K, K): the flipped pass's tap order.
    fn turned_tap(&self, o: usize, c: usize, tap: usize) -> usize {
        let kk = self.k * self.k;
        (o * self.c + c) * kk + (kk - 1 - tap)
    }

    /// The geometry of ∂L/∂x as a convolution of ∂L/∂y: O input channels, C outputs, the
    /// same kernel side, stride 1, padding K − 1 − P (P itself for a "same" convolution), so
    /// its output is the input's H × W.
    fn flipped(&self) -> ConvGeom {
        ConvGeom {
            c: self.o,
            h: self.ho(),
            w: self.wo(),
            o: self.c,
            pad: self.k - 1 - self.pad,
            ..*self
        }
    }

    /// How the backward pass for weight `w` (O, C, K, K) multiplies: flipped when ∂L/∂x is
    /// wanted and the convolution [`flips`](ConvGeom::flips), else as the adjoint of im2col.
    pub(in crate::model::kernels) fn backward_plan<'a>(
        &self,
        w: &'a [f32],
        want_input: bool,
    ) -> BackwardPlan<'a> {
        let direct_input = want_input && (self.direct_input() || self.winograd_input());
        let flips = self.flips() || direct_input;
        let flipped = (want_input && flips && w.len() == self.o * self.ckk()).then(|| {
            let kk = self.k * self.k;
            let mut f = vec![0f32; self.c * self.o * kk];
            for (c, row) in f.chunks_exact_mut(self.o * kk).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = w[self.turned_tap(j / kk, c, j % kk)];
                }
            }
            f
        });
        let winograd_input = match &flipped {
            Some(wf) if self.winograd_input() => {
                Some(winograd::transform_weight(&self.flipped(), wf))
            }
            _ if want_input && self.winograd_strided_input() && w.len() == self.o * self.ckk() => {
                Some(winograd::transposed_transform(self, w))
            }
            _ => None,
        };
        BackwardPlan {
            w,
            direct_input: direct_input && flipped.is_some() && self.direct_input(),
            direct_weight: self.direct_weight() && !self.winograd_weight(),
            winograd_weight: self.winograd_weight(),
            winograd_input,
            flipped,
            overwrite_input: false,
        }
    }

    /// [`ConvGeom::backward_group`] with Winograd ([`winograd`]) or the direct kernels
    /// ([`direct`]) where the plan says, image by image — `dx += conv(dy, flipped w)` (for
    /// stride 2, Winograd turned round: [`winograd::strided_input_images`]), and
    /// `dw += ∂L/∂U` ([`ConvGeom::weight_partial_len`]) or `x-taps · dyᵀ` laid out (C·K·K × O) — and the matrix
    /// kernel for the rest.
    fn backward_group_direct(
        &self,
        plan: &BackwardPlan<'_>,
        dys: &[f32],
        n: usize,
        dxs: Option<&mut [f32]>,
        weight: Option<(&[f32], &mut [f32])>,
        work: &mut Work,
    ) -> Result<()> {
        if let Some(dx) = dxs {
            match (&plan.winograd_input, &plan.flipped) {
                (Some(ut), _) if self.stride == 2 => {
                    winograd::strided_input_images(self, ut, dys, dx, &mut work.col)?;
                }
                (Some(u), _) => {
                    let add = !plan.overwrite_input;
                    winograd::forward_images(&self.flipped(), u, dys, dx, add, &mut work.col)?;
                }
                (None, Some(wf)) if plan.direct_input => {
                    let t = self.flipped();
                    for (dyi, dxi) in dys
                        .chunks_exact(self.out_image())
                        .zip(dx.chunks_exact_mut(self.in_image()))
                    {
                        let add = !plan.overwrite_input;
                        direct::forward_image(&t, wf, dyi, dxi, add, &mut work.col)?;
                    }
                }
                _ => self.backward_group_gemm(plan, dys, n, Some(dx), None, work)?,
            }
        }
        if let Some((xs, dw)) = weight {
            if plan.winograd_weight {
                return winograd::weight_images(self, xs, dys, dw, work);
            }
            if !plan.direct_weight {
                return self.backward_group_gemm(plan, dys, n, None, Some((xs, dw)), work);
            }
            for (xi, dyi) in xs
                .chunks_exact(self.in_image())
                .zip(dys.chunks_exact(self.out_image()))
            {
                direct::weight_image(self, xi, dyi, dw, work)?;
            }
        }
        Ok(())
    }

    /// [`ConvGeom::backward_group`] with flipped weights `wf` (C × O·K·K): dy's columns are
    /// made once (the [`ConvGeom::flipped`] geometry's im2col), then `dxs += wf · cols` (no
    /// col2im, no column matrix of x) and `dw += cols · xsᵀ`, laid out (O·K·K × C): both
    /// products read their operands along contiguous rows, as the unflipped ones do.
    fn backward_group_flipped(
        &self,
        wf: &[f32],
        dys: &[f32],
        n: usize,
        dxs: Option<&mut [f32]>,
        weight: Option<(&[f32], &mut [f32])>,
        work: &mut Work,
    ) -> Result<()> {
        let t = self.flipped();
        // Columns per image: the input's pixels (as many as the output's for "same").
        let (hw, okk) = (t.hw_out(), t.ckk());
        let cols = n * hw;
        let col = &mut work.col[..okk * cols];
        for (j, dyi) in dys.chunks_exact(self.out_image()).enumerate() {
            t.im2col_at(dyi, col, cols, j * hw);
        }
        let col = MatRef::rows(col, okk, cols);
        let wf = MatRef::rows(wf, self.c, okk);
        if n == 1 {
            if let Some(dx) = dxs {
                matmul(dx, true, wf, col)?;
            }
            if let Some((xs, dw)) = weight {
                matmul(dw, true, col, MatRef::rows(xs, self.c, hw).t())?;
            }
            return Ok(());
        }
        let product = &mut work.product[..self.c * cols];
        if let Some(dx) = dxs {
            matmul(product, false, wf, col)?;
            for (j, dxi) in dx.chunks_exact_mut(self.in_image()).enumerate() {
                for (c, plane) in dxi.chunks_exact_mut(hw).enumerate() {
                    let at = c * cols + j * hw;
                    for (v, g) in plane.iter_mut().zip(&product[at..at + hw]) {
                        *v += g;
                    }
                }
            }
        }
        if let Some((xs, dw)) = weight {
            // The group's inputs side by side, one (C × G·H·W) matrix.
            for (j, xi) in xs.chunks_exact(self.in_image()).enumerate() {
                for (c, plane) in xi.chunks_exact(hw).enumerate() {
                    let at = c * cols + j * hw;
                    product[at..at + hw].copy_from_slice(plane);
                }
            }
            matmul(dw, true, col, MatRef::rows(product, self.c, cols).t())?;
        }
        Ok(())
    }
}

/// How a convolution's backward pass multiplies, decided once per batch
/// ([`ConvGeom::backward_plan`]).
///
/// A stride-1 "same" convolution's ∂L/∂x is itself a convolution of ∂L/∂y with the weight's
/// channels swapped and its taps flipped, and its ∂L/∂w pairs x with the same shifted copies
/// of ∂L/∂y. So one im2col of ∂L/∂y serves both products: ∂L/∂x comes straight out of its
/// product (no col2im scatter, no column matrix to zero), and x needs no im2col at all.
/// Otherwise (strided convolutions, or when only ∂L/∂w is wanted, as for the network's input
/// layer whose 3 channels make x's columns the cheaper ones) the backward pass is the adjoint
/// of the forward one: `col2im(wᵀ · dy)` and `im2col(x) · dyᵀ` — or, for ∂L/∂w, Winograd's
/// (stride 1 or 2) or the direct kernels' where they fit, and for a stride-2 3×3 ∂L/∂x
/// Winograd turned round where it fits.
pub(in crate::model::kernels) struct BackwardPlan<'a> {
    /// The weight (O, C, K, K).
    w: &'a [f32],
    /// Whether the direct kernels make ∂L/∂x ([`direct`], with the flipped weight).
    direct_input: bool,
    /// Whether the direct kernels make ∂L/∂w, laid out (C·K·K × O) as the unflipped pass's.
    direct_weight: bool,
    /// For ∂L/∂x with Winograd ([`winograd`]): the flipped weight's transform, or for a
    /// stride-2 convolution the weight's, turned round (25·O·C values).
    winograd_input: Option<Vec<f32>>,
    /// Whether ∂L/∂w runs with Winograd: its partial sums are then those of ∂L/∂U,
    /// 16·C·O, 25·C·O or 36·C·O values ([`ConvGeom::weight_partial_len`]).
    winograd_weight: bool,
    /// For the flipped pass: `wf[c, (o, a, b)] = w[o, c, K−1−a, K−1−b]`, (C × O·K·K).
    flipped: Option<Vec<f32>>,
    /// Whether ∂L/∂x overwrites what the group's `dxs` held instead of adding into it
    /// ([`BackwardPlan::overwriting_input`]).
    overwrite_input: bool,
}

impl BackwardPlan<'_> {
    /// This plan with ∂L/∂x written over whatever `dxs` holds (a buffer from the pool), not
    /// added into it: the kernels that can write pass no accumulation flag, the others zero
    /// the group's part first, while it is in cache.
    pub(in crate::model::kernels) fn overwriting_input(mut self) -> Self {
        self.overwrite_input = true;
        self
    }
}

/// How a convolution's forward pass multiplies, decided once per batch
/// ([`ConvGeom::forward_plan`]).
pub(in crate::model::kernels) struct ForwardPlan<'a> {
    /// The weight (O, C, K, K).
    w: &'a [f32],
    /// For Winograd ([`winograd`]): the weight's transform, 16·C·O values (25·C·O for
    /// stride 2, 36·C·O for F(4×4, 3×3)).
    winograd: Option<Vec<f32>>,
}

/// `y = conv(x, w)` for a batch laid out as `g` says.
pub(super) fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Result<Vec<f32>> {
    fresh_groups(g, g.out_image(), x, g.in_image(), {
        let plan = g.forward_plan(w);
        move |work, ys, xs| g.forward_group(&plan, xs, ys, work)
    })
}

/// `f(work, dst, src)` for each group of images ([`ConvGeom::group`]) in parallel with
/// rayon, `src` cut into images of `src_image` values and `dst` a new buffer of `dst_image`
/// values per image, each group's part zeroed by the job that then runs `f` on it
/// ([`simd::zeroed_chunks`]), with one [`Work`] per rayon job.
///
/// # Errors
/// If `src` does not hold the geometry's images, or `f` fails.
fn fresh_groups(
    g: &ConvGeom,
    dst_image: usize,
    src: &[f32],
    src_image: usize,
    f: impl Fn(&mut Work, &mut [f32], &[f32]) -> Result<()> + Send + Sync,
) -> Result<Vec<f32>> {
    let group = g.group();
    if src.len() != g.n * src_image {
        bail!(
            "conv2d: {} values for {} images of {src_image}",
            src.len(),
            g.n
        );
    }
    if src_image == 0 || dst_image == 0 {
        // An empty map on either side (a padded 0-pixel input): nothing to multiply.
        return Ok(vec![0.0; g.n * dst_image]);
    }
    simd::zeroed_chunks(
        g.n * dst_image,
        group * dst_image,
        src.par_chunks((group * src_image).max(1)),
        || work(g),
        |w, _, d, s| f(w, d, s),
    )
}

/// ∂L/∂x from ∂L/∂y, per group as [`ConvGeom::backward_plan`] decides: flipped, Winograd
/// turned round (stride 2), or wᵀ · dy then col2im.
pub(super) fn backward_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Result<Vec<f32>> {
    let plan = g.backward_plan(w, true);
    fresh_groups(g, g.in_image(), dy, g.out_image(), |work, dxs, dys| {
        g.backward_group(&plan, dys, Some(dxs), None, work)
    })
}

/// ∂L/∂w from the input and ∂L/∂y, summed over the batch: one partial sum per run of images
/// (a product per group inside it), then summed and transposed.
pub(super) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    let plan = g.backward_plan(&[], false);
    let runs = g.runs(g.weight_partial_len(&plan));
    let group = g.group();
    let partials: Vec<Vec<f32>> = (0..runs.count())
        .into_par_iter()
        .map(|run| -> Result<Vec<f32>> {
            let mut dw = vec![0f32; g.weight_partial_len(&plan)];
            let mut work = work(g);
            let images = runs.images(run);
            for start in images.clone().step_by(group) {
                let end = (start + group).min(images.end);
                let xs = &x[start * g.in_image()..end * g.in_image()];
                let dys = &dy[start * g.out_image()..end * g.out_image()];
                g.backward_group(&plan, dys, None, Some((xs, &mut dw)), &mut work)?;
            }
            Ok(dw)
        })
        .collect::<Result<_>>()?;
    g.weight_grad(&partials, &plan)
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
