//! The desktop app driven through egui_kittest: buttons found by label and clicked, state
//! checked after frames run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use pretext::config::{DataSource, TaskKind, TrainConfig};
use pretext::train::{Outcome, PauseReason};
use pretext::ui::{DataState, Persisted, PretextApp, RunStatus};

#[derive(Default)]
struct MemoryStorage(HashMap<String, String>);

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

fn storage_with(config: TrainConfig) -> MemoryStorage {
    let mut s = MemoryStorage::default();
    let settings = Persisted {
        config,
        ..Persisted::default()
    };
    eframe::set_value(&mut s, "pretext-settings", &settings);
    s
}

fn small_config(out: &std::path::Path) -> TrainConfig {
    TrainConfig {
        data: DataSource::Builtin { count: 64 },
        batch: 16,
        epochs: 50,
        out: out.to_path_buf(),
        preview_images: 2,
        ..TrainConfig::default()
    }
}

fn app(storage: &MemoryStorage, open: Option<PathBuf>) -> Harness<'static, PretextApp> {
    Harness::builder()
        .with_size(eframe::egui::vec2(1400.0, 900.0))
        .build_eframe(|cc| PretextApp::new(&cc.egui_ctx, Some(storage), open).unwrap())
}

/// Runs frames until `cond` holds (the worker runs in real time, so frames are spaced).
fn wait_until(h: &mut Harness<'_, PretextApp>, what: &str, cond: impl Fn(&PretextApp) -> bool) {
    let start = Instant::now();
    while !cond(h.state()) {
        if start.elapsed() > Duration::from_secs(120) {
            let a = h.state();
            panic!(
                "timed out waiting for {what}: status {:?}, {} steps, messages {:?}",
                a.status, a.curves.steps_seen, a.messages
            );
        }
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.step();
}

/// The app on its data, one step trained, paused.
fn started_and_paused(storage: &MemoryStorage) -> Harness<'static, PretextApp> {
    let mut h = app(storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    h.get_by_label("Start").click();
    wait_until(&mut h, "a step", |a| a.curves.steps_seen >= 1);
    h.get_by_label("Pause").click();
    wait_until(&mut h, "pause", |a| {
        matches!(a.status, RunStatus::Paused(_))
    });
    h
}

#[test]
fn start_pause_step_resume_stop_on_builtin_data() {
    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(out.path()));
    let mut h = app(&storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    assert!(h.query_by_label_contains("64 images").is_some());

    h.get_by_label("Start").click();
    wait_until(&mut h, "steps and previews", |a| {
        a.curves.steps_seen >= 2 && !a.previews.is_empty()
    });
    let points = h
        .state()
        .curves
        .series
        .get("loss/rotation")
        .map(|s| s.len())
        .unwrap_or(0);
    assert!(points >= 2, "loss curve has {points} points");
    assert!(h.state().previews.contains_key(&TaskKind::Rotation));

    h.get_by_label("Pause").click();
    wait_until(&mut h, "pause", |a| {
        matches!(a.status, RunStatus::Paused(_))
    });
    // Let any event of a step that was under way arrive.
    for _ in 0..20 {
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = h.state().curves.steps_seen;
    h.get_by_label("Step").click();
    wait_until(&mut h, "one step", |a| {
        a.status == RunStatus::Paused(PauseReason::Stepped)
    });
    assert_eq!(
        h.state().curves.steps_seen,
        before + 1,
        "Step trains exactly one batch"
    );

    h.get_by_label("Resume").click();
    wait_until(&mut h, "resume", |a| a.status == RunStatus::Running);
    h.get_by_label("Stop").click();
    wait_until(&mut h, "stop", |a| {
        matches!(a.status, RunStatus::Finished(_))
    });
    assert_eq!(h.state().status, RunStatus::Finished(Outcome::Stopped));
    assert!(
        h.state()
            .run_dir
            .as_ref()
            .unwrap()
            .join("metrics.csv")
            .is_file()
    );
}

#[test]
fn opening_folders_by_typed_path_including_an_empty_one() {
    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(out.path()));
    let mut h = app(&storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));

    let empty = tempfile::tempdir().unwrap();
    h.state_mut().path_input = empty.path().display().to_string();
    h.get_by_label("Open").click();
    wait_until(&mut h, "load error", |a| {
        matches!(a.data, DataState::Failed(_))
    });
    assert!(
        h.query_all_by_label_contains("no readable image").count() >= 1,
        "the error shows in the window"
    );
    assert!(h.query_by_label("Start").is_some());

    // A real folder: two classes of generated images.
    let good = tempfile::tempdir().unwrap();
    let d = pretext::data::builtin::generate(6, 32);
    for i in 0..6 {
        let dir = good.path().join(if i % 2 == 0 { "even" } else { "odd" });
        std::fs::create_dir_all(&dir).unwrap();
        image::RgbImage::from_raw(32, 32, d.image(i).to_vec())
            .unwrap()
            .save(dir.join(format!("{i}.png")))
            .unwrap();
    }
    h.state_mut().path_input = good.path().display().to_string();
    h.get_by_label("Open").click();
    wait_until(&mut h, "folder", |a| matches!(a.data, DataState::Ready(_)));
    assert!(h.query_by_label_contains("2 classes").is_some());
    assert_eq!(
        h.state().settings.recent.first(),
        Some(&good.path().display().to_string())
    );
}

#[test]
fn settings_survive_a_restart() {
    let out = tempfile::tempdir().unwrap();
    let mut storage = storage_with(small_config(out.path()));
    let mut h = app(&storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    h.get_by_label("contrastive").click();
    h.run_steps(2);
    h.state_mut().settings.smoothing = 0.5;
    h.state_mut().settings.log_scale = true;
    let saved = h.state().settings.clone();
    assert_eq!(
        saved.config.tasks,
        [TaskKind::Rotation, TaskKind::Contrastive]
    );
    eframe::App::save(h.state_mut(), &mut storage);
    drop(h);

    let h2 = app(&storage, None);
    assert_eq!(h2.state().settings, saved);
}

#[test]
fn a_nan_loss_shows_advice_in_the_window_without_crashing() {
    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(out.path()));
    let mut h = app(&storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    h.get_by_label("Start").click();
    wait_until(&mut h, "a step", |a| a.curves.steps_seen >= 1);
    // What the "Set" button sends, with a learning rate no run survives.
    h.state_mut().send(pretext::train::Command::SetLr(1e38));
    wait_until(&mut h, "the NaN pause", |a| {
        a.status == RunStatus::Paused(PauseReason::NonFiniteLoss)
    });
    assert!(h.query_all_by_label_contains("lower learning rate").count() >= 1);
    h.get_by_label("Stop").click();
    wait_until(&mut h, "stop", |a| {
        matches!(a.status, RunStatus::Finished(_))
    });
}

#[test]
fn continuing_a_run_directory_written_by_the_command_line() {
    let out = tempfile::tempdir().unwrap();
    // A one-epoch run, as `pretext train` leaves it.
    let trainer = pretext::train::Trainer::spawn().unwrap();
    trainer.send(pretext::train::Command::Start(Box::new(TrainConfig {
        epochs: 1,
        ..small_config(out.path())
    })));
    let run_dir = loop {
        if let pretext::train::Event::Finished { run_dir, .. } = trainer
            .events()
            .recv_timeout(Duration::from_secs(120))
            .unwrap()
        {
            break run_dir.unwrap();
        }
    };
    drop(trainer);

    let storage = storage_with(TrainConfig {
        epochs: 2,
        ..small_config(out.path())
    });
    let mut h = app(&storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    h.state_mut().run_input = run_dir.display().to_string();
    h.get_by_label("Continue run").click();
    wait_until(&mut h, "the continued run", |a| {
        matches!(a.status, RunStatus::Finished(_))
    });
    let a = h.state();
    assert_eq!(
        a.status,
        RunStatus::Finished(Outcome::Completed),
        "{:?}",
        a.messages
    );
    // 4 steps read back from metrics.csv, 4 more trained.
    assert_eq!(a.curves.series["loss/rotation"].len(), 8);
    assert_eq!(a.last_step.as_ref().map(|s| s.step), Some(8));
}

#[test]
fn the_math_panel_walks_every_step_of_every_task() {
    let out = tempfile::tempdir().unwrap();
    let tasks = TaskKind::ALL.to_vec();
    let storage = storage_with(TrainConfig {
        task_weights: vec![1.0; tasks.len()],
        tasks,
        ..small_config(out.path())
    });
    let mut h = started_and_paused(&storage);
    h.get_by_label("Math").click();
    h.run_steps(2);
    h.get_by_label("Freeze batch").click();
    wait_until(&mut h, "the frozen batch", |a| a.math.is_some());
    for task in 0..5 {
        h.state_mut().math_sel.task = task;
        h.state_mut().math_step = 0;
        h.run_steps(2);
        let mut seen = 1;
        loop {
            let before = h.state().math_step;
            h.get_by_label("Next").click();
            h.run_steps(2);
            if h.state().math_step == before {
                break;
            }
            seen += 1;
            assert!(seen < 20);
        }
        assert!(seen >= 3, "task {task}: only {seen} steps");
        // Arrow keys walk back.
        h.key_press(eframe::egui::Key::ArrowLeft);
        h.run_steps(2);
        assert_eq!(h.state().math_step, seen - 2);
    }
    h.get_by_label("Stop").click();
    wait_until(&mut h, "stop", |a| {
        matches!(a.status, RunStatus::Finished(_))
    });
}

#[test]
fn the_explorer_embeds_every_image_and_shows_gauges_probe_and_neighbours() {
    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(out.path()));
    let mut h = started_and_paused(&storage);
    // The live gauges from the monitor's first measurement, alignment included.
    wait_until(&mut h, "the first kNN measurement", |a| {
        a.curves.series.contains_key("gauge/alignment")
    });
    h.run_steps(2);
    assert!(
        h.state().knn_start.is_some() && h.state().knn_pixels.is_some(),
        "random-init and raw-pixel references for the kNN plot"
    );
    assert!(
        h.query_all_by_label_contains("Alignment and uniformity")
            .count()
            >= 1
    );
    h.get_by_label("Explorer").click();
    h.run_steps(2);
    h.get_by_label("Embed all images").click();
    wait_until(&mut h, "the embedding", |a| a.embedding.is_some());
    let e = h.state().embedding.clone().unwrap();
    assert_eq!(e.z.len(), 64);
    assert_eq!(e.projection.len(), 64);
    assert!(e.probe.is_some(), "the built-in set is labelled");
    assert!(h.query_all_by_label_contains("RankMe").count() >= 1);
    assert!(h.query_all_by_label_contains("linear probe").count() >= 1);
    assert!(h.query_all_by_label_contains("alignment").count() >= 1);
    // Selecting an image shows its neighbours.
    h.state_mut().explorer_selected = Some(3);
    h.run_steps(3);
    assert!(h.query_all_by_label_contains("nearest neighbours").count() >= 1);
    h.get_by_label("Stop").click();
    wait_until(&mut h, "stop", |a| {
        matches!(a.status, RunStatus::Finished(_))
    });
}
