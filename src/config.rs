//! Run configuration: everything needed to reproduce a run, saved as `config.json` in every run
//! directory.

use std::fmt;
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
    /// Predict the colour (CIE a*b*) from the lightness L* (Zhang et al. 2016).
    Colorization,
    /// Reconstruct a hidden region from its context (Pathak et al. 2016).
    Inpainting,
    /// Predict which of 0/90/180/270° an image was rotated by (Gidaris et al. 2018).
    Rotation,
    /// Predict where a patch sits relative to its centre neighbour (Doersch et al. 2015).
    Patch,
    /// Tell two views of the same image apart from all others (SimCLR, Chen et al. 2020).
    Contrastive,
}

impl TaskKind {
    pub const ALL: [TaskKind; 5] = [
        TaskKind::Colorization,
        TaskKind::Inpainting,
        TaskKind::Rotation,
        TaskKind::Patch,
        TaskKind::Contrastive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Colorization => "colorization",
            Self::Inpainting => "inpainting",
            Self::Rotation => "rotation",
            Self::Patch => "patch",
            Self::Contrastive => "contrastive",
        }
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
        }
    }
}

/// Per-task settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskSettings {
    /// NT-Xent temperature τ.
    pub temperature: f64,
    pub mask: MaskKind,
    /// Side of the hidden square as a share of the image side (blocks: the covered area is
    /// this share squared).
    pub mask_size: f64,
    /// Colorization counts a pixel right when its predicted a*b* is within this distance.
    pub color_threshold: f64,
    /// Patch prediction: gap between patches as a share of a grid cell (jitter fills it).
    pub patch_gap: f64,
    pub augment: Augment,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            temperature: 0.5,
            mask: MaskKind::Center,
            mask_size: 0.5,
            color_threshold: 10.0,
            patch_gap: 0.25,
            augment: Augment::default(),
        }
    }
}

impl TaskSettings {
    fn validate(&self) -> Result<(), String> {
        let a = &self.augment;
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be between 0 and 1 (got {v})"))
            }
        };
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!(
                "--temperature must be positive (got {})",
                self.temperature
            ));
        }
        if !(0.05..=0.9).contains(&self.mask_size) {
            return Err(format!(
                "--mask-size must be between 0.05 and 0.9 (got {})",
                self.mask_size
            ));
        }
        if !(self.color_threshold.is_finite() && self.color_threshold > 0.0) {
            return Err("--color-threshold must be positive".into());
        }
        if !(0.0..=0.6).contains(&self.patch_gap) {
            return Err(format!(
                "--patch-gap must be between 0 and 0.6 (got {})",
                self.patch_gap
            ));
        }
        if !(0.01..=1.0).contains(&a.crop_min_scale) {
            return Err(format!(
                "--crop-min-scale must be between 0.01 and 1 (got {})",
                a.crop_min_scale
            ));
        }
        unit("--flip-p", a.flip_p)?;
        unit("--jitter-p", a.jitter_p)?;
        unit("--gray-p", a.gray_p)?;
        unit("--blur-p", a.blur_p)?;
        unit("--brightness", a.brightness)?;
        unit("--contrast", a.contrast)?;
        unit("--saturation", a.saturation)?;
        if !(0.0..=0.5).contains(&a.hue) {
            return Err(format!("--hue must be between 0 and 0.5 (got {})", a.hue));
        }
        Ok(())
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
}

fn default_knn_every() -> usize {
    DEFAULT_KNN_EVERY
}

/// Steps between live kNN measurements by default.
pub const DEFAULT_KNN_EVERY: usize = 100;

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: DataSource::default(),
            tasks: vec![TaskKind::Rotation],
            task_weights: vec![1.0],
            epochs: 5,
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
        }
    }
}

/// Smallest and largest working image sizes.
pub const MIN_SIZE: usize = 16;
pub const MAX_SIZE: usize = 256;

impl TrainConfig {
    /// Checks that the numbers make sense together; the message names the option to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.tasks.is_empty() {
            return Err("choose at least one task (--task)".into());
        }
        if self.task_weights.len() != self.tasks.len() {
            return Err(format!(
                "--task-weights has {} numbers for {} tasks",
                self.task_weights.len(),
                self.tasks.len()
            ));
        }
        if self.task_weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err("--task-weights must be finite and not negative".into());
        }
        if self.epochs == 0 {
            return Err("--epochs must be at least 1".into());
        }
        if self.batch < 2 {
            return Err("--batch must be at least 2 (batch norm needs two images)".into());
        }
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) || !self.size.is_multiple_of(4) {
            return Err(format!(
                "--size must be a multiple of 4 between {MIN_SIZE} and {MAX_SIZE} (got {})",
                self.size
            ));
        }
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return Err(format!("--lr must be a positive number (got {})", self.lr));
        }
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            return Err("--weight-decay must be a non-negative number".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(t) = self.tasks.iter().find(|t| !seen.insert(**t)) {
            return Err(format!("--task names {t} twice"));
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
        assert!(bad.validate().unwrap_err().contains("--size"));
    }
}
