//! The headless command line: `pretext train …` drives the same training engine as the app,
//! prints a progress bar and one line per epoch (or JSON lines), and leaves a run directory;
//! `pretext eval` judges a run's encoder; `pretext compare` runs a fair contest between tasks;
//! `pretext bench` measures training throughput; `pretext cache` shows or clears the image cache.
//!
//! One file per subcommand; [`output`] holds the only ways to write ([`say`], [`note`]).

mod bench;
mod cache;
mod compare;
mod eval;
mod output;
mod progress;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use bench::BenchArgs;
pub use cache::CacheArgs;
pub use compare::CompareArgs;
pub use eval::EvalArgs;
pub use output::{PipeClosed, error_chain, note, say};
pub use train::{AugmentArgs, RunArgs, TaskArgs, TrainArgs, config_error_message};

/// Exit code for input the program cannot use (bad folder, bad option, missing device).
pub const EXIT_INPUT: i32 = 2;
/// Exit code for a run that failed while training.
pub const EXIT_FAILED: i32 = 1;
/// Exit code when standard output was closed by its reader (`pretext train … | head`): what a
/// shell reports for a program ended by SIGPIPE. The program ends quietly, its run saved.
pub const EXIT_PIPE_CLOSED: i32 = 141;

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
    #[command(flatten)]
    pub app: AppArgs,
}

/// What the desktop app does by itself when it opens (none of these is saved).
#[derive(Debug, clap::Args)]
pub struct AppArgs {
    /// Desktop app: start training as soon as the data has loaded.
    #[arg(long)]
    pub start: bool,
    /// Desktop app: close the window when the run begun by --start has ended (for scripted
    /// measurements, e.g. benches/window_share.sh).
    #[arg(long, requires = "start")]
    pub quit_after_run: bool,
    /// Desktop app: train these task(s), comma-separated, instead of the saved choice.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "TASK")]
    pub task: Vec<crate::config::TaskKind>,
    /// Desktop app: end each run after this many minutes of training (without --epochs, the run
    /// lasts these minutes).
    #[arg(long, value_name = "M")]
    pub minutes: Option<f64>,
    /// Desktop app: train for this many epochs.
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
}

impl Cli {
    /// How the desktop app should start, from the path and the app's options.
    pub fn launch(&self) -> crate::ui::Launch {
        crate::ui::Launch {
            open: self.path.clone(),
            start: self.app.start,
            quit_after_run: self.app.quit_after_run,
            tasks: (!self.app.task.is_empty()).then(|| self.app.task.clone()),
            minutes: self.app.minutes,
            epochs: self.app.epochs,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Train an encoder on a folder of images (or the built-in scenes) without a window.
    Train(Box<TrainArgs>),
    /// Judge a run's encoder on labelled images: kNN per stage and a linear probe (trained vs
    /// random init vs raw pixels) and collapse gauges.
    Eval(EvalArgs),
    /// A fair contest between pretext tasks: the same data, held-out split and budget (minutes
    /// or images seen) for each, then each judged like `eval` against random init and raw
    /// pixels; writes a compare-…/ folder with the ranking, the numbers and a chart.
    Compare(Box<CompareArgs>),
    /// Measure training throughput: images per second of one task's training step, split into
    /// forward, backward, optimiser and data wait, with peak memory.
    Bench(BenchArgs),
    /// Where the image cache is (decoded working-size pixels of the folders opened) and how
    /// large; `--clear` removes it.
    Cache(CacheArgs),
}

/// Runs a subcommand; returns the process exit code.
pub fn run(command: &Commands) -> i32 {
    match command {
        Commands::Train(args) => train::train(args),
        Commands::Eval(args) => eval::eval(args),
        Commands::Compare(args) => compare::compare(args),
        Commands::Bench(args) => bench::bench(args),
        Commands::Cache(args) => cache::cache(args),
    }
}
