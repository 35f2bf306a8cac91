//! Direct 3×3 convolution (stride 1, padding 1) without a column matrix, on AVX2 + FMA.
//!
//! The im2col path writes a (C·9 × H·W) column matrix per image, which `gemm` then packs
//! again into its own order before multiplying: for a 32-channel map of 32×32 that is 1.2 MB
//! written and read twice per image, more than the core's L2 holds, for 32 output rows only
//! (the product's thin side), so the 32-channel stage ran at about half of the machine's
//! matrix-product rate. Here the register tiles read the zero-padded image itself:
//!
//! - **forward** and **∂L/∂x** (a "same" convolution's ∂L/∂x is the convolution of ∂L/∂y with
//!   the turned-round weight, [`super::BackwardPlan`]): 4 output channels × 2 vectors of 8
//!   output pixels (along the image's rows) in 8 registers; each of the C·9 steps loads 2
//!   vectors of the padded input at the tap's offset and broadcasts 4 weights (with 3 vectors
//!   and 12 sums the compiler spilled registers inside the loop: 7% slower step, measured);
//! - **∂L/∂w** as an implicit matrix product `dw (C·9 × O) += x-taps · ∂L/∂yᵀ`: 6 taps × 16
//!   output channels in 12 registers; each pixel broadcasts the 6 taps' input values from the
//!   padded image and loads ∂L/∂y's 16 channels from its (H·W × O) transpose.
//!
//! Nothing is packed: the weight is read where it lies (4 rows, C·9 apart), the padded image
//! (C × (H+2) × (W+2)) is made once per image, and the working set of a tile stays in L1.
//! [`usable`] says where these kernels run: x86-64 with AVX2 and FMA and without AVX-512 (on
//! AVX-512 machines `gemm`'s 16-wide kernels are the faster path and stay in use).

use candle_core::{Result, bail};

use super::super::gemm::count_flop;
use super::geometry::ConvGeom;

/// Output channels per forward register tile.
pub(super) const OUT_BLOCK: usize = 4;
/// Output channels (one pair of 8-wide vectors) per ∂L/∂w register tile.
pub(super) const DW_BLOCK: usize = 16;
/// Taps (rows of C·9) per ∂L/∂w register tile.
const DW_TAPS: usize = 6;
/// Values per vector.
const LANES: usize = 8;

/// Whether this CPU runs the direct kernels (checked once): AVX2 and FMA, and no AVX-512.
pub(super) fn usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        if std::env::var_os("PRETEXT_NO_DIRECT_CONV").is_some() {
            return false;
        }
        detect()
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && !std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

impl ConvGeom {
    /// A 3×3 convolution with stride 1 and padding 1 on rows of whole vectors.
    fn direct_shape(&self) -> bool {
        self.k == 3
            && self.stride == 1
            && self.pad == 1
            && self.w >= LANES
            && self.w.is_multiple_of(LANES)
    }

    /// Whether the forward pass runs [`forward_image`] here.
    pub(super) fn direct_forward(&self) -> bool {
        self.direct_shape() && self.o.is_multiple_of(OUT_BLOCK) && usable()
    }

    /// Whether ∂L/∂w runs [`weight_image`] here.
    pub(super) fn direct_weight(&self) -> bool {
        self.direct_shape() && self.o.is_multiple_of(DW_BLOCK) && usable()
    }

    /// Whether ∂L/∂x runs [`forward_image`] here, as the convolution of ∂L/∂y with the
    /// turned-round weight (C output channels).
    pub(super) fn direct_input(&self) -> bool {
        self.direct_shape() && self.c.is_multiple_of(OUT_BLOCK) && usable()
    }
}

/// Values of one channel of a zero-padded map, (H+2) × (W+2).
pub(super) fn padded_plane(g: &ConvGeom) -> usize {
    (g.h + 2) * (g.w + 2)
}

/// The first `len` values of a working buffer ([`super::Work`]).
fn take<'a>(buf: &'a mut [f32], len: usize, what: &str) -> Result<&'a mut [f32]> {
    let have = buf.len();
    match buf.get_mut(..len) {
        Some(b) => Ok(b),
        None => bail!("direct convolution: the {what} buffer holds {have} values, needs {len}"),
    }
}

/// Copies `x` (C, H, W) into `padded` (C, H+2, W+2) with a border of zeros.
fn pad_image(x: &[f32], c: usize, h: usize, w: usize, padded: &mut [f32]) {
    let (pw, plane) = (w + 2, (h + 2) * (w + 2));
    for (src, dst) in x
        .chunks_exact(h * w)
        .zip(padded.chunks_exact_mut(plane))
        .take(c)
    {
        dst[..pw].fill(0.0);
        dst[(h + 1) * pw..].fill(0.0);
        for (row, out) in src.chunks_exact(w).zip(dst[pw..].chunks_exact_mut(pw)) {
            out[0] = 0.0;
            out[1..=w].copy_from_slice(row);
            out[w + 1] = 0.0;
        }
    }
}

/// One image: `y (O, H, W) = (accumulate ? y : 0) + conv3×3(x, w)`, `x` (C, H, W), `w`
/// (O, C, 3, 3), stride 1, padding 1, for a geometry with [`ConvGeom::direct_forward`].
/// For ∂L/∂x, call it with the flipped geometry and weight. `pad` is working memory for the
/// padded image, C·(H+2)·(W+2) values or more (the thread's [`super::Work`] column buffer).
///
/// # Errors
/// If the slices do not have the geometry's sizes, or the geometry or CPU does not allow the
/// direct kernel ([`ConvGeom::direct_forward`]).
pub(super) fn forward_image(
    g: &ConvGeom,
    w: &[f32],
    x: &[f32],
    y: &mut [f32],
    accumulate: bool,
    pad: &mut [f32],
) -> Result<()> {
    if !g.direct_forward() {
        bail!("direct convolution: not for {g:?} on this CPU");
    }
    if w.len() != g.o * g.c * 9 || x.len() != g.in_image() || y.len() != g.out_image() {
        bail!(
            "direct convolution: weight {}, input {}, output {} values do not fit {g:?}",
            w.len(),
            x.len(),
            y.len()
        );
    }
    let padded = take(pad, g.c * padded_plane(g), "padded image")?;
    pad_image(x, g.c, g.h, g.w, padded);
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `direct_forward` checked AVX2 and FMA; the sizes were checked above, and the
    // kernel reads and writes only inside them (see `avx2::forward`).
    unsafe {
        avx2::forward(g, w, padded, y, accumulate);
    }
    count_flop(2 * (g.o * g.c * 9 * g.h * g.w) as u64);
    Ok(())
}

/// One image: `dw += x-taps · dyᵀ`, with `dw` laid out (C·9 × O) as the unflipped backward
/// pass's partial sums ([`ConvGeom::weight_grad`]); `x` (C, H, W), `dy` (O, H, W), for a
/// geometry with [`ConvGeom::direct_weight`]. The padded image and ∂L/∂y's transpose are made
/// in `work`'s buffers.
///
/// # Errors
/// As [`forward_image`] ([`ConvGeom::direct_weight`]).
pub(super) fn weight_image(
    g: &ConvGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    work: &mut super::Work,
) -> Result<()> {
    if !g.direct_weight() {
        bail!("direct convolution: not for {g:?} on this CPU");
    }
    if x.len() != g.in_image() || dy.len() != g.out_image() || dw.len() != g.o * g.c * 9 {
        bail!(
            "direct convolution: input {}, gradient {}, weight gradient {} values do not fit {g:?}",
            x.len(),
            dy.len(),
            dw.len()
        );
    }
    let hw = g.h * g.w;
    let padded = take(&mut work.col, g.c * padded_plane(g), "padded image")?;
    pad_image(x, g.c, g.h, g.w, padded);
    // ∂L/∂y transposed to (H·W × O): one pixel's channels side by side.
    let dyt = take(&mut work.product, hw * g.o, "transposed gradient")?;
    for (o, plane) in dy.chunks_exact(hw).enumerate() {
        for (p, v) in plane.iter().enumerate() {
            dyt[p * g.o + o] = *v;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `direct_weight` checked AVX2 and FMA; the sizes were checked above, and the
    // kernel reads and writes only inside them (see `avx2::weight`).
    unsafe {
        avx2::weight(g, padded, dyt, dw);
    }
    count_flop(2 * (g.o * g.c * 9 * hw) as u64);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps,
        _mm256_setzero_ps, _mm256_storeu_ps,
    };

    use super::{ConvGeom, DW_BLOCK, DW_TAPS, LANES, OUT_BLOCK};

    /// Rows of output a band covers: its padded input (C × (rows + 2) × (W + 2)) within about
    /// 96 KiB, so every output-channel block of the band finds it in L2.
    fn band_rows(g: &ConvGeom) -> usize {
        let row = g.c * (g.w + 2) * 4;
        ((96 << 10) / row.max(1)).saturating_sub(2).clamp(1, g.h)
    }

    /// The whole image, band by band, output-channel block by block, tile by tile.
    ///
    /// # Safety
    /// AVX2 and FMA present; `w` holds O·C·9 values, `xp` C·(H+2)·(W+2), `y` O·H·W.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward(g: &ConvGeom, w: &[f32], xp: &[f32], y: &mut [f32], acc: bool) {
        let per_row = g.w / LANES;
        let band = band_rows(g);
        let mut r0 = 0;
        while r0 < g.h {
            let r1 = (r0 + band).min(g.h);
            // The band's vectors, (row, first column), in row order.
            let vectors = (r1 - r0) * per_row;
            for ob in (0..g.o).step_by(OUT_BLOCK) {
                let mut v = 0;
                while v < vectors {
                    let left = vectors - v;
                    let at = |i: usize| {
                        let (r, q) = (r0 + (v + i) / per_row, ((v + i) % per_row) * LANES);
                        (r * (g.w + 2) + q, r * g.w + q)
                    };
                    // SAFETY: every vector lies inside its row; the caller's sizes hold.
                    unsafe {
                        if left >= 2 {
                            tile::<2>(g, w, xp, y, ob, [at(0), at(1)], acc);
                            v += 2;
                        } else {
                            tile::<1>(g, w, xp, y, ob, [at(0)], acc);
                            v += 1;
                        }
                    }
                }
            }
            r0 = r1;
        }
    }

    /// Output channels `ob..ob + 4` at `V` vectors: `at[v] = (offset of the vector's first
    /// pixel in a padded input plane (row r + 1 − 1, column q + 1 − 1: the tap (0, 0)),
    /// offset in an output plane)`.
    ///
    /// # Safety
    /// As [`forward`]; `ob + 4 ≤ O`, each vector's 8 pixels inside its output row.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const V: usize>(
        g: &ConvGeom,
        w: &[f32],
        xp: &[f32],
        y: &mut [f32],
        ob: usize,
        at: [(usize, usize); V],
        accumulate: bool,
    ) {
        let (pw, plane, wrow, hw) = (g.w + 2, (g.h + 2) * (g.w + 2), g.c * 9, g.h * g.w);
        let mut acc = [[_mm256_setzero_ps(); V]; OUT_BLOCK];
        let wp = w.as_ptr().wrapping_add(ob * wrow);
        let xb = xp.as_ptr();
        for c in 0..g.c {
            let wc = wp.wrapping_add(c * 9);
            let xc = xb.wrapping_add(c * plane);
            for ky in 0..3 {
                for kx in 0..3 {
                    let t = ky * 3 + kx;
                    let off = ky * pw + kx;
                    // SAFETY: tap (ky, kx) of output pixel (r, q..q+8) is padded input
                    // (r + ky, q + kx ..= q + kx + 7), inside the plane as q + 8 ≤ W and
                    // r + 2 ≤ H + 1; the weight rows ob..ob+4 hold C·9 values each.
                    unsafe {
                        let mut xv = [_mm256_setzero_ps(); V];
                        for (v, a) in xv.iter_mut().zip(&at) {
                            *v = _mm256_loadu_ps(xc.add(a.0 + off));
                        }
                        for (i, row) in acc.iter_mut().enumerate() {
                            let b = _mm256_broadcast_ss(&*wc.add(i * wrow + t));
                            for (s, xv) in row.iter_mut().zip(&xv) {
                                *s = _mm256_fmadd_ps(b, *xv, *s);
                            }
                        }
                    }
                }
            }
        }
        let yp = y.as_mut_ptr();
        for (i, row) in acc.iter().enumerate() {
            for (s, a) in row.iter().zip(&at) {
                // SAFETY: channel ob + i < O, the vector inside its output row.
                unsafe {
                    let dst = yp.add((ob + i) * hw + a.1);
                    let v = if accumulate {
                        _mm256_add_ps(_mm256_loadu_ps(dst), *s)
                    } else {
                        *s
                    };
                    _mm256_storeu_ps(dst, v);
                }
            }
        }
    }

    /// `dw (C·9 × O) += x-taps · dyt`: 16 output channels × 6 taps at a time over every
    /// pixel.
    ///
    /// # Safety
    /// AVX2 and FMA present; `xp` C·(H+2)·(W+2), `dyt` H·W·O, `dw` C·9·O values; O a
    /// multiple of 16.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight(g: &ConvGeom, xp: &[f32], dyt: &[f32], dw: &mut [f32]) {
        let (pw, plane) = (g.w + 2, (g.h + 2) * (g.w + 2));
        // Offset of tap r = (c, ky, kx) in the padded image, for output pixel (0, 0).
        let offs: Vec<usize> = (0..g.c * 9)
            .map(|r| (r / 9) * plane + (r % 9 / 3) * pw + r % 3)
            .collect();
        let rows = g.c * 9;
        for ob in (0..g.o).step_by(DW_BLOCK) {
            let mut r = 0;
            while r < rows {
                // SAFETY: taps r..r+n < C·9 and channels ob..ob+16 ≤ O; the caller's sizes.
                unsafe {
                    match rows - r {
                        1 => weight_tile::<1>(g, xp, dyt, dw, ob, r, &offs),
                        2 => weight_tile::<2>(g, xp, dyt, dw, ob, r, &offs),
                        3 => weight_tile::<3>(g, xp, dyt, dw, ob, r, &offs),
                        4 => weight_tile::<4>(g, xp, dyt, dw, ob, r, &offs),
                        5 => weight_tile::<5>(g, xp, dyt, dw, ob, r, &offs),
                        _ => weight_tile::<DW_TAPS>(g, xp, dyt, dw, ob, r, &offs),
                    }
                }
                r += DW_TAPS.min(rows - r);
            }
        }
    }

    /// Taps `r..r + T` × output channels `ob..ob + 16`, summed over every pixel.
    ///
    /// # Safety
    /// As [`weight`]; `r + T ≤ C·9`, `ob + 16 ≤ O`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn weight_tile<const T: usize>(
        g: &ConvGeom,
        xp: &[f32],
        dyt: &[f32],
        dw: &mut [f32],
        ob: usize,
        r: usize,
        offs: &[usize],
    ) {
        let (pw, o) = (g.w + 2, g.o);
        let mut off = [0usize; T];
        off.copy_from_slice(&offs[r..r + T]);
        let mut acc: [[__m256; 2]; T] = [[_mm256_setzero_ps(); 2]; T];
        let xb = xp.as_ptr();
        let db = dyt.as_ptr().wrapping_add(ob);
        for py in 0..g.h {
            for px in 0..g.w {
                let base = py * pw + px;
                let p = py * g.w + px;
                // SAFETY: pixel p < H·W, channels ob..ob+16 ≤ O; tap (c, ky, kx) of pixel
                // (py, px) is padded input (py + ky, px + kx), inside the plane.
                unsafe {
                    let d0 = _mm256_loadu_ps(db.add(p * o));
                    let d1 = _mm256_loadu_ps(db.add(p * o + LANES));
                    for (a, &t) in acc.iter_mut().zip(&off) {
                        let b = _mm256_broadcast_ss(&*xb.add(t + base));
                        a[0] = _mm256_fmadd_ps(b, d0, a[0]);
                        a[1] = _mm256_fmadd_ps(b, d1, a[1]);
                    }
                }
            }
        }
        let dp = dw.as_mut_ptr();
        for (j, a) in acc.iter().enumerate() {
            // SAFETY: row r + j < C·9, channels ob..ob+16 ≤ O.
            unsafe {
                let dst = dp.add((r + j) * o + ob);
                _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), a[0]));
                let dst = dst.add(LANES);
                _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), a[1]));
            }
        }
    }
}
