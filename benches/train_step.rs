//! Training throughput of the real engine, comparable to the PyTorch reference
//! (`torch_bench.py --task T --batch B --steps S`): median seconds per step after 3 warm-up
//! steps, as images (views, for two-view tasks) per second. Prints one JSON line.
//!
//!     cargo bench --bench train_step -- --task rotation --batch 128 --size 32 --steps 20

#![allow(clippy::print_stdout)]

use std::time::Duration;

use pretext::config::{DataSource, TaskKind, TrainConfig};
use pretext::train::{Command, Event, Outcome, Trainer};

const WARMUP: usize = 3;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let task: String = arg(&args, "--task", "rotation".to_string());
    let task = <TaskKind as clap::ValueEnum>::from_str(&task, true).map_err(anyhow::Error::msg)?;
    let batch: usize = arg(&args, "--batch", 128);
    let size: usize = arg(&args, "--size", 32);
    let steps: usize = arg(&args, "--steps", 20);
    let out = tempfile_dir()?;
    let config = TrainConfig {
        data: DataSource::Builtin {
            count: batch * (steps + WARMUP),
        },
        tasks: vec![task],
        task_weights: vec![1.0],
        epochs: 1,
        batch,
        size,
        out: out.clone(),
        preview_images: 1,
        ..TrainConfig::default()
    };
    let trainer = Trainer::spawn()?;
    trainer.send(Command::Start(Box::new(config)));
    let mut step_secs = Vec::new();
    let mut images = 0;
    loop {
        match trainer.events().recv_timeout(Duration::from_secs(3600))? {
            Event::Step(m) => {
                let n: usize = batch;
                images = n;
                step_secs.push(n as f64 / m.images_per_s);
            }
            Event::Finished { outcome, .. } => {
                if let Outcome::InvalidInput(e) | Outcome::Failed(e) = outcome {
                    anyhow::bail!(e);
                }
                break;
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    let mut timed: Vec<f64> = step_secs.into_iter().skip(WARMUP).collect();
    timed.sort_by(f64::total_cmp);
    let median = timed.get(timed.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "task": task.name(),
            "batch": batch,
            "size": size,
            "steps": timed.len(),
            "median_step_s": median,
            "images_per_s": images as f64 / median,
        })
    );
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("pretext-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
