//! The stride-2 form on 8×8 maps (4×4 outputs: l3.c1 of the 16 px views, 64 → 128 channels:
//! forward, ∂L/∂x and ∂L/∂w) with the images along the lanes, on AVX-512.
//!
//! An 8×8 map convolved with stride 2 has 2×2 tiles of 2×2 output pixels, four per image: too
//! few to fill a vector with tiles of one image, so the tiled paths of [`super`] do not take
//! it and `gemm` did (36 multiplications per output pixel and channel pair, on short rows).
//! Here the lanes take images, a chunk being one vector of 16 images, and the four tiles
//! (i, j) of each image are four sets of columns. The stride-2 form's transforms
//! ([`super::Algo::Stride2`], every coefficient 0 or ±1) make 25 products per tile and channel
//! pair instead of 36:
//!
//! 1. **input transform**: per channel, the 16 images' 64 values (four 16-value blocks each,
//!    as NCHW lays them out) are transposed in registers ([`super::super::direct::transpose16`])
//!    into 64 vectors, one per pixel across the images; `V = Bᵀ d B` of tile (i, j)'s 5×5
//!    patch (padded rows and columns 4i … 4i + 4 and 4j … 4j + 4; the padding is the first
//!    tiles' top row and left column);
//! 2. **product**: the shared `M[ξ][o][k] = Σ_c U[ξ][c][o] · V[ξ][c][k]`
//!    ([`super::zmm::product`]), its 32 columns two tiles of the 16 images: tiles (0, 0) and
//!    (0, 1), then (1, 0) and (1, 1);
//! 3. **output transform** `Aᵀ M A` of each tile makes its 2×2 pixels; an image's 16 output
//!    pixels, transposed back, are one 16-value row per image and output channel.
//!
//! ∂L/∂x is the forward algorithm turned round, as [`super::strided_input_images`]: Z from
//! each image's 4×4 output gradient (transposed as the input is), the product with the
//! transposed weight transform, and each tile's patch gradient `B ∂L/∂V Bᵀ` summed into a 9×9
//! padded grid (the patches of neighbouring tiles share a row and a column), whose inner 8×8
//! is added into ∂L/∂x. ∂L/∂w is the stride-2 sums: the input transform above, Z with the
//! output channels along the lanes from each image's transposed gradient, and
//! `∂U[ξ][c][o] += Σ_k V · Z` ([`super::zmm`]'s `weight_product`), two tiles of the chunk's
//! images per call.
//!
//! Groups of [`GROUP`] images per call ([`super::super::ConvGeom::group`]).
//! `PRETEXT_NO_STRIDED_WINOGRAD=1` and `PRETEXT_NO_WINOGRAD=1` turn it off with the other
//! stride-2 paths; `PRETEXT_DIRECT_CONV=avx2` too, as it has no 256-bit form.

use candle_core::{Result, bail};

use super::super::super::gemm::count_flop;
use super::super::direct::{Width, take, transposed_gradient, vector_cpu};
use super::super::geometry::ConvGeom;
use super::{
    Algo, MIN_CHANNELS, Tiles, XI_S2, enabled, plane, strided_enabled, transform_len, whole_images,
};

/// Images per chunk: one 512-bit vector.
const IMAGES: usize = 16;

/// Columns of the shared product and ∂L/∂w code (two vectors): two tiles of a chunk's images.
const COLUMNS: usize = 2 * IMAGES;

/// Tiles per image: 2×2 tiles of 2×2 output pixels.
const TILES: usize = 4;

/// Images per group ([`super::super::ConvGeom::group`]): one chunk, so that a batch of 256
/// is 16 jobs.
pub(in crate::model::kernels::conv) const GROUP: usize = IMAGES;

/// Whether `g` is a map this path takes, whatever its channel counts allow of each pass: a
/// 3×3 convolution, stride 2, padding 1, of an 8×8 map with at least [`MIN_CHANNELS`] input
/// channels, on a CPU with AVX-512 ([`vector_cpu`]), Winograd and its stride-2 form not
/// turned off.
pub(super) fn shape(g: &ConvGeom) -> bool {
    g.k == 3
        && g.pad == 1
        && g.stride == 2
        && g.h == 8
        && g.w == 8
        && g.c >= MIN_CHANNELS
        && vector_cpu().avx512
        && enabled()
        && strided_enabled()
}

/// Whether the forward pass of `g` runs here: [`shape`], O a multiple of the 512-bit
/// product's output block.
pub(super) fn fits(g: &ConvGeom) -> bool {
    shape(g) && g.o.is_multiple_of(Width::Avx512.out_block())
}

/// Whether ∂L/∂x of `g` runs here: [`shape`], C (the turned product's outputs) a multiple of
/// the output block.
pub(super) fn input_fits(g: &ConvGeom) -> bool {
    shape(g) && g.c.is_multiple_of(Width::Avx512.out_block())
}

/// Whether ∂L/∂w of `g` runs here: [`shape`], O a multiple of two vectors.
pub(super) fn weight_fits(g: &ConvGeom) -> bool {
    shape(g) && g.o.is_multiple_of(COLUMNS)
}

/// Images per group ([`super::super::ConvGeom::group`]) where any pass of `g` runs here.
pub(in crate::model::kernels::conv) fn group(g: &ConvGeom) -> Option<usize> {
    (fits(g) || input_fits(g) || weight_fits(g)).then_some(GROUP)
}

/// Whether every pass of `g` runs here — then a group needs no im2col columns
/// ([`super::super::work`]).
pub(in crate::model::kernels::conv) fn all_passes(g: &ConvGeom) -> bool {
    fits(g) && input_fits(g) && weight_fits(g)
}

/// Values of one pair of tiles' ξ planes of `rows` rows.
fn pair_len(rows: usize) -> usize {
    XI_S2 * plane(rows, COLUMNS)
}

/// The working memory [`forward_images`] and [`input_images`] need for `g`: a chunk's
/// transformed input (or Z) and products (or ∂L/∂V), both pairs of tiles, in values.
pub(super) fn buffer_len(g: &ConvGeom) -> usize {
    2 * (pair_len(g.c) + pair_len(g.o))
}

/// The working memory [`weight_images`] needs in `work.col` (the chunk's transformed input,
/// both pairs, and one pair's Z) and `work.product` (its images' transposed gradients), in
/// values.
pub(super) fn weight_buffer_len(g: &ConvGeom) -> (usize, usize) {
    (
        2 * pair_len(g.c) + XI_S2 * plane(COLUMNS, g.o),
        IMAGES * g.out_image(),
    )
}

/// The products' view: the stride-2 form with `c` channels in and `o` out (the rest of the
/// tiling is not read by the shared product and ∂L/∂w code).
fn tiles(c: usize, o: usize) -> Tiles {
    Tiles {
        algo: Algo::Stride2,
        c,
        o,
        w: 4,
        hw: 16,
        in_w: 8,
        in_hw: 64,
        q: 2,
        s: 6,
        tiles: COLUMNS,
    }
}

/// The multiplications of `n` images' products, as the step's count has it (25 per tile and
/// channel pair, the definition's 36 × 25/36).
fn flop(g: &ConvGeom, n: usize) -> u64 {
    (2 * XI_S2 * TILES * g.c * g.o * n) as u64
}

/// `ys (N, O, 4, 4) = (accumulate ? ys : 0) + conv3×3/2(xs (N, C, 8, 8), w)`, `u` the weight's
/// transform (25·C·O values, [`super::transform_weight`] for `g`), 16 images at a time.
/// `buf` holds [`buffer_len`] values or more.
///
/// # Errors
/// If `g` does not [`fits`], or the slices do not have its sizes.
pub(super) fn forward_images(
    g: &ConvGeom,
    u: &[f32],
    xs: &[f32],
    ys: &mut [f32],
    accumulate: bool,
    buf: &mut [f32],
) -> Result<()> {
    if !fits(g) {
        bail!("winograd convolution (stride 2, 8×8 maps): not for {g:?} on this CPU");
    }
    if u.len() != transform_len(g) {
        bail!(
            "winograd convolution (stride 2, 8×8 maps): weight transform of {} values, not {} for {g:?}",
            u.len(),
            transform_len(g)
        );
    }
    let (inl, outl) = whole_images(g, xs.len(), ys.len())?;
    let n = xs.len() / inl;
    let t = tiles(g.c, g.o);
    let buf = take(buf, buffer_len(g), "Winograd")?;
    let (v, m) = buf.split_at_mut(2 * pair_len(g.c));
    for (xc, yc) in xs.chunks(IMAGES * inl).zip(ys.chunks_mut(IMAGES * outl)) {
        let k = xc.len() / inl;
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX-512 ([`fits`]), O is a multiple of the product's block;
        // `xc` holds k ≤ IMAGES images of C·64 values and `yc` k of O·16 (checked above), `v`
        // two pairs of 25 planes of C rows of COLUMNS and `m` two of O rows ([`pair_len`]),
        // `u` 25·C·O values.
        unsafe {
            zmm::input(g.c, xc, k, v);
            for (vp, mp) in v
                .chunks_exact(pair_len(g.c))
                .zip(m.chunks_exact_mut(pair_len(g.o)))
            {
                super::zmm::product(&t, u, vp, mp);
            }
            zmm::output(g.o, m, yc, k, accumulate);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (k, &t, u, &v, &m, yc, accumulate);
    }
    count_flop(flop(g, n));
    Ok(())
}

/// `dxs (N, C, 8, 8) += ∂L/∂x` from ∂L/∂y = `dys` (N, O, 4, 4) and `ut` the weight's
/// [`super::transposed_transform`] (25·O·C values), 16 images at a time: Z per tile, the
/// product summing over the output channels, and the patches' gradients. `buf` holds
/// [`buffer_len`] values or more.
///
/// # Errors
/// If `g` does not [`input_fits`], or the slices do not have its sizes.
pub(super) fn input_images(
    g: &ConvGeom,
    ut: &[f32],
    dys: &[f32],
    dxs: &mut [f32],
    buf: &mut [f32],
) -> Result<()> {
    if !input_fits(g) {
        bail!("winograd convolution (stride 2, 8×8 maps): ∂L/∂x not for {g:?} on this CPU");
    }
    if ut.len() != transform_len(g) {
        bail!(
            "winograd convolution (stride 2, 8×8 maps): transposed weight transform of {} values, not {} for {g:?}",
            ut.len(),
            transform_len(g)
        );
    }
    let (inl, outl) = whole_images(g, dxs.len(), dys.len())?;
    let n = dys.len() / outl;
    // The product's view: ∂L/∂y's O channels in, C out.
    let turned = tiles(g.o, g.c);
    let buf = take(buf, buffer_len(g), "Winograd strided ∂L/∂x")?;
    let (z, dv) = buf.split_at_mut(2 * pair_len(g.o));
    for (dyc, dxc) in dys.chunks(IMAGES * outl).zip(dxs.chunks_mut(IMAGES * inl)) {
        let k = dyc.len() / outl;
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX-512 ([`input_fits`]), C is a multiple of the product's
        // block; `dyc` holds k ≤ IMAGES images of O·16 values and `dxc` k of C·64 (checked
        // above), `z` two pairs of 25 planes of O rows of COLUMNS and `dv` two of C rows
        // ([`pair_len`]), `ut` 25·O·C values.
        unsafe {
            zmm::output_gradient(g.o, dyc, k, z);
            for (zp, dp) in z
                .chunks_exact(pair_len(g.o))
                .zip(dv.chunks_exact_mut(pair_len(g.c)))
            {
                super::zmm::product(&turned, ut, zp, dp);
            }
            zmm::patches(g.c, dv, dxc, k);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (k, &turned, ut, &z, &dv, dxc);
    }
    count_flop(flop(g, n));
    Ok(())
}

/// `du[ξ][c][o] += Σ_images Σ_tiles V[ξ][c] · Z[ξ][o]` for `xs` (N, C, 8, 8) and ∂L/∂y =
/// `dys` (N, O, 4, 4), 16 images at a time; [`super::weight_from_transform`] makes ∂L/∂w of
/// the sums. The chunk's transforms are made in `work.col`, its transposed gradients in
/// `work.product`.
///
/// # Errors
/// If `g` does not [`weight_fits`], or the slices or buffers do not have its sizes.
pub(super) fn weight_images(
    g: &ConvGeom,
    xs: &[f32],
    dys: &[f32],
    du: &mut [f32],
    work: &mut super::super::Work,
) -> Result<()> {
    if !weight_fits(g) {
        bail!("winograd convolution (stride 2, 8×8 maps): ∂L/∂w not for {g:?} on this CPU");
    }
    if du.len() != transform_len(g) {
        bail!(
            "winograd convolution (stride 2, 8×8 maps): {} transform sums, not {} for {g:?}",
            du.len(),
            transform_len(g)
        );
    }
    let (inl, outl) = whole_images(g, xs.len(), dys.len())?;
    let n = xs.len() / inl;
    let t = tiles(g.c, g.o);
    let (col_len, dyt_len) = weight_buffer_len(g);
    let col = take(&mut work.col, col_len, "Winograd")?;
    let (v, z) = col.split_at_mut(2 * pair_len(g.c));
    let dyt = take(&mut work.product, dyt_len, "transposed gradient")?;
    for (xc, dyc) in xs.chunks(IMAGES * inl).zip(dys.chunks(IMAGES * outl)) {
        let k = xc.len() / inl;
        for (dy, d) in dyc.chunks_exact(outl).zip(dyt.chunks_exact_mut(outl)) {
            transposed_gradient(dy, g.o, d)?;
        }
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX-512 ([`weight_fits`]), O is a multiple of two vectors;
        // `xc` holds k ≤ IMAGES images, `dyt` their k transposed gradients one after the
        // other (16 pixels of O each), `v` two pairs of 25 planes of C rows of COLUMNS
        // ([`pair_len`]), `z` 25 planes of COLUMNS rows of O, `du` 25·C·O values.
        unsafe {
            zmm::input(g.c, xc, k, v);
            for (pair, vp) in v.chunks_exact(pair_len(g.c)).enumerate() {
                zmm::weight_gradient(g.o, dyt, k, pair, z);
                super::zmm::weight_product(&t, vp, z, du, COLUMNS);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (k, &t, &v, &z, &dyt);
    }
    count_flop(flop(g, n));
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(super) mod zmm {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_loadu_ps, _mm512_setzero_ps, _mm512_storeu_ps, _mm512_sub_ps,
    };

    use super::super::super::direct::transpose16;
    use super::super::{XI_S2, plane};
    use super::{COLUMNS, IMAGES, TILES, pair_len};

    /// Values per vector.
    const LANES: usize = 16;

    /// Where tile `tile` (row-major, 0..4) of lane-image 0 starts in a pair of planes of
    /// `rows` rows: its pair, then its half of the COLUMNS.
    fn tile_at(tile: usize, rows: usize) -> usize {
        (tile / 2) * pair_len(rows) + (tile % 2) * IMAGES
    }

    /// The stride-2 form's `Bᵀ` applied to a patch's five values:
    /// `[x0 − x2, x2, x4 − x2, x1, x3]` (the module's docs of [`super::super`]).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn bt(x: [__m512; 5]) -> [__m512; 5] {
        [
            _mm512_sub_ps(x[0], x[2]),
            x[2],
            _mm512_sub_ps(x[4], x[2]),
            x[1],
            x[3],
        ]
    }

    /// `B` (the transpose of [`bt`]) applied to five values of ∂L/∂V:
    /// `[x0, x3, x1 − x0 − x2, x4, x2]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn b(x: [__m512; 5]) -> [__m512; 5] {
        [
            x[0],
            x[3],
            _mm512_sub_ps(_mm512_sub_ps(x[1], x[0]), x[2]),
            x[4],
            x[2],
        ]
    }

    /// `Aᵀ = [[1, 1, 0, 1, 0], [0, 1, 1, 0, 1]]` applied to five values.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn at(m: [__m512; 5]) -> [__m512; 2] {
        [
            _mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[3]),
            _mm512_add_ps(_mm512_add_ps(m[1], m[2]), m[4]),
        ]
    }

    /// `A = (Aᵀ)ᵀ` applied to a tile's two values of one row or column of its output
    /// gradient: `[d0, d0 + d1, d1, d0, d1]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn a(d: [__m512; 2]) -> [__m512; 5] {
        [d[0], _mm512_add_ps(d[0], d[1]), d[1], d[0], d[1]]
    }

    /// Loads `blocks` 16-value blocks of each of the first `n` images of `src` (images
    /// `image` values apart, the blocks from `at`), zeros for the lanes past `n`, and
    /// transposes them: value j of block b of every image, one vector each, at `16b + j`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; image k < n ≤ IMAGES of `src` holds `16·blocks` values from
    /// `at + k·image`; `out` holds 16·blocks vectors.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::model::kernels::conv::winograd) unsafe fn gather(
        src: *const f32,
        image: usize,
        at: usize,
        n: usize,
        blocks: usize,
        out: &mut [__m512],
    ) {
        for b in 0..blocks {
            // SAFETY: the caller's.
            let rows = std::array::from_fn(|i| unsafe {
                if i < n {
                    _mm512_loadu_ps(src.add(i * image + at + 16 * b))
                } else {
                    _mm512_setzero_ps()
                }
            });
            out[16 * b..16 * b + 16].copy_from_slice(&transpose16(rows));
        }
    }

    /// Step 1: `v[pair][ξ][ch][tile % 2 · 16 + k] = (Bᵀ d B)[ξ]` for image k < `n` of `xs`
    /// (n images of `c` channels of 64 values) and d the 5×5 padded patch of its tile in
    /// channel ch; lanes k ≥ n get the transform of zeros.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `xs` holds `n` ≤ IMAGES images of 64·c values, `v` two pairs of
    /// 25 planes of `c` rows of COLUMNS ([`pair_len`]).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn input(c: usize, xs: &[f32], n: usize, v: &mut [f32]) {
        let vp = v.as_mut_ptr();
        let mut px = [_mm512_setzero_ps(); 64];
        for ch in 0..c {
            // SAFETY: image k < n of `xs` holds channel ch's 64 values at k·64c + 64·ch.
            unsafe { gather(xs.as_ptr(), 64 * c, 64 * ch, n, 4, &mut px) };
            for tile in 0..TILES {
                let (i, j) = (tile / 2, tile % 2);
                // Patch value (r, s): pixel (4i − 1 + r, 4j − 1 + s), zero in the padding.
                let d = |r: usize, s: usize| {
                    let (y, x) = ((4 * i + r).wrapping_sub(1), (4 * j + s).wrapping_sub(1));
                    if y < 8 && x < 8 {
                        px[8 * y + x]
                    } else {
                        _mm512_setzero_ps()
                    }
                };
                // Bᵀ over the patch's rows, column by column, then over each row's columns.
                let cols: [[__m512; 5]; 5] =
                    std::array::from_fn(|s| bt(std::array::from_fn(|r| d(r, s))));
                let rows: [[__m512; 5]; 5] =
                    std::array::from_fn(|r| bt(std::array::from_fn(|s| cols[s][r])));
                let base = tile_at(tile, c) + ch * COLUMNS;
                for (r, row) in rows.into_iter().enumerate() {
                    for (s, val) in row.into_iter().enumerate() {
                        // SAFETY: plane ξ = 5r + s of the tile's pair holds row ch of COLUMNS
                        // values, the tile's half from `tile_at`.
                        unsafe {
                            _mm512_storeu_ps(vp.add(base + (5 * r + s) * plane(c, COLUMNS)), val);
                        }
                    }
                }
            }
        }
    }

    /// Step 3: each tile's `Aᵀ M A`, the images' 4×4 outputs of channel oi written to (or
    /// added into) `ys` (n images of `o` channels of 16 values), for images k < `n`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `m` holds two pairs of 25 planes of `o` rows of COLUMNS
    /// ([`pair_len`]), `ys` `n` ≤ IMAGES images of 16·o values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output(o: usize, m: &[f32], ys: &mut [f32], n: usize, acc: bool) {
        let mp = m.as_ptr();
        let yp = ys.as_mut_ptr();
        for oi in 0..o {
            let mut pixels = [_mm512_setzero_ps(); 16];
            for tile in 0..TILES {
                let base = tile_at(tile, o) + oi * COLUMNS;
                // SAFETY: plane ξ of the tile's pair holds row oi of COLUMNS values.
                let mv: [__m512; XI_S2] = std::array::from_fn(|xi| unsafe {
                    _mm512_loadu_ps(mp.add(base + xi * plane(o, COLUMNS)))
                });
                // Aᵀ over the rows, column by column (2 × 5), then over each row's columns.
                let cols: [[__m512; 2]; 5] =
                    std::array::from_fn(|s| at(std::array::from_fn(|r| mv[5 * r + s])));
                let (i, j) = (tile / 2, tile % 2);
                for r in 0..2 {
                    let row = at(std::array::from_fn(|s| cols[s][r]));
                    pixels[4 * (2 * i + r) + 2 * j] = row[0];
                    pixels[4 * (2 * i + r) + 2 * j + 1] = row[1];
                }
            }
            for (k, out) in transpose16(pixels).into_iter().enumerate().take(n) {
                // SAFETY: image k < n of `ys` holds channel oi's 16 values at k·16o + 16·oi.
                unsafe {
                    let dst = yp.add(k * 16 * o + 16 * oi);
                    let out = if acc {
                        _mm512_add_ps(_mm512_loadu_ps(dst), out)
                    } else {
                        out
                    };
                    _mm512_storeu_ps(dst, out);
                }
            }
        }
    }

    /// ∂L/∂x's Z: `z[pair][ξ][oi][tile % 2 · 16 + k] = (A dY Aᵀ)[ξ]` for image k < `n` of
    /// `dys` (n images of `o` channels of 16 values) and dY its tile's 2×2 output gradient in
    /// channel oi; lanes k ≥ n get zeros.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `dys` holds `n` ≤ IMAGES images of 16·o values, `z` two pairs of
    /// 25 planes of `o` rows of COLUMNS ([`pair_len`]).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_gradient(o: usize, dys: &[f32], n: usize, z: &mut [f32]) {
        let zp = z.as_mut_ptr();
        let mut d = [_mm512_setzero_ps(); 16];
        for oi in 0..o {
            // SAFETY: image k < n of `dys` holds channel oi's 16 values at k·16o + 16·oi.
            unsafe { gather(dys.as_ptr(), 16 * o, 16 * oi, n, 1, &mut d) };
            for tile in 0..TILES {
                let (i, j) = (tile / 2, tile % 2);
                let p = 4 * (2 * i) + 2 * j;
                // A over the rows, column by column, then over each row's columns.
                let cols = [a([d[p], d[p + 4]]), a([d[p + 1], d[p + 5]])];
                let base = tile_at(tile, o) + oi * COLUMNS;
                for (r, (c0, c1)) in cols[0].into_iter().zip(cols[1]).enumerate() {
                    for (s, val) in a([c0, c1]).into_iter().enumerate() {
                        // SAFETY: plane ξ = 5r + s of the tile's pair holds row oi of COLUMNS.
                        unsafe {
                            _mm512_storeu_ps(zp.add(base + (5 * r + s) * plane(o, COLUMNS)), val);
                        }
                    }
                }
            }
        }
    }

    /// ∂L/∂x's last step: per channel ci, each tile's patch gradient `B ∂V Bᵀ` summed into
    /// the 9×9 padded grid of the images' lanes, whose inner 8×8 is transposed back and added
    /// into `dxs` (n images of `c` channels of 64 values), for images k < `n`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `dv` holds two pairs of 25 planes of `c` rows of COLUMNS
    /// ([`pair_len`]), `dxs` `n` ≤ IMAGES images of 64·c values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn patches(c: usize, dv: &[f32], dxs: &mut [f32], n: usize) {
        let vp = dv.as_ptr();
        let xp = dxs.as_mut_ptr();
        for ci in 0..c {
            let mut grid = [[_mm512_setzero_ps(); 9]; 9];
            for tile in 0..TILES {
                let base = tile_at(tile, c) + ci * COLUMNS;
                // SAFETY: plane ξ of the tile's pair holds row ci of COLUMNS values.
                let e: [__m512; XI_S2] = std::array::from_fn(|xi| unsafe {
                    _mm512_loadu_ps(vp.add(base + xi * plane(c, COLUMNS)))
                });
                // B over the rows, column by column, then over each row's columns.
                let cols: [[__m512; 5]; 5] =
                    std::array::from_fn(|s| b(std::array::from_fn(|r| e[5 * r + s])));
                let (i, j) = (tile / 2, tile % 2);
                for r in 0..5 {
                    let row = b(std::array::from_fn(|s| cols[s][r]));
                    for (s, val) in row.into_iter().enumerate() {
                        let g = &mut grid[4 * i + r][4 * j + s];
                        *g = _mm512_add_ps(*g, val);
                    }
                }
            }
            for blk in 0..4 {
                // Image rows 2·blk and 2·blk + 1: grid rows 2·blk + 1 and 2·blk + 2.
                let rows: [__m512; 16] =
                    std::array::from_fn(|q| grid[2 * blk + 1 + q / 8][1 + q % 8]);
                for (k, val) in transpose16(rows).into_iter().enumerate().take(n) {
                    // SAFETY: image k < n of `dxs` holds channel ci's 64 values at
                    // k·64c + 64·ci.
                    unsafe {
                        let dst = xp.add(k * 64 * c + 64 * ci + 16 * blk);
                        _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), val));
                    }
                }
            }
        }
    }

    /// ∂L/∂w's Z for the tiles of pair `pair` (tiles 2·pair and 2·pair + 1):
    /// `z[ξ][tile % 2 · 16 + k][o] = (A dY Aᵀ)[ξ]` for image k < `n`, dY its tile's 2×2
    /// output gradient from `dyt` (the images' transposed gradients one after the other, 16
    /// pixels of `o` values each), a vector of output channels at a time; rows of images
    /// k ≥ n are zeros.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `dyt` holds `n` ≤ IMAGES images of 16·o values, `o` is a
    /// multiple of LANES, `z` holds 25 planes of COLUMNS rows of `o` ([`plane`]).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_gradient(
        o: usize,
        dyt: &[f32],
        n: usize,
        pair: usize,
        z: &mut [f32],
    ) {
        let zp = z.as_mut_ptr();
        let dp = dyt.as_ptr();
        for half in 0..2 {
            let tile = 2 * pair + half;
            let (i, j) = (tile / 2, tile % 2);
            let p = 4 * (2 * i) + 2 * j;
            for k in 0..IMAGES {
                let row = half * IMAGES + k;
                for ob in (0..o).step_by(LANES) {
                    // SAFETY: image k < n's pixels p … p + 5 lie in its 16 of `dyt`, their
                    // channels ob..ob + LANES ≤ O; z's plane ξ holds COLUMNS rows of O.
                    unsafe {
                        if k >= n {
                            for xi in 0..XI_S2 {
                                let at = xi * plane(COLUMNS, o) + row * o + ob;
                                _mm512_storeu_ps(zp.add(at), _mm512_setzero_ps());
                            }
                            continue;
                        }
                        let px = |q: usize| _mm512_loadu_ps(dp.add((k * 16 + q) * o + ob));
                        let cols = [a([px(p), px(p + 4)]), a([px(p + 1), px(p + 5)])];
                        for (r, (c0, c1)) in cols[0].into_iter().zip(cols[1]).enumerate() {
                            for (s, val) in a([c0, c1]).into_iter().enumerate() {
                                let at = (5 * r + s) * plane(COLUMNS, o) + row * o + ob;
                                _mm512_storeu_ps(zp.add(at), val);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::super::direct::tests::{plus, values};
    use super::super::tests::{check_forward, check_weight, close_to_scale, references};
    use super::super::{Algo, transform_weight, transposed_transform};
    use super::{
        ConvGeom, buffer_len, forward_images, input_images, weight_buffer_len, weight_images,
    };

    #[allow(clippy::print_stderr)] // says when this CPU could not check it
    /// Forward (written and added), ∂L/∂x (added into what was there) and ∂L/∂w against sums
    /// in f64, for batches that fill one chunk, several, and end inside one, with channel
    /// counts of the encoder's last stage and others; and the shapes it refuses.
    #[test]
    fn strided_eight_by_eight_maps_match_the_definition() {
        if !super::vector_cpu().avx512 || !super::enabled() || !super::strided_enabled() {
            eprintln!("skipping: this CPU has no AVX-512 (or the stride-2 form is off)");
            return;
        }
        // (images, C, O): l3.c1 at the 16 px views with a partial last chunk; a partial
        // chunk alone; exactly one chunk; 16 channels in, 32 out; 24 in, 64 out over three
        // chunks ending inside one.
        let cases = [(37, 64, 128), (5, 32, 32), (16, 16, 32), (40, 24, 64)];
        for (n, c, o) in cases {
            let g = ConvGeom {
                n,
                c,
                h: 8,
                w: 8,
                o,
                k: 3,
                stride: 2,
                pad: 1,
            };
            assert!(
                super::all_passes(&g) && super::group(&g) == Some(super::GROUP),
                "refuses {g:?}"
            );
            assert_eq!(Algo::of(&g), Algo::Stride2, "{g:?}");
            let w = values(o * c * 9, 1);
            let xs = values(n * g.in_image(), 2);
            let dys = values(n * g.out_image(), 3);
            let refs = references(&g, &w, &xs, &dys);
            let u = transform_weight(&g, &w);
            check_forward(&g, &u, &xs, &refs, buffer_len(&g), forward_images);
            // ∂L/∂x, added into what was there.
            let ut = transposed_transform(&g, &w);
            let before = values(n * g.in_image(), 5);
            let mut dx = before.clone();
            let mut buf = vec![f32::NAN; buffer_len(&g)];
            input_images(&g, &ut, &dys, &mut dx, &mut buf).unwrap_or_else(|e| panic!("{e}"));
            let want: Vec<f64> = refs.iter().flat_map(|[_, _, dx]| dx.clone()).collect();
            let want = plus(&want, &before);
            close_to_scale(&dx, &want, &format!("∂L/∂x of {g:?}"));
            // ∂L/∂w, in two runs of images (partial sums added as the engine does).
            check_weight(&g, &xs, &dys, &refs, weight_buffer_len(&g), weight_images);
        }
        // Refused: 12 output channels (forward and ∂L/∂w), 16 output channels (∂L/∂w only),
        // 12 input channels (∂L/∂x; and too few for Winograd), a 16×16 map, stride 1.
        let base = ConvGeom {
            n: 1,
            c: 32,
            h: 8,
            w: 8,
            o: 32,
            k: 3,
            stride: 2,
            pad: 1,
        };
        assert!(!super::fits(&ConvGeom { o: 12, ..base }));
        assert!(super::fits(&ConvGeom { o: 16, ..base }));
        assert!(!super::weight_fits(&ConvGeom { o: 16, ..base }));
        assert!(!super::input_fits(&ConvGeom { c: 12, ..base }));
        assert!(!super::input_fits(&ConvGeom { c: 20, ..base }));
        assert!(!super::shape(&ConvGeom {
            h: 16,
            w: 16,
            ..base
        }));
        assert!(!super::shape(&ConvGeom { stride: 1, ..base }));
    }
}
