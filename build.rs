//! Build script: says so when libjpeg-turbo (compiled by the `mozjpeg-sys` dependency, whose
//! own notice cargo hides) will lack its SIMD code because nasm is not installed — the one
//! thing in this build that depends on a tool a fresh machine may not have — and, with the
//! `cuda` feature, compiles pretext's own CUDA kernels (batch norm) to PTX with nvcc, which that
//! feature needs anyway for candle's kernels.
// A build script talks to cargo through standard output; there is no terminal to close.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PATH");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let x86 = arch == "x86_64" || arch == "x86";
    if x86 && Command::new("nasm").arg("-v").output().is_err() {
        println!(
            "cargo:warning=nasm is not installed: libjpeg-turbo is built without its SIMD code, \
             so camera photos open about 10% slower (install nasm, e.g. `apt-get install nasm`, \
             then `cargo clean -p mozjpeg-sys` and build again)"
        );
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_ptx("src/model/kernels/norm/batch_norm.cu", "batch_norm.ptx");
    }
}

/// `src` compiled to PTX as `OUT_DIR/name`, for the compute capability in `CUDA_COMPUTE_CAP`
/// (as candle's kernels; e.g. 90 for an H100) or else 7.5, the oldest CUDA 13 supports: the
/// driver compiles PTX for the GPU it runs on, so one built for an older GPU runs on newer ones.
/// nvcc from `NVCC`, else `CUDA_ROOT/bin`, else `PATH`.
fn compile_ptx(src: &str, name: &str) {
    println!("cargo:rerun-if-changed={src}");
    for var in ["CUDA_COMPUTE_CAP", "NVCC", "CUDA_ROOT"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .map(|v| v.trim().replace('.', ""))
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| "75".to_owned());
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CUDA_ROOT")
                .map(|root| PathBuf::from(root).join("bin/nvcc"))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("nvcc"))
        });
    let Some(out) = std::env::var_os("OUT_DIR").map(|d| PathBuf::from(d).join(name)) else {
        fail("cargo did not set OUT_DIR");
    };
    let status = Command::new(&nvcc)
        .arg("--ptx")
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg("-O3")
        // Products and sums rounded apart, as Rust does: the same values as the CPU kernels.
        .arg("--fmad=false")
        .arg("-o")
        .arg(&out)
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!("{} could not compile {src} ({s})", nvcc.display())),
        Err(e) => fail(&format!(
            "the cuda feature needs the CUDA toolkit's nvcc, and {} could not be run ({e}): \
             install a toolkit (scripts/cuda-toolkit.sh) or set NVCC",
            nvcc.display()
        )),
    }
}

/// Ends the build with `why`.
fn fail(why: &str) -> ! {
    println!("cargo:warning={why}");
    std::process::exit(1)
}
