//! Every run directory under a runs folder, as the runs view lists and overlays them, with no
//! UI code: where the runs are ([`find_runs`]), what each one did ([`RunSummary`], folded from
//! metrics.csv and `eval.json`), and metrics.csv read as it grows ([`MetricsTail`]), so a run
//! that another process is still writing — `pretext train` in a terminal, on a server whose
//! folder is synced back — can be followed live. [`watch`] does the reading on its own thread.

pub mod watch;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{TaskKind, TrainConfig};
use crate::train::run_dir::{self, CONFIG_FILE, METRICS_FILE, MetricsRow};

/// The file in which `pretext eval` and `pretext compare` leave a run's evaluation.
pub const EVAL_FILE: &str = "eval.json";
/// The file that marks a contest folder (`pretext compare`).
pub const CONTEST_FILE: &str = "contest.json";
/// The most bytes of metrics.csv read in one poll (a huge file is read over several polls).
const READ_MAX: u64 = 32 << 20;

/// The run directories under `root`: its subfolders that hold a config.json and a
/// metrics.csv, and those of the contests in it (`compare-…/runs/…`), sorted by path. A
/// missing or unreadable root has none.
pub fn find_runs(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .max_depth(3)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = walk.next() {
        let Ok(entry) = entry else { continue };
        if !entry.file_type().is_dir() {
            continue;
        }
        let path = entry.path();
        if is_run(path) {
            found.push(path.to_path_buf());
            walk.skip_current_dir();
        } else if entry.depth() == 1 && !path.join(CONTEST_FILE).is_file() {
            // Deeper levels are searched only inside contests.
            walk.skip_current_dir();
        }
    }
    found
}

/// Whether `dir` looks like a run directory (config.json and metrics.csv).
pub fn is_run(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file() && dir.join(METRICS_FILE).is_file()
}

/// New rows of a metrics.csv since the last poll.
#[derive(Debug, Default, PartialEq)]
pub struct Tailed {
    /// The file was rewritten (a run continued after a crash trims its rows): `rows` start
    /// again from the beginning, and what was read before is to be forgotten.
    pub reset: bool,
    pub rows: Vec<MetricsRow>,
}

/// metrics.csv read as it grows: each poll reads the bytes appended since the last one and
/// returns the rows of its complete lines; a half-written last line waits for the next poll.
#[derive(Debug)]
pub struct MetricsTail {
    path: PathBuf,
    offset: u64,
    /// The header once read: its names, or None when they are not UTF-8 (rows are then read
    /// by position, as the csv crate does in [`run_dir::read_metrics`]).
    headers: Option<Option<csv::StringRecord>>,
    /// The file's identity when last read (inode on Unix), to notice a rewrite.
    identity: Option<u64>,
}

impl MetricsTail {
    /// A tail on `dir`'s metrics.csv, from its beginning.
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(METRICS_FILE),
            offset: 0,
            headers: None,
            identity: None,
        }
    }

    /// The rows appended since the last poll.
    ///
    /// # Errors
    /// A sentence naming the file when it cannot be opened or read.
    pub fn poll(&mut self) -> Result<Tailed, String> {
        let err = |e: std::io::Error| format!("cannot read {}: {e}", self.path.display());
        let mut f = std::fs::File::open(&self.path).map_err(err)?;
        let meta = f.metadata().map_err(err)?;
        let identity = file_identity(&meta);
        let mut out = Tailed::default();
        if meta.len() < self.offset || (self.identity.is_some() && identity != self.identity) {
            self.offset = 0;
            self.headers = None;
            out.reset = true;
        }
        self.identity = identity;
        if meta.len() == self.offset {
            return Ok(out);
        }
        f.seek(SeekFrom::Start(self.offset)).map_err(err)?;
        let mut bytes = Vec::new();
        f.take(READ_MAX).read_to_end(&mut bytes).map_err(err)?;
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Ok(out);
        };
        self.offset += end as u64 + 1;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(&bytes[..=end]);
        // Exactly as the csv crate reads run_dir::read_metrics: a row that is not UTF-8 is
        // passed over, and a header that is not is ignored (rows are then read by position).
        for record in reader.byte_records().flatten() {
            let record = csv::StringRecord::from_byte_record(record);
            match &self.headers {
                None => self.headers = Some(record.ok()),
                Some(h) => {
                    if let Ok(row) = record
                        .map_err(|_| ())
                        .and_then(|r| r.deserialize::<MetricsRow>(h.as_ref()).map_err(|_| ()))
                    {
                        out.rows.push(row);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(unix)]
fn file_identity(meta: &std::fs::Metadata) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    Some(meta.ino())
}

#[cfg(not(unix))]
fn file_identity(_meta: &std::fs::Metadata) -> Option<u64> {
    None
}

/// What a run did, for the runs view's table.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub dir: PathBuf,
    /// The directory's name.
    pub name: String,
    /// The contest folder's name, for a run a contest made.
    pub contest: Option<String>,
    /// `rotation+contrastive`.
    pub tasks: String,
    pub data: String,
    /// Working size, px.
    pub size: usize,
    pub steps: u64,
    pub epoch: usize,
    pub epochs: usize,
    /// Training wall-clock time, s (continuations added up).
    pub wall_s: f64,
    /// The weighted loss of the last step.
    pub final_loss: Option<f64>,
    /// The first task's proxy metric at the last step: its name, value, and whether it is a
    /// fraction (shown in percent).
    pub proxy: Option<(String, f64, bool)>,
    /// The best encoder stage by kNN top-1 and its accuracy (a fraction): from eval.json when
    /// the run was evaluated and has not trained on since, else from the monitor's last
    /// measurement. [`RunSummary::knn_from`] says which.
    pub best_knn: Option<(String, f64)>,
    /// Where `best_knn` comes from.
    pub knn_from: Option<Judged>,
    /// Linear-probe accuracy (a fraction), from eval.json.
    pub probe: Option<f64>,
    /// The step eval.json judged (None: no eval.json, or one written before steps were
    /// recorded).
    pub eval_step: Option<u64>,
    /// When metrics.csv was last written.
    pub modified: Option<SystemTime>,
    /// Whether a process holds the run's writer lock now ([`run_dir::being_written`]); `None`
    /// where that cannot be told, and [`RunSummary::modified`] is all there is to go by.
    pub writing: Option<bool>,
}

/// Where a run's kNN top-1 figure comes from: the two are measured on different images, so
/// the table says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// `pretext eval` or a contest (eval.json): every held-out image, at this step (None: a
    /// file written before steps were recorded).
    Eval(Option<u64>),
    /// The training monitor's last measurement, at this step: its fixed subset of the
    /// held-out images.
    Monitor(u64),
}

impl RunSummary {
    /// Whether the run has trained past the step its eval.json judged: its probe figure is an
    /// older encoder's (and its kNN figure the monitor's, once the monitor has measured since).
    pub fn eval_outgrown(&self) -> bool {
        self.eval_step.is_some_and(|e| self.steps > e)
    }
}

/// A [`RunSummary`] kept up to date from a run's rows as they arrive.
#[derive(Clone, Debug)]
pub struct SummaryFold {
    summary: RunSummary,
    first_task: Option<TaskKind>,
    wall: crate::view::WallClock,
    /// The monitor's last measurement: its step and kNN per stage.
    knn_step: Option<u64>,
    knn: BTreeMap<String, f64>,
    /// eval.json's best stage, if it measured kNN (it wins over the monitor until the run
    /// trains past the step it judged).
    eval_knn: Option<(String, f64)>,
}

impl SummaryFold {
    /// An empty summary of the run in `dir`, configured by its config.json.
    pub fn new(dir: &Path, config: &TrainConfig) -> Self {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let contest = dir
            .parent()
            .and_then(Path::parent)
            .filter(|c| c.join(CONTEST_FILE).is_file())
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned());
        Self {
            summary: RunSummary {
                dir: dir.to_path_buf(),
                name,
                contest,
                tasks: config.tasks_label(),
                data: config.data.to_string(),
                size: config.size,
                steps: 0,
                epoch: 0,
                epochs: config.epochs,
                wall_s: 0.0,
                final_loss: None,
                proxy: None,
                best_knn: None,
                knn_from: None,
                probe: None,
                eval_step: None,
                modified: None,
                writing: None,
            },
            first_task: config.tasks.first().copied(),
            wall: crate::view::WallClock::default(),
            knn_step: None,
            knn: BTreeMap::new(),
            eval_knn: None,
        }
    }

    /// The summary of the rows taken so far.
    pub fn summary(&self) -> &RunSummary {
        &self.summary
    }

    /// Starts over (the file was rewritten).
    pub fn reset(&mut self) {
        let s = &mut self.summary;
        (s.steps, s.epoch, s.wall_s, s.final_loss, s.proxy) = (0, 0, 0.0, None, None);
        (self.wall, self.knn_step) = (crate::view::WallClock::default(), None);
        self.knn.clear();
        self.choose_knn();
    }

    /// The newer of eval.json's kNN figure and the monitor's: eval.json's unless the monitor
    /// measured a later step than it judged (an eval.json without a step always wins).
    fn choose_knn(&mut self) {
        let s = &mut self.summary;
        let monitor = self
            .knn_step
            .and_then(|step| Some((best(&self.knn)?, step)));
        (s.best_knn, s.knn_from) = match (&self.eval_knn, monitor) {
            (Some(e), Some((_, step))) if s.eval_step.is_none_or(|e| e >= step) => {
                (Some(e.clone()), Some(Judged::Eval(s.eval_step)))
            }
            (_, Some((m, step))) => (Some(m), Some(Judged::Monitor(step))),
            (Some(e), None) => (Some(e.clone()), Some(Judged::Eval(s.eval_step))),
            (None, None) => (None, None),
        };
    }

    /// Takes new rows.
    pub fn push(&mut self, rows: &[MetricsRow]) {
        for r in rows {
            let s = &mut self.summary;
            if let Some(t) = self.wall.add(r.wall_s) {
                s.wall_s = s.wall_s.max(t);
            }
            s.epoch = s.epoch.max(r.epoch);
            if r.task == run_dir::KNN_TASK {
                if let Some(stage) = r.proxy_metric.strip_prefix("knn_accuracy_")
                    && stage != "raw_pixels"
                {
                    if self.knn_step != Some(r.step) {
                        self.knn.clear();
                        self.knn_step = Some(r.step);
                    }
                    self.knn.insert(stage.to_string(), r.proxy_value);
                }
                continue;
            }
            if r.task == run_dir::GAUGES_TASK {
                continue;
            }
            s.steps = s.steps.max(r.step);
            s.final_loss = r.step_loss.or(r.loss).or(s.final_loss);
            if let Some(t) = self.first_task
                && t.name() == r.task
            {
                let info = crate::tasks::metric_info(t);
                s.proxy = Some((info.name.to_string(), r.proxy_value, info.percent));
            }
        }
        self.choose_knn();
    }

    /// Takes the run's eval.json (`pretext eval`, `pretext compare`): kNN per stage of the
    /// trained encoder, the linear probe and the step judged. Returns whether it changed
    /// anything.
    pub fn set_eval(&mut self, json: &serde_json::Value) -> bool {
        let report = &json["report"];
        let knn: BTreeMap<String, f64> = report["knn"]
            .as_array()
            .map(|stages| {
                stages
                    .iter()
                    .filter_map(|s| {
                        let stage = s["stage"].as_str()?;
                        let short = crate::eval::embed::stage_key(stage);
                        Some((short.to_string(), s["trained"].as_f64()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let probe = report["probe_trained"].as_f64();
        if knn.is_empty() && probe.is_none() {
            return false;
        }
        let before = self.summary.clone();
        self.eval_knn = best(&knn);
        self.summary.probe = probe;
        self.summary.eval_step = json["step"].as_u64();
        self.choose_knn();
        before != self.summary
    }

    /// When metrics.csv was last written.
    pub fn set_modified(&mut self, t: Option<SystemTime>) {
        self.summary.modified = t;
    }

    /// Whether a process holds the run's writer lock now (None: cannot be told).
    pub fn set_writing(&mut self, writing: Option<bool>) {
        self.summary.writing = writing;
    }
}

/// The stage with the highest accuracy.
fn best(knn: &BTreeMap<String, f64>) -> Option<(String, f64)> {
    knn.iter()
        .filter(|(_, v)| v.is_finite())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(k, v)| (k.clone(), *v))
}

/// The newest preview picture of each task in a run's previews/ folder
/// (`epoch-NNNN-<task>.png`): task → (epoch, path).
pub fn newest_previews(dir: &Path) -> BTreeMap<TaskKind, (usize, PathBuf)> {
    let mut out: BTreeMap<TaskKind, (usize, PathBuf)> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join(run_dir::PREVIEW_DIR)) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some((epoch, task)) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(run_dir::preview_name)
        else {
            continue;
        };
        let Some(task) = TaskKind::ALL.into_iter().find(|k| k.name() == task) else {
            continue;
        };
        if out.get(&task).is_none_or(|(e, _)| *e < epoch) {
            out.insert(task, (epoch, path));
        }
    }
    out
}

/// A preview picture read back from disk.
///
/// # Errors
/// A sentence naming the file when it cannot be decoded.
pub fn read_preview(
    task: TaskKind,
    epoch: usize,
    path: &Path,
) -> Result<crate::tasks::Preview, String> {
    let img = image::open(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .to_rgb8();
    Ok(crate::tasks::Preview {
        task,
        caption: format!("{task} after epoch {epoch} (from {})", path.display()),
        image: crate::tasks::Canvas {
            width: img.width() as usize,
            height: img.height() as usize,
            rgb: img.into_raw(),
        },
        pixels: None,
    })
}
