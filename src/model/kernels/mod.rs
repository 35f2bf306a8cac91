//! Fast CPU kernels for the training step, as candle custom ops (forward on `CpuStorage`,
//! backward in terms of further custom ops), so the model code stays candle:
//!
//! - [`conv::conv2d`]: convolution forward and both backward passes, im2col + `gemm`;
//! - [`norm::batch_norm_train`] / [`norm::batch_norm_eval`]: batch norm fused with the ReLU
//!   after it, forward and backward in two passes over the data;
//! - [`fused::conv_batch_norm_train`]: convolution + batch norm (+ ReLU) as one op in
//!   training, so the convolution's output never becomes a tensor of candle's graph;
//! - [`block::residual_block_train`]: a whole residual basic block as one op in training;
//! - [`pointwise`]: residual add + ReLU, bias + ReLU and ×2 upsampling with their backward
//!   passes, each one pass over memory instead of candle's broadcast and reduction chains;
//! - [`subpixel`]: the decoders' ×2 upsampling + 3×3 convolution as one 2×2 convolution of
//!   the small map and an interleave of its four phases (4/9 of the multiplications);
//! - [`dense_ce`]: colorization-bins' soft-target cross-entropy over dense logits and its
//!   gradient, one pass per image each.
//!
//! Shared by them: `gemm` (the one call into the `gemm` crate), `operands` (borrowing a
//! tensor's values, shapes as named dimensions, state kept from forward for backward) and
//! `reduce` (vectorised sums). This file: the switch, the allocator settings, the compute pool.
//!
//! [`crate::model::ops`] routes to these on the CPU and to candle's own ops elsewhere (CUDA,
//! Metal) or when [`set_stock_ops`] asks for them (the benchmark compares both).

pub mod block;
pub mod conv;
pub mod dense_ce;
pub mod fused;
mod gemm;
pub mod norm;
mod operands;
pub mod pointwise;
pub mod pool;
mod reduce;
mod simd;
pub mod subpixel;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device};

pub use gemm::{PEAK_SIDE, flop_count, peak_gflops};

static STOCK: AtomicBool = AtomicBool::new(false);
static YIELDING: AtomicBool = AtomicBool::new(false);

/// How much lower than the rest of the process training threads run when they yield (the
/// Linux nice value added): at +10 the scheduler gives a thread of nice 0 about nine times
/// their share when both want a core.
const YIELD_NICE: i32 = 10;

/// Makes the training threads yield the CPU to the rest of the process (the desktop app's
/// drawing): from now on the compute pool's threads lower their own priority when they start,
/// and [`yield_this_thread`] lowers the calling thread's. Call before training starts. The
/// step loses nothing to an idle window; a window that draws gets the cores at once, so its
/// frames are not stretched by the step (Linux; elsewhere nothing changes).
pub fn yield_to_drawing() {
    YIELDING.store(true, Ordering::Relaxed);
}

/// Lowers the calling thread's priority if [`yield_to_drawing`] was asked for. Threads it
/// starts afterwards inherit the lower priority.
pub fn yield_this_thread() {
    if YIELDING.load(Ordering::Relaxed) {
        lower_thread_priority(YIELD_NICE);
    }
}

#[cfg(target_os = "linux")]
fn lower_thread_priority(nice: i32) {
    const PRIO_PROCESS: i32 = 0;
    #[allow(unsafe_code)]
    unsafe extern "C" {
        fn gettid() -> i32;
        fn setpriority(which: i32, who: u32, prio: i32) -> i32;
    }
    // SAFETY: gettid has no preconditions; setpriority on the calling thread's own id only
    // changes its scheduling weight (raising the nice value needs no privilege), and a
    // failure is harmless (the thread keeps its priority), so its result is ignored.
    #[allow(unsafe_code)]
    unsafe {
        let tid = gettid();
        if let Ok(tid) = u32::try_from(tid) {
            let _ = setpriority(PRIO_PROCESS, tid, nice);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority(_nice: i32) {}

/// Use candle's stock operations instead of these kernels (process-wide), e.g. to compare them.
/// The environment variable `PRETEXT_STOCK_OPS=1` sets this at start-up.
pub fn set_stock_ops(stock: bool) {
    STOCK.store(stock, Ordering::Relaxed);
}

/// Whether the developer switch `name` (`PRETEXT_NO_WINOGRAD`, `PRETEXT_STOCK_OPS`, …) is on:
/// set to anything but an empty value, `0` or `false`. An empty value (`PRETEXT_NO_WINOGRAD4=`
/// in a script's loop over "on" and "off") reads as off, not as set.
pub(crate) fn switch_on(name: &str) -> bool {
    switch_value_on(std::env::var_os(name).as_deref())
}

/// [`switch_on`] for a variable's value (`None`: not set).
fn switch_value_on(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !(v.is_empty() || v == "0" || v == "false"))
}

/// Whether tensors of this device and dtype go through these kernels.
pub fn applies(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32 && !STOCK.load(Ordering::Relaxed)
}

/// Whether a batch norm of `channels` channels on this device and dtype goes through
/// [`norm`]'s ops: on the CPU as [`applies`], and on CUDA (f32, the `cuda` feature) through
/// their CUDA kernels unless the stock ops are asked for (`--stock-ops`, `PRETEXT_STOCK_OPS`:
/// candle-nn's chain, to compare) or there are more channels than those kernels keep in shared
/// memory ([`norm::CUDA_MAX_CHANNELS`]; wider ones take candle-nn's chain too).
pub fn batch_norm_applies(device: &Device, dtype: DType, channels: usize) -> bool {
    applies(device, dtype)
        || (cfg!(feature = "cuda")
            && device.is_cuda()
            && dtype == DType::F32
            && channels <= norm::CUDA_MAX_CHANNELS
            && !STOCK.load(Ordering::Relaxed))
}

/// Process start-up for training: reads `PRETEXT_STOCK_OPS`, `PRETEXT_CONV_TF32` (`0` or
/// `false`: cuDNN's convolutions in f32, not TF32; see
/// [`crate::model::device::set_conv_tf32`]) and `PRETEXT_CUDNN_BENCHMARK` (`1`: cuDNN's
/// algorithms found by timing, [`crate::model::device::set_conv_benchmark`]), on glibc keeps freed
/// activation buffers in the heap (see [`keep_freed_memory`]), and names rayon's global pool
/// (`pretext-rayon-N`: decoding, augmentation, candle's own loops). Unnamed, its threads took
/// the name of whichever thread first used it (the data loader's), so profiles showed
/// `pretext-loader` doing the kNN monitor's convolutions.
pub fn init() {
    if switch_on("PRETEXT_STOCK_OPS") {
        set_stock_ops(true);
    }
    if let Some(v) = std::env::var_os("PRETEXT_CONV_TF32")
        && !v.is_empty()
        && !switch_value_on(Some(&v))
    {
        crate::model::device::set_conv_tf32(false);
    }
    if switch_on("PRETEXT_CUDNN_BENCHMARK") {
        crate::model::device::set_conv_benchmark(true);
    }
    keep_freed_memory();
    // An error means the pool already exists (a second call): it keeps its names.
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("pretext-rayon-{i}"))
        .build_global();
}

/// A training step allocates and frees the same tens of megabytes of activations and
/// gradients every step. glibc serves blocks that large with fresh `mmap`s and gives them back
/// on free, so every step pays page faults, zeroing and TLB shootdowns on all of them (half the
/// step time of the contrastive task, measured). Raising the mmap and trim thresholds makes
/// glibc reuse the freed blocks instead, and one arena for all threads keeps the training
/// thread's blocks out of per-thread heaps that glibc shrinks eagerly (rotation step 25%
/// faster, peak memory a third lower, measured). Call before other threads start.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    const M_ARENA_MAX: i32 = -8;
    #[allow(unsafe_code)]
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: mallopt only adjusts allocator parameters; glibc serialises it with the
    // allocator's own lock, and the values are plain integers within its accepted range.
    #[allow(unsafe_code)]
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 30);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
        mallopt(M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Runs `f` on a worker of the kernels' thread pool (named `pretext-compute-N`, one thread per
/// core) and waits for it. The kernels' parallel loops called from inside `f` then start on a
/// thread that is already running and share the work with the pool's other threads directly,
/// instead of handing each loop to sleeping workers and waking the caller at its end: about
/// 4% of a training step, measured. Runs `f` on the calling thread if no pool could be made.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("pretext-compute-{i}"))
            .start_handler(|_| yield_this_thread())
            .build()
            .ok()
    });
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[test]
    fn switches_are_on_only_for_a_value_that_says_so() {
        let on = |v: Option<&str>| super::switch_value_on(v.map(OsStr::new));
        assert!(on(Some("1")) && on(Some("true")) && on(Some("yes")));
        assert!(!on(None) && !on(Some("")) && !on(Some("0")) && !on(Some("false")));
    }
}
