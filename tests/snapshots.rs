//! Image snapshots of the main panels, rendered with wgpu (on the CPU through Mesa's lavapipe
//! where there is no GPU). `UPDATE_SNAPSHOTS=1 cargo test --release --test snapshots` renews
//! them after an intended change of looks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use pretext::config::{DataSource, TrainConfig};
use pretext::ui::{DataState, Persisted, PretextApp};

fn harness(out: &std::path::Path) -> Harness<'static, PretextApp> {
    let mut h = Harness::builder()
        .with_size(eframe::egui::vec2(1400.0, 900.0))
        .wgpu()
        .build_eframe(|cc| PretextApp::new(&cc.egui_ctx, None, None).unwrap());
    let settings = Persisted {
        config: TrainConfig {
            data: DataSource::Builtin { count: 120 },
            out: out.to_path_buf(),
            ..TrainConfig::default()
        },
        // The frame-time readout changes from run to run.
        show_frame_time: false,
        ..Persisted::default()
    };
    h.state_mut().settings = settings;
    h.state_mut().open_data(DataSource::Builtin { count: 120 });
    let start = Instant::now();
    while !matches!(h.state().data, DataState::Ready(_)) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "data did not load"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.run_steps(3);
    h
}

#[test]
fn main_window_with_the_built_in_data() {
    let out = tempfile::tempdir().unwrap();
    let mut h = harness(out.path());
    h.snapshot("main_window");
}

#[test]
fn augmentation_samples() {
    let out = tempfile::tempdir().unwrap();
    let mut h = harness(out.path());
    h.get_by_label("Augmentations").click();
    // The views are drawn on a background thread.
    let start = Instant::now();
    while h.state().tabs.augment.view.is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "no views drawn");
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.run_steps(3);
    h.snapshot("augmentations");
}
