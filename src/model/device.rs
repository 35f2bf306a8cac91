//! Which compute devices this machine can use, and why not when it cannot.
//!
//! A `--features cuda` build opens the NVIDIA driver and the CUDA libraries when CUDA is first
//! asked for (cudarc's dynamic loading, vendor/candle-core/PATCH.md), so the same binary starts
//! on any machine. Before it creates a CUDA device, pretext checks here that every library a run
//! opens is present and that the driver sees a GPU: a missing piece is one sentence for the CLI
//! (exit code 2) and the reason beside the disabled choice in the app, never a loader error or a
//! panic inside cudarc.

use std::sync::OnceLock;

use candle_core::Device;

use super::{ModelError, Result};
use crate::config::DeviceKind;

/// Whether this build runs convolutions through cuDNN (the `cudnn` feature).
pub const CUDNN_BUILD: bool = cfg!(feature = "cudnn");

/// Whether cuDNN's f32 convolutions may use TF32 tensor cores (10-bit mantissa products, f32
/// sums): on by default, as PyTorch's `torch.backends.cudnn.allow_tf32`; off, they compute in
/// f32 (to compare a GPU step with the CPU's). Does nothing without the `cudnn` feature, whose
/// convolutions are candle's im2col and cuBLAS in f32.
pub fn set_conv_tf32(allow: bool) {
    #[cfg(feature = "cudnn")]
    candle_core::cuda_backend::cudnn::set_conv_tf32(allow);
    #[cfg(not(feature = "cudnn"))]
    let _ = allow;
}

/// Whether cuDNN chooses each convolution's algorithm by timing its candidates once per shape
/// (`cudnnFind…Algorithm`), as PyTorch's `torch.backends.cudnn.benchmark`, instead of by its
/// heuristics: off by default (`PRETEXT_CUDNN_BENCHMARK=1` at start-up turns it on). Costs a
/// search the first time each shape is seen on a thread. Does nothing without the `cudnn`
/// feature.
pub fn set_conv_benchmark(on: bool) {
    #[cfg(feature = "cudnn")]
    candle_core::cuda_backend::cudnn::set_conv_benchmark(on);
    #[cfg(not(feature = "cudnn"))]
    let _ = on;
}

/// How many algorithm searches ([`set_conv_benchmark`]) the calling thread has run; always 0
/// without the `cudnn` feature.
pub fn conv_benchmark_searches() -> usize {
    #[cfg(feature = "cudnn")]
    return candle_core::cuda_backend::cudnn::conv_benchmark_searches();
    #[cfg(not(feature = "cudnn"))]
    0
}

/// Every device kind, in the order the app lists them.
pub const ALL: [DeviceKind; 3] = [DeviceKind::Cpu, DeviceKind::Cuda, DeviceKind::Metal];

/// Why `kind` cannot be used on this machine with this build, or `None` when it can.
///
/// The answer is found once per process (it opens shared libraries and starts the driver) and
/// kept; a GPU plugged in later needs a restart.
pub fn unavailable(kind: DeviceKind) -> Option<&'static str> {
    match kind {
        DeviceKind::Cpu => None,
        DeviceKind::Cuda => {
            static CUDA: OnceLock<Option<String>> = OnceLock::new();
            CUDA.get_or_init(cuda_unavailable).as_deref()
        }
        DeviceKind::Metal => {
            static METAL: OnceLock<Option<String>> = OnceLock::new();
            METAL.get_or_init(metal_unavailable).as_deref()
        }
    }
}

/// The devices that [`unavailable`] lets through.
pub fn usable() -> Vec<DeviceKind> {
    ALL.into_iter()
        .filter(|&d| unavailable(d).is_none())
        .collect()
}

/// Opens the requested device (the first GPU of that kind).
///
/// # Errors
/// [`ModelError::DeviceNotUsable`] with the reason from [`unavailable`];
/// [`ModelError::DeviceUnavailable`] when the backend itself fails to start.
pub fn open(kind: DeviceKind) -> Result<Device> {
    if let Some(reason) = unavailable(kind) {
        return Err(ModelError::DeviceNotUsable {
            device: kind,
            reason: reason.to_owned(),
        });
    }
    let opened = match kind {
        DeviceKind::Cpu => return Ok(Device::Cpu),
        DeviceKind::Cuda => Device::new_cuda(0),
        DeviceKind::Metal => Device::new_metal(0),
    };
    opened.map_err(|source| ModelError::DeviceUnavailable {
        device: kind,
        source,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_unavailable() -> Option<String> {
    Some(
        "this build has no CUDA support; build it with `cargo build --release --features cuda` \
         (README, \"On a GPU\")"
            .to_owned(),
    )
}

#[cfg(feature = "cuda")]
fn cuda_unavailable() -> Option<String> {
    use candle_core::cuda_backend::cudarc;

    // What candle's CUDA device opens when it is created: the driver, then cuBLAS (+Lt),
    // cuRAND and NVRTC. Each is looked up under the names cudarc would try.
    type Probe = unsafe fn() -> bool;
    #[allow(unused_mut)]
    let mut libraries: Vec<(&str, Probe)> = vec![
        (
            "the NVIDIA driver (libcuda.so.1)",
            cudarc::driver::sys::is_culib_present,
        ),
        ("cuBLAS (libcublas)", cudarc::cublas::sys::is_culib_present),
        (
            "cuBLASLt (libcublasLt)",
            cudarc::cublaslt::sys::is_culib_present,
        ),
        ("cuRAND (libcurand)", cudarc::curand::sys::is_culib_present),
        ("NVRTC (libnvrtc)", cudarc::nvrtc::sys::is_culib_present),
    ];
    // A `--features cudnn` build runs its convolutions through cuDNN, opened at the first one.
    #[cfg(feature = "cudnn")]
    libraries.push(("cuDNN 9 (libcudnn)", cudarc::cudnn::sys::is_culib_present));
    let missing: Vec<&str> = libraries
        .iter()
        // SAFETY: each probe only tries to dlopen NVIDIA's library under its standard names and
        // closes it again; loading runs that library's initialisers, which is what using CUDA
        // does anyway.
        .filter(|(_, present)| {
            #[allow(unsafe_code)]
            let found = unsafe { present() };
            !found
        })
        .map(|(name, _)| *name)
        .collect();
    if missing.first() == Some(&libraries[0].0) {
        return Some(
            "no NVIDIA driver on this machine (libcuda.so.1 not found); CUDA needs an NVIDIA GPU \
             and its driver"
                .to_owned(),
        );
    }
    if !missing.is_empty() {
        return Some(format!(
            "the NVIDIA driver is here but {} not found; install the CUDA {} libraries or put \
             their folder on LD_LIBRARY_PATH",
            join(&missing),
            cuda_major(),
        ));
    }
    if let Err(e) = cudarc::driver::result::init() {
        return Some(format!("the NVIDIA driver did not start: {e}"));
    }
    match cudarc::driver::result::device::get_count() {
        Ok(0) => Some("the NVIDIA driver sees no GPU".to_owned()),
        Ok(_) => None,
        Err(e) => Some(format!("the NVIDIA driver cannot list its GPUs: {e}")),
    }
}

#[cfg(feature = "cuda")]
fn cuda_major() -> &'static str {
    // Set by cudarc's build script from the toolkit the build used.
    option_env!("CUDA_MAJOR_VERSION").unwrap_or("13")
}

#[cfg(feature = "cuda")]
fn join(names: &[&str]) -> String {
    match names {
        [one] => format!("{one} is"),
        [rest @ .., last] => format!("{} and {last} are", rest.join(", ")),
        [] => String::new(),
    }
}

#[cfg(not(feature = "metal"))]
fn metal_unavailable() -> Option<String> {
    Some(if cfg!(target_os = "macos") {
        "this build has no Metal support; build it with `cargo build --release --features metal`"
            .to_owned()
    } else {
        "Metal is Apple's GPU interface; it exists only on macOS".to_owned()
    })
}

#[cfg(feature = "metal")]
fn metal_unavailable() -> Option<String> {
    // Creating the device is the check (it fails cleanly without a Metal GPU); the device itself
    // is made again by `open`.
    Device::new_metal(0)
        .err()
        .map(|e| format!("no Metal GPU: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_always_usable_and_listed_first() {
        assert_eq!(unavailable(DeviceKind::Cpu), None);
        assert_eq!(usable().first(), Some(&DeviceKind::Cpu));
        assert!(matches!(open(DeviceKind::Cpu), Ok(Device::Cpu)));
    }

    #[test]
    fn a_device_that_cannot_be_used_says_why_in_one_line() {
        for kind in [DeviceKind::Cuda, DeviceKind::Metal] {
            let Some(reason) = unavailable(kind) else {
                continue; // a machine with that GPU
            };
            assert!(!reason.contains('\n'), "{reason}");
            let err = open(kind).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with(&format!("cannot use {kind}: ")), "{err}");
            assert!(err.contains(reason), "{err}");
            assert!(!usable().contains(&kind));
        }
    }
}
