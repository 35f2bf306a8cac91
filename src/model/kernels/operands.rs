//! What every op does with its operands: borrows a CPU tensor's f32 values, reads its shape as
//! named dimensions, turns results back into tensors, and keeps state from its forward pass for
//! its backward pass.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, bail};

/// The f32 values of a contiguous CPU tensor.
pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what}: expected f32, got {:?}", s.dtype());
    };
    match l.contiguous_offsets() {
        Some((a, b)) if b <= v.len() => Ok(&v[a..b]),
        _ => bail!("{what}: expected a contiguous tensor"),
    }
}

/// Runs `f` on the f32 values of a CPU tensor (made contiguous), borrowed from candle's storage:
/// for backward passes, which receive tensors rather than storages.
pub(super) fn with_values<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(f32_slice(s, layout, "kernel operand")?),
        _ => bail!("pretext's kernels run on the CPU only"),
    }
}

/// A tensor of `like`'s shape and device holding `v`.
pub(super) fn tensor_like(v: Vec<f32>, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(v, like.shape(), like.device())
}

/// [`tensor_like`] for a gradient that may not have been asked for.
pub(super) fn grad_like(v: Option<Vec<f32>>, like: &Tensor) -> Result<Option<Tensor>> {
    v.map(|v| tensor_like(v, like)).transpose()
}

/// The dimensions of an (N, C, H, W) tensor: images, channels, rows, columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Nchw {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
}

impl Nchw {
    /// `dims` as (N, C, H, W); an error naming `what` for any other rank.
    pub(super) fn of(dims: &[usize], what: &str) -> Result<Self> {
        let &[n, c, h, w] = dims else {
            bail!("{what}: expected (N, C, H, W), got {dims:?}");
        };
        Ok(Self { n, c, h, w })
    }
}

/// An (N, C, H, W) or (N, C) batch seen as N·C planes of H·W values (one value for (N, C)),
/// laid out image by image, channel by channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Planes {
    /// Images, N.
    pub(super) n: usize,
    /// Channels, C.
    pub(super) c: usize,
    /// Values per plane, H·W.
    pub(super) hw: usize,
}

impl Planes {
    /// `dims` as planes; an error naming `what` for a rank other than 4 or 2.
    pub(super) fn of(dims: &[usize], what: &str) -> Result<Self> {
        match *dims {
            [n, c, h, w] => Ok(Self { n, c, hw: h * w }),
            [n, c] => Ok(Self { n, c, hw: 1 }),
            _ => bail!("{what}: expected an (N, C, H, W) or (N, C) tensor, got {dims:?}"),
        }
    }

    /// All values of the batch, N·C·H·W.
    pub(super) fn numel(&self) -> usize {
        self.n * self.c * self.hw
    }

    /// Values per channel over the batch, N·H·W (at least 1, as a divisor).
    pub(super) fn per_channel(&self) -> usize {
        (self.n * self.hw).max(1)
    }

    /// Where the plane of channel `ch` of image `i` lies in the flat batch.
    pub(super) fn plane(&self, i: usize, ch: usize) -> Range<usize> {
        (i * self.c + ch) * self.hw..(i * self.c + ch + 1) * self.hw
    }
}

/// What an op's forward pass keeps for its backward pass (and for the caller, which reads
/// batch statistics from it): shared between the op and the function that applied it.
pub(super) struct SavedState<T> {
    op: &'static str,
    slot: Arc<Mutex<Option<T>>>,
}

impl<T> Clone for SavedState<T> {
    fn clone(&self) -> Self {
        Self {
            op: self.op,
            slot: Arc::clone(&self.slot),
        }
    }
}

impl<T> SavedState<T> {
    /// An empty slot for the op named `op` (in error messages).
    pub(super) fn new(op: &'static str) -> Self {
        Self {
            op,
            slot: Arc::new(Mutex::new(None)),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Option<T>>> {
        self.slot
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: saved state lock poisoned", self.op)))
    }

    /// Keeps `value`, replacing what an earlier forward pass kept.
    pub(super) fn put(&self, value: T) -> Result<()> {
        *self.lock()? = Some(value);
        Ok(())
    }

    /// Runs `f` on the kept state; the error "`op`: `missing`" when there is none.
    pub(super) fn with<R>(&self, missing: &str, f: impl FnOnce(&T) -> Result<R>) -> Result<R> {
        let guard = self.lock()?;
        let Some(value) = guard.as_ref() else {
            bail!("{}: {missing}", self.op);
        };
        f(value)
    }
}
