//! Training-step throughput of the real engine, comparable to the PyTorch reference
//! (`torch_bench.py --task T --batch B --steps S`): the median step after a warm-up, as images
//! (views, for the two-view contrastive task) per second, with the step split into forward,
//! backward, optimiser and data wait, and the process's peak memory.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::config::{DataSource, DeviceKind, TaskKind, TrainConfig};
use crate::train::{Command, Event, Outcome, Trainer};

/// Steps run before timing starts (allocator and caches settle).
pub const WARMUP: usize = 3;

#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub task: TaskKind,
    pub batch: usize,
    pub size: usize,
    pub steps: usize,
    /// cuda and metal need a build with that cargo feature.
    pub device: DeviceKind,
}

/// A benchmark the engine refused to start (e.g. a device this build lacks).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// Medians over the timed steps, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Split {
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    pub data_wait_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub task: String,
    pub batch: usize,
    pub size: usize,
    pub steps: usize,
    pub device: String,
    /// "pretext kernels" or "candle stock ops" (always candle's ops off the CPU).
    pub ops: String,
    pub median_step_s: f64,
    /// Images (or views) per second at the median step.
    pub images_per_s: f64,
    pub split: Split,
    /// Peak resident memory of the process (Linux), in MiB.
    pub peak_rss_mib: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Peak resident set size of this process, from /proc/self/status (Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Trains `spec.steps + WARMUP` steps on generated data in a temporary run directory and
/// reports the timed steps.
pub fn run(spec: &BenchSpec) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(spec.steps > 0, "--steps must be at least 1");
    let out: PathBuf = std::env::temp_dir().join(format!("pretext-bench-{}", std::process::id()));
    let config = TrainConfig {
        data: DataSource::Builtin {
            count: spec.batch * (spec.steps + WARMUP),
        },
        tasks: vec![spec.task],
        task_weights: vec![1.0],
        epochs: 1,
        batch: spec.batch,
        size: spec.size,
        out: out.clone(),
        preview_images: 1,
        device: spec.device,
        ..TrainConfig::default()
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let trainer = Trainer::spawn()?;
    trainer.send(Command::Start(Box::new(config)));
    let mut steps = Vec::new();
    let result = loop {
        match trainer.events().recv_timeout(Duration::from_secs(3600)) {
            Ok(Event::Step(m)) => steps.push(m),
            Ok(Event::Finished { outcome, .. }) => match outcome {
                Outcome::InvalidInput(e) => break Err(anyhow::Error::new(InvalidInput(e))),
                Outcome::Failed(e) => break Err(anyhow::anyhow!(e)),
                _ => break Ok(()),
            },
            Ok(_) => {}
            Err(e) => break Err(anyhow::anyhow!("the benchmark stopped answering: {e}")),
        }
    };
    let _ = std::fs::remove_dir_all(&out);
    result?;
    let timed: Vec<_> = steps.into_iter().skip(WARMUP).collect();
    anyhow::ensure!(!timed.is_empty(), "no step was timed");
    let images = timed.first().map_or(spec.batch, |m| m.images);
    let step_s = median(timed.iter().map(|m| m.step_s + m.data_wait_s).collect());
    let split = Split {
        forward_s: median(timed.iter().map(|m| m.timing.forward_s).collect()),
        backward_s: median(timed.iter().map(|m| m.timing.backward_s).collect()),
        optimizer_s: median(timed.iter().map(|m| m.timing.optimizer_s).collect()),
        data_wait_s: median(timed.iter().map(|m| m.data_wait_s).collect()),
    };
    Ok(BenchReport {
        task: spec.task.name().to_string(),
        batch: spec.batch,
        size: spec.size,
        steps: timed.len(),
        device: spec.device.to_string(),
        ops: if spec.device == DeviceKind::Cpu
            && crate::model::kernels::applies(&candle_core::Device::Cpu, candle_core::DType::F32)
        {
            "pretext kernels".into()
        } else {
            "candle stock ops".into()
        },
        median_step_s: step_s,
        images_per_s: images as f64 / step_s,
        split,
        peak_rss_mib: peak_rss_mib(),
    })
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |s: f64| s * 1e3;
        writeln!(
            f,
            "{} · batch {} · {} px · {} timed steps · {} · {}",
            self.task, self.batch, self.size, self.steps, self.device, self.ops
        )?;
        writeln!(
            f,
            "  {:.1} images/s  (median step {:.1} ms)",
            self.images_per_s,
            ms(self.median_step_s)
        )?;
        writeln!(
            f,
            "  forward {:.1} ms · backward {:.1} ms · optimiser {:.1} ms · data wait {:.2} ms",
            ms(self.split.forward_s),
            ms(self.split.backward_s),
            ms(self.split.optimizer_s),
            ms(self.split.data_wait_s)
        )?;
        match self.peak_rss_mib {
            Some(m) => write!(f, "  peak memory {m:.0} MiB"),
            None => write!(f, "  peak memory: not measured on this system"),
        }
    }
}
