//! Helpers for the memory-bound loops of the kernels (batch norm, residual add, ReLU
//! masks, the Winograd input split), written in plain Rust to vectorise on their own:
//!
//! - [`wide`] compiles a loop for AVX2 + FMA where the CPU has them. The crate is built for
//!   baseline x86-64, whose SSE2 moves 16 bytes per instruction; these loops ran as SSE2 in
//!   a profile of the 32 px contrastive step (a sixth of its time in all).
//! - [`collect_chunks`] makes a new tensor's values with one write each: `vec![0.0; n]`
//!   followed by a pass that overwrites every value writes them twice, and the zeroing alone
//!   was 5% of that step.
//! - [`zeros`] zeroes a large new buffer on all the pool's threads instead of the caller's,
//!   and [`zeroed_chunks`] in the jobs that then write it, chunk by chunk;
//!   [`overwritten_chunks`] skips the zeros for a kernel that writes every value, into a
//!   buffer an earlier step gave back ([`pool`]).

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use super::pool;

/// Runs `f` with its code compiled for AVX2 + FMA where the CPU has them, else as it is. Only
/// what is inlined into the AVX2 function gets the wider vectors: make `f` an
/// `#[inline(always)]` closure (without it LLVM compiled the closures of this crate's loops on
/// their own, for the baseline) and the helpers it calls `#[inline(always)]`. Rust never fuses
/// a multiplication and an addition by itself, and these loops keep their order of summation,
/// so the results are bit for bit those of the baseline code.
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

/// `n` zeros, written by the pool's threads in parallel where `n` is large. `vec![0.0; n]`
/// of memory the allocator reuses (a freed tensor's) is one `memset` on the calling thread,
/// which for a layer's output is the step's own, while the pool's other threads wait: 7% of
/// the samples of a 32 px rotation step on a 2-core AVX-512 Xeon, all on that one thread.
pub(super) fn zeros(n: usize) -> Vec<f32> {
    /// Values up to which one thread zeroes them all (256 KiB).
    const SERIAL: usize = 1 << 16;
    /// Values per parallel chunk (64 KiB).
    const CHUNK: usize = SERIAL / 4;
    if n <= SERIAL {
        return vec![0.0; n];
    }
    collect_chunks(n, CHUNK, |_| std::iter::empty())
}

/// A new buffer of `n` values made in parallel, `chunk` values at a time (the last chunk may
/// be shorter; a `chunk` of 0 counts as 1): chunk `i` is zeroed and then `f(state, i, chunk,
/// item)` runs on it, with the `i`-th of `items` (one per chunk) and a `state` made by
/// `init` for each of rayon's splits (as `try_for_each_init`). Where a kernel writes a chunk
/// or adds into it, the zeros are written by the thread that then uses them, while the chunk
/// is in its core's cache — not as one `memset` of the whole buffer on the caller's thread
/// before the jobs start, which wrote every value to memory once more and left the other
/// threads waiting.
///
/// # Errors
/// An error of `f` (with several, any one of them); and if `items` does not have one item
/// per chunk.
#[allow(unsafe_code)]
pub(super) fn zeroed_chunks<W, S, E, I, F>(
    n: usize,
    chunk: usize,
    items: I,
    init: impl Fn() -> W + Sync + Send,
    f: F,
) -> Result<Vec<f32>, E>
where
    I: IndexedParallelIterator<Item = S>,
    F: Fn(&mut W, usize, &mut [f32], S) -> Result<(), E> + Sync + Send,
    E: From<candle_core::Error> + Send,
{
    let mut out = Vec::with_capacity(n);
    // Slots zeroed, counted: the item count is checked against `len()`, which a safe iterator
    // could misstate, so it is not what `set_len` relies on.
    let zeroed = run_chunks(
        &mut out.spare_capacity_mut()[..n],
        chunk,
        items,
        init,
        f,
        zero,
    )?;
    if zeroed != n {
        return Err(candle_core::Error::Msg(format!(
            "parallel buffer: {n} values, not all zeroed by its jobs"
        ))
        .into());
    }
    // SAFETY: the chunks of the first `n` slots do not overlap, each was zeroed once by
    // `zero`, and they hold `n` values in all (counted just above): all `n` are initialised.
    unsafe {
        out.set_len(n);
    }
    Ok(out)
}

/// [`zeroed_chunks`] for a kernel `f` that writes every value of its chunk: into a buffer of
/// `n` values from [`pool::take`] where there is one (its old values left for `f` to
/// overwrite: no pass of zeros), else into a new zeroed one.
///
/// # Errors
/// As [`zeroed_chunks`].
pub(super) fn overwritten_chunks<W, S, E, I, F>(
    n: usize,
    chunk: usize,
    items: I,
    init: impl Fn() -> W + Sync + Send,
    f: F,
) -> Result<Vec<f32>, E>
where
    I: IndexedParallelIterator<Item = S>,
    F: Fn(&mut W, usize, &mut [f32], S) -> Result<(), E> + Sync + Send,
    E: From<candle_core::Error> + Send,
{
    let Some(mut out) = pool::take(n) else {
        return zeroed_chunks(n, chunk, items, init, f);
    };
    // Counted, as in `zeroed_chunks`: an `items` shorter than its `len()` said would leave
    // chunks with their old values.
    let written = run_chunks(&mut out, chunk, items, init, f, |values| values)?;
    if written != n {
        return Err(candle_core::Error::Msg(format!(
            "parallel buffer: {n} values, not all written by its jobs"
        ))
        .into());
    }
    Ok(out)
}

/// The loop of [`zeroed_chunks`] and [`overwritten_chunks`]: `f(state, i, values, item)` on
/// chunk `i` of `slots` (`chunk` values each, a `chunk` of 0 counting as 1) made into values
/// by `prepare`, in parallel. Returns how many values the jobs ran on.
///
/// # Errors
/// If `items` does not have one item per chunk, or an error of `f`.
fn run_chunks<T, W, S, E, I, F>(
    slots: &mut [T],
    chunk: usize,
    items: I,
    init: impl Fn() -> W + Sync + Send,
    f: F,
    prepare: impl Fn(&mut [T]) -> &mut [f32] + Sync + Send,
) -> Result<usize, E>
where
    T: Send,
    I: IndexedParallelIterator<Item = S>,
    F: Fn(&mut W, usize, &mut [f32], S) -> Result<(), E> + Sync + Send,
    E: From<candle_core::Error> + Send,
{
    let chunk = chunk.max(1);
    let chunks = slots.len().div_ceil(chunk);
    if items.len() != chunks {
        return Err(candle_core::Error::Msg(format!(
            "{} work items for {chunks} chunks of {chunk} values",
            items.len()
        ))
        .into());
    }
    let done = AtomicUsize::new(0);
    slots
        .par_chunks_mut(chunk)
        .zip(items)
        .enumerate()
        .try_for_each_init(init, |state, (i, (slots, item))| {
            let values = prepare(slots);
            done.fetch_add(values.len(), Ordering::Relaxed);
            f(state, i, values, item)
        })?;
    Ok(done.into_inner())
}

/// Writes zeros into `slots` and gives them back as initialised values.
#[allow(unsafe_code)]
fn zero(slots: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    slots.fill(MaybeUninit::new(0.0));
    // SAFETY: every slot was just written; `MaybeUninit<f32>` has the layout of `f32`.
    unsafe { &mut *(std::ptr::from_mut::<[MaybeUninit<f32>]>(slots) as *mut [f32]) }
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
    use rayon::prelude::*;

    use super::{collect_chunks, wide, zeroed_chunks, zeros};

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

    #[test]
    fn zeroed_chunks_pair_items_with_chunks_and_refuse_a_mismatch() {
        // Chunk i adds i + its item into its zeros; the last chunk is short.
        let items: Vec<f32> = (0..4).map(|i| i as f32 * 10.0).collect();
        let out = zeroed_chunks(
            10,
            3,
            items.par_iter(),
            || 0usize,
            |_, i, c: &mut [f32], item| {
                for v in c.iter_mut() {
                    *v += i as f32 + item;
                }
                Ok::<(), candle_core::Error>(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, [0., 0., 0., 11., 11., 11., 22., 22., 22., 33.]);
        // One chunk wider than n; n = 0 with no items; chunk 0 counts as 1.
        let one = zeroed_chunks(
            2,
            64,
            [()].into_par_iter(),
            || (),
            |_, _, c: &mut [f32], ()| {
                assert_eq!(c, [0.0, 0.0]);
                Ok::<(), candle_core::Error>(())
            },
        );
        assert_eq!(one.ok(), Some(vec![0.0, 0.0]));
        let none = zeroed_chunks(
            0,
            8,
            Vec::<()>::new().into_par_iter(),
            || (),
            |_, _, _, ()| Ok::<(), candle_core::Error>(()),
        );
        assert_eq!(none.ok(), Some(Vec::new()));
        let unit = zeroed_chunks(
            3,
            0,
            vec![(); 3].into_par_iter(),
            || (),
            |_, _, c, ()| {
                c[0] = 1.0;
                Ok::<(), candle_core::Error>(())
            },
        );
        assert_eq!(unit.ok(), Some(vec![1.0; 3]));
        // Too few items, too many, and an error of f: an error, no buffer.
        for k in [3, 5] {
            let r = zeroed_chunks(
                10,
                3,
                vec![(); k].into_par_iter(),
                || (),
                |_, _, _, ()| Ok::<(), candle_core::Error>(()),
            );
            assert!(r.is_err(), "{k} items for 4 chunks");
        }
        let failed = zeroed_chunks(
            10,
            3,
            vec![(); 4].into_par_iter(),
            || (),
            |_, i, _, ()| {
                if i == 2 {
                    candle_core::bail!("chunk {i}")
                }
                Ok(())
            },
        );
        assert!(failed.is_err());
    }

    #[test]
    fn zeros_small_and_large() {
        for n in [0, 1, 1 << 16, (1 << 16) + 1, 300_007] {
            let z = zeros(n);
            assert_eq!(z.len(), n);
            assert!(z.iter().all(|v| v.to_bits() == 0), "{n} values");
        }
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
