//! Slow or blocking work the window asks for, each on its own named thread (`pretext-job`), so
//! the UI thread only draws: reading a run directory back, writing embeddings, drawing
//! augmentation views. A finished job wakes the window, which takes its result in
//! [`Jobs::finished`].

use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::tasks::Canvas;
use crate::train::Event;

/// Which kind of work a thread does (to know when none is left).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Replay,
    Export,
    Augment,
}

/// What a job produced.
pub enum Done {
    /// A run directory read back as its events, to continue it.
    Replay {
        dir: PathBuf,
        epochs: Option<usize>,
        events: Result<Vec<Event>, String>,
    },
    /// A message for the person (error?, text).
    Message((bool, String)),
    /// Augmented views for the settings with this key.
    Augment { key: u64, canvas: Canvas },
}

pub struct Jobs {
    tx: Sender<(Job, Done)>,
    rx: Receiver<(Job, Done)>,
    running: Vec<Job>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl Jobs {
    pub fn new(wake: Arc<dyn Fn() + Send + Sync>) -> Self {
        let (tx, rx) = unbounded();
        Self {
            tx,
            rx,
            running: Vec::new(),
            wake,
        }
    }

    /// Runs `work` on a new thread; its result arrives through [`Jobs::finished`].
    pub fn spawn(&mut self, job: Job, work: impl FnOnce() -> Done + Send + 'static) {
        let tx = self.tx.clone();
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("pretext-job".into())
            .spawn(move || {
                let _ = tx.send((job, work()));
                wake();
            });
        match spawned {
            Ok(_) => self.running.push(job),
            Err(e) => {
                let _ = self.tx.send((
                    job,
                    Done::Message((true, format!("cannot start a background job: {e}"))),
                ));
            }
        }
    }

    /// Whether a job is still running.
    pub fn busy(&self) -> bool {
        !self.running.is_empty()
    }

    /// The results of the jobs that have finished since the last call.
    pub fn finished(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        while let Ok((job, done)) = self.rx.try_recv() {
            if let Some(i) = self.running.iter().position(|j| *j == job) {
                self.running.remove(i);
            }
            out.push(done);
        }
        out
    }
}
