//! im2col and col2im: one image (C × H × W) to and from its column matrix (C·K·K × Ho·Wo,
//! row-major; row (c·K + ky)·K + kx holds what kernel tap (c, ky, kx) reads for every output
//! pixel), or its block of a group's column matrix (`_at`: columns `off..off + Ho·Wo` of rows
//! `ld` values long, the images of a group side by side). "Same" convolutions copy each row as
//! one shifted block of the plane; strided ones split each input row into its phases once,
//! then copy contiguous runs of a phase.

use std::ops::Range;

use super::geometry::{ConvGeom, Span};

/// Where the valid outputs of one kernel column read in the phases of an input row
/// ([`RowPhases`]): output `ox` of `out` reads phase `phase` at index `at + (ox − out.start)`.
#[derive(Clone, Copy, Debug)]
struct PhaseRead {
    /// The outputs whose input lies inside the row.
    out: Span,
    /// The phase they read, `r` in 0..stride.
    phase: usize,
    /// The index in that phase the first of them reads.
    at: usize,
}

/// One input row split into its `stride` phases — phase `r` holds row[r], row[r + s], … —
/// and where each kernel column reads in them: the working buffer of strided im2col and
/// col2im.
struct RowPhases {
    stride: usize,
    /// Values per phase, ⌈W / stride⌉.
    len: usize,
    /// The phases one after another, stride × len values.
    values: Vec<f32>,
    /// Per kernel column kx, where its valid outputs read.
    reads: Vec<PhaseRead>,
}

impl RowPhases {
    fn new(g: &ConvGeom) -> Self {
        let s = g.stride;
        let len = g.w.div_ceil(s);
        let reads = (0..g.k)
            .map(|kx| {
                let out = g.valid(kx, g.w, g.wo());
                let ix0 = (out.start * s + kx).saturating_sub(g.pad);
                PhaseRead {
                    out,
                    phase: ix0 % s,
                    at: ix0 / s,
                }
            })
            .collect();
        Self {
            stride: s,
            len,
            values: vec![0f32; s * len],
            reads,
        }
    }

    /// Where `read` reads in [`RowPhases::values`].
    fn run(&self, read: &PhaseRead) -> Range<usize> {
        let from = read.phase * self.len + read.at;
        from..from + read.out.len()
    }

    /// `values[r·len + j] = row[j·s + r]`.
    fn split(&mut self, row: &[f32]) {
        let (s, plen) = (self.stride, self.len);
        let phases = &mut self.values;
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

    /// `row[j·s + r] += values[r·len + j]`, the adjoint of [`RowPhases::split`].
    fn add_to(&self, row: &mut [f32]) {
        let (s, plen) = (self.stride, self.len);
        let phases = &self.values;
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
}

impl ConvGeom {
    /// Fills `col` (C·K·K × Ho·Wo, row-major) from one image `x` (C × H × W).
    pub(super) fn im2col(&self, x: &[f32], col: &mut [f32]) {
        self.im2col_at(x, col, self.hw_out(), 0);
    }

    /// Fills the Ho·Wo columns `off..off + Ho·Wo` of `col` (C·K·K rows of `ld` values each)
    /// from one image `x` (C × H × W): one image's block of a group's column matrix. A
    /// pointwise convolution's columns are the image's planes.
    pub(super) fn im2col_at(&self, x: &[f32], col: &mut [f32], ld: usize, off: usize) {
        if self.is_pointwise() {
            let hw = self.hw_out();
            for (c, plane) in x.chunks_exact(hw.max(1)).take(self.c).enumerate() {
                col[c * ld + off..c * ld + off + hw].copy_from_slice(plane);
            }
            return;
        }
        if self.stride > 1 {
            return self.im2col_strided(x, col, ld, off);
        }
        let (ho, wo, k) = (self.ho(), self.wo(), self.k);
        let hw = ho * wo;
        for c in 0..self.c {
            let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..k {
                let ys = self.valid(ky, self.h, ho);
                for kx in 0..k {
                    let xs = self.valid(kx, self.w, wo);
                    let row = (c * k + ky) * k + kx;
                    let dst = &mut col[row * ld + off..row * ld + off + hw];
                    dst[..ys.start * wo].fill(0.0);
                    dst[ys.end * wo..].fill(0.0);
                    if wo == self.w && ys.end > ys.start {
                        // "Same" convolution: the valid rows are one shifted block of the
                        // plane; copy it at once, then clear the columns that wrapped around.
                        let shift = kx as isize - self.pad as isize;
                        let iy0 = ys.start + ky - self.pad;
                        let (d0, d1) = (ys.start * wo, ys.end * wo);
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
                        // Columns outside `xs` (one per side for a 3×3 kernel) read across
                        // a row edge: clear them, column by column down the block.
                        for j in (0..xs.start).chain(xs.end..wo) {
                            for v in dst[d0 + j..d1].iter_mut().step_by(wo) {
                                *v = 0.0;
                            }
                        }
                        continue;
                    }
                    for oy in ys.start..ys.end {
                        let iy = oy + ky - self.pad;
                        let src = &plane[iy * self.w..(iy + 1) * self.w];
                        let d = &mut dst[oy * wo..(oy + 1) * wo];
                        d[..xs.start].fill(0.0);
                        d[xs.end..].fill(0.0);
                        let ix0 = xs.start + kx - self.pad;
                        d[xs.start..xs.end].copy_from_slice(&src[ix0..ix0 + xs.len()]);
                    }
                }
            }
        }
    }

    /// Adds `col` (C·K·K × Ho·Wo) back onto one image `dx` (C × H × W), which the caller
    /// zeroed: the adjoint of `im2col`. Entries of `col` that belong to no input pixel may be
    /// overwritten.
    pub(super) fn col2im(&self, col: &mut [f32], dx: &mut [f32]) {
        self.col2im_at(col, self.hw_out(), 0, dx);
    }

    /// [`ConvGeom::col2im`] from the Ho·Wo columns `off..off + Ho·Wo` of `col` (C·K·K rows
    /// of `ld` values each): one image's block of a group's column matrix, the adjoint of
    /// [`ConvGeom::im2col_at`].
    pub(super) fn col2im_at(&self, col: &mut [f32], ld: usize, off: usize, dx: &mut [f32]) {
        if self.is_pointwise() {
            let hw = self.hw_out();
            for (c, plane) in dx.chunks_exact_mut(hw.max(1)).take(self.c).enumerate() {
                let src = &col[c * ld + off..c * ld + off + hw];
                for (v, g) in plane.iter_mut().zip(src) {
                    *v += g;
                }
            }
            return;
        }
        if self.stride > 1 {
            return self.col2im_strided(col, ld, off, dx);
        }
        let (ho, wo, k) = (self.ho(), self.wo(), self.k);
        let hw = ho * wo;
        for c in 0..self.c {
            let plane = &mut dx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..k {
                let ys = self.valid(ky, self.h, ho);
                for kx in 0..k {
                    let xs = self.valid(kx, self.w, wo);
                    let row = (c * k + ky) * k + kx;
                    let src = &mut col[row * ld + off..row * ld + off + hw];
                    if wo == self.w && ys.end > ys.start {
                        // "Same" convolution: the valid rows map onto one shifted block of
                        // the plane. Clear the columns that wrapped around a row edge (they
                        // belong to no input pixel), then add the block at once.
                        let (d0, d1) = (ys.start * wo, ys.end * wo);
                        for j in (0..xs.start).chain(xs.end..wo) {
                            for v in src[d0 + j..d1].iter_mut().step_by(wo) {
                                *v = 0.0;
                            }
                        }
                        // Column d0 + j lands on plane[s0 + j]; the block's first or last
                        // value may fall just outside the plane, and it is a cleared one.
                        let s0 =
                            ((ys.start + ky - self.pad) * self.w + kx) as isize - self.pad as isize;
                        let skip = (-s0).max(0) as usize;
                        let p0 = (s0 + skip as isize) as usize;
                        let len = (d1 - d0 - skip).min(plane.len().saturating_sub(p0));
                        for (v, g) in plane[p0..p0 + len].iter_mut().zip(&src[d0 + skip..]) {
                            *v += g;
                        }
                        continue;
                    }
                    let src = &*src;
                    for oy in ys.start..ys.end {
                        let iy = oy + ky - self.pad;
                        let d = &mut plane[iy * self.w..(iy + 1) * self.w];
                        let sr = &src[oy * wo + xs.start..oy * wo + xs.end];
                        let ix0 = xs.start + kx - self.pad;
                        for (v, g) in d[ix0..ix0 + sr.len()].iter_mut().zip(sr) {
                            *v += g;
                        }
                    }
                }
            }
        }
    }

    /// [`ConvGeom::im2col`] for stride > 1: each input row is split once into its `s` phases,
    /// after which every kernel column copies one contiguous run of a phase (instead of a
    /// strided gather per kernel column).
    fn im2col_strided(&self, x: &[f32], col: &mut [f32], ld: usize, off: usize) {
        let (ho, wo, k, s) = (self.ho(), self.wo(), self.k, self.stride);
        let hw = ho * wo;
        let mut phases = RowPhases::new(self);
        for c in 0..self.c {
            let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..k {
                let ys = self.valid(ky, self.h, ho);
                let rows = (c * k + ky) * k..(c * k + ky + 1) * k;
                for row in rows.clone() {
                    let dst = &mut col[row * ld + off..row * ld + off + hw];
                    dst[..ys.start * wo].fill(0.0);
                    dst[ys.end * wo..].fill(0.0);
                }
                for oy in ys.start..ys.end {
                    let iy = oy * s + ky - self.pad;
                    phases.split(&plane[iy * self.w..(iy + 1) * self.w]);
                    for (row, read) in rows.clone().zip(&phases.reads) {
                        let xs = read.out;
                        let at = row * ld + off + oy * wo;
                        let d = &mut col[at..at + wo];
                        d[..xs.start].fill(0.0);
                        d[xs.end..].fill(0.0);
                        d[xs.start..xs.end].copy_from_slice(&phases.values[phases.run(read)]);
                    }
                }
            }
        }
    }

    /// [`ConvGeom::col2im`] for stride > 1, the adjoint of [`ConvGeom::im2col_strided`]: the
    /// kernel columns are summed into the phases of an input row, which are then added back
    /// into the row once.
    fn col2im_strided(&self, col: &[f32], ld: usize, off: usize, dx: &mut [f32]) {
        let (ho, wo, k, s) = (self.ho(), self.wo(), self.k, self.stride);
        let mut phases = RowPhases::new(self);
        for c in 0..self.c {
            let plane = &mut dx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..k {
                let ys = self.valid(ky, self.h, ho);
                let rows = (c * k + ky) * k..(c * k + ky + 1) * k;
                for oy in ys.start..ys.end {
                    phases.values.fill(0.0);
                    for (row, read) in rows.clone().zip(&phases.reads) {
                        let xs = read.out;
                        let at = row * ld + off + oy * wo;
                        let g = &col[at + xs.start..at + xs.end];
                        let run = phases.run(read);
                        for (p, v) in phases.values[run].iter_mut().zip(g) {
                            *p += v;
                        }
                    }
                    let iy = oy * s + ky - self.pad;
                    phases.add_to(&mut plane[iy * self.w..(iy + 1) * self.w]);
                }
            }
        }
    }
}
