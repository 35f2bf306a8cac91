//! The headless command line: `pretext train …` drives the same training engine as the app,
//! prints a progress bar and one line per epoch (or JSON lines), and leaves a run directory.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use crate::config::{DataSource, DeviceKind, MaskKind, TaskKind, TaskSettings, TrainConfig};
use crate::train::{Command, EpochSummary, Event, Outcome, StepMetrics, Trainer};

/// Exit code for input the program cannot use (bad folder, bad option, missing device).
pub const EXIT_INPUT: i32 = 2;
/// Exit code for a run that failed while training.
pub const EXIT_FAILED: i32 = 1;
/// Exit code when standard output was closed by its reader (`pretext train … | head`): what a
/// shell reports for a program ended by SIGPIPE. The program ends quietly, its run saved.
pub const EXIT_PIPE_CLOSED: i32 = 141;

/// Standard output can no longer be written (its reader has gone).
#[derive(Debug)]
pub struct PipeClosed;

/// Writes one line of results to standard output.
///
/// # Errors
/// [`PipeClosed`] when the write fails (a closed pipe): the caller ends quietly, never panics.
pub fn say(line: impl std::fmt::Display) -> Result<(), PipeClosed> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|_| PipeClosed)
}

/// Writes one diagnostic line to standard error; a failed write is dropped (nobody is left to
/// tell), so no output path can panic.
pub fn note(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `say(…)`, or return `$closed` from the enclosing function when standard output is closed.
macro_rules! say_or {
    ($closed:expr, $($arg:tt)*) => {
        if say(format_args!($($arg)*)).is_err() {
            return $closed;
        }
    };
}

#[derive(Debug, Parser)]
#[command(
    name = "pretext",
    version,
    about = "A lab for self-supervised learning: train an encoder on unlabelled images with pretext tasks.",
    long_about = "A lab for self-supervised learning: train an encoder on unlabelled images with pretext \
                  tasks.\n\nWith no subcommand, pretext is meant to open the desktop app (optionally on \
                  PATH). `pretext train` trains from the command line and writes a run directory.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Commands>,
    /// A folder of images to open in the desktop app.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Train an encoder on a folder of images (or the built-in scenes) without a window.
    Train(Box<TrainArgs>),
    /// Judge a run's encoder on labelled images: kNN per stage and a linear probe (trained vs
    /// random init vs raw pixels) and collapse gauges.
    Eval(EvalArgs),
    /// Measure training throughput: images per second of one task's training step, split into
    /// forward, backward, optimiser and data wait, with peak memory.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "rotation")]
    pub task: TaskKind,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Timed steps (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Use candle's stock operations instead of pretext's CPU kernels (for comparison).
    #[arg(long)]
    pub stock_ops: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Compute device; cuda and metal need a build with that cargo feature.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// Runs `pretext bench`; returns the process exit code.
pub fn bench(args: &BenchArgs) -> i32 {
    if args.stock_ops {
        crate::model::kernels::set_stock_ops(true);
    }
    let spec = crate::bench::BenchSpec {
        task: args.task,
        batch: args.batch,
        size: args.size,
        steps: args.steps,
        device: args.device,
    };
    if !args.json {
        note(format_args!(
            "benchmarking {} on {} at batch {}, {} px: {} warm-up + {} timed steps…",
            args.task.name(),
            args.device,
            args.batch,
            args.size,
            crate::bench::WARMUP,
            args.steps
        ));
    }
    match crate::bench::run(&spec) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(s) => say_or!(EXIT_PIPE_CLOSED, "{s}"),
                    Err(e) => {
                        note(format_args!("error: {e}"));
                        return EXIT_FAILED;
                    }
                }
            } else {
                say_or!(EXIT_PIPE_CLOSED, "{report}");
            }
            0
        }
        Err(e) => {
            note(format_args!("error: {e:#}"));
            if e.downcast_ref::<crate::bench::InvalidInput>().is_some() {
                EXIT_INPUT
            } else {
                EXIT_FAILED
            }
        }
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run directory whose latest weights are judged.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Labelled images (one subfolder per class) or `builtin[:N]` [default: the run's data].
    #[arg(long, value_name = "PATH|builtin")]
    pub data: Option<DataSource>,
    /// Also write z of every image with its file name and label to DIR/embeddings.csv and
    /// DIR/embeddings.npy.
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The newest weights of a run: its resume checkpoint, else its last epoch checkpoint.
fn run_weights(dir: &std::path::Path) -> Option<PathBuf> {
    let ck = dir.join(crate::train::run_dir::CHECKPOINT_DIR);
    let resume = ck.join(crate::train::run_dir::RESUME_FILE);
    if resume.is_file() {
        return Some(resume);
    }
    let mut epochs: Vec<PathBuf> = std::fs::read_dir(&ck)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    epochs.sort();
    epochs.pop()
}

fn pct(v: f64) -> String {
    format!("{:5.1}%", v * 100.0)
}

/// Runs `pretext eval`; returns the process exit code.
pub fn eval(args: &EvalArgs) -> i32 {
    match eval_inner(args) {
        Ok(code) => code,
        Err(e) => {
            note(format_args!("error: {e:#}"));
            EXIT_INPUT
        }
    }
}

fn eval_inner(args: &EvalArgs) -> anyhow::Result<i32> {
    use crate::model::{Model, checkpoint, open_device};
    use anyhow::Context;
    let config_path = args.run.join(crate::train::run_dir::CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "{} is not a run directory (no readable config.json)",
            args.run.display()
        )
    })?;
    let config: TrainConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid", config_path.display()))?;
    let weights = run_weights(&args.run)
        .with_context(|| format!("{} has no checkpoint", args.run.display()))?;
    let source = args.data.clone().unwrap_or_else(|| config.data.clone());
    let data = crate::data::load(
        &source,
        config.size,
        &|_, _| {},
        &std::sync::atomic::AtomicBool::new(false),
    )?;
    let device = open_device(config.device)?;
    let build = || -> anyhow::Result<(Model, Vec<Box<dyn crate::tasks::PretextTask>>)> {
        let m = Model::new(device.clone(), crate::tasks::input_channels(&config.tasks))?;
        let t = crate::tasks::build(&config.tasks, &config.settings, &m)?;
        m.init_weights(config.seed)?;
        Ok((m, t))
    };
    let (trained, _heads) = build()?;
    let (tensors, _) = checkpoint::read(&weights, &device)?;
    trained.load_state_dict(&tensors, &weights.display().to_string())?;
    let (random, _heads2) = build()?;
    if let Some(dir) = &args.export {
        let z = crate::eval::embed::stage_features(&trained, &data)?
            .pop()
            .unwrap_or_default();
        let (csv, npy) = crate::eval::embed::export(dir, &data, &z)
            .with_context(|| format!("cannot write embeddings to {}", dir.display()))?;
        note(format_args!(
            "Embeddings: {} and {}",
            csv.display(),
            npy.display()
        ));
    }
    let started = Instant::now();
    const CLOSED: anyhow::Result<i32> = Ok(EXIT_PIPE_CLOSED);
    let r = match crate::eval::embed::evaluate(&trained, &random, &data)? {
        Ok(r) => r,
        Err(why) => {
            let g = crate::eval::embed::Gauges {
                alignment: Some(crate::eval::embed::view_alignment(&trained, &data)?),
                ..crate::eval::embed::gauges(
                    &crate::eval::embed::stage_features(&trained, &data)?[3],
                )
            };
            if args.json {
                say_or!(
                    CLOSED,
                    "{}",
                    serde_json::json!({
                        "weights": weights,
                        "data": source.to_string(),
                        "labelled": data.labels.is_some(),
                        "not_measured": why.to_string(),
                        "gauges": g,
                    })
                );
            } else {
                say_or!(
                    CLOSED,
                    "kNN and linear probe on {source}: not measured ({why}). Only the gauges of z can be given."
                );
                say_or!(
                    CLOSED,
                    "std of L2-normalised z {:.4} (1/√d = {:.4}), RankMe {:.1} of {}, uniformity {:.3}, alignment {:.3}",
                    g.std_of_l2_normalized,
                    g.std_reference,
                    g.rankme,
                    g.dimensions,
                    g.uniformity,
                    g.alignment.unwrap_or(f64::NAN)
                );
            }
            return Ok(0);
        }
    };
    if args.json {
        say_or!(
            CLOSED,
            "{}",
            serde_json::json!({ "weights": weights, "data": source.to_string(), "labelled": true, "report": r, "seconds": started.elapsed().as_secs_f64() })
        );
        return Ok(0);
    }
    say_or!(
        CLOSED,
        "Evaluated {} on {source}: {} images, {} classes, {} held out",
        weights.display(),
        r.images,
        r.classes,
        r.held_out
    );
    say_or!(
        CLOSED,
        "kNN accuracy (k = {}, t = {})   trained   random init",
        crate::eval::embed::KNN_K,
        crate::eval::embed::KNN_T
    );
    for s in &r.knn {
        say_or!(
            CLOSED,
            "  {:<28} {}    {}",
            s.stage,
            pct(s.trained),
            pct(s.random)
        );
    }
    say_or!(CLOSED, "  {:<28} {}", "raw pixels", pct(r.knn_raw_pixels));
    say_or!(
        CLOSED,
        "Linear probe on z               {}    {}    (raw pixels {})",
        pct(r.probe_trained),
        pct(r.probe_random),
        pct(r.probe_raw_pixels)
    );
    let g = &r.gauges_trained;
    say_or!(
        CLOSED,
        "Gauges of z: std of L2-normalised {:.4} (1/√d = {:.4}; random init {:.4}), RankMe {:.1} of {} (random {:.1}), uniformity {:.3} (random {:.3})",
        g.std_of_l2_normalized,
        g.std_reference,
        r.gauges_random.std_of_l2_normalized,
        g.rankme,
        g.dimensions,
        r.gauges_random.rankme,
        g.uniformity,
        r.gauges_random.uniformity
    );
    say_or!(
        CLOSED,
        "Alignment of two augmented views (E‖z − z⁺‖², 0..4, lower = views agree): {:.3} (random init {:.3})",
        g.alignment.unwrap_or(f64::NAN),
        r.gauges_random.alignment.unwrap_or(f64::NAN)
    );
    Ok(0)
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Images to learn from: a folder (scanned recursively; first-level subfolders become class
    /// labels), `builtin` (2,400 generated scenes in 8 classes) or `builtin:N` (N scenes).
    #[arg(long, value_name = "PATH|builtin")]
    pub data: Option<DataSource>,
    /// Pretext task(s), comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "TASK")]
    pub task: Vec<TaskKind>,
    /// Loss weight per task, comma-separated, in the order of --task (default: all 1).
    #[arg(long, value_delimiter = ',', value_name = "W")]
    pub task_weights: Vec<f64>,
    /// Total number of epochs (with --resume: the new total) [default: 5].
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Images per batch [default: 128].
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Working image size in pixels, a multiple of 4 from 16 to 256 [default: 32].
    #[arg(long, value_name = "PX")]
    pub size: Option<usize>,
    /// Learning rate of AdamW [default: 0.001]. With --resume: a new learning rate.
    #[arg(long, value_name = "F")]
    pub lr: Option<f64>,
    /// Weight decay of AdamW [default: 0.01].
    #[arg(long, value_name = "F")]
    pub weight_decay: Option<f64>,
    /// Random seed: the same seed gives the same run on the CPU [default: 0].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Compute device; cuda and metal need a build with that cargo feature [default: cpu].
    #[arg(long, value_enum, value_name = "D")]
    pub device: Option<DeviceKind>,
    /// Folder under which the run directory is created [default: runs].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its last checkpoint (its config.json is used; --epochs
    /// and --lr may change it).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = [
        "data", "task", "task_weights", "batch", "size", "seed", "weight_decay", "out", "device",
        "temperature", "mask", "mask_size", "init_from", "color_threshold", "patch_gap", "crop_min_scale",
        "flip_p", "jitter_p", "brightness", "contrast", "saturation", "hue", "gray_p", "blur_p",
    ])]
    pub resume: Option<PathBuf>,
    /// Contrastive: NT-Xent temperature τ [default: 0.5].
    #[arg(long, value_name = "T", help_heading = "Task settings")]
    pub temperature: Option<f64>,
    /// Inpainting: which region is hidden [default: center].
    #[arg(long, value_enum, value_name = "KIND", help_heading = "Task settings")]
    pub mask: Option<MaskKind>,
    /// Inpainting: side of the hidden square as a share of the image side [default: 0.5].
    #[arg(long, value_name = "F", help_heading = "Task settings")]
    pub mask_size: Option<f64>,
    /// Colorization: a pixel counts as right within this a*b* distance [default: 10].
    #[arg(long, value_name = "D", help_heading = "Task settings")]
    pub color_threshold: Option<f64>,
    /// Patch prediction: gap between patches as a share of a grid cell [default: 0.25].
    #[arg(long, value_name = "F", help_heading = "Task settings")]
    pub patch_gap: Option<f64>,
    /// Contrastive views: smallest area share a random crop keeps [default: 0.2].
    #[arg(
        long,
        value_name = "F",
        help_heading = "Augmentations (contrastive views)"
    )]
    pub crop_min_scale: Option<f64>,
    /// Probability of a horizontal flip [default: 0.5].
    #[arg(
        long,
        value_name = "P",
        help_heading = "Augmentations (contrastive views)"
    )]
    pub flip_p: Option<f64>,
    /// Probability of colour jitter [default: 0.8].
    #[arg(
        long,
        value_name = "P",
        help_heading = "Augmentations (contrastive views)"
    )]
    pub jitter_p: Option<f64>,
    /// Colour jitter: brightness strength [default: 0.4].
    #[arg(
        long,
        value_name = "S",
        help_heading = "Augmentations (contrastive views)"
    )]
    pub brightness: Option<f64>,
    /// Colour jitter: contrast strength [default: 0.4].
    #[arg(
        long,
        value_name = "S",
        help_heading = "Augmentations (contrastive views)"
    )]
    pub contrast: Option<f64>,
    /// Colour jitter: saturation strength [default: 0.4].
    #[arg(
        long,
        value_name = "S",
        help_heading = "Augmentations (contrastive views)"
    )]
    pub saturation: Option<f64>,
    /// Colour jitter: hue shift, in turns, at most 0.5 [default: 0.1].
    #[arg(
        long,
        value_name = "S",
        help_heading = "Augmentations (contrastive views)"
    )]
    pub hue: Option<f64>,
    /// Probability of turning a view grey [default: 0.2].
    #[arg(
        long,
        value_name = "P",
        help_heading = "Augmentations (contrastive views)"
    )]
    pub gray_p: Option<f64>,
    /// Probability of a Gaussian blur [default: 0].
    #[arg(
        long,
        value_name = "P",
        help_heading = "Augmentations (contrastive views)"
    )]
    pub blur_p: Option<f64>,
    /// Start from the weights in FILE (a pretext checkpoint, or a PyTorch state_dict saved with
    /// safetensors) instead of a random initialisation.
    #[arg(long, value_name = "FILE")]
    pub init_from: Option<PathBuf>,
    /// Labelled data: measure kNN accuracy every N steps as well as after every epoch (0 = only
    /// after epochs) [default: 100].
    #[arg(long, value_name = "N")]
    pub knn_every: Option<usize>,
    /// Stop after this many minutes (the run is saved and can be resumed or evaluated).
    #[arg(long, value_name = "M")]
    pub minutes: Option<f64>,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

impl TrainArgs {
    /// The configuration of a new run: defaults overridden by the options given.
    pub fn config(&self) -> TrainConfig {
        let d = TrainConfig::default();
        let tasks = if self.task.is_empty() {
            d.tasks.clone()
        } else {
            self.task.clone()
        };
        let task_weights = if self.task_weights.is_empty() {
            vec![1.0; tasks.len()]
        } else {
            self.task_weights.clone()
        };
        TrainConfig {
            data: self.data.clone().unwrap_or(d.data),
            tasks,
            task_weights,
            epochs: self.epochs.unwrap_or(d.epochs),
            batch: self.batch.unwrap_or(d.batch),
            size: self.size.unwrap_or(d.size),
            lr: self.lr.unwrap_or(d.lr),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            seed: self.seed.unwrap_or(d.seed),
            device: self.device.unwrap_or(d.device),
            out: self.out.clone().unwrap_or(d.out),
            preview_images: d.preview_images,
            settings: self.settings(),
            init_from: self.init_from.clone(),
            knn_every: self.knn_every.unwrap_or(d.knn_every),
        }
    }

    fn settings(&self) -> TaskSettings {
        let d = TaskSettings::default();
        let a = &d.augment;
        TaskSettings {
            temperature: self.temperature.unwrap_or(d.temperature),
            mask: self.mask.unwrap_or(d.mask),
            mask_size: self.mask_size.unwrap_or(d.mask_size),
            color_threshold: self.color_threshold.unwrap_or(d.color_threshold),
            patch_gap: self.patch_gap.unwrap_or(d.patch_gap),
            augment: crate::config::Augment {
                crop_min_scale: self.crop_min_scale.unwrap_or(a.crop_min_scale),
                flip_p: self.flip_p.unwrap_or(a.flip_p),
                jitter_p: self.jitter_p.unwrap_or(a.jitter_p),
                brightness: self.brightness.unwrap_or(a.brightness),
                contrast: self.contrast.unwrap_or(a.contrast),
                saturation: self.saturation.unwrap_or(a.saturation),
                hue: self.hue.unwrap_or(a.hue),
                gray_p: self.gray_p.unwrap_or(a.gray_p),
                blur_p: self.blur_p.unwrap_or(a.blur_p),
            },
        }
    }
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal.
struct Progress {
    enabled: bool,
    drawn: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            enabled: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    fn draw(&mut self, line: &str) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}").and_then(|()| err.flush());
            self.drawn = true;
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K").and_then(|()| err.flush());
            self.drawn = false;
        }
    }
}

fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn step_line(m: &StepMetrics, epoch_start: Instant) -> String {
    let metrics: Vec<String> = m
        .tasks
        .iter()
        .map(|t| format!("{} {}", t.metric_info.name, t.metric_info.format(t.metric)))
        .collect();
    let elapsed = epoch_start.elapsed().as_secs_f64();
    let eta = if m.batch > 0 {
        elapsed / m.batch as f64 * (m.batches - m.batch) as f64
    } else {
        0.0
    };
    format!(
        "Epoch {}/{} {} {}/{}  loss {:.3}  {}  {:.0} img/s  ETA {:.0}s",
        m.epoch,
        m.epochs,
        bar(m.batch, m.batches, 24),
        m.batch,
        m.batches,
        m.loss,
        metrics.join("  "),
        m.images_per_s,
        eta
    )
}

/// `Epoch 1/5 Loss: 1.982 Proxy accuracy: 62%` (several tasks: one metric each).
pub fn epoch_line(e: &EpochSummary) -> String {
    let baseline = |t: &crate::train::TaskMetrics| match (t.baseline, t.metric_info.baseline) {
        (Some(b), Some(name)) => format!(" ({name} {})", t.metric_info.format(b)),
        _ => String::new(),
    };
    let mut line = format!("Epoch {}/{} Loss: {:.3}", e.epoch, e.epochs, e.loss);
    if let [t] = e.tasks.as_slice() {
        line.push_str(&format!(
            " {}: {}{}",
            t.metric_info.label,
            t.metric_info.format(t.metric),
            baseline(t)
        ));
    } else {
        for t in &e.tasks {
            line.push_str(&format!(
                " | {} loss {:.3} {}: {}{}",
                t.task,
                t.loss,
                t.metric_info.name,
                t.metric_info.format(t.metric),
                baseline(t)
            ));
        }
    }
    line
}

fn epoch_json(e: &EpochSummary) -> serde_json::Value {
    let first = e.tasks.first();
    serde_json::json!({
        "epoch": e.epoch,
        "epochs": e.epochs,
        "task": e.tasks.iter().map(|t| t.task.name()).collect::<Vec<_>>().join(","),
        "loss": e.loss,
        "proxy_metric": first.map(|t| t.metric_info.name),
        "proxy_value": first.map(|t| t.metric),
        "baseline": first.and_then(|t| t.baseline),
        "images_per_s": e.images_per_s,
        "step": e.step,
        "wall_s": e.wall_s,
        "tasks": e.tasks.iter().map(|t| serde_json::json!({
            "task": t.task.name(),
            "loss": t.loss,
            "proxy_metric": t.metric_info.name,
            "proxy_value": t.metric,
            "baseline": t.baseline,
            "baseline_name": t.metric_info.baseline,
        })).collect::<Vec<_>>(),
    })
}

/// Runs `pretext train`; returns the process exit code.
pub fn train(args: &TrainArgs) -> i32 {
    let command = match &args.resume {
        Some(dir) => Command::Continue {
            run_dir: dir.clone(),
            epochs: args.epochs,
            lr: args.lr,
        },
        None => {
            let config = args.config();
            if let Err(m) = config.validate() {
                note(format_args!("error: {m}"));
                return EXIT_INPUT;
            }
            Command::Start(Box::new(config))
        }
    };
    let trainer = match Trainer::spawn() {
        Ok(t) => t,
        Err(e) => {
            note(format_args!("error: cannot start the training thread: {e}"));
            return EXIT_FAILED;
        }
    };
    trainer.send(command);
    let mut progress = Progress::new();
    let mut epoch_start = Instant::now();
    let mut nan_stop = false;
    let deadline = args
        .minutes
        .filter(|m| m.is_finite() && *m > 0.0)
        .map(|m| Instant::now() + std::time::Duration::from_secs_f64(m * 60.0));
    let mut time_stop = false;
    let mut pipe_closed = false;
    let mut knn_explained = false;
    for event in trainer.events() {
        match event {
            Event::Loading { done, total } => {
                progress.draw(&format!(
                    "Loading images {} {done}/{total}",
                    bar(done, total, 24)
                ));
            }
            Event::DataReady(s) => {
                progress.clear();
                let classes = if s.classes.is_empty() {
                    "unlabelled".to_string()
                } else {
                    format!("{} classes", s.classes.len())
                };
                note(format_args!(
                    "Data: {} images ({classes}) from {} at {} px, loaded in {:.2} s ({:.0} files/s)",
                    s.images,
                    s.source,
                    s.size,
                    s.load_secs,
                    (s.images + s.skipped.len()) as f64 / s.load_secs.max(1e-9)
                ));
                for (list, what) in [
                    (&s.skipped, "Skipped {} file(s) that could not be used:"),
                    (&s.partial, "Used {} file(s) only partly decoded:"),
                    (&s.ignored, "Ignored {} entr(ies) on purpose:"),
                ] {
                    if list.is_empty() {
                        continue;
                    }
                    note(what.replace("{}", &list.len().to_string()));
                    for (path, reason) in list.iter().take(5) {
                        note(format_args!("  {path}: {reason}"));
                    }
                    if list.len() > 5 {
                        note(format_args!("  … and {} more", list.len() - 5));
                    }
                }
            }
            Event::RunStarted {
                run_dir,
                start_step,
                parameters,
                ..
            } => {
                if start_step > 0 {
                    note(format_args!(
                        "Continuing {} from step {start_step}",
                        run_dir.display()
                    ));
                } else {
                    note(format_args!(
                        "Run directory: {} ({parameters} parameters)",
                        run_dir.display()
                    ));
                }
                epoch_start = Instant::now();
            }
            Event::Step(m) => {
                progress.draw(&step_line(&m, epoch_start));
                if !time_stop && deadline.is_some_and(|d| Instant::now() >= d) {
                    time_stop = true;
                    progress.clear();
                    note(format_args!(
                        "Time limit reached after step {} (epoch {}): stopping and saving.",
                        m.step, m.epoch
                    ));
                    trainer.send(Command::Stop);
                }
            }
            Event::Knn(k) if !args.json && k.stages.is_empty() => {
                if let Some(why) = k.not_measured.filter(|_| !knn_explained) {
                    knn_explained = true;
                    progress.clear();
                    note(format_args!("kNN accuracy: not measured ({why})"));
                }
            }
            Event::Knn(k) if !args.json => {
                progress.clear();
                let stages: Vec<String> = k
                    .stages
                    .iter()
                    .map(|(s, a)| format!("{s} {:.1}%", a * 100.0))
                    .collect();
                let pixels = k
                    .raw_pixels
                    .map(|p| format!(" (raw pixels {:.1}%)", p * 100.0))
                    .unwrap_or_default();
                note(format_args!(
                    "kNN at step {}: {}{pixels}",
                    k.step,
                    stages.join(" · ")
                ));
            }
            Event::Epoch(e) => {
                progress.clear();
                let line = if args.json {
                    epoch_json(&e).to_string()
                } else {
                    epoch_line(&e)
                };
                if !pipe_closed && say(line).is_err() {
                    // Nobody reads any more: end the run quietly, saving it to be resumed.
                    pipe_closed = true;
                    trainer.send(Command::Stop);
                }
                epoch_start = Instant::now();
            }
            Event::Warning(w) => {
                progress.clear();
                note(format_args!("warning: {w}"));
            }
            Event::Error(e) => {
                progress.clear();
                note(format_args!("error: {e}"));
            }
            Event::Paused { reason, .. } => {
                if reason == crate::train::PauseReason::NonFiniteLoss {
                    // Nobody can lower the learning rate here: end the run, keeping its files.
                    nan_stop = true;
                    trainer.send(Command::Stop);
                }
            }
            Event::Finished { run_dir, outcome } => {
                progress.clear();
                let code = match outcome {
                    Outcome::Completed => 0,
                    Outcome::Stopped if nan_stop => EXIT_FAILED,
                    Outcome::Stopped => 0,
                    Outcome::InvalidInput(_) => EXIT_INPUT,
                    Outcome::Failed(_) => EXIT_FAILED,
                };
                if pipe_closed {
                    return EXIT_PIPE_CLOSED;
                }
                if let Some(dir) = run_dir {
                    let line = if args.json {
                        serde_json::json!({ "run_dir": dir, "exit_code": code }).to_string()
                    } else {
                        format!("Run directory: {}", dir.display())
                    };
                    if say(line).is_err() {
                        return EXIT_PIPE_CLOSED;
                    }
                }
                return code;
            }
            Event::Preview(_)
            | Event::Inspection { .. }
            | Event::Math(_)
            | Event::Knn(_)
            | Event::Embedding(_)
            | Event::CheckpointSaved { .. }
            | Event::Resumed
            | Event::LrChanged(_) => {}
        }
    }
    note(format_args!(
        "error: the training thread ended unexpectedly"
    ));
    EXIT_FAILED
}
