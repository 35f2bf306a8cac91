//! The one place that calls the `gemm` crate: a bounds-checked, safe matrix product over
//! slices with arbitrary row and column strides.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Result, bail};

/// Floating-point operations (2·m·n·k per product) of every product [`matmul`] has computed
/// in this process: the convolutions' arithmetic, which the benchmark divides by the step time.
static FLOP: AtomicU64 = AtomicU64::new(0);

/// Floating-point operations of all the matrix products so far (see [`FLOP`]).
pub fn flop_count() -> u64 {
    FLOP.load(Ordering::Relaxed)
}

/// A read-only matrix view: `data[i * rs + j * cs]` is element (i, j).
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.rows == 0 || self.cols == 0 {
            return Ok(());
        }
        let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
        if last >= self.data.len() {
            bail!(
                "gemm: {what} view {}×{} (strides {}, {}) exceeds its {} values",
                self.rows,
                self.cols,
                self.rs,
                self.cs,
                self.data.len()
            );
        }
        Ok(())
    }
}

/// How many of its 6-column register tiles a single-threaded product's right side must be
/// wide (in the crate's own, transposed, view: our matrices' rows) before the `gemm` crate
/// packs the other operand into its register-tile order. Its default, 8 (48 rows), leaves the
/// products of a 32-channel convolution unpacked, so its kernel reads a column matrix
/// thousands of values apart at every step of the sum. Packing them always made the residual
/// blocks 2–5% faster (paired timings at 16 and 32 px, AMD EPYC).
const LHS_PACKING_THRESHOLD: usize = 1;

/// Sets [`LHS_PACKING_THRESHOLD`] once, before the first product.
static PACK_EVERY_LEFT_BLOCK: std::sync::Once = std::sync::Once::new();

/// Adds `flop` to [`flop_count`]: arithmetic done by a kernel other than [`matmul`].
pub fn count_flop(flop: u64) {
    FLOP.fetch_add(flop, Ordering::Relaxed);
}

/// `dst = (accumulate ? dst : 0) + a · b`, with `dst` row-major (`a.rows` × `b.cols`).
/// Single-threaded: callers parallelise over images. Counted in [`flop_count`].
pub fn matmul(dst: &mut [f32], accumulate: bool, a: MatRef<'_>, b: MatRef<'_>) -> Result<()> {
    PACK_EVERY_LEFT_BLOCK.call_once(|| {
        gemm::set_lhs_packing_threshold_single_thread(LHS_PACKING_THRESHOLD);
    });
    let flop = 2 * (a.rows as u64) * (b.cols as u64) * (a.cols as u64);
    product(dst, accumulate, a, b, gemm::Parallelism::None)?;
    FLOP.fetch_add(flop, Ordering::Relaxed);
    Ok(())
}

/// [`matmul`] on `parallelism`'s threads, not counted.
fn product(
    dst: &mut [f32],
    accumulate: bool,
    a: MatRef<'_>,
    b: MatRef<'_>,
    parallelism: gemm::Parallelism,
) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        bail!("gemm: inner sizes differ ({} vs {})", k, b.rows);
    }
    if dst.len() < m * n {
        bail!(
            "gemm: destination holds {} values, needs {}",
            dst.len(),
            m * n
        );
    }
    a.check("left")?;
    b.check("right")?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return Ok(());
    }
    let stride = |s: usize| isize::try_from(s).map_err(candle_core::Error::wrap);
    let (a_rs, a_cs, b_rs, b_cs, d_rs) = (
        stride(a.rs)?,
        stride(a.cs)?,
        stride(b.rs)?,
        stride(b.cs)?,
        stride(n)?,
    );
    // SAFETY: every index gemm touches is (i·rs + j·cs) with i < rows and j < cols of the
    // respective view; `check` proved the largest such index lies inside each slice, and the
    // destination holds m·n row-major values. The slices do not alias (`dst` is borrowed
    // mutably), and gemm runs to completion before this function returns.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            d_rs,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// Side of the square matrices [`peak_gflops`] multiplies (as PyTorch's usual `torch.mm` probe).
pub const PEAK_SIDE: usize = 2048;

/// The matrix-product peak of this machine: the best of `rounds` single-precision products of
/// two [`PEAK_SIDE`]² matrices on the kernels' compute pool (all its threads), in GFLOP/s — the
/// same measure as PyTorch's `torch.mm` on 2048² matrices, so a throughput can be read as a
/// share of what the cores can do at all. About 0.1 s per round on two cores; NaN
/// if the product were refused (it is not: the sizes are fixed and consistent).
pub fn peak_gflops(rounds: usize) -> f64 {
    const N: usize = PEAK_SIDE;
    let a: Vec<f32> = (0..N * N).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    let b: Vec<f32> = (0..N * N).map(|i| ((i % 5) as f32 - 2.0) * 0.1).collect();
    let mut c = vec![0f32; N * N];
    let (a, b) = (MatRef::rows(&a, N, N), MatRef::rows(&b, N, N));
    let mut best = f64::INFINITY;
    for _ in 0..rounds.max(1) {
        let t = std::time::Instant::now();
        let done = super::on_compute_pool(|| {
            let threads = rayon::current_num_threads().max(1);
            product(&mut c, false, a, b, gemm::Parallelism::Rayon(threads))
        });
        if done.is_err() {
            return f64::NAN;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&c);
    2.0 * (N as f64).powi(3) / best / 1e9
}
