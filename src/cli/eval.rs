//! `pretext eval`: a run's encoder judged on labelled images (kNN per stage, a linear probe, the
//! collapse gauges), trained against random init and raw pixels. With `--run`, the result is
//! also written into the run directory as `eval.json` ([`crate::eval::judge::EvalFile`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::output::{PipeClosed, error_chain, note, say};
use super::{EXIT_INPUT, EXIT_PIPE_CLOSED};
use crate::config::{DataSource, TaskKind, TrainConfig};
use crate::data::Dataset;
use crate::data::preprocess::Preprocessing;
use crate::eval::NotMeasured;
use crate::eval::embed::{self, EvalReport, Gauges};
use crate::eval::judge::{self, EvalFile, Models};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run directory whose latest weights are judged; the result is also written there as
    /// eval.json.
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "weights")]
    pub run: Option<PathBuf>,
    /// Judge a weights file instead: a pretext checkpoint, or a PyTorch `state_dict` of the
    /// reference encoder saved with safetensors (needs --data).
    #[arg(long, value_name = "FILE", conflicts_with = "run", requires = "data")]
    pub weights: Option<PathBuf>,
    /// Working size for --weights [default: the file's `preprocessing` metadata, else 32].
    #[arg(long, value_name = "PX", requires = "weights")]
    pub size: Option<usize>,
    /// Labelled images (one subfolder per class), `builtin[:N]` or `glyphs[:N]` [default: the
    /// run's data].
    #[arg(long, value_name = "PATH|builtin|glyphs")]
    pub data: Option<DataSource>,
    /// Also write z of every image with its file name and label to DIR/embeddings.csv and
    /// DIR/embeddings.npy.
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pretext eval`; returns the process exit code.
pub fn eval(args: &EvalArgs) -> i32 {
    match eval_inner(args) {
        Ok(Ok(())) => 0,
        Ok(Err(PipeClosed)) => EXIT_PIPE_CLOSED,
        Err(e) => {
            note(format_args!("error: {}", error_chain(&e)));
            EXIT_INPUT
        }
    }
}

/// A run's encoder with its trained weights and at its random init, and the images to judge it
/// on.
struct Judged {
    weights: PathBuf,
    source: DataSource,
    data: Dataset,
    models: Models,
}

fn eval_inner(args: &EvalArgs) -> anyhow::Result<Result<(), PipeClosed>> {
    let j = load(args)?;
    if let Some(dir) = &args.export {
        let z = embed::stage_features(&j.models.trained, &j.data)?
            .pop()
            .unwrap_or_default();
        let (csv, npy) = embed::export(dir, &j.data, &z)
            .with_context(|| format!("cannot write embeddings to {}", dir.display()))?;
        note(format_args!(
            "Embeddings: {} and {}",
            csv.display(),
            npy.display()
        ));
    }
    let started = Instant::now();
    Ok(
        match embed::evaluate(&j.models.trained, &j.models.random, &j.data)? {
            Ok(r) => {
                let seconds = started.elapsed().as_secs_f64();
                if let Some(run) = &args.run {
                    EvalFile::new(&j.data, Ok(&r), &r.gauges_trained, seconds)
                        .at_step(j.models.step)
                        .write(run)?;
                }
                if args.json {
                    say(serde_json::json!({
                        "weights": j.weights,
                        "data": j.source.to_string(),
                        "labelled": true,
                        "report": r,
                        "seconds": seconds,
                    }))
                } else {
                    print_report(&j, &r)
                }
            }
            Err(why) => print_unmeasured(args, &j, why, started)?,
        },
    )
}

/// Reads the run's configuration and newest weights, loads the data and builds both models.
fn load(args: &EvalArgs) -> anyhow::Result<Judged> {
    // A bare weights file is read once, here: its tensors say how to judge it.
    let (config, weights, read) = match (&args.run, &args.weights) {
        (Some(run), _) => {
            let (config, weights) = judge::run_config(run)?;
            (config, weights, None)
        }
        (None, Some(file)) => {
            let (tensors, meta) = crate::model::checkpoint::read(file, &candle_core::Device::Cpu)?;
            let config = file_config(file, &tensors, &meta, args)?;
            (config, file.clone(), Some(tensors))
        }
        (None, None) => anyhow::bail!("give --run RUN_DIR or --weights FILE"),
    };
    let source = args.data.clone().unwrap_or_else(|| config.data.clone());
    let data = crate::data::load(
        &source,
        config.size,
        &|_, _| {},
        &std::sync::atomic::AtomicBool::new(false),
    )?;
    let models = judge::models(&config, &weights, read, &data)?;
    Ok(Judged {
        weights,
        source,
        data,
        models,
    })
}

/// The configuration to judge a bare weights file with: the working size from --size, the
/// file's `preprocessing` metadata or 32 px; one input channel when its stem takes one.
fn file_config(
    file: &Path,
    tensors: &HashMap<String, candle_core::Tensor>,
    meta: &BTreeMap<String, String>,
    args: &EvalArgs,
) -> anyhow::Result<TrainConfig> {
    let from_meta = meta
        .get("preprocessing")
        .and_then(|p| serde_json::from_str::<Preprocessing>(p).ok())
        .map(|p| p.size);
    let size = args.size.or(from_meta).unwrap_or(32);
    let channels = tensors
        .get("stem.0.weight")
        .and_then(|t| t.dims().get(1).copied())
        .with_context(|| format!("{} has no stem.0.weight: not an encoder", file.display()))?;
    let tasks = if channels == 1 {
        vec![TaskKind::Colorization]
    } else {
        vec![TaskKind::Rotation]
    };
    let config = TrainConfig {
        data: args
            .data
            .clone()
            .context("--weights needs --data: the labelled images to judge it on")?,
        size,
        task_weights: vec![1.0],
        tasks,
        ..TrainConfig::default()
    };
    config.validate()?;
    Ok(config)
}

/// No kNN or probe (unlabelled data, one class…): says why and gives the gauges of z alone.
fn print_unmeasured(
    args: &EvalArgs,
    j: &Judged,
    why: NotMeasured,
    started: Instant,
) -> anyhow::Result<Result<(), PipeClosed>> {
    let g: Gauges = embed::z_gauges(&j.models.trained, &j.data)?;
    if let Some(run) = &args.run {
        let seconds = started.elapsed().as_secs_f64();
        EvalFile::new(&j.data, Err(why), &g, seconds)
            .at_step(j.models.step)
            .write(run)?;
    }
    if args.json {
        return Ok(say(serde_json::json!({
            "weights": j.weights,
            "data": j.source.to_string(),
            "labelled": j.data.labels.is_some(),
            "not_measured": why.to_string(),
            "gauges": g,
        })));
    }
    let printed = say(format_args!(
        "kNN and linear probe on {}: not measured ({why}). Only the gauges of z can be given.",
        j.source
    ))
    .and_then(|()| {
        say(format_args!(
            "std of L2-normalised z {:.4} (1/√d = {:.4}), RankMe {:.1} of {}, uniformity {:.3}, alignment {:.3}",
            g.std_of_l2_normalized,
            g.std_reference,
            g.rankme,
            g.dimensions,
            g.uniformity,
            g.alignment.unwrap_or(f64::NAN)
        ))
    });
    Ok(printed)
}

fn pct(v: f64) -> String {
    format!("{:5.1}%", v * 100.0)
}

/// The text report: kNN per stage, the linear probe, the gauges and the alignment.
fn print_report(j: &Judged, r: &EvalReport) -> Result<(), PipeClosed> {
    say(format_args!(
        "Evaluated {} on {}: {} images, {} classes, {} held out",
        j.weights.display(),
        j.source,
        r.images,
        r.classes,
        r.held_out
    ))?;
    say(format_args!(
        "kNN accuracy (k = {}, t = {})   trained   random init",
        embed::KNN_K,
        embed::KNN_T
    ))?;
    for s in &r.knn {
        say(format_args!(
            "  {:<28} {}    {}",
            s.stage,
            pct(s.trained),
            pct(s.random)
        ))?;
    }
    say(format_args!(
        "  {:<28} {}",
        "raw pixels",
        pct(r.knn_raw_pixels)
    ))?;
    say(format_args!(
        "Linear probe on z               {}    {}    (raw pixels {})",
        pct(r.probe_trained),
        pct(r.probe_random),
        pct(r.probe_raw_pixels)
    ))?;
    print_gauges(r)
}

fn print_gauges(r: &EvalReport) -> Result<(), PipeClosed> {
    let (g, random) = (&r.gauges_trained, &r.gauges_random);
    say(format_args!(
        "Gauges of z: std of L2-normalised {:.4} (1/√d = {:.4}; random init {:.4}), RankMe {:.1} of {} (random {:.1}), uniformity {:.3} (random {:.3})",
        g.std_of_l2_normalized,
        g.std_reference,
        random.std_of_l2_normalized,
        g.rankme,
        g.dimensions,
        random.rankme,
        g.uniformity,
        random.uniformity
    ))?;
    say(format_args!(
        "Alignment of two augmented views (E‖z − z⁺‖², 0..4, lower = views agree): {:.3} (random init {:.3})",
        g.alignment.unwrap_or(f64::NAN),
        random.alignment.unwrap_or(f64::NAN)
    ))
}
