//! Several runs' curves on one plot (the runs view): which series a quantity is for each run,
//! and its points against step, epoch or wall-clock time — no UI code.

use super::{RunView, XAxis, history::smooth};

/// A collapse gauge of z, as the training view plots it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Gauge {
    /// RankMe / d: the share of dimensions in use (Garrido et al. 2023).
    #[default]
    RankMe,
    /// std of L2-normalised z × √d (1 = evenly spread).
    Std,
    /// log E exp(−2‖zᵢ − zⱼ‖²) (Wang & Isola 2020; lower = more spread).
    Uniformity,
    /// E‖z − z⁺‖² of two views (Wang & Isola 2020; lower = views agree).
    Alignment,
}

impl Gauge {
    pub const ALL: [Gauge; 4] = [
        Gauge::RankMe,
        Gauge::Std,
        Gauge::Uniformity,
        Gauge::Alignment,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Gauge::RankMe => "RankMe / d of z",
            Gauge::Std => "std of L2-normalised z × √d",
            Gauge::Uniformity => "uniformity of z",
            Gauge::Alignment => "alignment of two views",
        }
    }

    fn series(self) -> &'static str {
        match self {
            Gauge::RankMe => "gauge/rankme",
            Gauge::Std => "gauge/std",
            Gauge::Uniformity => "gauge/uniformity",
            Gauge::Alignment => "gauge/alignment",
        }
    }
}

/// What one overlay plot shows of each run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    /// The weighted loss (the single task's loss for a one-task run).
    Loss,
    /// The first task's proxy metric (% for fractions).
    Proxy,
    /// kNN top-1 of an encoder stage (index into [`crate::eval::embed::STAGES`]), %.
    Knn(usize),
    Gauge(Gauge),
}

impl Quantity {
    /// The plot's title.
    pub fn title(self) -> String {
        match self {
            Quantity::Loss => "Loss".into(),
            Quantity::Proxy => "Proxy metric of the first task (% or dB)".into(),
            Quantity::Knn(s) => format!(
                "kNN top-1 of {} (%)",
                crate::eval::embed::STAGES.get(s).copied().unwrap_or("z")
            ),
            Quantity::Gauge(g) => g.label().into(),
        }
    }

    /// The series of `run` this quantity is, if it has one.
    pub fn series(self, run: &RunView) -> Option<String> {
        let config = run.config.as_ref()?;
        match self {
            Quantity::Loss => Some(if config.tasks.len() == 1 {
                format!("loss/{}", config.tasks[0])
            } else {
                "loss/total".into()
            }),
            Quantity::Proxy => config.tasks.first().map(|t| format!("metric/{t}")),
            Quantity::Knn(s) => crate::eval::embed::STAGES
                .get(s)
                .map(|stage| format!("knn/{stage}")),
            Quantity::Gauge(g) => Some(g.series().into()),
        }
    }

    /// Whether its curves are noisy per step (and so drawn smoothed).
    fn per_step(self) -> bool {
        matches!(self, Quantity::Loss | Quantity::Proxy)
    }
}

/// One run's line on an overlay plot.
#[derive(Clone, Debug, PartialEq)]
pub struct OverlayLine {
    /// The run's name (its directory's name), as the legend and the hover show it.
    pub name: String,
    pub points: Vec<[f64; 2]>,
}

/// Each run's line for `quantity` against `axis` (per-step quantities smoothed with an EMA of
/// weight `smoothing`); runs without the series have no line.
pub fn overlay<'a>(
    runs: impl IntoIterator<Item = (&'a str, &'a RunView)>,
    quantity: Quantity,
    axis: XAxis,
    smoothing: f64,
) -> Vec<OverlayLine> {
    runs.into_iter()
        .filter_map(|(name, run)| {
            let series = quantity.series(run)?;
            let mut points = run.curves.points_against(&series, axis);
            if points.is_empty() {
                return None;
            }
            if quantity.per_step() {
                points = smooth(&points, smoothing);
            }
            Some(OverlayLine {
                name: name.to_string(),
                points,
            })
        })
        .collect()
}
