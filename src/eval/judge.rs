//! A run directory's encoder made ready to judge: its configuration (checked, as any user
//! input), its newest weights, and the model built twice — with those weights, and at its random
//! init from the same seed. `pretext eval` and the contest (`crate::compare`) both start here,
//! and both leave the result in the run directory as `eval.json` ([`EvalFile`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::NotMeasured;
use super::embed::{EvalReport, Gauges};
use crate::config::TrainConfig;
use crate::data::Dataset;
use crate::model::{Model, ModelError};
use crate::tasks::PretextTask;
use crate::train::run_dir::{CHECKPOINT_DIR, CONFIG_FILE, RESUME_FILE};

/// The file in a run directory that holds its latest evaluation.
pub const EVAL_FILE: &str = "eval.json";

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("{} is not a run directory (no readable config.json): {source}", path.display())]
    NotARun {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not valid: {message}", path.display())]
    BadConfig { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{} has no checkpoint", path.display())]
    NoCheckpoint { path: PathBuf },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An encoder with its trained weights and at its random init (same seed, same heads), the
/// task heads kept alive with their models.
pub struct Models {
    pub trained: Model,
    pub random: Model,
    /// The training step in the metadata of the checkpoint the trained weights were read
    /// from (None: given already read, or not recorded).
    pub step: Option<u64>,
    _heads: [Vec<Box<dyn PretextTask>>; 2],
}

/// A run directory's configuration (checked: it is user input like any other) and newest
/// weights.
///
/// # Errors
/// No readable or valid config.json, or no checkpoint.
pub fn run_config(run: &Path) -> Result<(TrainConfig, PathBuf), JudgeError> {
    let config_path = run.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|source| JudgeError::NotARun {
        path: run.to_path_buf(),
        source,
    })?;
    let config: TrainConfig = serde_json::from_str(&text).map_err(|e| JudgeError::BadConfig {
        path: config_path.clone(),
        message: e.to_string(),
    })?;
    config.validate().map_err(|e| JudgeError::Invalid {
        path: config_path.clone(),
        message: e.to_string(),
    })?;
    let weights = run_weights(run).ok_or_else(|| JudgeError::NoCheckpoint {
        path: run.to_path_buf(),
    })?;
    Ok((config, weights))
}

/// The newest weights of a run: its resume checkpoint, else its last epoch checkpoint.
pub fn run_weights(dir: &Path) -> Option<PathBuf> {
    let ck = dir.join(CHECKPOINT_DIR);
    let resume = ck.join(RESUME_FILE);
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

/// Builds the encoder of `config` twice on `config.device`: with the weights in `weights`
/// (`tensors`, when the file was already read) and at the random init of `config.seed`.
///
/// # Errors
/// The device cannot be used, the weights cannot be read or do not fit the model.
pub fn models(
    config: &TrainConfig,
    weights: &Path,
    tensors: Option<HashMap<String, Tensor>>,
    data: &Dataset,
) -> Result<Models, JudgeError> {
    let device = crate::model::device::open(config.device)?;
    let build = || -> Result<(Model, Vec<Box<dyn PretextTask>>), ModelError> {
        let m = Model::new(device.clone(), crate::tasks::input_channels(&config.tasks))?;
        let t = crate::tasks::build(&config.tasks, &config.settings, &m, data)?;
        m.init_weights(config.seed)?;
        Ok((m, t))
    };
    let (trained, trained_heads) = build()?;
    let (tensors, step) = match tensors {
        Some(tensors) => (tensors, None),
        None => {
            let (tensors, meta) = crate::model::checkpoint::read(weights, &device)?;
            (tensors, meta.get("step").and_then(|s| s.parse().ok()))
        }
    };
    trained.load_state_dict(&tensors, &weights.display().to_string())?;
    let (random, random_heads) = build()?;
    Ok(Models {
        trained,
        random,
        step,
        _heads: [trained_heads, random_heads],
    })
}

/// A run directory's configuration, newest weights and both models, on data already loaded.
///
/// # Errors
/// As [`run_config`] and [`models`].
pub fn load_run(run: &Path, data: &Dataset) -> Result<(TrainConfig, PathBuf, Models), JudgeError> {
    let (config, weights) = run_config(run)?;
    let m = models(&config, &weights, None, data)?;
    Ok((config, weights, m))
}

/// `eval.json`: what the latest evaluation of a run found, by the same keys for `pretext eval`
/// and the contest. On labelled data `report`; otherwise `not_measured` says why, and the
/// gauges of z are all there is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalFile<'a> {
    /// The data judged on, as the user names it (`glyphs:300`, a folder).
    pub data: String,
    pub labelled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<&'a EvalReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_measured: Option<String>,
    /// The gauges of the trained encoder's z.
    pub gauges: &'a Gauges,
    /// Seconds the evaluation took.
    pub seconds: f64,
    /// The training step of the weights judged (their checkpoint's metadata), where known: a
    /// run trained on since then has outgrown this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
}

impl<'a> EvalFile<'a> {
    /// The file for a report (labelled data) or the reason there is none, with the gauges of z.
    pub fn new(
        data: &Dataset,
        outcome: Result<&'a EvalReport, NotMeasured>,
        gauges: &'a Gauges,
        seconds: f64,
    ) -> Self {
        let (report, not_measured) = match outcome {
            Ok(r) => (Some(r), None),
            Err(why) => (None, Some(why.to_string())),
        };
        Self {
            data: data.source.to_string(),
            labelled: data.labels.is_some(),
            report,
            not_measured,
            gauges,
            seconds,
            step: None,
        }
    }

    /// The same, for weights of this training step (read with them: a run training on may
    /// have replaced their file since).
    #[must_use]
    pub fn at_step(mut self, step: Option<u64>) -> Self {
        self.step = step;
        self
    }

    /// Writes it into `run_dir` as `eval.json` (atomically); returns the path.
    ///
    /// # Errors
    /// [`JudgeError::Write`] when the file cannot be written.
    pub fn write(&self, run_dir: &Path) -> Result<PathBuf, JudgeError> {
        let path = run_dir.join(EVAL_FILE);
        let write = |source| JudgeError::Write {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| write(e.into()))?;
        crate::model::checkpoint::write_atomic(&path, text.as_bytes()).map_err(write)?;
        Ok(path)
    }
}
