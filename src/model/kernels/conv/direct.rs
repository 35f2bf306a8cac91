//! Direct 3×3 convolution (stride 1, padding 1) without a column matrix, on AVX2 + FMA or
//! AVX-512.
//!
//! The im2col path writes a (C·9 × H·W) column matrix per image, which `gemm` then packs
//! again into its own order before multiplying: for a 32-channel map of 32×32 that is 1.2 MB
//! written and read twice per image, more than the core's L2 holds, for 32 output rows only
//! (the product's thin side), so the 32-channel stage ran at about half of the machine's
//! matrix-product rate. Here the register tiles read the zero-padded image itself:
//!
//! - **forward** and **∂L/∂x** (a "same" convolution's ∂L/∂x is the convolution of ∂L/∂y with
//!   the turned-round weight, [`super::BackwardPlan`]): B output channels × V vectors of
//!   output pixels (along the image's rows) in B·V registers; each of the C·9 steps loads V
//!   vectors of the padded input at the tap's offset and broadcasts B weights. AVX2: B = 4,
//!   V = 2 of 8 pixels (with 3 vectors and 12 sums the compiler spilled registers inside the
//!   loop: 7% slower step, measured); AVX-512 (32 registers): B = 8, V = 2 of 16 pixels;
//! - **∂L/∂w** as an implicit matrix product `dw (C·9 × O) += x-taps · ∂L/∂yᵀ`: T taps × 2
//!   vectors of output channels in 2·T registers (AVX2: 6 taps × 16 channels; AVX-512: 12
//!   taps × 32 channels); each pixel broadcasts the T taps' input values from the padded
//!   image and loads ∂L/∂y's channels from its (H·W × O) transpose.
//!
//! Nothing is packed: the weight is read where it lies (B rows, C·9 apart), the padded image
//! (C × (H+2) × (W+2)) is made once per image, and the working set of a tile stays in L1.
//! [`Width`] says which kernel a geometry gets on this CPU: for the forward pass and ∂L/∂x the
//! 512-bit one where the rows are whole 16-pixel vectors and the CPU has AVX-512F, the 256-bit
//! one where they are whole 8-pixel vectors on a CPU without AVX-512 (on AVX-512 CPUs rows of
//! 8 or 24 pixels keep `im2col` + `gemm`, whose kernels are 16 wide), else none; ∂L/∂w, pixel
//! by pixel, takes the CPU's widest kernel on any row of 8·k pixels. Where Winograd fits
//! ([`super::winograd`]: 16 or more input channels, an even height), it runs instead.

use candle_core::{Result, bail};

use super::super::gemm::count_flop;
use super::geometry::ConvGeom;

/// The vector width of a direct kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::model::kernels::conv) enum Width {
    /// 256-bit vectors of 8 values, AVX2 + FMA.
    Avx2,
    /// 512-bit vectors of 16 values, AVX-512F.
    Avx512,
}

impl Width {
    /// Values per vector: for the forward and ∂L/∂x kernels the output row's length must be a
    /// multiple (∂L/∂w goes pixel by pixel and takes any row of the shape).
    pub(super) fn lanes(self) -> usize {
        match self {
            Self::Avx2 => 8,
            Self::Avx512 => 16,
        }
    }

    /// Output channels per forward register tile: O (or C for ∂L/∂x) must be a multiple.
    pub(super) fn out_block(self) -> usize {
        match self {
            Self::Avx2 => 4,
            Self::Avx512 => 8,
        }
    }

    /// Output channels per ∂L/∂w register tile (two vectors): O must be a multiple.
    fn weight_block(self) -> usize {
        2 * self.lanes()
    }

    /// Whether this CPU has the instructions (ignoring the switches in [`cpu`]).
    pub(super) fn runs_here(self) -> bool {
        let c = detect();
        match self {
            Self::Avx2 => c.avx2,
            Self::Avx512 => c.avx512,
        }
    }
}

/// The direct kernels' instruction sets on this CPU.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Cpu {
    /// AVX2 and FMA.
    pub(super) avx2: bool,
    /// AVX-512F.
    pub(super) avx512: bool,
}

/// The instruction sets the vector kernels (direct and [`super::winograd`]) may use,
/// checked once: what the CPU has, and AVX2 alone with `PRETEXT_DIRECT_CONV=avx2` (the
/// kernels a CPU without AVX-512 would get: for comparisons).
pub(super) fn vector_cpu() -> Cpu {
    static CPU: std::sync::OnceLock<Cpu> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| {
        let mut c = detect();
        if std::env::var("PRETEXT_DIRECT_CONV").is_ok_and(|v| v == "avx2") {
            c.avx512 = false;
        }
        c
    })
}

/// The instruction sets the direct kernels may use: [`vector_cpu`], or none with
/// `PRETEXT_NO_DIRECT_CONV=1`.
fn cpu() -> Cpu {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *OFF.get_or_init(|| super::super::switch_on("PRETEXT_NO_DIRECT_CONV")) {
        return Cpu::default();
    }
    vector_cpu()
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Cpu {
    use std::arch::is_x86_feature_detected as has;
    Cpu {
        avx2: has!("avx2") && has!("fma"),
        avx512: has!("avx512f"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Cpu {
    Cpu::default()
}

impl ConvGeom {
    /// A 3×3 convolution with stride 1 and padding 1 on rows of whole 8-pixel vectors.
    fn direct_shape(&self) -> bool {
        self.k == 3 && self.stride == 1 && self.pad == 1 && self.w >= 8 && self.w.is_multiple_of(8)
    }

    /// The kernel that convolves this geometry's input into `out` channels here, if any.
    fn conv_width(&self, out: usize) -> Option<Width> {
        if !self.direct_shape() {
            return None;
        }
        let c = cpu();
        let fits = |w: Width| self.w.is_multiple_of(w.lanes()) && out.is_multiple_of(w.out_block());
        if c.avx512 {
            fits(Width::Avx512).then_some(Width::Avx512)
        } else {
            (c.avx2 && fits(Width::Avx2)).then_some(Width::Avx2)
        }
    }

    /// The kernel that makes ∂L/∂w here, if any.
    fn weight_width(&self) -> Option<Width> {
        if !self.direct_shape() {
            return None;
        }
        let c = cpu();
        // Pixel by pixel: any row length of the shape will do.
        let fits = |w: Width| self.o.is_multiple_of(w.weight_block());
        if c.avx512 {
            fits(Width::Avx512).then_some(Width::Avx512)
        } else {
            (c.avx2 && fits(Width::Avx2)).then_some(Width::Avx2)
        }
    }

    /// Whether the forward pass runs [`forward_image`] here.
    pub(super) fn direct_forward(&self) -> bool {
        self.conv_width(self.o).is_some()
    }

    /// Whether ∂L/∂w runs [`weight_image`] here.
    pub(super) fn direct_weight(&self) -> bool {
        self.weight_width().is_some()
    }

    /// Whether ∂L/∂x runs [`forward_image`] here, as the convolution of ∂L/∂y with the
    /// turned-round weight (C output channels).
    pub(super) fn direct_input(&self) -> bool {
        self.conv_width(self.c).is_some()
    }
}

/// Values of one channel of a zero-padded map, (H+2) × (W+2).
pub(super) fn padded_plane(g: &ConvGeom) -> usize {
    (g.h + 2) * (g.w + 2)
}

/// The first `len` values of a working buffer ([`super::Work`]).
pub(super) fn take<'a>(buf: &'a mut [f32], len: usize, what: &str) -> Result<&'a mut [f32]> {
    let have = buf.len();
    match buf.get_mut(..len) {
        Some(b) => Ok(b),
        None => bail!("convolution: the {what} buffer holds {have} values, needs {len}"),
    }
}

/// ∂L/∂y `dy` (O, H·W) transposed to (H·W × O), one pixel's channels side by side, in the
/// first O·H·W values of `buf`: what the ∂L/∂w kernels load a vector of channels from.
///
/// # Errors
/// If `buf` holds fewer than `dy.len()` values.
pub(super) fn transposed_gradient<'a>(
    dy: &[f32],
    o: usize,
    buf: &'a mut [f32],
) -> Result<&'a mut [f32]> {
    let dyt = take(buf, dy.len(), "transposed gradient")?;
    let hw = dy.len() / o.max(1);
    if hw * o != dy.len() {
        bail!(
            "transposed gradient: {} values are not {o} planes",
            dy.len()
        );
    }
    #[cfg(target_arch = "x86_64")]
    if vector_cpu().avx512 && o.is_multiple_of(16) && hw.is_multiple_of(16) {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX-512; `dy` and `dyt` hold O·H·W values, O and H·W multiples
        // of 16.
        unsafe {
            transpose_blocks(dy, o, hw, dyt);
        }
        return Ok(dyt);
    }
    transpose_rows(dy, o, hw, dyt);
    Ok(dyt)
}

/// [`transposed_gradient`]'s transpose in 16×16 blocks held in registers: 16 loads of 16
/// pixels of 16 channels, [`transpose16`], 16 stores of one
/// pixel's 16 channels (the eight-channel loop below wrote a value at a time: 1.5% of a step
/// at the 16 px views).
///
/// # Safety
/// The CPU has AVX-512F; `dy` and `dyt` hold `o`·`hw` values, `o` and `hw` multiples of 16.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_blocks(dy: &[f32], o: usize, hw: usize, dyt: &mut [f32]) {
    use std::arch::x86_64::{_mm512_loadu_ps, _mm512_storeu_ps};
    let (src, dst) = (dy.as_ptr(), dyt.as_mut_ptr());
    for cb in (0..o).step_by(16) {
        for pb in (0..hw).step_by(16) {
            // SAFETY: channels cb..cb + 16 ≤ O and pixels pb..pb + 16 ≤ H·W.
            let rows =
                std::array::from_fn(|k| unsafe { _mm512_loadu_ps(src.add((cb + k) * hw + pb)) });
            for (j, v) in transpose16(rows).into_iter().enumerate() {
                // SAFETY: pixel pb + j < H·W, its channels cb..cb + 16 ≤ O.
                unsafe { _mm512_storeu_ps(dst.add((pb + j) * o + cb), v) };
            }
        }
    }
}

/// The 16×16 transpose of 16 vectors: `out[j][i] = rows[i][j]` (the images-along-the-lanes
/// Winograd kernels and [`transpose_blocks`]). Two rounds of in-block unpacks make each 128-bit
/// block a 4×4 transpose of its group of four rows; two rounds of block shuffles gather a
/// column's four blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn transpose16(
    rows: [std::arch::x86_64::__m512; 16],
) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::{
        __m512, _mm512_castpd_ps, _mm512_castps_pd, _mm512_setzero_ps, _mm512_shuffle_f32x4,
        _mm512_unpackhi_pd, _mm512_unpackhi_ps, _mm512_unpacklo_pd, _mm512_unpacklo_ps,
    };
    let r = rows;
    // t[2k], t[2k+1]: rows 2k and 2k+1 interleaved, the low and high pairs of each block.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i & 1 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4g + e], block b: column 4b + e of rows 4g … 4g + 3.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, e) = (i / 4, i % 4);
        let (a, b) = (
            _mm512_castps_pd(t[4 * g + (e >> 1)]),
            _mm512_castps_pd(t[4 * g + 2 + (e >> 1)]),
        );
        _mm512_castpd_ps(if e & 1 == 0 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    // Column 4b + e: blocks b of u[e], u[4 + e], u[8 + e], u[12 + e].
    let mut out = [_mm512_setzero_ps(); 16];
    for e in 0..4 {
        let lo01 = _mm512_shuffle_f32x4::<0x44>(u[e], u[4 + e]);
        let hi01 = _mm512_shuffle_f32x4::<0xEE>(u[e], u[4 + e]);
        let lo23 = _mm512_shuffle_f32x4::<0x44>(u[8 + e], u[12 + e]);
        let hi23 = _mm512_shuffle_f32x4::<0xEE>(u[8 + e], u[12 + e]);
        out[e] = _mm512_shuffle_f32x4::<0x88>(lo01, lo23);
        out[4 + e] = _mm512_shuffle_f32x4::<0xDD>(lo01, lo23);
        out[8 + e] = _mm512_shuffle_f32x4::<0x88>(hi01, hi23);
        out[12 + e] = _mm512_shuffle_f32x4::<0xDD>(hi01, hi23);
    }
    out
}

/// [`transposed_gradient`]'s transpose without AVX-512, or for channel or pixel counts that
/// are not multiples of 16.
fn transpose_rows(dy: &[f32], o: usize, hw: usize, dyt: &mut [f32]) {
    // Eight channels at a time: eight planes read in step, each pixel's eight values written
    // side by side (twice as fast as a plain loop, which wrote with a stride of O values, and
    // as the `transpose` crate's blocks, on 32–128 channels of 8×8 to 32×32 maps).
    const BLOCK: usize = 8;
    let whole = o / BLOCK * BLOCK;
    for cb in (0..whole).step_by(BLOCK) {
        let planes: [&[f32]; BLOCK] =
            std::array::from_fn(|k| &dy[(cb + k) * hw..(cb + k + 1) * hw]);
        for (p, out) in dyt.chunks_exact_mut(o).enumerate() {
            for (k, d) in out[cb..cb + BLOCK].iter_mut().enumerate() {
                *d = planes[k][p];
            }
        }
    }
    for c in whole..o {
        for (p, v) in dy[c * hw..(c + 1) * hw].iter().enumerate() {
            dyt[p * o + c] = *v;
        }
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
    let Some(width) = g.conv_width(g.o) else {
        bail!("direct convolution: not for {g:?} on this CPU");
    };
    forward_with(width, g, w, x, y, accumulate, pad)
}

/// [`forward_image`] with the kernel of `width`.
///
/// # Errors
/// If the slices do not have the geometry's sizes, or the CPU or the geometry does not allow
/// that kernel.
fn forward_with(
    width: Width,
    g: &ConvGeom,
    w: &[f32],
    x: &[f32],
    y: &mut [f32],
    accumulate: bool,
    pad: &mut [f32],
) -> Result<()> {
    if !(g.direct_shape()
        && width.runs_here()
        && g.w.is_multiple_of(width.lanes())
        && g.o.is_multiple_of(width.out_block()))
    {
        bail!("direct convolution: {width:?} not for {g:?} on this CPU");
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
    // SAFETY: the CPU has the width's instructions, the row length and channels are multiples
    // of its vector and block, and the sizes were checked above; the kernels read and write
    // only inside them (see `ymm::forward`).
    unsafe {
        match width {
            Width::Avx2 => ymm::forward(g, w, padded, y, accumulate),
            Width::Avx512 => zmm::forward(g, w, padded, y, accumulate),
        }
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
    let Some(width) = g.weight_width() else {
        bail!("direct convolution: not for {g:?} on this CPU");
    };
    weight_with(width, g, x, dy, dw, work)
}

/// [`weight_image`] with the kernel of `width`.
///
/// # Errors
/// As [`forward_with`].
fn weight_with(
    width: Width,
    g: &ConvGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    work: &mut super::Work,
) -> Result<()> {
    if !(g.direct_shape() && width.runs_here() && g.o.is_multiple_of(width.weight_block())) {
        bail!("direct convolution: {width:?} not for {g:?} on this CPU");
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
    let dyt = transposed_gradient(dy, g.o, &mut work.product)?;
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: the CPU has the width's instructions, O is a multiple of its block, and the
    // sizes were checked above; the kernels read and write only inside them (see
    // `ymm::weight`).
    unsafe {
        match width {
            Width::Avx2 => ymm::weight(g, padded, dyt, dw),
            Width::Avx512 => zmm::weight(g, padded, dyt, dw),
        }
    }
    count_flop(2 * (g.o * g.c * 9 * hw) as u64);
    Ok(())
}

/// Rows of output a band covers: its padded input (C × (rows + 2) × (W + 2)) within about
/// 96 KiB, so every output-channel block of the band finds it in L2.
#[cfg(target_arch = "x86_64")]
fn band_rows(g: &ConvGeom) -> usize {
    let row = g.c * (g.w + 2) * 4;
    ((96 << 10) / row.max(1)).saturating_sub(2).clamp(1, g.h)
}

/// The offset of each tap r = (c, ky, kx) in the padded image, for output pixel (0, 0): C·9
/// values.
#[cfg(target_arch = "x86_64")]
fn tap_offsets(g: &ConvGeom) -> Vec<usize> {
    let (pw, plane) = (g.w + 2, (g.h + 2) * (g.w + 2));
    (0..g.c * 9)
        .map(|r| (r / 9) * plane + (r % 9 / 3) * pw + r % 3)
        .collect()
}

/// The kernels for one vector width: `$feature` the target features, `$v` the vector type,
/// `$lanes` its values, `$block` output channels per forward tile, `$taps` taps per ∂L/∂w
/// tile, then the intrinsics for zero, unaligned load and store, broadcast, add and fused
/// multiply-add.
#[cfg(target_arch = "x86_64")]
macro_rules! direct_kernels {
    (
        $module:ident, $feature:literal, $v:ident, $lanes:literal, $block:literal, $taps:literal,
        $zero:ident, $load:ident, $store:ident, $set1:ident, $add:ident, $fma:ident
    ) => {
        #[allow(unsafe_code)]
        mod $module {
            use std::arch::x86_64::{$add, $fma, $load, $set1, $store, $v, $zero};

            use super::{ConvGeom, band_rows, tap_offsets};

            /// Values per vector.
            const LANES: usize = $lanes;
            /// Output channels per forward tile.
            const OUT_BLOCK: usize = $block;
            /// Taps (rows of C·9) per ∂L/∂w tile.
            const TAPS: usize = $taps;

            /// What every forward tile of one image reads.
            #[derive(Clone, Copy)]
            struct Image<'a> {
                /// The weight, (O, C, 3, 3).
                w: &'a [f32],
                /// The padded input, (C, H + 2, W + 2).
                xp: &'a [f32],
                /// [`tap_offsets`], C·9 values.
                offs: &'a [usize],
                /// Values per output plane, H·W.
                hw: usize,
            }

            /// The whole image, band by band, output-channel block by block, tile by tile.
            ///
            /// # Safety
            /// The CPU has the module's features; `w` holds O·C·9 values, `xp`
            /// C·(H+2)·(W+2), `y` O·H·W; W a multiple of the lanes, O of the block.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn forward(
                g: &ConvGeom,
                w: &[f32],
                xp: &[f32],
                y: &mut [f32],
                acc: bool,
            ) {
                let per_row = g.w / LANES;
                let band = band_rows(g);
                let offs = tap_offsets(g);
                let image = Image {
                    w,
                    xp,
                    offs: &offs,
                    hw: g.h * g.w,
                };
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
                            // SAFETY: every vector lies inside its row; the caller's sizes.
                            unsafe {
                                if left >= 2 {
                                    tile::<2>(&image, y, ob, [at(0), at(1)], acc);
                                    v += 2;
                                } else {
                                    tile::<1>(&image, y, ob, [at(0)], acc);
                                    v += 1;
                                }
                            }
                        }
                    }
                    r0 = r1;
                }
            }

            /// Output channels `ob..ob + OUT_BLOCK` at `V` vectors: `at[v] = (offset of the
            /// vector's first pixel in a padded input plane (row r + 1 − 1, column q + 1 − 1:
            /// the tap (0, 0)), offset in an output plane)`.
            ///
            /// # Safety
            /// As [`forward`]; `ob + OUT_BLOCK ≤ O`, each vector inside its output row.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn tile<const V: usize>(
                image: &Image<'_>,
                y: &mut [f32],
                ob: usize,
                at: [(usize, usize); V],
                accumulate: bool,
            ) {
                let Image { w, xp, offs, hw } = *image;
                let wrow = offs.len();
                let mut acc = [[$zero(); V]; OUT_BLOCK];
                let wp = w.as_ptr().wrapping_add(ob * wrow);
                let xb = xp.as_ptr();
                // One step per tap (c, ky, kx), a loop the compiler keeps as a loop: unrolled
                // over a channel's nine taps it hoisted the weights' broadcasts and spilled
                // them to the stack.
                for (s, &off) in offs.iter().enumerate() {
                    // SAFETY: tap s = (c, ky, kx) of output pixels (r, q..q+LANES) is padded
                    // input (c, r + ky, q + kx ..= q + kx + LANES − 1), inside the plane as
                    // q + LANES ≤ W and r + 2 ≤ H + 1; the weight rows ob..ob+OUT_BLOCK hold
                    // C·9 values each.
                    unsafe {
                        let mut xv = [$zero(); V];
                        for (v, a) in xv.iter_mut().zip(&at) {
                            *v = $load(xb.add(a.0 + off));
                        }
                        for (i, row) in acc.iter_mut().enumerate() {
                            let b = $set1(*wp.add(i * wrow + s));
                            for (s, xv) in row.iter_mut().zip(&xv) {
                                *s = $fma(b, *xv, *s);
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
                            let v = if accumulate { $add($load(dst), *s) } else { *s };
                            $store(dst, v);
                        }
                    }
                }
            }

            /// `dw (C·9 × O) += x-taps · dyt`: 2·LANES output channels × TAPS taps at a time
            /// over every pixel.
            ///
            /// # Safety
            /// The CPU has the module's features; `xp` C·(H+2)·(W+2), `dyt` H·W·O, `dw`
            /// C·9·O values; O a multiple of 2·LANES.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn weight(g: &ConvGeom, xp: &[f32], dyt: &[f32], dw: &mut [f32]) {
                let offs = tap_offsets(g);
                let rows = g.c * 9;
                for ob in (0..g.o).step_by(2 * LANES) {
                    let mut r = 0;
                    while r < rows {
                        let left = rows - r;
                        // C·9 rows are a multiple of 3: whole tiles, then at most one of 6
                        // and one of 3.
                        let n = if left >= TAPS {
                            TAPS
                        } else if left >= 6 {
                            6
                        } else {
                            3.min(left)
                        };
                        // SAFETY: taps r..r+n ≤ C·9, channels ob..ob+2·LANES ≤ O; the
                        // caller's sizes.
                        unsafe {
                            match n {
                                3 => weight_tile::<3>(g, xp, dyt, dw, ob, r, &offs),
                                6 => weight_tile::<6>(g, xp, dyt, dw, ob, r, &offs),
                                _ => weight_tile::<TAPS>(g, xp, dyt, dw, ob, r, &offs),
                            }
                        }
                        r += n;
                    }
                }
            }

            /// Taps `r..r + T` × output channels `ob..ob + 2·LANES`, summed over every pixel.
            ///
            /// # Safety
            /// As [`weight`]; `r + T ≤ C·9`, `ob + 2·LANES ≤ O`.
            #[target_feature(enable = $feature)]
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
                let mut acc: [[$v; 2]; T] = [[$zero(); 2]; T];
                let xb = xp.as_ptr();
                let db = dyt.as_ptr().wrapping_add(ob);
                for py in 0..g.h {
                    for px in 0..g.w {
                        let base = py * pw + px;
                        let p = py * g.w + px;
                        // SAFETY: pixel p < H·W, channels ob..ob+2·LANES ≤ O; tap (c, ky, kx)
                        // of pixel (py, px) is padded input (py + ky, px + kx), in the plane.
                        unsafe {
                            let d0 = $load(db.add(p * o));
                            let d1 = $load(db.add(p * o + LANES));
                            for (a, &t) in acc.iter_mut().zip(&off) {
                                let b = $set1(*xb.add(t + base));
                                a[0] = $fma(b, d0, a[0]);
                                a[1] = $fma(b, d1, a[1]);
                            }
                        }
                    }
                }
                let dp = dw.as_mut_ptr();
                for (j, a) in acc.iter().enumerate() {
                    // SAFETY: row r + j < C·9, channels ob..ob+2·LANES ≤ O.
                    unsafe {
                        let dst = dp.add((r + j) * o + ob);
                        $store(dst, $add($load(dst), a[0]));
                        let dst = dst.add(LANES);
                        $store(dst, $add($load(dst), a[1]));
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
direct_kernels!(
    ymm,
    "avx2,fma",
    __m256,
    8,
    4,
    6,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_add_ps,
    _mm256_fmadd_ps
);

#[cfg(target_arch = "x86_64")]
direct_kernels!(
    zmm,
    "avx512f",
    __m512,
    16,
    8,
    12,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_add_ps,
    _mm512_fmadd_ps
);

#[cfg(test)]
pub(super) mod tests {
    use super::{ConvGeom, Width, forward_with, padded_plane, transposed_gradient, weight_with};

    #[allow(clippy::print_stderr)] // says when this CPU could not check it
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_transpose_turns_rows_into_columns() {
        if !super::vector_cpu().avx512 {
            eprintln!("skipping: this CPU has no AVX-512");
            return;
        }
        let src: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut got = vec![0f32; 256];
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX-512 (checked above); both buffers hold 16 rows of 16.
        unsafe {
            use std::arch::x86_64::{_mm512_loadu_ps, _mm512_storeu_ps};
            let rows = std::array::from_fn(|i| _mm512_loadu_ps(src.as_ptr().add(16 * i)));
            for (j, col) in super::transpose16(rows).into_iter().enumerate() {
                _mm512_storeu_ps(got.as_mut_ptr().add(16 * j), col);
            }
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(got[16 * j + i], src[16 * i + j], "({i}, {j})");
            }
        }
    }

    /// ∂L/∂y transposed — in 16×16 register blocks where the CPU has AVX-512 and both counts
    /// are multiples of 16, else in blocks of eight channels and the rest one by one — into a
    /// buffer longer than it needs; and a buffer too short refused.
    #[test]
    fn transposed_gradient_puts_each_pixels_channels_side_by_side() {
        for (o, hw) in [
            (1, 7),
            (8, 64),
            (13, 5),
            (32, 256),
            (20, 16),
            (128, 16),
            (64, 64),
            (16, 48),
        ] {
            let dy = values(o * hw, 9);
            let mut buf = vec![f32::NAN; o * hw + 3];
            let dyt = transposed_gradient(&dy, o, &mut buf).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(dyt.len(), o * hw);
            for c in 0..o {
                for p in 0..hw {
                    assert_eq!(
                        dyt[p * o + c],
                        dy[c * hw + p],
                        "O {o}, pixel {p}, channel {c}"
                    );
                }
            }
        }
        assert!(transposed_gradient(&values(16, 1), 2, &mut [0f32; 15]).is_err());
    }

    /// Reproducible values in [−1, 1) (also the Winograd tests').
    pub(in crate::model::kernels::conv) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    /// The input value at (c, r, q) of `x` (C, H, W), zero outside.
    fn at(g: &ConvGeom, x: &[f32], c: usize, r: isize, q: isize) -> f64 {
        if r < 0 || q < 0 || r >= g.h as isize || q >= g.w as isize {
            return 0.0;
        }
        f64::from(x[(c * g.h + r as usize) * g.w + q as usize])
    }

    /// `conv3×3(x, w)` (O, H, W) and `∂L/∂w` (C·9 × O) for ∂L/∂y = `dy`, summed in f64.
    fn reference(g: &ConvGeom, w: &[f32], x: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0f64; g.o * g.h * g.w];
        let mut dw = vec![0f64; g.c * 9 * g.o];
        for o in 0..g.o {
            for r in 0..g.h {
                for q in 0..g.w {
                    let p = (o * g.h + r) * g.w + q;
                    for c in 0..g.c {
                        for t in 0..9 {
                            let v = at(g, x, c, (r + t / 3) as isize - 1, (q + t % 3) as isize - 1);
                            y[p] += f64::from(w[(o * g.c + c) * 9 + t]) * v;
                            dw[(c * 9 + t) * g.o + o] += f64::from(dy[p]) * v;
                        }
                    }
                }
            }
        }
        (y, dw)
    }

    /// `r + b`, value by value: what an accumulating kernel should leave in `b`.
    pub(in crate::model::kernels::conv) fn plus(r: &[f64], b: &[f32]) -> Vec<f64> {
        r.iter().zip(b).map(|(r, b)| r + f64::from(*b)).collect()
    }

    /// `got` against `want` to 1e-4 relative (plus 1e-4 absolute), value by value.
    pub(in crate::model::kernels::conv) fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (f64::from(*g) - w).abs();
            assert!(
                err <= 1e-4 * (1.0 + w.abs()),
                "{what}[{i}]: {g} against {w}"
            );
        }
    }

    #[allow(clippy::print_stderr)] // says which widths this CPU could not check
    /// Both kernels of every width this CPU runs, against sums in f64, for geometries with
    /// one and several vectors per row, tiles left over in both directions, several bands
    /// of rows (96 channels) and a channel count whose taps leave partial ∂L/∂w tiles.
    #[test]
    fn direct_kernels_match_the_definition() {
        let shapes = [
            (3, 32, 16, 16),
            (16, 64, 5, 32),
            (40, 8, 4, 16),
            (4, 16, 6, 24),
            (13, 32, 3, 48),
            (96, 32, 12, 32),
            (8, 4, 2, 8),
            (4, 16, 5, 24),
        ];
        let mut ran = 0;
        for width in [Width::Avx2, Width::Avx512] {
            if !width.runs_here() {
                eprintln!("skipping {width:?}: this CPU does not have it");
                continue;
            }
            for (c, o, h, wd) in shapes {
                let g = ConvGeom {
                    n: 1,
                    c,
                    h,
                    w: wd,
                    o,
                    k: 3,
                    stride: 1,
                    pad: 1,
                };
                let (w, x, dy) = (
                    values(o * c * 9, 1),
                    values(g.in_image(), 2),
                    values(g.out_image(), 3),
                );
                let (y_ref, dw_ref) = reference(&g, &w, &x, &dy);
                // Exactly the values the kernels may touch, then NaN: a read past them shows.
                let tail = |len: usize| {
                    let mut v = vec![0f32; len];
                    v.extend([f32::NAN; 64]);
                    v
                };
                let mut pad = tail(g.c * padded_plane(&g));
                let fits = wd % width.lanes() == 0 && o % width.out_block() == 0;
                let mut y = values(g.out_image(), 4);
                let before = y.clone();
                let done = forward_with(width, &g, &w, &x, &mut y, true, &mut pad);
                assert_eq!(done.is_ok(), fits, "{width:?} forward on {g:?}: {done:?}");
                if fits {
                    close(
                        &y,
                        &plus(&y_ref, &before),
                        &format!("{width:?} forward + y on {g:?}"),
                    );
                    forward_with(width, &g, &w, &x, &mut y, false, &mut pad)
                        .unwrap_or_else(|e| panic!("{e}"));
                    close(&y, &y_ref, &format!("{width:?} forward on {g:?}"));
                    ran += 1;
                }
                let fits = o % width.weight_block() == 0;
                let mut work = super::super::Work {
                    col: tail(g.c * padded_plane(&g)),
                    product: tail(g.o * g.h * g.w),
                };
                let start = values(g.c * 9 * g.o, 5);
                let mut dw = start.clone();
                let done = weight_with(width, &g, &x, &dy, &mut dw, &mut work);
                assert_eq!(done.is_ok(), fits, "{width:?} ∂L/∂w on {g:?}: {done:?}");
                if fits {
                    close(
                        &dw,
                        &plus(&dw_ref, &start),
                        &format!("{width:?} ∂L/∂w on {g:?}"),
                    );
                    ran += 1;
                }
            }
        }
        if Width::Avx2.runs_here() {
            assert!(ran >= 10, "only {ran} kernels ran");
        }
    }
}
