//! F(4×4, 3×3) on 8×8 maps, stride 1, with the images along the lanes (l2.c2 of the 16 px
//! views, 64 channels; l3.c2 at 32 px, 128: forward, ∂L/∂x and ∂L/∂w), on AVX-512.
//!
//! An 8×8 map padded by one pixel is 2×2 tiles of F(4×4, 3×3), four per image: too few to fill
//! a vector with tiles of one image, so the tiled paths of [`super`] ran it as F(2×2, 3×3)
//! (16 tiles, one vector per image, two images per chunk): 4 products per output pixel and
//! channel pair, and 4 transformed values per pixel to write and read back. Here the lanes take
//! images, as [`super::whole`] does for 4×4 maps and [`super::whole_s2`] for the stride-2
//! convolution from 8×8 maps: a chunk is one vector of 16 images, and the four tiles (i, j)
//! of each image are four sets of columns — 2.25 products and values per pixel.
//!
//! The chunk runs one tile row (a pair of tiles) at a time, so that its transformed input and
//! products stay small (36 planes of C and of O rows of 32 columns: 0.6 MB for 64 channels):
//!
//! 1. **input transform**: per channel, the 16 images' rows 4i − 1 … 4i + 4 (three of the
//!    four 16-value blocks of two rows that NCHW lays out per channel) are transposed in
//!    registers ([`super::super::direct::transpose16`]) into one vector per pixel across the
//!    images; `V = Bᵀ d B` of tile (i, j)'s 6×6 patch (padded rows 4i … 4i + 5 and columns
//!    4j … 4j + 5: the padding is the first tile's top row or left column, the last one's
//!    bottom row or right column);
//! 2. **product**: the shared `M[ξ][o][k] = Σ_c U[ξ][c][o] · V[ξ][c][k]`
//!    ([`super::zmm::product`]), its 32 columns tiles (i, 0) and (i, 1) of the 16 images;
//! 3. **output transform** `Aᵀ M A` of each tile makes its 4×4 pixels: the tile row's four
//!    output rows, two 16-value blocks per image and channel, transposed back.
//!
//! ∂L/∂x is the same pass with the turned-round weight, as elsewhere. ∂L/∂w is the F4 sums:
//! the input transform above, Z = `A dY Aᵀ` of each tile's 4×4 gradient with the output
//! channels along the lanes, from each image's transposed gradient, and
//! `∂U[ξ][c][o] += Σ_k V · Z` ([`super::zmm`]'s `weight_product`), a pair of tiles per call.
//!
//! Groups of [`GROUP`] images per call ([`super::super::ConvGeom::group`]).
//! `PRETEXT_NO_WINOGRAD4=1` (back to F(2×2, 3×3)) and `PRETEXT_NO_WINOGRAD=1` turn it off;
//! `PRETEXT_DIRECT_CONV=avx2` too, as it has no 256-bit form.

use candle_core::{Result, bail};

use super::super::super::gemm::count_flop;
use super::super::direct::{Width, take, transposed_gradient, vector_cpu};
use super::super::geometry::ConvGeom;
use super::{
    Algo, MIN_CHANNELS, Tiles, XI_F4, enabled, f4_enabled, plane, transform_len, whole_images,
};

/// Images per chunk: one 512-bit vector.
const IMAGES: usize = 16;

/// Columns of the shared product and ∂L/∂w code (two vectors): a tile row's two tiles of a
/// chunk's images.
const COLUMNS: usize = 2 * IMAGES;

/// Tile rows (pairs of tiles) per image: 2×2 tiles of 4×4 output pixels.
const PAIRS: usize = 2;

/// Images per group ([`super::super::ConvGeom::group`]): one chunk, so that a batch of 256
/// is 16 jobs.
pub(in crate::model::kernels::conv) const GROUP: usize = IMAGES;

/// Whether `g` is a map this path takes: a 3×3 convolution, stride 1, padding 1, of an 8×8
/// map with at least [`MIN_CHANNELS`] input channels and output channels a multiple of two
/// vectors (so that the forward pass and ∂L/∂w both run here), on a CPU with AVX-512
/// ([`vector_cpu`]), F(4×4, 3×3) not turned off. [`Algo::of`] gives it F4; other 8×8 maps
/// keep F(2×2, 3×3), whose tiled paths take them. ∂L/∂x runs here where the flipped geometry
/// (C and O swapped) is such a map too.
pub(super) fn shape(g: &ConvGeom) -> bool {
    g.k == 3
        && g.pad == 1
        && g.stride == 1
        && g.h == 8
        && g.w == 8
        && g.c >= MIN_CHANNELS
        && g.o.is_multiple_of(COLUMNS)
        && vector_cpu().avx512
        && enabled()
        && f4_enabled()
}

/// Whether the forward pass of `g` with `out` output channels (`g.o`, or C for the flipped
/// geometry's caller) runs here: [`shape`], `out` a multiple of the 512-bit product's output
/// block.
pub(super) fn fits(g: &ConvGeom, out: usize) -> bool {
    shape(g) && out.is_multiple_of(Width::Avx512.out_block())
}

/// Whether ∂L/∂w of `g` runs here: [`fits`] (O is then a multiple of two vectors).
pub(super) fn weight_fits(g: &ConvGeom) -> bool {
    fits(g, g.o)
}

/// Images per group ([`super::super::ConvGeom::group`]) where `g`'s 8×8 maps run here,
/// forward or for ∂L/∂x, if they do.
pub(in crate::model::kernels::conv) fn group(g: &ConvGeom) -> Option<usize> {
    let f = g.flips().then(|| g.flipped());
    (fits(g, g.o) || f.is_some_and(|f| fits(&f, g.c))).then_some(GROUP)
}

/// Whether every pass of `g` that can run here does: the forward pass, ∂L/∂x (where `g`
/// flips) and ∂L/∂w — then a group needs no im2col columns ([`super::super::work`]).
pub(in crate::model::kernels::conv) fn all_passes(g: &ConvGeom) -> bool {
    fits(g, g.o) && weight_fits(g) && (!g.flips() || fits(&g.flipped(), g.c))
}

/// Values of one tile row's ξ planes of `rows` rows.
fn pair_len(rows: usize) -> usize {
    XI_F4 * plane(rows, COLUMNS)
}

/// The working memory [`forward_images`] needs for `g` and its ∂L/∂x geometry (C and O
/// swapped): a tile row's transformed input and products, in values.
pub(super) fn buffer_len(g: &ConvGeom) -> usize {
    2 * pair_len(g.c.max(g.o))
}

/// The working memory [`weight_images`] needs in `work.col` (a tile row's transformed input
/// and Z) and `work.product` (the chunk's transposed gradients), in values.
pub(super) fn weight_buffer_len(g: &ConvGeom) -> (usize, usize) {
    (
        pair_len(g.c) + XI_F4 * plane(COLUMNS, g.o),
        IMAGES * g.out_image(),
    )
}

/// The products' view: F(4×4, 3×3) with `c` channels in and `o` out, 32 columns (the rest of
/// the tiling is not read by the shared product and ∂L/∂w code).
fn tiles(c: usize, o: usize) -> Tiles {
    Tiles {
        algo: Algo::F4,
        c,
        o,
        w: 8,
        hw: 64,
        in_w: 8,
        in_hw: 64,
        q: 2,
        s: 6,
        tiles: COLUMNS,
    }
}

/// The multiplications of `n` images' products, as the step's count has it (36 per tile and
/// channel pair, four tiles per image).
fn flop(g: &ConvGeom, n: usize) -> u64 {
    (2 * XI_F4 * 2 * PAIRS * g.c * g.o * n) as u64
}

/// `ys (N, O, 8, 8) = (accumulate ? ys : 0) + conv3×3(xs (N, C, 8, 8), w)`, `u` the weight's
/// transform (36·C·O values, [`super::transform_weight`] for `g`), 16 images at a time; for
/// ∂L/∂x, called with the flipped geometry and weight. `buf` holds [`buffer_len`] values or
/// more.
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
    if !fits(g, g.o) {
        bail!("winograd convolution (8×8 maps): not for {g:?} on this CPU");
    }
    if u.len() != transform_len(g) {
        bail!(
            "winograd convolution (8×8 maps): weight transform of {} values, not {} for {g:?}",
            u.len(),
            transform_len(g)
        );
    }
    let (inl, outl) = whole_images(g, xs.len(), ys.len())?;
    let n = xs.len() / inl;
    let t = tiles(g.c, g.o);
    let buf = take(buf, pair_len(g.c) + pair_len(g.o), "Winograd")?;
    let (v, m) = buf.split_at_mut(pair_len(g.c));
    for (xc, yc) in xs.chunks(IMAGES * inl).zip(ys.chunks_mut(IMAGES * outl)) {
        let k = xc.len() / inl;
        for pair in 0..PAIRS {
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX-512 ([`fits`]), O is a multiple of the product's block;
            // `xc` holds k ≤ IMAGES images of C·64 values and `yc` k of O·64 (checked above),
            // `v` 36 planes of C rows of COLUMNS and `m` 36 of O rows ([`pair_len`]), `u`
            // 36·C·O values.
            unsafe {
                zmm::input(g.c, xc, k, pair, v);
                super::zmm::product(&t, u, v, m);
                zmm::output(g.o, m, yc, k, pair, accumulate);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (k, pair, &t, u, &v, &m, &yc, accumulate);
        }
    }
    count_flop(flop(g, n));
    Ok(())
}

/// `du[ξ][c][o] += Σ_images Σ_tiles V[ξ][c] · Z[ξ][o]` for `xs` (N, C, 8, 8) and ∂L/∂y =
/// `dys` (N, O, 8, 8), 16 images at a time; [`super::weight_from_transform`] makes ∂L/∂w of
/// the sums. The transforms are made in `work.col`, the chunk's transposed gradients in
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
        bail!("winograd convolution (8×8 maps): ∂L/∂w not for {g:?} on this CPU");
    }
    if du.len() != transform_len(g) {
        bail!(
            "winograd convolution (8×8 maps): {} transform sums, not {} for {g:?}",
            du.len(),
            transform_len(g)
        );
    }
    let (inl, outl) = whole_images(g, xs.len(), dys.len())?;
    let n = xs.len() / inl;
    let t = tiles(g.c, g.o);
    let (col_len, dyt_len) = weight_buffer_len(g);
    let col = take(&mut work.col, col_len, "Winograd")?;
    let (v, z) = col.split_at_mut(pair_len(g.c));
    let dyt = take(&mut work.product, dyt_len, "transposed gradient")?;
    for (xc, dyc) in xs.chunks(IMAGES * inl).zip(dys.chunks(IMAGES * outl)) {
        let k = xc.len() / inl;
        for (dy, d) in dyc.chunks_exact(outl).zip(dyt.chunks_exact_mut(outl)) {
            transposed_gradient(dy, g.o, d)?;
        }
        for pair in 0..PAIRS {
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX-512 ([`weight_fits`]), O is a multiple of two vectors;
            // `xc` holds k ≤ IMAGES images, `dyt` their k transposed gradients one after the
            // other (64 pixels of O each), `v` 36 planes of C rows of COLUMNS ([`pair_len`]),
            // `z` 36 planes of COLUMNS rows of O, `du` 36·C·O values.
            unsafe {
                zmm::input(g.c, xc, k, pair, v);
                zmm::weight_gradient(g.o, dyt, k, pair, z);
                super::zmm::weight_product(&t, v, z, du, COLUMNS);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (k, pair, &t, &v, &z, &dyt);
        }
    }
    count_flop(flop(g, n));
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod zmm {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps, _mm512_sub_ps,
    };

    use super::super::super::direct::transpose16;
    // F(4×4, 3×3)'s `Aᵀ` is 4×4 maps' ([`super::super::whole`]); the load-and-transpose of
    // 16 images' blocks the stride-2 8×8 path's ([`super::super::whole_s2`]).
    use super::super::whole::zmm::at;
    use super::super::whole_s2::zmm::gather;
    use super::super::{XI_F4, plane};
    use super::{COLUMNS, IMAGES};

    /// Values per vector.
    const LANES: usize = 16;

    /// F(4×4, 3×3)'s `Bᵀ` (the module's docs of [`super::super`]) applied to six values.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn bt(d: [__m512; 6]) -> [__m512; 6] {
        let [d0, d1, d2, d3, d4, d5] = d;
        let (s12, d12) = (_mm512_add_ps(d1, d2), _mm512_sub_ps(d1, d2));
        let (d31, d42) = (_mm512_sub_ps(d3, d1), _mm512_sub_ps(d4, d2));
        let (two, four, minus4, minus5) = (
            _mm512_set1_ps(2.0),
            _mm512_set1_ps(4.0),
            _mm512_set1_ps(-4.0),
            _mm512_set1_ps(-5.0),
        );
        [
            _mm512_fmadd_ps(four, d0, _mm512_fmadd_ps(minus5, d2, d4)),
            _mm512_fmadd_ps(minus4, s12, _mm512_add_ps(d3, d4)),
            _mm512_fmadd_ps(four, d12, _mm512_sub_ps(d4, d3)),
            _mm512_fmadd_ps(two, d31, d42),
            _mm512_fmadd_ps(_mm512_set1_ps(-2.0), d31, d42),
            _mm512_fmadd_ps(four, d1, _mm512_fmadd_ps(minus5, d3, d5)),
        ]
    }

    /// `A = (Aᵀ)ᵀ` applied to four values of a tile's output gradient:
    /// `[d0, d0 + d1 + d2 + d3, d0 − d1 + d2 − d3, d0 + 2d1 + 4d2 + 8d3, d0 − 2d1 + 4d2 − 8d3, d3]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn a(d: [__m512; 4]) -> [__m512; 6] {
        let four = _mm512_set1_ps(4.0);
        let (s02, s13) = (_mm512_add_ps(d[0], d[2]), _mm512_add_ps(d[1], d[3]));
        let (q02, q13) = (
            _mm512_fmadd_ps(four, d[2], d[0]),
            _mm512_fmadd_ps(four, d[3], d[1]),
        );
        [
            d[0],
            _mm512_add_ps(s02, s13),
            _mm512_sub_ps(s02, s13),
            _mm512_fmadd_ps(_mm512_set1_ps(2.0), q13, q02),
            _mm512_fmadd_ps(_mm512_set1_ps(-2.0), q13, q02),
            d[3],
        ]
    }

    /// Step 1 for tile row `pair`: `v[ξ][ch][j · 16 + k] = (Bᵀ d B)[ξ]` for image k < `n` of
    /// `xs` (n images of `c` channels of 64 values) and d the 6×6 padded patch of its tile
    /// (pair, j) in channel ch; lanes k ≥ n get the transform of zeros.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `xs` holds `n` ≤ IMAGES images of 64·c values, `v` 36 planes of
    /// `c` rows of COLUMNS ([`plane`]); `pair` < 2.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn input(c: usize, xs: &[f32], n: usize, pair: usize, v: &mut [f32]) {
        let vp = v.as_mut_ptr();
        // Rows 2·pair … 2·pair + 5 of the images: the tile row's patches, rows 4·pair − 1 …
        // 4·pair + 4, lie in them (the first tile row's top row and the second's bottom one
        // are the padding).
        let mut px = [_mm512_setzero_ps(); 48];
        let top = 2 * pair;
        for ch in 0..c {
            // SAFETY: image k < n of `xs` holds channel ch's 64 values at k·64c + 64·ch, of
            // which blocks pair … pair + 2 are rows 2·pair … 2·pair + 5.
            unsafe { gather(xs.as_ptr(), 64 * c, 64 * ch + 16 * pair, n, 3, &mut px) };
            for j in 0..2 {
                // Patch value (r, s): pixel (4·pair − 1 + r, 4j − 1 + s), zero in the padding.
                let d = |r: usize, s: usize| {
                    let (y, x) = ((4 * pair + r).wrapping_sub(1), (4 * j + s).wrapping_sub(1));
                    if y < 8 && x < 8 {
                        px[8 * (y - top) + x]
                    } else {
                        _mm512_setzero_ps()
                    }
                };
                // Bᵀ over the patch's rows, column by column, then over each row's columns.
                let cols: [[__m512; 6]; 6] =
                    std::array::from_fn(|s| bt(std::array::from_fn(|r| d(r, s))));
                let rows: [[__m512; 6]; 6] =
                    std::array::from_fn(|r| bt(std::array::from_fn(|s| cols[s][r])));
                let base = ch * COLUMNS + j * IMAGES;
                for (r, row) in rows.into_iter().enumerate() {
                    for (s, val) in row.into_iter().enumerate() {
                        // SAFETY: plane ξ = 6r + s holds row ch of COLUMNS values, tile j's
                        // half from `base`.
                        unsafe {
                            _mm512_storeu_ps(vp.add(base + (6 * r + s) * plane(c, COLUMNS)), val);
                        }
                    }
                }
            }
        }
    }

    /// Step 3 for tile row `pair`: each tile's `Aᵀ M A`, output rows 4·pair … 4·pair + 3 of
    /// channel oi written to (or added into) `ys` (n images of `o` channels of 64 values), for
    /// images k < `n`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `m` holds 36 planes of `o` rows of COLUMNS ([`plane`]), `ys` `n`
    /// ≤ IMAGES images of 64·o values; `pair` < 2.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output(
        o: usize,
        m: &[f32],
        ys: &mut [f32],
        n: usize,
        pair: usize,
        acc: bool,
    ) {
        let mp = m.as_ptr();
        let yp = ys.as_mut_ptr();
        for oi in 0..o {
            // The tile row's four output rows: pixel (r, x) at 8r + x.
            let mut pixels = [_mm512_setzero_ps(); 32];
            for j in 0..2 {
                let base = oi * COLUMNS + j * IMAGES;
                // SAFETY: plane ξ holds row oi of COLUMNS values, tile j's half from `base`.
                let mv: [__m512; XI_F4] = std::array::from_fn(|xi| unsafe {
                    _mm512_loadu_ps(mp.add(base + xi * plane(o, COLUMNS)))
                });
                // Aᵀ over the rows, column by column (4 × 6), then over each row's columns.
                let cols: [[__m512; 4]; 6] =
                    std::array::from_fn(|s| at(std::array::from_fn(|r| mv[6 * r + s])));
                for r in 0..4 {
                    let row = at(std::array::from_fn(|s| cols[s][r]));
                    pixels[8 * r + 4 * j..8 * r + 4 * j + 4].copy_from_slice(&row);
                }
            }
            for b in 0..2 {
                let rows: [__m512; 16] = std::array::from_fn(|q| pixels[16 * b + q]);
                for (k, out) in transpose16(rows).into_iter().enumerate().take(n) {
                    // SAFETY: image k < n of `ys` holds channel oi's 64 values at k·64o +
                    // 64·oi; block 2·pair + b is rows 4·pair + 2b and the next.
                    unsafe {
                        let dst = yp.add(k * 64 * o + 64 * oi + 16 * (2 * pair + b));
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
    }

    /// ∂L/∂w's Z for tile row `pair`: `z[ξ][j · 16 + k][o] = (A dY Aᵀ)[ξ]` for image k < `n`,
    /// dY its tile (pair, j)'s 4×4 output gradient from `dyt` (the images' transposed
    /// gradients one after the other, 64 pixels of `o` values each), a vector of output
    /// channels at a time; rows of images k ≥ n are zeros.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `dyt` holds `n` ≤ IMAGES images of 64·o values, `o` is a
    /// multiple of LANES, `z` holds 36 planes of COLUMNS rows of `o` ([`plane`]); `pair` < 2.
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
        for j in 0..2 {
            // The tile's top-left pixel.
            let p = 8 * 4 * pair + 4 * j;
            for k in 0..IMAGES {
                let row = j * IMAGES + k;
                for ob in (0..o).step_by(LANES) {
                    // SAFETY: image k < n's pixels lie in its 64 of `dyt`, their channels
                    // ob..ob + LANES ≤ O; z's plane ξ holds COLUMNS rows of O.
                    unsafe {
                        if k >= n {
                            for xi in 0..XI_F4 {
                                let at = xi * plane(COLUMNS, o) + row * o + ob;
                                _mm512_storeu_ps(zp.add(at), _mm512_setzero_ps());
                            }
                            continue;
                        }
                        let d = |r: usize, s: usize| {
                            _mm512_loadu_ps(dp.add((k * 64 + p + 8 * r + s) * o + ob))
                        };
                        // A over the rows, column by column (6 × 4), then over each row's
                        // columns (6 × 6).
                        let cols: [[__m512; 6]; 4] =
                            std::array::from_fn(|s| a(std::array::from_fn(|r| d(r, s))));
                        let rows: [[__m512; 6]; 6] =
                            std::array::from_fn(|r| a(std::array::from_fn(|s| cols[s][r])));
                        for (r, vals) in rows.into_iter().enumerate() {
                            for (s, val) in vals.into_iter().enumerate() {
                                let at = (6 * r + s) * plane(COLUMNS, o) + row * o + ob;
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
    use super::super::super::direct::tests::values;
    use super::super::tests::{check_forward, check_weight, close_to_scale, references};
    use super::super::{Algo, transform_weight};
    use super::{ConvGeom, buffer_len, forward_images, weight_buffer_len, weight_images};

    #[allow(clippy::print_stderr)] // says when this CPU could not check it
    /// Forward (written and added), ∂L/∂x's turned-round pass and ∂L/∂w against sums in
    /// f64, for batches that fill one chunk, several, and end inside one, with channel
    /// counts of the encoder's second stage at 16 px and its last at 32 px, and others; and
    /// the shapes it refuses.
    #[test]
    fn eight_by_eight_maps_match_the_definition() {
        if !super::vector_cpu().avx512 || !super::enabled() || !super::f4_enabled() {
            eprintln!("skipping: this CPU has no AVX-512 (or F(4×4, 3×3) is off)");
            return;
        }
        // (images, C, O): l2.c2 at the 16 px views over three chunks ending inside one; l3.c2
        // at 32 px; a partial chunk alone; exactly one chunk; 96 channels in, 32 out.
        let cases = [
            (37, 64, 64),
            (18, 128, 128),
            (5, 32, 32),
            (16, 32, 64),
            (20, 96, 32),
        ];
        for (n, c, o) in cases {
            let g = ConvGeom {
                n,
                c,
                h: 8,
                w: 8,
                o,
                k: 3,
                stride: 1,
                pad: 1,
            };
            assert!(
                super::all_passes(&g) && super::group(&g) == Some(super::GROUP),
                "refuses {g:?}"
            );
            assert_eq!(Algo::of(&g), Algo::F4, "{g:?}");
            let w = values(o * c * 9, 1);
            let xs = values(n * g.in_image(), 2);
            let dys = values(n * g.out_image(), 3);
            let refs = references(&g, &w, &xs, &dys);
            let u = transform_weight(&g, &w);
            check_forward(&g, &u, &xs, &refs, buffer_len(&g), forward_images);
            // ∂L/∂x: the turned-round weight, C and O swapped, as the backward plan runs it.
            let flipped = g.flipped();
            let mut wf = vec![0f32; c * o * 9];
            for (ci, row) in wf.chunks_exact_mut(o * 9).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = w[g.turned_tap(j / 9, ci, j % 9)];
                }
            }
            let uf = transform_weight(&flipped, &wf);
            // A NaN tail after the buffer shows a write past its length.
            let mut fbuf = vec![f32::NAN; buffer_len(&g) + 64];
            let mut dx = vec![f32::NAN; n * g.in_image()];
            forward_images(&flipped, &uf, &dys, &mut dx, false, &mut fbuf)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                fbuf[buffer_len(&g)..].iter().all(|v| v.is_nan()),
                "∂L/∂x of {g:?} wrote past its buffer"
            );
            let want: Vec<f64> = refs.iter().flat_map(|[_, _, dx]| dx.clone()).collect();
            close_to_scale(&dx, &want, &format!("∂L/∂x of {g:?}"));
            // ∂L/∂w, in two runs of images (partial sums added as the engine does).
            check_weight(&g, &xs, &dys, &refs, weight_buffer_len(&g), weight_images);
        }
        // Refused: 12 output channels are not a whole block, 16 and 48 not two vectors (those
        // maps keep F(2×2, 3×3)); 8 input channels; a 16×16 map; stride 2.
        let base = ConvGeom {
            n: 1,
            c: 32,
            h: 8,
            w: 8,
            o: 32,
            k: 3,
            stride: 1,
            pad: 1,
        };
        assert!(!super::fits(&base, 12));
        assert!(!super::shape(&ConvGeom { o: 16, ..base }));
        assert!(!super::shape(&ConvGeom { o: 48, ..base }));
        assert_eq!(Algo::of(&ConvGeom { o: 48, ..base }), Algo::Stride1);
        assert!(!super::shape(&ConvGeom { c: 8, ..base }));
        assert!(!super::shape(&ConvGeom {
            h: 16,
            w: 16,
            ..base
        }));
        assert!(!super::shape(&ConvGeom { stride: 2, ..base }));
    }
}
