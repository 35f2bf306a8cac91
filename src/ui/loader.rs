//! Loads a data set on its own thread (`pretext-loader`) with progress and cancel, so the
//! window stays responsive while thousands of files decode.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, bounded};

use crate::config::DataSource;
use crate::data::{self, DataError, Dataset};

pub struct Loader {
    pub source: DataSource,
    pub size: usize,
    done: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    cancel: Arc<AtomicBool>,
    result: Receiver<Result<(Dataset, f64), DataError>>,
}

impl Loader {
    pub fn start(
        source: DataSource,
        size: usize,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<Self> {
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

    /// The result once loading has finished.
    pub fn poll(&self) -> Option<Result<(Dataset, f64), DataError>> {
        self.result.try_recv().ok()
    }
}
