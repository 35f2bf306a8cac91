//! The training engine: a named worker thread that takes typed [`Command`]s and emits typed
//! [`Event`]s over bounded channels. The desktop app and the command line drive the same engine;
//! the engine owns the run directory, so both leave the same record on disk.

pub mod overhead;
pub mod prefetch;
pub mod run_dir;
mod worker;

use std::path::PathBuf;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::{TaskKind, TrainConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::data::{Dataset, DatasetSummary};
use crate::tasks::{MetricInfo, Preview};
pub use overhead::Overhead;
pub use run_dir::RunDir;

/// Capacity of the command channel.
const COMMAND_CAPACITY: usize = 64;
/// Capacity of the event channel: a front end that falls this far behind slows training down
/// instead of letting memory grow.
const EVENT_CAPACITY: usize = 1024;

/// What a front end can ask of the engine.
#[derive(Clone, Debug)]
pub enum Command {
    /// Start a new run.
    Start(Box<TrainConfig>),
    /// Start a new run on data the front end has already loaded (it must match the
    /// configuration's data source and size, or it is loaded again).
    StartWithData(Box<TrainConfig>, Arc<Dataset>),
    /// Continue a run from its directory; optionally with a new total epoch count or a new
    /// learning rate.
    Continue {
        run_dir: PathBuf,
        epochs: Option<usize>,
        lr: Option<f64>,
        /// Train this many more minutes (then end as at the last epoch).
        minutes: Option<f64>,
    },
    /// Pause after the current step.
    Pause,
    /// Resume a paused run.
    Resume,
    /// While paused: train exactly one batch, then stay paused.
    Step,
    /// End the run after the current step, saving a checkpoint to continue from.
    Stop,
    /// Change the learning rate from the next step on.
    SetLr(f64),
    /// Save a checkpoint now.
    SaveCheckpoint,
    /// Measure the representation now (kNN per stage and the gauges, answered with
    /// [`Event::Knn`]) whatever the monitoring budget says.
    MeasureNow,
    /// Freeze a batch of this many images and derive the Math panel's steps from it, with one
    /// plain gradient step of size `eta` on a copy of the weights (answered with [`Event::Math`]).
    /// Without `eta`, the step is sized so that its first-order prediction η‖∇L‖² is 5% of L.
    Freeze { images: usize, eta: Option<f64> },
    /// Embed every image and summarise the representation (answered with [`Event::Embedding`]).
    Embed,
    /// Every task's predictions for these data-set images (answered with
    /// [`Event::Inspection`] between two steps, or at once while paused).
    Inspect(Vec<usize>),
    /// A pixel (row, column) clicked in `task`'s preview: the task's previews are drawn again
    /// for it at once.
    SelectPixel {
        task: TaskKind,
        pixel: (usize, usize),
    },
    /// Stop any run and end the worker thread.
    Shutdown,
}

/// Loss and proxy metric of one task on one batch or one epoch.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TaskMetrics {
    pub task: TaskKind,
    pub loss: f64,
    pub metric: f64,
    /// A trivial method's score on the same batches (e.g. mean-fill PSNR), when the task has one.
    pub baseline: Option<f64>,
    pub metric_info: MetricInfo,
}

/// Where a step's time went, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StepTiming {
    /// Uploading the batch, the forward pass and the losses.
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    /// Floating-point operations of the matrix products the step ran on pretext's CPU kernels
    /// (the convolutions: 2·m·n·k each; any other thread's products in those seconds too);
    /// 0 on candle's stock ops.
    pub matmul_flop: u64,
}

/// One training step.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StepMetrics {
    /// Steps completed in the whole run (1 after the first step).
    pub step: u64,
    /// 1-based epoch.
    pub epoch: usize,
    pub epochs: usize,
    /// 1-based batch within the epoch.
    pub batch: usize,
    pub batches: usize,
    pub tasks: Vec<TaskMetrics>,
    /// Weighted sum of the task losses.
    pub loss: f64,
    pub lr: f64,
    pub images_per_s: f64,
    /// Seconds the step waited for its batch (near zero when batches are made ahead in time).
    pub data_wait_s: f64,
    /// Images (views, for two-view tasks) the step trained on.
    pub images: usize,
    /// Seconds the step computed (without the data wait).
    pub step_s: f64,
    pub timing: StepTiming,
    /// Seconds since the run (or its continuation) started, pauses left out: the clock of the
    /// time limit and of the monitoring budget.
    pub wall_s: f64,
}

/// The representation as training goes: kNN accuracy of the encoder's stages (labelled data)
/// and the collapse gauges of z.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KnnMetrics {
    pub step: u64,
    pub epoch: usize,
    /// (stage, accuracy) for stem, l1, l2, l3 (z); empty when not measured.
    pub stages: Vec<(String, f64)>,
    /// Why there are no accuracies (no labels, one class, nothing held out).
    pub not_measured: Option<crate::eval::NotMeasured>,
    pub raw_pixels: Option<f64>,
    pub gauges: crate::eval::embed::Gauges,
    /// Gauges of the tasks' own outputs (the two-view methods' projections), where a collapse
    /// can happen without z showing it.
    pub head_gauges: Vec<(crate::config::TaskKind, crate::eval::embed::Gauges)>,
}

/// The end of an epoch.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EpochSummary {
    pub epoch: usize,
    pub epochs: usize,
    pub step: u64,
    /// Mean over the epoch's steps.
    pub tasks: Vec<TaskMetrics>,
    pub loss: f64,
    /// Images through the network per second of training time.
    pub images_per_s: f64,
    pub wall_s: f64,
}

/// Why a run paused.
#[derive(Clone, Debug, PartialEq)]
pub enum PauseReason {
    Requested,
    /// Stepped one batch while paused.
    Stepped,
    /// The loss was NaN or infinite; the weights were restored to before the bad update.
    NonFiniteLoss,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Completed,
    Stopped,
    /// The input could not be used (data, configuration, device, run directory).
    InvalidInput(String),
    /// Something failed while training (e.g. a checkpoint could not be written).
    Failed(String),
}

/// What the engine reports.
#[derive(Clone, Debug)]
pub enum Event {
    /// Images decoded so far.
    Loading {
        done: usize,
        total: usize,
    },
    DataReady(DatasetSummary),
    RunStarted {
        run_dir: PathBuf,
        config: Box<TrainConfig>,
        /// Step count the run starts (or continues) from.
        start_step: u64,
        batches_per_epoch: usize,
        parameters: usize,
    },
    Step(StepMetrics),
    Epoch(EpochSummary),
    Preview(Box<Preview>),
    /// Live kNN accuracy per encoder stage on labelled data (at the start and after each
    /// epoch); raw pixels' accuracy comes with the first.
    Knn(KnnMetrics),
    /// The answer to [`Command::Embed`].
    Embedding(Box<crate::eval::embed::Embedding>),
    /// The answer to [`Command::Freeze`].
    Math(Box<crate::math::MathReport>),
    /// The answer to [`Command::Inspect`].
    Inspection {
        indices: Vec<usize>,
        previews: Vec<Preview>,
    },
    CheckpointSaved {
        path: PathBuf,
        step: u64,
    },
    /// The checkpoints kept after older ones were removed, and the disk they take.
    Checkpoints(run_dir::Checkpoints),
    /// The run's time limit passed after this step, in this (1-based) epoch: it ends now, as
    /// at its last epoch.
    TimeLimitReached {
        step: u64,
        epoch: usize,
    },
    /// The time spent so far not training (after each epoch, and once more before
    /// [`Event::Finished`]).
    Overhead(Overhead),
    Paused {
        step: u64,
        reason: PauseReason,
    },
    Resumed,
    LrChanged(f64),
    Warning(String),
    /// Something went wrong: what, and what to try.
    Error(String),
    Finished {
        run_dir: Option<PathBuf>,
        outcome: Outcome,
    },
}

/// Called after each event the worker sends.
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// A handle on the worker thread; dropping it stops the worker cleanly.
pub struct Trainer {
    commands: Sender<Command>,
    events: Receiver<Event>,
    shutdown: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Trainer {
    /// Starts the worker thread (named `pretext-trainer`), idle until it gets a command.
    pub fn spawn() -> std::io::Result<Self> {
        Self::spawn_with_notify(Arc::new(|| {}))
    }

    /// Like [`Trainer::spawn`]; `notify` is called after every event sent (a GUI asks for a
    /// repaint there, so it wakes up when something happened and sleeps otherwise).
    pub fn spawn_with_notify(notify: Notify) -> std::io::Result<Self> {
        let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(COMMAND_CAPACITY);
        let (ev_tx, ev_rx) = crossbeam_channel::bounded(EVENT_CAPACITY);
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("pretext-trainer".into())
            .spawn(move || {
                crate::model::kernels::yield_this_thread();
                worker::run(&cmd_rx, &ev_tx, &notify, &flag);
            })?;
        Ok(Self {
            commands: cmd_tx,
            events: ev_rx,
            shutdown,
            thread: Some(thread),
        })
    }

    /// Sends a command; false if the worker is gone or its queue is full.
    pub fn send(&self, command: Command) -> bool {
        match self.commands.try_send(command) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// The event stream.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Whether the command queue is full (a front end that floods it; closing still works).
    pub fn commands_full(&self) -> bool {
        self.commands.is_full()
    }
}

impl Drop for Trainer {
    /// Never blocks on a full queue: while the shutdown cannot be queued, or the worker has not
    /// ended, the events it is waiting to send are drained, so a full command queue and a full
    /// event channel together cannot deadlock the closing window or the ending CLI.
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        let mut queued = false;
        while let Some(t) = &self.thread {
            if t.is_finished() {
                break;
            }
            if !queued {
                queued = match self.commands.try_send(Command::Shutdown) {
                    Ok(()) | Err(TrySendError::Disconnected(_)) => true,
                    Err(TrySendError::Full(_)) => false,
                };
            }
            while self.events.try_recv().is_ok() {}
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
