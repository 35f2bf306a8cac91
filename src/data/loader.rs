//! Loads a data set on its own thread (`pretext-loader`) with progress and cancel: the one way
//! both the window (which must not block) and the training worker (which answers commands while
//! files decode) load data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, bounded};

use crate::config::DataSource;
use crate::data::{self, DataError, Dataset};

/// Called when files have decoded or loading has ended (a window asks for a repaint).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// A data set being loaded on `pretext-loader`: its progress, a way to cancel, its result.
pub struct Loader {
    pub source: DataSource,
    pub size: usize,
    done: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    cancel: Arc<AtomicBool>,
    result: Receiver<Result<(Dataset, f64), DataError>>,
}

impl Loader {
    /// Starts loading `source` at working size `size` on a new thread.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(source: DataSource, size: usize, wake: Wake) -> std::io::Result<Self> {
        let done = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = bounded(1);
        let (d, t, c, s) = (done.clone(), total.clone(), cancel.clone(), source.clone());
        std::thread::Builder::new()
            .name("pretext-loader".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let progress = |n: usize, of: usize| {
                    d.store(n, Ordering::Relaxed);
                    t.store(of, Ordering::Relaxed);
                    wake();
                };
                let r = data::load(&s, size, &progress, &c)
                    .map(|d| (d, started.elapsed().as_secs_f64()));
                let _ = tx.send(r);
                wake();
            })?;
        Ok(Self {
            source,
            size,
            done,
            total,
            cancel,
            result: rx,
        })
    }

    /// (done, total) files.
    pub fn progress(&self) -> (usize, usize) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The result once loading has finished: the data and the seconds it took.
    pub fn poll(&self) -> Option<Result<(Dataset, f64), DataError>> {
        self.result.try_recv().ok()
    }

    /// Waits up to `timeout` for the result.
    pub fn wait(&self, timeout: std::time::Duration) -> Option<Result<(Dataset, f64), DataError>> {
        match self.result.recv_timeout(timeout) {
            Ok(r) => Some(r),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            // The thread ended without a result (it panicked): say so rather than wait forever.
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Some(Err(DataError::Io {
                path: std::path::PathBuf::from(self.source.to_string()),
                source: std::io::Error::other("the loading thread ended without a result"),
            })),
        }
    }
}
