//! Run configuration: everything needed to reproduce a run, saved as `config.json` in every run
//! directory.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Number of images in the built-in data set when no count is given.
pub const BUILTIN_DEFAULT_COUNT: usize = 2400;

/// Where the images come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// The procedurally generated scenes (see [`crate::data::builtin`]), `count` images.
    Builtin { count: usize },
    /// The generated glyphs (see [`crate::data::builtin::generate_glyphs`]), `count` images: a
    /// harder labelled set where colour and position carry no class information.
    Glyphs { count: usize },
    /// A folder of image files, scanned recursively.
    Folder(PathBuf),
}

impl Default for DataSource {
    fn default() -> Self {
        Self::Builtin {
            count: BUILTIN_DEFAULT_COUNT,
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Builtin { count } if *count == BUILTIN_DEFAULT_COUNT => f.write_str("builtin"),
            Self::Builtin { count } => write!(f, "builtin:{count}"),
            Self::Glyphs { count } if *count == BUILTIN_DEFAULT_COUNT => f.write_str("glyphs"),
            Self::Glyphs { count } => write!(f, "glyphs:{count}"),
            Self::Folder(p) => write!(f, "{}", p.display()),
        }
    }
}

impl FromStr for DataSource {
    type Err = String;
    /// `builtin`, `builtin:N`, `glyphs`, `glyphs:N` (N images, at least 8) or a folder path.
    fn from_str(s: &str) -> Result<Self, String> {
        let count = |n: &str, name: &str| -> Result<usize, String> {
            let count: usize = n
                .parse()
                .map_err(|_| format!("`{s}`: expected {name}:N with N a whole number"))?;
            if count < 8 {
                return Err(format!("`{s}`: the generated sets need at least 8 images"));
            }
            if count > crate::data::MAX_GENERATED_IMAGES {
                return Err(format!(
                    "`{s}`: the generated sets have at most {} images",
                    crate::data::MAX_GENERATED_IMAGES
                ));
            }
            Ok(count)
        };
        match s {
            "builtin" => return Ok(Self::default()),
            "glyphs" => {
                return Ok(Self::Glyphs {
                    count: BUILTIN_DEFAULT_COUNT,
                });
            }
            _ => {}
        }
        if let Some(n) = s.strip_prefix("builtin:") {
            return Ok(Self::Builtin {
                count: count(n, "builtin")?,
            });
        }
        if let Some(n) = s.strip_prefix("glyphs:") {
            return Ok(Self::Glyphs {
                count: count(n, "glyphs")?,
            });
        }
        Ok(Self::Folder(PathBuf::from(s)))
    }
}

impl Serialize for DataSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DataSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The compute device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
    Metal,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Metal => "metal",
        })
    }
}

/// How the learning rate moves over a run; `lr` is its peak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same rate throughout (runs written before schedules existed read as this).
    #[default]
    Constant,
    /// Linear warm-up over `warmup_steps` (Goyal et al. 2017), then cosine annealing to zero at
    /// the end of the run (Loshchilov & Hutter 2017), the end being the last epoch or the time
    /// limit, whichever comes first.
    Cosine,
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Constant => "constant",
            Self::Cosine => "cosine",
        })
    }
}

/// A pretext task: a label the data gives for free.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Predict the colour (CIE a*b*) from the lightness L* by regression (the task of Zhang et
    /// al. 2016, with the mean squared error their paper argues against).
    Colorization,
    /// Predict the colour as a distribution over quantised a*b* bins with class-rebalanced
    /// cross-entropy, decoded by the annealed mean (Zhang et al. 2016, "Colorful Image
    /// Colorization").
    #[serde(rename = "colorization-bins")]
    #[value(name = "colorization-bins")]
    ColorizationBins,
    /// Reconstruct a hidden region from its context (Pathak et al. 2016).
    Inpainting,
    /// Predict which of 0/90/180/270° an image was rotated by (Gidaris et al. 2018).
    Rotation,
    /// Predict where a patch sits relative to its centre neighbour (Doersch et al. 2015).
    Patch,
    /// Put 3×3 shuffled tiles back in order: predict which of a fixed set of permutations
    /// shuffled them (Noroozi & Favaro 2016).
    Jigsaw,
    /// Tell two views of the same image apart from all others (SimCLR, Chen et al. 2020).
    Contrastive,
    /// Match a view's key from a momentum encoder against a queue of earlier keys (MoCo v2,
    /// He et al. 2020; Chen et al. 2020).
    Moco,
    /// Predict a momentum teacher's projection of the other view (BYOL, Grill et al. 2020).
    Byol,
    /// Predict the other view's projection behind a stop-gradient (SimSiam, Chen & He 2021).
    Simsiam,
    /// Make the cross-correlation of the two views' embeddings the identity (Barlow Twins,
    /// Zbontar et al. 2021).
    #[serde(rename = "barlow-twins")]
    BarlowTwins,
    /// Variance, invariance and covariance terms on the two views' embeddings (VICReg,
    /// Bardes et al. 2022).
    Vicreg,
}

impl TaskKind {
    pub const ALL: [TaskKind; 12] = [
        TaskKind::Colorization,
        TaskKind::ColorizationBins,
        TaskKind::Inpainting,
        TaskKind::Rotation,
        TaskKind::Patch,
        TaskKind::Jigsaw,
        TaskKind::Contrastive,
        TaskKind::Moco,
        TaskKind::Byol,
        TaskKind::Simsiam,
        TaskKind::BarlowTwins,
        TaskKind::Vicreg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Colorization => "colorization",
            Self::ColorizationBins => "colorization-bins",
            Self::Inpainting => "inpainting",
            Self::Rotation => "rotation",
            Self::Patch => "patch",
            Self::Jigsaw => "jigsaw",
            Self::Contrastive => "contrastive",
            Self::Moco => "moco",
            Self::Byol => "byol",
            Self::Simsiam => "simsiam",
            Self::BarlowTwins => "barlow-twins",
            Self::Vicreg => "vicreg",
        }
    }

    /// Whether the task learns from two augmented views of each image (T(x), SimCLR's
    /// pipeline) and judges its proxy by how well the views find each other.
    pub fn two_views(self) -> bool {
        matches!(
            self,
            Self::Contrastive
                | Self::Moco
                | Self::Byol
                | Self::Simsiam
                | Self::BarlowTwins
                | Self::Vicreg
        )
    }
}

/// Which region inpainting hides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MaskKind {
    /// One square in the centre (Context Encoders' "central region").
    #[default]
    Center,
    /// One square at a random place.
    Random,
    /// Several smaller squares at random places, covering about the same area.
    Blocks,
}

/// The contrastive (SimCLR) task's loss over its 2N views; both use cosine similarity and the
/// temperature τ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ContrastiveLoss {
    /// NT-Xent / InfoNCE (Chen et al. 2020): the positive is in the denominator too. The
    /// default: DCL learnt no more in the same minutes (README, "The default recipe").
    #[default]
    NtXent,
    /// Decoupled contrastive loss (Yeh et al. 2022): the positive leaves the denominator, so
    /// an easy positive no longer shrinks the negatives' gradient.
    Dcl,
}

impl ContrastiveLoss {
    /// The name the app and the Math panel show (the CLI and `config.json` spell it
    /// `nt-xent` / `dcl`).
    pub fn name(self) -> &'static str {
        match self {
            Self::NtXent => "NT-Xent",
            Self::Dcl => "DCL",
        }
    }
}

/// The augmentations T(x) that make the two views of contrastive learning (SimCLR's recipe).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Augment {
    /// Random resized crop: smallest share of the image area a crop keeps.
    pub crop_min_scale: f64,
    /// Probability of a horizontal flip.
    pub flip_p: f64,
    /// Probability that colour jitter is applied.
    pub jitter_p: f64,
    /// Colour jitter strengths (as torchvision's ColorJitter).
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
    /// Probability of turning the view grey.
    pub gray_p: f64,
    /// Probability of a Gaussian blur (σ from 0.1 to 2.0 px at 32 px, scaled with the size).
    pub blur_p: f64,
    /// Side of the views as a share of the working size ([`Augment::view_size`]): smaller
    /// views make a step cheaper, while the encoder is still measured, previewed and judged at
    /// the working size (FixRes, Touvron et al. 2019: a network trained on random-resized
    /// crops at a lower resolution does well tested at a higher one). Runs written before this
    /// setting existed read as 1.
    #[serde(default = "full_view")]
    pub view_scale: f64,
}

fn full_view() -> f64 {
    1.0
}

impl Augment {
    /// Side in pixels of the views drawn from `size × size` images: `size × view_scale`
    /// rounded to a multiple of 4, at least 16 and at most `size`.
    pub fn view_size(&self, size: usize) -> usize {
        let v = (size as f64 * self.view_scale / 4.0).round() as usize * 4;
        v.max(16).min(size)
    }
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            crop_min_scale: 0.2,
            flip_p: 0.5,
            jitter_p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
            gray_p: 0.2,
            blur_p: 0.0,
            // Half-size views: twice to three times the steps per minute, and a better
            // encoder at the working size on every folder measured (README, "The default
            // recipe").
            view_scale: 0.5,
        }
    }
}

/// Per-task settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskSettings {
    /// The temperature τ of the contrastive loss (NT-Xent or DCL) and of MoCo's InfoNCE.
    pub temperature: f64,
    /// The contrastive task's loss (runs written before this setting existed trained NT-Xent,
    /// the default, and read so).
    pub contrastive_loss: ContrastiveLoss,
    pub mask: MaskKind,
    /// Side of the hidden square as a share of the image side (blocks: the covered area is
    /// this share squared).
    pub mask_size: f64,
    /// Colorization counts a pixel right when its predicted a*b* is within this distance.
    pub color_threshold: f64,
    /// Patch prediction and jigsaw: gap between patches as a share of a grid cell (jitter
    /// fills it).
    pub patch_gap: f64,
    /// Jigsaw: how many permutations of the 9 tiles the network tells apart (the classes).
    pub jigsaw_permutations: usize,
    pub augment: Augment,
    /// BYOL and MoCo: the teacher's momentum m at the start; it rises to 1 on BYOL's cosine
    /// schedule.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// MoCo: how many keys of earlier batches the queue of negatives holds.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Barlow Twins: the weight λ of the off-diagonal (redundancy-reduction) term.
    #[serde(default = "default_barlow_lambda")]
    pub barlow_lambda: f64,
    /// VICReg: the weights λ (invariance), μ (variance) and ν (covariance).
    #[serde(default = "default_vicreg_weights")]
    pub vicreg_weights: [f64; 3],
    /// SimSiam: the stop-gradient on the target branch (BYOL's teacher never gets a gradient).
    /// Off, SimSiam collapses (Chen & He 2021, §4.1): there to be watched, never a good setting.
    #[serde(default = "default_true")]
    pub stop_gradient: bool,
}

/// Teacher momentum at the start of a run: BYOL's 0.996 is tuned for hundreds of epochs; for
/// a few hundred steps on a CPU the teacher must follow faster.
pub const DEFAULT_MOMENTUM: f64 = 0.99;
/// MoCo's queue: 8 batches of 128 images' two views.
pub const DEFAULT_QUEUE_SIZE: usize = 2048;
/// lightly's default λ for Barlow Twins.
pub const DEFAULT_BARLOW_LAMBDA: f64 = 0.005;

fn default_momentum() -> f64 {
    DEFAULT_MOMENTUM
}

fn default_queue_size() -> usize {
    DEFAULT_QUEUE_SIZE
}

fn default_barlow_lambda() -> f64 {
    DEFAULT_BARLOW_LAMBDA
}

fn default_vicreg_weights() -> [f64; 3] {
    [25.0, 25.0, 1.0]
}

fn default_true() -> bool {
    true
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            temperature: 0.2,
            contrastive_loss: ContrastiveLoss::default(),
            mask: MaskKind::Center,
            mask_size: 0.5,
            color_threshold: 10.0,
            patch_gap: 0.25,
            jigsaw_permutations: DEFAULT_JIGSAW_PERMUTATIONS,
            augment: Augment::default(),
            momentum: DEFAULT_MOMENTUM,
            queue_size: DEFAULT_QUEUE_SIZE,
            barlow_lambda: DEFAULT_BARLOW_LAMBDA,
            vicreg_weights: default_vicreg_weights(),
            stop_gradient: true,
        }
    }
}

impl TaskSettings {
    /// Checks every task and augmentation setting against its limit.
    ///
    /// # Errors
    /// The first setting outside its range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.augment;
        let checks = [
            (Setting::Temperature, self.temperature, TEMPERATURE_LIMIT),
            (Setting::MaskSize, self.mask_size, MASK_SIZE_LIMIT),
            (
                Setting::ColorThreshold,
                self.color_threshold,
                COLOR_THRESHOLD_LIMIT,
            ),
            (Setting::PatchGap, self.patch_gap, PATCH_GAP_LIMIT),
            (
                Setting::JigsawPermutations,
                self.jigsaw_permutations as f64,
                JIGSAW_PERMUTATIONS_LIMIT,
            ),
            (
                Setting::CropMinScale,
                a.crop_min_scale,
                CROP_MIN_SCALE_LIMIT,
            ),
            (Setting::FlipP, a.flip_p, PROBABILITY_LIMIT),
            (Setting::JitterP, a.jitter_p, PROBABILITY_LIMIT),
            (Setting::GrayP, a.gray_p, PROBABILITY_LIMIT),
            (Setting::BlurP, a.blur_p, PROBABILITY_LIMIT),
            (Setting::ViewScale, a.view_scale, VIEW_SCALE_LIMIT),
            (Setting::Brightness, a.brightness, JITTER_STRENGTH_LIMIT),
            (Setting::Contrast, a.contrast, JITTER_STRENGTH_LIMIT),
            (Setting::Saturation, a.saturation, JITTER_STRENGTH_LIMIT),
            (Setting::Hue, a.hue, HUE_LIMIT),
            (Setting::Momentum, self.momentum, MOMENTUM_LIMIT),
            (Setting::QueueSize, self.queue_size as f64, QUEUE_SIZE_LIMIT),
            (
                Setting::BarlowLambda,
                self.barlow_lambda,
                BARLOW_LAMBDA_LIMIT,
            ),
            (
                Setting::VicregWeight,
                self.vicreg_weights[0],
                VICREG_WEIGHT_LIMIT,
            ),
            (
                Setting::VicregWeight,
                self.vicreg_weights[1],
                VICREG_WEIGHT_LIMIT,
            ),
            (
                Setting::VicregWeight,
                self.vicreg_weights[2],
                VICREG_WEIGHT_LIMIT,
            ),
        ];
        checks
            .into_iter()
            .try_for_each(|(setting, value, limit)| check(setting, value, limit))
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data: DataSource,
    pub tasks: Vec<TaskKind>,
    /// Loss weights, one per task (same order as `tasks`).
    pub task_weights: Vec<f64>,
    pub epochs: usize,
    pub batch: usize,
    /// Working image size in pixels (square).
    pub size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub device: DeviceKind,
    /// Folder under which run directories are created.
    pub out: PathBuf,
    /// How many images the fixed inspection batch (previews) holds.
    pub preview_images: usize,
    #[serde(default)]
    pub settings: TaskSettings,
    /// Start from these weights (a pretext checkpoint or a PyTorch `state_dict` saved as
    /// safetensors) instead of a random initialisation; heads it lacks start random.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Measure kNN accuracy and the gauges every this many steps as well as after every epoch
    /// (labelled data; 0 = only after epochs).
    #[serde(default = "default_knn_every")]
    pub knn_every: usize,
    /// The most of the run's wall-clock time, in percent, that the kNN monitor, previews and
    /// checkpoints may take together (100: after every epoch and every `knn_every` steps,
    /// whatever it costs). See `train::overhead`.
    #[serde(default = "default_monitor_budget")]
    pub monitor_budget: f64,
    /// How the learning rate moves over the run.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up at the start of a cosine schedule.
    #[serde(default)]
    pub warmup_steps: usize,
    /// End the run after this many minutes of training (the last checkpoint, previews and
    /// measurement are made as at the last epoch), whatever epoch it has reached.
    #[serde(default)]
    pub minutes: Option<f64>,
    /// How many of the newest checkpoints a run keeps (besides the best by kNN top-1 of z and
    /// the resume checkpoint); older ones are removed. 0 keeps every checkpoint.
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// Keep folders' working-size pixels in the image cache (`data::cache`), so the next
    /// opening of the same folder decodes only what changed (`--no-cache`: false). Written to
    /// config.json only when false.
    #[serde(default = "default_cache", skip_serializing_if = "is_true")]
    pub cache: bool,
    /// The image cache's folder; `None`: `PRETEXT_CACHE_DIR`, else the platform's cache folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

fn default_cache() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_true(b: &bool) -> bool {
    *b
}

/// Checkpoints a run keeps by default: the last three (and the best, and the resume file).
pub const DEFAULT_KEEP_CHECKPOINTS: usize = 3;

fn default_keep_checkpoints() -> usize {
    DEFAULT_KEEP_CHECKPOINTS
}

fn default_monitor_budget() -> f64 {
    DEFAULT_MONITOR_BUDGET
}

/// Warm-up steps of a new run's cosine schedule.
pub const DEFAULT_WARMUP_STEPS: usize = 20;

/// Percent of a run's wall-clock time that watching it may cost by default.
pub const DEFAULT_MONITOR_BUDGET: f64 = 5.0;

fn default_knn_every() -> usize {
    DEFAULT_KNN_EVERY
}

/// Steps between live kNN measurements by default.
pub const DEFAULT_KNN_EVERY: usize = 100;

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: DataSource::default(),
            // The recipe that learned most per CPU-minute on real folders (README, "The default
            // recipe"): SimCLR at τ = 0.2 with a cosine schedule.
            tasks: vec![TaskKind::Contrastive],
            task_weights: vec![1.0],
            // Enough for the curves and the kNN monitor to show learning on a small folder (the
            // built-in scenes: 360 steps); `--minutes` bounds a run by time instead.
            epochs: 20,
            batch: 128,
            size: 32,
            lr: 1e-3,
            weight_decay: 0.01,
            seed: 0,
            device: DeviceKind::Cpu,
            out: PathBuf::from("runs"),
            preview_images: 8,
            settings: TaskSettings::default(),
            init_from: None,
            knn_every: DEFAULT_KNN_EVERY,
            monitor_budget: DEFAULT_MONITOR_BUDGET,
            lr_schedule: LrSchedule::Cosine,
            warmup_steps: DEFAULT_WARMUP_STEPS,
            minutes: None,
            keep_checkpoints: DEFAULT_KEEP_CHECKPOINTS,
            cache: true,
            cache_dir: None,
        }
    }
}

// The limits of every numeric setting: `validate` checks against them, and the CLI's help and the
// app's controls read them, so none of them can disagree.

/// Smallest and largest working image sizes, in pixels.
pub const MIN_SIZE: usize = 16;
pub const MAX_SIZE: usize = 256;
/// The working size is a multiple of this (the encoder halves the image twice).
pub const SIZE_MULTIPLE: usize = 4;
/// Fewest epochs of a run.
pub const MIN_EPOCHS: usize = 1;
/// The epochs of a run given minutes and no epoch count (`--minutes` alone): so many that the
/// time limit ends the run, and with it the learning-rate schedule.
pub const EPOCHS_UNTIL_TIME_LIMIT: usize = 1_000_000;

/// The epochs a run trains for: `epochs` when given; else, with a time limit, until that
/// limit ([`EPOCHS_UNTIL_TIME_LIMIT`]); else `default`.
pub fn epochs_for(epochs: Option<usize>, minutes: Option<f64>, default: usize) -> usize {
    match (epochs, minutes) {
        (Some(e), _) => e,
        (None, Some(_)) => EPOCHS_UNTIL_TIME_LIMIT,
        (None, None) => default,
    }
}
/// Fewest images per batch: batch norm needs two.
pub const MIN_BATCH: usize = 2;
/// Learning rate of AdamW.
pub const LR_LIMIT: Limit = Limit::positive();
/// Weight decay of AdamW.
pub const WEIGHT_DECAY_LIMIT: Limit = Limit::at_least(0.0);
/// Loss weight of one task.
pub const TASK_WEIGHT_LIMIT: Limit = Limit::at_least(0.0);
/// Temperature τ of the contrastive losses (below 0.01 the logits overflow, above 10 nothing is
/// learnt).
pub const TEMPERATURE_LIMIT: Limit = Limit::between(0.01, 10.0);
/// Inpainting's hidden square, as a share of the image side.
pub const MASK_SIZE_LIMIT: Limit = Limit::between(0.05, 0.9);
/// Colorization's a*b* distance within which a pixel counts as right.
pub const COLOR_THRESHOLD_LIMIT: Limit = Limit::between(0.1, 100.0);
/// Patch prediction's gap between patches, as a share of a grid cell.
pub const PATCH_GAP_LIMIT: Limit = Limit::between(0.0, 0.6);
/// Jigsaw's permutation set: a few dozen learn in CPU-minutes; Noroozi & Favaro's largest
/// set had 1,000 (the greedy selection over the 9! orders takes about a second for that).
pub const JIGSAW_PERMUTATIONS_LIMIT: Limit = Limit::between(2.0, 1000.0);
/// Jigsaw's permutation set size by default (chance 1/30).
pub const DEFAULT_JIGSAW_PERMUTATIONS: usize = 30;
/// Smallest area share a random resized crop keeps.
pub const CROP_MIN_SCALE_LIMIT: Limit = Limit::between(0.01, 1.0);
/// Views from a quarter of the working size up to all of it.
pub const VIEW_SCALE_LIMIT: Limit = Limit::between(0.25, 1.0);
/// Every augmentation probability (flip, jitter, grey, blur).
pub const PROBABILITY_LIMIT: Limit = Limit::between(0.0, 1.0);
/// Colour jitter's brightness, contrast and saturation strengths.
pub const JITTER_STRENGTH_LIMIT: Limit = Limit::between(0.0, 1.0);
/// Colour jitter's hue shift, in turns.
pub const HUE_LIMIT: Limit = Limit::between(0.0, 0.5);
/// A momentum teacher's m at the start (1 would never move the teacher).
pub const MOMENTUM_LIMIT: Limit = Limit::between(0.0, 0.99999);
/// MoCo's queue of negatives, in keys.
pub const QUEUE_SIZE_LIMIT: Limit = Limit::between(16.0, 65536.0);
/// Barlow Twins' λ.
pub const BARLOW_LAMBDA_LIMIT: Limit = Limit::between(0.0, 1.0);
/// Each of VICReg's three weights.
pub const VICREG_WEIGHT_LIMIT: Limit = Limit::between(0.0, 100.0);
/// A run's time limit, in minutes.
pub const MINUTES_LIMIT: Limit = Limit::positive();
/// Share of the wall-clock time, in percent, for the monitor, previews and checkpoints.
pub const MONITOR_BUDGET_LIMIT: Limit = Limit::between(0.5, 100.0);

// The same limits as ranges, for controls that clamp (sliders, drag values): an excluded minimum
// is the range's start, and a setting without an upper limit has an infinite end.
pub const EPOCHS_RANGE: RangeInclusive<usize> = MIN_EPOCHS..=usize::MAX;
pub const BATCH_RANGE: RangeInclusive<usize> = MIN_BATCH..=usize::MAX;
pub const LR_RANGE: RangeInclusive<f64> = LR_LIMIT.min..=LR_LIMIT.max;
pub const WEIGHT_DECAY_RANGE: RangeInclusive<f64> = WEIGHT_DECAY_LIMIT.min..=WEIGHT_DECAY_LIMIT.max;
pub const TASK_WEIGHT_RANGE: RangeInclusive<f64> = TASK_WEIGHT_LIMIT.min..=TASK_WEIGHT_LIMIT.max;
pub const TEMPERATURE_RANGE: RangeInclusive<f64> = TEMPERATURE_LIMIT.min..=TEMPERATURE_LIMIT.max;
pub const MASK_SIZE_RANGE: RangeInclusive<f64> = MASK_SIZE_LIMIT.min..=MASK_SIZE_LIMIT.max;
pub const COLOR_THRESHOLD_RANGE: RangeInclusive<f64> =
    COLOR_THRESHOLD_LIMIT.min..=COLOR_THRESHOLD_LIMIT.max;
pub const PATCH_GAP_RANGE: RangeInclusive<f64> = PATCH_GAP_LIMIT.min..=PATCH_GAP_LIMIT.max;
pub const JIGSAW_PERMUTATIONS_RANGE: RangeInclusive<usize> =
    (JIGSAW_PERMUTATIONS_LIMIT.min as usize)..=(JIGSAW_PERMUTATIONS_LIMIT.max as usize);
pub const CROP_MIN_SCALE_RANGE: RangeInclusive<f64> =
    CROP_MIN_SCALE_LIMIT.min..=CROP_MIN_SCALE_LIMIT.max;
pub const VIEW_SCALE_RANGE: RangeInclusive<f64> = VIEW_SCALE_LIMIT.min..=VIEW_SCALE_LIMIT.max;
pub const PROBABILITY_RANGE: RangeInclusive<f64> = PROBABILITY_LIMIT.min..=PROBABILITY_LIMIT.max;
pub const JITTER_STRENGTH_RANGE: RangeInclusive<f64> =
    JITTER_STRENGTH_LIMIT.min..=JITTER_STRENGTH_LIMIT.max;
pub const HUE_RANGE: RangeInclusive<f64> = HUE_LIMIT.min..=HUE_LIMIT.max;
pub const MOMENTUM_RANGE: RangeInclusive<f64> = MOMENTUM_LIMIT.min..=MOMENTUM_LIMIT.max;
pub const BARLOW_LAMBDA_RANGE: RangeInclusive<f64> =
    BARLOW_LAMBDA_LIMIT.min..=BARLOW_LAMBDA_LIMIT.max;
pub const VICREG_WEIGHT_RANGE: RangeInclusive<f64> =
    VICREG_WEIGHT_LIMIT.min..=VICREG_WEIGHT_LIMIT.max;
pub const MONITOR_BUDGET_RANGE: RangeInclusive<f64> =
    MONITOR_BUDGET_LIMIT.min..=MONITOR_BUDGET_LIMIT.max;

/// The finite numbers a setting may take: from `min` (included, or only above it) up to `max`
/// (included; infinite for no upper limit).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    pub min: f64,
    /// `false`: only numbers above `min` (e.g. "positive").
    pub min_included: bool,
    pub max: f64,
}

impl Limit {
    /// From `min` to `max`, both included.
    pub const fn between(min: f64, max: f64) -> Self {
        Self {
            min,
            min_included: true,
            max,
        }
    }

    /// `min` or more.
    pub const fn at_least(min: f64) -> Self {
        Self::between(min, f64::INFINITY)
    }

    /// More than 0.
    pub const fn positive() -> Self {
        Self {
            min_included: false,
            ..Self::at_least(0.0)
        }
    }

    /// Whether `value` is finite and within the limit.
    pub fn contains(&self, value: f64) -> bool {
        let above = if self.min_included {
            value >= self.min
        } else {
            value > self.min
        };
        value.is_finite() && above && value <= self.max
    }

    /// `min..=max`, for a control that clamps (an excluded `min` is still its start, and the
    /// end is infinite where there is no upper limit).
    pub fn range(&self) -> RangeInclusive<f64> {
        self.min..=self.max
    }
}

/// `between 0.05 and 0.9`, `at least 2`, `positive`, `above 0.5`.
impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.min_included, self.max.is_finite()) {
            (true, true) => write!(f, "between {} and {}", self.min, self.max),
            (true, false) => write!(f, "at least {}", self.min),
            (false, false) if self.min == 0.0 => f.write_str("positive"),
            (false, false) => write!(f, "above {}", self.min),
            (false, true) => write!(f, "above {} and at most {}", self.min, self.max),
        }
    }
}

/// A numeric setting that has a [`Limit`] (or, for counts, a minimum).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Setting {
    TaskWeight,
    Epochs,
    Batch,
    Lr,
    WeightDecay,
    Temperature,
    MaskSize,
    ColorThreshold,
    PatchGap,
    JigsawPermutations,
    CropMinScale,
    ViewScale,
    FlipP,
    JitterP,
    Brightness,
    Contrast,
    Saturation,
    Hue,
    GrayP,
    BlurP,
    MonitorBudget,
    Minutes,
    Momentum,
    QueueSize,
    BarlowLambda,
    VicregWeight,
}

impl Setting {
    pub const ALL: [Setting; 26] = [
        Setting::TaskWeight,
        Setting::Epochs,
        Setting::Batch,
        Setting::Lr,
        Setting::WeightDecay,
        Setting::Temperature,
        Setting::MaskSize,
        Setting::ColorThreshold,
        Setting::PatchGap,
        Setting::JigsawPermutations,
        Setting::CropMinScale,
        Setting::ViewScale,
        Setting::FlipP,
        Setting::JitterP,
        Setting::Brightness,
        Setting::Contrast,
        Setting::Saturation,
        Setting::Hue,
        Setting::GrayP,
        Setting::BlurP,
        Setting::MonitorBudget,
        Setting::Minutes,
        Setting::Momentum,
        Setting::QueueSize,
        Setting::BarlowLambda,
        Setting::VicregWeight,
    ];

    /// The setting's name in plain words, e.g. `learning rate`.
    pub fn label(self) -> &'static str {
        match self {
            Self::TaskWeight => "task weight",
            Self::Epochs => "epochs",
            Self::Batch => "batch",
            Self::Lr => "learning rate",
            Self::WeightDecay => "weight decay",
            Self::Temperature => "temperature τ",
            Self::MaskSize => "mask size",
            Self::ColorThreshold => "colour threshold",
            Self::PatchGap => "patch gap",
            Self::JigsawPermutations => "jigsaw permutations",
            Self::CropMinScale => "crop min scale",
            Self::ViewScale => "view scale",
            Self::FlipP => "flip p",
            Self::JitterP => "jitter p",
            Self::Brightness => "brightness",
            Self::Contrast => "contrast",
            Self::Saturation => "saturation",
            Self::Hue => "hue",
            Self::GrayP => "grey p",
            Self::BlurP => "blur p",
            Self::MonitorBudget => "monitoring budget (%)",
            Self::Minutes => "time limit (minutes)",
            Self::Momentum => "teacher momentum m",
            Self::QueueSize => "queue size",
            Self::BarlowLambda => "Barlow Twins λ",
            Self::VicregWeight => "VICReg weight",
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a [`TrainConfig`] cannot be used. It names the setting and its limit, never a front end's
/// control: each front end phrases it itself (the CLI with its option names); `Display` gives a
/// neutral sentence.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("choose at least one task")]
    NoTasks,
    #[error("{weights} task weights for {tasks} tasks")]
    TaskWeightCount { weights: usize, tasks: usize },
    #[error("{0} is chosen twice")]
    DuplicateTask(TaskKind),
    #[error(
        "image size must be a multiple of {SIZE_MULTIPLE} between {MIN_SIZE} and {MAX_SIZE} px (got {value})"
    )]
    Size { value: usize },
    /// A number outside its limit (NaN and infinities included).
    #[error("{setting} must be {limit} (got {value})")]
    OutOfRange {
        setting: Setting,
        value: f64,
        limit: Limit,
    },
}

fn check(setting: Setting, value: f64, limit: Limit) -> Result<(), ConfigError> {
    if limit.contains(value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            setting,
            value,
            limit,
        })
    }
}

fn check_count(setting: Setting, value: usize, min: usize) -> Result<(), ConfigError> {
    let float = |n: usize| n as f64;
    check(setting, float(value), Limit::at_least(float(min)))
}

impl TrainConfig {
    /// Checks that the numbers make sense together.
    ///
    /// # Errors
    /// The first problem found, as a [`ConfigError`] that names the setting and its limit (each
    /// front end phrases it in its own terms: the CLI names the option to change).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tasks.is_empty() {
            return Err(ConfigError::NoTasks);
        }
        if self.task_weights.len() != self.tasks.len() {
            return Err(ConfigError::TaskWeightCount {
                weights: self.task_weights.len(),
                tasks: self.tasks.len(),
            });
        }
        for w in &self.task_weights {
            check(Setting::TaskWeight, *w, TASK_WEIGHT_LIMIT)?;
        }
        check_count(Setting::Epochs, self.epochs, MIN_EPOCHS)?;
        check_count(Setting::Batch, self.batch, MIN_BATCH)?;
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) || !self.size.is_multiple_of(SIZE_MULTIPLE) {
            return Err(ConfigError::Size { value: self.size });
        }
        check(Setting::Lr, self.lr, LR_LIMIT)?;
        check(Setting::WeightDecay, self.weight_decay, WEIGHT_DECAY_LIMIT)?;
        check(
            Setting::MonitorBudget,
            self.monitor_budget,
            MONITOR_BUDGET_LIMIT,
        )?;
        if let Some(m) = self.minutes {
            check(Setting::Minutes, m, MINUTES_LIMIT)?;
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(t) = self.tasks.iter().find(|t| !seen.insert(**t)) {
            return Err(ConfigError::DuplicateTask(*t));
        }
        self.settings.validate()
    }

    /// A short name for the run directory, e.g. `rotation`.
    pub fn tasks_label(&self) -> String {
        self.tasks
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join("+")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_source_parses_and_prints_back() {
        for s in ["builtin", "builtin:64", "some/folder"] {
            let d: DataSource = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        assert!("builtin:x".parse::<DataSource>().is_err());
        assert!("builtin:3".parse::<DataSource>().is_err());
    }

    #[test]
    fn config_round_trips_through_json_and_validates() {
        let c = TrainConfig::default();
        c.validate().unwrap();
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let bad = TrainConfig {
            size: 30,
            ..TrainConfig::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::Size { value: 30 }));
    }

    #[test]
    fn limits_refuse_numbers_outside_their_range_and_never_name_a_cli_flag() {
        let lr = |lr| {
            TrainConfig {
                lr,
                ..TrainConfig::default()
            }
            .validate()
        };
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(lr(bad).is_err(), "{bad}");
        }
        // No upper limit: a huge learning rate is how a non-finite loss is provoked.
        assert!(lr(1e-12).is_ok() && lr(1e38).is_ok());
        let e = lr(-1.0).unwrap_err();
        assert_eq!(
            e,
            ConfigError::OutOfRange {
                setting: Setting::Lr,
                value: -1.0,
                limit: LR_LIMIT
            }
        );
        assert_eq!(e.to_string(), "learning rate must be positive (got -1)");
        let mut c = TrainConfig::default();
        c.settings.augment.hue = 0.6;
        let hue = c.validate().unwrap_err();
        assert_eq!(hue.to_string(), "hue must be between 0 and 0.5 (got 0.6)");
        let mut c = TrainConfig::default();
        c.settings.jigsaw_permutations = 1;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "jigsaw permutations must be between 2 and 1000 (got 1)"
        );
        c.settings.jigsaw_permutations = 1000;
        assert!(c.validate().is_ok());
        let batch = TrainConfig {
            batch: 1,
            ..TrainConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(batch.to_string(), "batch must be at least 2 (got 1)");
        let errors = [
            e,
            hue,
            batch,
            ConfigError::NoTasks,
            ConfigError::Size { value: 30 },
            ConfigError::DuplicateTask(TaskKind::Patch),
            ConfigError::TaskWeightCount {
                weights: 1,
                tasks: 2,
            },
        ];
        for e in errors {
            assert!(!e.to_string().contains("--"), "{e}");
        }
    }

    #[test]
    fn limits_read_as_words_and_hold_every_default() {
        assert_eq!(LR_LIMIT.to_string(), "positive");
        assert_eq!(WEIGHT_DECAY_LIMIT.to_string(), "at least 0");
        assert_eq!(MASK_SIZE_LIMIT.to_string(), "between 0.05 and 0.9");
        assert!(!LR_LIMIT.contains(0.0) && PATCH_GAP_LIMIT.contains(0.0));
        assert_eq!(HUE_LIMIT.range(), HUE_RANGE);
        assert_eq!(TEMPERATURE_RANGE, 0.01..=10.0);
        assert_eq!(LR_RANGE, 0.0..=f64::INFINITY);
        TrainConfig::default().validate().unwrap();
    }

    #[test]
    fn views_are_a_share_of_the_working_size_in_multiples_of_four_and_old_runs_keep_full_views() {
        let a = |view_scale| Augment {
            view_scale,
            ..Augment::default()
        };
        assert_eq!(a(1.0).view_size(32), 32);
        assert_eq!(a(0.5).view_size(32), 16);
        assert_eq!(a(0.5).view_size(96), 48);
        assert_eq!(a(0.7).view_size(64), 44);
        // Never below 16 px nor above the working size.
        assert_eq!(a(0.25).view_size(32), 16);
        assert_eq!(a(0.5).view_size(16), 16);
        // Settings written before the view scale existed read as full views.
        let old: Augment = serde_json::from_str(r#"{"crop_min_scale": 0.3}"#).unwrap();
        assert_eq!(old.view_scale, 1.0);
        assert_eq!(old.crop_min_scale, 0.3);
        let mut c = TrainConfig::default();
        c.settings.augment.view_scale = 0.1;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                setting: Setting::ViewScale,
                ..
            })
        ));
    }

    #[test]
    fn the_contrastive_loss_is_nt_xent_unless_a_run_says_dcl() {
        assert_eq!(
            TaskSettings::default().contrastive_loss,
            ContrastiveLoss::NtXent
        );
        // Runs written before the setting existed trained NT-Xent.
        let old: TaskSettings = serde_json::from_str(r#"{"temperature": 0.5}"#).unwrap();
        assert_eq!(old.contrastive_loss, ContrastiveLoss::NtXent);
        assert_eq!(old.temperature, 0.5);
        let dcl = TaskSettings {
            contrastive_loss: ContrastiveLoss::Dcl,
            ..TaskSettings::default()
        };
        let json = serde_json::to_string(&dcl).unwrap();
        assert!(json.contains(r#""contrastive_loss":"dcl""#), "{json}");
        let back: TaskSettings = serde_json::from_str(&json).unwrap();
        assert_eq!(back, dcl);
        let nt: TaskSettings = serde_json::from_str(r#"{"contrastive_loss": "nt-xent"}"#).unwrap();
        assert_eq!(nt.contrastive_loss, ContrastiveLoss::NtXent);
        assert!(
            serde_json::from_str::<TaskSettings>(r#"{"contrastive_loss": "infonce"}"#).is_err()
        );
        assert_eq!(ContrastiveLoss::Dcl.name(), "DCL");
    }
}
