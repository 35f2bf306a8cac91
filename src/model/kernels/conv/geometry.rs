//! The geometry of one convolution: its sizes, the output range each kernel offset reaches,
//! and how a batch is cut into runs of images for per-run partial sums.

use std::ops::Range;

use candle_core::{Result, bail};

use super::super::operands::Planes;

/// Geometry of one convolution of an (N, C, H, W) input with an (O, C, K, K) weight into an
/// (N, O, Ho, Wo) output. Sizes are counts of values; `stride` and `pad` are in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Images in the batch, N.
    pub n: usize,
    /// Input channels, C.
    pub c: usize,
    /// Input rows, H.
    pub h: usize,
    /// Input columns, W.
    pub w: usize,
    /// Output channels, O.
    pub o: usize,
    /// Kernel side, K (square kernels only).
    pub k: usize,
    /// Step between output pixels, in input pixels (both axes).
    pub stride: usize,
    /// Zeros added on every side of the input, in pixels.
    pub pad: usize,
}

/// The output positions `start..end` along one axis whose input position, for one kernel
/// offset, lies inside the input (the others read padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: usize,
    pub(super) end: usize,
}

impl Span {
    /// How many outputs, `end − start`.
    pub(super) fn len(&self) -> usize {
        self.end - self.start
    }
}

impl ConvGeom {
    /// The geometry of `x` (N, C, H, W) convolved with `w` (O, C, K, K).
    pub fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[n, c, h, wd], &[o, wc, k, k2]) = (x, w) else {
            bail!("conv2d: expected 4-D input and weight, got {x:?} and {w:?}");
        };
        if c == 0 || o == 0 {
            bail!("conv2d: input {x:?} and weight {w:?} need at least one channel each");
        }
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

    /// Output rows, Ho.
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Output columns, Wo.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Rows of the im2col matrix: C·K·K.
    pub(in crate::model::kernels) fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Columns of the im2col matrix: output pixels of one image, Ho·Wo.
    pub(in crate::model::kernels) fn hw_out(&self) -> usize {
        self.ho() * self.wo()
    }

    /// Values of one input image, C·H·W.
    pub(in crate::model::kernels) fn in_image(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Values of one output image, O·Ho·Wo.
    pub(in crate::model::kernels) fn out_image(&self) -> usize {
        self.o * self.hw_out()
    }

    /// The output as planes (N images, O channels, Ho·Wo values each), for the batch norm
    /// that follows the convolution.
    pub(in crate::model::kernels) fn out_planes(&self) -> Planes {
        Planes {
            n: self.n,
            c: self.o,
            hw: self.hw_out(),
        }
    }

    /// A 1×1 convolution with stride 1 and no padding needs no im2col: the image is its own
    /// column matrix.
    pub(super) fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// For kernel offset `kk` along one axis of `len` input and `out_len` output positions:
    /// the outputs whose input position `o·stride + kk − pad` lies inside `0..len`.
    pub(super) fn valid(&self, kk: usize, len: usize, out_len: usize) -> Span {
        let s = self.stride;
        // o·s + kk ≥ pad  ⇔  o ≥ ceil((pad − kk) / s)
        let lo = self.pad.saturating_sub(kk).div_ceil(s);
        // o·s + kk − pad ≤ len − 1  ⇔  o ≤ (len − 1 + pad − kk) / s
        let hi = match (len + self.pad).checked_sub(kk + 1) {
            Some(v) => (v / s + 1).min(out_len),
            None => 0,
        };
        Span {
            start: lo.min(hi),
            end: hi,
        }
    }

    /// The batch cut into runs of contiguous images, for loops that keep one partial sum of
    /// `partial` values per run: a few runs per thread ([`RUNS_PER_THREAD`]), so a thread
    /// slowed by other work does not hold the others up, but only as many as keep a thread's
    /// partial sums within [`PARTIALS_PER_THREAD`] bytes (at least one run per thread) — each
    /// run's sum is zeroed, added into and summed with the others, so for large ∂L/∂U sums
    /// (at the 16 px views 2.4 MB per run for l3.c2, 0.8 MB for l3.c1, 0.6 MB for l2.c2)
    /// runs beyond one per thread cost more memory traffic than they save in balance
    /// (`pretext bench --task contrastive --size 16` on an AMD EPYC Zen 4: +2.3%, the same in
    /// three alternations).
    ///
    /// Runs are whole groups of images ([`ConvGeom::group`]) where there is more than one
    /// image per product, so no product is cut short by a run's end.
    pub(in crate::model::kernels) fn runs(&self, partial: usize) -> ImageRuns {
        let bytes = (partial * std::mem::size_of::<f32>()).max(1);
        let per_thread = (PARTIALS_PER_THREAD / bytes).clamp(1, RUNS_PER_THREAD);
        let per_run = self
            .n
            .div_ceil(per_thread * rayon::current_num_threads().max(1))
            .max(1);
        ImageRuns {
            n: self.n,
            per_run: per_run.next_multiple_of(self.group()),
        }
    }
}

/// Runs per thread of [`ConvGeom::runs`] where the partial sums are small.
const RUNS_PER_THREAD: usize = 4;

/// The most bytes of partial sums [`ConvGeom::runs`] gives a thread where runs have large
/// ones (1 MiB: about an L2 cache), down to one run per thread.
const PARTIALS_PER_THREAD: usize = 1 << 20;

/// A batch of `n` images cut into runs of `per_run` contiguous images (the last may be
/// shorter); at least one run, even for an empty batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::model::kernels) struct ImageRuns {
    /// Images in the batch, N.
    pub(in crate::model::kernels) n: usize,
    /// Images per run (at least 1).
    pub(in crate::model::kernels) per_run: usize,
}

impl ImageRuns {
    /// How many runs cover the batch.
    pub(in crate::model::kernels) fn count(&self) -> usize {
        self.n.div_ceil(self.per_run).max(1)
    }

    /// The images of run `run`.
    pub(in crate::model::kernels) fn images(&self, run: usize) -> Range<usize> {
        run * self.per_run..((run + 1) * self.per_run).min(self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::ConvGeom;

    /// Runs cover the batch in whole groups; small partial sums give four runs per thread,
    /// the last stage's ∂L/∂U sums (2.4 MB for l3.c2 at the 16 px views) one per thread.
    #[test]
    fn runs_cover_the_batch_and_shrink_with_large_partial_sums() {
        let g = ConvGeom {
            n: 256,
            c: 128,
            h: 4,
            w: 4,
            o: 128,
            k: 3,
            stride: 1,
            pad: 1,
        };
        let threads = rayon::current_num_threads().max(1);
        for partial in [1, 37 << 10, 36 * 128 * 128] {
            let runs = g.runs(partial);
            assert_eq!(runs.per_run % g.group(), 0, "{partial}: {runs:?}");
            let covered: usize = (0..runs.count()).map(|r| runs.images(r).len()).sum();
            assert_eq!(covered, g.n, "{partial}: {runs:?}");
        }
        // 147 KB of partial sums (l1 at the 16 px views): four runs per thread, as far as
        // whole groups allow.
        let small = g.runs(36 * 32 * 32);
        let per_run = g.n.div_ceil(4 * threads).next_multiple_of(g.group());
        assert_eq!(small.per_run, per_run, "{small:?}");
        // 2.4 MB (l3.c2): one run per thread.
        let large = g.runs(36 * 128 * 128);
        let per_run = g.n.div_ceil(threads).next_multiple_of(g.group());
        assert_eq!(large.per_run, per_run, "{large:?}");
        assert!(large.count() <= threads && large.count() <= small.count());
    }
}
