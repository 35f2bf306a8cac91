//! `pretext compare`: a fair contest between pretext tasks (`crate::compare` does the work).
//! The options become a [`ContestSpec`]; each contest event has a small handler that moves a
//! bar or writes a line: diagnostics on standard error, each task's summary, the ranking and
//! the folder on standard output (or one JSON object per line with `--json`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;

use super::output::{note, say};
use super::progress::Bars;
use super::train::config_error_message;
use super::{EXIT_FAILED, EXIT_INPUT, EXIT_PIPE_CLOSED};
use crate::compare::{
    self, Budget, CompareError, ContestEvent, ContestOutcome, ContestSpec, Ranking, TaskResult,
};
use crate::config::{
    DataSource, DeviceKind, MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, TaskKind, TrainConfig,
};
use crate::train::Event;

fn defaults() -> TrainConfig {
    TrainConfig::default()
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Images every task learns from: a folder (first-level subfolders become class labels;
    /// without them the contest is ranked by RankMe, a label-free proxy), `builtin[:N]` or
    /// `glyphs[:N]`.
    #[arg(
        long,
        value_name = "PATH|builtin|glyphs",
        required_unless_present = "resume"
    )]
    pub data: Option<DataSource>,
    /// The pretext tasks to compare, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "TASK",
        required_unless_present = "resume"
    )]
    pub tasks: Vec<TaskKind>,
    /// Budget: this many minutes of training per task (the same wall-clock time for each).
    #[arg(long, value_name = "M")]
    pub minutes: Option<f64>,
    /// Budget: this many source images seen per task, rounded to whole epochs (at least one).
    #[arg(long, value_name = "N")]
    pub images: Option<u64>,
    #[arg(long, value_name = "PX", default_value_t = defaults().size, help = format!(
        "Working image size in pixels, a multiple of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}"
    ))]
    pub size: usize,
    /// Images per batch.
    #[arg(long, value_name = "N", default_value_t = defaults().batch)]
    pub batch: usize,
    /// Random seed: every task starts from the same random init.
    #[arg(long, value_name = "N", default_value_t = defaults().seed)]
    pub seed: u64,
    /// Compute device; cuda and metal need a build with that cargo feature.
    #[arg(long, value_enum, value_name = "D", default_value_t = defaults().device)]
    pub device: DeviceKind,
    /// Folder under which the contest folder (compare-<time>-<tasks>/) is made.
    #[arg(long, value_name = "DIR", default_value_os_t = defaults().out)]
    pub out: PathBuf,
    /// Continue the contest in COMPARE_DIR (stopped, or killed): done tasks are kept, an
    /// interrupted one continues from its last checkpoint, pending ones are trained.
    #[arg(long, value_name = "COMPARE_DIR",
          conflicts_with_all = ["data", "tasks", "minutes", "images"])]
    pub resume: Option<PathBuf>,
    /// Print one JSON object per line (task started, task done, ranking, finished).
    #[arg(long)]
    pub json: bool,
    /// Decode every file of the folder, neither reading nor writing the image cache.
    #[arg(long)]
    pub no_cache: bool,
}

impl CompareArgs {
    /// The contest the options describe.
    ///
    /// # Errors
    /// A sentence naming the option to change.
    pub fn spec(&self) -> Result<ContestSpec, String> {
        let budget = match (self.minutes, self.images) {
            (Some(_), Some(_)) => {
                return Err("give one budget: --minutes or --images, not both".into());
            }
            (None, None) => {
                return Err("give a budget: --minutes M or --images N per task".into());
            }
            (Some(m), None) => Budget::Minutes(m),
            (None, Some(n)) => Budget::Images(n),
        };
        let data = self
            .data
            .clone()
            .ok_or_else(|| "give --data (or --resume COMPARE_DIR)".to_string())?;
        let spec = ContestSpec {
            base: TrainConfig {
                data,
                size: self.size,
                batch: self.batch,
                seed: self.seed,
                device: self.device,
                cache: !self.no_cache,
                ..TrainConfig::default()
            },
            tasks: self.tasks.clone(),
            budget,
        };
        spec.validate().map_err(|e| match e {
            CompareError::Config(c) => config_error_message(&c),
            CompareError::Spec(s) if s.contains("image budget") => {
                "--images must be at least 1".into()
            }
            e => e.to_string(),
        })?;
        Ok(spec)
    }
}

/// Runs `pretext compare`; returns the process exit code.
pub fn compare(args: &CompareArgs) -> i32 {
    let stop = AtomicBool::new(false);
    let mut ui = Ui::new(args.json, &stop);
    let result = start(args, &mut ui);
    ui.bars.clear();
    match result {
        Ok(_) if ui.pipe_closed => EXIT_PIPE_CLOSED,
        Ok(ContestOutcome::Completed | ContestOutcome::Stopped) => 0,
        Ok(ContestOutcome::Failed(_)) => EXIT_FAILED,
        Err(Failure::Input(why)) => {
            note(format_args!("error: {why}"));
            EXIT_INPUT
        }
        Err(Failure::Contest(e)) => {
            note(format_args!("error: {e}"));
            if e.is_input() {
                EXIT_INPUT
            } else {
                EXIT_FAILED
            }
        }
    }
}

enum Failure {
    Input(String),
    Contest(CompareError),
}

impl From<CompareError> for Failure {
    fn from(e: CompareError) -> Self {
        Self::Contest(e)
    }
}

/// A new contest (checked, data loaded, folder made) or a resumed one, run to its end.
fn start(args: &CompareArgs, ui: &mut Ui<'_>) -> Result<ContestOutcome, Failure> {
    let stop = ui.stop;
    if let Some(dir) = &args.resume {
        let (spec, _) = compare::open(dir)?;
        ui.budget = Some(spec.budget);
        return Ok(compare::run(dir, None, stop, &mut |e| ui.handle(e))?);
    }
    let spec = args.spec().map_err(Failure::Input)?;
    crate::model::device::open(spec.base.device).map_err(|e| Failure::Input(e.to_string()))?;
    ui.budget = Some(spec.budget);
    let loading = std::time::Instant::now();
    let Some(data) = compare::load_data(&spec, stop, &mut |e| ui.handle(e))? else {
        return Ok(ContestOutcome::Stopped);
    };
    ui.load_secs = Some(loading.elapsed().as_secs_f64());
    let dir = compare::create(&args.out, &spec)?;
    Ok(compare::run(&dir, Some(Arc::new(data)), stop, &mut |e| {
        ui.handle(e);
    })?)
}

/// What the command line keeps track of while the contest runs.
struct Ui<'a> {
    json: bool,
    stop: &'a AtomicBool,
    bars: Bars,
    budget: Option<Budget>,
    /// Seconds this command spent loading the data (the contest is handed them loaded).
    load_secs: Option<f64>,
    /// Standard output was closed: the contest is stopped (resumable), the program ends quietly.
    pipe_closed: bool,
    /// The running task: index, `[1/2] rotation`, and the bar's length (steps, or seconds).
    task: Option<(usize, String, u64)>,
    ranking: Option<Ranking>,
}

impl<'a> Ui<'a> {
    fn new(json: bool, stop: &'a AtomicBool) -> Self {
        Self {
            json,
            stop,
            bars: Bars::new(),
            budget: None,
            load_secs: None,
            pipe_closed: false,
            task: None,
            ranking: None,
        }
    }

    /// A result line on standard output; a closed pipe stops the contest (resumable).
    fn say(&mut self, line: impl std::fmt::Display) {
        if !self.pipe_closed && say(line).is_err() {
            self.pipe_closed = true;
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn handle(&mut self, e: ContestEvent) {
        match e {
            ContestEvent::Loading { done, total } => self.bars.loading(done, total),
            ContestEvent::DataReady {
                budget,
                mut summary,
                ..
            } => {
                self.bars.clear();
                if let Some(s) = self.load_secs {
                    summary.load_secs = s;
                }
                crate::report::data_lines(&summary)
                    .into_iter()
                    .for_each(note);
                note(budget);
            }
            ContestEvent::TaskStarted {
                task,
                index,
                of,
                run_dir,
                start_step,
            } => self.task_started(task, index, of, &run_dir, start_step),
            ContestEvent::Train { task, event } => self.train(task, &event),
            ContestEvent::Evaluating { task } => {
                self.bars.clear();
                if !self.json {
                    note(format_args!(
                        "Judging {task}: kNN per stage, linear probe, gauges"
                    ));
                }
            }
            ContestEvent::TaskDone(r) => self.task_done(&r),
            ContestEvent::Ranking(r) => {
                if self.json {
                    self.say(serde_json::json!({"event": "ranking", "ranking": r}));
                }
                self.ranking = Some(*r);
            }
            ContestEvent::Finished { dir, outcome } => self.finished(&dir, &outcome),
        }
    }

    fn task_started(&mut self, task: TaskKind, index: usize, of: usize, run_dir: &Path, from: u64) {
        self.bars.clear();
        let prefix = format!("[{}/{of}] {task}", index + 1);
        if self.json {
            self.say(serde_json::json!({
                "event": "task_started", "task": task, "index": index, "of": of,
                "run_dir": run_dir, "start_step": from,
            }));
        } else if from > 0 {
            note(format_args!(
                "{prefix}: continuing {} from step {from}",
                run_dir.display()
            ));
        } else {
            note(format_args!("{prefix}: training in {}", run_dir.display()));
        }
        self.task = Some((index, prefix, 0));
    }

    /// The engine's events: the bar moves with the steps; warnings and errors are said.
    fn train(&mut self, task: TaskKind, event: &Event) {
        match event {
            Event::RunStarted {
                config,
                batches_per_epoch,
                ..
            } => {
                let len = match self.budget {
                    Some(Budget::Minutes(m)) => (m * 60.0).ceil() as u64,
                    _ => (config.epochs * batches_per_epoch) as u64,
                };
                if let Some(t) = &mut self.task {
                    t.2 = len;
                }
            }
            Event::Step(m) => {
                if let Some((key, prefix, len)) = self.task.clone() {
                    let pos = match self.budget {
                        Some(Budget::Minutes(_)) => m.wall_s as u64,
                        _ => m.step,
                    };
                    self.bars
                        .task(key, &prefix, pos, len, crate::report::step_numbers(m));
                }
            }
            Event::Warning(w) => self.bars.note(format_args!("warning: {task}: {w}")),
            Event::Error(e) => self.bars.note(format_args!("error: {task}: {e}")),
            Event::Finished { .. } => self.bars.clear(),
            _ => {}
        }
    }

    fn task_done(&mut self, r: &TaskResult) {
        self.bars.clear();
        if self.json {
            self.say(serde_json::json!({"event": "task_done", "result": r}));
        } else {
            self.say(compare::lines::task_line(r));
        }
    }

    fn finished(&mut self, dir: &Path, outcome: &ContestOutcome) {
        self.bars.clear();
        if self.json {
            self.say(serde_json::json!({"event": "finished", "dir": dir, "outcome": outcome}));
        } else if let Some(r) = self.ranking.take() {
            self.say("");
            self.say(compare::lines::criterion_line(&r));
            if let Some(n) = &r.note {
                self.say(format_args!("Note: {n}"));
            }
            for line in compare::lines::ranking_table(&r) {
                self.say(line);
            }
            self.say(format_args!("Contest folder: {}", dir.display()));
        } else {
            self.say(format_args!("Contest folder: {}", dir.display()));
        }
        match outcome {
            ContestOutcome::Stopped if !self.pipe_closed => note(format_args!(
                "Stopped: continue with pretext compare --resume {}",
                dir.display()
            )),
            ContestOutcome::Failed(why) => note(format_args!("error: {why}")),
            _ => {}
        }
    }
}
