//! Vectorised sums shared by batch norm's statistics and the bias gradient: f32 partial sums
//! in [`LANES`] independent accumulators per plane, f64 totals across planes.

use super::operands::Planes;

/// Independent accumulators, so that sums vectorise (a single f32 accumulator is a serial
/// dependency chain the compiler may not reorder).
pub(super) const LANES: usize = 16;

/// `Σ f(v)` over `xs`, in [`LANES`] partial sums.
pub(super) fn lanes(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ f(v)` over channel `ch` of a batch `x` laid out as `planes` (all images), each plane
/// summed by [`lanes`] and the planes' sums added in f64.
pub(super) fn channel_sum(x: &[f32], planes: Planes, ch: usize, f: impl Fn(f32) -> f32) -> f64 {
    (0..planes.n)
        .map(|i| f64::from(lanes(&x[planes.plane(i, ch)], &f)))
        .sum()
}
