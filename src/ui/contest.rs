//! The app's contest (`pretext compare` in the window): the form's choices, the contest thread
//! (`pretext-contest`, which runs [`crate::compare::run`] and passes its events on), and what
//! the window shows of it — where it stands and the ranking so far. The curves are the runs
//! view's: each task's run directory is ticked as it starts and followed as it is written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, unbounded};

use crate::compare::{Budget, ContestEvent, ContestOutcome, Ranking};
use crate::config::TaskKind;
use crate::data::Dataset;
use crate::train::{Event, Notify};

/// How the contest's budget is given in the form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BudgetKind {
    /// The same wall-clock training time per task.
    #[default]
    Minutes,
    /// The same number of source images seen per task.
    Images,
}

/// The form's choices (persisted with the settings).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ContestForm {
    pub tasks: BTreeSet<TaskKind>,
    pub kind: BudgetKind,
    pub minutes: f64,
    pub images: u64,
}

impl Default for ContestForm {
    fn default() -> Self {
        Self {
            tasks: [TaskKind::Rotation, TaskKind::Contrastive].into(),
            kind: BudgetKind::Minutes,
            minutes: 3.0,
            images: 50_000,
        }
    }
}

impl ContestForm {
    /// The budget the form gives each task.
    pub fn budget(&self) -> Budget {
        match self.kind {
            BudgetKind::Minutes => Budget::Minutes(self.minutes),
            BudgetKind::Images => Budget::Images(self.images),
        }
    }

    /// The chosen tasks in the order of [`TaskKind::ALL`].
    pub fn task_list(&self) -> Vec<TaskKind> {
        TaskKind::ALL
            .into_iter()
            .filter(|t| self.tasks.contains(t))
            .collect()
    }
}

/// What the contest thread sends: the folder it made, then the contest's events.
pub enum ContestMessage {
    Created(PathBuf),
    Event(ContestEvent),
}

/// What the contest thread is to do.
pub enum ContestStart {
    /// Make a contest folder under `parent` and run it.
    New {
        parent: PathBuf,
        spec: Box<crate::compare::ContestSpec>,
    },
    /// Resume the contest in this folder.
    Resume(PathBuf),
}

/// A contest running on its thread; dropping it asks the contest to stop.
pub struct ContestThread {
    stop: Arc<AtomicBool>,
    events: Receiver<ContestMessage>,
}

impl Drop for ContestThread {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ContestThread {
    /// Makes (or resumes) a contest and runs it on `pretext-contest`, on `data` when it is the
    /// contest's; `notify` wakes the window after each message.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(
        start: ContestStart,
        data: Option<Arc<Dataset>>,
        notify: Notify,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, events) = unbounded();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("pretext-contest".into())
            .spawn(move || {
                let send = |m: ContestMessage| {
                    let _ = tx.send(m);
                    notify();
                };
                let dir = match start {
                    ContestStart::Resume(dir) => dir,
                    ContestStart::New { parent, spec } => {
                        match crate::compare::create(&parent, &spec) {
                            Ok(dir) => dir,
                            Err(e) => {
                                send(ContestMessage::Event(ContestEvent::Finished {
                                    dir: parent,
                                    outcome: ContestOutcome::Failed(e.to_string()),
                                }));
                                return;
                            }
                        }
                    }
                };
                send(ContestMessage::Created(dir.clone()));
                let mut forward = |e: ContestEvent| send(ContestMessage::Event(e));
                if let Err(e) = crate::compare::run(&dir, data, &flag, &mut forward) {
                    forward(ContestEvent::Finished {
                        dir,
                        outcome: ContestOutcome::Failed(e.to_string()),
                    });
                }
            })?;
        Ok(Self { stop, events })
    }

    /// Asks the contest to stop after the running task's current step (it can be resumed).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Where the thread's messages arrive.
    pub fn events(&self) -> &Receiver<ContestMessage> {
        &self.events
    }
}

/// The contest as the window shows it.
#[derive(Default)]
pub struct ContestView {
    /// The contest folder.
    pub dir: Option<PathBuf>,
    pub thread: Option<ContestThread>,
    /// One line on where it stands.
    pub status: String,
    /// The budget in words, once the data are loaded.
    pub budget: Option<String>,
    /// The task training now: (task, 1-based index, of).
    pub current: Option<(TaskKind, usize, usize)>,
    /// How far the current task is through its budget, 0..1.
    pub progress: f32,
    pub ranking: Option<Ranking>,
    pub outcome: Option<ContestOutcome>,
    /// A contest folder typed in, to resume.
    pub resume_input: String,
}

impl ContestView {
    /// Whether a contest thread is running.
    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }

    /// Whether the contest in `dir` was stopped (or failed) and can be resumed.
    pub fn resumable(&self) -> bool {
        self.thread.is_none()
            && self.dir.is_some()
            && matches!(
                self.outcome,
                Some(ContestOutcome::Stopped | ContestOutcome::Failed(_))
            )
    }

    /// Takes one event; returns the run directory of a task that just started, to tick.
    pub fn apply(&mut self, event: ContestEvent, budget: Budget) -> Option<PathBuf> {
        match event {
            ContestEvent::Loading { done, total } => {
                self.status = format!("loading the images: {done} of {total}");
            }
            ContestEvent::DataReady {
                images,
                labelled,
                budget: line,
                ..
            } => {
                self.status = format!(
                    "{images} images, {}",
                    if labelled {
                        "labelled: ranked by kNN top-1"
                    } else {
                        "unlabelled: ranked by RankMe, a label-free proxy"
                    }
                );
                self.budget = Some(line);
            }
            ContestEvent::TaskStarted {
                task,
                index,
                of,
                run_dir,
                start_step,
            } => {
                self.current = Some((task, index + 1, of));
                self.progress = 0.0;
                self.status = if start_step > 0 {
                    format!(
                        "training {task} ({} of {of}), continued from step {start_step}",
                        index + 1
                    )
                } else {
                    format!("training {task} ({} of {of})", index + 1)
                };
                return Some(run_dir);
            }
            ContestEvent::Train { event, .. } => {
                if let Event::Step(m) = event {
                    self.progress = match budget {
                        Budget::Minutes(min) => (m.wall_s / (min * 60.0).max(1e-9)) as f32,
                        Budget::Images(_) => {
                            let per = m.batches.max(1) as f64;
                            ((m.epoch as f64 - 1.0 + m.batch as f64 / per) / m.epochs.max(1) as f64)
                                as f32
                        }
                    }
                    .clamp(0.0, 1.0);
                }
            }
            ContestEvent::Evaluating { task } => {
                self.progress = 1.0;
                self.status = format!("judging {task}: kNN per stage, linear probe, gauges");
            }
            ContestEvent::TaskDone(r) => {
                self.status = format!("{} judged", r.task);
            }
            ContestEvent::Ranking(r) => self.ranking = Some(*r),
            ContestEvent::Finished { dir, outcome } => {
                self.status = match &outcome {
                    ContestOutcome::Completed => format!("finished: {}", dir.display()),
                    ContestOutcome::Stopped => "stopped: Resume goes on from here".into(),
                    ContestOutcome::Failed(why) => format!("failed: {why}"),
                };
                self.dir = Some(dir);
                self.current = None;
                self.outcome = Some(outcome);
                self.thread = None;
            }
        }
        None
    }
}

/// The contest folder's name.
pub fn contest_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
