//! The training engine end to end on small built-in data: learning, reproducibility,
//! checkpoints, resuming, pause/step/stop and the NaN guard.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{Log, drive, run};

use candle_core::{Device, Tensor};
use pretext::config::{DataSource, LrSchedule, TaskKind, TrainConfig};
use pretext::model::{Model, checkpoint};
use pretext::tasks;
use pretext::train::{Command, Event, Outcome, PauseReason, StepMetrics, Trainer};

/// Rotation at a constant learning rate: what these tests were written for (the default recipe
/// is contrastive with a cosine schedule; a resumed run with more epochs has another schedule).
fn config(out: &Path, count: usize, batch: usize, epochs: usize) -> TrainConfig {
    TrainConfig {
        data: DataSource::Builtin { count },
        tasks: vec![TaskKind::Rotation],
        lr_schedule: LrSchedule::Constant,
        batch,
        epochs,
        out: out.to_path_buf(),
        preview_images: 2,
        ..TrainConfig::default()
    }
}

#[test]
fn rotation_training_learns_on_builtin_scenes() {
    let out = tempfile::tempdir().unwrap();
    let log = run(Command::Start(Box::new(TrainConfig {
        lr: 2e-3,
        ..config(out.path(), 384, 32, 3)
    })));
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);
    assert_eq!(log.epochs.len(), 3);
    let first = &log.epochs[0];
    let last = &log.epochs[2];
    let acc = last.tasks[0].metric;
    eprintln!(
        "rotation: loss {:.3} -> {:.3}, accuracy {:.1}% -> {:.1}%",
        first.loss,
        last.loss,
        first.tasks[0].metric * 100.0,
        acc * 100.0
    );
    assert!(
        last.loss < first.loss - 0.1,
        "loss did not fall: {} -> {}",
        first.loss,
        last.loss
    );
    assert!(
        last.loss < 4f64.ln(),
        "loss {} not below chance level ln 4",
        last.loss
    );
    assert!(
        acc > 0.5,
        "rotation accuracy {acc} not clearly above 25% chance"
    );
    // Previews: one before training and one after the last epoch at least (in between as the
    // monitoring budget allows).
    assert!(log.previews >= 2, "{}", log.previews);
}

#[test]
fn same_seed_same_run_on_cpu() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let la = run(Command::Start(Box::new(config(a.path(), 64, 16, 1))));
    let lb = run(Command::Start(Box::new(config(b.path(), 64, 16, 1))));
    let losses = |l: &Log| l.steps.iter().map(|s| s.loss).collect::<Vec<_>>();
    assert_eq!(losses(&la).len(), 4);
    assert_eq!(losses(&la), losses(&lb));
    let lc = run(Command::Start(Box::new(TrainConfig {
        seed: 1,
        ..config(b.path(), 64, 16, 1)
    })));
    assert_ne!(losses(&la), losses(&lc));
}

fn build(device: &Device) -> (Model, Vec<Box<dyn tasks::PretextTask>>) {
    let model = Model::new(device.clone(), 3).unwrap();
    let data = pretext::data::builtin::generate(2, 32);
    let tasks = tasks::build(&[TaskKind::Rotation], &Default::default(), &model, &data).unwrap();
    (model, tasks)
}

#[test]
fn checkpoint_round_trip_gives_bit_identical_outputs_and_torch_names() {
    let dev = Device::Cpu;
    let (model, _tasks) = build(&dev);
    model.init_weights(7).unwrap();
    // One training-mode pass so the running statistics are not the defaults.
    let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &dev).unwrap();
    model.encoder.forward(&x, true).unwrap();
    let before = model.encoder.forward(&x, false).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let meta = [("step".to_string(), "1".to_string())]
        .into_iter()
        .collect();
    checkpoint::write(&path, &model.state_dict().unwrap(), &meta).unwrap();
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() == 1,
        "no temporary file is left behind"
    );

    let (fresh, _t) = build(&dev);
    fresh.init_weights(99).unwrap();
    let (tensors, read_meta) = checkpoint::read(&path, &dev).unwrap();
    assert_eq!(read_meta.get("step").map(String::as_str), Some("1"));
    let report = fresh.load_state_dict(&tensors, "m").unwrap();
    assert_eq!(report, pretext::model::LoadReport::default());
    let after = fresh.encoder.forward(&x, false).unwrap();
    assert_eq!(
        before.z.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        after.z.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert_eq!(
        before.fmap.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        after.fmap.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );

    // Names, shapes and dtypes of the encoder follow PyTorch's state_dict exactly.
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/reference_state_dict.json")).unwrap();
    let expected: HashMap<String, (Vec<usize>, String)> = reference["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (
                t["name"].as_str().unwrap().to_string(),
                (shape, t["dtype"].as_str().unwrap().to_string()),
            )
        })
        .collect();
    let encoder_names: Vec<&String> = tensors
        .keys()
        .filter(|k| !k.starts_with("heads."))
        .collect();
    assert_eq!(encoder_names.len(), expected.len(), "{encoder_names:?}");
    for (name, (shape, dtype)) in &expected {
        let t = tensors
            .get(name)
            .unwrap_or_else(|| panic!("checkpoint lacks {name}"));
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        let ours = match t.dtype() {
            candle_core::DType::F32 => "float32",
            candle_core::DType::I64 => "int64",
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        assert_eq!(ours, dtype, "{name}");
    }
    assert!(tensors.contains_key("heads.rotation.weight"));

    // An encoder-only state_dict (as PyTorch saves one) loads; the head keeps its values.
    let encoder_only: HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("heads."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let report = fresh.load_state_dict(&encoder_only, "encoder").unwrap();
    assert_eq!(
        report.missing_heads,
        ["heads.rotation.bias", "heads.rotation.weight"]
    );
    // Without an encoder tensor it is refused, naming it.
    let mut broken = encoder_only.clone();
    broken.remove("l2.sc.1.running_var");
    let e = fresh
        .load_state_dict(&broken, "broken")
        .unwrap_err()
        .to_string();
    assert!(e.contains("l2.sc.1.running_var"), "{e}");
    assert_eq!(
        tensors["l1.b1.num_batches_tracked"]
            .to_scalar::<i64>()
            .unwrap(),
        1
    );
}

#[test]
fn continuing_a_run_picks_up_where_it_stopped_and_matches_an_uninterrupted_run() {
    let a = tempfile::tempdir().unwrap();
    let straight = run(Command::Start(Box::new(config(a.path(), 64, 16, 2))));
    assert_eq!(straight.outcome, Some(Outcome::Completed));

    let b = tempfile::tempdir().unwrap();
    let first = run(Command::Start(Box::new(config(b.path(), 64, 16, 1))));
    let dir = first.run_dir.clone().unwrap();
    let second = run(Command::Continue {
        run_dir: dir.clone(),
        epochs: Some(2),
        lr: None,
        minutes: None,
    });
    assert_eq!(
        second.outcome,
        Some(Outcome::Completed),
        "{:?}",
        second.errors
    );
    assert_eq!(
        second.steps.first().map(|s| s.step),
        Some(5),
        "step count continues"
    );
    assert_eq!(second.epochs.last().map(|e| e.epoch), Some(2));
    let losses = |l: &[StepMetrics]| l.iter().map(|s| s.loss).collect::<Vec<_>>();
    assert_eq!(
        losses(&straight.steps[4..]),
        losses(&second.steps),
        "resume is exact"
    );

    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().filter(|l| l.contains(",rotation,")).collect();
    assert_eq!(
        csv.lines().next(),
        Some(pretext::train::run_dir::METRICS_HEADER)
    );
    assert_eq!(rows.len(), 8);
    assert!(rows[7].starts_with("8,2,rotation,"), "{}", rows[7]);
    let config: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config.epochs, 2);
}

#[test]
fn pause_step_resume_and_stop_take_effect_within_a_step() {
    let out = tempfile::tempdir().unwrap();
    let t = Trainer::spawn().unwrap();
    t.send(Command::Start(Box::new(config(out.path(), 64, 16, 50))));
    let mut stage = 0;
    let mut steps_when_stopped = 0;
    let log = drive(&t, |e, log| match (stage, e) {
        (0, Event::Step(_)) => {
            t.send(Command::Pause);
            stage = 1;
        }
        (1, Event::Paused { .. }) => {
            t.send(Command::Step);
            stage = 2;
        }
        (
            2,
            Event::Paused {
                reason: PauseReason::Stepped,
                ..
            },
        ) => {
            t.send(Command::SetLr(5e-4));
            t.send(Command::Resume);
            stage = 3;
        }
        (3, Event::Step(m)) if m.step >= 5 => {
            assert_eq!(m.lr, 5e-4);
            t.send(Command::Stop);
            steps_when_stopped = log.steps.len() + 1;
            stage = 4;
        }
        _ => {}
    });
    assert_eq!(log.outcome, Some(Outcome::Stopped));
    assert_eq!(
        log.pauses[..2],
        [PauseReason::Requested, PauseReason::Stepped]
    );
    // Exactly one step between the requested pause and the stepped pause is implied by the
    // step counts: the stepped pause came after step 2 or 3 (a step may be under way when
    // Pause arrives).
    assert!(
        log.steps.len() <= steps_when_stopped + 1,
        "stop took more than one step"
    );
    // Stopping saved a checkpoint to continue from.
    let dir = log.run_dir.unwrap();
    assert!(dir.join("checkpoints/resume.safetensors").is_file());
}

#[test]
fn a_non_finite_loss_pauses_with_advice_and_the_run_can_go_on() {
    let out = tempfile::tempdir().unwrap();
    let t = Trainer::spawn().unwrap();
    // A rate this large is outside what a configuration may ask for; set while running, it
    // blows the loss up at once.
    t.send(Command::Start(Box::new(config(out.path(), 64, 16, 2))));
    let mut raised = false;
    let mut recovered = false;
    let log = drive(&t, |e, _| {
        if let Event::RunStarted { .. } = e
            && !raised
        {
            raised = true;
            t.send(Command::SetLr(1e38));
        }
        if let Event::Paused {
            reason: PauseReason::NonFiniteLoss,
            ..
        } = e
            && !recovered
        {
            recovered = true;
            t.send(Command::SetLr(1e-3));
            t.send(Command::Resume);
        }
    });
    assert!(
        recovered,
        "the huge learning rate never produced a non-finite loss"
    );
    let msg = &log.errors[0];
    assert!(msg.contains("lower learning rate"), "{msg}");
    assert!(msg.contains("NaN") || msg.contains("inf"), "{msg}");
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);
    assert!(log.steps.iter().all(|s| s.loss.is_finite()));
    assert_eq!(log.epochs.len(), 2);
}

#[test]
fn bad_input_ends_the_run_with_a_clear_message() {
    let out = tempfile::tempdir().unwrap();
    let log = run(Command::Start(Box::new(TrainConfig {
        data: DataSource::Folder(out.path().join("missing")),
        ..config(out.path(), 64, 16, 1)
    })));
    assert!(matches!(&log.outcome, Some(Outcome::InvalidInput(m)) if m.contains("does not exist")));
    let log = run(Command::Continue {
        run_dir: out.path().to_path_buf(),
        epochs: None,
        lr: None,
        minutes: None,
    });
    assert!(
        matches!(&log.outcome, Some(Outcome::InvalidInput(m)) if m.contains("not a run directory"))
    );
}

/// The self-supervised workflow's point, end to end: rotation prediction on the generated
/// glyphs (where colour and position say nothing about the class) makes the encoder's z better
/// for kNN classification than it was at random initialisation, and better than raw pixels.
#[test]
fn trained_encoder_beats_random_init_under_knn() {
    let out = tempfile::tempdir().unwrap();
    let log = run(Command::Start(Box::new(TrainConfig {
        data: DataSource::Glyphs { count: 1200 },
        tasks: vec![TaskKind::Rotation],
        lr_schedule: LrSchedule::Constant,
        batch: 64,
        epochs: 8,
        lr: 2e-3,
        out: out.path().to_path_buf(),
        preview_images: 1,
        ..TrainConfig::default()
    })));
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);
    let z = |k: &pretext::train::KnnMetrics| k.stages.last().map(|s| s.1).unwrap();
    let (first, last) = (log.knn.first().unwrap(), log.knn.last().unwrap());
    assert_eq!(
        first.step, 0,
        "the first measurement is the random initialisation"
    );
    let raw = first.raw_pixels.unwrap();
    eprintln!(
        "kNN on z: random init {:.1}%, after training {:.1}%, raw pixels {:.1}%",
        z(first) * 100.0,
        z(last) * 100.0,
        raw * 100.0
    );
    assert!(z(last) > z(first) + 0.08, "{} vs {}", z(last), z(first));
    assert!(z(last) > raw + 0.03, "{} vs raw {}", z(last), raw);
}

/// A time limit counts training time, not time paused: a run paused for longer than its limit
/// goes on training after it is resumed, then ends at its limit as at its last epoch.
#[test]
fn time_paused_does_not_count_against_the_time_limit() {
    let out = tempfile::tempdir().unwrap();
    let t = Trainer::spawn().unwrap();
    t.send(Command::Start(Box::new(TrainConfig {
        minutes: Some(0.05),
        ..config(out.path(), 64, 16, 100_000)
    })));
    let mut paused_at = None;
    let log = drive(&t, |e, _| match e {
        Event::Step(m) if m.step == 2 && paused_at.is_none() => {
            t.send(Command::Pause);
        }
        Event::Paused { step, .. } if paused_at.is_none() => {
            paused_at = Some(*step);
            // Longer than the whole 3 s limit.
            std::thread::sleep(std::time::Duration::from_secs(4));
            t.send(Command::Resume);
        }
        _ => {}
    });
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);
    let paused_at = paused_at.unwrap();
    let after = log.steps.iter().filter(|m| m.step > paused_at).count();
    assert!(
        after >= 3,
        "only {after} steps after resuming at step {paused_at}"
    );
}

#[test]
fn contrastive_views_at_half_the_working_size_train_and_are_judged_at_the_working_size() {
    let out = tempfile::tempdir().unwrap();
    let mut c = TrainConfig {
        tasks: vec![TaskKind::Contrastive],
        lr: 2e-3,
        ..config(out.path(), 256, 32, 3)
    };
    c.settings.augment.view_scale = 0.5;
    // The views the engine trains on are 16 × 16 cut from the 32 × 32 working images.
    let data = pretext::data::builtin::generate(8, c.size);
    let maker = pretext::tasks::contrastive::ContrastiveMaker {
        augment: c.settings.augment.clone(),
    };
    let batch = pretext::tasks::BatchMaker::make(&maker, &data, &[0, 1, 2, 3], 7);
    assert_eq!(batch.inputs.shape, vec![8, 3, 16, 16]);
    let log = run(Command::Start(Box::new(c)));
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);
    let first = &log.epochs[0];
    let last = log.epochs.last().unwrap();
    assert!(
        last.loss < first.loss,
        "NT-Xent did not fall: {} -> {}",
        first.loss,
        last.loss
    );
    // Previews are made of the views; the kNN monitor embeds the working-size images.
    assert!(log.previews >= 2, "{}", log.previews);
    assert!(!log.knn.is_empty());
}

/// A run can be continued from its first epoch's end on, whatever the monitoring budget: the
/// first checkpoint (with the resume point) is written then. The budget's first guess had let
/// it wait about 40 s, so a run killed before that could not be continued at all.
#[test]
fn the_first_epoch_leaves_a_resume_checkpoint_however_small_the_budget() {
    let out = tempfile::tempdir().unwrap();
    let t = Trainer::spawn().unwrap();
    t.send(Command::Start(Box::new(TrainConfig {
        monitor_budget: 0.5,
        ..config(out.path(), 64, 16, 1000)
    })));
    let mut checked = false;
    let log = drive(&t, |e, log| {
        if let Event::Epoch(s) = e
            && !checked
        {
            checked = true;
            let dir = log.run_dir.clone().or_else(|| {
                std::fs::read_dir(out.path())
                    .ok()?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.join("config.json").is_file())
            });
            let dir = dir.expect("the run's directory");
            let resume = dir.join("checkpoints").join("resume.safetensors");
            assert!(
                resume.is_file(),
                "no resume checkpoint after epoch {}",
                s.epoch
            );
            t.send(Command::Stop);
        }
    });
    assert!(checked, "{:?} {:?}", log.outcome, log.errors);
    assert_eq!(log.outcome, Some(Outcome::Stopped));
}
