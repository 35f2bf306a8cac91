//! Training throughput of the real engine, comparable to the PyTorch reference
//! (`torch_bench.py --task T --batch B --steps S`); the same measurement as `pretext bench`.
//! Prints one JSON line.
//!
//!     cargo bench --bench train_step -- --task rotation --batch 128 --size 32 --steps 20 [--device cuda]

#![allow(clippy::print_stdout, clippy::print_stderr)]

use pretext::bench::{BenchSpec, run};
use pretext::config::{DeviceKind, TaskKind};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    pretext::model::kernels::init();
    let args: Vec<String> = std::env::args().collect();
    let task: String = arg(&args, "--task", "rotation".to_string());
    let task = <TaskKind as clap::ValueEnum>::from_str(&task, true).map_err(anyhow::Error::msg)?;
    let spec = BenchSpec {
        task,
        batch: arg(&args, "--batch", 128),
        size: arg(&args, "--size", 32),
        steps: arg(&args, "--steps", 20),
        device: <DeviceKind as clap::ValueEnum>::from_str(
            &arg(&args, "--device", "cpu".to_string()),
            true,
        )
        .map_err(anyhow::Error::msg)?,
    };
    println!("{}", serde_json::to_string(&run(&spec)?)?);
    Ok(())
}
