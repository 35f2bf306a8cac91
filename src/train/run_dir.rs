//! The run directory: `config.json`, `metrics.csv`, `checkpoints/` and `previews/`.
//!
//! ```text
//! runs/20261128-205400-rotation/
//!   config.json                      everything needed to reproduce the run
//!   metrics.csv                      one row per task per step
//!   checkpoints/epoch-0001.safetensors   model weights (PyTorch state_dict names)
//!   checkpoints/resume.safetensors   weights + optimiser state + position, for --resume
//!   previews/epoch-0001-rotation.png
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::StepMetrics;
use crate::config::TrainConfig;

pub const CONFIG_FILE: &str = "config.json";
pub const METRICS_FILE: &str = "metrics.csv";
pub const CHECKPOINT_DIR: &str = "checkpoints";
pub const PREVIEW_DIR: &str = "previews";
pub const RESUME_FILE: &str = "resume.safetensors";
pub const METRICS_HEADER: &str =
    "step,epoch,task,loss,proxy_metric,proxy_value,lr,images_per_s,wall_s";

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("cannot write run directory {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a run directory: {message}")]
    NotARun { path: PathBuf, message: String },
}

pub struct RunDir {
    pub path: PathBuf,
    metrics: BufWriter<File>,
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
        Self::write_config(&path, config)?;
        let metrics_path = path.join(METRICS_FILE);
        let mut f = File::create(&metrics_path).map_err(write_err(&metrics_path))?;
        writeln!(f, "{METRICS_HEADER}").map_err(write_err(&metrics_path))?;
        Ok(Self {
            path,
            metrics: BufWriter::new(f),
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
                metrics: BufWriter::new(f),
            },
            config,
        ))
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
        let mut kept = format!("{METRICS_HEADER}\n").into_bytes();
        let fields = METRICS_HEADER.split(',').count();
        for line in complete_lines(&text).split(|&b| b == b'\n').skip(1) {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let ok = line.split(',').count() == fields
                && line
                    .split(',')
                    .next()
                    .and_then(|f| f.parse::<u64>().ok())
                    .is_some_and(|s| s <= step);
            if ok {
                kept.extend_from_slice(line.as_bytes());
                kept.push(b'\n');
            }
        }
        if kept != text {
            crate::model::checkpoint::write_atomic(&path, &kept).map_err(write_err(&path))?;
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(write_err(&path))?;
            self.metrics = BufWriter::new(f);
        }
        if let Ok(entries) = std::fs::read_dir(self.path.join(CHECKPOINT_DIR)) {
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
        let text = serde_json::to_string_pretty(config).map_err(|e| RunDirError::Write {
            path: p.clone(),
            source: std::io::Error::other(e),
        })?;
        crate::model::checkpoint::write_atomic(&p, text.as_bytes()).map_err(write_err(&p))
    }

    /// Appends one row per task.
    pub fn append_metrics(&mut self, m: &StepMetrics) -> Result<(), RunDirError> {
        let path = self.path.join(METRICS_FILE);
        for t in &m.tasks {
            writeln!(
                self.metrics,
                "{},{},{},{:.6},{},{:.6},{:e},{:.2},{:.3}",
                m.step,
                m.epoch,
                t.task,
                t.loss,
                t.metric_info.name.replace(' ', "_"),
                t.metric,
                m.lr,
                m.images_per_s,
                m.wall_s
            )
            .map_err(write_err(&path))?;
        }
        Ok(())
    }

    /// Appends the monitor's kNN accuracies (rows of task `knn`) and gauges (task `gauges`).
    pub fn append_knn(&mut self, k: &super::KnnMetrics, wall_s: f64) -> Result<(), RunDirError> {
        let path = self.path.join(METRICS_FILE);
        for (stage, acc) in &k.stages {
            let name = stage.split_whitespace().next().unwrap_or(stage);
            writeln!(
                self.metrics,
                "{},{},knn,,knn_accuracy_{name},{acc:.6},,,{wall_s:.3}",
                k.step, k.epoch
            )
            .map_err(write_err(&path))?;
        }
        if let Some(acc) = k.raw_pixels {
            writeln!(
                self.metrics,
                "{},{},knn,,knn_accuracy_raw_pixels,{acc:.6},,,{wall_s:.3}",
                k.step, k.epoch
            )
            .map_err(write_err(&path))?;
        }
        let g = &k.gauges;
        for (name, v) in [
            ("std_of_l2_normalized", g.std_of_l2_normalized),
            ("rankme", g.rankme),
            ("uniformity", g.uniformity),
            ("alignment", g.alignment.unwrap_or(f64::NAN)),
        ] {
            if !v.is_finite() {
                continue;
            }
            writeln!(
                self.metrics,
                "{},{},gauges,,{name},{v:.6},,,{wall_s:.3}",
                k.step, k.epoch
            )
            .map_err(write_err(&path))?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), RunDirError> {
        let path = self.path.join(METRICS_FILE);
        self.metrics.flush().map_err(write_err(&path))
    }

    pub fn checkpoint_path(&self, name: &str) -> PathBuf {
        self.path.join(CHECKPOINT_DIR).join(name)
    }

    pub fn preview_path(&self, epoch: usize, task: &str) -> PathBuf {
        self.path
            .join(PREVIEW_DIR)
            .join(format!("epoch-{epoch:04}-{task}.png"))
    }
}

/// One row of a run's metrics.csv.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsRow {
    pub step: u64,
    pub task: String,
    pub metric_name: String,
    pub loss: f64,
    pub metric: f64,
    pub percent: bool,
    pub lr: f64,
    pub images_per_s: f64,
}

/// Reads a run directory's metrics.csv, which another process may still be writing: a
/// half-written last line is left for later, malformed fields read as NaN, never a panic.
///
/// # Errors
/// A sentence naming the file when it cannot be read.
pub fn read_metrics(dir: &Path) -> Result<Vec<MetricsRow>, String> {
    let path = dir.join(METRICS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(complete_lines(&bytes));
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 9 {
            continue;
        }
        let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
        rows.push(MetricsRow {
            step: f[0].parse().unwrap_or(0),
            task: f[2].to_string(),
            metric_name: f[4].to_string(),
            loss: num(f[3]),
            metric: num(f[5]),
            percent: !f[4].contains("PSNR"),
            lr: num(f[6]),
            images_per_s: num(f[7]),
        });
    }
    Ok(rows)
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

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(timestamp(UNIX_EPOCH), "19700101-000000");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_647_240); // 2026-11-25 22:54:00
        assert_eq!(timestamp(t), "20261125-225400");
    }
}
