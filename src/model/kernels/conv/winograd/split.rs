//! The split input of the Winograd kernels ([`super`]'s docs): the zero-padded input cut into
//! its row and column phases, row by row. Each input row is a de-interleave (two ways for
//! stride 1, four for stride 2) plus a copy shifted by one value, written with AVX2 shuffles
//! where the CPU has them (the plain loops below compiled to one scalar move per value, and
//! the split took 10% of a 32 px step on an AVX-512 Xeon), else by those loops.

use super::{Algo, PLANES, PLANES_F4, PLANES_S2, Tiles};

/// Splits `x` (C, H, W) into `phases` as `t.algo` needs ([`split_with`]), the rows done by
/// [`avx2`] where the CPU has AVX2, else by [`rows`].
pub(super) fn split(t: &Tiles, x: &[f32], phases: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(plan) = zmm::Plan::of(t) {
        #[allow(unsafe_code)]
        // SAFETY: `Plan::of` checked that the CPU has AVX-512 and that `t` is its shape.
        unsafe {
            zmm::split(plan, t, x, phases);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe {
            avx2::split(t, x, phases);
        }
        return;
    }
    split_with(t, x, phases, rows::s1, rows::s2, rows::s4);
}

/// The split for `t.algo`, with the row functions given: for stride 1 [`PLANES`] planes per
/// channel, `phases[c][a][b][sh][i][j] = padded(c, 2i + a, 2(j + sh) + b)`, each
/// (H/2 + 1) × W/2, the rows by `s1` (as [`rows::s1`]); for stride 2 [`PLANES_S2`],
/// `phases[c][a][b][i][j] = padded(c, 4i + a, 4j + b)` for row phases a < 4 and columns b ≤ 4
/// (b = 4 is column phase 0 one tile on), each (Ho/2 + 1) × Wo/2, the rows by `s2` (as
/// [`rows::s2`]); for F(4×4, 3×3) [`PLANES_F4`], the same with columns b ≤ 5 (b = 5 is
/// column phase 1 one tile on: plane 1 shifted by a value, zero at the row's end), each
/// (H/4 + 1) × W/4; `padded` is `x` zero-padded by one pixel.
#[inline(always)]
fn split_with(
    t: &Tiles,
    x: &[f32],
    phases: &mut [f32],
    s1: impl Fn(&[f32], [&mut [f32]; 4]),
    s2: impl Fn(&[f32], [&mut [f32]; 5]),
    s4: impl Fn(&[f32], [&mut [f32]; 6]),
) {
    // The phases × planes below are the layouts' plane counts.
    const _: () = assert!(2 * 4 == PLANES && 4 * 5 == PLANES_S2 && 4 * 6 == PLANES_F4);
    match t.algo {
        Algo::Stride1 => split_planes::<2, 4>(t, x, phases, s1),
        Algo::Stride2 => split_planes::<4, 5>(t, x, phases, s2),
        Algo::F4 => split_planes::<4, 6>(t, x, phases, s4),
    }
}

/// Splits `x` (C, H, W), zero-padded by one pixel, into `R` row phases × `N` planes per
/// channel, each of (tile rows) + 1 rows of Q values (Ho/2 + 1, or H/4 + 1 for F(4×4, 3×3)),
/// then a chunk of zeros:
/// input row r is padded row r + 1, row (r + 1) / R of row phase (r + 1) mod R, whose `N`
/// planes `row` fills from it. Padded row 0 (row 0 of phase 0) and the rows past the last
/// input row (the last row of the other phases) are the border, zeros.
#[inline(always)]
fn split_planes<const R: usize, const N: usize>(
    t: &Tiles,
    x: &[f32],
    phases: &mut [f32],
    row: impl Fn(&[f32], [&mut [f32]; N]),
) {
    let (q, s) = (t.q, t.s);
    let last = s / q - 1;
    for (plane, out) in x
        .chunks_exact(t.in_hw)
        .zip(phases.chunks_exact_mut(R * N * s))
        .take(t.c)
    {
        for (p, dst) in out.chunks_exact_mut(s).enumerate() {
            let i = if p < N { 0 } else { last };
            zero_row(&mut dst[i * q..(i + 1) * q]);
        }
        for (r, src) in plane.chunks_exact(t.in_w).enumerate() {
            let (a, i) = ((r + 1) % R, (r + 1) / R);
            let at = i * q..(i + 1) * q;
            let mut planes = out[a * N * s..(a + 1) * N * s]
                .chunks_exact_mut(s)
                .map(|p| &mut p[at.clone()]);
            // The N planes of the phase (the iterator yields exactly N).
            row(
                src,
                std::array::from_fn(|_| planes.next().unwrap_or_default()),
            );
        }
    }
    phases[R * N * t.c * s..].fill(0.0);
}

/// Zeros a border row of a plane. Rows of 4, 8 or 16 values (the tile rows of 16×16, 32×32
/// and 64×64 maps) are stored inline: `fill` made each one a `memset` call, 1.6% of a step on
/// 16 px views, for 16–64 bytes at a time.
#[inline(always)]
fn zero_row(dst: &mut [f32]) {
    if let Ok(d) = <&mut [f32; 4]>::try_from(&mut *dst) {
        *d = [0.0; 4];
    } else if let Ok(d) = <&mut [f32; 8]>::try_from(&mut *dst) {
        *d = [0.0; 8];
    } else if let Ok(d) = <&mut [f32; 16]>::try_from(&mut *dst) {
        *d = [0.0; 16];
    } else {
        dst.fill(0.0);
    }
}

/// One input row's planes in plain loops (any CPU, and the tails of [`avx2`]'s rows).
pub(super) mod rows {
    /// Stride 1: `src` (2q values) into `p[0..4]` (q each), from value `j0` of each plane on:
    /// the padded row's columns 2j + b + 2·sh, as `p = [sh 1 of b 0, b 1, b 0, sh 1 of b 1]`:
    /// `p0[j] = src[2j − 1]` (0 for j = 0), `p1[j] = src[2j + 1]`, `p2[j] = src[2j]`,
    /// `p3[j] = src[2j + 2]` (0 for j = q − 1).
    #[inline(always)]
    pub(in super::super) fn s1_from(src: &[f32], p: [&mut [f32]; 4], j0: usize) {
        let [p0, p1, p2, p3] = p;
        let q = p2.len();
        for j in j0..q {
            p2[j] = src[2 * j];
            p1[j] = src[2 * j + 1];
            p0[j] = if j == 0 { 0.0 } else { src[2 * j - 1] };
            p3[j] = if j + 1 == q { 0.0 } else { src[2 * j + 2] };
        }
    }

    /// [`s1_from`] for the whole row.
    #[inline(always)]
    pub(in super::super) fn s1(src: &[f32], p: [&mut [f32]; 4]) {
        s1_from(src, p, 0);
    }

    /// Stride 2: `src` (4q values) into `p[0..5]` (q each), from value `j0` of each plane on:
    /// the padded row's columns 4j + b, `p_b[j] = src[4j + b − 1]` for b = 1 … 4 and
    /// `p0[j] = src[4j − 1]` (0 for j = 0).
    #[inline(always)]
    pub(in super::super) fn s2_from(src: &[f32], p: [&mut [f32]; 5], j0: usize) {
        let [p0, p1, p2, p3, p4] = p;
        for j in j0..p1.len() {
            p1[j] = src[4 * j];
            p2[j] = src[4 * j + 1];
            p3[j] = src[4 * j + 2];
            p4[j] = src[4 * j + 3];
            p0[j] = if j == 0 { 0.0 } else { src[4 * j - 1] };
        }
    }

    /// [`s2_from`] for the whole row.
    #[inline(always)]
    pub(in super::super) fn s2(src: &[f32], p: [&mut [f32]; 5]) {
        s2_from(src, p, 0);
    }

    /// F(4×4, 3×3): [`s2_from`] into `p[0..5]`, and `p5[j] = src[4j + 4]` (0 for j = q − 1),
    /// the padded row's column 4j + 5.
    #[inline(always)]
    pub(in super::super) fn s4_from(src: &[f32], p: [&mut [f32]; 6], j0: usize) {
        let [p0, p1, p2, p3, p4, p5] = p;
        let q = p5.len();
        for j in j0..q {
            p5[j] = if j + 1 == q { 0.0 } else { src[4 * j + 4] };
        }
        s2_from(src, [p0, p1, p2, p3, p4], j0);
    }

    /// [`s4_from`] for the whole row.
    #[inline(always)]
    pub(in super::super) fn s4(src: &[f32], p: [&mut [f32]; 6]) {
        s4_from(src, p, 0);
    }
}

/// Whole channels of the small maps of the 16 px views on AVX-512: a channel of a 16×16 map
/// (stride 2 or F(4×4, 3×3)) or of an 8×8 one (F(2×2, 3×3)) fits in 16 (4) vectors, and each
/// of its planes has four data rows of four values (Q = 4), 16 values from four input rows.
/// Per plane: two two-table permutations of the vectors those rows lie in, a blend, zeros
/// where the padding is, one store of the data and one of the border row. The row by row
/// split spent its time on each 4-value row's slicing and calls (15% of a step on these
/// views, measured on a Zen 5); here a plane is a handful of instructions.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod zmm {
    use std::arch::x86_64::{
        _MM_HINT_T0, _mm_prefetch, _mm_setzero_ps, _mm_storeu_ps, _mm512_loadu_epi32,
        _mm512_loadu_ps, _mm512_mask_blend_ps, _mm512_maskz_mov_ps, _mm512_permutex2var_ps,
        _mm512_storeu_ps,
    };

    use super::super::super::direct::vector_cpu;
    use super::super::{Algo, PLANES, PLANES_F4, PLANES_S2, Tiles};

    /// Values per plane of these maps: five rows (four of data, one of border) of Q = 4.
    const S: usize = 20;

    /// Where one plane's 16 data values come from.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Source {
        /// The input vectors (16 values each, from the channel's start) of data rows 0–3: the
        /// first permutation reads rows 0 and 1's, the second rows 2 and 3's.
        vectors: [usize; 4],
        /// The first permutation's index per value (values 0–7 used): a lane of
        /// `vectors[0]`, or 16 + a lane of `vectors[1]`.
        lo: [u32; 16],
        /// The second's (values 8–15 used), of `vectors[2]` and `vectors[3]`.
        hi: [u32; 16],
        /// The values inside the map (the others are the padding, zero).
        inside: u16,
        /// Where the data rows start in the plane: row 1 for row phase 0 (whose row 0 is the
        /// padding above the map), else row 0 (the last row is past the map).
        data: usize,
        /// Where the border row starts.
        border: usize,
    }

    /// The planes of one channel for each shape, in the split's order (row phase, then
    /// plane).
    #[derive(Clone, Copy, Debug)]
    pub(super) enum Plan {
        /// Stride 2 on a 16×16 map: 4 row phases × 5 planes.
        Stride2(&'static [Source; PLANES_S2]),
        /// F(4×4, 3×3) on a 16×16 map: 4 row phases × 6 planes.
        F4(&'static [Source; PLANES_F4]),
        /// F(2×2, 3×3) on an 8×8 map: 2 row phases × 4 planes.
        Stride1(&'static [Source; PLANES]),
    }

    static STRIDE2: [Source; PLANES_S2] = sources::<PLANES_S2>(4, 5, 16);
    static F4: [Source; PLANES_F4] = sources::<PLANES_F4>(4, 6, 16);
    static STRIDE1: [Source; PLANES] = sources::<PLANES>(2, 4, 8);

    impl Plan {
        /// The plan for `t`, where the CPU has AVX-512 ([`vector_cpu`]) and `t` is one of
        /// the shapes.
        pub(super) fn of(t: &Tiles) -> Option<Self> {
            if !vector_cpu().avx512 || t.q != 4 || t.s != S {
                return None;
            }
            match (t.algo, t.in_w, t.in_hw) {
                (Algo::Stride2, 16, 256) => Some(Plan::Stride2(&STRIDE2)),
                (Algo::F4, 16, 256) => Some(Plan::F4(&F4)),
                (Algo::Stride1, 8, 64) => Some(Plan::Stride1(&STRIDE1)),
                _ => None,
            }
        }

        fn sources(self) -> &'static [Source] {
            match self {
                Plan::Stride2(s) => s,
                Plan::F4(s) => s,
                Plan::Stride1(s) => s,
            }
        }
    }

    /// Input column of plane `b`'s value j, as the row functions ([`super::rows`]) take it,
    /// for `r` row phases (2: stride 1, whose planes are columns 2j − 1, 2j + 1, 2j and
    /// 2j + 2; 4: columns 4j + b − 1), or `None` in the padding of a map `w` wide.
    const fn column(r: usize, b: usize, j: usize, w: usize) -> Option<usize> {
        let col = if r == 2 {
            match b {
                0 => 2 * j as isize - 1,
                1 => 2 * j as isize + 1,
                2 => 2 * j as isize,
                _ => 2 * j as isize + 2,
            }
        } else {
            4 * j as isize + b as isize - 1
        };
        if col >= 0 && (col as usize) < w {
            Some(col as usize)
        } else {
            None
        }
    }

    /// The `P` = `r` · `n` planes of a channel of a map `w` wide and 4·`r` high: data row i
    /// of row phase a is input row `r·i + (a + r − 1) mod r` (padded row r·i + a, or one
    /// row on for phase 0).
    const fn sources<const P: usize>(r: usize, n: usize, w: usize) -> [Source; P] {
        let empty = Source {
            vectors: [0; 4],
            lo: [0; 16],
            hi: [0; 16],
            inside: 0,
            data: 0,
            border: 0,
        };
        let mut out = [empty; P];
        let mut p = 0;
        while p < P {
            let (a, b) = (p / n, p % n);
            let mut src = empty;
            let mut i = 0;
            while i < 4 {
                let row = r * i + (a + r - 1) % r;
                src.vectors[i] = w * row / 16;
                let mut j = 0;
                while j < 4 {
                    let k = 4 * i + j;
                    if let Some(col) = column(r, b, j, w) {
                        let lane = ((w * row + col) % 16) as u32;
                        // The first table for rows 0 and 1, the second for 2 and 3.
                        let idx = if i % 2 == 1 { 16 + lane } else { lane };
                        if i < 2 {
                            src.lo[k] = idx;
                        } else {
                            src.hi[k] = idx;
                        }
                        src.inside |= 1 << k;
                    }
                    j += 1;
                }
                i += 1;
            }
            (src.data, src.border) = if a == 0 { (4, 0) } else { (0, 16) };
            out[p] = src;
            p += 1;
        }
        out
    }

    /// [`super::split`] for `plan`'s shape: each channel's planes ([`Source`]), then the
    /// zeros past the last channel.
    ///
    /// # Safety
    /// The CPU has AVX-512F and `plan` is [`Plan::of`] `t`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn split(plan: Plan, t: &Tiles, x: &[f32], phases: &mut [f32]) {
        let sources = plan.sources();
        let per_channel = sources.len() * S;
        for (chan, out) in x
            .chunks_exact(t.in_hw)
            .zip(phases.chunks_exact_mut(per_channel))
            .take(t.c)
        {
            let (xp, op) = (chan.as_ptr(), out.as_mut_ptr());
            // The channel after next, a cache line at a time: the planes read this one's
            // rows out of order, which the hardware prefetcher does not run ahead of.
            for line in (0..t.in_hw).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(xp.wrapping_add(2 * t.in_hw + line).cast());
            }
            for (p, src) in sources.iter().enumerate() {
                // SAFETY: the vectors lie in the channel's in_hw values (16 or 4 vectors of
                // the map, [`sources`]); the plane's S values in `out`, data (16) and border
                // (4) rows within them.
                unsafe {
                    let v = |i: usize| _mm512_loadu_ps(xp.add(16 * src.vectors[i]));
                    let lo = _mm512_permutex2var_ps(
                        v(0),
                        _mm512_loadu_epi32(src.lo.as_ptr().cast()),
                        v(1),
                    );
                    let hi = _mm512_permutex2var_ps(
                        v(2),
                        _mm512_loadu_epi32(src.hi.as_ptr().cast()),
                        v(3),
                    );
                    let data =
                        _mm512_maskz_mov_ps(src.inside, _mm512_mask_blend_ps(0xFF00, lo, hi));
                    let plane = op.add(p * S);
                    _mm512_storeu_ps(plane.add(src.data), data);
                    _mm_storeu_ps(plane.add(src.border), _mm_setzero_ps());
                }
            }
        }
        let end = (per_channel * t.c).min(phases.len());
        phases[end..].fill(0.0);
    }

    #[cfg(test)]
    mod tests {
        use super::super::super::{Algo, Tiles};
        use super::super::{rows, split_with};
        use super::Plan;

        #[allow(clippy::print_stderr)] // says why the test checked nothing
        /// Each shape, three channels of distinct values, against the row by row split.
        #[test]
        fn whole_channels_match_the_row_by_row_split() {
            if !super::vector_cpu().avx512 {
                eprintln!("skipped: this CPU has no AVX-512");
                return;
            }
            // (algo, H = W, output side).
            for (algo, side, out) in [
                (Algo::Stride2, 16, 8),
                (Algo::F4, 16, 16),
                (Algo::Stride1, 8, 8),
            ] {
                let c = 3;
                let a = algo.side();
                let q = out / a;
                let t = Tiles {
                    algo,
                    c,
                    o: 8,
                    w: out,
                    hw: out * out,
                    in_w: side,
                    in_hw: side * side,
                    q,
                    s: (out / a + 1) * q,
                    tiles: out / a * q,
                };
                let plan = Plan::of(&t).unwrap_or_else(|| panic!("no plan for {t:?}"));
                let x: Vec<f32> = (0..c * side * side).map(|k| 1.0 + k as f32).collect();
                let len = t.phase_len();
                let mut want = vec![f32::NAN; len];
                split_with(&t, &x, &mut want, rows::s1, rows::s2, rows::s4);
                let mut got = vec![f32::NAN; len];
                // SAFETY: the CPU has AVX-512 and the plan is for `t` (checked above).
                unsafe { super::split(plan, &t, &x, &mut got) };
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g.to_bits() == w.to_bits(),
                        "{algo:?} value {k}: {g} against {w}"
                    );
                }
            }
        }
    }
}

/// The rows with AVX2 shuffles: eight values of each plane at a time, then four, then the
/// plain loop for what is left.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::{
        __m128, __m256, _mm_blend_ps, _mm_loadu_ps, _mm_move_ss, _mm_set_ss, _mm_set1_ps,
        _mm_shuffle_ps, _mm_storeu_ps, _mm256_blend_ps, _mm256_castpd_ps, _mm256_castps_pd,
        _mm256_loadu_ps, _mm256_permute4x64_pd, _mm256_permutevar8x32_ps, _mm256_set1_ps,
        _mm256_setr_epi32, _mm256_shuffle_ps, _mm256_storeu_ps,
    };

    use super::{Tiles, rows, split_with};

    /// [`super::split`] with the rows below.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn split(t: &Tiles, x: &[f32], phases: &mut [f32]) {
        split_with(
            t,
            x,
            phases,
            // SAFETY (all three): this function's — the CPU has AVX2.
            |src, p| unsafe { s1(src, p) },
            |src, [p0, p1, p2, p3, p4]| unsafe { s2(src, [p0, p1, p2, p3, p4], None) },
            |src, [p0, p1, p2, p3, p4, p5]| unsafe { s2(src, [p0, p1, p2, p3, p4], Some(p5)) },
        );
    }

    /// `[a0 a2 a4 a6 b0 b2 b4 b6]` and `[a1 a3 a5 a7 b1 b3 b5 b7]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn deinterleave(a: __m256, b: __m256) -> (__m256, __m256) {
        // In each 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit pairs reordered.
        let order =
            |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(_mm256_castps_pd(v)));
        (
            order(_mm256_shuffle_ps::<0x88>(a, b)),
            order(_mm256_shuffle_ps::<0xdd>(a, b)),
        )
    }

    /// `[v1 … v7, next]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn shift_down(v: __m256, next: f32) -> __m256 {
        let up = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7));
        _mm256_blend_ps::<0x80>(up, _mm256_set1_ps(next))
    }

    /// `[prev, v0 … v6]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn shift_up(v: __m256, prev: f32) -> __m256 {
        let down = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6));
        _mm256_blend_ps::<0x01>(down, _mm256_set1_ps(prev))
    }

    /// `[v1 v2 v3 next]` of four values.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn shift_down4(v: __m128, next: f32) -> __m128 {
        _mm_blend_ps::<0x08>(_mm_shuffle_ps::<0x39>(v, v), _mm_set1_ps(next))
    }

    /// `[prev v0 v1 v2]` of four values.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn shift_up4(v: __m128, prev: f32) -> __m128 {
        _mm_move_ss(_mm_shuffle_ps::<0x93>(v, v), _mm_set_ss(prev))
    }

    /// [`rows::s1`] with shuffles.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn s1(src: &[f32], p: [&mut [f32]; 4]) {
        let q = p[2].len();
        if src.len() != 2 * q || p.iter().any(|pl| pl.len() != q) {
            // Not a row of this split: the checked loop (which panics on a bad index).
            return rows::s1(src, p);
        }
        let [p0, p1, p2, p3] = p;
        let (s, d0, d1, d2, d3) = (
            src.as_ptr(),
            p0.as_mut_ptr(),
            p1.as_mut_ptr(),
            p2.as_mut_ptr(),
            p3.as_mut_ptr(),
        );
        let prev = |j: usize| if j == 0 { 0.0 } else { src[2 * j - 1] };
        let next = |j: usize| if j == q { 0.0 } else { src[2 * j] };
        let mut j = 0;
        // SAFETY (all loads and stores): j + 8 ≤ q (then j + 4 ≤ q) reads src[2j .. 2j + 16]
        // (2j + 8) within its 2q values, and writes values j .. j + 8 (j + 4) of planes of q.
        while j + 8 <= q {
            let (even, odd) = unsafe {
                deinterleave(
                    _mm256_loadu_ps(s.add(2 * j)),
                    _mm256_loadu_ps(s.add(2 * j + 8)),
                )
            };
            unsafe {
                _mm256_storeu_ps(d2.add(j), even);
                _mm256_storeu_ps(d1.add(j), odd);
                _mm256_storeu_ps(d0.add(j), shift_up(odd, prev(j)));
                _mm256_storeu_ps(d3.add(j), shift_down(even, next(j + 8)));
            }
            j += 8;
        }
        if j + 4 <= q {
            let (a, b) = unsafe { (_mm_loadu_ps(s.add(2 * j)), _mm_loadu_ps(s.add(2 * j + 4))) };
            let (even, odd) = (_mm_shuffle_ps::<0x88>(a, b), _mm_shuffle_ps::<0xdd>(a, b));
            unsafe {
                _mm_storeu_ps(d2.add(j), even);
                _mm_storeu_ps(d1.add(j), odd);
                _mm_storeu_ps(d0.add(j), shift_up4(odd, prev(j)));
                _mm_storeu_ps(d3.add(j), shift_down4(even, next(j + 4)));
            }
            j += 4;
        }
        rows::s1_from(src, [p0, p1, p2, p3], j);
    }

    /// [`rows::s2`] with shuffles: two rounds of [`deinterleave`]'s in-lane shuffles leave
    /// `[j0 j2 j4 j6 | j1 j3 j5 j7]`, put in order by one permutation; with `p5`,
    /// [`rows::s4`]: plane 1 shifted by a value into it as well.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn s2(src: &[f32], p: [&mut [f32]; 5], p5: Option<&mut [f32]>) {
        let q = p[1].len();
        if src.len() != 4 * q
            || p.iter().any(|pl| pl.len() != q)
            || p5.as_ref().is_some_and(|pl| pl.len() != q)
        {
            let [p0, p1, p2, p3, p4] = p;
            return match p5 {
                Some(p5) => rows::s4(src, [p0, p1, p2, p3, p4, p5]),
                None => rows::s2(src, [p0, p1, p2, p3, p4]),
            };
        }
        let [p0, p1, p2, p3, p4] = p;
        let mut p5 = p5;
        let d5 = p5.as_deref_mut().map(<[f32]>::as_mut_ptr);
        let next = |j: usize| if j == q { 0.0 } else { src[4 * j] };
        let s = src.as_ptr();
        let d = [
            p0.as_mut_ptr(),
            p1.as_mut_ptr(),
            p2.as_mut_ptr(),
            p3.as_mut_ptr(),
            p4.as_mut_ptr(),
        ];
        let prev = |j: usize| if j == 0 { 0.0 } else { src[4 * j - 1] };
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut j = 0;
        // SAFETY (all loads and stores): j + 8 ≤ q (then j + 4 ≤ q) reads src[4j .. 4j + 32]
        // (4j + 16) within its 4q values, and writes values j .. j + 8 (j + 4) of planes of q
        // (p5's, d5, included).
        while j + 8 <= q {
            let [a, b, c, e] = [0, 8, 16, 24].map(|k| unsafe { _mm256_loadu_ps(s.add(4 * j + k)) });
            let (ab0, ab1) = (
                _mm256_shuffle_ps::<0x88>(a, b),
                _mm256_shuffle_ps::<0xdd>(a, b),
            );
            let (ce0, ce1) = (
                _mm256_shuffle_ps::<0x88>(c, e),
                _mm256_shuffle_ps::<0xdd>(c, e),
            );
            let phase = |v: __m256| _mm256_permutevar8x32_ps(v, order);
            let v1 = phase(_mm256_shuffle_ps::<0x88>(ab0, ce0));
            let v2 = phase(_mm256_shuffle_ps::<0x88>(ab1, ce1));
            let v3 = phase(_mm256_shuffle_ps::<0xdd>(ab0, ce0));
            let v4 = phase(_mm256_shuffle_ps::<0xdd>(ab1, ce1));
            unsafe {
                _mm256_storeu_ps(d[1].add(j), v1);
                _mm256_storeu_ps(d[2].add(j), v2);
                _mm256_storeu_ps(d[3].add(j), v3);
                _mm256_storeu_ps(d[4].add(j), v4);
                _mm256_storeu_ps(d[0].add(j), shift_up(v4, prev(j)));
                if let Some(d5) = d5 {
                    _mm256_storeu_ps(d5.add(j), shift_down(v1, next(j + 8)));
                }
            }
            j += 8;
        }
        if j + 4 <= q {
            let [a, b, c, e] = [0, 4, 8, 12].map(|k| unsafe { _mm_loadu_ps(s.add(4 * j + k)) });
            let (ab0, ab1) = (_mm_shuffle_ps::<0x88>(a, b), _mm_shuffle_ps::<0xdd>(a, b));
            let (ce0, ce1) = (_mm_shuffle_ps::<0x88>(c, e), _mm_shuffle_ps::<0xdd>(c, e));
            let v4 = _mm_shuffle_ps::<0xdd>(ab1, ce1);
            let v1 = _mm_shuffle_ps::<0x88>(ab0, ce0);
            unsafe {
                _mm_storeu_ps(d[1].add(j), v1);
                _mm_storeu_ps(d[2].add(j), _mm_shuffle_ps::<0x88>(ab1, ce1));
                _mm_storeu_ps(d[3].add(j), _mm_shuffle_ps::<0xdd>(ab0, ce0));
                _mm_storeu_ps(d[4].add(j), v4);
                _mm_storeu_ps(d[0].add(j), shift_up4(v4, prev(j)));
                if let Some(d5) = d5 {
                    _mm_storeu_ps(d5.add(j), shift_down4(v1, next(j + 4)));
                }
            }
            j += 4;
        }
        match p5 {
            Some(p5) => rows::s4_from(src, [p0, p1, p2, p3, p4, p5], j),
            None => rows::s2_from(src, [p0, p1, p2, p3, p4], j),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::rows;

        /// A row of `n` distinct values.
        fn row(n: usize) -> Vec<f32> {
            (0..n).map(|k| 1.0 + k as f32).collect()
        }

        #[test]
        #[allow(clippy::print_stderr)] // says why the test checked nothing
        fn shuffled_rows_match_the_plain_loops() {
            if !std::arch::is_x86_feature_detected!("avx2") {
                eprintln!("skipped: this CPU has no AVX2");
                return;
            }
            // Every tail: 8-value blocks, a 4-value block, single values, and rows of one.
            // (Values are distinct, so a plane written from the wrong column shows.)
            for q in 1..=37 {
                let src = row(2 * q);
                let mut want: [Vec<f32>; 4] = std::array::from_fn(|_| vec![f32::NAN; q]);
                let mut got = want.clone();
                let [a, b, c, d] = &mut want;
                rows::s1(&src, [a, b, c, d]);
                let [a, b, c, d] = &mut got;
                // SAFETY: the CPU has AVX2, checked above.
                unsafe { super::s1(&src, [a, b, c, d]) };
                assert_eq!(got, want, "stride 1, q = {q}");

                let src = row(4 * q);
                let mut want: [Vec<f32>; 5] = std::array::from_fn(|_| vec![f32::NAN; q]);
                let mut got = want.clone();
                let [a, b, c, d, e] = &mut want;
                rows::s2(&src, [a, b, c, d, e]);
                let [a, b, c, d, e] = &mut got;
                // SAFETY: as above.
                unsafe { super::s2(&src, [a, b, c, d, e], None) };
                assert_eq!(got, want, "stride 2, q = {q}");

                // F(4×4, 3×3): the stride-2 planes and plane 1 shifted by a value.
                let mut want: [Vec<f32>; 6] = std::array::from_fn(|_| vec![f32::NAN; q]);
                let mut got = want.clone();
                let [a, b, c, d, e, f] = &mut want;
                rows::s4(&src, [a, b, c, d, e, f]);
                assert_eq!(want[5][q - 1], 0.0);
                assert_eq!(want[5][..q - 1], want[1][1..]);
                let [a, b, c, d, e, f] = &mut got;
                // SAFETY: as above.
                unsafe { super::s2(&src, [a, b, c, d, e], Some(f)) };
                assert_eq!(got, want, "F(4×4, 3×3), q = {q}");
            }
        }
    }
}
