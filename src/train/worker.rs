//! The worker thread's loop: idle until a run starts, then load data, build the model and train
//! step by step, reading commands between steps.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use crossbeam_channel::{Receiver, Sender};

use super::prefetch::{Position, Prefetcher, Prepared, Schedule};
use super::run_dir::{RESUME_FILE, RunDir};
use super::{
    Command, EpochSummary, Event, Outcome, PauseReason, StepMetrics, StepTiming, TaskMetrics,
};
use crate::config::TrainConfig;
use crate::data::{self, DataError, Dataset};
use crate::math::{MathReport, Optimisation, TaskReport};
use crate::model::{self, Model, checkpoint, optim::AdamW};
use crate::tasks::{self, PretextTask};

/// Checkpoint format written in the metadata.
const FORMAT: &str = "pretext-checkpoint-1";

struct Link<'a> {
    commands: &'a Receiver<Command>,
    events: &'a Sender<Event>,
    notify: &'a super::Notify,
    /// Commands that arrived while they could not be handled (e.g. during loading).
    pending: Mutex<Vec<Command>>,
    /// Set by the worker on `Shutdown` or a closed channel, and by the front end's `Trainer`
    /// drop, so that the worker ends between two commands even behind a full queue.
    shutdown: &'a AtomicBool,
}

impl Link<'_> {
    /// Sends an event; false when nobody listens any more.
    fn emit(&self, e: Event) -> bool {
        if self.events.send(e).is_err() {
            self.shutdown.store(true, Ordering::Relaxed);
            false
        } else {
            (self.notify)();
            true
        }
    }

    fn next_pending(&self) -> Option<Command> {
        let mut p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if p.is_empty() {
            None
        } else {
            Some(p.remove(0))
        }
    }

    fn try_command(&self) -> Option<Command> {
        self.next_pending()
            .or_else(|| self.commands.try_recv().ok())
    }

    fn wait_command(&self) -> Option<Command> {
        self.next_pending().or_else(|| self.commands.recv().ok())
    }
}

/// Entry point of the `pretext-trainer` thread.
pub(super) fn run(
    commands: &Receiver<Command>,
    events: &Sender<Event>,
    notify: &super::Notify,
    shutdown: &AtomicBool,
) {
    let link = Link {
        commands,
        events,
        notify,
        pending: Mutex::new(Vec::new()),
        shutdown,
    };
    // The last run's model stays for inspection until the next run starts.
    let mut last: Option<Session> = None;
    while !link.shutdown.load(Ordering::Relaxed) {
        let Some(cmd) = link.wait_command() else {
            return;
        };
        let setup = match cmd {
            Command::Shutdown => return,
            Command::Start(config) => Setup::New(config, None),
            Command::StartWithData(config, data) => Setup::New(config, Some(data)),
            Command::Continue {
                run_dir,
                epochs,
                lr,
            } => Setup::Continue {
                run_dir,
                epochs,
                lr,
            },
            Command::Inspect(indices) => {
                if let Some(s) = &last {
                    s.inspect(&link, indices);
                }
                continue;
            }
            Command::Freeze { images, eta } => {
                if let Some(s) = &mut last {
                    s.freeze(&link, images, eta);
                }
                continue;
            }
            Command::Embed => {
                if let Some(s) = &last {
                    s.embed(&link);
                }
                continue;
            }
            Command::Pause
            | Command::Resume
            | Command::Step
            | Command::Stop
            | Command::SaveCheckpoint
            | Command::SetLr(_) => {
                continue;
            }
        };
        last = None;
        let (run_dir, outcome) = match Session::start(&link, setup) {
            Ok(mut session) => {
                let outcome = session.train(&link);
                let dir = session.run.path.clone();
                session.prefetch = None;
                last = Some(session);
                (Some(dir), outcome)
            }
            Err(outcome) => (None, outcome),
        };
        if let Outcome::InvalidInput(m) | Outcome::Failed(m) = &outcome {
            link.emit(Event::Error(m.clone()));
        }
        link.emit(Event::Finished { run_dir, outcome });
    }
}

enum Setup {
    New(Box<TrainConfig>, Option<Arc<Dataset>>),
    Continue {
        run_dir: PathBuf,
        epochs: Option<usize>,
        lr: Option<f64>,
    },
}

/// Weights and optimiser state from before the last update, to undo a step that blew up.
struct Snapshot {
    vars: Vec<(candle_core::Var, Tensor)>,
    optimizer: HashMap<String, Tensor>,
    t: u64,
}

/// Accumulates an epoch's means.
#[derive(Default)]
struct EpochAcc {
    steps: usize,
    loss: f64,
    task_loss: Vec<f64>,
    task_metric: Vec<f64>,
    task_baseline: Vec<Option<f64>>,
    images: usize,
    train_secs: f64,
}

struct Session {
    config: TrainConfig,
    data: Arc<Dataset>,
    model: Model,
    tasks: Vec<Box<dyn PretextTask>>,
    opt: AdamW,
    run: RunDir,
    pos: Position,
    batches_per_epoch: usize,
    inspection: Vec<usize>,
    started: Instant,
    paused: bool,
    /// Set by [`Command::Step`]: pause again once the next step is done.
    pause_after_step: bool,
    snapshot: Option<Snapshot>,
    acc: EpochAcc,
    /// Makes batches ahead of the step; started when training starts.
    prefetch: Option<Prefetcher>,
    /// A step's batches that have not been trained yet (kept when a step is retried).
    current: Option<Prepared>,
    last_preview: Instant,
}

/// How often previews are sent while an epoch runs.
const PREVIEW_EVERY: Duration = Duration::from_secs(15);

enum Flow {
    Continue,
    Stop,
}

fn load_data(link: &Link<'_>, config: &TrainConfig) -> Result<Dataset, Outcome> {
    let cancel = AtomicBool::new(false);
    let last_report = Mutex::new(Instant::now() - Duration::from_secs(1));
    let reported = AtomicUsize::new(usize::MAX);
    let progress = |done: usize, total: usize| {
        if link.shutdown.load(Ordering::Relaxed) {
            cancel.store(true, Ordering::Relaxed);
        }
        // Commands during loading: stop and shutdown cancel, the rest wait their turn.
        while let Ok(c) = link.commands.try_recv() {
            match c {
                Command::Stop => cancel.store(true, Ordering::Relaxed),
                Command::Shutdown => {
                    cancel.store(true, Ordering::Relaxed);
                    link.shutdown.store(true, Ordering::Relaxed);
                }
                other => link
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(other),
            }
        }
        let mut last = last_report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if (done == total || last.elapsed() > Duration::from_millis(50))
            && reported.swap(done, Ordering::Relaxed) != done
        {
            *last = Instant::now();
            link.emit(Event::Loading { done, total });
        }
    };
    match data::load(&config.data, config.size, &progress, &cancel) {
        Ok(d) => Ok(d),
        Err(DataError::Cancelled) => Err(Outcome::Stopped),
        Err(e) => Err(Outcome::InvalidInput(e.to_string())),
    }
}

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

impl Session {
    fn start(link: &Link<'_>, setup: Setup) -> Result<Self, Outcome> {
        let invalid = |m: String| Outcome::InvalidInput(m);
        let mut preloaded: Option<Arc<Dataset>> = None;
        let (config, run, resume) = match setup {
            Setup::New(config, data) => {
                config.validate().map_err(invalid)?;
                preloaded = data.filter(|d| d.source == config.data && d.size == config.size);
                (*config, None, None)
            }
            Setup::Continue {
                run_dir,
                epochs,
                lr,
            } => {
                let (run, mut config) =
                    RunDir::open(&run_dir).map_err(|e| invalid(e.to_string()))?;
                if let Some(e) = epochs {
                    config.epochs = e;
                }
                if let Some(lr) = lr {
                    config.lr = lr;
                }
                config.validate().map_err(invalid)?;
                RunDir::write_config(&run.path, &config)
                    .map_err(|e| Outcome::Failed(e.to_string()))?;
                (config, Some(run), Some((run_dir, lr)))
            }
        };
        let device = model::open_device(config.device).map_err(|e| invalid(e.to_string()))?;
        let load_start = Instant::now();
        let data = match preloaded {
            Some(d) => d,
            None => Arc::new(load_data(link, &config)?),
        };
        let load_secs = load_start.elapsed().as_secs_f64();
        if data.len() < 2 {
            return Err(invalid(format!(
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

        let failed = |e: model::ModelError| Outcome::Failed(e.to_string());
        let model = Model::new(device, tasks::input_channels(&config.tasks)).map_err(failed)?;
        let tasks = tasks::build(&config.tasks, &config.settings, &model).map_err(failed)?;
        model.init_weights(config.seed).map_err(failed)?;
        if let Some(path) = &config.init_from {
            let (tensors, _) =
                checkpoint::read(path, &model.device).map_err(|e| invalid(e.to_string()))?;
            let report = model
                .load_state_dict(&tensors, &path.display().to_string())
                .map_err(|e| invalid(e.to_string()))?;
            if !report.missing_heads.is_empty() {
                link.emit(Event::Warning(format!(
                    "{} has no weights for {}: those start random",
                    path.display(),
                    report.missing_heads.join(", ")
                )));
            }
        }
        let mut opt = AdamW::new(model.trainable_vars(), config.lr, config.weight_decay);
        let mut pos = Position::default();

        let run = match (run, resume) {
            (Some(run), Some((run_dir, lr_override))) => {
                let path = run_dir
                    .join(super::run_dir::CHECKPOINT_DIR)
                    .join(RESUME_FILE);
                let (tensors, meta) =
                    checkpoint::read(&path, &model.device).map_err(|e| invalid(e.to_string()))?;
                let report = model
                    .load_state_dict(&tensors, &path.display().to_string())
                    .map_err(|e| invalid(e.to_string()))?;
                if !report.missing_heads.is_empty() {
                    return Err(invalid(format!(
                        "{}: the checkpoint has no weights for {} (was the run's config.json changed?)",
                        path.display(),
                        report.missing_heads.join(", ")
                    )));
                }
                let t = resume_metadata(&meta, "optimizer_t", &path)?;
                opt.load_state(&tensors, t)
                    .map_err(|e| invalid(e.to_string()))?;
                pos = Position {
                    step: resume_metadata(&meta, "step", &path)?,
                    epoch: resume_metadata(&meta, "epoch", &path)? as usize,
                    batch: resume_metadata(&meta, "batch", &path)? as usize,
                };
                opt.lr = match lr_override {
                    Some(lr) => lr,
                    None => meta
                        .get("lr")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(config.lr),
                };
                let mut run = run;
                run.keep_metrics_through(pos.step)
                    .map_err(|e| Outcome::Failed(e.to_string()))?;
                run
            }
            _ => RunDir::create(&config).map_err(|e| Outcome::Failed(e.to_string()))?,
        };

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
        };
        link.emit(Event::RunStarted {
            run_dir: session.run.path.clone(),
            config: Box::new(session.config.clone()),
            start_step: session.pos.step,
            batches_per_epoch,
            parameters,
        });
        Ok(session)
    }

    fn batch_size(&self) -> usize {
        self.config.batch.min(self.data.len())
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            seed: self.config.seed,
            batch: self.batch_size(),
            batches_per_epoch: self.batches_per_epoch,
            epochs: self.config.epochs,
        }
    }

    /// The next step's batches and how long the step waited for them.
    fn next_batches(&mut self) -> Result<(Prepared, f64), Outcome> {
        if let Some(p) = self.current.take() {
            return Ok((p, 0.0));
        }
        if self.prefetch.is_none() {
            let makers = self.tasks.iter().map(|t| t.maker()).collect();
            let p = Prefetcher::start(self.data.clone(), makers, self.schedule(), self.pos)
                .map_err(|e| Outcome::Failed(format!("cannot start the batch thread: {e}")))?;
            self.prefetch = Some(p);
        }
        let t0 = Instant::now();
        let next = self.prefetch.as_ref().and_then(Prefetcher::next);
        let Some(p) = next else {
            return Err(Outcome::Failed("the batch thread ended early".into()));
        };
        if p.position != self.pos {
            return Err(Outcome::Failed(format!(
                "internal error: batch for {:?} arrived at {:?}",
                p.position, self.pos
            )));
        }
        Ok((p, t0.elapsed().as_secs_f64()))
    }

    /// The whole run: epochs of steps, commands between steps.
    fn train(&mut self, link: &Link<'_>) -> Outcome {
        if self.pos.step == 0 {
            self.send_previews(link, None);
            if let Err(o) = self.knn_monitor(link, true) {
                return o;
            }
        }
        while self.pos.epoch < self.config.epochs {
            while self.pos.batch < self.batches_per_epoch {
                match self.handle_commands(link) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop) => return self.finish_stopped(link),
                    Err(o) => return o,
                }
                let (prepared, wait) = match self.next_batches() {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                match model::kernels::on_compute_pool(|| self.step(link, prepared, wait)) {
                    Ok(true) => {
                        // Previews between epochs too, so a person watching sees change.
                        if self.last_preview.elapsed() > PREVIEW_EVERY
                            && self.pos.batch < self.batches_per_epoch
                        {
                            self.send_previews(link, None);
                        }
                        // The representation's kNN and gauges every N steps (and at every
                        // epoch's end).
                        let every = self.config.knn_every as u64;
                        if every > 0
                            && self.pos.step.is_multiple_of(every)
                            && self.pos.batch < self.batches_per_epoch
                            && let Err(o) = self.knn_monitor(link, false)
                        {
                            return o;
                        }
                        if std::mem::take(&mut self.pause_after_step) {
                            self.paused = true;
                            link.emit(Event::Paused {
                                step: self.pos.step,
                                reason: PauseReason::Stepped,
                            });
                        }
                    }
                    Ok(false) => {
                        // Non-finite loss: paused; the same batch is tried again on resume.
                        continue;
                    }
                    Err(o) => return o,
                }
                if link.shutdown.load(Ordering::Relaxed) {
                    return self.finish_stopped(link);
                }
            }
            if let Err(o) = self.end_epoch(link) {
                return o;
            }
        }
        if let Err(e) = self.run.flush() {
            return Outcome::Failed(e.to_string());
        }
        Outcome::Completed
    }

    fn finish_stopped(&mut self, link: &Link<'_>) -> Outcome {
        if let Err(o) = self.save_resume(link) {
            return o;
        }
        if let Err(e) = self.run.flush() {
            return Outcome::Failed(e.to_string());
        }
        Outcome::Stopped
    }

    /// Reads commands; blocks while paused. Returns whether to go on.
    fn handle_commands(&mut self, link: &Link<'_>) -> Result<Flow, Outcome> {
        loop {
            if link.shutdown.load(Ordering::Relaxed) {
                return Ok(Flow::Stop);
            }
            let cmd = if self.paused {
                link.wait_command()
            } else {
                link.try_command()
            };
            let Some(cmd) = cmd else {
                if self.paused {
                    // Command channel closed while paused.
                    link.shutdown.store(true, Ordering::Relaxed);
                    return Ok(Flow::Stop);
                }
                return Ok(Flow::Continue);
            };
            match cmd {
                Command::Pause => {
                    if !self.paused {
                        self.paused = true;
                        link.emit(Event::Paused {
                            step: self.pos.step,
                            reason: PauseReason::Requested,
                        });
                    }
                }
                Command::Resume => {
                    if self.paused {
                        self.paused = false;
                        link.emit(Event::Resumed);
                    }
                }
                Command::Step => {
                    if self.paused {
                        // Train one batch, then pause again.
                        self.paused = false;
                        self.pause_after_step = true;
                        return Ok(Flow::Continue);
                    }
                }
                Command::Stop => return Ok(Flow::Stop),
                Command::Shutdown => {
                    link.shutdown.store(true, Ordering::Relaxed);
                    return Ok(Flow::Stop);
                }
                Command::SetLr(lr) => {
                    if lr.is_finite() && lr > 0.0 {
                        self.opt.lr = lr;
                        link.emit(Event::LrChanged(lr));
                    } else {
                        link.emit(Event::Warning(format!(
                            "learning rate {lr} ignored: it must be a positive number"
                        )));
                    }
                }
                Command::SaveCheckpoint => {
                    let name = format!("step-{:06}.safetensors", self.pos.step);
                    self.save_model(link, &name)?;
                    self.save_resume(link)?;
                }
                Command::Inspect(indices) => self.inspect(link, indices),
                Command::Freeze { images, eta } => self.freeze(link, images, eta),
                Command::Embed => self.embed(link),
                Command::Start(_) | Command::StartWithData(..) | Command::Continue { .. } => {
                    link.emit(Event::Warning(
                        "a run is already in progress: stop it first".into(),
                    ));
                }
            }
            if !self.paused {
                // Drain whatever else is queued before stepping.
                if link.pending.lock().map(|p| p.is_empty()).unwrap_or(true)
                    && link.commands.is_empty()
                {
                    return Ok(Flow::Continue);
                }
            }
        }
    }

    /// A copy of every weight and buffer and of the optimiser state.
    fn snapshot(&self) -> candle_core::Result<Snapshot> {
        let vars = self
            .model
            .named_vars()
            .into_values()
            .map(|v| {
                let t = v.as_tensor().copy()?;
                Ok((v, t))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Snapshot {
            vars,
            optimizer: self.opt.state_tensors(),
            t: self.opt.t,
        })
    }

    fn restore(&mut self, s: &Snapshot) -> candle_core::Result<()> {
        for (var, t) in &s.vars {
            var.set(t)?;
        }
        self.opt.load_state(&s.optimizer, s.t)
    }

    fn take_snapshot(&mut self) -> Result<(), Outcome> {
        self.snapshot = Some(
            self.snapshot()
                .map_err(|e| Outcome::Failed(e.to_string()))?,
        );
        Ok(())
    }

    fn restore_snapshot(&mut self) -> Result<(), Outcome> {
        let Some(s) = self.snapshot.take() else {
            return Ok(());
        };
        let r = self.restore(&s).map_err(|e| Outcome::Failed(e.to_string()));
        self.snapshot = Some(s);
        r
    }

    /// Freezes a batch of `images` images and derives every step of the Math panel from it; the
    /// weights, statistics and optimiser are left exactly as they were.
    fn freeze(&mut self, link: &Link<'_>, images: usize, eta: Option<f64>) {
        let result = (|| -> Result<MathReport, model::ModelError> {
            let saved = self.snapshot()?;
            let report = self.derive(images, eta);
            self.restore(&saved)?;
            report
        })();
        match result {
            Ok(r) => {
                link.emit(Event::Math(Box::new(r)));
            }
            Err(e) => {
                link.emit(Event::Warning(format!("cannot freeze a batch: {e}")));
            }
        }
    }

    fn derive(&self, images: usize, eta: Option<f64>) -> Result<MathReport, model::ModelError> {
        let order = super::prefetch::epoch_order(self.config.seed, self.data.len(), self.pos.epoch);
        let indices: Vec<usize> = order
            .into_iter()
            .take(images.clamp(2, self.data.len()))
            .collect();
        let seeds: Vec<u64> = (0..self.tasks.len())
            .map(|t| super::prefetch::step_seed(self.config.seed, self.pos.step, t))
            .collect();
        let mut batches = Vec::new();
        let mut reports = Vec::new();
        for (t, task) in self.tasks.iter().enumerate() {
            let host = task.maker().make(&self.data, &indices, seeds[t]);
            let batch = host.upload(&self.model.device)?;
            let trainer_loss = f64::from(
                task.forward(&self.model, &batch, true)?
                    .loss
                    .to_scalar::<f32>()?,
            );
            let e = task.explain(&self.model, &batch)?;
            let originals = batch
                .host
                .sources
                .iter()
                .map(|&i| self.data.image(i).to_vec())
                .collect();
            reports.push(TaskReport {
                task: task.kind(),
                trainer_loss,
                inputs: e.inputs,
                input_size: e.input_size,
                originals,
                z: e.z,
                transforms: e.transforms,
                math: e.math,
            });
            batches.push(batch);
        }
        // One plain gradient step on the weighted loss, on the weights as they are.
        let total_loss = |batches: &[tasks::Batch]| -> Result<Tensor, model::ModelError> {
            let mut total: Option<Tensor> = None;
            for ((task, w), b) in self
                .tasks
                .iter()
                .zip(&self.config.task_weights)
                .zip(batches)
            {
                let l = (task.forward(&self.model, b, true)?.loss * *w)?;
                total = Some(match total {
                    Some(t) => (t + l)?,
                    None => l,
                });
            }
            total
                .ok_or_else(|| model::ModelError::Candle(candle_core::Error::Msg("no task".into())))
        };
        let before = total_loss(&batches)?;
        let loss_before = f64::from(before.to_scalar::<f32>()?);
        let grads = before.backward()?;
        let mut trainable = self.model.trainable_vars();
        let rank = |n: &str| match n.split('.').next() {
            Some("stem") => 0,
            Some("l1") => 1,
            Some("l2") => 2,
            Some("l3") => 3,
            _ => 4,
        };
        trainable.sort_by_key(|(n, _)| rank(n));
        let mut grad_norms = Vec::new();
        let mut updates = Vec::new();
        for (name, var) in &trainable {
            if let Some(g) = grads.get(var.as_tensor()) {
                let norm = f64::from(g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?);
                grad_norms.push((name.clone(), norm));
                updates.push((var, g));
            }
        }
        let squared: f64 = grad_norms.iter().map(|(_, g)| g * g).sum();
        let eta = eta.unwrap_or(0.05 * loss_before.abs() / squared.max(1e-12));
        for (var, g) in updates {
            var.set(&(var.as_tensor() - (g * eta)?)?)?;
        }
        let loss_after = f64::from(total_loss(&batches)?.to_scalar::<f32>()?);
        Ok(MathReport {
            step: self.pos.step,
            tasks: reports,
            optimisation: Some(Optimisation {
                eta,
                grad_norms,
                loss_before,
                loss_after,
            }),
        })
    }

    /// One optimisation step on prepared batches. Ok(false) when the loss was not finite (the
    /// run is then paused, the weights restored, and the batches kept for a retry).
    fn step(
        &mut self,
        link: &Link<'_>,
        prepared: Prepared,
        data_wait_s: f64,
    ) -> Result<bool, Outcome> {
        let t0 = Instant::now();
        let failed = |e: candle_core::Error| Outcome::Failed(format!("training step failed: {e}"));
        let mut total: Option<Tensor> = None;
        let mut metrics = Vec::with_capacity(self.tasks.len());
        let mut images = 0;
        for ((task, &w), host) in self
            .tasks
            .iter()
            .zip(&self.config.task_weights)
            .zip(&prepared.batches)
        {
            let batch = host.clone().upload(&self.model.device).map_err(failed)?;
            let out = task
                .forward(&self.model, &batch, true)
                .map_err(|e| Outcome::Failed(e.to_string()))?;
            let loss_value = f64::from(out.loss.to_scalar::<f32>().map_err(failed)?);
            images += out.images;
            metrics.push(TaskMetrics {
                task: task.kind(),
                loss: loss_value,
                metric: out.metric,
                baseline: out.baseline,
                metric_info: task.metric(),
            });
            let weighted = (out.loss * w).map_err(failed)?;
            total = Some(match total {
                Some(t) => (t + weighted).map_err(failed)?,
                None => weighted,
            });
        }
        let Some(total) = total else {
            return Err(Outcome::Failed("no task to train".into()));
        };
        if let Some(bad) = metrics.iter().find(|m| !m.loss.is_finite()) {
            self.restore_snapshot()?;
            self.paused = true;
            self.current = Some(prepared);
            link.emit(Event::Error(format!(
                "the {} loss became {} at step {} (learning rate {:e}); training is paused and the \
                 weights are back to before the last update. Try a lower learning rate (e.g. {:e}), \
                 then resume — or stop the run.",
                bad.task,
                bad.loss,
                self.pos.step + 1,
                self.opt.lr,
                self.opt.lr / 10.0
            )));
            link.emit(Event::Paused {
                step: self.pos.step,
                reason: PauseReason::NonFiniteLoss,
            });
            return Ok(false);
        }
        let forward_s = t0.elapsed().as_secs_f64();
        self.take_snapshot()?;
        let t1 = Instant::now();
        let grads = total.backward().map_err(failed)?;
        let backward_s = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        self.opt.step(&grads).map_err(failed)?;
        let optimizer_s = t2.elapsed().as_secs_f64();
        let total_loss: f64 = metrics
            .iter()
            .zip(&self.config.task_weights)
            .map(|(m, w)| m.loss * w)
            .sum();

        let secs = t0.elapsed().as_secs_f64();
        self.pos.step += 1;
        self.pos.batch += 1;
        let acc = &mut self.acc;
        acc.steps += 1;
        acc.loss += total_loss;
        acc.images += images;
        acc.train_secs += secs + data_wait_s;
        acc.task_loss.resize(metrics.len(), 0.0);
        acc.task_metric.resize(metrics.len(), 0.0);
        acc.task_baseline.resize(metrics.len(), None);
        for (i, m) in metrics.iter().enumerate() {
            acc.task_loss[i] += m.loss;
            acc.task_metric[i] += m.metric;
            if let Some(b) = m.baseline {
                acc.task_baseline[i] = Some(acc.task_baseline[i].unwrap_or(0.0) + b);
            }
        }
        let step = StepMetrics {
            step: self.pos.step,
            epoch: self.pos.epoch + 1,
            epochs: self.config.epochs,
            batch: self.pos.batch,
            batches: self.batches_per_epoch,
            tasks: metrics,
            loss: total_loss,
            lr: self.opt.lr,
            images_per_s: images as f64 / (secs + data_wait_s).max(1e-9),
            data_wait_s,
            images,
            step_s: secs,
            timing: StepTiming {
                forward_s,
                backward_s,
                optimizer_s,
            },
            wall_s: self.started.elapsed().as_secs_f64(),
        };
        self.run
            .append_metrics(&step)
            .map_err(|e| Outcome::Failed(e.to_string()))?;
        link.emit(Event::Step(step));
        Ok(true)
    }

    fn end_epoch(&mut self, link: &Link<'_>) -> Result<(), Outcome> {
        let acc = std::mem::take(&mut self.acc);
        let n = acc.steps.max(1) as f64;
        let tasks = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| TaskMetrics {
                task: t.kind(),
                loss: acc.task_loss.get(i).copied().unwrap_or(f64::NAN) / n,
                metric: acc.task_metric.get(i).copied().unwrap_or(f64::NAN) / n,
                baseline: acc.task_baseline.get(i).copied().flatten().map(|b| b / n),
                metric_info: t.metric(),
            })
            .collect();
        let epoch = self.pos.epoch + 1;
        self.pos.epoch += 1;
        self.pos.batch = 0;
        self.run
            .flush()
            .map_err(|e| Outcome::Failed(e.to_string()))?;
        self.save_model(link, &format!("epoch-{epoch:04}.safetensors"))?;
        self.save_resume(link)?;
        self.send_previews(link, Some(epoch));
        self.knn_monitor(link, false)?;
        link.emit(Event::Epoch(EpochSummary {
            epoch,
            epochs: self.config.epochs,
            step: self.pos.step,
            tasks,
            loss: acc.loss / n,
            images_per_s: acc.images as f64 / acc.train_secs.max(1e-9),
            wall_s: self.started.elapsed().as_secs_f64(),
        }));
        Ok(())
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("step".to_string(), self.pos.step.to_string()),
            ("epoch".to_string(), self.pos.epoch.to_string()),
            ("batch".to_string(), self.pos.batch.to_string()),
            ("tasks".to_string(), self.config.tasks_label()),
            ("lr".to_string(), self.opt.lr.to_string()),
            ("optimizer_t".to_string(), self.opt.t.to_string()),
        ])
    }

    /// Model weights only (PyTorch state_dict names), for users.
    fn save_model(&self, link: &Link<'_>, name: &str) -> Result<(), Outcome> {
        let path = self.run.checkpoint_path(name);
        let tensors = self
            .model
            .state_dict()
            .map_err(|e| Outcome::Failed(e.to_string()))?;
        checkpoint::write(&path, &tensors, &self.metadata())
            .map_err(|e| Outcome::Failed(e.to_string()))?;
        link.emit(Event::CheckpointSaved {
            path,
            step: self.pos.step,
        });
        Ok(())
    }

    /// Weights, optimiser state and position, to continue the run.
    fn save_resume(&self, _link: &Link<'_>) -> Result<(), Outcome> {
        let path = self.run.checkpoint_path(RESUME_FILE);
        let mut tensors = self
            .model
            .state_dict()
            .map_err(|e| Outcome::Failed(e.to_string()))?;
        tensors.extend(self.opt.state_tensors());
        checkpoint::write(&path, &tensors, &self.metadata())
            .map_err(|e| Outcome::Failed(e.to_string()))
    }

    /// kNN accuracy per stage on labelled data, into metrics.csv and an event.
    fn knn_monitor(&mut self, link: &Link<'_>, with_pixels: bool) -> Result<(), Outcome> {
        let result = crate::eval::embed::monitor(&self.model, &self.data, with_pixels)
            .map_err(|e| Outcome::Failed(format!("kNN monitor failed: {e}")))?;
        let crate::eval::embed::Monitor {
            stages,
            not_measured,
            raw_pixels,
            gauges,
        } = result;
        let k = super::KnnMetrics {
            step: self.pos.step,
            epoch: self.pos.epoch,
            stages: crate::eval::embed::STAGES
                .iter()
                .map(|s| (*s).to_string())
                .zip(stages)
                .collect(),
            not_measured,
            raw_pixels,
            gauges,
        };
        self.run
            .append_knn(&k, self.started.elapsed().as_secs_f64())
            .map_err(|e| Outcome::Failed(e.to_string()))?;
        link.emit(Event::Knn(k));
        Ok(())
    }

    /// The whole data set in embedding space.
    fn embed(&self, link: &Link<'_>) {
        match crate::eval::embed::embedding(&self.model, &self.data, self.pos.step) {
            Ok(e) => {
                link.emit(Event::Embedding(Box::new(e)));
            }
            Err(e) => {
                link.emit(Event::Warning(format!("cannot embed the data: {e}")));
            }
        }
    }

    /// Every task's predictions for data-set images `indices`.
    fn inspect(&self, link: &Link<'_>, indices: Vec<usize>) {
        let indices: Vec<usize> = indices
            .into_iter()
            .filter(|&i| i < self.data.len())
            .collect();
        let previews = self
            .tasks
            .iter()
            .filter_map(|t| t.preview(&self.model, &self.data, &indices).ok())
            .collect();
        link.emit(Event::Inspection { indices, previews });
    }

    /// Previews on the inspection batch; written as PNGs when `epoch` is given.
    fn send_previews(&mut self, link: &Link<'_>, epoch: Option<usize>) {
        self.last_preview = Instant::now();
        for task in &self.tasks {
            match task.preview(&self.model, &self.data, &self.inspection) {
                Ok(p) => {
                    if let Some(e) = epoch {
                        let path = self.run.preview_path(e, task.kind().name());
                        if let Err(err) = p.image.save_png(&path) {
                            link.emit(Event::Warning(format!(
                                "cannot write preview {}: {err}",
                                path.display()
                            )));
                        }
                    }
                    link.emit(Event::Preview(Box::new(p)));
                }
                Err(e) => {
                    link.emit(Event::Warning(format!(
                        "{} preview failed: {e}",
                        task.kind()
                    )));
                }
            }
        }
    }
}
