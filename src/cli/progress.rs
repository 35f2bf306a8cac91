//! The progress bars of `pretext train` and `pretext compare` on standard error (indicatif): one
//! while images load, one per epoch (or per contest task) with the loss, the proxy metrics,
//! images per second and the time left. They are
//! drawn only when standard error is a terminal; anywhere else (a pipe, a file, the tests)
//! nothing of them is written.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::note;
use crate::train::StepMetrics;

const LOADING: &str = "Loading images [{bar:24}] {pos}/{len}";
const STEPS: &str = "{prefix} [{bar:24}] {pos}/{len}  {msg}  ETA {eta}";

/// The bar on screen, if any, and whether bars are drawn at all.
pub struct Bars {
    drawn: bool,
    loading: Option<ProgressBar>,
    /// The bar of the epoch being trained, with its epoch number.
    epoch: Option<(usize, ProgressBar)>,
}

impl Bars {
    /// Bars drawn on standard error when it is a terminal, hidden otherwise.
    pub fn new() -> Self {
        Self {
            drawn: std::io::stderr().is_terminal(),
            loading: None,
            epoch: None,
        }
    }

    fn bar(&self, template: &str, len: usize) -> ProgressBar {
        let target = if self.drawn {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#-");
        ProgressBar::with_draw_target(Some(len as u64), target).with_style(style)
    }

    /// `done` of `total` images decoded.
    pub fn loading(&mut self, done: usize, total: usize) {
        if self.loading.is_none() {
            self.loading = Some(self.bar(LOADING, total));
        }
        if let Some(bar) = &self.loading {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    }

    /// A training step: the epoch's bar moves on (a new epoch gets a new bar).
    pub fn step(&mut self, m: &StepMetrics) {
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != m.epoch) {
            self.clear();
            let bar = self.bar(STEPS, m.batches);
            bar.set_prefix(format!(
                "Epoch {}",
                crate::report::epoch_of(m.epoch, m.epochs)
            ));
            // Count the time left from here: a continued run starts mid-epoch, and the first
            // step's jump from 0 is no rate.
            bar.set_position(m.batch as u64);
            bar.reset_eta();
            self.epoch = Some((m.epoch, bar));
        }
        if let Some((_, bar)) = &self.epoch {
            bar.set_message(crate::report::step_numbers(m));
            bar.set_position(m.batch as u64);
        }
    }

    /// A bar keyed by `key` (a contest's task): a new key gets a new bar with `prefix`; the bar
    /// shows `pos` of `len` and `msg`.
    pub fn task(&mut self, key: usize, prefix: &str, pos: u64, len: u64, msg: String) {
        if self.epoch.as_ref().is_none_or(|(k, _)| *k != key) {
            self.clear();
            let bar = self.bar(STEPS, 0);
            bar.set_prefix(prefix.to_string());
            bar.set_length(len);
            bar.set_position(pos);
            bar.reset_eta();
            self.epoch = Some((key, bar));
        }
        if let Some((_, bar)) = &self.epoch {
            bar.set_length(len.max(pos));
            bar.set_message(msg);
            bar.set_position(pos);
        }
    }

    /// Takes every bar off the screen (before the end of an epoch's line, or the end).
    pub fn clear(&mut self) {
        if let Some(bar) = self.loading.take() {
            bar.finish_and_clear();
        }
        if let Some((_, bar)) = self.epoch.take() {
            bar.finish_and_clear();
        }
    }

    /// Writes a diagnostic line without tearing the bar: it is lifted off, the line written, and
    /// the bar drawn again below it.
    pub fn note(&self, line: impl std::fmt::Display) {
        match (&self.epoch, &self.loading) {
            (Some((_, bar)), _) | (None, Some(bar)) => bar.suspend(|| note(line)),
            (None, None) => note(line),
        }
    }
}
