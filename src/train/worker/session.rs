//! A run's state ([`Session`]) and its setup: the configuration and run directory, the data
//! (loaded with progress), the model, tasks and optimiser, and the resume from a checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::super::prefetch::{Position, Prefetcher, Prepared};
use super::super::run_dir::{CHECKPOINT_DIR, RESUME_FILE, RunDir};
use super::super::{Command, Event, Outcome, Overhead};
use super::step::{EpochAcc, Snapshot};
use super::{Link, failed, invalid};
use crate::config::TrainConfig;
use crate::data::loader::Loader;
use crate::data::{DataError, Dataset};
use crate::model::{self, Model, checkpoint, optim::AdamW};
use crate::tasks::{self, PretextTask};

/// A checkpoint's tensors and metadata, and the model heads it had no weights for.
type Loaded = (
    HashMap<String, Tensor>,
    BTreeMap<String, String>,
    Vec<String>,
);

/// The configuration, data already loaded, and what to resume from (see [`resolve`]).
type Resolved = (TrainConfig, Option<Arc<Dataset>>, Option<Resume>);

/// What starts a run.
pub(super) enum Setup {
    New(Box<TrainConfig>, Option<Arc<Dataset>>),
    Continue {
        run_dir: PathBuf,
        epochs: Option<usize>,
        lr: Option<f64>,
        minutes: Option<f64>,
    },
}

/// A run continued from its directory: the directory, where it was given, and the learning rate
/// asked for instead of the checkpoint's.
struct Resume {
    run: RunDir,
    run_dir: PathBuf,
    lr: Option<f64>,
    /// Minutes to train on top of what the run has trained.
    minutes: Option<f64>,
}

/// A run: its configuration, data, model, tasks and optimiser, where it is, and the state that
/// carries from one step to the next.
pub(super) struct Session {
    pub(super) config: TrainConfig,
    pub(super) data: Arc<Dataset>,
    pub(super) model: Model,
    pub(super) tasks: Vec<Box<dyn PretextTask>>,
    pub(super) opt: AdamW,
    pub(super) run: RunDir,
    pub(super) pos: Position,
    pub(super) batches_per_epoch: usize,
    pub(super) inspection: Vec<usize>,
    pub(super) started: Instant,
    pub(super) paused: bool,
    /// Set by [`Command::Step`]: pause again once the next step is done.
    pub(super) pause_after_step: bool,
    pub(super) snapshot: Option<Snapshot>,
    pub(super) acc: EpochAcc,
    /// Makes batches ahead of the step; started when training starts.
    pub(super) prefetch: Option<Prefetcher>,
    /// A step's batches that have not been trained yet (kept when a step is retried).
    pub(super) current: Option<Prepared>,
    pub(super) last_preview: Instant,
    /// Time spent on the monitor, previews and checkpoints, against the budget.
    pub(super) overhead: Overhead,
    /// The step of the last kNN measurement.
    pub(super) last_monitor_step: Option<u64>,
    /// The peak learning rate (the schedule scales it; [`Command::SetLr`] changes it).
    pub(super) base_lr: f64,
    /// Seconds trained before this session (a continued run), for the time limit and schedule.
    pub(super) prior_train_s: f64,
    /// The run ends when it has trained this many seconds (all sessions together).
    pub(super) time_limit_s: Option<f64>,
    /// Seconds this session has spent paused.
    pub(super) paused_s: f64,
    /// The newest checkpoint (step, file name), to pair it with the measurement that follows.
    pub(super) last_checkpoint: Option<(u64, String)>,
    /// The checkpoint with the best kNN top-1 of z so far, kept whatever `keep_checkpoints` says.
    pub(super) best_checkpoint: Option<(String, f64)>,
}

/// The configuration's data set, with [`Event::Loading`] progress; a stop or shutdown during
/// loading cancels it, other commands wait in the link's queue.
/// How often loading progress is reported and commands are read while files decode.
const LOADING_REPORT: Duration = Duration::from_millis(50);

/// Loads the run's data through the same [`Loader`] the window uses, answering commands while
/// files decode.
fn load_data(link: &Link<'_>, config: &TrainConfig) -> Result<Dataset, Outcome> {
    let cache = crate::data::cache::for_config(config);
    let loader = Loader::start(config.data.clone(), config.size, cache, 0, Arc::new(|| {}))
        .map_err(|e| Outcome::Failed(format!("cannot start loading: {e}")))?;
    let mut reported = None;
    loop {
        if let Some(result) = loader.wait(LOADING_REPORT) {
            return match result {
                Ok((d, _)) => Ok(d),
                Err(DataError::Cancelled) => Err(Outcome::Stopped),
                Err(e) => Err(invalid(e)),
            };
        }
        // Commands during loading: stop and shutdown cancel, the rest wait their turn.
        if link.shutdown.load(Ordering::Relaxed) {
            loader.cancel();
        }
        while let Ok(c) = link.commands.try_recv() {
            match c {
                Command::Stop => loader.cancel(),
                Command::Shutdown => {
                    loader.cancel();
                    link.shutdown.store(true, Ordering::Relaxed);
                }
                other => link
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(other),
            }
        }
        let (done, total) = loader.progress();
        if reported != Some(done) && total > 0 {
            reported = Some(done);
            link.emit(Event::Loading { done, total });
        }
    }
}

/// A number from the checkpoint metadata at `path`.
fn resume_metadata(
    meta: &BTreeMap<String, String>,
    key: &str,
    path: &Path,
) -> Result<u64, Outcome> {
    meta.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| {
        Outcome::InvalidInput(format!(
            "{}: checkpoint metadata has no valid `{key}`",
            path.display()
        ))
    })
}

/// The configuration to train with, data the front end already loaded (when it fits the
/// configuration) and, for a continued run, what to resume from. A continued run's changed
/// configuration is written back to its directory.
fn resolve(setup: Setup) -> Result<Resolved, Outcome> {
    match setup {
        Setup::New(config, data) => {
            config.validate().map_err(invalid)?;
            let preloaded = data.filter(|d| d.source == config.data && d.size == config.size);
            Ok((*config, preloaded, None))
        }
        Setup::Continue {
            run_dir,
            epochs,
            lr,
            minutes,
        } => {
            let (run, mut config) = RunDir::open(&run_dir).map_err(invalid)?;
            if let Some(e) = epochs {
                config.epochs = e;
            }
            if let Some(lr) = lr {
                config.lr = lr;
            }
            config.validate().map_err(invalid)?;
            RunDir::write_config(&run.path, &config).map_err(failed)?;
            Ok((
                config,
                None,
                Some(Resume {
                    run,
                    run_dir,
                    lr,
                    minutes,
                }),
            ))
        }
    }
}

/// The data set (loaded unless `preloaded`), announced with [`Event::DataReady`]; at least two
/// images, with a warning when the batch is larger than the data set.
fn data_set(
    link: &Link<'_>,
    config: &TrainConfig,
    preloaded: Option<Arc<Dataset>>,
) -> Result<Arc<Dataset>, Outcome> {
    let load_start = Instant::now();
    let data = match preloaded {
        Some(d) => d,
        None => Arc::new(load_data(link, config)?),
    };
    let load_secs = load_start.elapsed().as_secs_f64();
    if data.len() < 2 {
        return Err(Outcome::InvalidInput(format!(
            "{}: at least 2 images are needed to train (batch norm)",
            config.data
        )));
    }
    link.emit(Event::DataReady(data.summary(load_secs)));
    if config.batch > data.len() {
        link.emit(Event::Warning(format!(
            "batch {} is larger than the data set ({} images): using batches of {}",
            config.batch,
            data.len(),
            data.len()
        )));
    }
    Ok(data)
}

/// Reads the checkpoint at `path` into `model`.
fn load_weights(model: &Model, path: &Path) -> Result<Loaded, Outcome> {
    let (tensors, meta) = checkpoint::read(path, &model.device).map_err(invalid)?;
    let report = model
        .load_state_dict(&tensors, &path.display().to_string())
        .map_err(invalid)?;
    Ok((tensors, meta, report.missing_heads))
}

/// The model and its tasks, with seeded weights or those of `config.init_from`.
fn build_model(
    link: &Link<'_>,
    config: &TrainConfig,
    device: candle_core::Device,
    data: &Dataset,
) -> Result<(Model, Vec<Box<dyn PretextTask>>), Outcome> {
    let model = Model::new(device, tasks::input_channels(&config.tasks)).map_err(failed)?;
    let tasks = tasks::build(&config.tasks, &config.settings, &model, data).map_err(failed)?;
    model.init_weights(config.seed).map_err(failed)?;
    if let Some(path) = &config.init_from {
        let (_, _, missing_heads) = load_weights(&model, path)?;
        if !missing_heads.is_empty() {
            link.emit(Event::Warning(format!(
                "{} has no weights for {}: those start random",
                path.display(),
                missing_heads.join(", ")
            )));
        }
    }
    // Momentum teachers start as copies of the student, queues as random unit vectors (a
    // resumed run then loads both from its checkpoint).
    for task in &tasks {
        task.start(&model, config.seed).map_err(failed)?;
    }
    Ok((model, tasks))
}

/// Where a continued run picks up.
struct Continued {
    run: RunDir,
    pos: Position,
    /// Seconds trained in earlier sessions.
    trained_s: f64,
    /// The best checkpoint by kNN of z so far, and its accuracy.
    best: Option<(String, f64)>,
}

/// Weights, optimiser state, position and learning rate from a run's resume checkpoint; the
/// run's metrics after that position are dropped.
fn resume(
    model: &Model,
    opt: &mut AdamW,
    config: &TrainConfig,
    resume: Resume,
) -> Result<Continued, Outcome> {
    let Resume {
        mut run,
        run_dir,
        lr: lr_override,
        minutes: _,
    } = resume;
    let path = run_dir.join(CHECKPOINT_DIR).join(RESUME_FILE);
    let (tensors, meta, missing_heads) = load_weights(model, &path)?;
    if !missing_heads.is_empty() {
        return Err(Outcome::InvalidInput(format!(
            "{}: the checkpoint has no weights for {} (was the run's config.json changed?)",
            path.display(),
            missing_heads.join(", ")
        )));
    }
    let t = resume_metadata(&meta, "optimizer_t", &path)?;
    opt.load_state(&tensors, t).map_err(invalid)?;
    let pos = Position {
        step: resume_metadata(&meta, "step", &path)?,
        epoch: resume_metadata(&meta, "epoch", &path)? as usize,
        batch: resume_metadata(&meta, "batch", &path)? as usize,
    };
    // "lr" is the peak rate (the rate itself before schedules existed).
    opt.lr = match lr_override {
        Some(lr) => lr,
        None => meta
            .get("lr")
            .and_then(|v| v.parse().ok())
            .unwrap_or(config.lr),
    };
    let trained_s = meta
        .get("train_s")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(0.0);
    run.keep_metrics_through(pos.step).map_err(failed)?;
    let best = meta.get("best_checkpoint").and_then(|name| {
        let acc = meta.get("best_knn")?.parse::<f64>().ok()?;
        Some((name.clone(), acc))
    });
    Ok(Continued {
        run,
        pos,
        trained_s,
        best,
    })
}

impl Session {
    /// Sets a run up (announced with [`Event::RunStarted`]); training starts with
    /// [`Session::train`].
    pub(super) fn start(link: &Link<'_>, setup: Setup) -> Result<Self, Outcome> {
        let (config, preloaded, resumed) = resolve(setup)?;
        let device = model::device::open(config.device).map_err(invalid)?;
        let data = data_set(link, &config, preloaded)?;
        let (model, tasks) = build_model(link, &config, device, &data)?;
        let mut opt = AdamW::new(model.trainable_vars(), config.lr, config.weight_decay);
        let more_minutes = resumed.as_ref().and_then(|r| r.minutes);
        let was_resumed = resumed.is_some();
        let Continued {
            run,
            pos,
            trained_s: prior_train_s,
            best: best_checkpoint,
        } = match resumed {
            Some(r) => resume(&model, &mut opt, &config, r)?,
            None => Continued {
                run: RunDir::create(&config).map_err(failed)?,
                pos: Position::default(),
                trained_s: 0.0,
                best: None,
            },
        };
        let base_lr = opt.lr;
        // The run's end in training seconds: its own limit, or this many more minutes. A
        // resumed run whose limit is already spent (it ended by its time limit) trains for as
        // long again: continuing it would otherwise end at once, having trained nothing. (Limits
        // are positive, so only a resumed run can have spent one.)
        let time_limit_s = match more_minutes {
            Some(m) => Some(prior_train_s + m * 60.0),
            None => config.minutes.map(|m| {
                let limit = m * 60.0;
                if prior_train_s >= limit {
                    let m = crate::text::minutes(m);
                    link.emit(Event::Warning(format!(
                        "the run had used its time limit ({m}): training {m} more (--minutes, or \
                         the Time limit, sets how long)"
                    )));
                    prior_train_s + limit
                } else {
                    limit
                }
            }),
        };
        // A finished run continued as it was has nothing left to do: say so, rather than end at
        // once with only "finished".
        if was_resumed && pos.epoch >= config.epochs {
            link.emit(Event::Warning(format!(
                "the run has already trained all its {}: nothing left to train (raise the \
                 epochs, --epochs or the Epochs setting, to train on)",
                crate::text::count(config.epochs, "epoch", "epochs")
            )));
        }
        let batch = config.batch.min(data.len());
        let batches_per_epoch = (data.len() / batch).max(1);
        let k = config.preview_images.min(data.len());
        let n = data.len();
        let inspection = (0..k).map(|i| (i * (n / k.max(1)) + i) % n).collect();
        let parameters = model.parameter_count();
        let session = Self {
            config,
            data,
            model,
            tasks,
            opt,
            run,
            pos,
            batches_per_epoch,
            inspection,
            started: Instant::now(),
            paused: false,
            pause_after_step: false,
            snapshot: None,
            acc: EpochAcc::default(),
            prefetch: None,
            current: None,
            last_preview: Instant::now(),
            overhead: Overhead::default(),
            last_monitor_step: None,
            base_lr,
            prior_train_s,
            time_limit_s,
            paused_s: 0.0,
            last_checkpoint: None,
            best_checkpoint,
        };
        if was_resumed {
            let progress = session.progress();
            for task in &session.tasks {
                task.resumed(progress).map_err(failed)?;
            }
        }
        link.emit(Event::RunStarted {
            run_dir: session.run.path.clone(),
            config: Box::new(session.config.clone()),
            start_step: session.pos.step,
            batches_per_epoch,
            parameters,
        });
        if let Some(why) = session.run.lock_warning() {
            link.emit(Event::Warning(why.to_owned()));
        }
        Ok(session)
    }
}
