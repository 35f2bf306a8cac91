//! Control between steps: the commands a running session reads (pause, resume, single step,
//! stop, learning rate, checkpoint), the end of a stopped run, and the checkpoints with their
//! metadata.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::super::overhead::Activity;
use super::super::run_dir::RESUME_FILE;
use super::super::{Command, Event, Outcome, PauseReason};
use super::session::Session;
use super::{Link, failed};
use crate::data::preprocess::Preprocessing;
use crate::model::checkpoint;

/// Checkpoint format written in the metadata.
const FORMAT: &str = "pretext-checkpoint-1";

/// Whether training goes on after the commands between two steps.
pub(super) enum Flow {
    Continue,
    Stop,
}

impl Session {
    /// Reads commands; blocks while paused. Returns whether to go on.
    pub(super) fn handle_commands(&mut self, link: &Link<'_>) -> Result<Flow, Outcome> {
        loop {
            if link.shutdown.load(Ordering::Relaxed) {
                return Ok(Flow::Stop);
            }
            let cmd = if self.paused {
                // Time paused is not training time: neither the time limit nor the monitoring
                // budget counts it.
                let waiting = std::time::Instant::now();
                let cmd = link.wait_command();
                self.paused_s += waiting.elapsed().as_secs_f64();
                cmd
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
            if let Some(flow) = self.command(link, cmd)? {
                return Ok(flow);
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

    /// Handles one command; Some when it decides whether training goes on.
    fn command(&mut self, link: &Link<'_>, cmd: Command) -> Result<Option<Flow>, Outcome> {
        match cmd {
            Command::Pause => {
                if !self.paused {
                    self.pause(link, PauseReason::Requested);
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
                    return Ok(Some(Flow::Continue));
                }
            }
            Command::Stop => return Ok(Some(Flow::Stop)),
            Command::Shutdown => {
                link.shutdown.store(true, Ordering::Relaxed);
                return Ok(Some(Flow::Stop));
            }
            Command::SetLr(lr) => self.set_lr(link, lr),
            Command::SaveCheckpoint => {
                let name = format!("step-{:06}.safetensors", self.pos.step);
                self.timed(Activity::Checkpoints, true, |s| {
                    s.save_model(link, &name)?;
                    s.save_resume()
                })?;
            }
            Command::MeasureNow => {
                self.timed(Activity::Monitor, true, |s| s.knn_monitor(link, false))?;
            }
            Command::Inspect(_)
            | Command::Freeze { .. }
            | Command::Embed
            | Command::SelectPixel { .. } => self.probe(link, cmd),
            Command::Start(_) | Command::StartWithData(..) | Command::Continue { .. } => {
                link.emit(Event::Warning(
                    "a run is already in progress: stop it first".into(),
                ));
            }
        }
        Ok(None)
    }

    /// Pauses the run and says so.
    pub(super) fn pause(&mut self, link: &Link<'_>, reason: PauseReason) {
        self.paused = true;
        link.emit(Event::Paused {
            step: self.pos.step,
            reason,
        });
    }

    /// A new learning rate from the next step on; anything but a positive number is refused.
    fn set_lr(&mut self, link: &Link<'_>, lr: f64) {
        if lr.is_finite() && lr > 0.0 {
            // The new peak: the schedule scales it from the next step on.
            self.base_lr = lr;
            link.emit(Event::LrChanged(lr));
        } else {
            link.emit(Event::Warning(format!(
                "learning rate {lr} ignored: it must be a positive number"
            )));
        }
    }

    /// Ends a stopped run: a checkpoint to continue from, and the metrics on disk.
    pub(super) fn finish_stopped(&mut self) -> Result<Outcome, Outcome> {
        self.timed(Activity::Checkpoints, true, |s| s.save_resume())?;
        self.flush()?;
        Ok(Outcome::Stopped)
    }

    /// Writes buffered metrics to the run directory.
    pub(super) fn flush(&mut self) -> Result<(), Outcome> {
        self.run.flush().map_err(failed)
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        let mut meta = BTreeMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("step".to_string(), self.pos.step.to_string()),
            ("epoch".to_string(), self.pos.epoch.to_string()),
            ("batch".to_string(), self.pos.batch.to_string()),
            ("tasks".to_string(), self.config.tasks_label()),
            // The peak rate; the schedule's factor is found again from the position.
            ("lr".to_string(), self.base_lr.to_string()),
            ("lr_now".to_string(), self.opt.lr.to_string()),
            ("train_s".to_string(), self.train_s().to_string()),
            ("optimizer_t".to_string(), self.opt.t.to_string()),
            (
                "preprocessing".to_string(),
                Preprocessing::of(&self.config).to_json(),
            ),
        ]);
        if let Some((name, acc)) = &self.best_checkpoint {
            meta.insert("best_checkpoint".to_string(), name.clone());
            meta.insert("best_knn".to_string(), acc.to_string());
        }
        meta
    }

    /// Writes checkpoint `name`: the model's weights, with the optimiser state when
    /// `with_optimizer`, and the metadata. Returns its path.
    fn write_checkpoint(&self, name: &str, with_optimizer: bool) -> Result<PathBuf, Outcome> {
        let path = self.run.checkpoint_path(name);
        let mut tensors = self.model.state_dict().map_err(failed)?;
        if with_optimizer {
            tensors.extend(self.opt.state_tensors());
        }
        checkpoint::write(&path, &tensors, &self.metadata()).map_err(failed)?;
        Ok(path)
    }

    /// Model weights only (PyTorch state_dict names), for users.
    pub(super) fn save_model(&mut self, link: &Link<'_>, name: &str) -> Result<(), Outcome> {
        let path = self.write_checkpoint(name, false)?;
        self.last_checkpoint = Some((self.pos.step, name.to_string()));
        link.emit(Event::CheckpointSaved {
            path,
            step: self.pos.step,
        });
        Ok(())
    }

    /// Removes checkpoints beyond the newest `keep_checkpoints` (never the best by kNN of z) and
    /// says what is left.
    pub(super) fn prune_checkpoints(&mut self, link: &Link<'_>) -> Result<(), Outcome> {
        let best = self.best_checkpoint.as_ref().map(|(n, _)| n.as_str());
        let mut kept = self
            .run
            .prune_checkpoints(self.config.keep_checkpoints, best)
            .map_err(failed)?;
        kept.best.clone_from(&self.best_checkpoint);
        link.emit(Event::Checkpoints(kept));
        Ok(())
    }

    /// Weights, optimiser state and position, to continue the run.
    pub(super) fn save_resume(&self) -> Result<(), Outcome> {
        self.write_checkpoint(RESUME_FILE, true)?;
        Ok(())
    }
}
