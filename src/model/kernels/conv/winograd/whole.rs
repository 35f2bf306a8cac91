//! F(4×4, 3×3) on 4×4 maps, one tile per image (the last stage of the 16 px views, stride 1:
//! l3.c2 forward, ∂L/∂x and ∂L/∂w), on AVX-512.
//!
//! A 4×4 map padded by one pixel is exactly one F(4×4, 3×3) tile: its 6×6 patch makes the
//! map's 16 outputs with 36 products per channel pair instead of the definition's 144 (a
//! quarter), the transforms and the product those of [`super::Algo::F4`]. The tiling of the
//! other paths (tiles along the lanes, runs of tiles of one map) has nothing to put along the
//! lanes here, so the lanes take images instead: a chunk is 32 images, two vectors of 16.
//!
//! 1. **input transform**: per channel and vector, the 16 images' 4×4 maps (one 16-value row
//!    each, as NCHW lays them out) are transposed in registers ([`super::super::direct::transpose16`]) into 16
//!    vectors, one per pixel across the images; `V = Bᵀ d B` of each lane's 6×6 patch, whose
//!    border is the zero padding, skips the border (`bt_inner`);
//! 2. **product**: the stride-1 paths' `M[ξ][o][k] = Σ_c U[ξ][c][o] · V[ξ][c][k]`
//!    ([`super::zmm::product`]), unchanged, the lanes being images;
//! 3. **output transform** `Aᵀ M A` makes 16 vectors (one per output pixel across the images),
//!    transposed back into one 16-value output row per image.
//!
//! ∂L/∂x is the same pass with the turned-round weight, as elsewhere. ∂L/∂w is the stride-1
//! F4 sums: the input transform above, Z from each image's 4×4 gradient ([`super::zmm`]'s
//! `gradient_f4`, the chunk's images one after the other as tile rows of a map 4 pixels wide)
//! and `∂U[ξ][c][o] += Σ_k V · Z` ([`super::zmm`]'s `weight_product`).
//!
//! Groups of [`GROUP`] images per call ([`super::super::ConvGeom::group`]) keep the chunks
//! full (each run of ∂L/∂w's partial sums is then 36·C·O values: 2.4 MB for l3.c2's
//! 128 × 128). `PRETEXT_NO_WINOGRAD4=1` and `PRETEXT_NO_WINOGRAD=1` turn it off
//! with the rest; `PRETEXT_DIRECT_CONV=avx2` too, as it has no 256-bit form.

use candle_core::{Result, bail};

use super::super::super::gemm::count_flop;
use super::super::direct::{Width, take, transposed_gradient, vector_cpu};
use super::super::geometry::ConvGeom;
use super::{
    Algo, MIN_CHANNELS, Tiles, XI_F4, enabled, f4_enabled, plane, transform_len, whole_images,
};

/// Images per chunk: two 512-bit vectors.
const CHUNK: usize = 32;

/// Images per group ([`super::super::ConvGeom::group`]): one chunk. (Two chunks made no
/// difference on two cores and would leave cores idle on more: a batch of 256 would be only
/// four jobs.)
pub(in crate::model::kernels::conv) const GROUP: usize = CHUNK;

/// Whether `g` is a map this path takes, whatever its output channels: a 3×3 convolution,
/// stride 1, padding 1, of a 4×4 map with at least [`MIN_CHANNELS`] input channels, on a CPU
/// with AVX-512 ([`vector_cpu`]), F(4×4, 3×3) not turned off. [`Algo::of`] gives it F4.
pub(super) fn shape(g: &ConvGeom) -> bool {
    g.k == 3
        && g.pad == 1
        && g.stride == 1
        && g.h == 4
        && g.w == 4
        && g.c >= MIN_CHANNELS
        && vector_cpu().avx512
        && enabled()
        && f4_enabled()
}

/// Whether the forward pass of `g` with `out` output channels runs here: [`shape`], `out` a
/// multiple of the 512-bit product's output block.
pub(super) fn fits(g: &ConvGeom, out: usize) -> bool {
    shape(g) && out.is_multiple_of(Width::Avx512.out_block())
}

/// Whether ∂L/∂w of `g` runs here: [`fits`], O a multiple of two vectors.
pub(super) fn weight_fits(g: &ConvGeom) -> bool {
    fits(g, g.o) && g.o.is_multiple_of(CHUNK)
}

/// Images per group ([`super::super::ConvGeom::group`]) where `g`'s 4×4 maps run here,
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

/// The working memory [`forward_images`] needs for `g` and its ∂L/∂x geometry (C and O
/// swapped): a chunk's transformed input and products, in values.
pub(super) fn buffer_len(g: &ConvGeom) -> usize {
    2 * XI_F4 * plane(g.c.max(g.o), CHUNK)
}

/// The working memory [`weight_images`] needs in `work.col` (the chunk's transformed input
/// and Z) and `work.product` (its images' transposed gradients), in values.
pub(super) fn weight_buffer_len(g: &ConvGeom) -> (usize, usize) {
    (
        XI_F4 * (plane(g.c, CHUNK) + plane(CHUNK, g.o)),
        CHUNK * g.out_image(),
    )
}

/// The tiles as the shared product and ∂L/∂w code see them: one 4×4 tile per image, the
/// chunk's images one after the other as tile rows of a map 4 pixels wide.
fn tiles(g: &ConvGeom) -> Tiles {
    Tiles {
        algo: Algo::F4,
        c: g.c,
        o: g.o,
        w: 4,
        hw: 16,
        in_w: 4,
        in_hw: 16,
        q: 1,
        s: 2,
        tiles: CHUNK,
    }
}

/// `ys (N, O, 4, 4) = (accumulate ? ys : 0) + conv3×3(xs (N, C, 4, 4), w)`, `u` the weight's
/// transform (36·C·O values, [`super::transform_weight`] for `g`), 32 images at a time; for
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
        bail!("winograd convolution (4×4 maps): not for {g:?} on this CPU");
    }
    if u.len() != transform_len(g) {
        bail!(
            "winograd convolution (4×4 maps): weight transform of {} values, not {} for {g:?}",
            u.len(),
            transform_len(g)
        );
    }
    let (inl, outl) = whole_images(g, xs.len(), ys.len())?;
    let n = xs.len() / inl;
    let t = tiles(g);
    let buf = take(
        buf,
        XI_F4 * (plane(g.c, CHUNK) + plane(g.o, CHUNK)),
        "Winograd",
    )?;
    let (v, m) = buf.split_at_mut(XI_F4 * plane(g.c, CHUNK));
    for (xc, yc) in xs.chunks(CHUNK * inl).zip(ys.chunks_mut(CHUNK * outl)) {
        let k = xc.len() / inl;
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX-512 ([`fits`]), O is a multiple of the product's block;
        // `xc` holds k ≤ CHUNK images of C·16 values and `yc` k of O·16 (checked above), `v`
        // and `m` 36 planes of C and O rows of CHUNK ([`plane`]), `u` 36·C·O values.
        unsafe {
            zmm::input(g.c, xc, k, v);
            super::zmm::product(&t, u, v, m);
            zmm::output(g.o, m, yc, k, accumulate);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (k, &t, u, v, m, yc, accumulate);
    }
    count_flop((2 * XI_F4 * g.c * g.o * n) as u64);
    Ok(())
}

/// `du[ξ][c][o] += Σ_images V[ξ][c] · Z[ξ][o]` for `xs` (N, C, 4, 4) and ∂L/∂y = `dys`
/// (N, O, 4, 4), 32 images at a time; [`super::weight_from_transform`] makes ∂L/∂w of the
/// sums. The chunk's transforms are made in `work.col`, its transposed gradients in
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
        bail!("winograd convolution (4×4 maps): ∂L/∂w not for {g:?} on this CPU");
    }
    if du.len() != transform_len(g) {
        bail!(
            "winograd convolution (4×4 maps): {} transform sums, not {} for {g:?}",
            du.len(),
            transform_len(g)
        );
    }
    let (inl, outl) = whole_images(g, xs.len(), dys.len())?;
    let n = xs.len() / inl;
    let t = tiles(g);
    let (col_len, dyt_len) = weight_buffer_len(g);
    let col = take(&mut work.col, col_len, "Winograd")?;
    let (v, z) = col.split_at_mut(XI_F4 * plane(g.c, CHUNK));
    let dyt = take(&mut work.product, dyt_len, "transposed gradient")?;
    for (xc, dyc) in xs.chunks(CHUNK * inl).zip(dys.chunks(CHUNK * outl)) {
        let k = xc.len() / inl;
        for (dy, d) in dyc.chunks_exact(outl).zip(dyt.chunks_exact_mut(outl)) {
            transposed_gradient(dy, g.o, d)?;
        }
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX-512 ([`weight_fits`]), O is a multiple of two vectors;
        // `xc` holds k ≤ CHUNK images, `dyt` their k transposed gradients one after the
        // other (16 pixels of O each: tile rows 0..k of `t`'s map), `v` 36 planes of C rows
        // and `z` 36 of CHUNK rows of O ([`plane`]), `du` 36·C·O values.
        unsafe {
            zmm::input(g.c, xc, k, v);
            super::zmm::gradient_f4(&t, dyt, z, 0, k);
            super::zmm::weight_product(&t, v, z, du, k);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (k, &t, v, z, &dyt);
    }
    count_flop((2 * XI_F4 * g.c * g.o * n) as u64);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(super) mod zmm {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mul_ps, _mm512_set1_ps,
        _mm512_setzero_ps, _mm512_storeu_ps, _mm512_sub_ps,
    };

    use super::super::super::direct::transpose16;
    use super::super::{XI_F4, plane};
    use super::CHUNK;

    /// Values per vector.
    const LANES: usize = 16;

    /// F(4×4, 3×3)'s `Bᵀ` (the module's docs of [`super::super`]) applied to six values of
    /// which the first and the last are the zero padding: `d` holds the middle four.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn bt_inner(d: [__m512; 4]) -> [__m512; 6] {
        let [d1, d2, d3, d4] = d;
        let (s12, d12) = (_mm512_add_ps(d1, d2), _mm512_sub_ps(d1, d2));
        let (d31, d42) = (_mm512_sub_ps(d3, d1), _mm512_sub_ps(d4, d2));
        let (two, four, minus4, minus5) = (
            _mm512_set1_ps(2.0),
            _mm512_set1_ps(4.0),
            _mm512_set1_ps(-4.0),
            _mm512_set1_ps(-5.0),
        );
        [
            _mm512_fmadd_ps(minus5, d2, d4),
            _mm512_fmadd_ps(minus4, s12, _mm512_add_ps(d3, d4)),
            _mm512_fmadd_ps(four, d12, _mm512_sub_ps(d4, d3)),
            _mm512_fmadd_ps(two, d31, d42),
            _mm512_fmadd_ps(_mm512_set1_ps(-2.0), d31, d42),
            _mm512_fmadd_ps(four, d1, _mm512_mul_ps(minus5, d3)),
        ]
    }

    /// F(4×4, 3×3)'s `Aᵀ` applied to six values.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::model::kernels::conv::winograd) fn at(m: [__m512; 6]) -> [__m512; 4] {
        let (s12, d12) = (_mm512_add_ps(m[1], m[2]), _mm512_sub_ps(m[1], m[2]));
        let (s34, d34) = (_mm512_add_ps(m[3], m[4]), _mm512_sub_ps(m[3], m[4]));
        [
            _mm512_add_ps(_mm512_add_ps(m[0], s12), s34),
            _mm512_fmadd_ps(_mm512_set1_ps(2.0), d34, d12),
            _mm512_fmadd_ps(_mm512_set1_ps(4.0), s34, s12),
            _mm512_fmadd_ps(_mm512_set1_ps(8.0), d34, _mm512_add_ps(d12, m[5])),
        ]
    }

    /// Step 1: `v[ξ][ch][k] = (Bᵀ d B)[ξ]` for image k < `n` of `xs` (n images of `c`
    /// channels of 16 values) and d its channel ch's padded 6×6 patch; lanes k ≥ n get the
    /// transform of zeros.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `xs` holds `n` ≤ CHUNK images of 16·c values, `v` 36 planes of
    /// `c` rows of CHUNK ([`plane`]).
    #[target_feature(enable = "avx512f")]
    pub(in crate::model::kernels::conv) unsafe fn input(
        c: usize,
        xs: &[f32],
        n: usize,
        v: &mut [f32],
    ) {
        let xp = xs.as_ptr();
        let vp = v.as_mut_ptr();
        let image = 16 * c;
        for ch in 0..c {
            for half in 0..2 {
                // SAFETY: image k < n ≤ CHUNK of `xs` holds channel ch's 16 values at
                // k·16c + 16·ch; v's plane ξ holds row ch of CHUNK values.
                unsafe {
                    let rows = std::array::from_fn(|i| {
                        let k = half * LANES + i;
                        if k < n {
                            _mm512_loadu_ps(xp.add(k * image + 16 * ch))
                        } else {
                            _mm512_setzero_ps()
                        }
                    });
                    // d[4r + s]: pixel (r, s) of the 16 images, the patch's (r + 1, s + 1).
                    let d = transpose16(rows);
                    // Bᵀ over the patch's rows, column by column (the border columns are
                    // zero, and stay zero), then over each row's columns.
                    let mut tr = [[_mm512_setzero_ps(); 4]; 6];
                    for s in 0..4 {
                        let col = bt_inner([d[s], d[4 + s], d[8 + s], d[12 + s]]);
                        for (r, val) in col.into_iter().enumerate() {
                            tr[r][s] = val;
                        }
                    }
                    for (r, row) in tr.iter().enumerate() {
                        for (col, val) in bt_inner(*row).into_iter().enumerate() {
                            let xi = r * 6 + col;
                            let at = xi * plane(c, CHUNK) + ch * CHUNK + half * LANES;
                            _mm512_storeu_ps(vp.add(at), val);
                        }
                    }
                }
            }
        }
    }

    /// Step 3: each image's `Aᵀ M A`, its 4×4 outputs of channel oi written to (or added
    /// into) `ys` (n images of `o` channels of 16 values), for images k < `n`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `m` holds 36 planes of `o` rows of CHUNK ([`plane`]), `ys` `n`
    /// ≤ CHUNK images of 16·o values.
    #[target_feature(enable = "avx512f")]
    pub(in crate::model::kernels::conv) unsafe fn output(
        o: usize,
        m: &[f32],
        ys: &mut [f32],
        n: usize,
        acc: bool,
    ) {
        let mp = m.as_ptr();
        let yp = ys.as_mut_ptr();
        let image = 16 * o;
        for oi in 0..o {
            for half in 0..2 {
                if half * LANES >= n {
                    break;
                }
                // SAFETY: row (ξ, oi) of m holds CHUNK values; image k < n of `ys` holds
                // channel oi's 16 values at k·16o + 16·oi.
                unsafe {
                    let mv: [__m512; XI_F4] = std::array::from_fn(|xi| {
                        _mm512_loadu_ps(mp.add(xi * plane(o, CHUNK) + oi * CHUNK + half * LANES))
                    });
                    // Aᵀ over the rows, column by column (4 × 6), then over each row's
                    // columns: pixel (r, s) of the 16 images.
                    let mut a = [[_mm512_setzero_ps(); 6]; 4];
                    for l in 0..6 {
                        let col = at(std::array::from_fn(|r| mv[r * 6 + l]));
                        for (r, val) in col.into_iter().enumerate() {
                            a[r][l] = val;
                        }
                    }
                    let mut pixels = [_mm512_setzero_ps(); 16];
                    for (r, row) in a.iter().enumerate() {
                        pixels[4 * r..4 * r + 4].copy_from_slice(&at(*row));
                    }
                    for (i, out) in transpose16(pixels).into_iter().enumerate() {
                        let k = half * LANES + i;
                        if k >= n {
                            break;
                        }
                        let dst = yp.add(k * image + 16 * oi);
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
    /// counts of the encoder's last stage and others; and the shapes it refuses.
    #[test]
    fn four_by_four_maps_match_the_definition() {
        if !super::vector_cpu().avx512 || !super::enabled() || !super::f4_enabled() {
            eprintln!("skipping: this CPU has no AVX-512 (or F(4×4, 3×3) is off)");
            return;
        }
        // (images, C, O): l3.c2 at the 16 px views; a partial chunk; one chunk and a bit;
        // 16 input channels, 64 output; 48 channels in, 32 out; last chunks whose second
        // vector is partly filled (20 images, 50).
        let cases = [
            (70, 128, 128),
            (5, 32, 32),
            (33, 16, 64),
            (32, 48, 32),
            (20, 32, 32),
            (50, 16, 32),
        ];
        for (n, c, o) in cases {
            let g = ConvGeom {
                n,
                c,
                h: 4,
                w: 4,
                o,
                k: 3,
                stride: 1,
                pad: 1,
            };
            assert!(
                super::fits(&g, o) && super::weight_fits(&g),
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
            // The engine's buffer for both passes is `buffer_len(&g)` ([`super::super::super::work`]).
            let mut fbuf = vec![f32::NAN; buffer_len(&g)];
            let mut dx = vec![f32::NAN; n * g.in_image()];
            forward_images(&flipped, &uf, &dys, &mut dx, false, &mut fbuf)
                .unwrap_or_else(|e| panic!("{e}"));
            let want: Vec<f64> = refs.iter().flat_map(|[_, _, dx]| dx.clone()).collect();
            close_to_scale(&dx, &want, &format!("∂L/∂x of {g:?}"));
            // ∂L/∂w, in two runs of images (partial sums added as the engine does).
            check_weight(&g, &xs, &dys, &refs, weight_buffer_len(&g), weight_images);
        }
        // Refused: 8 output channels are fine, 12 are not a whole block; 8 input channels;
        // an 8×8 map; stride 2.
        let base = ConvGeom {
            n: 1,
            c: 32,
            h: 4,
            w: 4,
            o: 32,
            k: 3,
            stride: 1,
            pad: 1,
        };
        assert!(!super::fits(&base, 12));
        assert!(!super::weight_fits(&ConvGeom { o: 16, ..base }));
        assert!(!super::shape(&ConvGeom { c: 8, ..base }));
        assert!(!super::shape(&ConvGeom { h: 8, w: 8, ..base }));
        assert!(!super::shape(&ConvGeom { stride: 2, ..base }));
    }
}
