//! Frame-time statistics: how long the app's own work took per frame.

use std::collections::VecDeque;

const WINDOW: usize = 600;

#[derive(Default)]
pub struct FrameStats {
    secs: VecDeque<f32>,
    /// All frames since start, for the report printed on exit.
    pub all: Vec<f32>,
}

impl FrameStats {
    pub fn record(&mut self, secs: f32) {
        if self.secs.len() == WINDOW {
            self.secs.pop_front();
        }
        self.secs.push_back(secs);
        if self.all.len() < 1_000_000 {
            self.all.push(secs);
        }
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
