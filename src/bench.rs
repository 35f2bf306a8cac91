//! Training-step throughput of the real engine, comparable to the PyTorch reference
//! (`torch_bench.py --task T --batch B --steps S`): the median step after a warm-up, as images
//! (views, for the two-view contrastive task) per second, with the step split into forward,
//! backward, optimiser and data wait, and the process's peak memory. On pretext's CPU kernels
//! it also measures the machine's matrix-product peak ([`crate::model::kernels::peak_gflops`])
//! and counts the step's arithmetic, so a throughput comes with its share of the ceiling.

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
    /// The processor's model name and the threads the kernels use.
    pub cpu: String,
    /// The step's matrix-product arithmetic per image (the convolutions; forward and backward),
    /// in GFLOP; `None` on candle's stock ops, which are not counted.
    pub gflop_per_image: Option<f64>,
    /// This machine's fp32 matrix-product peak (2048² product on all the kernels' threads),
    /// in GFLOP/s; measured on the CPU only.
    pub peak_gflops: Option<f64>,
    /// `peak_gflops / gflop_per_image`: images/s if the step were nothing but matrix products
    /// at the peak.
    pub ceiling_images_per_s: Option<f64>,
    /// `images_per_s / ceiling_images_per_s`.
    pub share_of_ceiling: Option<f64>,
}

/// The processor's model name ([`crate::compare::cpu_model`]) and the number of hardware
/// threads.
pub fn cpu_description() -> String {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    format!("{}, {threads} threads", crate::compare::cpu_model())
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
    let mut config = TrainConfig {
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
    // The network sees `size`-pixel inputs in every task, as in the PyTorch peer: two-view
    // methods draw their views at the full size here (training defaults to half-size views).
    config.settings.augment.view_scale = 1.0;
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
    let images_per_s = images as f64 / step_s;
    let flop = median(timed.iter().map(|m| m.timing.matmul_flop as f64).collect());
    let on_kernels = spec.device == DeviceKind::Cpu
        && crate::model::kernels::applies(&candle_core::Device::Cpu, candle_core::DType::F32);
    let gflop_per_image = (on_kernels && flop > 0.0).then(|| flop / images as f64 / 1e9);
    let peak = (spec.device == DeviceKind::Cpu).then(|| crate::model::kernels::peak_gflops(5));
    let ceiling = gflop_per_image.zip(peak).map(|(g, p)| p / g);
    Ok(BenchReport {
        task: spec.task.name().to_string(),
        batch: spec.batch,
        size: spec.size,
        steps: timed.len(),
        device: spec.device.to_string(),
        ops: if on_kernels {
            "pretext kernels".into()
        } else {
            "candle stock ops".into()
        },
        median_step_s: step_s,
        images_per_s,
        split,
        peak_rss_mib: peak_rss_mib(),
        cpu: cpu_description(),
        gflop_per_image,
        peak_gflops: peak,
        ceiling_images_per_s: ceiling,
        share_of_ceiling: ceiling.map(|c| images_per_s / c),
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
            Some(m) => writeln!(f, "  peak memory {m:.0} MiB")?,
            None => writeln!(f, "  peak memory: not measured on this system")?,
        }
        write!(f, "  {}", self.cpu)?;
        if let Some(p) = self.peak_gflops {
            write!(f, " · matrix-product peak {p:.0} GFLOP/s")?;
        }
        if let (Some(g), Some(c), Some(s)) = (
            self.gflop_per_image,
            self.ceiling_images_per_s,
            self.share_of_ceiling,
        ) {
            write!(
                f,
                "\n  {:.3} GFLOP per image in matrix products: ceiling {c:.0} images/s, {:.0}% of it reached",
                g,
                100.0 * s
            )?;
        }
        Ok(())
    }
}
