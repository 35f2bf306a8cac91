//! Two helpers for the memory-bound loops of the kernels (batch norm, residual add, ReLU
//! masks, the Winograd input split), written in plain Rust to vectorise on their own:
//!
//! - [`wide`] compiles a loop for AVX2 + FMA where the CPU has them. The crate is built for
//!   baseline x86-64, whose SSE2 moves 16 bytes per instruction; these loops ran as SSE2 in
//!   a profile of the 32 px contrastive step (a sixth of its time in all).
//! - [`collect_chunks`] makes a new tensor's values with one write each: `vec![0.0; n]`
//!   followed by a pass that overwrites every value writes them twice, and the zeroing alone
//!   was 5% of that step.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Runs `f` with its code compiled for AVX2 + FMA where the CPU has them, else as it is. Only
/// what is inlined into the AVX2 function gets the wider vectors: make `f` an
/// `#[inline(always)]` closure (without it LLVM compiled the closures of this crate's loops on
/// their own, for the baseline) and the helpers it calls `#[inline(always)]`. Rust never fuses a multiplication and an addition by itself, and these
/// loops keep their order of summation, so the results are bit for bit those of the baseline
/// code.
#[inline(always)]
#[allow(unsafe_code)]
pub(super) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        /// `f` compiled for AVX2 + FMA.
        #[target_feature(enable = "avx2,fma")]
        fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { with_avx2(f) };
    }
    f()
}

/// `n` values made in parallel, `chunk` at a time (the last chunk may be shorter): chunk `i`
/// holds the values of `values(i)` — zeros past its end if it yields fewer — each written once,
/// in a loop compiled by [`wide`] (`values` should be an `#[inline(always)]` closure).
#[allow(unsafe_code)]
pub(super) fn collect_chunks<I, F>(n: usize, chunk: usize, values: F) -> Vec<f32>
where
    F: Fn(usize) -> I + Sync,
    I: Iterator<Item = f32>,
{
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, slots)| {
            wide(
                #[inline(always)]
                || write_all(slots, values(i)),
            );
        });
    // SAFETY: `write_all` wrote every slot of every chunk, and the chunks cover the first `n`
    // slots of the spare capacity, which holds at least `n`.
    unsafe {
        out.set_len(n);
    }
    out
}

/// Chunk `i` of `len` values of `s` (as `s.chunks(len)` numbers them), cut at its end and
/// empty past it: a second operand shorter than the first gives zeros in
/// [`collect_chunks`], never a panic.
#[inline(always)]
pub(super) fn chunk(s: &[f32], i: usize, len: usize) -> &[f32] {
    let end = s.len();
    &s[(i * len).min(end)..((i + 1) * len).min(end)]
}

/// Writes `values` into `slots`, then zeros into any slot left.
#[inline(always)]
fn write_all(slots: &mut [MaybeUninit<f32>], values: impl Iterator<Item = f32>) {
    let mut written = 0;
    for (slot, v) in slots.iter_mut().zip(values) {
        slot.write(v);
        written += 1;
    }
    for slot in &mut slots[written..] {
        slot.write(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::{collect_chunks, wide};

    #[test]
    fn values_match_the_plain_loop_and_short_chunks_end_in_zeros() {
        let x: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 3.0).collect();
        let y = collect_chunks(x.len(), 64, |i| {
            let part = &x[i * 64..((i + 1) * 64).min(x.len())];
            part.iter().map(|v| (v * 2.0).max(0.0))
        });
        let want: Vec<f32> = x.iter().map(|v| (v * 2.0).max(0.0)).collect();
        assert_eq!(y, want);
        // A chunk that yields only half its values: the rest are zeros.
        let short = collect_chunks(100, 10, |i| (0..5).map(move |k| (i * 10 + k) as f32 + 1.0));
        for (j, v) in short.iter().enumerate() {
            let want = if j % 10 < 5 { j as f32 + 1.0 } else { 0.0 };
            assert_eq!(*v, want, "value {j}");
        }
        assert!(collect_chunks(0, 8, |_| std::iter::empty()).is_empty());
    }

    /// Lane sums of `x · 1.5 + 0.25`, the shape of batch norm's backward sums.
    #[inline(always)]
    fn lane_sums(x: &[f32]) -> [f32; 8] {
        let mut acc = [0f32; 8];
        for c in x.chunks_exact(8) {
            for l in 0..8 {
                acc[l] += c[l] * 1.5 + 0.25;
            }
        }
        acc
    }

    /// Baseline code: the helper compiled into a function of its own.
    #[inline(never)]
    fn lane_sums_baseline(x: &[f32]) -> [f32; 8] {
        lane_sums(x)
    }

    #[test]
    fn wide_code_gives_the_baseline_bits() {
        let x: Vec<f32> = (0..4099)
            .map(|i| ((i * 37 % 101) as f32).sin() * 1e3)
            .collect();
        let x = std::hint::black_box(x);
        let wide_sums = wide(
            #[inline(always)]
            || lane_sums(&x),
        );
        assert_eq!(wide_sums, lane_sums_baseline(&x));
    }

    #[test]
    fn chunks_longer_than_the_values_and_iterators_longer_than_chunks() {
        // One chunk wider than n; iterators that yield more than their chunk holds.
        let y = collect_chunks(5, 64, |_| (0..100).map(|k| k as f32));
        assert_eq!(y, [0., 1., 2., 3., 4.]);
        let y = collect_chunks(10, 4, |i| (0..).map(move |k| (i * 100 + k) as f32));
        assert_eq!(y, [0., 1., 2., 3., 100., 101., 102., 103., 200., 201.]);
    }
}
