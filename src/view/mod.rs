//! The run as every front end sees it, with no UI code: [`RunView::apply`] turns the engine's
//! [`Event`]s into state — status, curves with their bounded history, the kNN and gauge series,
//! previews, messages. The desktop app draws it and the CLI prints from it; a run directory read
//! back from disk ([`crate::train::run_dir::replay`]) is applied the same way, so a live run, a
//! continued run and an old run give the same state.

pub mod history;
pub mod overlay;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{TaskKind, TrainConfig};
use crate::data::DatasetSummary;
use crate::eval::embed::Gauges;
use crate::tasks::Preview;
use crate::train::{EpochSummary, Event, KnnMetrics, Outcome, Overhead, PauseReason, StepMetrics};
use history::History;

/// Points a curve keeps at most (see [`History`]).
pub const CURVE_CAPACITY: usize = 2000;
/// Messages kept at most (the oldest go first).
pub const MESSAGES_MAX: usize = 200;

/// Where the run stands.
#[derive(Clone, Debug, PartialEq)]
pub enum RunStatus {
    Idle,
    Starting,
    Running,
    Paused(PauseReason),
    Finished(Outcome),
    /// Showing a run that another process writes (or wrote), read from its directory as it
    /// grows; `modified` is when its metrics.csv was last written.
    Following {
        modified: Option<std::time::SystemTime>,
    },
}

/// A message for the person watching.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub error: bool,
    pub text: String,
}

/// The curves of a run, keyed by series name: `loss/<task>`, `loss/total`, `metric/<task>`
/// (percent for fractions), `baseline/<task>`, `lr`, `images_per_s`, `knn/<stage>` (percent) and
/// `gauge/{rankme,std,uniformity,alignment}` (RankMe / d and std × √d on a common 0..1 scale).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curves {
    pub series: BTreeMap<String, History>,
    pub batches_per_epoch: usize,
    pub steps_seen: u64,
    /// The training time behind the [`WALL_SERIES`] curve.
    wall: WallClock,
}

/// Training wall-clock time added up across a run's continuations, each of which counts its
/// `wall_s` from zero again.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WallClock {
    /// Seconds of the continuations before the current one.
    base: f64,
    /// The last `wall_s` seen, s.
    last: f64,
}

impl WallClock {
    /// Takes a step's `wall_s` (s since its run or continuation started); returns the seconds
    /// since the run first started, or None for a value that is not a time (negative, NaN, ∞).
    pub fn add(&mut self, wall_s: f64) -> Option<f64> {
        if !(wall_s.is_finite() && wall_s >= 0.0) {
            return None;
        }
        if wall_s + 1e-9 < self.last {
            // A continuation counts its time from zero again.
            self.base += self.last;
        }
        self.last = wall_s;
        Some(self.base + wall_s)
    }
}

/// The series of training wall-clock time (s, continuations added up) against the step, by
/// which other series are drawn against time.
pub const WALL_SERIES: &str = "time/wall_s";

/// What the curves are drawn against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum XAxis {
    #[default]
    Step,
    Epoch,
    /// Training wall-clock time, in minutes.
    WallClock,
}

impl XAxis {
    pub const ALL: [XAxis; 3] = [XAxis::Step, XAxis::Epoch, XAxis::WallClock];

    /// The axis' label, with its unit.
    pub fn label(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::Epoch => "epoch",
            XAxis::WallClock => "wall-clock time (min)",
        }
    }
}

impl Curves {
    /// Adds a point to a series (created on first use).
    pub fn push(&mut self, name: String, x: f64, y: f64) {
        self.series
            .entry(name)
            .or_insert_with(|| History::new(CURVE_CAPACITY))
            .push(x, y);
    }

    fn add_step(&mut self, m: &StepMetrics) {
        let x = m.step as f64;
        for t in &m.tasks {
            self.push(format!("loss/{}", t.task), x, t.loss);
            let scale = if t.metric_info.percent { 100.0 } else { 1.0 };
            self.push(format!("metric/{}", t.task), x, t.metric * scale);
            if let Some(b) = t.baseline {
                self.push(format!("baseline/{}", t.task), x, b * scale);
            }
        }
        if m.tasks.len() > 1 {
            self.push("loss/total".into(), x, m.loss);
        }
        if let Some(t) = self.wall.add(m.wall_s) {
            self.push(WALL_SERIES.into(), x, t);
        }
        self.push("lr".into(), x, m.lr);
        self.push("images_per_s".into(), x, m.images_per_s);
        self.steps_seen += 1;
    }

    /// A series' points with x as `axis` says: steps, epochs (steps / steps per epoch), or
    /// training minutes (interpolated along [`WALL_SERIES`]; a point before the first step is at
    /// 0). Empty when the series does not exist.
    pub fn points_against(&self, name: &str, axis: XAxis) -> Vec<[f64; 2]> {
        let Some(h) = self.series.get(name) else {
            return Vec::new();
        };
        let pts = h.points();
        match axis {
            XAxis::Step => pts,
            XAxis::Epoch => {
                let per = self.batches_per_epoch.max(1) as f64;
                pts.into_iter().map(|[x, y]| [x / per, y]).collect()
            }
            XAxis::WallClock => {
                let wall = self
                    .series
                    .get(WALL_SERIES)
                    .map(History::points)
                    .unwrap_or_default();
                pts.into_iter()
                    .map(|[x, y]| [interpolate(&wall, x) / 60.0, y])
                    .collect()
            }
        }
    }

    fn add_gauges(&mut self, x: f64, g: &Gauges) {
        self.push(
            "gauge/rankme".into(),
            x,
            g.rankme / g.dimensions.max(1) as f64,
        );
        self.push(
            "gauge/std".into(),
            x,
            g.std_of_l2_normalized / g.std_reference.max(1e-12),
        );
        self.push("gauge/uniformity".into(), x, g.uniformity);
        if let Some(a) = g.alignment {
            self.push("gauge/alignment".into(), x, a);
        }
    }
}

/// y at `x` on a polyline sorted by x (linear between points; held flat past the last; 0
/// before the first point's x is reached from 0).
fn interpolate(pts: &[[f64; 2]], x: f64) -> f64 {
    let i = pts.partition_point(|p| p[0] < x);
    match (i.checked_sub(1).and_then(|j| pts.get(j)), pts.get(i)) {
        (_, Some(b)) if b[0] == x => b[1],
        (Some(a), Some(b)) => a[1] + (b[1] - a[1]) * (x - a[0]) / (b[0] - a[0]),
        (Some(a), None) => a[1],
        (None, Some(b)) if b[0] > 0.0 => b[1] * (x / b[0]).max(0.0),
        _ => 0.0,
    }
}

/// The kNN monitor's reference lines and why it may have measured nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KnnView {
    /// Raw pixels' kNN accuracy (%), the floor for the stage curves.
    pub pixels: Option<f64>,
    /// kNN accuracy of z before the first step (%): the random initialisation of a new run.
    pub start: Option<f64>,
    /// Why there are no accuracies on this data, when there are none.
    pub not_measured: Option<String>,
}

/// The run as the front ends see it.
#[derive(Clone, Debug)]
pub struct RunView {
    pub status: RunStatus,
    pub run_dir: Option<PathBuf>,
    pub config: Option<TrainConfig>,
    /// The loading progress (files done, total) while data loads.
    pub loading: Option<(usize, usize)>,
    pub data: Option<DatasetSummary>,
    pub curves: Curves,
    pub knn: KnnView,
    pub last_step: Option<StepMetrics>,
    pub last_epoch: Option<EpochSummary>,
    /// The newest preview of each task.
    pub previews: BTreeMap<TaskKind, Preview>,
    pub messages: Vec<Message>,
    /// The time the run has spent not training, as last reported.
    pub overhead: Option<Overhead>,
    /// The checkpoints the run keeps and the disk they take, as last reported.
    pub checkpoints: Option<crate::train::run_dir::Checkpoints>,
    /// The heads whose last measurement during training looked collapsed: a second one in a
    /// row is announced (SimSiam's output rank can dip below 2 for one measurement early in a
    /// healthy run).
    pub head_dips: std::collections::BTreeSet<TaskKind>,
}

impl Default for RunView {
    fn default() -> Self {
        Self {
            status: RunStatus::Idle,
            run_dir: None,
            config: None,
            loading: None,
            data: None,
            curves: Curves::default(),
            knn: KnnView::default(),
            last_step: None,
            last_epoch: None,
            previews: BTreeMap::new(),
            messages: Vec::new(),
            overhead: None,
            checkpoints: None,
            head_dips: std::collections::BTreeSet::new(),
        }
    }
}

impl RunView {
    /// The tasks whose curves are drawn: the shown run's (a followed run's may differ from the
    /// left panel's ticks), or `ticked` before any run has started.
    pub fn shown_tasks(&self, ticked: &[TaskKind]) -> Vec<TaskKind> {
        self.config
            .as_ref()
            .map_or_else(|| ticked.to_vec(), |c| c.tasks.clone())
    }

    /// Whether a run is under way (starting, running or paused).
    pub fn is_training(&self) -> bool {
        matches!(
            self.status,
            RunStatus::Starting | RunStatus::Running | RunStatus::Paused(_)
        )
    }

    /// Adds a message (a repeat of the last one is dropped; at most [`MESSAGES_MAX`] are kept).
    pub fn message(&mut self, error: bool, text: impl Into<String>) {
        let text = text.into();
        if self.messages.last().is_some_and(|m| m.text == text) {
            return;
        }
        self.messages.push(Message { error, text });
        if self.messages.len() > MESSAGES_MAX {
            self.messages.remove(0);
        }
    }

    /// Forgets the run's curves, previews and numbers (messages and data stay).
    pub fn clear_run(&mut self) {
        *self = Self {
            messages: std::mem::take(&mut self.messages),
            data: self.data.take(),
            ..Self::default()
        };
    }

    /// Takes one event into the state. Answers to a front end's own requests (embedding, Math
    /// panel, inspection) are not run state and change nothing here.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Loading { done, total } => self.loading = Some((*done, *total)),
            Event::DataReady(s) => {
                self.loading = None;
                self.data = Some(s.clone());
            }
            Event::RunStarted {
                run_dir,
                config,
                start_step,
                batches_per_epoch,
                ..
            } => {
                self.curves.batches_per_epoch = *batches_per_epoch;
                self.status = RunStatus::Running;
                let verb = if *start_step > 0 {
                    "continuing"
                } else {
                    "run directory"
                };
                self.message(false, format!("{verb}: {}", run_dir.display()));
                self.run_dir = Some(run_dir.clone());
                self.config = Some((**config).clone());
            }
            Event::Step(m) => {
                self.curves.add_step(m);
                self.last_step = Some(m.clone());
            }
            Event::Epoch(e) => self.last_epoch = Some(e.clone()),
            Event::Preview(p) => {
                self.previews.insert(p.task, (**p).clone());
            }
            Event::Knn(k) => self.apply_knn(k),
            Event::CheckpointSaved { path, .. } => {
                // Epoch checkpoints are routine; a checkpoint asked for is worth a message.
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                {
                    self.message(false, format!("checkpoint saved: {}", path.display()));
                }
            }
            Event::Checkpoints(c) => self.checkpoints = Some(c.clone()),
            Event::Paused { reason, .. } => self.status = RunStatus::Paused(reason.clone()),
            Event::Resumed => self.status = RunStatus::Running,
            Event::LrChanged(lr) => self.message(false, format!("learning rate is now {lr:e}")),
            Event::Warning(w) => self.message(false, w.clone()),
            Event::Error(e) => self.message(true, e.clone()),
            Event::Finished { outcome, .. } => {
                if *outcome == Outcome::Completed {
                    self.message(false, "training finished");
                }
                self.status = RunStatus::Finished(outcome.clone());
            }
            Event::Overhead(o) => self.overhead = Some(*o),
            Event::TimeLimitReached { step, epoch } => self.message(
                false,
                format!("time limit reached after step {step} (epoch {epoch})"),
            ),
            Event::Embedding(_) | Event::Math(_) | Event::Inspection { .. } => {}
        }
    }

    fn apply_knn(&mut self, k: &KnnMetrics) {
        let x = k.step as f64;
        self.knn.not_measured = k.not_measured.map(|why| why.to_string());
        for (stage, acc) in &k.stages {
            self.curves.push(format!("knn/{stage}"), x, acc * 100.0);
        }
        if let Some(p) = k.raw_pixels {
            // Measured once, before the first step: also z of the initial weights.
            self.knn.pixels = Some(p * 100.0);
            self.knn.start = k.stages.last().map(|s| s.1 * 100.0);
        }
        self.curves.add_gauges(x, &k.gauges);
        for (task, g) in &k.head_gauges {
            self.curves.push(
                format!("gauge/{task} output std"),
                x,
                g.std_of_l2_normalized / g.std_reference.max(1e-12),
            );
            self.curves.push(
                format!("gauge/{task} output rankme"),
                x,
                g.rankme / g.dimensions.max(1) as f64,
            );
            // A random head's outputs are often bunched together before any step: only a
            // collapse during training is announced, and only when two measurements in a row
            // show it.
            let dip = k.step > 0 && crate::eval::embed::collapsed(g);
            let again = if dip {
                !self.head_dips.insert(*task)
            } else {
                self.head_dips.remove(task);
                false
            };
            if again {
                self.message(
                    true,
                    format!(
                        "{task}'s output is collapsing at step {} (std of its L2-normalised output \
                         {:.4}, {:.0}% of an even spread; RankMe {:.1}): every image is mapped to \
                         nearly the same point — is the stop-gradient on?",
                        k.step,
                        g.std_of_l2_normalized,
                        100.0 * g.std_of_l2_normalized / g.std_reference.max(1e-12),
                        g.rankme
                    ),
                );
            }
        }
        let g = &k.gauges;
        if crate::eval::embed::collapsed(g) {
            self.message(
                true,
                format!(
                    "the representation is collapsing at step {} (RankMe {:.1}, std of L2-normalised z {:.4}): \
                     try a lower learning rate or another task",
                    k.step, g.rankme, g.std_of_l2_normalized
                ),
            );
        }
    }
}
