//! Loads a data set on its own thread (`pretext-loader`) with progress and cancel: the one way
//! both the window (which must not block) and the training worker (which answers commands while
//! files decode) load data. While a folder loads, a [`Glimpse`] holds copies of the first images
//! that arrived, so the window can show them before the rest is done.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Receiver, bounded};

use crate::config::DataSource;
use crate::data::{self, DataError, Dataset};

/// Called when files have decoded or loading has ended (a window asks for a repaint).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// The images a load has produced so far, in the order they arrived (cached ones first, then
/// as they decode): at most a fixed number, each copied once, so keeping them costs a few
/// hundred small copies beside thousands of decodes.
pub struct Glimpse {
    limit: usize,
    full: AtomicBool,
    images: Mutex<GlimpseImages>,
}

/// A copy of what a [`Glimpse`] holds.
#[derive(Clone, Debug, Default)]
pub struct GlimpseImages {
    /// Working size: each image is `size × size × 3` bytes.
    pub size: usize,
    /// Each image's name (its path in the folder, as displayed).
    pub names: Vec<String>,
    /// The images' pixels, one after another.
    pub pixels: Vec<u8>,
    /// Rises with every image added.
    pub version: u64,
}

impl GlimpseImages {
    /// Image `i`'s pixels.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.size * self.size * 3;
        self.pixels.get(i * n..(i + 1) * n).unwrap_or(&[])
    }
}

impl Glimpse {
    /// A glimpse of at most `limit` images.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            full: AtomicBool::new(limit == 0),
            images: Mutex::new(GlimpseImages::default()),
        }
    }

    /// Whether it takes more images (a cheap check before making a name).
    pub fn wants_more(&self) -> bool {
        !self.full.load(Ordering::Relaxed)
    }

    /// Adds a copy of one image (`size × size × 3` bytes) while there is room.
    pub fn offer(&self, size: usize, name: impl FnOnce() -> String, pixels: &[u8]) {
        if !self.wants_more() || pixels.len() != size * size * 3 {
            return;
        }
        let mut g = self.images.lock().unwrap_or_else(PoisonError::into_inner);
        if g.names.len() >= self.limit || (g.size != 0 && g.size != size) {
            return;
        }
        g.size = size;
        g.names.push(name());
        g.pixels.extend_from_slice(pixels);
        g.version += 1;
        if g.names.len() >= self.limit {
            self.full.store(true, Ordering::Relaxed);
        }
    }

    /// A copy of the images, when it holds more than it did at `version`.
    pub fn newer_than(&self, version: u64) -> Option<GlimpseImages> {
        let g = self.images.lock().unwrap_or_else(PoisonError::into_inner);
        (g.version > version).then(|| g.clone())
    }
}

/// A data set being loaded on `pretext-loader`: its progress, the first images, a way to
/// cancel, its result.
pub struct Loader {
    pub source: DataSource,
    pub size: usize,
    done: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    cancel: Arc<AtomicBool>,
    glimpse: Arc<Glimpse>,
    result: Receiver<Result<(Dataset, f64), DataError>>,
}

impl Loader {
    /// Starts loading `source` at working size `size` on a new thread, through the image cache
    /// in folder `cache` when given, keeping copies of the first `glimpse` images.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(
        source: DataSource,
        size: usize,
        cache: Option<PathBuf>,
        glimpse: usize,
        wake: Wake,
    ) -> std::io::Result<Self> {
        let done = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        let glimpse = Arc::new(Glimpse::new(glimpse));
        let (tx, rx) = bounded(1);
        let (d, t, c, s) = (done.clone(), total.clone(), cancel.clone(), source.clone());
        let g = glimpse.clone();
        std::thread::Builder::new()
            .name("pretext-loader".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let progress = |n: usize, of: usize| {
                    d.store(n, Ordering::Relaxed);
                    t.store(of, Ordering::Relaxed);
                    wake();
                };
                let options = data::LoadOptions {
                    cache: cache.as_deref(),
                    progress: &progress,
                    cancel: &c,
                    glimpse: Some(&g),
                };
                let r = data::load_with(&s, size, &options)
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
            glimpse,
            result: rx,
        })
    }

    /// The images that have arrived so far.
    pub fn glimpse(&self) -> &Glimpse {
        &self.glimpse
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
