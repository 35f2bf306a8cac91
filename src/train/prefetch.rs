//! Batches are made ahead of the step on their own thread (`pretext-batches`), so data
//! preparation — augmentations, masks, patches, colour conversion — overlaps training.
//! Which images form which batch, and every random choice in them, depend only on the seed
//! and the step, so prefetching changes nothing about the result.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, bounded};

use crate::data::Dataset;
use crate::rng::Rng;
use crate::tasks::{BatchMaker, HostBatch};

const STREAM_EPOCH_ORDER: u64 = 1;
const STREAM_STEP: u64 = 2;
/// Batches made ahead of the one being trained.
const AHEAD: usize = 2;

/// The order of the data set in `epoch`.
pub fn epoch_order(seed: u64, len: usize, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    Rng::derive(seed, &[STREAM_EPOCH_ORDER, epoch as u64]).shuffle(&mut order);
    order
}

/// The random seed of task `task` at `step`.
pub fn step_seed(seed: u64, step: u64, task: usize) -> u64 {
    Rng::derive(seed, &[STREAM_STEP, step, task as u64]).next_u64()
}

/// Where a run stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Steps done in the whole run.
    pub step: u64,
    /// 0-based epoch in progress.
    pub epoch: usize,
    /// Batches of that epoch already done.
    pub batch: usize,
}

/// The shape of a run.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub seed: u64,
    pub batch: usize,
    pub batches_per_epoch: usize,
    pub epochs: usize,
}

/// One step's batches, one per task.
pub struct Prepared {
    pub position: Position,
    pub batches: Vec<HostBatch>,
    /// Seconds the batch thread spent making them.
    pub make_secs: f64,
}

pub struct Prefetcher {
    rx: Receiver<Prepared>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prefetcher {
    pub fn start(
        data: Arc<Dataset>,
        makers: Vec<Arc<dyn BatchMaker>>,
        schedule: Schedule,
        from: Position,
    ) -> std::io::Result<Self> {
        let (tx, rx) = bounded(AHEAD);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pretext-batches".into())
            .spawn(move || {
                let mut pos = from;
                let mut order_epoch = usize::MAX;
                let mut order = Vec::new();
                while pos.epoch < schedule.epochs && !stop_flag.load(Ordering::Relaxed) {
                    if order_epoch != pos.epoch {
                        order = epoch_order(schedule.seed, data.len(), pos.epoch);
                        order_epoch = pos.epoch;
                    }
                    let start = pos.batch * schedule.batch;
                    let indices = &order[start..start + schedule.batch];
                    let t0 = Instant::now();
                    let batches = makers
                        .iter()
                        .enumerate()
                        .map(|(t, m)| m.make(&data, indices, step_seed(schedule.seed, pos.step, t)))
                        .collect();
                    let prepared = Prepared {
                        position: pos,
                        batches,
                        make_secs: t0.elapsed().as_secs_f64(),
                    };
                    if tx.send(prepared).is_err() {
                        return;
                    }
                    pos.step += 1;
                    pos.batch += 1;
                    if pos.batch == schedule.batches_per_epoch {
                        pos.batch = 0;
                        pos.epoch += 1;
                    }
                }
            })?;
        Ok(Self {
            rx,
            stop,
            thread: Some(thread),
        })
    }

    /// The next step's batches (blocks until they are made); None when the schedule is done.
    pub fn next(&self) -> Option<Prepared> {
        self.rx.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.rx.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            // The thread ends after its current batch: it sees the flag or a closed channel.
            while !t.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = t.join();
        }
    }
}
