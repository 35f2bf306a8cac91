//! Checkpoint retention: a run keeps its newest checkpoints, the best by kNN top-1 of z and the
//! resume checkpoint, removes the rest, and says how much disk they take.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use pretext::config::{DataSource, LrSchedule, TaskKind, TrainConfig};
use pretext::train::run_dir::{self, CHECKPOINT_DIR, RESUME_FILE};
use pretext::train::{Command, Event, Outcome, Trainer};

fn config(out: &Path, keep: usize) -> TrainConfig {
    TrainConfig {
        data: DataSource::Builtin { count: 64 },
        tasks: vec![TaskKind::Rotation],
        lr_schedule: LrSchedule::Constant,
        batch: 16,
        epochs: 6,
        out: out.to_path_buf(),
        preview_images: 2,
        // Every epoch's checkpoint and measurement, whatever they cost.
        monitor_budget: 100.0,
        keep_checkpoints: keep,
        ..TrainConfig::default()
    }
}

/// The run's events: (checkpoint reports, kNN of z after each epoch checkpoint by step).
fn train(
    out: &Path,
    keep: usize,
) -> (
    Vec<run_dir::Checkpoints>,
    Vec<(u64, f64)>,
    std::path::PathBuf,
) {
    let trainer = Trainer::spawn().unwrap();
    assert!(trainer.send(Command::Start(Box::new(config(out, keep)))));
    let mut reports = Vec::new();
    let mut knn = Vec::new();
    let dir = loop {
        match trainer
            .events()
            .recv_timeout(std::time::Duration::from_secs(300))
            .unwrap()
        {
            Event::Checkpoints(c) => reports.push(c),
            Event::Knn(k) => {
                if let Some((_, z)) = k.stages.last() {
                    knn.push((k.step, *z));
                }
            }
            Event::Finished { run_dir, outcome } => {
                assert_eq!(outcome, Outcome::Completed);
                break run_dir;
            }
            _ => {}
        }
    };
    (reports, knn, dir.unwrap())
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(CHECKPOINT_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_run_keeps_the_newest_checkpoints_and_the_best_and_says_what_they_take() {
    let out = tempfile::tempdir().unwrap();
    let (reports, knn, dir) = train(out.path(), 2);
    assert_eq!(reports.len(), 6, "one report per epoch checkpoint");
    let last = reports.last().unwrap();
    let on_disk = files(&dir);
    // The resume checkpoint, the two newest, and the best when it is older.
    assert!(on_disk.contains(&RESUME_FILE.to_string()), "{on_disk:?}");
    assert!(on_disk.contains(&"epoch-0006.safetensors".to_string()));
    assert!(on_disk.contains(&"epoch-0005.safetensors".to_string()));
    let (best, best_acc) = last.best.clone().unwrap();
    assert!(on_disk.contains(&best), "{best} kept");
    // The best is the first epoch checkpoint with the highest kNN top-1 of z.
    let top = knn
        .iter()
        .skip(1) // the random initialisation has no checkpoint
        .map(|(_, z)| *z)
        .fold(f64::MIN, f64::max);
    assert_eq!(best_acc, top);
    let expected =
        1 + 2 + usize::from(best != "epoch-0006.safetensors" && best != "epoch-0005.safetensors");
    assert_eq!(on_disk.len(), expected, "{on_disk:?}");
    assert_eq!(last.kept.len(), expected - 1, "{:?}", last.kept);
    let removed: usize = reports.iter().map(|r| r.removed).sum();
    assert_eq!(removed, 6 - (expected - 1));
    // The disk figure is the folder's size.
    let bytes: u64 = std::fs::read_dir(dir.join(CHECKPOINT_DIR))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(last.disk_bytes, bytes);
    // The step each checkpoint holds is read from its header alone.
    assert_eq!(
        run_dir::checkpoint_step(&dir.join(CHECKPOINT_DIR).join("epoch-0006.safetensors")),
        Some(24)
    );
    // Continuing the run remembers which checkpoint is the best.
    let more = common::run(Command::Continue {
        run_dir: dir.clone(),
        epochs: Some(7),
        lr: None,
        minutes: None,
    });
    assert_eq!(more.outcome, Some(Outcome::Completed), "{:?}", more.errors);
    let after = files(&dir);
    assert!(
        after.contains(&"epoch-0007.safetensors".to_string()),
        "{after:?}"
    );
    let (_, meta) = pretext::model::checkpoint::read(
        &dir.join(CHECKPOINT_DIR).join(RESUME_FILE),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let still_best = meta["best_checkpoint"].clone();
    assert!(
        still_best == best || still_best == "epoch-0007.safetensors",
        "{still_best} after {best}"
    );
    assert!(after.contains(&still_best), "{still_best} kept: {after:?}");
    assert!(after.len() <= 4, "{after:?}");
}

#[test]
fn keep_zero_keeps_every_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let (reports, _, dir) = train(out.path(), 0);
    assert!(reports.iter().all(|r| r.removed == 0));
    assert_eq!(files(&dir).len(), 6 + 1);
}
