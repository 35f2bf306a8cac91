//! pretext — a lab for self-supervised learning.
//!
//! Everything that learns lives here and knows nothing of any user interface: image folders and
//! the built-in data set ([`data`]), the encoder and its ops ([`model`]), the pretext tasks
//! ([`tasks`]), and the training engine that runs on a worker thread and talks over typed
//! commands and events ([`train`]). The command-line front end is in [`cli`].

pub mod bench;
pub mod cli;
pub mod compare;
pub mod config;
pub mod data;
pub mod eval;
pub mod math;
pub mod model;
pub mod report;
pub mod rng;
pub mod runs;
pub mod tasks;
pub mod text;
pub mod train;
pub mod ui;
pub mod view;

pub use config::{DataSource, DeviceKind, TaskKind, TrainConfig};
