//! The run directory: `config.json`, `metrics.csv`, `checkpoints/` and `previews/`.
//!
//! ```text
//! runs/20261128-205400-rotation/
//!   config.json                      everything needed to reproduce the run
//!   metrics.csv                      one row per task per step
//!   checkpoints/epoch-0001.safetensors   model weights (PyTorch state_dict names)
//!   checkpoints/resume.safetensors   weights + optimiser state + position, for --resume
//!   previews/epoch-0001-rotation.png   at most 17 per task: a timeline of the run
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::StepMetrics;
use crate::config::TrainConfig;
use crate::data::preprocess::Preprocessing;

pub const CONFIG_FILE: &str = "config.json";
pub const METRICS_FILE: &str = "metrics.csv";
pub const CHECKPOINT_DIR: &str = "checkpoints";
pub const PREVIEW_DIR: &str = "previews";
pub const RESUME_FILE: &str = "resume.safetensors";
/// The file a process locks while it writes a run or contest folder ([`WriterLock`]).
pub const LOCK_FILE: &str = "writing.lock";
/// The columns of metrics.csv, in [`MetricsRow`]'s field order. Files written before the last
/// two columns existed read as well (they are optional).
pub const METRICS_HEADER: &str =
    "step,epoch,task,loss,proxy_metric,proxy_value,lr,images_per_s,wall_s,baseline,step_loss";

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("cannot write run directory {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a run directory: {message}")]
    NotARun { path: PathBuf, message: String },
    #[error(
        "{path} is being written by another pretext process (the app, `pretext train` or \
         `pretext compare`): stop that one first"
    )]
    Busy { path: PathBuf },
}

/// An exclusive lock on a run or contest folder's [`LOCK_FILE`] (`flock`), held while a
/// process writes the folder: a second process (or a second run in the same one) that would
/// continue it is refused instead of interleaving its rows and checkpoints with the first's.
/// The system drops the lock when its holder ends, killed or not, so a crash leaves nothing to
/// clean up. Where the file system cannot lock (some network shares), the folder is written
/// without one, as before locks existed, and [`WriterLock::unlocked`] says so.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
    /// Why the folder is not locked after all, where its file system cannot lock.
    unlocked: Option<String>,
}

impl WriterLock {
    /// Takes the lock on `dir` (an existing folder).
    ///
    /// # Errors
    /// [`RunDirError::Busy`] while another holder has it; [`RunDirError::Write`] when the lock
    /// file cannot be made.
    pub fn take(dir: &Path) -> Result<Self, RunDirError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(write_err(&path))?;
        // The runs view probes the lock with a shared one for a moment ([`being_written`]):
        // a holder that is only that probe lets go within microseconds, so try again a few
        // times before calling the folder busy.
        let mut attempt = file.try_lock();
        for _ in 0..TAKE_RETRIES {
            if !matches!(attempt, Err(std::fs::TryLockError::WouldBlock)) {
                break;
            }
            std::thread::sleep(TAKE_RETRY_WAIT);
            attempt = file.try_lock();
        }
        Self::after(dir, file, attempt)
    }

    /// The lock on `dir` after `attempt` to lock its open lock `file`.
    fn after(
        dir: &Path,
        file: File,
        attempt: Result<(), std::fs::TryLockError>,
    ) -> Result<Self, RunDirError> {
        match attempt {
            Ok(()) => Ok(Self {
                _file: file,
                unlocked: None,
            }),
            Err(std::fs::TryLockError::Error(e)) => Ok(Self {
                _file: file,
                unlocked: Some(format!(
                    "{} cannot be locked ({e}; some network shares cannot): it is written \
                     anyway, but nothing stops a second pretext process from writing it at the \
                     same time, so continue it from one process only",
                    dir.display()
                )),
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(RunDirError::Busy {
                path: dir.to_path_buf(),
            }),
        }
    }

    /// Why the folder is written without a lock, where its file system cannot lock: a
    /// sentence for a warning. `None` when it is locked.
    pub fn unlocked(&self) -> Option<&str> {
        self.unlocked.as_deref()
    }
}

/// How often [`WriterLock::take`] tries again while the lock is held, and how long it waits
/// between tries: together far longer than a [`being_written`] probe holds it.
const TAKE_RETRIES: u32 = 10;
const TAKE_RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether a process is writing the run or contest folder `dir` now: it holds the folder's
/// [`WriterLock`]. Probed with a shared lock that is let go at once. `None` when it cannot be
/// told: no lock file (a folder written by a build from before the lock, or never opened for
/// writing), or a file system that cannot lock.
pub fn being_written(dir: &Path) -> Option<bool> {
    let file = File::open(dir.join(LOCK_FILE)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => {
            // Let go at once (closing the file would too; Windows asks for it explicitly).
            let _ = file.unlock();
            Some(false)
        }
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

pub struct RunDir {
    pub path: PathBuf,
    metrics: csv::Writer<BufWriter<File>>,
    /// When metrics.csv was last written to disk.
    flushed: std::time::Instant,
    /// Held while the run trains ([`RunDir::release`]).
    lock: Option<WriterLock>,
}

/// Rows reach the disk at least this often, so a person following the run from another
/// process (the app's runs view) sees it move.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Appends rows to metrics.csv (the header is written by whoever creates the file).
fn metrics_writer(f: File) -> csv::Writer<BufWriter<File>> {
    csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(BufWriter::new(f))
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// `YYYYMMDD-HHMMSS` in UTC.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

impl RunDir {
    /// Creates a fresh run directory under `config.out` and writes `config.json`.
    pub fn create(config: &TrainConfig) -> Result<Self, RunDirError> {
        let base = format!("{}-{}", timestamp(SystemTime::now()), config.tasks_label());
        std::fs::create_dir_all(&config.out).map_err(write_err(&config.out))?;
        let mut path = config.out.join(&base);
        let mut n = 2;
        while path.exists() {
            path = config.out.join(format!("{base}-{n}"));
            n += 1;
        }
        for sub in [CHECKPOINT_DIR, PREVIEW_DIR] {
            let p = path.join(sub);
            std::fs::create_dir_all(&p).map_err(write_err(&p))?;
        }
        let lock = WriterLock::take(&path)?;
        Self::write_config(&path, config)?;
        let metrics_path = path.join(METRICS_FILE);
        let mut f = File::create(&metrics_path).map_err(write_err(&metrics_path))?;
        writeln!(f, "{METRICS_HEADER}").map_err(write_err(&metrics_path))?;
        Ok(Self {
            path,
            metrics: metrics_writer(f),
            flushed: std::time::Instant::now(),
            lock: Some(lock),
        })
    }

    /// Opens an existing run directory to continue it; returns its configuration.
    pub fn open(path: &Path) -> Result<(Self, TrainConfig), RunDirError> {
        let not_a_run = |message: String| RunDirError::NotARun {
            path: path.to_path_buf(),
            message,
        };
        let config_path = path.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| not_a_run(format!("cannot read {CONFIG_FILE}: {e}")))?;
        let config: TrainConfig = serde_json::from_str(&text)
            .map_err(|e| not_a_run(format!("{CONFIG_FILE} is not valid: {e}")))?;
        if !path.join(CHECKPOINT_DIR).join(RESUME_FILE).is_file() {
            return Err(not_a_run(format!(
                "no {CHECKPOINT_DIR}/{RESUME_FILE} to continue from"
            )));
        }
        // Before anything is changed: the run may be training in another process.
        let lock = WriterLock::take(path)?;
        for sub in [CHECKPOINT_DIR, PREVIEW_DIR] {
            let p = path.join(sub);
            std::fs::create_dir_all(&p).map_err(write_err(&p))?;
        }
        let metrics_path = path.join(METRICS_FILE);
        let exists = metrics_path.is_file();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(write_err(&metrics_path))?;
        if !exists {
            writeln!(f, "{METRICS_HEADER}").map_err(write_err(&metrics_path))?;
        }
        Ok((
            Self {
                path: path.to_path_buf(),
                metrics: metrics_writer(f),
                flushed: std::time::Instant::now(),
                lock: Some(lock),
            },
            config,
        ))
    }

    /// Why this run's folder is written without a lock (its file system cannot lock), for a
    /// warning; `None` when it is locked or the lock was let go.
    pub fn lock_warning(&self) -> Option<&str> {
        self.lock.as_ref().and_then(WriterLock::unlocked)
    }

    /// Lets go of the folder's lock once the run has stopped training (its session stays for
    /// inspection and writes nothing more): another process may then continue it.
    pub fn release(&mut self) {
        // Rows still buffered go out first (best effort: a run that failed to write has said
        // so already), so nothing of this run is appended after another process's.
        let _ = self.flush();
        self.lock = None;
    }

    /// After a crash, metrics.csv may hold rows past the checkpoint a run continues from, and a
    /// half-written last line: keeps the header and the complete rows up to `step`, so the
    /// continued run's rows follow on without duplicates. Also removes temporary files that a
    /// killed process left behind while writing a checkpoint.
    ///
    /// # Errors
    /// [`RunDirError::Write`] when metrics.csv cannot be rewritten.
    pub fn keep_metrics_through(&mut self, step: u64) -> Result<(), RunDirError> {
        let path = self.path.join(METRICS_FILE);
        self.flush()?;
        let text = std::fs::read(&path).map_err(write_err(&path))?;
        // Rows are parsed (files of an older format too, whose rows are rewritten in the current
        // one), and kept up to `step`; malformed rows are dropped.
        let mut out = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(complete_lines(&text));
        let as_io = |e: csv::Error| RunDirError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        };
        out.write_record(METRICS_HEADER.split(',')).map_err(as_io)?;
        for row in reader.deserialize::<MetricsRow>().filter_map(Result::ok) {
            if row.step <= step {
                out.serialize(&row).map_err(as_io)?;
            }
        }
        let kept = out.into_inner().map_err(|e| RunDirError::Write {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if kept != text {
            crate::model::checkpoint::write_atomic(&path, &kept).map_err(write_err(&path))?;
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(write_err(&path))?;
            self.metrics = metrics_writer(f);
        }
        for dir in [self.path.clone(), self.path.join(CHECKPOINT_DIR)] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.contains(".tmp-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    pub fn write_config(path: &Path, config: &TrainConfig) -> Result<(), RunDirError> {
        let p = path.join(CONFIG_FILE);
        // The configuration, and how its images become the network's input (read by people
        // and by PyTorch code; ignored when the configuration is read back).
        let mut value = serde_json::to_value(config).map_err(|e| RunDirError::Write {
            path: p.clone(),
            source: std::io::Error::other(e),
        })?;
        if let (Some(map), Ok(pre)) = (
            value.as_object_mut(),
            serde_json::to_value(Preprocessing::of(config)),
        ) {
            map.insert("preprocessing".to_owned(), pre);
        }
        let text = serde_json::to_string_pretty(&value).map_err(|e| RunDirError::Write {
            path: p.clone(),
            source: std::io::Error::other(e),
        })?;
        crate::model::checkpoint::write_atomic(&p, text.as_bytes()).map_err(write_err(&p))
    }

    fn write_row(&mut self, row: &MetricsRow) -> Result<(), RunDirError> {
        let path = self.path.join(METRICS_FILE);
        self.metrics.serialize(row).map_err(|e| RunDirError::Write {
            path,
            source: std::io::Error::other(e),
        })
    }

    /// Appends one row per task.
    pub fn append_metrics(&mut self, m: &StepMetrics) -> Result<(), RunDirError> {
        for t in &m.tasks {
            self.write_row(&MetricsRow {
                step: m.step,
                epoch: m.epoch,
                task: t.task.name().to_string(),
                loss: Some(t.loss),
                proxy_metric: t.metric_info.name.replace(' ', "_"),
                proxy_value: t.metric,
                lr: Some(m.lr),
                images_per_s: Some(m.images_per_s),
                wall_s: m.wall_s,
                baseline: t.baseline,
                step_loss: Some(m.loss),
            })?;
        }
        if self.flushed.elapsed() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends the monitor's kNN accuracies (rows of task `knn`) and gauges (task `gauges`),
    /// and writes them to disk at once.
    pub fn append_knn(&mut self, k: &super::KnnMetrics, wall_s: f64) -> Result<(), RunDirError> {
        let monitor_row = |task: &str, name: String, value: f64| MetricsRow {
            step: k.step,
            epoch: k.epoch,
            task: task.to_string(),
            loss: None,
            proxy_metric: name,
            proxy_value: value,
            lr: None,
            images_per_s: None,
            wall_s,
            baseline: None,
            step_loss: None,
        };
        for (stage, acc) in &k.stages {
            let name = crate::eval::embed::stage_key(stage);
            self.write_row(&monitor_row(KNN_TASK, format!("{KNN_PREFIX}{name}"), *acc))?;
        }
        if let Some(acc) = k.raw_pixels {
            self.write_row(&monitor_row(
                KNN_TASK,
                format!("{KNN_PREFIX}raw_pixels"),
                acc,
            ))?;
        }
        let g = &k.gauges;
        for (name, v) in [
            ("std_of_l2_normalized", g.std_of_l2_normalized),
            ("rankme", g.rankme),
            ("uniformity", g.uniformity),
            ("alignment", g.alignment.unwrap_or(f64::NAN)),
        ] {
            if v.is_finite() {
                self.write_row(&monitor_row(GAUGES_TASK, name.to_string(), v))?;
            }
        }
        for (task, g) in &k.head_gauges {
            for (name, v) in [
                (HEAD_STD, g.std_of_l2_normalized),
                (HEAD_RANKME, g.rankme),
                (HEAD_DIMENSIONS, g.dimensions as f64),
            ] {
                if v.is_finite() {
                    self.write_row(&monitor_row(GAUGES_TASK, format!("{task}:{name}"), v))?;
                }
            }
        }
        // Monitor rows are few and costly to redo: on disk at once, so a crash right after a
        // checkpoint keeps them.
        self.flush()
    }

    pub fn flush(&mut self) -> Result<(), RunDirError> {
        let path = self.path.join(METRICS_FILE);
        self.flushed = std::time::Instant::now();
        self.metrics.flush().map_err(write_err(&path))
    }

    pub fn checkpoint_path(&self, name: &str) -> PathBuf {
        self.path.join(CHECKPOINT_DIR).join(name)
    }

    /// Removes all but the newest `keep` checkpoints (by the step in their metadata) and
    /// `protect`; the resume checkpoint, temporary files and anything that is not a readable
    /// checkpoint are never touched. `keep` 0 keeps every checkpoint.
    ///
    /// # Errors
    /// When the folder cannot be listed or a checkpoint cannot be removed.
    pub fn prune_checkpoints(
        &self,
        keep: usize,
        protect: Option<&str>,
    ) -> Result<Checkpoints, RunDirError> {
        let dir = self.path.join(CHECKPOINT_DIR);
        let found = epoch_checkpoints(&dir).map_err(write_err(&dir))?;
        let cut = if keep == 0 {
            0
        } else {
            found.len().saturating_sub(keep)
        };
        let mut removed = 0;
        let mut kept = Vec::new();
        for (i, (_, name, path)) in found.into_iter().enumerate() {
            if i < cut && Some(name.as_str()) != protect {
                std::fs::remove_file(&path).map_err(write_err(&path))?;
                removed += 1;
            } else {
                kept.push(name);
            }
        }
        Ok(Checkpoints {
            kept,
            removed,
            disk_bytes: folder_bytes(&dir).map_err(write_err(&dir))?,
            best: None,
        })
    }

    pub fn preview_path(&self, epoch: usize, task: &str) -> PathBuf {
        self.path
            .join(PREVIEW_DIR)
            .join(format!("epoch-{epoch:04}-{task}.png"))
    }

    /// Keeps `task`'s preview pictures a timeline of the run in at most [`PREVIEWS_KEPT`] files.
    /// Past that, the epochs are cut into windows of a power-of-two length — the smallest that
    /// brings the count within the limit — and the first picture of each window stays, with the
    /// newest; so what stays is spread over the whole run however irregularly the budget let
    /// pictures be written, and the windows nest as they grow, so a kept picture stays kept
    /// until its window doubles. Other files are never touched. Returns how many were removed.
    ///
    /// # Errors
    /// When the folder cannot be listed or a picture cannot be removed.
    pub fn thin_previews(&self, task: &str) -> Result<usize, RunDirError> {
        thin_preview_folder(&self.path.join(PREVIEW_DIR), task)
    }
}

/// [`RunDir::thin_previews`] on the folder `dir`.
fn thin_preview_folder(dir: &Path, task: &str) -> Result<usize, RunDirError> {
    let mut found: Vec<(usize, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(write_err(dir))?.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str());
        if let Some((e, _)) = name.and_then(preview_name).filter(|(_, t)| *t == task) {
            found.push((e, path));
        }
    }
    if found.len() <= PREVIEWS_KEPT {
        return Ok(0);
    }
    found.sort();
    let epochs: Vec<usize> = found.iter().map(|(e, _)| *e).collect();
    let newest = epochs.len() - 1;
    let mut window = 2usize;
    let mut keep = timeline(&epochs, window);
    while keep.iter().filter(|&&k| k).count() > PREVIEWS_KEPT && window <= epochs[newest] {
        window = window.saturating_mul(2);
        keep = timeline(&epochs, window);
    }
    let mut removed = 0;
    for ((_, path), kept) in found.iter().zip(keep) {
        if !kept {
            std::fs::remove_file(path).map_err(write_err(path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The epoch and task of a preview picture's file name, `epoch-NNNN-<task>.png` as
/// [`RunDir::preview_path`] writes it (the epoch all digits); `None` for any other name.
pub fn preview_name(name: &str) -> Option<(usize, &str)> {
    let (epoch, task) = name
        .strip_prefix("epoch-")?
        .strip_suffix(".png")?
        .split_once('-')?;
    if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((epoch.parse().ok()?, task))
}

/// Which of the sorted `epochs` a timeline with windows of `window` epochs keeps: the first of
/// each window, and the newest.
fn timeline(epochs: &[usize], window: usize) -> Vec<bool> {
    let last = epochs.len().saturating_sub(1);
    epochs
        .iter()
        .enumerate()
        .map(|(i, e)| i == last || i == 0 || epochs[i - 1] / window != e / window)
        .collect()
}

/// Preview pictures kept per task at most ([`RunDir::thin_previews`]).
pub const PREVIEWS_KEPT: usize = 17;

/// What the checkpoints folder holds after [`RunDir::prune_checkpoints`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Checkpoints {
    /// The checkpoints kept, oldest first (the resume checkpoint is not counted).
    pub kept: Vec<String>,
    /// How many were removed this time.
    pub removed: usize,
    /// Bytes of every file in the folder, the resume checkpoint included.
    pub disk_bytes: u64,
    /// The checkpoint whose weights gave the best kNN top-1 on z, and that accuracy.
    pub best: Option<(String, f64)>,
}

/// What a run directory's checkpoints folder holds now, without removing anything (for a run
/// another process writes).
pub fn list_checkpoints(dir: &Path) -> Checkpoints {
    let folder = dir.join(CHECKPOINT_DIR);
    Checkpoints {
        kept: epoch_checkpoints(&folder)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, name, _)| name)
            .collect(),
        removed: 0,
        disk_bytes: folder_bytes(&folder).unwrap_or(0),
        best: None,
    }
}

/// The checkpoints in a checkpoints folder other than the resume checkpoint (and temporary
/// files): (step, file name, path), oldest step first.
fn epoch_checkpoints(folder: &Path) -> std::io::Result<Vec<(u64, String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(folder)?.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if name == RESUME_FILE
            || name.starts_with('.')
            || path.extension().is_none_or(|e| e != "safetensors")
        {
            continue;
        }
        if let Some(step) = checkpoint_step(&path) {
            found.push((step, name, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Bytes of every file in a folder.
fn folder_bytes(folder: &Path) -> std::io::Result<u64> {
    Ok(std::fs::read_dir(folder)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum())
}

/// The training step in a checkpoint's metadata, read from the safetensors header alone (the
/// first 8 bytes give the header's length; the tensors are not read).
pub fn checkpoint_step(path: &Path) -> Option<u64> {
    checkpoint_metadata(path)?.get("step")?.parse().ok()
}

/// A checkpoint's metadata (step, epoch, `train_s`, …), read from the safetensors header alone.
pub fn checkpoint_metadata(path: &Path) -> Option<std::collections::BTreeMap<String, String>> {
    use std::io::Read;
    let mut f = File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = usize::try_from(u64::from_le_bytes(len)).ok()?;
    if n > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; n];
    f.read_exact(&mut header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&header).ok()?;
    serde_json::from_value(v.get("__metadata__")?.clone()).ok()
}

/// The `task` of the kNN monitor's rows, and the prefix of their metric names.
pub const KNN_TASK: &str = "knn";
const KNN_PREFIX: &str = "knn_accuracy_";
/// The `task` of the gauge rows.
pub const GAUGES_TASK: &str = "gauges";
/// The gauges of a task's own output, written as `<task>:<name>` rows of [`GAUGES_TASK`].
const HEAD_STD: &str = "output_std_of_l2_normalized";
const HEAD_RANKME: &str = "output_rankme";
const HEAD_DIMENSIONS: &str = "output_dimensions";

/// One row of metrics.csv: a task's numbers at a training step, or one number of the monitor
/// (task `knn` or `gauges`). Written and read through serde, so both sides agree by
/// construction; floats are written in their shortest exact form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub step: u64,
    pub epoch: usize,
    pub task: String,
    pub loss: Option<f64>,
    /// The proxy metric's name with `_` for spaces (e.g. `rotation_accuracy`), or the monitor's
    /// number (`knn_accuracy_l2`, `rankme`, …).
    pub proxy_metric: String,
    pub proxy_value: f64,
    pub lr: Option<f64>,
    pub images_per_s: Option<f64>,
    pub wall_s: f64,
    /// The task's trivial baseline on the same batch, when it has one.
    #[serde(default)]
    pub baseline: Option<f64>,
    /// The step's weighted sum of task losses (the same on each task's row).
    #[serde(default)]
    pub step_loss: Option<f64>,
}

/// Reads a run directory's metrics.csv, which another process may still be writing: a
/// half-written last line is left for later and a malformed row is passed over, never a panic.
///
/// # Errors
/// A sentence naming the file when it cannot be read.
pub fn read_metrics(dir: &Path) -> Result<Vec<MetricsRow>, String> {
    let path = dir.join(METRICS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(complete_lines(&bytes));
    Ok(reader
        .deserialize::<MetricsRow>()
        .filter_map(Result::ok)
        .collect())
}

/// A run directory read back as the events its run sent: `RunStarted` (from config.json), then
/// `Step` and `Knn` in the order metrics.csv has them. Applied to a [`crate::view::RunView`] they
/// give the curves, kNN series and gauges the live run gave; what metrics.csv does not keep
/// (time split, previews, the gauges' spectrum) is left empty.
///
/// # Errors
/// [`RunDirError::NotARun`] when config.json or metrics.csv cannot be read.
pub fn replay(dir: &Path) -> Result<Vec<super::Event>, RunDirError> {
    let config = read_config(dir)?;
    let rows = read_metrics(dir).map_err(|message| RunDirError::NotARun {
        path: dir.to_path_buf(),
        message,
    })?;
    let batches_per_epoch = batches_per_epoch(&rows);
    let mut events = vec![started_event(dir, &config, batches_per_epoch)];
    let mut grouper = RowEvents::new(config.epochs, batches_per_epoch);
    events.extend(grouper.push(rows));
    events.extend(grouper.finish());
    Ok(events)
}

/// A run directory's config.json.
///
/// # Errors
/// [`RunDirError::NotARun`] when it cannot be read or is not valid.
pub fn read_config(dir: &Path) -> Result<TrainConfig, RunDirError> {
    let not_a_run = |message: String| RunDirError::NotARun {
        path: dir.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(dir.join(CONFIG_FILE))
        .map_err(|e| not_a_run(format!("cannot read {CONFIG_FILE}: {e}")))?;
    serde_json::from_str(&text).map_err(|e| not_a_run(format!("{CONFIG_FILE} is not valid: {e}")))
}

/// The `RunStarted` event a run read back from disk begins with.
pub fn started_event(dir: &Path, config: &TrainConfig, batches_per_epoch: usize) -> super::Event {
    super::Event::RunStarted {
        run_dir: dir.to_path_buf(),
        config: Box::new(config.clone()),
        start_step: 0,
        batches_per_epoch,
        parameters: 0,
    }
}

/// Steps per epoch as the rows show it: the last step of the first epoch (0 when no row has
/// one).
pub fn batches_per_epoch(rows: &[MetricsRow]) -> usize {
    rows.iter()
        .filter(|r| r.epoch == 1 && r.loss.is_some())
        .map(|r| r.step)
        .max()
        .unwrap_or(0) as usize
}

/// metrics.csv's rows turned into the `Step` and `Knn` events that wrote them, rows arriving in
/// pieces (a file another process is still writing): the rows of one step, or of one
/// measurement, make one event, so the last group is held back until a row of another group
/// arrives or [`RowEvents::finish`] says nothing more is coming for now.
#[derive(Clone, Debug)]
pub struct RowEvents {
    epochs: usize,
    /// Steps per epoch, as far as known (0: not yet).
    pub batches_per_epoch: usize,
    held: Vec<MetricsRow>,
}

impl RowEvents {
    /// For a run of `epochs` epochs; `batches_per_epoch` 0 when not known yet (it is then
    /// learnt from the first row of epoch 2).
    pub fn new(epochs: usize, batches_per_epoch: usize) -> Self {
        Self {
            epochs,
            batches_per_epoch,
            held: Vec::new(),
        }
    }

    /// Takes new rows; returns the events of every group that is now complete.
    pub fn push(&mut self, rows: Vec<MetricsRow>) -> Vec<super::Event> {
        let mut events = Vec::new();
        for row in rows {
            let same = self
                .held
                .first()
                .is_some_and(|h| h.step == row.step && is_monitor(h) == is_monitor(&row));
            if !same && !self.held.is_empty() {
                let group = std::mem::take(&mut self.held);
                events.extend(self.group_event(&group));
            }
            if row.epoch >= 2 && self.batches_per_epoch == 0 {
                // The first row of epoch 2 follows the last step of epoch 1.
                self.batches_per_epoch = row.step.saturating_sub(1) as usize;
            }
            self.held.push(row);
        }
        events
    }

    /// The event of the group held back, if any (nothing more of it is expected).
    pub fn finish(&mut self) -> Vec<super::Event> {
        let group = std::mem::take(&mut self.held);
        self.group_event(&group).into_iter().collect()
    }

    fn group_event(&self, group: &[MetricsRow]) -> Option<super::Event> {
        use super::{Event, TaskMetrics};
        let first = group.first()?;
        if is_monitor(first) {
            return Some(Event::Knn(knn_from_rows(first.step, first.epoch, group)));
        }
        let tasks: Vec<TaskMetrics> = group
            .iter()
            .filter_map(|r| {
                let task = crate::config::TaskKind::ALL
                    .into_iter()
                    .find(|k| k.name() == r.task)?;
                Some(TaskMetrics {
                    task,
                    loss: r.loss.unwrap_or(f64::NAN),
                    metric: r.proxy_value,
                    baseline: r.baseline,
                    metric_info: crate::tasks::metric_info(task),
                })
            })
            .collect();
        let loss = first
            .step_loss
            .or_else(|| (tasks.len() == 1).then(|| tasks[0].loss))
            .unwrap_or(f64::NAN);
        Some(Event::Step(super::StepMetrics {
            step: first.step,
            epoch: first.epoch,
            epochs: self.epochs,
            batch: 0,
            batches: self.batches_per_epoch,
            tasks,
            loss,
            lr: first.lr.unwrap_or(f64::NAN),
            images_per_s: first.images_per_s.unwrap_or(f64::NAN),
            data_wait_s: 0.0,
            images: 0,
            step_s: 0.0,
            timing: super::StepTiming::default(),
            wall_s: first.wall_s,
        }))
    }
}

fn is_monitor(r: &MetricsRow) -> bool {
    r.task == KNN_TASK || r.task == GAUGES_TASK
}

/// The monitor's rows of one measurement as the event that wrote them.
fn knn_from_rows(step: u64, epoch: usize, rows: &[MetricsRow]) -> super::KnnMetrics {
    let value = |task: &str, name: &str| {
        rows.iter()
            .find(|r| r.task == task && r.proxy_metric == name)
            .map(|r| r.proxy_value)
    };
    let stages = crate::eval::embed::STAGES
        .iter()
        .filter_map(|stage| {
            let short = crate::eval::embed::stage_key(stage);
            value(KNN_TASK, &format!("{KNN_PREFIX}{short}")).map(|v| ((*stage).to_string(), v))
        })
        .collect();
    let d = 4 * crate::model::ENCODER_WIDTH;
    let g = |name: &str| value(GAUGES_TASK, name).unwrap_or(f64::NAN);
    super::KnnMetrics {
        step,
        epoch,
        stages,
        not_measured: None,
        raw_pixels: value(KNN_TASK, &format!("{KNN_PREFIX}raw_pixels")),
        gauges: crate::eval::embed::Gauges {
            std_of_l2_normalized: g("std_of_l2_normalized"),
            std_reference: 1.0 / (d as f64).sqrt(),
            rankme: g("rankme"),
            dimensions: d,
            uniformity: g("uniformity"),
            alignment: value(GAUGES_TASK, "alignment"),
            spectrum: Vec::new(),
        },
        head_gauges: crate::config::TaskKind::ALL
            .into_iter()
            .filter_map(|task| {
                let head = |name: &str| value(GAUGES_TASK, &format!("{task}:{name}"));
                let std = head(HEAD_STD)?;
                let dims = head(HEAD_DIMENSIONS).unwrap_or(1.0).max(1.0);
                Some((
                    task,
                    crate::eval::embed::Gauges {
                        std_of_l2_normalized: std,
                        std_reference: 1.0 / dims.sqrt(),
                        rankme: head(HEAD_RANKME).unwrap_or(f64::NAN),
                        dimensions: dims as usize,
                        uniformity: f64::NAN,
                        alignment: None,
                        spectrum: Vec::new(),
                    },
                ))
            })
            .collect(),
    }
}

/// The bytes up to and including the last newline (only those lines are complete).
fn complete_lines(text: &[u8]) -> &[u8] {
    match text.iter().rposition(|&b| b == b'\n') {
        Some(i) => &text[..=i],
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder whose file system cannot lock is written anyway, with a warning that says so;
    /// one locked by another holder is refused; a locked one gives no warning.
    #[test]
    fn a_folder_that_cannot_be_locked_is_written_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let file = || File::create(dir.path().join(LOCK_FILE)).unwrap();
        let unsupported = std::io::Error::from(std::io::ErrorKind::Unsupported);
        let lock = WriterLock::after(
            dir.path(),
            file(),
            Err(std::fs::TryLockError::Error(unsupported)),
        )
        .unwrap();
        let warning = lock.unlocked().unwrap();
        assert!(warning.contains("cannot be locked"), "{warning}");
        assert!(
            warning.contains(&dir.path().display().to_string()),
            "{warning}"
        );
        let busy = WriterLock::after(dir.path(), file(), Err(std::fs::TryLockError::WouldBlock));
        assert!(matches!(busy, Err(RunDirError::Busy { .. })), "{busy:?}");
        let held = WriterLock::take(dir.path()).unwrap();
        assert_eq!(held.unlocked(), None);
        assert!(matches!(
            WriterLock::take(dir.path()),
            Err(RunDirError::Busy { .. })
        ));
    }

    /// The runs view's probe tells a folder being written from one that is not, and where it
    /// cannot tell (no lock file) says so; a writer that starts while a probe holds its shared
    /// lock waits for it instead of calling the folder busy.
    #[test]
    fn the_writer_lock_is_probed_without_turning_a_writer_away() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(being_written(dir.path()), None, "no lock file yet");
        let held = WriterLock::take(dir.path()).unwrap();
        assert_eq!(being_written(dir.path()), Some(true));
        drop(held);
        assert_eq!(being_written(dir.path()), Some(false));
        // The probe let its shared lock go: the writer takes the folder again.
        let held = WriterLock::take(dir.path()).unwrap();
        drop(held);

        // A shared holder (as a probe is, for a moment) that lets go within the retries.
        let probe = File::open(dir.path().join(LOCK_FILE)).unwrap();
        probe.lock_shared().unwrap();
        let release = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                std::thread::sleep(TAKE_RETRY_WAIT * 2);
                drop(probe);
            })
            .unwrap();
        let taken = WriterLock::take(dir.path());
        release.join().unwrap();
        assert!(taken.is_ok(), "{taken:?}");
        // One that does not let go: busy after the retries.
        let stays = File::open(dir.path().join(LOCK_FILE)).unwrap();
        drop(taken);
        stays.lock_shared().unwrap();
        assert!(matches!(
            WriterLock::take(dir.path()),
            Err(RunDirError::Busy { .. })
        ));
    }

    /// Writes `epoch-NNNN-<task>.png` for each epoch (as the budget lets previews be written:
    /// irregularly), thinning after each as a run does; returns the epochs left.
    fn previews_left(epochs: impl Iterator<Item = usize>, task: &str) -> Vec<usize> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        // Not a number of digits: not a preview of this run, never removed.
        let foreign = dir.path().join(format!("epoch-+5-{task}.png"));
        std::fs::write(&foreign, b"not ours").unwrap();
        for e in epochs {
            std::fs::write(dir.path().join(format!("epoch-{e:04}-{task}.png")), b"png").unwrap();
            std::fs::write(
                dir.path().join(format!("epoch-{e:04}-{task}-bins.png")),
                b"png",
            )
            .unwrap();
            thin_preview_folder(dir.path(), task).unwrap();
        }
        let mut left: Vec<usize> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                let e = name
                    .strip_suffix(&format!("-{task}.png"))?
                    .strip_prefix("epoch-")?;
                e.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| e.parse().ok())?
            })
            .collect();
        left.sort_unstable();
        assert!(
            dir.path().join("notes.txt").is_file(),
            "not a preview: kept"
        );
        assert!(foreign.is_file(), "not a preview of this run: kept");
        assert!(
            dir.path()
                .join(format!("epoch-0001-{task}-bins.png"))
                .is_file()
        );
        left
    }

    #[test]
    fn previews_stay_a_timeline_of_the_whole_run_however_irregular() {
        // Every epoch: the first, every 128th, the newest.
        let left = previews_left(1..=2000, "colorization");
        assert_eq!(left.len(), PREVIEWS_KEPT, "{left:?}");
        assert_eq!((left[0], left[1], left[16]), (1, 128, 2000), "{left:?}");
        // One epoch in three or so, as a budget allows: still spread over the run.
        let irregular = (1..=2000).filter(|e| e % 7 == 1 || e % 11 == 3);
        let left = previews_left(irregular, "colorization");
        assert!(left.len() <= PREVIEWS_KEPT, "{left:?}");
        assert_eq!(left[0], 1);
        assert_eq!(*left.last().unwrap(), 1996);
        for pair in left.windows(2) {
            assert!(
                pair[1] - pair[0] <= 2 * 128,
                "a gap in the timeline: {left:?}"
            );
        }
    }

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(timestamp(UNIX_EPOCH), "19700101-000000");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_647_240); // 2026-11-25 22:54:00
        assert_eq!(timestamp(t), "20261125-225400");
    }
}
