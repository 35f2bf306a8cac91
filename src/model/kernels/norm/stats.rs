//! Batch statistics: per-channel mean and biased variance over (N, H, W), from the batch in two
//! passes or from per-image moments combined exactly (Chan et al.).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

use super::super::operands::{Planes, f32_slice};
use super::super::reduce::{channel_sum, lanes};

/// Per-channel statistics of a batch over (N, H, W), C values each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChannelStats {
    /// The mean.
    pub mean: Vec<f32>,
    /// The biased variance (divided by N·H·W).
    pub var: Vec<f32>,
}

/// The moments of one plane (H·W values of one channel of one image), in f64 for
/// [`ChannelStats::from_moments`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(in crate::model::kernels) struct Moments {
    /// The plane's mean.
    pub(in crate::model::kernels) mean: f64,
    /// Σ(v − mean)² over the plane (not divided by its size).
    pub(in crate::model::kernels) m2: f64,
}

impl Moments {
    /// The moments of one plane.
    pub(in crate::model::kernels) fn of_plane(xs: &[f32]) -> Self {
        let mean = lanes(xs, |v| v) / xs.len().max(1) as f32;
        let m2 = lanes(xs, |v| (v - mean) * (v - mean));
        Self {
            mean: f64::from(mean),
            m2: f64::from(m2),
        }
    }
}

impl ChannelStats {
    /// The statistics of a batch `x` laid out as `planes`, channels in parallel, two passes
    /// (mean, then squared deviations from it) with f64 totals so large batches keep their
    /// precision.
    pub(in crate::model::kernels) fn of_batch(x: &[f32], planes: Planes) -> Self {
        let count = planes.per_channel() as f64;
        let (mean, var) = (0..planes.c)
            .into_par_iter()
            .map(|ch| {
                let mean = channel_sum(x, planes, ch, |v| v) / count;
                let m = mean as f32;
                let sq = channel_sum(x, planes, ch, |v| (v - m) * (v - m));
                (mean as f32, (sq / count) as f32)
            })
            .unzip();
        Self { mean, var }
    }

    /// The statistics of a batch from each image's [`Moments`] (`moments[i·C + ch]`, `hw`
    /// values each), by Chan et al.'s pairwise formula: M2 = Σᵢ M2ᵢ + hw·Σᵢ (meanᵢ − mean)².
    pub(in crate::model::kernels) fn from_moments(
        moments: &[Moments],
        c: usize,
        hw: usize,
    ) -> Self {
        let n = moments.len() / c.max(1);
        let count = (n * hw).max(1) as f64;
        let (mean, var) = (0..c)
            .map(|ch| {
                let per = moments.iter().skip(ch).step_by(c.max(1));
                let mean = per.clone().map(|m| m.mean).sum::<f64>() / n.max(1) as f64;
                let m2: f64 = per
                    .map(|m| m.m2 + hw as f64 * (m.mean - mean) * (m.mean - mean))
                    .sum();
                (mean as f32, (m2 / count) as f32)
            })
            .unzip();
        Self { mean, var }
    }
}

/// Per-channel mean and biased variance over (N, H, W), as a (2, C) tensor [mean; var]
/// ([`ChannelStats::of_batch`]).
pub struct BatchStats;

impl CustomOp1 for BatchStats {
    fn name(&self) -> &'static str {
        "pretext-batch-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "batch norm input")?;
        let planes = Planes::of(l.dims(), "batch norm")?;
        let ChannelStats { mut mean, var } = ChannelStats::of_batch(x, planes);
        mean.extend(var);
        Ok((CpuStorage::F32(mean), Shape::from((2, planes.c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::stats(s, l)
    }
}
