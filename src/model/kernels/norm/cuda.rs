//! The batch norm ops on CUDA: [`BatchStats`](super::BatchStats), [`BatchNorm`](super::BatchNorm)
//! and [`BatchNormBackward`](super::BatchNormBackward) as kernels (batch_norm.cu, compiled to
//! PTX by build.rs), instead of candle-nn's chain of small ops. That chain (`fast_sum`, `badd`,
//! `bmul`, `bsub`, `usqr`) took 83–85% of the GPU time of a training step on an H200 (Nsight
//! Compute, the cuDNN build, contrastive 32 px batch 512 and rotation 96 px batch 128).
//!
//! Operands must be contiguous f32 (N, C, H, W) tensors (the callers make them so).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result, Shape, bail};

use super::super::operands::Planes;
use super::NormAct;

/// The kernels' PTX, built from batch_norm.cu.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/batch_norm.ptx"));
/// The name the module is loaded under, once per device.
const MODULE: &str = "pretext-batch-norm";
/// Threads per block (`THREADS` in batch_norm.cu, which the reductions rely on).
const THREADS: u32 = 256;
/// Blocks of an element-wise kernel at most (grid-stride loops beyond): each block first works
/// out every channel's coefficients, so more blocks would repeat that for nothing. About eight
/// blocks per multiprocessor of an H100/H200.
const MAX_BLOCKS: usize = 1024;
/// Rows of C coefficients the element-wise kernels keep in shared memory: `bn_apply`'s 2 and
/// `bn_grad_input`'s 7 (batch_norm.cu; [`super::CUDA_MAX_CHANNELS`] follows from the 7, and
/// wider batch norms never reach these kernels).
const APPLY_ROWS: usize = 2;
const GRAD_ROWS: usize = 7;
/// Shared memory a block may ask for without opting in (48 KiB on every CUDA GPU).
const SHARED_LIMIT: usize = 48 * 1024;

/// A contiguous f32 operand's values from its first.
fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{what} must be contiguous on CUDA");
    };
    Ok(s.as_cuda_slice::<f32>()?.slice(start..end))
}

/// The input x (N, C, H, W) laid out as planes, its values and the packed parameters
/// [weight; bias; mean; var] (4·C values), checked.
fn operands<'a>(
    x: &'a CudaStorage,
    xl: &Layout,
    p: &'a CudaStorage,
    pl: &Layout,
    what: &str,
) -> Result<(Planes, CudaView<'a, f32>, CudaView<'a, f32>)> {
    let planes = Planes::of(xl.dims(), what)?;
    let xs = view(x, xl, "batch norm input")?;
    let ps = view(p, pl, "batch norm parameters")?;
    if ps.len() != 4 * planes.c {
        bail!(
            "{what}: parameters hold {} values, need 4 × {}",
            ps.len(),
            planes.c
        );
    }
    Ok((planes, xs, ps))
}

/// (N, C, H·W) as the kernels take them, and the number of values: the kernels index with 32
/// bits and a grid-stride step must not wrap, so there must be fewer than 2³¹.
fn dims(planes: Planes, what: &str) -> Result<(i32, i32, i32, u32)> {
    let numel = planes.numel();
    let Some(numel) = u32::try_from(numel).ok().filter(|&v| v < 1 << 31) else {
        bail!("{what}: {numel} values are too many for the CUDA kernels (at most 2³¹ − 1)");
    };
    let int = |v: usize| {
        i32::try_from(v).map_err(|_| {
            candle_core::Error::Msg(format!(
                "{what}: {v} is too large a dimension for the CUDA kernels"
            ))
        })
    };
    Ok((
        int(planes.n)?,
        int(planes.c)?,
        int(planes.hw.max(1))?,
        numel,
    ))
}

/// The grid of a per-channel reduction: (chunks, C) blocks, about 1,024 in all, each summing
/// at least 2,048 values where there are that many.
fn reduction_grid(planes: Planes) -> (i32, LaunchConfig) {
    let c = planes.c.max(1);
    let per_channel = planes.per_channel().max(1);
    let chunks = 1024usize
        .div_ceil(c)
        .min(per_channel.div_ceil(2048))
        .clamp(1, 1024);
    let cfg = LaunchConfig {
        grid_dim: (chunks as u32, c as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    (chunks as i32, cfg)
}

/// One thread per channel.
fn per_channel(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c.div_ceil(THREADS as usize).max(1) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid-stride loop over `numel` values whose blocks keep `rows` rows of `c` coefficients in
/// shared memory.
fn elementwise(numel: u32, c: usize, rows: usize, what: &str) -> Result<LaunchConfig> {
    let shared = rows * c * std::mem::size_of::<f32>();
    if shared > SHARED_LIMIT {
        bail!(
            "{what}: {c} channels are too many for the CUDA kernels (at most {})",
            SHARED_LIMIT / (rows * std::mem::size_of::<f32>())
        );
    }
    let blocks = (numel as usize).div_ceil(THREADS as usize);
    Ok(LaunchConfig {
        grid_dim: (blocks.clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: shared as u32,
    })
}

/// [`BatchStats`](super::BatchStats): [mean; biased variance] (2, C).
pub(super) fn stats(x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = x.device().clone();
    let planes = Planes::of(l.dims(), "batch norm")?;
    let xs = view(x, l, "batch norm input")?;
    let (n, c, hw, numel) = dims(planes, "batch norm")?;
    if numel == 0 {
        // No values (C may be 0 too): mean and variance 0, as the CPU's.
        let out = dev.alloc_zeros::<f32>(2 * planes.c)?;
        return Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((2, planes.c)),
        ));
    }
    let (chunks, grid) = reduction_grid(planes);
    // SAFETY: every block writes its two partial sums.
    let partial: CudaSlice<f64> = unsafe { dev.alloc::<f64>(2 * planes.c * chunks as usize)? };
    let f = dev.get_or_load_custom_func("bn_stats_partial", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&xs)
        .arg(&n)
        .arg(&c)
        .arg(&hw)
        .arg(&chunks)
        .arg(&partial);
    // SAFETY: the kernel reads `n·c·hw` values of `xs` and writes `partial`'s, as sized here.
    unsafe { b.launch(grid) }.w()?;
    // SAFETY: the finishing kernel writes all 2·C values.
    let out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(2 * planes.c)? };
    let count = planes.per_channel() as f64;
    let f = dev.get_or_load_custom_func("bn_stats_finish", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&partial).arg(&c).arg(&chunks).arg(&count).arg(&out);
    // SAFETY: reads the partial sums written above, writes `out`.
    unsafe { b.launch(per_channel(planes.c)) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((2, planes.c)),
    ))
}

/// [`BatchNorm`](super::BatchNorm): `x · scale + shift` per channel (then ReLU), with
/// `p` = [weight; bias; mean; var] (4, C).
pub(super) fn apply(
    x: &CudaStorage,
    xl: &Layout,
    p: &CudaStorage,
    pl: &Layout,
    act: NormAct,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device().clone();
    let (planes, xs, ps) = operands(x, xl, p, pl, "batch norm")?;
    let (_, c, hw, numel) = dims(planes, "batch norm")?;
    if numel == 0 {
        let y = dev.alloc_zeros::<f32>(0)?;
        return Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from(xl.dims())));
    }
    let cfg = elementwise(numel, planes.c, APPLY_ROWS, "batch norm")?;
    // SAFETY: the kernel writes every value.
    let y: CudaSlice<f32> = unsafe { dev.alloc::<f32>(planes.numel())? };
    let relu = i32::from(act.relu);
    let f = dev.get_or_load_custom_func("bn_apply", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&xs)
        .arg(&ps)
        .arg(&c)
        .arg(&hw)
        .arg(&numel)
        .arg(&act.eps)
        .arg(&relu)
        .arg(&y);
    // SAFETY: reads `numel` values of `xs` and 4·C of `ps`, writes `y`'s `numel`; the shared
    // memory holds the kernel's two rows of C.
    unsafe { b.launch(cfg) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from(xl.dims())))
}

/// [`BatchNormBackward`](super::BatchNormBackward): [dx (N·C·H·W); dweight (C); dbias (C)].
pub(super) fn backward(
    x: &CudaStorage,
    xl: &Layout,
    p: &CudaStorage,
    pl: &Layout,
    g: &CudaStorage,
    gl: &Layout,
    act: NormAct,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device().clone();
    let (planes, xs, ps) = operands(x, xl, p, pl, "batch norm backward")?;
    let gs = view(g, gl, "batch norm output gradient")?;
    if gs.len() != xs.len() {
        bail!("batch norm backward: the gradient does not match the input");
    }
    let (n, c, hw, numel) = dims(planes, "batch norm backward")?;
    if numel == 0 {
        // No values: no gradient, dweight and dbias 0, as the CPU's.
        let out = dev.alloc_zeros::<f32>(2 * planes.c)?;
        return Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from(2 * planes.c),
        ));
    }
    let cfg = elementwise(numel, planes.c, GRAD_ROWS, "batch norm backward")?;
    let relu = i32::from(act.relu);
    let (chunks, grid) = reduction_grid(planes);
    // SAFETY: every block writes its two partial sums.
    let partial: CudaSlice<f64> = unsafe { dev.alloc::<f64>(2 * planes.c * chunks as usize)? };
    let f = dev.get_or_load_custom_func("bn_grad_partial", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&xs)
        .arg(&ps)
        .arg(&gs)
        .arg(&n)
        .arg(&c)
        .arg(&hw)
        .arg(&chunks)
        .arg(&act.eps);
    b.arg(&relu).arg(&partial);
    // SAFETY: reads `numel` values of `xs` and `gs` and 4·C of `ps`, writes `partial`.
    unsafe { b.launch(grid) }.w()?;
    let len = planes.numel() + 2 * planes.c;
    // SAFETY: bn_grad_finish writes the last 2·C values, bn_grad_input the first `numel`.
    let out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(len)? };
    let f = dev.get_or_load_custom_func("bn_grad_finish", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&partial)
        .arg(&ps)
        .arg(&c)
        .arg(&chunks)
        .arg(&act.eps)
        .arg(&numel)
        .arg(&out);
    // SAFETY: reads the partial sums written above, writes out[numel..numel + 2C].
    unsafe { b.launch(per_channel(planes.c)) }.w()?;
    let count = planes.per_channel() as f32;
    let f = dev.get_or_load_custom_func("bn_grad_input", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&xs)
        .arg(&ps)
        .arg(&gs)
        .arg(&c)
        .arg(&hw)
        .arg(&numel)
        .arg(&act.eps)
        .arg(&relu);
    b.arg(&count).arg(&out);
    // SAFETY: reads `xs`, `gs`, `ps` and out[numel..], writes out[..numel]; the shared memory
    // holds the kernel's seven rows of C.
    unsafe { b.launch(cfg) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(len)))
}
