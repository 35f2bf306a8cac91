//! Pretext tasks: each turns unlabelled images into inputs and self-made labels, computes its
//! loss and proxy metric from the shared encoder plus its own head, and draws previews.
//!
//! Adding a task means adding a [`TaskKind`] variant, a file here implementing [`PretextTask`],
//! and a line in [`build`].

pub mod canvas;
pub mod rotation;

use candle_core::{Device, Tensor};

use crate::config::TaskKind;
use crate::data::Dataset;
use crate::model::{Model, ModelError};
use crate::rng::Rng;
pub use canvas::Canvas;

/// A prepared batch, on the model's device.
pub struct Batch {
    /// Network inputs, (B, C, S, S).
    pub inputs: Tensor,
    /// Class labels for classification tasks, u32 (B,).
    pub labels: Option<Tensor>,
    /// The same labels on the host.
    pub label_values: Vec<u32>,
    /// Which data-set image each row came from.
    pub sources: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

/// What one forward pass of a task gives.
pub struct TaskOutput {
    /// Scalar loss, part of the autograd graph when training.
    pub loss: Tensor,
    /// The proxy metric on this batch (a fraction in [0, 1] for accuracies).
    pub metric: f64,
    /// Images that went into the loss.
    pub images: usize,
}

/// How a proxy metric reads.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct MetricInfo {
    /// e.g. "rotation accuracy".
    pub name: &'static str,
    /// Short label for the classic epoch line, e.g. "Proxy accuracy".
    pub label: &'static str,
    /// Shown as a percentage (fractions) or as a plain number.
    pub percent: bool,
    /// What guessing gets, for context.
    pub chance: f64,
}

impl MetricInfo {
    /// `62%` or `23.4`.
    pub fn format(&self, value: f64) -> String {
        if self.percent {
            format!("{:.0}%", value * 100.0)
        } else {
            format!("{value:.2}")
        }
    }
}

/// A picture of what a task sees and predicts, for the inspection batch.
#[derive(Clone, Debug)]
pub struct Preview {
    pub task: TaskKind,
    pub caption: String,
    pub image: Canvas,
    pub detail: PreviewDetail,
}

/// Per-task numbers behind a preview, for front ends that draw their own.
#[derive(Clone, Debug)]
pub enum PreviewDetail {
    Rotation(Vec<rotation::RotationSample>),
}

/// One pretext task behind the common interface.
pub trait PretextTask: Send {
    fn kind(&self) -> TaskKind;
    fn metric(&self) -> MetricInfo;
    /// Builds the inputs and labels for data-set images `indices` (CPU work, then one copy to
    /// the device).
    fn prepare(
        &self,
        data: &Dataset,
        indices: &[usize],
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Batch, ModelError>;
    fn forward(&self, model: &Model, batch: &Batch, train: bool) -> Result<TaskOutput, ModelError>;
    /// Predictions on a fixed set of images, in evaluation mode.
    fn preview(
        &self,
        model: &Model,
        data: &Dataset,
        indices: &[usize],
    ) -> Result<Preview, ModelError>;
}

/// Creates the tasks (and their heads in the model's parameter map).
pub fn build(kinds: &[TaskKind], model: &Model) -> Result<Vec<Box<dyn PretextTask>>, ModelError> {
    kinds
        .iter()
        .map(|k| -> Result<Box<dyn PretextTask>, ModelError> {
            match k {
                TaskKind::Rotation => Ok(Box::new(rotation::Rotation::new(model)?)),
            }
        })
        .collect()
}

/// Number of input channels the encoder needs for these tasks.
pub fn input_channels(_kinds: &[TaskKind]) -> usize {
    3
}
