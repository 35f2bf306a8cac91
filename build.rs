//! Build script: says so when libjpeg-turbo (compiled by the `mozjpeg-sys` dependency, whose
//! own notice cargo hides) will lack its SIMD code because nasm is not installed — the one
//! thing in this build that depends on a tool a fresh machine may not have.
// A build script talks to cargo through standard output; there is no terminal to close.
#![allow(clippy::print_stdout)]

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
}
