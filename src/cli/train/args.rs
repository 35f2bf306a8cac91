//! The options of `pretext train`. Every default shown in `--help` and used when an option is
//! absent comes from [`TrainConfig::default()`]; the limits quoted come from [`crate::config`].
//! The options that describe a new run form three groups (the run, task settings,
//! augmentations) that `--resume` conflicts with as a whole.

use std::fmt::Display;
use std::path::PathBuf;

use clap::Args;

use crate::config::{
    Augment, ConfigError, ContrastiveLoss, DataSource, DeviceKind, HUE_LIMIT, LrSchedule, MAX_SIZE,
    MIN_SIZE, MaskKind, SIZE_MULTIPLE, Setting, TaskKind, TaskSettings, TrainConfig,
};
use crate::train::Command;

fn run_defaults() -> TrainConfig {
    TrainConfig::default()
}

fn task_defaults() -> TaskSettings {
    TaskSettings::default()
}

fn augment_defaults() -> Augment {
    Augment::default()
}

/// `text [default: value]`, for the options that stay unset when absent (so that `--resume`
/// keeps the run's own value) yet have a default for a new run.
fn with_default(text: &str, value: impl Display) -> String {
    format!("{text} [default: {value}]")
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub run: RunArgs,
    // Not a doc comment: the help is built with the default.
    #[arg(long, value_name = "N", help = with_default(
        "Total number of epochs (with --resume: the new total)",
        run_defaults().epochs,
    ))]
    pub epochs: Option<usize>,
    #[arg(long, value_name = "F", help = with_default(
        "Learning rate of AdamW. With --resume: a new learning rate",
        run_defaults().lr,
    ))]
    pub lr: Option<f64>,
    /// Continue the run in RUN_DIR from its last checkpoint (its config.json is used; --epochs
    /// and --lr may change it).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Labelled data: measure kNN accuracy every N steps as well as after every epoch (0 = only
    /// after epochs).
    #[arg(long, value_name = "N", default_value_t = run_defaults().knn_every)]
    pub knn_every: usize,
    /// The most of the run's wall-clock time, in percent, that measuring (kNN and gauges),
    /// previews and checkpoints may take; they wait when it is spent. 100 = after every epoch
    /// (and every --knn-every steps) whatever it costs.
    #[arg(long, value_name = "PCT", default_value_t = run_defaults().monitor_budget)]
    pub monitor_budget: f64,
    /// How the learning rate moves: cosine = linear warm-up, then cosine annealing to zero at
    /// the last epoch or the time limit (--lr is the peak); constant = --lr throughout.
    #[arg(long, value_name = "KIND", default_value_t = run_defaults().lr_schedule)]
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up at the start of the cosine schedule.
    #[arg(long, value_name = "N", default_value_t = run_defaults().warmup_steps)]
    pub warmup_steps: usize,
    /// End the run after this many minutes of training, as at its last epoch (the learning-rate
    /// schedule ends there too). Without --epochs the run then lasts these minutes (its epochs
    /// are not limited). With --resume: this many more minutes (without it, a run that ended by
    /// its time limit trains as long again).
    #[arg(long, value_name = "M")]
    pub minutes: Option<f64>,
    /// Keep the newest N checkpoints (and the best by kNN top-1 of z, and the resume
    /// checkpoint); older ones are removed. 0 keeps all.
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_KEEP_CHECKPOINTS)]
    pub keep_checkpoints: usize,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub task: TaskArgs,
    #[command(flatten)]
    pub augment: AugmentArgs,
}

/// What a new run learns from and how; none of it may be given with `--resume`.
#[derive(Debug, Args)]
#[group(id = "new_run", multiple = true, conflicts_with = "resume")]
pub struct RunArgs {
    /// Images to learn from: a folder (scanned recursively; first-level subfolders become class
    /// labels), `builtin` (2,400 generated scenes in 8 classes), `glyphs` (2,400 generated
    /// glyphs in 8 classes, where colour and position say nothing of the class), or
    /// `builtin:N` / `glyphs:N` (N images).
    #[arg(long, value_name = "PATH|builtin|glyphs", default_value_t = run_defaults().data)]
    pub data: DataSource,
    /// Pretext task(s), comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "TASK",
          default_values_t = run_defaults().tasks)]
    pub task: Vec<TaskKind>,
    /// Loss weight per task, comma-separated, in the order of --task (default: all 1).
    #[arg(long, value_delimiter = ',', value_name = "W")]
    pub task_weights: Vec<f64>,
    /// Images per batch.
    #[arg(long, value_name = "N", default_value_t = run_defaults().batch)]
    pub batch: usize,
    #[arg(long, value_name = "PX", default_value_t = run_defaults().size, help = format!(
        "Working image size in pixels, a multiple of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}"
    ))]
    pub size: usize,
    /// Weight decay of AdamW.
    #[arg(long, value_name = "F", default_value_t = run_defaults().weight_decay)]
    pub weight_decay: f64,
    /// Random seed: the same seed gives the same run on the CPU.
    #[arg(long, value_name = "N", default_value_t = run_defaults().seed)]
    pub seed: u64,
    /// Compute device; cuda and metal need a build with that cargo feature.
    #[arg(long, value_enum, value_name = "D", default_value_t = run_defaults().device)]
    pub device: DeviceKind,
    /// Folder under which the run directory is created.
    #[arg(long, value_name = "DIR", default_value_os_t = run_defaults().out)]
    pub out: PathBuf,
    /// Start from the weights in FILE (a pretext checkpoint, or a PyTorch state_dict saved with
    /// safetensors) instead of a random initialisation.
    #[arg(long, value_name = "FILE")]
    pub init_from: Option<PathBuf>,
    /// Decode every file of the folder, neither reading nor writing the image cache (a run
    /// continued with --resume keeps this choice).
    #[arg(long)]
    pub no_cache: bool,
}

/// Per-task settings.
#[derive(Debug, Args)]
#[group(id = "task_settings", multiple = true, conflicts_with = "resume")]
#[command(next_help_heading = "Task settings")]
pub struct TaskArgs {
    /// Contrastive and MoCo: the InfoNCE temperature τ.
    #[arg(long, value_name = "T", default_value_t = task_defaults().temperature)]
    pub temperature: f64,
    /// Contrastive: the loss, NT-Xent or DCL (the positive left out of the denominator).
    #[arg(long, value_enum, value_name = "LOSS",
          default_value_t = task_defaults().contrastive_loss)]
    pub contrastive_loss: ContrastiveLoss,
    /// Inpainting: which region is hidden.
    #[arg(long, value_enum, value_name = "KIND", default_value_t = task_defaults().mask)]
    pub mask: MaskKind,
    /// Inpainting: side of the hidden square as a share of the image side.
    #[arg(long, value_name = "F", default_value_t = task_defaults().mask_size)]
    pub mask_size: f64,
    /// Colorization: a pixel counts as right within this a*b* distance.
    #[arg(long, value_name = "D", default_value_t = task_defaults().color_threshold)]
    pub color_threshold: f64,
    /// Patch prediction and jigsaw: gap between patches as a share of a grid cell.
    #[arg(long, value_name = "F", default_value_t = task_defaults().patch_gap)]
    pub patch_gap: f64,
    /// BYOL and MoCo: the teacher's momentum m at the start (it rises to 1 on a cosine).
    #[arg(long, value_name = "M", default_value_t = task_defaults().momentum)]
    pub momentum: f64,
    /// MoCo: keys of earlier batches kept as negatives.
    #[arg(long, value_name = "K", default_value_t = task_defaults().queue_size)]
    pub queue_size: usize,
    /// Barlow Twins: weight λ of the off-diagonal term.
    #[arg(long, value_name = "L", default_value_t = task_defaults().barlow_lambda)]
    pub barlow_lambda: f64,
    /// VICReg: the weights of invariance, variance and covariance.
    #[arg(long, value_name = "L,M,N", value_delimiter = ',', num_args = 3,
          default_values_t = task_defaults().vicreg_weights)]
    pub vicreg_weights: Vec<f64>,
    /// SimSiam: remove the stop-gradient, to watch the collapse it prevents.
    #[arg(long)]
    pub no_stop_gradient: bool,
    /// Jigsaw: size of the permutation set (the classes; chosen for maximal Hamming distance).
    #[arg(long, value_name = "N", default_value_t = task_defaults().jigsaw_permutations)]
    pub jigsaw_permutations: usize,
}

/// The augmentations that make contrastive learning's two views.
#[derive(Debug, Args)]
#[group(id = "augmentations", multiple = true, conflicts_with = "resume")]
#[command(next_help_heading = "Augmentations (contrastive views)")]
pub struct AugmentArgs {
    /// Contrastive views: smallest area share a random crop keeps.
    #[arg(long, value_name = "F", default_value_t = augment_defaults().crop_min_scale)]
    pub crop_min_scale: f64,
    /// Probability of a horizontal flip.
    #[arg(long, value_name = "P", default_value_t = augment_defaults().flip_p)]
    pub flip_p: f64,
    /// Probability of colour jitter.
    #[arg(long, value_name = "P", default_value_t = augment_defaults().jitter_p)]
    pub jitter_p: f64,
    /// Colour jitter: brightness strength.
    #[arg(long, value_name = "S", default_value_t = augment_defaults().brightness)]
    pub brightness: f64,
    /// Colour jitter: contrast strength.
    #[arg(long, value_name = "S", default_value_t = augment_defaults().contrast)]
    pub contrast: f64,
    /// Colour jitter: saturation strength.
    #[arg(long, value_name = "S", default_value_t = augment_defaults().saturation)]
    pub saturation: f64,
    #[arg(long, value_name = "S", default_value_t = augment_defaults().hue, help = format!(
        "Colour jitter: hue shift, in turns, at most {}", HUE_LIMIT.max
    ))]
    pub hue: f64,
    /// Probability of turning a view grey.
    #[arg(long, value_name = "P", default_value_t = augment_defaults().gray_p)]
    pub gray_p: f64,
    /// Probability of a Gaussian blur.
    #[arg(long, value_name = "P", default_value_t = augment_defaults().blur_p)]
    pub blur_p: f64,
    /// Side of the views as a share of the working size (rounded to a multiple of 4 px, at
    /// least 16 px): smaller views make a step cheaper, while the encoder is still measured and
    /// judged at the working size (FixRes).
    #[arg(long, value_name = "F", default_value_t = augment_defaults().view_scale)]
    pub view_scale: f64,
}

impl TrainArgs {
    /// The configuration of a new run: the options given, defaults for the rest.
    pub fn config(&self) -> TrainConfig {
        let d = TrainConfig::default();
        let r = &self.run;
        let task_weights = if r.task_weights.is_empty() {
            vec![1.0; r.task.len()]
        } else {
            r.task_weights.clone()
        };
        TrainConfig {
            data: r.data.clone(),
            tasks: r.task.clone(),
            task_weights,
            epochs: crate::config::epochs_for(self.epochs, self.minutes, d.epochs),
            batch: r.batch,
            size: r.size,
            lr: self.lr.unwrap_or(d.lr),
            weight_decay: r.weight_decay,
            seed: r.seed,
            device: r.device,
            out: r.out.clone(),
            preview_images: d.preview_images,
            settings: self.settings(),
            init_from: r.init_from.clone(),
            knn_every: self.knn_every,
            monitor_budget: self.monitor_budget,
            lr_schedule: self.lr_schedule,
            warmup_steps: self.warmup_steps,
            minutes: self.minutes,
            keep_checkpoints: self.keep_checkpoints,
            cache: !r.no_cache,
            cache_dir: None,
        }
    }

    fn settings(&self) -> TaskSettings {
        let (t, a) = (&self.task, &self.augment);
        TaskSettings {
            temperature: t.temperature,
            contrastive_loss: t.contrastive_loss,
            mask: t.mask,
            mask_size: t.mask_size,
            color_threshold: t.color_threshold,
            patch_gap: t.patch_gap,
            momentum: t.momentum,
            queue_size: t.queue_size,
            barlow_lambda: t.barlow_lambda,
            vicreg_weights: match t.vicreg_weights.as_slice() {
                &[l, m, n] => [l, m, n],
                _ => task_defaults().vicreg_weights,
            },
            stop_gradient: !t.no_stop_gradient,
            jigsaw_permutations: t.jigsaw_permutations,
            augment: Augment {
                crop_min_scale: a.crop_min_scale,
                flip_p: a.flip_p,
                jitter_p: a.jitter_p,
                brightness: a.brightness,
                contrast: a.contrast,
                saturation: a.saturation,
                hue: a.hue,
                gray_p: a.gray_p,
                blur_p: a.blur_p,
                view_scale: a.view_scale,
            },
        }
    }

    /// What to ask the engine for: continue the `--resume` run, or start the run the options
    /// describe.
    ///
    /// # Errors
    /// The first setting that is out of bounds. A continued run's own settings are checked by
    /// the engine; the two that may change here are checked now, so the error names them.
    pub fn command(&self) -> Result<Command, ConfigError> {
        let Some(dir) = &self.resume else {
            let config = self.config();
            config.validate()?;
            return Ok(Command::Start(Box::new(config)));
        };
        let d = TrainConfig::default();
        TrainConfig {
            epochs: self.epochs.unwrap_or(d.epochs),
            lr: self.lr.unwrap_or(d.lr),
            ..d
        }
        .validate()?;
        if let Some(m) = self.minutes {
            TrainConfig {
                minutes: Some(m),
                ..TrainConfig::default()
            }
            .validate()?;
        }
        Ok(Command::Continue {
            run_dir: dir.clone(),
            epochs: self.epochs,
            lr: self.lr,
            minutes: self.minutes,
        })
    }
}

/// The option of `pretext train` that sets `s`.
pub fn flag(s: Setting) -> &'static str {
    match s {
        Setting::TaskWeight => "--task-weights",
        Setting::Epochs => "--epochs",
        Setting::Batch => "--batch",
        Setting::Lr => "--lr",
        Setting::MonitorBudget => "--monitor-budget",
        Setting::Minutes => "--minutes",
        Setting::Momentum => "--momentum",
        Setting::QueueSize => "--queue-size",
        Setting::BarlowLambda => "--barlow-lambda",
        Setting::VicregWeight => "--vicreg-weights",
        Setting::WeightDecay => "--weight-decay",
        Setting::Temperature => "--temperature",
        Setting::MaskSize => "--mask-size",
        Setting::ColorThreshold => "--color-threshold",
        Setting::PatchGap => "--patch-gap",
        Setting::JigsawPermutations => "--jigsaw-permutations",
        Setting::CropMinScale => "--crop-min-scale",
        Setting::ViewScale => "--view-scale",
        Setting::FlipP => "--flip-p",
        Setting::JitterP => "--jitter-p",
        Setting::Brightness => "--brightness",
        Setting::Contrast => "--contrast",
        Setting::Saturation => "--saturation",
        Setting::Hue => "--hue",
        Setting::GrayP => "--gray-p",
        Setting::BlurP => "--blur-p",
    }
}

/// A configuration error in the command line's terms: it names the option to change.
pub fn config_error_message(e: &ConfigError) -> String {
    match e {
        ConfigError::NoTasks => "choose at least one task (--task)".into(),
        ConfigError::TaskWeightCount { weights, tasks } => {
            format!("--task-weights has {weights} numbers for {tasks} tasks")
        }
        ConfigError::DuplicateTask(t) => format!("--task names {t} twice"),
        ConfigError::Size { value } => format!(
            "--size must be a multiple of {SIZE_MULTIPLE} between {MIN_SIZE} and {MAX_SIZE} (got {value})"
        ),
        ConfigError::OutOfRange {
            setting: Setting::Batch,
            limit,
            ..
        } => format!("--batch must be {limit} (batch norm needs two images)"),
        ConfigError::OutOfRange {
            setting,
            value,
            limit,
        } => format!("{} must be {limit} (got {value})", flag(*setting)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, Commands};

    fn train_args(args: &[&str]) -> Result<TrainArgs, clap::Error> {
        let argv = ["pretext", "train"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Some(Commands::Train(t)) => Ok(*t),
            other => panic!("not train: {other:?}"),
        }
    }

    #[test]
    fn no_options_give_the_default_config() {
        assert_eq!(train_args(&[]).unwrap().config(), TrainConfig::default());
    }

    #[test]
    fn the_contrastive_loss_is_nt_xent_unless_asked_for_dcl() {
        let loss = |args: &[&str]| train_args(args).unwrap().config().settings.contrastive_loss;
        assert_eq!(loss(&[]), ContrastiveLoss::NtXent);
        assert_eq!(
            loss(&["--contrastive-loss", "nt-xent"]),
            ContrastiveLoss::NtXent
        );
        assert_eq!(loss(&["--contrastive-loss", "dcl"]), ContrastiveLoss::Dcl);
        assert!(train_args(&["--contrastive-loss", "infonce"]).is_err());
        assert!(train_args(&["--resume", "r", "--contrastive-loss", "dcl"]).is_err());
    }

    #[test]
    fn minutes_alone_make_a_run_of_those_minutes() -> Result<(), clap::Error> {
        use crate::config::EPOCHS_UNTIL_TIME_LIMIT;
        let epochs = |args: &[&str]| train_args(args).map(|a| a.config().epochs);
        assert_eq!(epochs(&[])?, TrainConfig::default().epochs);
        assert_eq!(epochs(&["--minutes", "2"])?, EPOCHS_UNTIL_TIME_LIMIT);
        assert_eq!(epochs(&["--minutes", "2", "--epochs", "3"])?, 3);
        assert_eq!(epochs(&["--epochs", "3"])?, 3);
        Ok(())
    }

    #[test]
    fn resume_allows_only_what_a_continued_run_can_change() {
        let a = train_args(&["--resume", "r", "--epochs", "9", "--lr", "0.1"]).unwrap();
        assert_eq!((a.epochs, a.lr), (Some(9), Some(0.1)));
        let a = train_args(&["--resume", "r", "--minutes", "1", "--json"]).unwrap();
        assert_eq!(
            (a.epochs, a.lr),
            (None, None),
            "absent: the run's own values"
        );
        for opt in [
            ["--batch", "8"],
            ["--data", "glyphs"],
            ["--temperature", "0.2"],
            ["--blur-p", "0.5"],
            ["--init-from", "w.safetensors"],
        ] {
            let e = train_args(&["--resume", "r", opt[0], opt[1]]).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{opt:?}"
            );
        }
    }

    #[test]
    fn every_setting_names_an_option_that_exists() {
        let cli = Cli::command();
        let train = cli.find_subcommand("train").unwrap();
        for s in Setting::ALL {
            let long = flag(s).trim_start_matches("--");
            assert!(
                train.get_arguments().any(|a| a.get_long() == Some(long)),
                "{s:?}: {long}"
            );
        }
    }

    #[test]
    fn errors_are_phrased_with_the_option() {
        let c = TrainConfig {
            lr: -1.0,
            ..TrainConfig::default()
        };
        let m = config_error_message(&c.validate().unwrap_err());
        assert_eq!(m, "--lr must be positive (got -1)");
        let c = TrainConfig {
            batch: 1,
            ..TrainConfig::default()
        };
        let m = config_error_message(&c.validate().unwrap_err());
        assert_eq!(
            m,
            "--batch must be at least 2 (batch norm needs two images)"
        );
    }
}
