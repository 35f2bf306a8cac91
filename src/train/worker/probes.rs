//! Looking at the model without training it: the kNN monitor, previews, inspection of chosen
//! images, the embedding of the whole data set, and the Math panel's frozen batch (`freeze`,
//! `derive`).

use std::time::Instant;

use candle_core::Tensor;

use super::super::prefetch::{epoch_order, step_seed};
use super::super::{Command, Event, KnnMetrics, Outcome};
use super::session::Session;
use super::{Link, failed};
use crate::eval::embed;
use crate::math::{MathReport, Optimisation, TaskReport};
use crate::model::ModelError;
use crate::tasks;

impl Session {
    /// Answers a question about the model: [`Command::Inspect`], [`Command::Freeze`] or
    /// [`Command::Embed`] (other commands are not questions and are ignored).
    pub(super) fn probe(&mut self, link: &Link<'_>, cmd: Command) {
        match cmd {
            Command::Inspect(indices) => self.inspect(link, indices),
            Command::Freeze { images, eta } => self.freeze(link, images, eta),
            Command::Embed => self.embed(link),
            Command::SelectPixel { task, pixel } => self.select_pixel(link, task, pixel),
            _ => {}
        }
    }

    /// kNN accuracy per stage on labelled data, into metrics.csv and an event.
    pub(super) fn knn_monitor(
        &mut self,
        link: &Link<'_>,
        with_pixels: bool,
    ) -> Result<(), Outcome> {
        // The buffers the steps keep for the next step would sit beside the pass's own.
        crate::model::kernels::pool::clear();
        // On the training step's thread pool: its threads are awake and sized to the cores,
        // where rayon's global pool would be woken for every parallel loop of the pass.
        // The tasks are Send but not Sync: the closure borrows them exclusively.
        let (model, data, tasks) = (&self.model, &self.data, &mut self.tasks);
        let result = crate::model::kernels::on_compute_pool(move || {
            embed::monitor(model, data, with_pixels, tasks)
        })
        .map_err(|e| Outcome::Failed(format!("kNN monitor failed: {e}")))?;
        let embed::Monitor {
            stages,
            not_measured,
            raw_pixels,
            gauges,
            head_gauges,
        } = result;
        let k = KnnMetrics {
            step: self.pos.step,
            epoch: self.epoch_of_step(),
            stages: embed::STAGES
                .iter()
                .map(|s| (*s).to_string())
                .zip(stages)
                .collect(),
            not_measured,
            raw_pixels,
            gauges,
            head_gauges,
        };
        self.last_monitor_step = Some(self.pos.step);
        // The measurement of a checkpoint's own weights decides which checkpoint is the best.
        if let (Some((step, name)), Some((_, z))) = (&self.last_checkpoint, k.stages.last())
            && *step == self.pos.step
            && self
                .best_checkpoint
                .as_ref()
                .is_none_or(|(_, best)| z > best)
        {
            self.best_checkpoint = Some((name.clone(), *z));
        }
        self.run
            .append_knn(&k, self.started.elapsed().as_secs_f64())
            .map_err(failed)?;
        link.emit(Event::Knn(k));
        Ok(())
    }

    /// A pixel clicked in a task's preview: that task's preview again, for it.
    fn select_pixel(
        &mut self,
        link: &Link<'_>,
        kind: crate::config::TaskKind,
        pixel: (usize, usize),
    ) {
        let s = self.data.size;
        let pixel = (pixel.0.min(s - 1), pixel.1.min(s - 1));
        for task in self.tasks.iter().filter(|t| t.kind() == kind) {
            task.select_pixel(pixel);
            match task.preview(&self.model, &self.data, &self.inspection) {
                Ok(p) => link.emit(Event::Preview(Box::new(p))),
                Err(e) => link.emit(Event::Warning(format!("{kind} preview failed: {e}"))),
            };
        }
    }

    /// The whole data set in embedding space.
    fn embed(&self, link: &Link<'_>) {
        match embed::embedding(&self.model, &self.data, self.pos.step) {
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
    pub(super) fn send_previews(&mut self, link: &Link<'_>, epoch: Option<usize>) {
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
                        if let Err(err) = self.run.thin_previews(task.kind().name()) {
                            link.emit(Event::Warning(format!(
                                "cannot thin out the previews: {err}"
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

    /// Freezes a batch of `images` images and derives every step of the Math panel from it; the
    /// weights, statistics and optimiser are left exactly as they were.
    fn freeze(&mut self, link: &Link<'_>, images: usize, eta: Option<f64>) {
        let result = (|| -> Result<MathReport, ModelError> {
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

    fn derive(&self, images: usize, eta: Option<f64>) -> Result<MathReport, ModelError> {
        let (batches, reports) = self.frozen_batches(images)?;
        let optimisation = self.gradient_step(&batches, eta)?;
        Ok(MathReport {
            step: self.pos.step,
            tasks: reports,
            optimisation: Some(optimisation),
        })
    }

    /// The first `images` images of the epoch's order as each task's batch (with the step's
    /// seeds), and each task's explanation of its loss on it.
    fn frozen_batches(
        &self,
        images: usize,
    ) -> Result<(Vec<tasks::Batch>, Vec<TaskReport>), ModelError> {
        let order = epoch_order(self.config.seed, self.data.len(), self.pos.epoch);
        let indices: Vec<usize> = order
            .into_iter()
            .take(images.clamp(2, self.data.len()))
            .collect();
        let seeds: Vec<u64> = (0..self.tasks.len())
            .map(|t| step_seed(self.config.seed, self.pos.step, t))
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
                original_size: self.data.size,
                z: e.z,
                transforms: e.transforms,
                math: e.math,
            });
            batches.push(batch);
        }
        Ok((batches, reports))
    }

    /// The weighted loss of every task on its frozen batch.
    fn frozen_loss(&self, batches: &[tasks::Batch]) -> Result<Tensor, ModelError> {
        self.weighted_loss(
            batches,
            |task, b| Ok(task.forward(&self.model, b, true)?.loss),
            ModelError::Candle,
        )?
        .ok_or_else(|| ModelError::Invalid("a run without a task".into()))
    }

    /// One plain gradient step on the weighted loss, on the weights as they are (of size `eta`,
    /// or sized so that its first-order prediction η‖∇L‖² is 5% of L).
    fn gradient_step(
        &self,
        batches: &[tasks::Batch],
        eta: Option<f64>,
    ) -> Result<Optimisation, ModelError> {
        let before = self.frozen_loss(batches)?;
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
        let loss_after = f64::from(self.frozen_loss(batches)?.to_scalar::<f32>()?);
        Ok(Optimisation {
            eta,
            grad_norms,
            loss_before,
            loss_after,
        })
    }
}
