//! Frame-time statistics: how long the app's own work took per frame.

use std::collections::VecDeque;

const WINDOW: usize = 600;

#[derive(Default)]
pub struct FrameStats {
    secs: VecDeque<f32>,
    /// All frames since start (seconds, and whether a run was training), for the report
    /// printed on exit.
    all: Vec<(f32, bool)>,
}

impl FrameStats {
    pub fn record(&mut self, secs: f32, training: bool) {
        if self.secs.len() == WINDOW {
            self.secs.pop_front();
        }
        self.secs.push_back(secs);
        if self.all.len() < 1_000_000 {
            self.all.push((secs, training));
        }
    }

    /// The exit report: median and 95th percentile of all frames and of those drawn while
    /// training.
    pub fn report(&self) -> String {
        let mut parts = Vec::new();
        for (what, training_only) in [("all", false), ("while training", true)] {
            let v: Vec<f32> = self
                .all
                .iter()
                .filter(|(_, t)| *t || !training_only)
                .map(|(s, _)| *s)
                .collect();
            if let Some((median, p95)) = percentiles(v.iter().copied()) {
                parts.push(format!(
                    "{what}: {} frames, median {median:.2} ms, 95th percentile {p95:.2} ms",
                    v.len()
                ));
            }
        }
        format!("frame time — {}", parts.join("; "))
    }

    /// Writes every frame as CSV (`frame,ms,training`) to `path`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_csv(&self, path: &std::path::Path) -> csv::Result<()> {
        let mut w = csv::Writer::from_path(path)?;
        w.write_record(["frame", "ms", "training"])?;
        for (i, (s, t)) in self.all.iter().enumerate() {
            w.serialize((i, s * 1000.0, u8::from(*t)))?;
        }
        w.flush()?;
        Ok(())
    }

    /// (median, 95th percentile) in milliseconds over the recent window.
    pub fn summary(&self) -> Option<(f32, f32)> {
        percentiles(self.secs.iter().copied())
    }
}

/// (median, 95th percentile) in milliseconds.
pub fn percentiles(values: impl Iterator<Item = f32>) -> Option<(f32, f32)> {
    let mut v: Vec<f32> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f32::total_cmp);
    let at = |q: f32| v[((v.len() - 1) as f32 * q).round() as usize] * 1000.0;
    Some((at(0.5), at(0.95)))
}
