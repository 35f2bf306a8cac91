//! The network: a shared encoder f(x) → z plus one head per pretext task, all parameters in one
//! [`VarMap`] whose names are the checkpoint's tensor names.

pub mod checkpoint;
pub mod device;
pub mod encoder;
pub mod kernels;
pub mod losses;
pub mod ops;
pub mod optim;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::config::DeviceKind;
use crate::rng::Rng;
pub use encoder::{Encoder, EncoderOutput};

/// Errors from building, running or storing the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The build or the machine cannot give this device; `reason` is one sentence.
    #[error("cannot use {device}: {reason}")]
    DeviceNotUsable { device: DeviceKind, reason: String },
    #[error("cannot open the {device} device: {source}")]
    DeviceUnavailable {
        device: DeviceKind,
        source: candle_core::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    /// Input that does not fit what an operation needs (not a tensor library failure).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Width of the reference encoder's first stage.
pub const ENCODER_WIDTH: usize = 32;

/// Encoder, parameters and device. Heads are created by the tasks through [`Model::head_builder`]
/// and live in the same parameter map.
pub struct Model {
    pub varmap: VarMap,
    pub encoder: Encoder,
    pub device: Device,
    /// `num_batches_tracked` of every batch norm (the encoder's and the heads').
    counters: std::sync::Mutex<encoder::Counters>,
}

/// A linear layer whose parameters live in the model's map.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(vb: &VarBuilder<'_>, inputs: usize, outputs: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints((outputs, inputs), "weight", Init::Const(0.0))?,
            bias: vb.get_with_hints(outputs, "bias", Init::Const(0.0))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::linear(x, &self.weight, Some(&self.bias))
    }
}

impl Model {
    /// Builds the encoder (parameters not yet initialised: call [`Model::init_weights`] after the
    /// heads exist, or load a checkpoint).
    pub fn new(device: Device, in_channels: usize) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let mut counters = Vec::new();
        let encoder = Encoder::new(in_channels, ENCODER_WIDTH, &vb, &mut counters)?;
        Ok(Self {
            varmap,
            encoder,
            device,
            counters: std::sync::Mutex::new(counters),
        })
    }

    /// Registers the `num_batches_tracked` counters of batch norms a head created, so that
    /// checkpoints carry them as PyTorch's `state_dict` does.
    pub fn add_counters(&self, counters: encoder::Counters) {
        self.counters_mut().extend(counters);
    }

    fn counters_mut(&self) -> std::sync::MutexGuard<'_, encoder::Counters> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where a task creates its head: names start with `heads.<task>.`.
    pub fn head_builder(&self, task: &str) -> VarBuilder<'static> {
        VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device)
            .pp("heads")
            .pp(task)
    }

    /// All parameters and buffers by name, sorted.
    pub fn named_vars(&self) -> BTreeMap<String, candle_core::Var> {
        match self.varmap.data().lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(poisoned) => poisoned
                .into_inner()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Parameters the optimiser updates: everything but batch-norm running statistics and
    /// the state a method keeps outside the gradient (momentum teachers, MoCo's queue).
    pub fn trainable_vars(&self) -> Vec<(String, candle_core::Var)> {
        self.named_vars()
            .into_iter()
            .filter(|(k, _)| !is_buffer(k) && !is_method_state(k))
            .collect()
    }

    /// Deterministic initialisation following PyTorch's defaults: conv and linear weights and
    /// biases uniform in ±1/√fan_in, batch-norm weight 1, bias 0, running mean 0, variance 1.
    /// Each tensor draws from its own stream derived from `seed` and its name.
    pub fn init_weights(&self, seed: u64) -> Result<()> {
        let vars = self.named_vars();
        for (name, var) in &vars {
            let dims = var.dims().to_vec();
            let (prefix, leaf) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
            let is_bn = vars.contains_key(&format!("{prefix}.running_mean"));
            let fill = |v: f32| vec![v; dims.iter().product()];
            let values: Vec<f32> = match leaf {
                "running_mean" => fill(0.0),
                "running_var" => fill(1.0),
                "weight" if is_bn => fill(1.0),
                "bias" if is_bn => fill(0.0),
                _ => {
                    let fan_in: usize = if leaf == "bias" {
                        vars.get(&format!("{prefix}.weight"))
                            .map(|w| w.dims().iter().skip(1).product())
                            .unwrap_or(1)
                    } else {
                        dims.iter().skip(1).product()
                    };
                    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                    let mut rng = Rng::derive(seed, &[name_hash(name)]);
                    (0..dims.iter().product::<usize>())
                        .map(|_| rng.range(-bound, bound))
                        .collect()
                }
            };
            let t = Tensor::from_vec(values, dims.as_slice(), &self.device)?;
            var.set(&t)?;
        }
        for (_, c) in self.counters_mut().iter() {
            c.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Every tensor of the model as it is saved: parameters, running statistics and PyTorch's
    /// `num_batches_tracked` counters (int64 scalars).
    pub fn state_dict(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out: BTreeMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        for (name, c) in self.counters_mut().iter() {
            let n = i64::try_from(c.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
            out.insert(name.clone(), Tensor::new(n, &Device::Cpu)?);
        }
        Ok(out)
    }

    /// Loads tensors by name. Every encoder tensor must be present with its shape; heads that
    /// the file lacks keep their current values (a PyTorch encoder-only `state_dict` loads).
    pub fn load_state_dict(
        &self,
        tensors: &HashMap<String, Tensor>,
        origin: &str,
    ) -> Result<LoadReport> {
        let vars = self.named_vars();
        let missing: Vec<&String> = vars.keys().filter(|k| !tensors.contains_key(*k)).collect();
        let (missing_heads, missing_encoder): (Vec<&String>, Vec<&String>) =
            missing.into_iter().partition(|k| k.starts_with("heads."));
        if !missing_encoder.is_empty() {
            return Err(ModelError::Checkpoint {
                path: origin.to_string(),
                message: format!(
                    "{} missing, first: {}",
                    crate::text::count(missing_encoder.len(), "encoder tensor", "encoder tensors"),
                    missing_encoder
                        .iter()
                        .take(3)
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        for (name, var) in &vars {
            let Some(t) = tensors.get(name) else {
                continue;
            };
            if t.dims() != var.dims() {
                return Err(ModelError::Checkpoint {
                    path: origin.to_string(),
                    message: format!(
                        "{name} has shape {:?}, the model needs {:?}",
                        t.dims(),
                        var.dims()
                    ),
                });
            }
            var.set(&t.to_dtype(DType::F32)?.to_device(&self.device)?)?;
        }
        let counters = self.counters_mut().clone();
        for (name, c) in &counters {
            if let Some(t) = tensors.get(name) {
                let n = t.to_dtype(DType::I64)?.to_scalar::<i64>()?;
                c.store(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
            }
        }
        let counter_names: Vec<&String> = counters.iter().map(|(n, _)| n).collect();
        Ok(LoadReport {
            unknown: tensors
                .keys()
                .filter(|k| {
                    !vars.contains_key(*k)
                        && !counter_names.contains(k)
                        && !k.starts_with("optimizer.")
                })
                .cloned()
                .collect(),
            missing_heads: missing_heads.into_iter().cloned().collect(),
        })
    }

    /// Number of trainable numbers.
    pub fn parameter_count(&self) -> usize {
        self.trainable_vars()
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum()
    }
}

/// What loading a checkpoint could not match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors in the file that this model does not have (e.g. another task's head).
    pub unknown: Vec<String>,
    /// Head tensors the file lacks; those heads keep their values.
    pub missing_heads: Vec<String>,
}

/// Batch-norm running statistics are state, not parameters.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
}

/// Tensors a method updates without the gradient: a momentum teacher's copy of the weights
/// (`….teacher.…`, updated by θₜ ← m·θₜ + (1 − m)·θₛ) and MoCo's queue of keys (`….queue.…`).
/// They are saved and restored with the rest, but the optimiser never sees them.
pub fn is_method_state(name: &str) -> bool {
    name.contains(".teacher.") || name.contains(".queue.")
}

/// FNV-1a of a name, to derive a per-tensor random stream.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
