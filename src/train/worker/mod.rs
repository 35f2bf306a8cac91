//! The worker thread: its entry point, the link to the front end (events out, commands in) and
//! the idle loop that waits for a run to start, then loads data, builds the model and trains step
//! by step, reading commands between steps.
//!
//! The run itself lives in the submodules: [`session`] sets a run up, [`step`] trains it,
//! [`control`] answers commands between steps and writes checkpoints, and [`probes`] answers the
//! front end's questions about the model (kNN, previews, inspection, embedding, Math panel).

mod control;
mod probes;
mod session;
mod step;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};

use super::{Command, Event, Outcome};
use session::{Session, Setup};

/// The worker's end of the channels: events out, commands in.
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

/// A failure while training, with the error's message.
fn failed(e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(e.to_string())
}

/// Input that cannot be used, with the error's message.
fn invalid(e: impl std::fmt::Display) -> Outcome {
    Outcome::InvalidInput(e.to_string())
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
                minutes,
            } => Setup::Continue {
                run_dir,
                epochs,
                lr,
                minutes,
            },
            Command::Inspect(_)
            | Command::Freeze { .. }
            | Command::Embed
            | Command::SelectPixel { .. } => {
                if let Some(s) = &mut last {
                    s.probe(&link, cmd);
                    // A probe's training-mode passes (a frozen batch's step) gave their
                    // buffers to the kernels' pool; no step comes after it to take them.
                    crate::model::kernels::pool::clear();
                }
                continue;
            }
            Command::Pause
            | Command::Resume
            | Command::Step
            | Command::Stop
            | Command::SaveCheckpoint
            | Command::MeasureNow
            | Command::SetLr(_) => continue,
        };
        // The last run's model goes before the next run builds its own.
        drop(last.take());
        last = run_session(&link, setup);
    }
}

/// Sets up and trains one run, then says how it ended. Returns the run's session, when it
/// started, so that its model stays for inspection.
fn run_session(link: &Link<'_>, setup: Setup) -> Option<Session> {
    let (run_dir, outcome, session) = match Session::start(link, setup) {
        Ok(mut session) => {
            let outcome = session.train(link);
            session.run.release();
            let dir = session.run.path.clone();
            session.prefetch = None;
            // The steps' buffers kept for the next step (the kernels' pool): none comes now.
            crate::model::kernels::pool::clear();
            (Some(dir), outcome, Some(session))
        }
        Err(outcome) => (None, outcome, None),
    };
    if let Outcome::InvalidInput(m) | Outcome::Failed(m) = &outcome {
        link.emit(Event::Error(m.clone()));
    }
    link.emit(Event::Finished { run_dir, outcome });
    session
}
