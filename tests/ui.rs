//! The desktop app driven through egui_kittest: buttons found by label and clicked, state
//! checked after frames run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod app_harness;
mod common;

use app_harness::{
    MemoryStorage, app, embed_all, small_config, storage_with, wait_until, walk_math_task,
};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use pretext::config::{ContrastiveLoss, DataSource, TaskKind, TrainConfig};
use pretext::train::{Outcome, PauseReason};
use pretext::ui::{DataState, Persisted, PretextApp, RunStatus};

/// The app on its data, one step trained, paused.
fn started_and_paused(storage: &MemoryStorage) -> Harness<'static, PretextApp> {
    let mut h = app(storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    h.get_by_label("Start").click();
    wait_until(&mut h, "a step", |a| a.run.curves.steps_seen >= 1);
    h.get_by_label("Pause").click();
    wait_until(&mut h, "pause", |a| {
        matches!(a.run.status, RunStatus::Paused(_))
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
        a.run.curves.steps_seen >= 2 && !a.tabs.previews.is_empty()
    });
    let points = h
        .state()
        .run
        .curves
        .series
        .get("loss/rotation")
        .map(|s| s.len())
        .unwrap_or(0);
    assert!(points >= 2, "loss curve has {points} points");
    assert!(h.state().tabs.previews.contains_key(&TaskKind::Rotation));

    h.get_by_label("Pause").click();
    wait_until(&mut h, "pause", |a| {
        matches!(a.run.status, RunStatus::Paused(_))
    });
    // Let any event of a step that was under way arrive.
    for _ in 0..20 {
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = h.state().run.curves.steps_seen;
    h.get_by_label("Step").click();
    wait_until(&mut h, "one step", |a| {
        a.run.status == RunStatus::Paused(PauseReason::Stepped)
    });
    assert_eq!(
        h.state().run.curves.steps_seen,
        before + 1,
        "Step trains exactly one batch"
    );

    h.get_by_label("Resume").click();
    wait_until(&mut h, "resume", |a| a.run.status == RunStatus::Running);
    h.get_by_label("Stop").click();
    wait_until(&mut h, "stop", |a| {
        matches!(a.run.status, RunStatus::Finished(_))
    });
    assert_eq!(h.state().run.status, RunStatus::Finished(Outcome::Stopped));
    assert!(
        h.state()
            .run
            .run_dir
            .as_ref()
            .unwrap()
            .join("metrics.csv")
            .is_file()
    );
}

/// Reset while a run trains, then Start at once: the stopped run's last events (its last
/// steps, its end) are not shown as the new run's.
#[test]
fn reset_then_start_at_once_shows_only_the_new_run() {
    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(out.path()));
    // Tall enough that Reset, below the other buttons, is not under the status bar.
    let mut h = Harness::builder()
        .with_size(eframe::egui::vec2(1400.0, 1200.0))
        .build_eframe(|cc| PretextApp::new(&cc.egui_ctx, Some(&storage), None).unwrap());
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    h.get_by_label("Start").click();
    wait_until(&mut h, "steps", |a| a.run.curves.steps_seen >= 3);
    let first = h.state().run.run_dir.clone().unwrap();
    h.get_by_label("Reset").click();
    wait_until(&mut h, "reset", |a| a.run.status == RunStatus::Idle);
    h.get_by_label("Start").click();
    h.step();
    // Until the new run says it started, nothing of the old one may land in the view.
    let start = Instant::now();
    loop {
        let a = h.state();
        assert!(
            !matches!(a.run.status, RunStatus::Finished(_)),
            "the stopped run's end was taken for the new run's: {:?}",
            a.run.messages
        );
        if a.run.run_dir.is_some() {
            break;
        }
        assert_eq!(
            a.run.curves.steps_seen, 0,
            "the stopped run's steps were shown"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the new run never started"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = h.state().run.run_dir.clone().unwrap();
    assert_ne!(first, second);
    wait_until(&mut h, "the new run's steps", |a| {
        a.run.curves.steps_seen >= 2
    });
    assert!(h.state().run.is_training(), "{:?}", h.state().run.status);
    h.get_by_label("Stop").click();
    wait_until(&mut h, "stop", |a| !a.run.is_training());
}

#[test]
fn opening_folders_by_typed_path_including_an_empty_one() {
    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(out.path()));
    let mut h = app(&storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));

    let empty = tempfile::tempdir().unwrap();
    h.state_mut().inputs.path = empty.path().display().to_string();
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
    h.state_mut().inputs.path = good.path().display().to_string();
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
fn the_contrastive_loss_is_chosen_in_the_task_settings_and_kept() {
    let out = tempfile::tempdir().unwrap();
    let mut storage = storage_with(small_config(out.path()));
    let mut h = tall_app(&storage);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    // A frame drawn with the data ready: the settings are enabled from then on.
    h.run_steps(2);
    assert_eq!(
        h.state().settings.config.settings.contrastive_loss,
        ContrastiveLoss::NtXent
    );
    open_task_settings(&mut h);
    h.get_by_label("DCL").click();
    h.run_steps(2);
    assert_eq!(
        h.state().settings.config.settings.contrastive_loss,
        ContrastiveLoss::Dcl
    );
    eframe::App::save(h.state_mut(), &mut storage);
    drop(h);
    let mut h = tall_app(&storage);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    h.run_steps(2);
    assert_eq!(
        h.state().settings.config.settings.contrastive_loss,
        ContrastiveLoss::Dcl
    );
    open_task_settings(&mut h);
    h.get_by_label("NT-Xent").click();
    h.run_steps(2);
    assert_eq!(
        h.state().settings.config.settings.contrastive_loss,
        ContrastiveLoss::NtXent
    );
}

/// The app in a window tall enough for the open "Task settings" to lie above the run buttons'
/// strip (in the usual 900 px they are below the fold, where a click does not reach them).
fn tall_app(storage: &MemoryStorage) -> Harness<'static, PretextApp> {
    Harness::builder()
        .with_size(eframe::egui::vec2(1400.0, 3000.0))
        .build_eframe(|cc| PretextApp::new(&cc.egui_ctx, Some(storage), None).unwrap())
}

/// Opens "Task settings" (its loss choice then in view).
fn open_task_settings(h: &mut Harness<'static, PretextApp>) {
    h.get_by_label("Task settings").click();
    h.run_steps(2);
}

#[test]
fn a_nan_loss_shows_advice_in_the_window_without_crashing() {
    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(out.path()));
    let mut h = app(&storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    h.get_by_label("Start").click();
    wait_until(&mut h, "a step", |a| a.run.curves.steps_seen >= 1);
    // What the "Set" button sends, with a learning rate no run survives.
    h.state_mut().send(pretext::train::Command::SetLr(1e38));
    wait_until(&mut h, "the NaN pause", |a| {
        a.run.status == RunStatus::Paused(PauseReason::NonFiniteLoss)
    });
    assert!(h.query_all_by_label_contains("lower learning rate").count() >= 1);
    h.get_by_label("Stop").click();
    wait_until(&mut h, "stop", |a| {
        matches!(a.run.status, RunStatus::Finished(_))
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

    // The person's own settings differ from the run's (its seed).
    let own = TrainConfig {
        epochs: 2,
        seed: 7,
        ..small_config(out.path())
    };
    let mut storage = storage_with(own.clone());
    let mut h = app(&storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    // Reset while a Continue is still reading its run back: nothing starts, the settings stay
    // the person's, and nothing of a later run is taken for a stopped one's.
    h.state_mut().continue_run(&run_dir, None);
    h.state_mut().reset();
    for _ in 0..100 {
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(h.state().run.status, RunStatus::Idle);
    assert_eq!(h.state().settings.config, own);
    h.state_mut().inputs.run = run_dir.display().to_string();
    h.get_by_label("Continue run").click();
    wait_until(&mut h, "the continued run's settings", |a| {
        a.settings.config.seed == 0
    });
    // Saved meanwhile (the window closed, say): the person's own, not the run's.
    eframe::App::save(h.state_mut(), &mut storage);
    let saved: Persisted = eframe::get_value(&storage, "pretext-settings").unwrap();
    assert_eq!(saved.config, own);
    wait_until(&mut h, "the continued run", |a| {
        matches!(a.run.status, RunStatus::Finished(_))
    });
    // Once it has ended, the left panel is the person's again.
    assert_eq!(h.state().settings.config, own);
    assert!(
        h.state()
            .run
            .messages
            .iter()
            .any(|m| m.text.contains("your own settings again")),
        "{:?}",
        h.state().run.messages
    );
    let a = h.state();
    assert_eq!(
        a.run.status,
        RunStatus::Finished(Outcome::Completed),
        "{:?}",
        a.run.messages
    );
    // 4 steps read back from metrics.csv, 4 more trained.
    assert_eq!(a.run.curves.series["loss/rotation"].len(), 8);
    assert_eq!(a.run.last_step.as_ref().map(|s| s.step), Some(8));
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
    wait_until(&mut h, "the frozen batch", |a| a.tabs.math.report.is_some());
    for task in 0..TaskKind::ALL.len() {
        let seen = walk_math_task(&mut h, task);
        assert!(seen >= 3, "task {task}: only {seen} steps");
        // Arrow keys walk back.
        h.key_press(eframe::egui::Key::ArrowLeft);
        h.run_steps(2);
        assert_eq!(h.state().tabs.math.step, seen - 2);
    }
    h.get_by_label("Stop").click();
    wait_until(&mut h, "stop", |a| {
        matches!(a.run.status, RunStatus::Finished(_))
    });
}

#[test]
fn the_explorer_embeds_every_image_and_shows_gauges_probe_and_neighbours() {
    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(out.path()));
    let mut h = started_and_paused(&storage);
    // The live gauges from the monitor's first measurement, alignment included.
    wait_until(&mut h, "the first kNN measurement", |a| {
        a.run.curves.series.contains_key("gauge/alignment")
    });
    h.run_steps(2);
    assert!(
        h.state().run.knn.start.is_some() && h.state().run.knn.pixels.is_some(),
        "random-init and raw-pixel references for the kNN plot"
    );
    assert!(
        h.query_all_by_label_contains("Alignment and uniformity")
            .count()
            >= 1
    );
    let e = embed_all(&mut h);
    assert_eq!(e.z.len(), 64);
    assert_eq!(e.projection.len(), 64);
    assert!(e.probe.is_ok(), "the built-in set is labelled");
    assert!(h.query_all_by_label_contains("RankMe").count() >= 1);
    assert!(h.query_all_by_label_contains("linear probe").count() >= 1);
    assert!(h.query_all_by_label_contains("alignment").count() >= 1);
    // Selecting an image shows its neighbours.
    h.state_mut().tabs.explorer.selected = Some(3);
    h.run_steps(3);
    assert!(h.query_all_by_label_contains("nearest neighbours").count() >= 1);
    // t-SNE instead of PCA: computed in the background, then drawn.
    h.get_by_label("t-SNE").click();
    wait_until(
        &mut h,
        "the t-SNE map",
        |a| matches!(&a.tabs.explorer.tsne, Some(pretext::ui::TsneMap::Ready { points, .. }) if points.len() == 64),
    );
    h.run_steps(2);
    assert!(
        h.query_all_by_label_contains("t-SNE of 64 images, trustworthiness")
            .count()
            >= 1
    );
    h.get_by_label("Stop").click();
    wait_until(&mut h, "stop", |a| {
        matches!(a.run.status, RunStatus::Finished(_))
    });
}

/// A `w × h` picture with edges and noise (so a JPEG of it is mostly entropy-coded data).
fn busy_picture(w: u32, h: u32, seed: u32) -> image::RgbImage {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    image::RgbImage::from_fn(w, h, |x, y| {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let n = (s >> 24) as u8 / 4;
        let v = if (x / 16 + y / 16) % 2 == 0 { 40 } else { 190 };
        image::Rgb([
            v + n,
            (x * 255 / w) as u8 / 2 + n,
            (y * 255 / h) as u8 / 2 + n,
        ])
    })
}

/// While a folder of a few hundred photos loads, the data panel shows the images decoded so far
/// (from the loader's copies, at most every half second); once loaded, the spread over the set.
/// The image cache it wrote is then removed with the panel's button.
#[test]
fn thumbnails_show_while_a_folder_loads_and_the_cache_clears_from_the_panel() {
    let photos = tempfile::tempdir().unwrap();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&busy_picture(1200, 900, 3))
        .unwrap();
    for i in 0..200 {
        std::fs::write(photos.path().join(format!("IMG_{i:04}.jpg")), &jpeg).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(out.path()));
    let mut h = app(&storage, Some(photos.path().to_path_buf()));
    wait_until(&mut h, "thumbnails while loading", |a| match &a.data {
        DataState::Loading(l) => l.thumbnail_count > 0,
        DataState::Ready(_) => panic!("loaded before any thumbnail showed"),
        _ => false,
    });
    let DataState::Loading(l) = &h.state().data else {
        unreachable!()
    };
    let (done, total) = l.loader.progress();
    assert!(done < total, "{done}/{total}: still loading");
    assert!(h.query_all_by_label_contains("images so far").count() >= 1);
    wait_until(&mut h, "the folder", |a| {
        matches!(a.data, DataState::Ready(_))
    });
    assert!(h.query_by_label_contains("200 images").is_some());
    assert!(h.query_by_label_contains("200 decoded").is_some());

    let cache_dir = out.path().join("image-cache");
    let cached = || {
        std::fs::read_dir(&cache_dir)
            .map(|r| r.filter(|e| e.is_ok()).count())
            .unwrap_or(0)
    };
    assert_eq!(cached(), 1, "the folder's cache file");
    h.get_by_label("Clear image cache").click();
    wait_until(&mut h, "the cache cleared", |a| {
        a.run
            .messages
            .iter()
            .any(|m| m.text.contains("image cache cleared"))
    });
    assert_eq!(cached(), 0);
}

/// Every real-world fault of one folder at once: hidden and `__MACOSX` folders, links back up,
/// a second link to a folder, a dangling link, non-UTF-8 class names, a decompression bomb, a
/// very thin image, a truncated JPEG, an empty file and a text file named `.png`. The app
/// opens it without a panic and shows what it used, skipped, ignored and partly decoded.
#[cfg(unix)]
#[test]
fn a_folder_with_every_real_world_fault_opens_and_lists_its_skipped_and_ignored_entries() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let save = |rel: &std::path::Path, seed: u32| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        busy_picture(48, 40, seed).save(&p).unwrap();
    };
    let write = |rel: &str, bytes: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    // Used: two ordinary images in each of cats and dogs, one in each non-UTF-8 class.
    save("cats/a.png".as_ref(), 1);
    save("cats/b.jpg".as_ref(), 2);
    save("dogs/c.png".as_ref(), 3);
    save("dogs/d.png".as_ref(), 4);
    let cafe9 = OsStr::from_bytes(b"caf\xe9");
    let cafe8 = OsStr::from_bytes(b"caf\xe8");
    save(&std::path::Path::new(cafe9).join("e.png"), 5);
    save(&std::path::Path::new(cafe8).join("f.png"), 6);
    // 1. Hidden and archive-metadata entries.
    save(".ipynb_checkpoints/000-checkpoint.png".as_ref(), 7);
    write(
        "__MACOSX/cats/._a.png",
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ",
    );
    write(
        "cats/._a.png",
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ",
    );
    // 2. Links: back up (twice), a second way into cats, and one to nowhere.
    symlink("..", root.join("cats/loop")).unwrap();
    symlink(".", root.join("loop")).unwrap();
    symlink("../cats", root.join("dogs/cats_again")).unwrap();
    symlink("nowhere.png", root.join("dogs/gone.png")).unwrap();
    // 4. A decompression bomb: 12000×12000 RGBA is 549 MiB decoded.
    write(
        "cats/bomb.png",
        &common::header_only_png(12_000, 12_000, 8, 6),
    );
    // 5. A very thin image.
    image::RgbImage::from_fn(2, 16_384, |x, y| {
        image::Rgb([(y % 251) as u8, x as u8 * 99, 7])
    })
    .save(root.join("dogs/thin.png"))
    .unwrap();
    // 6. A valid JPEG cut to 60 % of its bytes.
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&busy_picture(256, 256, 8))
        .unwrap();
    assert!(pretext::data::folder::jpeg_is_complete(&jpeg));
    write("cats/truncated.jpg", &jpeg[..jpeg.len() * 6 / 10]);
    // 7. An empty JPEG and a text file named .png.
    write("cats/empty.jpg", b"");
    write("dogs/notes.png", b"these are my notes, not a picture\n");

    // The thin image on its own decodes quickly (only its 2×2 centre is resized).
    let thin_start = Instant::now();
    let thin = pretext::data::folder::decode_to_size(&root.join("dogs/thin.png"), 32).unwrap();
    let thin_secs = thin_start.elapsed().as_secs_f64();
    assert_eq!(thin.pixels.len(), 32 * 32 * 3);
    assert!(thin_secs < 5.0, "the 2×16384 image took {thin_secs:.2} s");

    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(out.path()));
    let mut h = app(&storage, Some(root.to_path_buf()));
    wait_until(&mut h, "the folder", |a| {
        !matches!(a.data, DataState::Loading(_) | DataState::Empty)
    });
    let shown = |p: &str| pretext::data::display_path(&root.join(p));
    let (summary, names, class_names, labels, paths) = match &h.state().data {
        DataState::Ready(d) => (
            d.summary.clone(),
            d.data.names.clone(),
            d.data.class_names.clone(),
            d.data.labels.clone().expect("class folders label the set"),
            d.data.paths.clone(),
        ),
        DataState::Failed(e) => panic!("the folder did not load: {e}"),
        _ => unreachable!(),
    };

    // Each real file once, none through a link, none from hidden or metadata folders.
    let expected_names: BTreeSet<String> = [
        "caf\\xE8/f.png",
        "caf\\xE9/e.png",
        "cats/a.png",
        "cats/b.jpg",
        "cats/truncated.jpg",
        "dogs/c.png",
        "dogs/d.png",
        "dogs/thin.png",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(summary.images, 8, "{summary:#?}");
    assert_eq!(
        names.iter().cloned().collect::<BTreeSet<_>>(),
        expected_names
    );
    assert_eq!(paths.len(), 8);
    let real: BTreeSet<PathBuf> = paths
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap())
        .collect();
    assert_eq!(real.len(), 8, "each real file once: {paths:?}");
    for p in &paths {
        let s = p.to_string_lossy();
        assert!(
            !s.contains("loop") && !s.contains("cats_again"),
            "{s} was reached through a link"
        );
    }

    // Four classes: the two non-UTF-8 names stay distinct and display escaped.
    let classes: BTreeMap<String, usize> = summary.classes.iter().cloned().collect();
    let expected_classes: BTreeMap<String, usize> = [
        ("caf\\xE8".to_string(), 1),
        ("caf\\xE9".to_string(), 1),
        ("cats".to_string(), 3),
        ("dogs".to_string(), 3),
    ]
    .into_iter()
    .collect();
    assert_eq!(classes, expected_classes);
    assert_eq!(summary.classes.len(), 4);
    for (name, label) in names.iter().zip(&labels) {
        let folder = name.split('/').next().unwrap();
        assert_eq!(class_names[*label as usize], folder, "label of {name}");
    }

    // Why each file was skipped.
    let reasons =
        |list: &[(String, String)]| -> BTreeMap<String, String> { list.iter().cloned().collect() };
    let skipped = reasons(&summary.skipped);
    assert_eq!(skipped.len(), 4, "{skipped:#?}");
    let why = |map: &BTreeMap<String, String>, p: &str| -> String {
        map.get(&shown(p))
            .unwrap_or_else(|| panic!("{p} not listed in {map:#?}"))
            .clone()
    };
    assert!(why(&skipped, "cats/bomb.png").contains("too large to decode safely"));
    assert!(why(&skipped, "cats/empty.jpg").contains("empty file"));
    assert!(why(&skipped, "dogs/gone.png").contains("dangling symbolic link"));
    assert!(why(&skipped, "dogs/notes.png").contains("not a"));

    let partial = reasons(&summary.partial);
    assert_eq!(partial.len(), 1, "{partial:#?}");
    assert!(why(&partial, "cats/truncated.jpg").contains("partly decoded"));

    let ignored = reasons(&summary.ignored);
    assert_eq!(ignored.len(), 6, "{ignored:#?}");
    assert!(why(&ignored, ".ipynb_checkpoints").contains("hidden"));
    assert!(why(&ignored, "__MACOSX").contains("__MACOSX"));
    assert!(why(&ignored, "cats/._a.png").contains("hidden"));
    assert!(why(&ignored, "cats/loop").contains("symbolic link back"));
    assert!(why(&ignored, "loop").contains("symbolic link back"));
    assert!(why(&ignored, "dogs/cats_again").contains("second link"));

    // The window: counts, then each list expanded (bottom one first, so that a header never
    // moves before it is clicked).
    assert!(h.query_by_label_contains("8 images at").is_some());
    let lists = [
        (
            "6 entries ignored",
            vec![
                ".ipynb_checkpoints: hidden",
                "__MACOSX: macOS archive metadata",
                "._a.png: hidden",
                "loop: symbolic link back to an enclosing folder",
                "cats_again: a second link to a folder",
            ],
        ),
        (
            "1 file partly decoded",
            vec!["truncated.jpg: partly decoded"],
        ),
        (
            "4 files skipped",
            vec![
                "bomb.png: too large to decode safely",
                "empty.jpg: empty file",
                "gone.png: dangling symbolic link",
                "notes.png: not a",
            ],
        ),
        ("4 classes", vec![]),
    ];
    for (header, texts) in &lists {
        for text in texts {
            assert_eq!(
                h.query_all_by_label_contains(text).count(),
                0,
                "{text:?} shows before {header:?} is expanded"
            );
        }
        h.get_by_label(header).click();
        h.run_steps(10);
        for text in texts {
            assert!(
                h.query_all_by_label_contains(text).count() >= 1,
                "{text:?} not shown under {header:?}"
            );
        }
    }
    assert_eq!(
        h.query_all_by_label_contains("loop: symbolic link back")
            .count(),
        2
    );
    for class in ["caf\\xE8", "caf\\xE9", "cats", "dogs"] {
        assert!(
            h.query_all_by_label(class).count() >= 1,
            "class {class} not shown"
        );
    }
    for hidden in [".ipynb_checkpoints", "__MACOSX"] {
        assert_eq!(
            h.query_all_by_label(hidden).count(),
            0,
            "{hidden} shown as a class"
        );
    }
}

#[test]
fn the_device_list_greys_out_what_this_machine_cannot_give_and_says_why() {
    use pretext::config::DeviceKind;
    use pretext::model::device;

    let out = tempfile::tempdir().unwrap();
    // Settings saved where CUDA was used.
    let storage = storage_with(TrainConfig {
        device: DeviceKind::Cuda,
        ..small_config(out.path())
    });
    let mut h = app(&storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    let Some(reason) = device::unavailable(DeviceKind::Cuda) else {
        return; // a machine with a GPU: nothing is greyed out
    };
    assert!(
        h.query_by_label_contains(&format!("cuda cannot be used here: {reason}"))
            .is_some()
    );

    h.get_by_label("Device").click();
    h.run_steps(2);
    assert!(!h.get_by_label("cpu").accesskit_node().is_disabled());
    let cuda = h.get_by_label("cuda (unavailable)");
    assert!(cuda.accesskit_node().is_disabled());
    cuda.click();
    h.run_steps(2);
    assert_eq!(h.state().settings.config.device, DeviceKind::Cuda);

    // Back to the CPU: the warning goes.
    if h.query_by_label("cpu").is_none() {
        h.get_by_label("Device").click();
        h.run_steps(2);
    }
    h.get_by_label("cpu").click();
    h.run_steps(2);
    assert_eq!(h.state().settings.config.device, DeviceKind::Cpu);
    assert!(h.query_by_label_contains("cannot be used here").is_none());
}

/// A finished two-epoch run under `out`, as `pretext train` leaves it.
fn finished_run(out: &std::path::Path, task: TaskKind, seed: u64) -> PathBuf {
    let trainer = pretext::train::Trainer::spawn().unwrap();
    trainer.send(pretext::train::Command::Start(Box::new(TrainConfig {
        epochs: 2,
        tasks: vec![task],
        seed,
        ..small_config(out)
    })));
    loop {
        if let pretext::train::Event::Finished { run_dir, .. } = trainer
            .events()
            .recv_timeout(Duration::from_secs(120))
            .unwrap()
        {
            break run_dir.unwrap();
        }
    }
}

#[test]
fn the_runs_view_lists_runs_and_overlays_the_ticked_ones() {
    use pretext::view::overlay::Quantity;
    let out = tempfile::tempdir().unwrap();
    let a = finished_run(out.path(), TaskKind::Rotation, 1);
    let b = finished_run(out.path(), TaskKind::Contrastive, 2);
    let storage = storage_with(small_config(out.path()));
    let mut h = app(&storage, None);
    h.get_by_label("Runs").click();
    wait_until(&mut h, "the listing", |a| a.tabs.runs.list.len() == 2);
    let name = |d: &PathBuf| d.file_name().unwrap().to_string_lossy().into_owned();
    assert!(h.query_by_label_contains("2 runs, 0 ticked").is_some());
    assert!(h.state().tabs.runs.overlay(Quantity::Loss, 0.0).is_empty());
    let tick = |h: &mut Harness<'_, PretextApp>, d: &PathBuf| {
        // The table's tick box comes first; the plots' legends have one per run too.
        h.get_all_by_role_and_label(eframe::egui::accesskit::Role::CheckBox, &name(d))
            .next()
            .unwrap()
            .click();
        h.run();
    };
    tick(&mut h, &a);
    tick(&mut h, &b);
    wait_until(&mut h, "two curves", |app| {
        let lines = app.tabs.runs.overlay(Quantity::Loss, 0.0);
        lines.len() == 2 && lines.iter().all(|l| l.points.len() == 8)
    });
    let runs = &h.state().tabs.runs;
    let names: Vec<String> = runs
        .overlay(Quantity::Loss, 0.0)
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, [name(&a), name(&b)], "in the order ticked");
    assert_eq!(runs.overlay(Quantity::Knn(3), 0.0).len(), 2, "kNN of z too");
    // Against wall-clock time the x values are minutes of training.
    h.get_by_label("wall-clock time (min)").click();
    h.run();
    let lines = h.state().tabs.runs.overlay(Quantity::Loss, 0.0);
    let last_x = lines[0].points.last().unwrap()[0];
    let summary = h
        .state()
        .tabs
        .runs
        .list
        .iter()
        .find(|s| s.dir == a)
        .unwrap()
        .clone();
    assert!(
        last_x > 0.0 && last_x <= summary.wall_s / 60.0 + 1e-9,
        "{last_x} min vs {} s",
        summary.wall_s
    );
    // Unticking removes its line.
    tick(&mut h, &a);
    assert_eq!(h.state().tabs.runs.overlay(Quantity::Loss, 0.0).len(), 1);
    h.get_by_label("Steps").click();
    h.run();
    assert_eq!(h.state().tabs.runs.sort, pretext::ui::RunColumn::Steps);
}

#[test]
fn a_run_the_command_line_is_writing_is_followed_live() {
    let out = tempfile::tempdir().unwrap();
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args([
            "train",
            "--data",
            "builtin:64",
            "--size",
            "16",
            "--task",
            "rotation",
            "--epochs",
            "400",
            "--batch",
            "16",
            "--out",
        ])
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let dir = loop {
        if let Some(d) = pretext::runs::find_runs(out.path()).into_iter().next() {
            break d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no run directory"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The left panel ticks another task than the run has: the curves drawn are the run's.
    let storage = storage_with(TrainConfig {
        tasks: vec![TaskKind::Contrastive],
        ..small_config(out.path())
    });
    let mut h = app(&storage, None);
    h.state_mut().inputs.run = dir.display().to_string();
    h.get_by_label("Follow run").click();
    wait_until(&mut h, "the first rows", |a| a.run.curves.steps_seen > 0);
    assert_eq!(
        h.state().run.shown_tasks(&h.state().settings.config.tasks),
        [TaskKind::Rotation]
    );
    assert!(h.state().run.curves.series.contains_key("loss/rotation"));
    assert!(matches!(h.state().run.status, RunStatus::Following { .. }));
    assert_eq!(h.state().following.as_ref(), Some(&dir));
    let first = h.state().run.curves.steps_seen;
    wait_until(&mut h, "new points", |a| {
        a.run.curves.steps_seen >= first + 12
    });
    wait_until(&mut h, "its previews and checkpoints", |a| {
        !a.tabs.previews.is_empty()
            && a.run
                .checkpoints
                .as_ref()
                .is_some_and(|c| !c.kept.is_empty())
    });
    assert!(
        h.query_by_label_contains("following (last written")
            .is_some()
    );
    // Start is offered (following is not training); the status bar stops following.
    assert!(!h.get_by_label("Start").accesskit_node().is_disabled());
    h.get_by_label("Stop following").click();
    h.run();
    assert!(h.state().following.is_none());
    let steps = h.state().run.curves.steps_seen;
    assert!(steps > first, "its curves stay");
    std::thread::sleep(Duration::from_millis(1500));
    h.run();
    assert_eq!(h.state().run.curves.steps_seen, steps, "and no longer move");
    let _ = cli.kill();
    let _ = cli.wait();
}

#[test]
fn a_two_task_contest_runs_stops_resumes_and_ranks_in_the_window() {
    use pretext::compare::{ContestOutcome, TaskState};
    use pretext::ui::contest::{BudgetKind, ContestForm};
    let out = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        data: DataSource::Builtin { count: 48 },
        size: 16,
        ..small_config(out.path())
    };
    let mut storage = MemoryStorage::default();
    let settings = Persisted {
        config,
        contest: ContestForm {
            tasks: [TaskKind::Rotation, TaskKind::Contrastive].into(),
            kind: BudgetKind::Images,
            // 100 epochs of 48 images each: long enough to stop the second task mid-way.
            images: 4800,
            ..ContestForm::default()
        },
        ..Persisted::default()
    };
    eframe::set_value(&mut storage, "pretext-settings", &settings);
    let mut h = app(&storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    h.get_by_label("Runs").click();
    h.run();
    h.get_by_label("Compare").click();
    wait_until(&mut h, "the second task", |a| {
        a.tabs.runs.contest.current.is_some_and(|(_, i, _)| i == 2)
    });
    h.get_by_label("Stop contest").click();
    wait_until(&mut h, "the stop", |a| {
        a.tabs.runs.contest.outcome.is_some()
    });
    let c = &h.state().tabs.runs.contest;
    assert_eq!(c.outcome, Some(ContestOutcome::Stopped), "{}", c.status);
    let dir = c.dir.clone().unwrap();
    let (_, state) = pretext::compare::open(&dir).unwrap();
    assert!(matches!(state.tasks[0].state, TaskState::Done { .. }));
    assert!(!matches!(state.tasks[1].state, TaskState::Done { .. }));
    // The partial ranking already shows the first task.
    assert_eq!(c.ranking.as_ref().map(|r| r.rows.len()), Some(1));
    h.get_by_label("Resume contest").click();
    wait_until(&mut h, "the end", |a| {
        a.tabs.runs.contest.outcome == Some(ContestOutcome::Completed)
    });
    let c = &h.state().tabs.runs.contest;
    let ranking = c.ranking.as_ref().unwrap();
    assert_eq!(ranking.rows.len(), 2);
    assert!(ranking.labelled);
    assert!(
        h.query_by_label("Ranking by kNN top-1 (best stage)")
            .is_some()
    );
    assert!(h.query_by_label("random init").is_some());
    for f in ["ranking.md", "results.csv", "results.json", "chart.png"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    // Each task's run was ticked as it started: their curves overlaid.
    wait_until(&mut h, "both curves", |a| {
        a.tabs
            .runs
            .overlay(pretext::view::overlay::Quantity::Loss, 0.0)
            .len()
            == 2
    });
}

#[test]
fn launched_with_start_it_trains_by_itself_with_the_given_settings_and_closes_after_the_run() {
    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(out.path()));
    let launch = pretext::ui::Launch {
        start: true,
        quit_after_run: true,
        tasks: Some(vec![TaskKind::Inpainting]),
        epochs: Some(2),
        ..pretext::ui::Launch::default()
    };
    let mut h = Harness::builder()
        .with_size(eframe::egui::vec2(1400.0, 900.0))
        .build_eframe(|cc| PretextApp::launch(&cc.egui_ctx, Some(&storage), launch).unwrap());
    wait_until(&mut h, "the run to start by itself", |a| a.is_training());
    assert_eq!(h.state().settings.config.tasks, vec![TaskKind::Inpainting]);
    assert_eq!(h.state().settings.config.task_weights, vec![1.0]);
    assert_eq!(h.state().settings.config.epochs, 2);
    let closes = |h: &Harness<'_, PretextApp>| {
        h.output()
            .viewport_output
            .get(&eframe::egui::ViewportId::ROOT)
            .is_some_and(|v| {
                v.commands
                    .iter()
                    .any(|c| matches!(c, eframe::egui::ViewportCommand::Close))
            })
    };
    let start = Instant::now();
    while !closes(&h) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the window did not close after the run: status {:?}",
            h.state().run.status
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        matches!(
            h.state().run.status,
            RunStatus::Finished(Outcome::Completed)
        ),
        "closed before the run completed: {:?}",
        h.state().run.status
    );
    assert!(h.state().run.curves.steps_seen >= 2);
    // What the command line set for this session is not saved as the person's settings.
    let mut saved = MemoryStorage::default();
    eframe::App::save(h.state_mut(), &mut saved);
    let settings: Persisted = eframe::get_value(&saved, "pretext-settings").unwrap();
    assert_eq!(settings.config.tasks, vec![TaskKind::Rotation]);
    assert_eq!(settings.config.epochs, 50);
}

#[test]
fn an_unattended_training_window_redraws_every_two_seconds_and_quickly_again_when_touched() {
    let out = tempfile::tempdir().unwrap();
    let storage = storage_with(TrainConfig {
        epochs: 10_000,
        ..small_config(out.path())
    });
    let mut h = app(&storage, None);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    assert_eq!(h.state().repaint_interval(), Duration::from_millis(100));
    h.get_by_label("Start").click();
    wait_until(&mut h, "a step", |a| a.run.curves.steps_seen >= 1);
    // Nobody touches the window for more than 3 s while it trains.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(3500) {
        h.step();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(h.state().is_training());
    assert_eq!(h.state().repaint_interval(), Duration::from_secs(2));
    h.get_by_label("Pause").click();
    h.step();
    assert_eq!(h.state().repaint_interval(), Duration::from_millis(100));
    h.get_by_label("Stop").click();
    wait_until(&mut h, "the end", |a| !a.is_training());
    assert_eq!(h.state().repaint_interval(), Duration::from_millis(100));
}

#[test]
fn the_run_buttons_stay_in_view_with_every_setting_open() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_with(small_config(dir.path()));
    // Every task ticked and both collapsible sections open: the settings are then far taller
    // than the window, and scroll. They are opened in a tall window (in the usual 900 px their
    // headers lie under the run buttons' strip, out of a click's reach), which then shrinks.
    let mut h = tall_app(&storage);
    wait_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    h.run_steps(2);
    for task in [
        "colorization",
        "inpainting",
        "contrastive",
        "jigsaw",
        "moco",
    ] {
        h.get_by_label(task).click();
    }
    h.run_steps(2);
    h.get_by_label("Task settings").click();
    h.run_steps(2);
    h.get_by_label("Augmentation strengths").click();
    h.run_steps(3);
    for opened in ["temperature τ", "view scale"] {
        assert!(
            h.query_all_by_label_contains(opened).next().is_some(),
            "{opened}"
        );
    }
    h.set_size(eframe::egui::vec2(1400.0, 900.0));
    h.run_steps(3);
    let window = eframe::egui::Rect::from_min_size(
        eframe::egui::Pos2::ZERO,
        eframe::egui::vec2(1400.0, 900.0),
    );
    for label in ["Start", "Reset", "Save checkpoint", "Measure now"] {
        let rect = h.get_by_label(label).rect();
        assert!(
            window.contains_rect(rect),
            "{label} lies at {rect:?}, outside the {window:?} window"
        );
    }
    // And Start still starts from there.
    h.get_by_label("Start").click();
    wait_until(&mut h, "a step", |a| a.run.curves.steps_seen >= 1);
    h.get_by_label("Stop").click();
    wait_until(&mut h, "the run to end", |a| !a.run.is_training());
}
