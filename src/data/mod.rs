//! Image data: folders as users have them, the built-in procedural set, and the small image
//! operations the pretext tasks need. Only working-size pixels stay in memory: every image is
//! stored as `size × size × 3` bytes (row-major, RGB).

pub mod augment;
pub mod builtin;
pub mod cache;
pub mod color;
pub mod folder;
pub mod loader;
pub mod ops;
pub mod preprocess;

use std::path::PathBuf;

use crate::config::DataSource;

/// A file that could not be used, and why (also: an entry that was ignored on purpose, or a
/// file that was used although only part of it decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

impl Skipped {
    /// `(path as shown, reason)`: the path through [`display_path`], so two different paths
    /// never show alike.
    fn shown(&self) -> (String, String) {
        (display_path(&self.path), self.reason.clone())
    }
}

/// Most images a generated set (`builtin:N`, `glyphs:N`) may have: 1,000,000 images are 3 GB
/// at 32 px and 197 GB at 256 px, so the byte bound below is what usually applies.
pub const MAX_GENERATED_IMAGES: usize = 1_000_000;
/// Most bytes of working-size pixels a generated set may take in memory (8 GiB).
pub const MAX_GENERATED_BYTES: usize = 8 << 30;

/// A path as text for people: valid UTF-8 as it is, every byte that is not valid UTF-8 as
/// `\xNN` (Latin-1 names from old archives stay distinguishable: `caf\xE9` vs `caf\xE8`).
pub fn display_os(name: &std::ffi::OsStr) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut out = String::new();
        for chunk in name.as_bytes().utf8_chunks() {
            out.push_str(chunk.valid());
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02X}"));
            }
        }
        out
    }
    #[cfg(not(unix))]
    {
        name.to_string_lossy().into_owned()
    }
}

/// [`display_os`] of a whole path.
pub fn display_path(path: &std::path::Path) -> String {
    display_os(path.as_os_str())
}

/// Makes equal display strings distinct by appending ` (2)`, ` (3)`, … to the later ones, so
/// two different names never display identically (the identity stays the real path).
pub fn disambiguate(names: &mut [String]) {
    let mut seen: std::collections::HashSet<String> = names.iter().cloned().collect();
    let mut first = std::collections::HashSet::new();
    for name in names.iter_mut() {
        if first.insert(name.clone()) {
            continue;
        }
        let mut k = 2;
        loop {
            let candidate = format!("{name} ({k})");
            if seen.insert(candidate.clone()) {
                *name = candidate;
                break;
            }
            k += 1;
        }
    }
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
    #[error("no readable image in {path}{}", describe_skipped(.skipped, .ignored))]
    NoImages {
        path: PathBuf,
        skipped: Vec<Skipped>,
        /// Entries left out on purpose: a folder of HEIC or camera raw files says so here.
        ignored: Vec<Skipped>,
    },
    #[error("loading was cancelled")]
    Cancelled,
    #[error(
        "working size {0} px is outside {min}..={max} px",
        min = crate::config::MIN_SIZE,
        max = crate::config::MAX_SIZE
    )]
    BadSize(usize),
    #[error(
        "{count} generated images at {size} px would take {} MiB: at most {max} images and {} MiB",
        bytes / (1 << 20),
        MAX_GENERATED_BYTES >> 20
    )]
    TooManyGenerated {
        count: usize,
        size: usize,
        bytes: u128,
        max: usize,
    },
}

/// Refuses a generated set too large to hold in memory, before anything is allocated.
///
/// # Errors
/// [`DataError::TooManyGenerated`] when `count` exceeds [`MAX_GENERATED_IMAGES`] or the pixels
/// would exceed [`MAX_GENERATED_BYTES`].
pub fn check_generated(count: usize, size: usize) -> Result<(), DataError> {
    let bytes = count as u128 * size as u128 * size as u128 * 3;
    if count > MAX_GENERATED_IMAGES || bytes > MAX_GENERATED_BYTES as u128 {
        return Err(DataError::TooManyGenerated {
            count,
            size,
            bytes,
            max: MAX_GENERATED_IMAGES,
        });
    }
    Ok(())
}

fn describe_skipped(skipped: &[Skipped], ignored: &[Skipped]) -> String {
    // A file of a type that is not decoded says best what the folder holds instead.
    let not_an_image = ignored
        .iter()
        .find(|s| s.reason.starts_with(folder::NOT_AN_IMAGE));
    match (skipped.first(), not_an_image) {
        (None, Some(first)) => format!(
            " ({} ignored, e.g. {}: {})",
            crate::text::count(ignored.len(), "entry", "entries"),
            first.path.display(),
            first.reason
        ),
        (None, None) => format!(" (looked for {})", folder::IMAGE_EXTENSIONS.join(", ")),
        (Some(first), _) => format!(
            " ({} skipped; first: {}: {})",
            crate::text::count(skipped.len(), "file", "files"),
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
    /// Entries left out on purpose: hidden files and folders (`.name`, `__MACOSX`), files that
    /// are not of an image type (`notes.txt`, camera raw), links back to an enclosing folder,
    /// second links to a file or folder already included.
    pub ignored: Vec<Skipped>,
    /// Files used although only part of them decoded (e.g. a truncated JPEG: the rest is grey).
    pub partial: Vec<Skipped>,
    /// The file behind each image, for folders (empty for generated sets): the identity of an
    /// image, where [`Dataset::names`] is only its display.
    pub paths: Vec<PathBuf>,
    /// How the image cache served this load (`None`: a generated set, or loaded without it).
    pub cache: Option<CacheUse>,
}

/// How the image cache served one load of a folder.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheUse {
    /// Files whose outcome (pixels, or why they cannot be used) came from the cache.
    pub hits: usize,
    /// Files decoded: new, changed since they were cached, or not cached.
    pub decoded: usize,
    /// What went wrong with the cache, when something did (a damaged file ignored, a file that
    /// could not be written); the data are right all the same.
    pub note: Option<String>,
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
            ignored: Vec::new(),
            partial: Vec::new(),
            paths: Vec::new(),
            cache: None,
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
            skipped: self.skipped.iter().map(Skipped::shown).collect(),
            ignored: self.ignored.iter().map(Skipped::shown).collect(),
            partial: self.partial.iter().map(Skipped::shown).collect(),
            load_secs,
            cache: self.cache.clone(),
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
    /// (path, reason) for every entry ignored on purpose (hidden, not an image type, links
    /// already followed).
    pub ignored: Vec<(String, String)>,
    /// (path, reason) for every file used although only part of it decoded.
    pub partial: Vec<(String, String)>,
    /// Seconds spent scanning, decoding and resizing (or generating).
    pub load_secs: f64,
    /// How the image cache served the load, when it was used.
    pub cache: Option<CacheUse>,
}

/// How a data set is loaded, besides its source and working size.
pub struct LoadOptions<'a> {
    /// The image cache's folder (folders only); `None`: every file is decoded, nothing kept.
    pub cache: Option<&'a std::path::Path>,
    /// Called from worker threads as files are taken from the cache or decoded: (done, total).
    pub progress: &'a (dyn Fn(usize, usize) + Sync),
    /// Stops loading early.
    pub cancel: &'a std::sync::atomic::AtomicBool,
    /// Receives copies of the first images as they arrive, for thumbnails while loading.
    pub glimpse: Option<&'a loader::Glimpse>,
}

/// Loads any data source at the given working size, without the image cache.
/// `progress(done, total)` is called from worker threads as images are decoded; `cancel` stops
/// loading early.
///
/// # Errors
/// As [`load_with`].
pub fn load(
    source: &DataSource,
    size: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Dataset, DataError> {
    load_with(
        source,
        size,
        &LoadOptions {
            cache: None,
            progress,
            cancel,
            glimpse: None,
        },
    )
}

/// Loads any data source at the given working size. Folders use the image cache when
/// `options.cache` names its folder; generated sets are never cached (they are made faster
/// than they could be read).
///
/// # Errors
/// [`DataError::BadSize`], [`DataError::TooManyGenerated`], or as
/// [`folder::load_folder_with`].
pub fn load_with(
    source: &DataSource,
    size: usize,
    options: &LoadOptions<'_>,
) -> Result<Dataset, DataError> {
    let sizes = crate::config::MIN_SIZE..=crate::config::MAX_SIZE;
    if !sizes.contains(&size) {
        return Err(DataError::BadSize(size));
    }
    if let DataSource::Builtin { count } | DataSource::Glyphs { count } = source {
        check_generated(*count, size)?;
    }
    let progress = options.progress;
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
        DataSource::Folder(path) => folder::load_folder_with(path, size, options),
    }
}
