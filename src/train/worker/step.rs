//! The training loop: epochs of steps, the step itself (forward, NaN guard with weight
//! snapshots, backward and update, metrics), the batches it trains on and the epoch's
//! bookkeeping.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::super::overhead::Activity;
use super::super::prefetch::{Prefetcher, Prepared, Schedule};
use super::super::{
    EpochSummary, Event, Outcome, PauseReason, StepMetrics, StepTiming, TaskMetrics,
};
use super::control::Flow;
use super::session::Session;
use super::{Link, failed};
use crate::model;
use crate::tasks::PretextTask;

/// How often previews are sent while an epoch runs (when the monitoring budget allows).
const PREVIEW_EVERY: Duration = Duration::from_secs(3);

/// Weights and optimiser state from before the last update, to undo a step that blew up.
pub(super) struct Snapshot {
    vars: Vec<(candle_core::Var, Tensor)>,
    optimizer: HashMap<String, Tensor>,
    t: u64,
}

/// Accumulates an epoch's means.
#[derive(Default)]
pub(super) struct EpochAcc {
    steps: usize,
    loss: f64,
    task_loss: Vec<f64>,
    task_metric: Vec<f64>,
    task_baseline: Vec<Option<f64>>,
    images: usize,
    train_secs: f64,
}

impl EpochAcc {
    /// Adds a step: its tasks' metrics, its weighted loss, the images it trained on and its
    /// seconds (with the data wait).
    fn add(&mut self, metrics: &[TaskMetrics], loss: f64, images: usize, secs: f64) {
        self.steps += 1;
        self.loss += loss;
        self.images += images;
        self.train_secs += secs;
        self.task_loss.resize(metrics.len(), 0.0);
        self.task_metric.resize(metrics.len(), 0.0);
        self.task_baseline.resize(metrics.len(), None);
        for (i, m) in metrics.iter().enumerate() {
            self.task_loss[i] += m.loss;
            self.task_metric[i] += m.metric;
            if let Some(b) = m.baseline {
                self.task_baseline[i] = Some(self.task_baseline[i].unwrap_or(0.0) + b);
            }
        }
    }
}

/// A step that failed in the tensor library.
fn step_failed(e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(format!("training step failed: {e}"))
}

impl Session {
    /// The weighted sum Σ wₜ·Lₜ of the task losses, in task order; None without a task. `loss`
    /// computes a task's loss on its batch (`batches` in task order) when the sum comes to it;
    /// `candle` turns an error of the sum into `E`.
    pub(super) fn weighted_loss<B, E>(
        &self,
        batches: &[B],
        mut loss: impl FnMut(&dyn PretextTask, &B) -> Result<Tensor, E>,
        candle: impl Fn(candle_core::Error) -> E,
    ) -> Result<Option<Tensor>, E> {
        let mut total: Option<Tensor> = None;
        let tasks = self.tasks.iter().zip(&self.config.task_weights);
        for ((task, &w), batch) in tasks.zip(batches) {
            let weighted = (loss(task.as_ref(), batch)? * w).map_err(&candle)?;
            total = Some(match total {
                Some(t) => (t + weighted).map_err(&candle)?,
                None => weighted,
            });
        }
        Ok(total)
    }

    /// The whole run: epochs of steps, commands between steps.
    pub(super) fn train(&mut self, link: &Link<'_>) -> Outcome {
        let outcome = self.train_epochs(link).unwrap_or_else(|o| o);
        self.report_overhead(link);
        outcome
    }

    /// The run's wall-clock seconds since training started (loading and pauses excluded).
    fn wall_s(&self) -> f64 {
        (self.started.elapsed().as_secs_f64() - self.paused_s).max(0.0)
    }

    /// Seconds trained in all sessions of the run.
    pub(super) fn train_s(&self) -> f64 {
        self.prior_train_s + self.wall_s()
    }

    /// How much of the run is done, 0–1: by steps towards the last epoch, or by time towards
    /// the time limit, whichever is further.
    pub(super) fn progress(&self) -> f64 {
        let total = (self.config.epochs * self.batches_per_epoch).max(1) as f64;
        let by_steps = self.pos.step as f64 / total;
        let by_time = self
            .time_limit_s
            .map_or(0.0, |limit| self.train_s() / limit.max(1e-9));
        by_steps.max(by_time)
    }

    /// Whether the run's time limit has passed.
    fn time_is_up(&self) -> bool {
        self.time_limit_s
            .is_some_and(|limit| self.train_s() >= limit)
    }

    /// Whether the monitoring budget lets `what` run now.
    fn affordable(&self, what: Activity) -> bool {
        self.overhead
            .allows(what, self.config.monitor_budget / 100.0, self.wall_s())
    }

    /// Runs `work`, counting its time as `what` (`forced`: not up to the budget).
    pub(super) fn timed<T>(
        &mut self,
        what: Activity,
        forced: bool,
        work: impl FnOnce(&mut Self) -> T,
    ) -> T {
        let t0 = Instant::now();
        let out = work(self);
        let at = self.wall_s();
        self.overhead
            .add(what, t0.elapsed().as_secs_f64(), forced, at);
        out
    }

    fn report_overhead(&mut self, link: &Link<'_>) {
        self.overhead.wall_s = self.wall_s();
        link.emit(Event::Overhead(self.overhead));
    }

    /// Whether the kNN monitor is due after this step: `knn_every` steps since the last
    /// measurement (or the end of an epoch), and the budget allows.
    fn monitor_due(&self, epoch_end: bool) -> bool {
        if self.last_monitor_step == Some(self.pos.step) {
            return false; // already known
        }
        let every = self.config.knn_every as u64;
        let since = self.pos.step - self.last_monitor_step.unwrap_or(0);
        (epoch_end || (every > 0 && since >= every)) && self.affordable(Activity::Monitor)
    }

    fn train_epochs(&mut self, link: &Link<'_>) -> Result<Outcome, Outcome> {
        if self.pos.step == 0 {
            // The random-init reference: always measured.
            self.timed(Activity::Previews, true, |s| s.send_previews(link, None));
            self.timed(Activity::Monitor, true, |s| s.knn_monitor(link, true))?;
        }
        while self.pos.epoch < self.config.epochs {
            while self.pos.batch < self.batches_per_epoch {
                if self.time_is_up() {
                    self.end_at_time_limit(link)?;
                    self.flush()?;
                    return Ok(Outcome::Completed);
                }
                if let Flow::Stop = self.handle_commands(link)? {
                    return self.finish_stopped();
                }
                let (prepared, wait) = self.next_batches()?;
                if !model::kernels::on_compute_pool(|| self.step(link, prepared, wait))? {
                    // Non-finite loss: paused; the same batch is tried again on resume.
                    continue;
                }
                self.after_step(link)?;
                if link.shutdown.load(Ordering::Relaxed) {
                    return self.finish_stopped();
                }
            }
            self.end_epoch(link)?;
        }
        self.flush()?;
        Ok(Outcome::Completed)
    }

    /// After a step: previews and the kNN monitor when they are due, and the pause that ends a
    /// single step.
    fn after_step(&mut self, link: &Link<'_>) -> Result<(), Outcome> {
        let mid_epoch = self.pos.batch < self.batches_per_epoch;
        // Previews between epochs too, so a person watching sees change.
        if mid_epoch
            && self.last_preview.elapsed() > PREVIEW_EVERY
            && self.affordable(Activity::Previews)
        {
            self.timed(Activity::Previews, false, |s| s.send_previews(link, None));
        }
        // The representation's kNN and gauges every N steps, as the budget allows.
        if mid_epoch && self.monitor_due(false) {
            self.timed(Activity::Monitor, false, |s| s.knn_monitor(link, false))?;
        }
        if std::mem::take(&mut self.pause_after_step) {
            self.pause(link, PauseReason::Stepped);
        }
        Ok(())
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

    /// One optimisation step on prepared batches. Ok(false) when the loss was not finite (the
    /// run is then paused, the weights restored, and the batches kept for a retry).
    fn step(
        &mut self,
        link: &Link<'_>,
        prepared: Prepared,
        data_wait_s: f64,
    ) -> Result<bool, Outcome> {
        let t0 = Instant::now();
        let flop0 = crate::model::kernels::flop_count();
        let (total, metrics, images) = self.forward(&prepared)?;
        if let Some(bad) = metrics.iter().find(|m| !m.loss.is_finite()) {
            self.non_finite_loss(link, bad, prepared)?;
            return Ok(false);
        }
        let forward_s = t0.elapsed().as_secs_f64();
        let (backward_s, optimizer_s) = self.update(&total)?;
        let total_loss: f64 = metrics
            .iter()
            .zip(&self.config.task_weights)
            .map(|(m, w)| m.loss * w)
            .sum();

        let secs = t0.elapsed().as_secs_f64();
        self.pos.step += 1;
        self.pos.batch += 1;
        self.acc
            .add(&metrics, total_loss, images, secs + data_wait_s);
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
                matmul_flop: crate::model::kernels::flop_count().saturating_sub(flop0),
            },
            wall_s: self.wall_s(),
        };
        self.run.append_metrics(&step).map_err(failed)?;
        link.emit(Event::Step(step));
        Ok(true)
    }

    /// Every task's forward pass on its batch: the weighted loss to train on, the tasks'
    /// metrics and the images seen.
    fn forward(&self, prepared: &Prepared) -> Result<(Tensor, Vec<TaskMetrics>, usize), Outcome> {
        let mut metrics = Vec::with_capacity(self.tasks.len());
        let mut images = 0;
        let total = self.weighted_loss(
            &prepared.batches,
            |task, host| {
                let batch = host
                    .clone()
                    .upload(&self.model.device)
                    .map_err(step_failed)?;
                let out = task.forward(&self.model, &batch, true).map_err(failed)?;
                let loss_value = f64::from(out.loss.to_scalar::<f32>().map_err(step_failed)?);
                images += out.images;
                metrics.push(TaskMetrics {
                    task: task.kind(),
                    loss: loss_value,
                    metric: out.metric,
                    baseline: out.baseline,
                    metric_info: task.metric(),
                });
                Ok(out.loss)
            },
            step_failed,
        )?;
        let Some(total) = total else {
            return Err(Outcome::Failed("no task to train".into()));
        };
        Ok((total, metrics, images))
    }

    /// The NaN guard: back to the weights from before the last update, the batches kept for a
    /// retry, and the run paused with an error that says what to try.
    fn non_finite_loss(
        &mut self,
        link: &Link<'_>,
        bad: &TaskMetrics,
        prepared: Prepared,
    ) -> Result<(), Outcome> {
        self.restore_snapshot()?;
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
        self.pause(link, PauseReason::NonFiniteLoss);
        Ok(())
    }

    /// The end of a run that reached its time limit mid-epoch: what the last epoch's end does —
    /// a checkpoint (named by step), the resume checkpoint, previews and the last measurement.
    fn end_at_time_limit(&mut self, link: &Link<'_>) -> Result<(), Outcome> {
        let epoch = self.epoch_of_step();
        link.emit(Event::TimeLimitReached {
            step: self.pos.step,
            epoch,
        });
        let name = format!("step-{:06}.safetensors", self.pos.step);
        self.save_and_watch(link, &name, epoch, true)
    }

    /// The 1-based epoch the last step belonged to: the one in progress, or at an epoch's end
    /// the one just finished (0 before the first step).
    pub(super) fn epoch_of_step(&self) -> usize {
        if self.pos.batch == 0 {
            self.pos.epoch
        } else {
            self.pos.epoch + 1
        }
    }

    /// Checkpoint `name` with the resume point, the previews of `epoch` and a measurement: each
    /// as the monitoring budget allows, or all of them at the run's end (`last`). The first
    /// checkpoint of a session is written whatever the budget: until it exists, a killed run
    /// could not be continued (the budget's first guess let the first one wait about 40 s, and
    /// a run killed before then lost everything).
    fn save_and_watch(
        &mut self,
        link: &Link<'_>,
        name: &str,
        epoch: usize,
        last: bool,
    ) -> Result<(), Outcome> {
        let first = self.last_checkpoint.is_none();
        if last || first || self.affordable(Activity::Checkpoints) {
            self.timed(Activity::Checkpoints, last || first, |s| {
                s.save_model(link, name)?;
                s.save_resume()
            })?;
        }
        // The first epoch's pictures start the previews/ timeline: always written (they are
        // cheap), as the last ones are.
        let first = epoch == 1;
        if last || first || self.affordable(Activity::Previews) {
            self.timed(Activity::Previews, last || first, |s| {
                s.send_previews(link, Some(epoch));
            });
        }
        if (last && self.last_monitor_step != Some(self.pos.step)) || self.monitor_due(true) {
            self.timed(Activity::Monitor, last, |s| s.knn_monitor(link, false))?;
        }
        if self
            .last_checkpoint
            .as_ref()
            .is_some_and(|(s, _)| *s == self.pos.step)
        {
            self.timed(Activity::Checkpoints, last, |s| s.prune_checkpoints(link))?;
        }
        Ok(())
    }

    /// The backward pass and the optimiser's update, after a snapshot of the weights: the
    /// seconds each took.
    fn update(&mut self, total: &Tensor) -> Result<(f64, f64), Outcome> {
        self.take_snapshot()?;
        self.opt.lr = self.base_lr
            * model::optim::lr_factor(
                self.config.lr_schedule,
                self.pos.step + 1,
                self.config.warmup_steps,
                self.progress(),
            );
        let t1 = Instant::now();
        let grads = total.backward().map_err(step_failed)?;
        self.wait_for_device()?;
        let backward_s = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        self.opt.step(&grads).map_err(step_failed)?;
        let progress = self.progress();
        for task in &self.tasks {
            task.after_update(&self.model, progress).map_err(failed)?;
        }
        self.wait_for_device()?;
        Ok((backward_s, t2.elapsed().as_secs_f64()))
    }

    /// On a GPU, kernels run after their launch returns: wait for them, so that the backward
    /// pass, the optimiser and the step are timed as the GPU ran them (as PyTorch's
    /// `torch.cuda.synchronize()` does), not as they were queued. Nothing to wait for on the CPU.
    fn wait_for_device(&self) -> Result<(), Outcome> {
        if self.model.device.is_cpu() {
            return Ok(());
        }
        self.model.device.synchronize().map_err(step_failed)
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
        self.flush()?;
        // The last epoch's checkpoint, previews and measurement are the run's result: always.
        let last = self.pos.epoch >= self.config.epochs;
        self.save_and_watch(link, &format!("epoch-{epoch:04}.safetensors"), epoch, last)?;
        link.emit(Event::Epoch(EpochSummary {
            epoch,
            epochs: self.config.epochs,
            step: self.pos.step,
            tasks,
            loss: acc.loss / n,
            images_per_s: acc.images as f64 / acc.train_secs.max(1e-9),
            wall_s: self.wall_s(),
        }));
        self.report_overhead(link);
        Ok(())
    }

    /// A copy of every weight and buffer and of the optimiser state.
    pub(super) fn snapshot(&self) -> candle_core::Result<Snapshot> {
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

    pub(super) fn restore(&mut self, s: &Snapshot) -> candle_core::Result<()> {
        for (var, t) in &s.vars {
            var.set(t)?;
        }
        self.opt.load_state(&s.optimizer, s.t)
    }

    fn take_snapshot(&mut self) -> Result<(), Outcome> {
        self.snapshot = Some(self.snapshot().map_err(failed)?);
        Ok(())
    }

    fn restore_snapshot(&mut self) -> Result<(), Outcome> {
        let Some(s) = self.snapshot.take() else {
            return Ok(());
        };
        let r = self.restore(&s).map_err(failed);
        self.snapshot = Some(s);
        r
    }
}
