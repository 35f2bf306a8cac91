//! Slow or blocking work the window asks for, each on its own named thread (`pretext-job`), so
//! the UI thread only draws: reading a run directory back, writing embeddings, drawing
//! augmentation views. A finished job wakes the window, which takes its result in
//! [`Jobs::finished`].

use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::tasks::Canvas;
use crate::train::Event;

/// What a job produced.
pub enum Done {
    /// A run directory read back as its events, to continue it.
    Replay {
        /// Which Continue asked for it (a later Reset or Continue drops it).
        replay: u64,
        dir: PathBuf,
        epochs: Option<usize>,
        events: Result<Vec<Event>, String>,
    },
    /// A message for the person (error?, text).
    Message((bool, String)),
    /// Augmented views for the settings with this key.
    Augment { key: u64, canvas: Canvas },
    /// The t-SNE map of the embedding made at `step`.
    Tsne {
        step: u64,
        /// The map and its trustworthiness T(5), or why there is none.
        result: Result<(Vec<[f64; 2]>, Option<f64>), String>,
    },
}

/// The background jobs of the window and the channel their results come back on.
pub struct Jobs {
    tx: Sender<Done>,
    rx: Receiver<Done>,
    /// Jobs started whose result has not been taken yet.
    running: usize,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl Jobs {
    pub fn new(wake: Arc<dyn Fn() + Send + Sync>) -> Self {
        let (tx, rx) = unbounded();
        Self {
            tx,
            rx,
            running: 0,
            wake,
        }
    }

    /// Runs `work` on a new thread; its result arrives through [`Jobs::finished`].
    pub fn spawn(&mut self, work: impl FnOnce() -> Done + Send + 'static) {
        let tx = self.tx.clone();
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("pretext-job".into())
            .spawn(move || {
                let _ = tx.send(work());
                wake();
            });
        self.running += 1;
        if let Err(e) = spawned {
            let _ = self.tx.send(Done::Message((
                true,
                format!("cannot start a background job: {e}"),
            )));
        }
    }

    /// Whether a job is still running.
    pub fn busy(&self) -> bool {
        self.running > 0
    }

    /// The results of the jobs that have finished since the last call.
    pub fn finished(&mut self) -> Vec<Done> {
        let out: Vec<Done> = self.rx.try_iter().collect();
        self.running = self.running.saturating_sub(out.len());
        out
    }
}
