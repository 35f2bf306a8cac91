//! Image data: folders as users have them, the built-in procedural set, and the small image
//! operations the pretext tasks need. Only working-size pixels stay in memory: every image is
//! stored as `size × size × 3` bytes (row-major, RGB).

pub mod augment;
pub mod builtin;
pub mod color;
pub mod folder;
pub mod ops;

use std::path::PathBuf;

use crate::config::DataSource;

/// A file that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Why a data set could not be loaded at all.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data folder {0} does not exist")]
    NotFound(PathBuf),
    #[error("{0} is a file, not a folder: give the folder that holds the images")]
    NotAFolder(PathBuf),
    #[error("cannot read folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no readable image in {path}{}", describe_skipped(.skipped))]
    NoImages {
        path: PathBuf,
        skipped: Vec<Skipped>,
    },
    #[error("loading was cancelled")]
    Cancelled,
}

fn describe_skipped(skipped: &[Skipped]) -> String {
    match skipped.first() {
        None => " (looked for jpg, jpeg, png, webp, bmp, gif, tif, tiff)".to_string(),
        Some(first) => format!(
            " ({} file(s) skipped; first: {}: {})",
            skipped.len(),
            first.path.display(),
            first.reason
        ),
    }
}

/// A loaded image set at one working size.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Where it came from, as the user would name it.
    pub source: DataSource,
    /// Working size: every image is `size × size` RGB.
    pub size: usize,
    pixels: Vec<u8>,
    /// One name per image: the path relative to the folder, or a generated id.
    pub names: Vec<String>,
    /// Class index per image, when the set is labelled.
    pub labels: Option<Vec<u32>>,
    /// Class names, indexed by label.
    pub class_names: Vec<String>,
    /// Files that were found but could not be used.
    pub skipped: Vec<Skipped>,
}

impl Dataset {
    /// Builds a data set from packed pixels; `pixels.len()` must be `names.len() * size² * 3`.
    pub fn from_parts(
        source: DataSource,
        size: usize,
        pixels: Vec<u8>,
        names: Vec<String>,
        labels: Option<Vec<u32>>,
        class_names: Vec<String>,
        skipped: Vec<Skipped>,
    ) -> Self {
        debug_assert_eq!(pixels.len(), names.len() * size * size * 3);
        Self {
            source,
            size,
            pixels,
            names,
            labels,
            class_names,
            skipped,
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Bytes of one image (`size × size × 3`).
    pub fn image_bytes(&self) -> usize {
        self.size * self.size * 3
    }

    /// The pixels of image `i`, row-major RGB.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels[i * n..(i + 1) * n]
    }

    pub fn label(&self, i: usize) -> Option<u32> {
        self.labels.as_ref().map(|l| l[i])
    }

    /// Images per class, when labelled.
    pub fn class_counts(&self) -> Vec<(String, usize)> {
        let Some(labels) = &self.labels else {
            return Vec::new();
        };
        let mut counts = vec![0usize; self.class_names.len()];
        for &l in labels {
            counts[l as usize] += 1;
        }
        self.class_names.iter().cloned().zip(counts).collect()
    }

    /// A compact description for logs and events; `load_secs` is how long loading took.
    pub fn summary(&self, load_secs: f64) -> DatasetSummary {
        DatasetSummary {
            source: self.source.to_string(),
            images: self.len(),
            size: self.size,
            classes: self.class_counts(),
            skipped: self
                .skipped
                .iter()
                .map(|s| (s.path.display().to_string(), s.reason.clone()))
                .collect(),
            load_secs,
        }
    }
}

/// What a front end shows about a loaded data set.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DatasetSummary {
    pub source: String,
    pub images: usize,
    pub size: usize,
    /// (class name, image count); empty when unlabelled.
    pub classes: Vec<(String, usize)>,
    /// (path, reason) for every skipped file.
    pub skipped: Vec<(String, String)>,
    /// Seconds spent scanning, decoding and resizing (or generating).
    pub load_secs: f64,
}

/// Loads any data source at the given working size. `progress(done, total)` is called from
/// worker threads as images are decoded; `cancel` stops loading early.
pub fn load(
    source: &DataSource,
    size: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Dataset, DataError> {
    match source {
        DataSource::Builtin { count } => {
            progress(0, *count);
            let d = builtin::generate(*count, size);
            progress(*count, *count);
            Ok(d)
        }
        DataSource::Glyphs { count } => {
            progress(0, *count);
            let d = builtin::generate_glyphs(*count, size);
            progress(*count, *count);
            Ok(d)
        }
        DataSource::Folder(path) => folder::load_folder(path, size, progress, cancel),
    }
}
