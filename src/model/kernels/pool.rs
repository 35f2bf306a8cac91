//! Buffers that the fused ops keep from the forward pass to the backward pass (a convolution's
//! output, a gradient between two stages), handed back when the step's graph is dropped and
//! handed out again to the next step's ops of the same size. A kernel that writes every value
//! of its output then starts from memory that is already initialised (the last step's values)
//! instead of a pass of zeros over it, and the allocator is not asked for the same large
//! blocks again every step.
//!
//! Only buffers of at least [`MIN_VALUES`] values are kept, at most [`KEEP_BYTES`] in all
//! (more are freed as before); [`clear`] frees them all (the trainer calls it when a run ends).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The smallest buffer worth keeping (256 KiB): smaller ones the allocator reuses cheaply.
pub(super) const MIN_VALUES: usize = 1 << 16;

/// The most the pool keeps in all (1 GiB). A rotation step keeps about 110 MiB of such buffers
/// at 32 px and batch 128, about 1 GiB at 96 px and batch 128 (then the buffers past the cap
/// are freed and made afresh, as without the pool).
const KEEP_BYTES: usize = 1 << 30;

struct Pool {
    bufs: Vec<Vec<f32>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    bufs: Vec::new(),
    bytes: 0,
});

fn bytes(v: &Vec<f32>) -> usize {
    v.capacity() * size_of::<f32>()
}

/// A buffer of exactly `n` values that an earlier op gave back, holding whatever it held
/// (initialised values, not zeros), or `None` when there is none of that size.
pub(super) fn take(n: usize) -> Option<Vec<f32>> {
    if n < MIN_VALUES {
        return None;
    }
    // A poisoned lock only means another thread panicked while holding it: the list is still
    // a list of whole buffers, so it is used as it is.
    let mut pool = POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(at) = pool.bufs.iter().rposition(|b| b.len() == n) else {
        MISSES.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let v = pool.bufs.swap_remove(at);
    pool.bytes -= bytes(&v);
    REUSES.fetch_add(1, Ordering::Relaxed);
    Some(v)
}

/// Gives `v` to the pool for a later [`take`] of its length, or frees it when it is small or
/// the pool is full.
pub(super) fn give(v: Vec<f32>) {
    if v.len() < MIN_VALUES {
        return;
    }
    let mut pool = POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if pool.bytes + bytes(&v) > KEEP_BYTES {
        return;
    }
    pool.bytes += bytes(&v);
    pool.bufs.push(v);
}

/// Held by [`clear`], and by tests that need the pool's contents to stay between two calls.
pub(super) static CLEARING: Mutex<()> = Mutex::new(());

/// Frees every buffer the pool holds.
pub fn clear() {
    let _clearing = CLEARING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bufs = {
        let mut pool = POOL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pool.bytes = 0;
        std::mem::take(&mut pool.bufs)
    };
    drop(bufs);
}

/// Buffers handed out again since the process started.
pub fn reuses() -> u64 {
    REUSES.load(Ordering::Relaxed)
}

static REUSES: AtomicU64 = AtomicU64::new(0);

/// Asks for a buffer of at least [`MIN_VALUES`] values that the pool did not have, since the
/// process started.
pub fn misses() -> u64 {
    MISSES.load(Ordering::Relaxed)
}

static MISSES: AtomicU64 = AtomicU64::new(0);

/// Fills every buffer the pool holds with NaN and returns how many it holds: a test that runs
/// the kernels after this sees NaN wherever one of them leaves a value of a reused buffer
/// unwritten.
#[doc(hidden)]
pub fn poison_held() -> usize {
    let mut pool = POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for b in &mut pool.bufs {
        b.fill(f32::NAN);
    }
    pool.bufs.len()
}

/// Bytes the pool holds now.
pub fn held_bytes() -> usize {
    POOL.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .bytes
}

/// A buffer that goes back to the pool when dropped.
#[derive(Default)]
pub(super) struct Pooled(Vec<f32>);

impl Pooled {
    pub(super) fn new(v: Vec<f32>) -> Self {
        Self(v)
    }
}

impl std::ops::Deref for Pooled {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.0
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        &mut self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::{CLEARING, MIN_VALUES, Pooled, give, take};

    #[test]
    fn a_buffer_comes_back_only_for_its_own_size_and_small_ones_are_not_kept() {
        // Sizes no other test uses, so tests running at the same time do not interfere, and
        // no run ending meanwhile empties the pool.
        let _no_clear = CLEARING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = MIN_VALUES + 12_345;
        give(vec![1.5; n]);
        assert!(take(n + 1).is_none());
        let v = take(n).expect("the buffer given back");
        assert_eq!(v.len(), n);
        assert!(v.iter().all(|&x| x == 1.5), "the values stay as they were");
        give(vec![2.0; 100]);
        assert!(take(100).is_none(), "small buffers are freed, not kept");
        {
            let _kept = Pooled::new(vec![3.0; n + 7]);
        }
        assert_eq!(
            take(n + 7).map(|v| v[0]),
            Some(3.0),
            "Pooled gives back on drop"
        );
    }
}
