//! `pretext bench`: images per second of one task's training step.

use clap::Args;

use super::output::{error_chain, note, say_or};
use super::{EXIT_FAILED, EXIT_INPUT, EXIT_PIPE_CLOSED};
use crate::config::{DeviceKind, TaskKind};

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
        Ok(report) if args.json => match serde_json::to_string(&report) {
            Ok(s) => {
                say_or!(EXIT_PIPE_CLOSED, "{s}");
                0
            }
            Err(e) => {
                note(format_args!("error: {e}"));
                EXIT_FAILED
            }
        },
        Ok(report) => {
            say_or!(EXIT_PIPE_CLOSED, "{report}");
            0
        }
        Err(e) => {
            note(format_args!("error: {}", error_chain(&e)));
            if e.downcast_ref::<crate::bench::InvalidInput>().is_some() {
                EXIT_INPUT
            } else {
                EXIT_FAILED
            }
        }
    }
}
