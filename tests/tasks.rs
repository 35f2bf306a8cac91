//! The pretext tasks: augmentation invariants, and each task — alone and together — trained
//! briefly on the built-in scenes beats its trivial baseline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use pretext::config::{Augment, DataSource, LrSchedule, TaskKind, TrainConfig};
use pretext::data::augment;
use pretext::rng::Rng;
use pretext::train::{Command, EpochSummary, Outcome, TaskMetrics};

fn scene(size: usize) -> Vec<u8> {
    pretext::data::builtin::generate(1, size).image(0).to_vec()
}

#[test]
fn crops_stay_inside_the_image_and_flips_are_flips() {
    let mut rng = Rng::new(5);
    for size in [16usize, 32, 64] {
        for _ in 0..500 {
            let [x, y, w, h] = augment::random_crop_box(size, 0.2, &mut rng);
            let s = size as f32;
            assert!(
                x >= 0.0 && y >= 0.0 && x + w <= s + 1e-3 && y + h <= s + 1e-3,
                "{x} {y} {w} {h}"
            );
            assert!(w * h >= 0.2 * s * s * 0.999, "area {}", w * h / (s * s));
            let ratio = w / h;
            assert!((0.749..=1.334).contains(&ratio), "{ratio}");
        }
    }
    let img = augment::bytes_to_unit(&scene(32));
    let mut flipped = img.clone();
    augment::hflip(&mut flipped, 32);
    for y in 0..32 {
        for x in 0..32 {
            for c in 0..3 {
                assert_eq!(
                    flipped[(y * 32 + x) * 3 + c],
                    img[(y * 32 + 31 - x) * 3 + c]
                );
            }
        }
    }
    augment::hflip(&mut flipped, 32);
    assert_eq!(flipped, img);
    // The whole-image crop is the identity.
    let same = augment::crop_resize(&img, 32, [0.0, 0.0, 32.0, 32.0]);
    assert!(same.iter().zip(&img).all(|(a, b)| (a - b).abs() < 1e-6));
}

#[test]
fn augment_follows_its_settings() {
    let src = scene(32);
    let mut rng = Rng::new(9);
    let gray = Augment {
        gray_p: 1.0,
        ..Augment::default()
    };
    let (v, rec) = augment::augment(&src, 32, &gray, &mut rng);
    assert!(rec.gray);
    assert!(
        v.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]),
        "grey views have equal channels"
    );
    let none = Augment {
        crop_min_scale: 1.0,
        flip_p: 0.0,
        jitter_p: 0.0,
        gray_p: 0.0,
        blur_p: 0.0,
        ..Augment::default()
    };
    for _ in 0..20 {
        let (v, rec) = augment::augment(&src, 32, &none, &mut rng);
        assert!(!rec.flipped && rec.jitter.is_none() && !rec.gray && rec.blur_sigma.is_none());
        // Full-area crops with an aspect ratio of at most 4:3 still cover the whole image.
        let err = v
            .iter()
            .zip(augment::bytes_to_unit(&src))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 0.3, "{err}");
    }
    // Strong jitter changes colours; blur smooths.
    let jitter = Augment {
        jitter_p: 1.0,
        blur_p: 1.0,
        ..none.clone()
    };
    let (v, rec) = augment::augment(&src, 32, &jitter, &mut rng);
    assert!(rec.jitter.is_some() && rec.blur_sigma.is_some());
    assert_ne!(augment::unit_to_bytes(&v), src);
}

/// Trains `tasks` on built-in scenes and returns the last epoch.
fn train(tasks: &[TaskKind], count: usize, epochs: usize) -> EpochSummary {
    let out = tempfile::tempdir().unwrap();
    let log = common::run(Command::Start(Box::new(TrainConfig {
        data: DataSource::Builtin { count },
        tasks: tasks.to_vec(),
        task_weights: vec![1.0; tasks.len()],
        batch: 32,
        epochs,
        lr_schedule: LrSchedule::Constant,
        out: out.path().to_path_buf(),
        preview_images: 4,
        ..TrainConfig::default()
    })));
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);
    // A preview per task before training and after the last epoch (in between as the
    // monitoring budget allows).
    assert!(log.previews >= tasks.len() * 2, "{} previews", log.previews);
    let last = log.epochs.last().unwrap().clone();
    for t in &last.tasks {
        eprintln!(
            "{}: loss {:.3}, {} {} (baseline {:?})",
            t.task,
            t.loss,
            t.metric_info.name,
            t.metric_info.format(t.metric),
            t.baseline.map(|b| t.metric_info.format(b))
        );
    }
    last
}

fn metric(e: &EpochSummary, task: TaskKind) -> &TaskMetrics {
    e.tasks.iter().find(|t| t.task == task).unwrap()
}

#[test]
fn colorization_beats_the_best_constant_colour() {
    let e = train(&[TaskKind::Colorization], 256, 3);
    let t = metric(&e, TaskKind::Colorization);
    assert!(
        t.metric > t.baseline.unwrap() + 0.03,
        "{} vs {:?}",
        t.metric,
        t.baseline
    );
}

#[test]
fn inpainting_beats_mean_fill() {
    let e = train(&[TaskKind::Inpainting], 256, 3);
    let t = metric(&e, TaskKind::Inpainting);
    assert!(
        t.metric > t.baseline.unwrap() + 0.5,
        "{} dB vs {:?}",
        t.metric,
        t.baseline
    );
}

#[test]
fn patch_position_beats_chance() {
    let e = train(&[TaskKind::Patch], 256, 3);
    let t = metric(&e, TaskKind::Patch);
    assert!(t.metric > 0.2, "{} vs chance 0.125", t.metric);
}

#[test]
fn contrastive_ranks_positives_far_above_chance() {
    let e = train(&[TaskKind::Contrastive], 256, 2);
    let t = metric(&e, TaskKind::Contrastive);
    let chance = t.baseline.unwrap();
    assert!((chance - 1.0 / 63.0).abs() < 1e-9);
    assert!(t.metric > 3.0 * chance, "{} vs chance {chance}", t.metric);
}

#[test]
fn several_tasks_on_one_encoder_all_learn() {
    let e = train(
        &[
            TaskKind::Rotation,
            TaskKind::Inpainting,
            TaskKind::Contrastive,
        ],
        192,
        3,
    );
    assert!(metric(&e, TaskKind::Rotation).metric > 0.45);
    let inp = metric(&e, TaskKind::Inpainting);
    assert!(
        inp.metric > inp.baseline.unwrap(),
        "{} vs {:?}",
        inp.metric,
        inp.baseline
    );
    let con = metric(&e, TaskKind::Contrastive);
    assert!(con.metric > 3.0 * con.baseline.unwrap());
}

#[test]
fn colorization_with_other_tasks_sees_lightness_in_three_channels() {
    assert_eq!(pretext::tasks::input_channels(&[TaskKind::Colorization]), 1);
    assert_eq!(
        pretext::tasks::input_channels(&[TaskKind::Colorization, TaskKind::Rotation]),
        3
    );
    let e = train(&[TaskKind::Colorization, TaskKind::Rotation], 64, 1);
    assert_eq!(e.tasks.len(), 2);
}
