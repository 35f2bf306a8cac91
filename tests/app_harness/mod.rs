//! The desktop app under egui_kittest, shared by the UI tests (`tests/ui.rs`) and the CUDA
//! test's run of the app (`tests/cuda.rs`): settings in memory, a small run's settings, the
//! window, waiting for the engine, the Math tab's walk and the Explorer's embedding.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use pretext::config::{DataSource, LrSchedule, TaskKind, TrainConfig};
use pretext::ui::{Persisted, PretextApp};

/// eframe's settings store, in memory.
#[derive(Default)]
pub struct MemoryStorage(HashMap<String, String>);

impl eframe::Storage for MemoryStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }
    fn flush(&mut self) {}
}

/// A store holding `config` as the app's saved settings.
pub fn storage_with(config: TrainConfig) -> MemoryStorage {
    let mut s = MemoryStorage::default();
    let settings = Persisted {
        config,
        ..Persisted::default()
    };
    eframe::set_value(&mut s, "pretext-settings", &settings);
    s
}

/// Rotation on 64 built-in images, batch 16, 50 epochs, writing under `out`.
pub fn small_config(out: &std::path::Path) -> TrainConfig {
    TrainConfig {
        data: DataSource::Builtin { count: 64 },
        tasks: vec![TaskKind::Rotation],
        lr_schedule: LrSchedule::Constant,
        batch: 16,
        epochs: 50,
        out: out.to_path_buf(),
        preview_images: 2,
        // Never the home folder's image cache: the test's own.
        cache_dir: Some(out.join("image-cache")),
        ..TrainConfig::default()
    }
}

/// The app in a 1400 × 900 window, on `storage`'s settings (and `open`'s folder).
pub fn app(storage: &MemoryStorage, open: Option<PathBuf>) -> Harness<'static, PretextApp> {
    Harness::builder()
        .with_size(eframe::egui::vec2(1400.0, 900.0))
        .build_eframe(|cc| PretextApp::new(&cc.egui_ctx, Some(storage), open).unwrap())
}

/// Runs frames until `cond` holds (the worker runs in real time, so frames are spaced).
pub fn wait_until(h: &mut Harness<'_, PretextApp>, what: &str, cond: impl Fn(&PretextApp) -> bool) {
    let start = Instant::now();
    while !cond(h.state()) {
        if start.elapsed() > Duration::from_secs(120) {
            let a = h.state();
            panic!(
                "timed out waiting for {what}: status {:?}, {} steps, messages {:?}",
                a.run.status, a.run.curves.steps_seen, a.run.messages
            );
        }
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.step();
}

/// Walks the Math tab's steps of task `task` (of the frozen batch) with Next from the first
/// to the last; returns how many it showed.
pub fn walk_math_task(h: &mut Harness<'static, PretextApp>, task: usize) -> usize {
    h.state_mut().tabs.math.sel.task = task;
    h.state_mut().tabs.math.step = 0;
    h.run_steps(2);
    let mut seen = 1;
    loop {
        let before = h.state().tabs.math.step;
        h.get_by_label("Next").click();
        h.run_steps(2);
        if h.state().tabs.math.step == before {
            return seen;
        }
        seen += 1;
        assert!(seen < 20);
    }
}

/// Opens the Explorer, embeds every image with the current encoder and returns the embedding.
pub fn embed_all(h: &mut Harness<'static, PretextApp>) -> pretext::eval::embed::Embedding {
    h.get_by_label("Explorer").click();
    h.run_steps(2);
    h.get_by_label("Embed all images").click();
    wait_until(h, "the embedding", |a| a.tabs.explorer.embedding.is_some());
    h.state().tabs.explorer.embedding.clone().unwrap()
}
