//! A fair contest between pretext tasks: the same data (loaded once), the same held-out split
//! (fixed by the data), the same budget — wall-clock minutes or source images seen — for each
//! task, then each encoder judged as `pretext eval` judges it (kNN top-1 per stage, linear
//! probe, gauges) against the random init and raw pixels, evaluated once for the contest.
//!
//! ```text
//! compare-20261128-205400-rotation+contrastive/
//!   contest.json     the spec and each task's state (pending, running, trained, done + result)
//!   ranking.md       the ranking, best first, with the reference rows and the criterion
//!   results.csv      one row per task and per reference
//!   results.json     the same, with the spec
//!   chart.png        each task's score as bars, the references as lines
//!   runs/<run>/      each task's run directory (config.json, metrics.csv, checkpoints/,
//!                    eval.json)
//! ```
//!
//! Everything is written again after each task, so a stopped contest has a partial ranking;
//! contest.json is replaced atomically, so a contest killed at any moment is resumed by
//! [`run`] on the same folder: done tasks are kept as they are, an interrupted one continues
//! from its resume checkpoint within its budget, pending ones are trained.

mod chart;
mod files;
pub mod lines;
mod score;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, TaskKind, TrainConfig};
use crate::data::{DataError, Dataset};
use crate::eval::embed::{EncoderScores, Gauges, PixelScores};
use crate::eval::judge::JudgeError;
use crate::model::ModelError;
use crate::train::{Command, Event, Outcome, PauseReason, Trainer};

pub use score::ranking;

/// The contest's own record: spec and state.
pub const CONTEST_FILE: &str = "contest.json";
/// The folder, inside the contest folder, under which each task's run directory is made.
pub const RUNS_DIR: &str = "runs";
pub const RANKING_FILE: &str = "ranking.md";
pub const RESULTS_CSV: &str = "results.csv";
pub const RESULTS_JSON: &str = "results.json";
pub const CHART_FILE: &str = "chart.png";
/// Epochs a task is given under a time budget: the time limit ends it long before.
pub const MINUTES_EPOCHS: usize = crate::config::EPOCHS_UNTIL_TIME_LIMIT;
/// How often a training task is asked for a resume checkpoint (the engine's own come at epoch
/// ends, as its monitoring budget allows): a contest killed mid-task loses at most this much.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);
/// The version of contest.json's layout.
const FORMAT: u32 = 1;

/// What each task gets: the same wall-clock training time, or the same number of source images
/// seen (rounded to whole epochs, at least one).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    Minutes(f64),
    Images(u64),
}

impl Budget {
    /// Epochs a task trains on a data set of `images` images: `round(N / images)`, at least 1,
    /// for an image budget; [`MINUTES_EPOCHS`] (the time limit ends the run) for minutes.
    pub fn epochs(&self, images: usize) -> usize {
        match *self {
            Self::Minutes(_) => MINUTES_EPOCHS,
            Self::Images(n) => {
                let e = (n as f64 / images.max(1) as f64).round();
                (e as usize).max(1)
            }
        }
    }

    /// The training-time limit of each task.
    pub fn minutes(&self) -> Option<f64> {
        match *self {
            Self::Minutes(m) => Some(m),
            Self::Images(_) => None,
        }
    }
}

/// What a contest compares, on what, with what budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContestSpec {
    /// Data, size, seed, batch, device, settings; its tasks, epochs, minutes and out are
    /// replaced for each task.
    pub base: TrainConfig,
    pub tasks: Vec<TaskKind>,
    pub budget: Budget,
}

impl ContestSpec {
    /// The configuration of `task`'s run on a data set of `images` images, under `runs`.
    pub fn config_for(&self, task: TaskKind, images: usize, runs: &Path) -> TrainConfig {
        TrainConfig {
            tasks: vec![task],
            task_weights: vec![1.0],
            epochs: self.budget.epochs(images),
            minutes: self.budget.minutes(),
            out: runs.to_path_buf(),
            ..self.base.clone()
        }
    }

    /// Checks the tasks (at least one, none twice), the budget and each task's configuration.
    ///
    /// # Errors
    /// [`CompareError::Spec`] or [`CompareError::Config`] naming what cannot be used.
    pub fn validate(&self) -> Result<(), CompareError> {
        if self.tasks.is_empty() {
            return Err(CompareError::Spec(
                "give at least one task to compare".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(t) = self.tasks.iter().find(|t| !seen.insert(**t)) {
            return Err(CompareError::Spec(format!("{t} is named twice")));
        }
        if let Budget::Images(0) = self.budget {
            return Err(CompareError::Spec(
                "the image budget must be at least 1 image".into(),
            ));
        }
        for &task in &self.tasks {
            self.config_for(task, 1, Path::new(RUNS_DIR)).validate()?;
        }
        Ok(())
    }

    /// `rotation+contrastive`: the tasks, for the folder's name.
    pub fn tasks_label(&self) -> String {
        self.tasks
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// Where one task of the contest stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    /// Training started in `run_dir` and has not finished (it is continued on resume).
    Running {
        run_dir: PathBuf,
    },
    /// Trained to its budget, not yet judged.
    Trained {
        run_dir: PathBuf,
    },
    Done {
        result: Box<TaskResult>,
    },
}

/// One task and its state, in the spec's order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEntry {
    pub task: TaskKind,
    #[serde(flatten)]
    pub state: TaskState,
}

/// The contest as it stands, kept in contest.json beside the spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContestState {
    /// When the contest was created, `YYYY-MM-DD HH:MM:SS UTC`.
    pub created: String,
    /// The CPU it runs on (/proc/cpuinfo's model name), for the record.
    pub cpu: String,
    pub tasks: Vec<TaskEntry>,
    /// The random init and raw pixels, judged once for the contest (after the data loads).
    #[serde(default)]
    pub references: Option<References>,
}

/// kNN top-1 of one encoder stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageScore {
    pub stage: String,
    pub top1: f64,
}

/// One task's result: its training and its encoder judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: TaskKind,
    pub run_dir: PathBuf,
    pub epochs: usize,
    pub steps: u64,
    /// Seconds of training (the engine's own count, carried over a resume).
    pub train_s: f64,
    /// Source images the steps trained on (two-view tasks see two views of each).
    pub images_seen: u64,
    /// Mean loss over the last epoch trained (NaN, written null, when unknown).
    #[serde(with = "nan_as_null")]
    pub final_loss: f64,
    /// kNN top-1 of every stage, first to last (empty on unlabelled data).
    pub knn: Vec<StageScore>,
    /// The stage with the best kNN top-1.
    pub best_knn: Option<StageScore>,
    /// Linear-probe top-1 on z.
    pub probe: Option<f64>,
    /// Gauges of z: std of L2-normalised z, RankMe, uniformity, alignment.
    pub gauges: Gauges,
    /// The gauges say the representation has collapsed.
    pub collapsed: bool,
    /// Seconds the evaluation took.
    pub eval_s: f64,
}

/// A reference row: the random init (one per input kind the tasks use: RGB, or L* for the
/// colorization tasks) or raw pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// `random init`, `random init (L* input)` or `raw pixels`.
    pub label: String,
    /// Input channels of the encoder (3 RGB, 1 L*); 0 for raw pixels.
    pub input_channels: usize,
    pub knn: Vec<StageScore>,
    pub best_knn: Option<StageScore>,
    pub probe: Option<f64>,
    /// Gauges of z (none for raw pixels).
    pub gauges: Option<Gauges>,
}

/// The references judged once for the contest, and the scores each task's eval.json reuses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct References {
    pub labelled: bool,
    /// Why accuracies cannot be measured on these data, when they cannot.
    pub not_measured: Option<String>,
    pub random_init: Vec<Reference>,
    pub raw_pixels: Option<Reference>,
    /// (input channels, scores) of each random init, labelled data only.
    pub random_scores: Vec<(usize, EncoderScores)>,
    pub pixel_scores: Option<PixelScores>,
}

/// The tasks ranked, best first, with the reference rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    /// Ranked by kNN top-1 (labelled data) or by RankMe (a label-free proxy).
    pub labelled: bool,
    /// `kNN top-1 (best stage)` or `RankMe (label-free proxy)`.
    pub criterion: String,
    pub rows: Vec<TaskResult>,
    /// Tasks not judged yet, in the spec's order.
    pub pending: Vec<TaskKind>,
    pub random_init: Vec<Reference>,
    pub raw_pixels: Option<Reference>,
    /// What the reader must know: the proxy sentence on unlabelled data, collapsed tasks.
    pub note: Option<String>,
}

impl Ranking {
    /// A row's value of the criterion.
    pub fn score(&self, r: &TaskResult) -> f64 {
        score::score(self.labelled, r)
    }
}

/// How a contest (or this part of it) ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContestOutcome {
    Completed,
    /// Stopped on request; [`run`] on the same folder resumes it.
    Stopped,
    /// A task failed while training (what and why).
    Failed(String),
}

/// What a running contest reports.
#[derive(Clone, Debug)]
pub enum ContestEvent {
    /// Images decoded so far.
    Loading {
        done: usize,
        total: usize,
    },
    /// The data are loaded: images, whether accuracies can be measured, each task's epochs,
    /// and the budget in words (with the rounding to whole epochs said).
    DataReady {
        images: usize,
        labelled: bool,
        epochs: usize,
        budget: String,
        summary: Box<crate::data::DatasetSummary>,
    },
    /// A task's training started (after the engine's `RunStarted`), or continues.
    TaskStarted {
        task: TaskKind,
        index: usize,
        of: usize,
        run_dir: PathBuf,
        /// The step it continues from (0 for a new run).
        start_step: u64,
    },
    /// Every engine event of the task's run, forwarded.
    Train {
        task: TaskKind,
        event: Event,
    },
    /// The task is trained and being judged.
    Evaluating {
        task: TaskKind,
    },
    TaskDone(Box<TaskResult>),
    /// After every judged task (a partial ranking) and at the end.
    Ranking(Box<Ranking>),
    Finished {
        dir: PathBuf,
        outcome: ContestOutcome,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{} is not a contest folder: {message}", path.display())]
    NotAContest { path: PathBuf, message: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The spec cannot be used (no task, a task twice, an empty budget).
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Judge(#[from] JudgeError),
    /// The folder is being written by another process (or cannot be locked).
    #[error(transparent)]
    Folder(#[from] crate::train::run_dir::RunDirError),
    #[error("cannot start the training thread: {0}")]
    Thread(std::io::Error),
    #[error("the training thread ended unexpectedly")]
    EngineGone,
    #[error("cannot draw the chart: {0}")]
    Chart(String),
}

impl CompareError {
    /// Whether the error is about the input (exit code 2 in the CLI) rather than a failure
    /// while the contest ran.
    pub fn is_input(&self) -> bool {
        match self {
            Self::NotAContest { .. } | Self::Spec(_) | Self::Config(_) | Self::Data(_) => true,
            Self::Folder(e) => matches!(e, crate::train::run_dir::RunDirError::Busy { .. }),
            Self::Model(e) | Self::Judge(JudgeError::Model(e)) => {
                matches!(e, ModelError::DeviceNotUsable { .. })
            }
            _ => false,
        }
    }
}

/// contest.json as written: relative run directories, so the folder can be moved.
#[derive(Serialize, Deserialize)]
struct ContestFile {
    format: u32,
    spec: ContestSpec,
    state: ContestState,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> CompareError + '_ {
    move |source| CompareError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes `<parent>/compare-<timestamp>-<tasks>/` (with `-2`, `-3`… when taken) and writes
/// contest.json (the spec, every task pending).
///
/// # Errors
/// An unusable spec, or a folder that cannot be written.
pub fn create(parent: &Path, spec: &ContestSpec) -> Result<PathBuf, CompareError> {
    spec.validate()?;
    let now = SystemTime::now();
    let base = format!(
        "compare-{}-{}",
        crate::train::run_dir::timestamp(now),
        spec.tasks_label()
    );
    std::fs::create_dir_all(parent).map_err(write_err(parent))?;
    let mut n = 1;
    let dir = loop {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let dir = parent.join(name);
        // create_dir (not _all) fails on a folder that exists: two contests never share one.
        match std::fs::create_dir(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(write_err(&dir)(e)),
        }
    };
    let state = ContestState {
        created: lines::date(now),
        cpu: cpu_model(),
        tasks: spec
            .tasks
            .iter()
            .map(|&task| TaskEntry {
                task,
                state: TaskState::Pending,
            })
            .collect(),
        references: None,
    };
    save(&dir, spec, &state)?;
    Ok(dir)
}

/// Reads a contest folder back (to resume it, or to show a finished one). Run directories come
/// back as paths inside `dir`.
///
/// # Errors
/// [`CompareError::NotAContest`] when contest.json is missing, unreadable or does not fit.
pub fn open(dir: &Path) -> Result<(ContestSpec, ContestState), CompareError> {
    let not = |message: String| CompareError::NotAContest {
        path: dir.to_path_buf(),
        message,
    };
    let path = dir.join(CONTEST_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| not(format!("cannot read {CONTEST_FILE} ({e})")))?;
    let file: ContestFile = serde_json::from_str(&text)
        .map_err(|e| not(format!("{CONTEST_FILE} is not valid ({e})")))?;
    if file.format != FORMAT {
        return Err(not(format!(
            "{CONTEST_FILE} has format {}, this build reads {FORMAT}",
            file.format
        )));
    }
    let (spec, mut state) = (file.spec, file.state);
    let fits = state.tasks.len() == spec.tasks.len()
        && state
            .tasks
            .iter()
            .zip(&spec.tasks)
            .all(|(e, t)| e.task == *t);
    if !fits {
        return Err(not(format!(
            "{CONTEST_FILE}: the task states do not match the tasks"
        )));
    }
    relocate(&mut state, |p| dir.join(p));
    Ok((spec, state))
}

/// Writes contest.json atomically (temp file, fsync, rename): a contest killed at any moment
/// leaves the previous or the new file whole.
fn save(dir: &Path, spec: &ContestSpec, state: &ContestState) -> Result<(), CompareError> {
    let mut state = state.clone();
    relocate(&mut state, |p| {
        p.strip_prefix(dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    });
    let file = ContestFile {
        format: FORMAT,
        spec: spec.clone(),
        state,
    };
    let path = dir.join(CONTEST_FILE);
    let text = serde_json::to_string_pretty(&file).map_err(|e| write_err(&path)(e.into()))?;
    crate::model::checkpoint::write_atomic(&path, text.as_bytes()).map_err(write_err(&path))
}

/// Applies `f` to every run directory in `state`.
fn relocate(state: &mut ContestState, f: impl Fn(&Path) -> PathBuf) {
    for e in &mut state.tasks {
        match &mut e.state {
            TaskState::Pending => {}
            TaskState::Running { run_dir } | TaskState::Trained { run_dir } => {
                *run_dir = f(run_dir);
            }
            TaskState::Done { result } => result.run_dir = f(&result.run_dir),
        }
    }
}

/// The CPU's model name from /proc/cpuinfo, else the architecture.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// How one task's training ended.
enum Trained {
    Done(PathBuf),
    Stopped,
    Failed(String),
}

/// The contest in progress: its folder, spec, state and data.
struct Contest<'a> {
    dir: &'a Path,
    spec: ContestSpec,
    state: ContestState,
    data: Arc<Dataset>,
    stop: &'a AtomicBool,
    on_event: &'a mut dyn FnMut(ContestEvent),
}

/// Runs (or resumes) the contest in `dir`: tasks already done are not trained again, an
/// interrupted task is continued from its resume checkpoint within its budget (or started
/// afresh when it was killed before its first checkpoint), pending ones are trained. `data`: an
/// already-loaded data set matching the spec's data and size, or `None` to load it. Returns
/// when done, when a task fails, or when `stop` is raised (the running task is then stopped
/// with [`Command::Stop`], which saves its resume checkpoint, and the state is saved).
///
/// # Errors
/// An unreadable contest folder, unusable data, a model or write error. A task that fails while
/// training is not an error: [`ContestOutcome::Failed`].
pub fn run(
    dir: &Path,
    data: Option<Arc<Dataset>>,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(ContestEvent),
) -> Result<ContestOutcome, CompareError> {
    let (spec, state) = open(dir)?;
    spec.validate()?;
    // Held to the end: a second `compare --resume` (or the app's) on this folder is refused.
    let _lock = crate::train::run_dir::WriterLock::take(dir)?;
    let started = std::time::Instant::now();
    let data = match data.filter(|d| d.source == spec.base.data && d.size == spec.base.size) {
        Some(d) => d,
        None => match load_data(&spec, stop, on_event)? {
            Some(d) => Arc::new(d),
            None => {
                on_event(ContestEvent::Finished {
                    dir: dir.to_path_buf(),
                    outcome: ContestOutcome::Stopped,
                });
                return Ok(ContestOutcome::Stopped);
            }
        },
    };
    if data.len() < 2 {
        return Err(CompareError::Spec(format!(
            "{}: at least 2 images are needed to train (batch norm)",
            spec.base.data
        )));
    }
    let mut contest = Contest {
        dir,
        spec,
        state,
        data,
        stop,
        on_event,
    };
    let outcome = contest.run(started)?;
    (contest.on_event)(ContestEvent::Finished {
        dir: dir.to_path_buf(),
        outcome: outcome.clone(),
    });
    Ok(outcome)
}

impl Contest<'_> {
    fn emit(&mut self, e: ContestEvent) {
        (self.on_event)(e);
    }

    fn save(&self) -> Result<(), CompareError> {
        save(self.dir, &self.spec, &self.state)
    }

    /// Saves the state and writes the ranking, the results and the chart.
    fn write_all(&mut self) -> Result<Ranking, CompareError> {
        self.save()?;
        let ranking = ranking(&self.state);
        files::write_all(self.dir, &self.spec, &self.state, &ranking, self.data.len())?;
        Ok(ranking)
    }

    fn run(&mut self, started: std::time::Instant) -> Result<ContestOutcome, CompareError> {
        let labelled = crate::eval::embed::can_measure(&self.data).is_ok();
        let epochs = self.spec.budget.epochs(self.data.len());
        let summary = self.data.summary(started.elapsed().as_secs_f64());
        let e = ContestEvent::DataReady {
            images: self.data.len(),
            labelled,
            epochs,
            budget: lines::budget_line(&self.spec, &self.data, epochs),
            summary: Box::new(summary),
        };
        self.emit(e);
        if self.state.references.is_none() {
            self.state.references = Some(score::references(&self.spec, &self.data)?);
            self.save()?;
        }
        let ranking = self.write_all()?;
        if !ranking.rows.is_empty() {
            self.emit(ContestEvent::Ranking(Box::new(ranking)));
        }
        let trainer = Trainer::spawn().map_err(CompareError::Thread)?;
        for index in 0..self.spec.tasks.len() {
            if self.stop.load(Ordering::Relaxed) {
                self.write_all()?;
                return Ok(ContestOutcome::Stopped);
            }
            let run_dir = match self.train(&trainer, index)? {
                Some(Trained::Done(run_dir)) => run_dir,
                Some(Trained::Stopped) => {
                    self.write_all()?;
                    return Ok(ContestOutcome::Stopped);
                }
                Some(Trained::Failed(why)) => {
                    self.write_all()?;
                    return Ok(ContestOutcome::Failed(why));
                }
                None => continue,
            };
            self.judge(index, &run_dir)?;
        }
        let ranking = self.write_all()?;
        self.emit(ContestEvent::Ranking(Box::new(ranking)));
        Ok(ContestOutcome::Completed)
    }

    /// Trains task `index` as its state asks: nothing (done: `None`), to the end of its budget
    /// (pending), on from its resume checkpoint (running), or not at all (trained).
    fn train(&mut self, trainer: &Trainer, index: usize) -> Result<Option<Trained>, CompareError> {
        let task = self.spec.tasks[index];
        let command = match self.state.tasks[index].state.clone() {
            TaskState::Done { .. } => return Ok(None),
            TaskState::Trained { run_dir } => return Ok(Some(Trained::Done(run_dir))),
            TaskState::Running { run_dir } if resumable(&run_dir) => Command::Continue {
                run_dir,
                epochs: None,
                lr: None,
                minutes: None,
            },
            TaskState::Running { run_dir } => {
                // Killed before its first checkpoint: nothing to continue from. The folder is
                // the contest's own (under runs/); it goes, and the task starts afresh.
                if run_dir.starts_with(self.dir.join(RUNS_DIR)) {
                    let _ = std::fs::remove_dir_all(&run_dir);
                }
                self.new_run(task)
            }
            TaskState::Pending => self.new_run(task),
        };
        if !trainer.send(command) {
            return Err(CompareError::EngineGone);
        }
        let mut stop_sent = false;
        let mut not_finite = false;
        // Since the run started or was last saved; None until it has started.
        let mut saved: Option<std::time::Instant> = None;
        loop {
            if self.stop.load(Ordering::Relaxed) && !stop_sent {
                stop_sent = trainer.send(Command::Stop);
            }
            if saved.is_some_and(|t| t.elapsed() >= CHECKPOINT_EVERY)
                && trainer.send(Command::SaveCheckpoint)
            {
                saved = Some(std::time::Instant::now());
            }
            let event = match trainer.events().recv_timeout(Duration::from_millis(100)) {
                Ok(e) => e,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(CompareError::EngineGone);
                }
            };
            let end = match &event {
                Event::RunStarted {
                    run_dir,
                    start_step,
                    ..
                } => {
                    self.state.tasks[index].state = TaskState::Running {
                        run_dir: run_dir.clone(),
                    };
                    self.save()?;
                    saved = Some(std::time::Instant::now());
                    let started = ContestEvent::TaskStarted {
                        task,
                        index,
                        of: self.spec.tasks.len(),
                        run_dir: run_dir.clone(),
                        start_step: *start_step,
                    };
                    self.emit(started);
                    None
                }
                Event::Paused {
                    reason: PauseReason::NonFiniteLoss,
                    ..
                } => {
                    // Nobody is there to lower the learning rate: the task has failed.
                    not_finite = true;
                    trainer.send(Command::Stop);
                    None
                }
                Event::Finished { run_dir, outcome } => Some(match (outcome, run_dir) {
                    (Outcome::Completed, Some(dir)) => Trained::Done(dir.clone()),
                    (Outcome::Completed, None) => {
                        Trained::Failed(format!("{task}: the run left no directory"))
                    }
                    (Outcome::Stopped, _) if not_finite => Trained::Failed(format!(
                        "{task}: the loss was not finite (try a lower learning rate)"
                    )),
                    (Outcome::Stopped, _) => Trained::Stopped,
                    (Outcome::InvalidInput(why) | Outcome::Failed(why), _) => {
                        Trained::Failed(format!("{task}: {why}"))
                    }
                }),
                _ => None,
            };
            self.emit(ContestEvent::Train { task, event });
            if let Some(end) = end {
                if let Trained::Done(run_dir) = &end {
                    self.state.tasks[index].state = TaskState::Trained {
                        run_dir: run_dir.clone(),
                    };
                    self.save()?;
                }
                return Ok(Some(end));
            }
        }
    }

    fn new_run(&self, task: TaskKind) -> Command {
        let config = self
            .spec
            .config_for(task, self.data.len(), &self.dir.join(RUNS_DIR));
        Command::StartWithData(Box::new(config), self.data.clone())
    }

    /// Judges task `index`'s trained encoder, records the result and writes every file again.
    fn judge(&mut self, index: usize, run_dir: &Path) -> Result<(), CompareError> {
        let task = self.spec.tasks[index];
        self.emit(ContestEvent::Evaluating { task });
        let Some(refs) = &self.state.references else {
            return Err(CompareError::Spec("internal: references not judged".into()));
        };
        let result = score::judge_task(task, run_dir, &self.data, refs)?;
        self.state.tasks[index].state = TaskState::Done {
            result: Box::new(result.clone()),
        };
        let ranking = self.write_all()?;
        self.emit(ContestEvent::TaskDone(Box::new(result)));
        self.emit(ContestEvent::Ranking(Box::new(ranking)));
        Ok(())
    }
}

/// Loads the spec's data on a `pretext-compare-load` thread, reporting
/// [`ContestEvent::Loading`] as images decode; `None` when `stop` was raised meanwhile.
///
/// # Errors
/// The data cannot be used (no such folder, no readable image, a bad size).
pub fn load_data(
    spec: &ContestSpec,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(ContestEvent),
) -> Result<Option<Dataset>, CompareError> {
    let done = AtomicUsize::new(0);
    let total = AtomicUsize::new(0);
    let progress = |d: usize, t: usize| {
        done.store(d, Ordering::Relaxed);
        total.store(t, Ordering::Relaxed);
    };
    let loaded = std::thread::scope(|s| {
        let loader = std::thread::Builder::new()
            .name("pretext-compare-load".into())
            .spawn_scoped(s, || {
                let cache = crate::data::cache::for_config(&spec.base);
                let options = crate::data::LoadOptions {
                    cache: cache.as_deref(),
                    progress: &progress,
                    cancel: stop,
                    glimpse: None,
                };
                crate::data::load_with(&spec.base.data, spec.base.size, &options)
            })
            .map_err(CompareError::Thread)?;
        let mut last = (usize::MAX, usize::MAX);
        loop {
            let finished = loader.is_finished();
            let now = (done.load(Ordering::Relaxed), total.load(Ordering::Relaxed));
            if now != last && now.1 > 0 {
                on_event(ContestEvent::Loading {
                    done: now.0,
                    total: now.1,
                });
                last = now;
            }
            if finished {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        loader
            .join()
            .map_err(|_| CompareError::Thread(std::io::Error::other("the loading thread panicked")))
    })?;
    if stop.load(Ordering::Relaxed) {
        return Ok(None);
    }
    Ok(Some(loaded?))
}

/// Whether a run directory has a checkpoint to continue from.
fn resumable(run_dir: &Path) -> bool {
    run_dir
        .join(crate::train::run_dir::CHECKPOINT_DIR)
        .join(crate::train::run_dir::RESUME_FILE)
        .is_file()
}

/// `final_loss` as JSON: NaN (unknown) as null, and back.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's `with` passes a reference
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_budget_rounds_to_whole_epochs_and_at_least_one() {
        assert_eq!(Budget::Images(3000).epochs(300), 10);
        assert_eq!(Budget::Images(3149).epochs(300), 10);
        assert_eq!(Budget::Images(3150).epochs(300), 11);
        assert_eq!(Budget::Images(10).epochs(300), 1);
        assert_eq!(Budget::Minutes(2.0).epochs(300), MINUTES_EPOCHS);
        assert_eq!(Budget::Minutes(2.0).minutes(), Some(2.0));
        assert_eq!(Budget::Images(5).minutes(), None);
    }

    #[test]
    fn a_spec_needs_distinct_tasks_and_a_usable_budget() {
        let spec = |tasks: Vec<TaskKind>, budget| ContestSpec {
            base: TrainConfig::default(),
            tasks,
            budget,
        };
        let ok = spec(vec![TaskKind::Rotation], Budget::Images(10));
        assert!(ok.validate().is_ok());
        assert_eq!(ok.tasks_label(), "rotation");
        for bad in [
            spec(vec![], Budget::Images(10)),
            spec(
                vec![TaskKind::Rotation, TaskKind::Rotation],
                Budget::Images(10),
            ),
            spec(vec![TaskKind::Rotation], Budget::Images(0)),
            spec(vec![TaskKind::Rotation], Budget::Minutes(0.0)),
            spec(vec![TaskKind::Rotation], Budget::Minutes(f64::NAN)),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.is_input(), "{e}");
        }
    }

    #[test]
    fn an_unknown_final_loss_round_trips_as_null() {
        #[derive(Serialize, Deserialize)]
        struct L {
            #[serde(with = "nan_as_null")]
            v: f64,
        }
        let text = serde_json::to_string(&L { v: f64::NAN }).unwrap();
        assert_eq!(text, r#"{"v":null}"#);
        assert!(serde_json::from_str::<L>(&text).unwrap().v.is_nan());
        assert_eq!(serde_json::from_str::<L>(r#"{"v":1.5}"#).unwrap().v, 1.5);
    }

    #[test]
    fn open_refuses_what_is_not_a_contest() {
        let tmp =
            std::env::temp_dir().join(format!("pretext-not-a-contest-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        assert!(matches!(open(&tmp), Err(CompareError::NotAContest { .. })));
        std::fs::write(tmp.join(CONTEST_FILE), "{\"format\": 1}").unwrap();
        let e = open(&tmp).unwrap_err();
        assert!(e.to_string().contains("not valid"), "{e}");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
