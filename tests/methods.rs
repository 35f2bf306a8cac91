//! The two-view methods beyond SimCLR (MoCo, BYOL, SimSiam, Barlow Twins, VICReg): losses
//! against the reference implementations' numbers (tests/data, from lightly and PyTorch), the
//! momentum teacher and the queue as state, exact resume, learning, and the collapse that the
//! stop-gradient prevents.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use candle_core::{DType, Device, Tensor};
use common::fixture;
use pretext::config::{DataSource, LrSchedule, TaskKind, TaskSettings, TrainConfig};
use pretext::model::losses::{self, VicRegWeights};
use pretext::model::{Model, optim};
use pretext::tasks;
use pretext::train::{Command, Event, Outcome, StepMetrics, Trainer};

fn tensor(v: &serde_json::Value, dtype: DType) -> Tensor {
    let rows = common::matrix(v);
    let (n, d) = (rows.len(), rows[0].len());
    let flat: Vec<f64> = rows.into_iter().flatten().collect();
    Tensor::from_vec(flat, (n, d), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: {got} vs {want}"
    );
}

const PRECISIONS: [(DType, f64); 2] = [(DType::F64, 1e-9), (DType::F32, 1e-5)];

#[test]
fn negative_cosine_matches_lightly() {
    let f = fixture("negative_cosine.json");
    for case in f["cases"].as_array().unwrap() {
        for (dtype, tol) in PRECISIONS {
            let p = tensor(&case["p"], dtype);
            let z = tensor(&case["z"], dtype);
            let loss = scalar(&losses::negative_cosine(&p, &z).unwrap());
            close(loss, case["loss"].as_f64().unwrap(), tol, "negative cosine");
        }
    }
}

#[test]
fn barlow_twins_matches_lightly_with_its_cross_correlation() {
    let f = fixture("barlow_twins.json");
    for case in f["cases"].as_array().unwrap() {
        for (dtype, tol) in PRECISIONS {
            let z1 = tensor(&case["z1"], dtype);
            let z2 = tensor(&case["z2"], dtype);
            let bt = losses::barlow_twins(&z1, &z2, case["lambda"].as_f64().unwrap()).unwrap();
            close(
                scalar(&bt.loss),
                case["loss"].as_f64().unwrap(),
                tol * 10.0,
                "Barlow Twins loss",
            );
            let c = bt
                .cross_correlation
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap();
            let want = tensor(&case["cross_correlation"], DType::F64)
                .to_vec2::<f64>()
                .unwrap();
            for (row, want_row) in c.iter().zip(&want) {
                for (a, b) in row.iter().zip(want_row) {
                    close(*a, *b, tol * 10.0, "C");
                }
            }
        }
    }
}

#[test]
fn vicreg_matches_lightly_term_by_term() {
    let f = fixture("vicreg.json");
    for case in f["cases"].as_array().unwrap() {
        let w = VicRegWeights {
            invariance: case["lambda"].as_f64().unwrap(),
            variance: case["mu"].as_f64().unwrap(),
            covariance: case["nu"].as_f64().unwrap(),
            eps: case["eps"].as_f64().unwrap(),
        };
        for (dtype, tol) in PRECISIONS {
            let v = losses::vicreg(&tensor(&case["z1"], dtype), &tensor(&case["z2"], dtype), w)
                .unwrap();
            for (got, key) in [
                (&v.invariance, "invariance"),
                (&v.variance, "variance"),
                (&v.covariance, "covariance"),
                (&v.loss, "loss"),
            ] {
                close(scalar(got), case[key].as_f64().unwrap(), tol * 10.0, key);
            }
        }
    }
}

#[test]
fn moco_info_nce_with_a_queue_matches_pytorch() {
    let f = fixture("moco.json");
    for case in f["cases"].as_array().unwrap() {
        for (dtype, tol) in PRECISIONS {
            let q = tensor(&case["q"], dtype);
            let k = tensor(&case["k"], dtype);
            let queue = tensor(&case["queue"], dtype);
            let (loss, logits) =
                losses::moco_info_nce(&q, &k, Some(&queue), case["temperature"].as_f64().unwrap())
                    .unwrap();
            close(
                scalar(&loss),
                case["loss"].as_f64().unwrap(),
                tol * 10.0,
                "MoCo InfoNCE",
            );
            assert_eq!(
                logits.dims(),
                &[q.dim(0).unwrap(), 1 + queue.dim(0).unwrap()]
            );
        }
    }
    // Without negatives the positive is the only class: nothing to learn, loss 0.
    let q = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
    let (loss, _) = losses::moco_info_nce(&q, &q, None, 0.2).unwrap();
    assert!(scalar(&loss).abs() < 1e-6);
}

#[test]
fn momentum_schedule_matches_lightly() {
    let f = fixture("momentum_schedule.json");
    let (start, end) = (f["start"].as_f64().unwrap(), f["end"].as_f64().unwrap());
    let total = f["total_steps"].as_u64().unwrap();
    for (t, want) in f["values"].as_array().unwrap().iter().enumerate() {
        let m = optim::cosine_momentum(t as u64, total, start, end);
        close(m, want.as_f64().unwrap(), 1e-12, &format!("m({t})"));
    }
    assert_eq!(optim::cosine_momentum_at(0.0, 0.99, 1.0), 0.99);
    assert_eq!(optim::cosine_momentum_at(1.0, 0.99, 1.0), 1.0);
}

fn var_values(model: &Model, name: &str) -> Vec<f32> {
    model.named_vars()[name]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn a_momentum_teacher_starts_as_the_student_follows_it_and_is_never_trained() {
    for kind in [TaskKind::Byol, TaskKind::Moco] {
        let model = Model::new(Device::Cpu, 3).unwrap();
        let settings = TaskSettings::default();
        let data = pretext::data::builtin::generate(4, 32);
        let built = tasks::build(&[kind], &settings, &model, &data).unwrap();
        model.init_weights(1).unwrap();
        let task = &built[0];
        let teacher = format!("heads.{}.teacher.encoder.l1.c1.weight", kind.name());
        let student = "l1.c1.weight";
        assert_ne!(var_values(&model, &teacher), var_values(&model, student));
        task.start(&model, 1).unwrap();
        assert_eq!(var_values(&model, &teacher), var_values(&model, student));
        if kind == TaskKind::Moco {
            // MoCo's queue starts as random unit vectors (as MoCo's code starts it), drawn from
            // the run's seed: negatives from the first step, the same for the same seed.
            let name = "heads.moco.queue.keys";
            let (k, d) = model.named_vars()[name].as_tensor().dims2().unwrap();
            assert_eq!(k, settings.queue_size);
            let keys = var_values(&model, name);
            for row in keys.chunks(d) {
                let len = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!((len - 1.0).abs() < 1e-5, "a key of length {len}");
            }
            assert_ne!(keys[..d], keys[d..2 * d], "keys differ");
            task.start(&model, 2).unwrap();
            assert_ne!(var_values(&model, name), keys, "another seed, other keys");
            task.start(&model, 1).unwrap();
            assert_eq!(
                var_values(&model, name),
                keys,
                "the same seed, the same keys"
            );
        }
        // The Math panel's m: the schedule's start on a fresh run; on a resumed one, the m
        // of its next update (not the start again).
        let momentum = |task: &dyn tasks::PretextTask| {
            let batch = task
                .maker()
                .make(&data, &[0, 1, 2, 3], 5)
                .upload(&Device::Cpu)
                .unwrap();
            match task.explain(&model, &batch).unwrap().math {
                pretext::math::TaskMath::Siamese(m) => m.momentum,
                _ => panic!("{kind}: not a two-view task's math"),
            }
        };
        assert_eq!(momentum(task.as_ref()), Some(settings.momentum));
        task.resumed(0.5).unwrap();
        let at_half = optim::cosine_momentum_at(0.5, settings.momentum, 1.0);
        assert!(at_half > settings.momentum);
        assert_eq!(momentum(task.as_ref()), Some(at_half));
        // No teacher tensor (nor the queue) is given to the optimiser.
        assert!(
            model
                .trainable_vars()
                .iter()
                .all(|(n, _)| !n.contains(".teacher.") && !n.contains(".queue.")),
        );
        assert!(model.state_dict().unwrap().contains_key(&teacher));
        // After an update θₜ ← m θₜ + (1 − m) θₛ, with m at the schedule's start.
        let before_t = var_values(&model, &teacher);
        let s = model.named_vars()[student].clone();
        let moved = (s.as_tensor() + 1.0).unwrap();
        s.set(&moved).unwrap();
        let after_s = var_values(&model, student);
        task.after_update(&model, 0.0).unwrap();
        let m = settings.momentum as f32;
        for ((t, b), s) in var_values(&model, &teacher)
            .iter()
            .zip(&before_t)
            .zip(&after_s)
        {
            assert!((t - (m * b + (1.0 - m) * s)).abs() < 1e-6, "{t}");
        }
        // At the run's end m = 1: the teacher stays.
        let settled = var_values(&model, &teacher);
        task.after_update(&model, 1.0).unwrap();
        assert_eq!(var_values(&model, &teacher), settled);
    }
}

fn config(out: &std::path::Path, kind: TaskKind, count: usize, epochs: usize) -> TrainConfig {
    TrainConfig {
        data: DataSource::Builtin { count },
        tasks: vec![kind],
        batch: 32,
        epochs,
        out: out.to_path_buf(),
        preview_images: 2,
        settings: TaskSettings {
            queue_size: 96,
            ..TaskSettings::default()
        },
        ..TrainConfig::default()
    }
}

#[test]
fn moco_and_byol_resume_exactly_with_their_teacher_and_queue() {
    for kind in [TaskKind::Moco, TaskKind::Byol] {
        let a = tempfile::tempdir().unwrap();
        let straight = common::run(Command::Start(Box::new(config(a.path(), kind, 64, 2))));
        assert_eq!(
            straight.outcome,
            Some(Outcome::Completed),
            "{:?}",
            straight.errors
        );

        // The same run, stopped after its first epoch and continued.
        let b = tempfile::tempdir().unwrap();
        let trainer = Trainer::spawn().unwrap();
        assert!(trainer.send(Command::Start(Box::new(config(b.path(), kind, 64, 2)))));
        let mut stopped = false;
        let first = common::drive(&trainer, |e, _| {
            if matches!(e, Event::Epoch(_)) && !stopped {
                stopped = true;
                trainer.send(Command::Stop);
            }
        });
        let dir = first.run_dir.clone().unwrap();
        let second = common::run(Command::Continue {
            run_dir: dir,
            epochs: None,
            lr: None,
            minutes: None,
        });
        assert_eq!(
            second.outcome,
            Some(Outcome::Completed),
            "{:?}",
            second.errors
        );
        let from = second.steps.first().map(|s| s.step).unwrap() as usize;
        assert!(from > 1 && from <= straight.steps.len(), "{from}");
        let losses = |l: &[StepMetrics]| l.iter().map(|s| s.loss).collect::<Vec<_>>();
        assert_eq!(
            losses(&straight.steps[from - 1..]),
            losses(&second.steps),
            "{kind}: resume is exact"
        );
    }
}

/// Trains `kind` on 256 built-in scenes and returns the last epoch's proxy and chance, and
/// the monitor's measurements.
fn learn(
    kind: TaskKind,
    stop_gradient: bool,
    (batch, epochs, lr): (usize, usize, f64),
) -> (f64, f64, Vec<pretext::train::KnnMetrics>) {
    let out = tempfile::tempdir().unwrap();
    let mut c = TrainConfig {
        batch,
        lr,
        lr_schedule: LrSchedule::Constant,
        monitor_budget: 100.0,
        knn_every: 20,
        ..config(out.path(), kind, 256, epochs)
    };
    c.settings.stop_gradient = stop_gradient;
    c.settings.queue_size = TaskSettings::default().queue_size;
    let log = common::run(Command::Start(Box::new(c)));
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);
    let last = &log.epochs.last().unwrap().tasks[0];
    eprintln!(
        "{kind}: loss {:.3} → {:.3}, view top-1 {:.1}% (chance {:.1}%)",
        log.epochs[0].loss,
        log.epochs.last().unwrap().loss,
        last.metric * 100.0,
        last.baseline.unwrap() * 100.0
    );
    (last.metric, last.baseline.unwrap(), log.knn)
}

#[test]
fn every_two_view_method_finds_the_other_view_above_chance() {
    for kind in [
        TaskKind::Moco,
        TaskKind::Byol,
        TaskKind::Simsiam,
        TaskKind::BarlowTwins,
        TaskKind::Vicreg,
    ] {
        let (top1, chance, _) = learn(kind, true, (64, 3, 1e-3));
        assert!((chance - 1.0 / 64.0).abs() < 1e-12);
        assert!(top1 > 1.5 * chance, "{kind}: {top1} vs chance {chance}");
    }
}

#[test]
fn simsiam_without_the_stop_gradient_collapses_and_the_gauges_say_so() {
    // Without sg(·) the projector and predictor agree by mapping the images onto (nearly) one
    // line; the output's batch norm keeps each dimension's variance, so what falls is the rank:
    // RankMe of the output below 2 (Chen & He 2021, §4.1; Garrido et al. 2023). 200 steps of 32
    // images at a learning rate of 3e-3, measured every 20 steps.
    let rankmes = |knn: &[pretext::train::KnnMetrics]| -> Vec<f64> {
        knn.iter()
            .filter(|k| k.step >= 60)
            .filter_map(|k| k.head_gauges.iter().find(|(t, _)| *t == TaskKind::Simsiam))
            .map(|(_, g)| g.rankme)
            .collect()
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let announced = |knn: &[pretext::train::KnnMetrics]| {
        let mut view = pretext::view::RunView::default();
        for k in knn {
            view.apply(&Event::Knn(k.clone()));
        }
        view.messages
            .iter()
            .any(|m| m.error && m.text.contains("simsiam's output is collapsing"))
    };
    let (_, _, with) = learn(TaskKind::Simsiam, true, (32, 25, 3e-3));
    let (_, _, without) = learn(TaskKind::Simsiam, false, (32, 25, 3e-3));
    let (r_with, r_without) = (rankmes(&with), rankmes(&without));
    eprintln!("output RankMe from step 60, with sg {r_with:.2?}, without {r_without:.2?}");
    assert!(r_with.len() >= 5 && r_without.len() >= 5);
    assert!(median(r_with) > 2.5, "with the stop-gradient");
    assert!(median(r_without) < 2.0, "without the stop-gradient");
    // The run model (what the app and the CLI show) announces it, and only without sg.
    assert!(announced(&without), "no collapse announced without sg");
    assert!(!announced(&with), "a collapse announced with sg");
}

#[test]
fn the_math_panel_steps_through_each_method_with_the_trainers_numbers() {
    use pretext::math::{self, Selection, StepKind};
    let out = tempfile::tempdir().unwrap();
    let trainer = Trainer::spawn().unwrap();
    let kinds = [
        TaskKind::Moco,
        TaskKind::Byol,
        TaskKind::Simsiam,
        TaskKind::BarlowTwins,
        TaskKind::Vicreg,
    ];
    let mut c = config(out.path(), TaskKind::Moco, 64, 1);
    c.tasks = kinds.to_vec();
    c.task_weights = vec![1.0; kinds.len()];
    assert!(trainer.send(Command::Start(Box::new(c))));
    let log = common::drive(&trainer, |_, _| {});
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);
    assert!(trainer.send(Command::Freeze {
        images: 8,
        eta: None
    }));
    let report = loop {
        match trainer
            .events()
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap()
        {
            Event::Math(r) => break *r,
            Event::Warning(w) => panic!("{w}"),
            _ => {}
        }
    };
    for (i, kind) in kinds.iter().enumerate() {
        let steps = math::steps(
            &report,
            &Selection {
                task: i,
                ..Selection::default()
            },
        );
        let got: Vec<StepKind> = steps.iter().map(|s| s.kind).collect();
        let own = match kind {
            TaskKind::Moco => vec![StepKind::Queue, StepKind::Momentum],
            TaskKind::Byol => vec![StepKind::Prediction, StepKind::Momentum],
            TaskKind::Simsiam => vec![StepKind::Prediction],
            TaskKind::BarlowTwins => vec![StepKind::CrossCorrelation],
            _ => vec![StepKind::VarianceCovariance],
        };
        let mut want = vec![StepKind::Representation, StepKind::Transformation];
        want.extend(own);
        want.push(StepKind::Optimisation);
        assert_eq!(got, want, "{kind}");
        // The method's step: the loss recomputed from the numbers shown equals the trainer's.
        let step = &steps[2];
        let value = |prefix: &str| {
            step.values
                .iter()
                .find(|v| v.label.starts_with(prefix))
                .unwrap_or_else(|| panic!("{kind}: no {prefix} in {:?}", step.values))
                .value
        };
        let by_function = value("L by the trainer's function");
        let trainer_loss = value("trainer's loss");
        assert!(
            (by_function - trainer_loss).abs() < 1e-4 * trainer_loss.abs().max(1.0),
            "{kind}: {by_function} vs {trainer_loss}"
        );
        // The formula spelled out by hand gives the same number.
        let by_hand = value("L");
        assert!(
            (by_hand - trainer_loss).abs() < 1e-3 * trainer_loss.abs().max(1.0),
            "{kind}: by hand {by_hand} vs {trainer_loss}"
        );
    }
}
