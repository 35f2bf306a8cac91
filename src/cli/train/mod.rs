//! `pretext train`: the options become a command for the training engine; each event it sends
//! back has a small handler that moves a progress bar or writes a line (one per epoch on
//! standard output, text or JSON; everything else on standard error).

mod args;

use std::path::Path;

pub use args::{AugmentArgs, RunArgs, TaskArgs, TrainArgs, config_error_message};

use super::output::{note, say};
use super::progress::Bars;
use super::{EXIT_FAILED, EXIT_INPUT, EXIT_PIPE_CLOSED};
use crate::report;
use crate::train::{
    Command, EpochSummary, Event, KnnMetrics, Outcome, Overhead, PauseReason, StepMetrics, Trainer,
};

/// Runs `pretext train`; returns the process exit code.
pub fn train(args: &TrainArgs) -> i32 {
    let command = match args.command() {
        Ok(c) => c,
        Err(e) => {
            note(format_args!("error: {}", config_error_message(&e)));
            return EXIT_INPUT;
        }
    };
    let trainer = match Trainer::spawn() {
        Ok(t) => t,
        Err(e) => {
            note(format_args!("error: cannot start the training thread: {e}"));
            return EXIT_FAILED;
        }
    };
    trainer.send(command);
    let mut session = Session::new(args, &trainer);
    for event in trainer.events() {
        if let Some(code) = session.handle(event) {
            return code;
        }
    }
    session.bars.clear();
    note("error: the training thread ended unexpectedly");
    EXIT_FAILED
}

/// What the command line keeps track of while a run trains.
struct Session<'a> {
    args: &'a TrainArgs,
    trainer: &'a Trainer,
    bars: Bars,
    /// Stopped because the loss was not finite: the run failed.
    nan_stop: bool,
    /// Standard output was closed: the run was stopped, and the program ends quietly.
    pipe_closed: bool,
    /// Why kNN accuracy is not measured has been said (it is said once).
    knn_explained: bool,
    /// The time spent not training, as last reported.
    overhead: Option<Overhead>,
    /// The checkpoints kept, as last reported.
    checkpoints: Option<crate::train::run_dir::Checkpoints>,
}

impl<'a> Session<'a> {
    fn new(args: &'a TrainArgs, trainer: &'a Trainer) -> Self {
        Self {
            args,
            trainer,
            bars: Bars::new(),
            nan_stop: false,
            pipe_closed: false,
            knn_explained: false,
            overhead: None,
            checkpoints: None,
        }
    }

    /// Handles one event; `Some(exit code)` when the run is over.
    fn handle(&mut self, event: Event) -> Option<i32> {
        match event {
            Event::Loading { done, total } => self.bars.loading(done, total),
            Event::DataReady(s) => {
                self.bars.clear();
                report::data_lines(&s).into_iter().for_each(note);
                if let Some(line) = report::monitor_subset_line(&s) {
                    note(line);
                }
            }
            Event::RunStarted {
                run_dir,
                start_step,
                parameters,
                ..
            } => self.run_started(&run_dir, start_step, parameters),
            Event::Step(m) => self.step(&m),
            Event::Knn(k) => self.knn(&k),
            Event::Epoch(e) => self.epoch(&e),
            Event::Overhead(o) => self.overhead = Some(o),
            Event::Checkpoints(c) => self.checkpoints = Some(c),
            Event::TimeLimitReached { step, epoch } => {
                self.bars.clear();
                note(format_args!(
                    "Time limit reached after step {step} (epoch {epoch}): ending the run."
                ));
            }
            Event::Warning(w) => self.bars.note(format_args!("warning: {w}")),
            Event::Error(e) => self.bars.note(format_args!("error: {e}")),
            Event::Paused { reason, .. } => self.paused(&reason),
            Event::Finished { run_dir, outcome } => {
                return Some(self.finished(run_dir.as_deref(), &outcome));
            }
            Event::Preview(_)
            | Event::Inspection { .. }
            | Event::Math(_)
            | Event::Embedding(_)
            | Event::CheckpointSaved { .. }
            | Event::Resumed
            | Event::LrChanged(_) => {}
        }
        None
    }

    fn run_started(&mut self, run_dir: &Path, start_step: u64, parameters: usize) {
        if start_step > 0 {
            note(format_args!(
                "Continuing {} from step {start_step}",
                run_dir.display()
            ));
        } else {
            note(format_args!(
                "Run directory: {} ({parameters} parameters)",
                run_dir.display()
            ));
        }
    }

    fn step(&mut self, m: &StepMetrics) {
        self.bars.step(m);
    }

    /// kNN accuracies and gauges, as text or (`--json`) one object per measurement; why they
    /// are missing, once.
    fn knn(&mut self, k: &KnnMetrics) {
        if k.stages.is_empty() {
            if self.knn_explained {
                return;
            }
            self.knn_explained = k.not_measured.is_some();
        }
        if self.args.json {
            if (!k.stages.is_empty() || k.not_measured.is_some())
                && !self.pipe_closed
                && say(report::knn_json(k)).is_err()
            {
                self.pipe_closed = true;
                self.trainer.send(Command::Stop);
            }
        } else if let Some(line) = report::knn_line(k) {
            self.bars.note(line);
        }
    }

    fn epoch(&mut self, e: &EpochSummary) {
        self.bars.clear();
        let line = if self.args.json {
            report::epoch_json(e).to_string()
        } else {
            report::epoch_line(e)
        };
        if !self.pipe_closed && say(line).is_err() {
            // Nobody reads any more: end the run quietly, saving it to be resumed.
            self.pipe_closed = true;
            self.trainer.send(Command::Stop);
        }
    }

    fn paused(&mut self, reason: &PauseReason) {
        if *reason == PauseReason::NonFiniteLoss {
            // Nobody can lower the learning rate here: end the run, keeping its files.
            self.nan_stop = true;
            self.trainer.send(Command::Stop);
        }
    }

    /// The exit code of the finished run, after its directory is printed.
    fn finished(&mut self, run_dir: Option<&Path>, outcome: &Outcome) -> i32 {
        self.bars.clear();
        let code = match outcome {
            Outcome::Completed => 0,
            Outcome::Stopped if self.nan_stop => EXIT_FAILED,
            Outcome::Stopped => 0,
            Outcome::InvalidInput(_) => EXIT_INPUT,
            Outcome::Failed(_) => EXIT_FAILED,
        };
        if self.pipe_closed {
            return EXIT_PIPE_CLOSED;
        }
        let Some(dir) = run_dir else {
            return code;
        };
        if let (Some(o), false) = (&self.overhead, self.args.json) {
            note(report::overhead_line(o));
        }
        if let (Some(c), false) = (&self.checkpoints, self.args.json) {
            note(report::checkpoints_line(c));
        }
        let line = if self.args.json {
            serde_json::json!({
                "run_dir": dir,
                "exit_code": code,
                "not_training": self.overhead,
                "checkpoints": self.checkpoints,
            })
            .to_string()
        } else {
            format!("Run directory: {}", dir.display())
        };
        if say(line).is_err() {
            EXIT_PIPE_CLOSED
        } else {
            code
        }
    }
}
