//! The Math panel's derivations: equal to the trainer's loss on the same batch, equal to the
//! fixtures, a real gradient step lowers the loss, and the weights are untouched afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use pretext::config::{ContrastiveLoss, DataSource, TaskKind, TrainConfig};
use pretext::math::{self, MathReport, Picture, Selection, StepKind, TaskMath};
use pretext::train::{Command, Event, Outcome, Trainer};

fn freeze(trainer: &Trainer) -> MathReport {
    assert!(trainer.send(Command::Freeze {
        images: 8,
        eta: None
    }));
    loop {
        match trainer
            .events()
            .recv_timeout(Duration::from_secs(120))
            .unwrap()
        {
            Event::Math(r) => return *r,
            Event::Warning(w) => panic!("{w}"),
            _ => {}
        }
    }
}

#[test]
fn every_task_derivation_equals_the_trainers_loss_and_the_step_lowers_it() {
    let out = tempfile::tempdir().unwrap();
    let trainer = Trainer::spawn().unwrap();
    let tasks = TaskKind::ALL.to_vec();
    trainer.send(Command::Start(Box::new(TrainConfig {
        data: DataSource::Builtin { count: 64 },
        task_weights: vec![1.0; tasks.len()],
        tasks,
        batch: 16,
        epochs: 1,
        out: out.path().to_path_buf(),
        preview_images: 2,
        ..TrainConfig::default()
    })));
    let log = common::drive(&trainer, |_, _| {});
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);

    // The finished run's model answers; freezing twice gives the same numbers (weights restored).
    let report = freeze(&trainer);
    let again = freeze(&trainer);
    assert_eq!(report.tasks.len(), TaskKind::ALL.len());
    let opt = report.optimisation.as_ref().unwrap();
    assert_eq!(
        opt.loss_before,
        again.optimisation.as_ref().unwrap().loss_before
    );
    assert!(
        opt.loss_after < opt.loss_before,
        "{} → {}",
        opt.loss_before,
        opt.loss_after
    );
    assert!(opt.grad_norms.iter().all(|(_, g)| g.is_finite()));
    assert!(opt.grad_norms[0].0.starts_with("stem"));

    for (i, t) in report.tasks.iter().enumerate() {
        let derived = match &t.math {
            TaskMath::Contrastive {
                projections,
                temperature,
                loss,
            } => {
                let c = math::contrastive_numbers(projections, *temperature, *loss).unwrap();
                let mean = c.per_anchor.iter().sum::<f64>() / c.per_anchor.len() as f64;
                assert!(
                    (mean - c.loss).abs() < 1e-9,
                    "step-by-step mean {mean} vs the trainer's {}",
                    c.loss
                );
                c.loss
            }
            TaskMath::Likelihood { logits, labels, .. } => {
                let (_, nll, mean) = math::likelihood_numbers(logits, labels).unwrap();
                let by_hand = nll.iter().sum::<f64>() / nll.len() as f64;
                assert!((by_hand - mean).abs() < 1e-5);
                mean
            }
            TaskMath::Reconstruction {
                prediction,
                target,
                weight,
                channels,
                size,
            } => math::reconstruction_numbers(prediction, target, weight, *channels, *size).1,
            TaskMath::ColorClasses {
                logits,
                indices,
                weights,
                bins,
                size,
            } => {
                let c =
                    math::color_class_numbers(logits, indices, weights, bins.len(), *size).unwrap();
                assert!(
                    (c.by_hand - c.loss).abs() < 1e-4 * c.loss.abs().max(1.0),
                    "pixel by pixel {} vs dense_soft_cross_entropy {}",
                    c.by_hand,
                    c.loss
                );
                c.loss
            }
            TaskMath::Siamese(m) => math::siamese_numbers(m).unwrap().loss,
        };
        assert!(
            (derived - t.trainer_loss).abs() < 1e-4 * t.trainer_loss.abs().max(1.0),
            "{}: derived {derived} vs trainer {}",
            t.task,
            t.trainer_loss
        );
        let steps = math::steps(
            &report,
            &Selection {
                task: i,
                ..Selection::default()
            },
        );
        assert_eq!(
            steps.first().map(|s| s.kind),
            Some(StepKind::Representation)
        );
        assert_eq!(steps.last().map(|s| s.kind), Some(StepKind::Optimisation));
        assert!(
            steps
                .iter()
                .all(|s| !s.formula.is_empty() && !s.text.is_empty())
        );
        // Every picture's bytes fit its size (the two-view tasks' 16 px views beside the 32 px
        // original: a mismatch once brought the whole app down in egui).
        for s in &steps {
            for p in &s.pictures {
                if let Picture::Image { label, size, rgb } = p {
                    assert_eq!(rgb.len(), size * size * 3, "{}: {label}", t.task);
                }
            }
        }
    }
    // Colorization-bins: its step says the trainer's loss, and a clicked pixel is spelled out.
    let bi = report
        .tasks
        .iter()
        .position(|t| t.task == TaskKind::ColorizationBins)
        .unwrap();
    let at = |pixel| {
        math::steps(
            &report,
            &Selection {
                task: bi,
                pixel,
                ..Selection::default()
            },
        )
    };
    let steps = at(None);
    let kinds: Vec<StepKind> = steps.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            StepKind::Representation,
            StepKind::ColorClasses,
            StepKind::Optimisation
        ]
    );
    let find = |s: &math::Step, label: &str| {
        s.values
            .iter()
            .find(|v| v.label.starts_with(label))
            .unwrap()
            .value
    };
    assert!(
        (find(&steps[1], "L by the trainer") - report.tasks[bi].trainer_loss).abs() < 1e-4,
        "{} vs {}",
        find(&steps[1], "L by the trainer"),
        report.tasks[bi].trainer_loss
    );
    let corner = at(Some((0, 0)));
    assert!(corner[1].values[0].label.starts_with("pixel (0, 0)"));
    assert!(steps[1].values[0].label.starts_with("pixel (16, 16)"));
    // The pixel's loss is the sum of its target bins' terms.
    let terms: f64 = corner[1]
        .values
        .iter()
        .filter(|v| v.label.starts_with("bin "))
        .map(|v| v.value)
        .sum();
    assert!((terms - find(&corner[1], "pixel (0, 0): loss")).abs() < 1e-9);

    // The contrastive steps: a different τ changes the loss, and the trainer's τ reproduces it.
    let ci = report
        .tasks
        .iter()
        .position(|t| t.task == TaskKind::Contrastive)
        .unwrap();
    let steps = math::steps(
        &report,
        &Selection {
            task: ci,
            temperature: Some(0.1),
            ..Selection::default()
        },
    );
    let kinds: Vec<StepKind> = steps.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            StepKind::Representation,
            StepKind::Transformation,
            StepKind::Similarity,
            StepKind::Contrastive,
            StepKind::Optimisation
        ]
    );
    let loss_at = |steps: &[math::Step]| {
        steps[3]
            .values
            .iter()
            .find(|v| v.label == "L = mean ℓ")
            .unwrap()
            .value
    };
    let default_steps = math::steps(
        &report,
        &Selection {
            task: ci,
            ..Selection::default()
        },
    );
    assert!((loss_at(&default_steps) - report.tasks[ci].trainer_loss).abs() < 1e-4);
    assert!((loss_at(&steps) - loss_at(&default_steps)).abs() > 1e-3);
}

#[test]
fn a_dcl_run_trains_on_dcl_and_its_math_steps_spell_dcl_out() {
    let out = tempfile::tempdir().unwrap();
    let trainer = Trainer::spawn().unwrap();
    let mut config = TrainConfig {
        data: DataSource::Builtin { count: 32 },
        tasks: vec![TaskKind::Contrastive],
        task_weights: vec![1.0],
        batch: 16,
        epochs: 1,
        out: out.path().to_path_buf(),
        preview_images: 2,
        ..TrainConfig::default()
    };
    config.settings.contrastive_loss = ContrastiveLoss::Dcl;
    trainer.send(Command::Start(Box::new(config)));
    let log = common::drive(&trainer, |_, _| {});
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);
    let report = freeze(&trainer);
    let t = &report.tasks[0];
    let TaskMath::Contrastive {
        projections,
        temperature,
        loss,
    } = &t.math
    else {
        panic!("not the contrastive derivation");
    };
    assert_eq!(*loss, ContrastiveLoss::Dcl);
    // The task's forward() computed DCL: the derivation with DCL gives its loss, NT-Xent not.
    let dcl = math::contrastive_numbers(projections, *temperature, ContrastiveLoss::Dcl).unwrap();
    let nt = math::contrastive_numbers(projections, *temperature, ContrastiveLoss::NtXent).unwrap();
    assert!(
        (dcl.loss - t.trainer_loss).abs() < 1e-4,
        "{} vs {}",
        dcl.loss,
        t.trainer_loss
    );
    assert!((nt.loss - t.trainer_loss).abs() > 1e-3);
    // The step shown: DCL's title, a denominator of the 2N − 2 negatives, ℓ = −log(num / den).
    let steps = math::steps(&report, &Selection::default());
    let step = steps
        .iter()
        .find(|s| s.kind == StepKind::Contrastive)
        .unwrap();
    assert!(step.title.starts_with("Decoupled"), "{}", step.title);
    let value = |name: &str| step.values.iter().find(|v| v.label == name).unwrap().value;
    let n = projections.len();
    let denominator = step
        .values
        .iter()
        .find(|v| v.label == "denominator")
        .unwrap();
    assert!(
        denominator
            .how
            .contains(&format!("the {} negatives", n - 2)),
        "{}",
        denominator.how
    );
    let (num, den) = (value("numerator"), value("denominator"));
    // (The bars' terms, and so the shown denominator, are f32.)
    assert!((value("ℓ0") + (num / den).ln()).abs() < 1e-5);
    assert!((value("ℓ0") - dcl.per_anchor[0]).abs() < 1e-9);
    let bars = step
        .pictures
        .iter()
        .find_map(|p| match p {
            math::Picture::Bars { label, values, .. } if label.starts_with("exp(sim/τ)") => {
                Some(values.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(bars.iter().filter(|&&v| v > 0.0).count(), n - 2);
}

/// The cases of a two-view loss fixture in tests/data (nt_xent.json, dcl.json).
fn fixture_cases(name: &str) -> Vec<serde_json::Value> {
    common::fixture(name)["cases"].as_array().unwrap().clone()
}

/// A fixture case's 2N projections (its z1 rows, then its z2 rows) and its temperature.
fn views_and_temperature(case: &serde_json::Value) -> (Vec<Vec<f32>>, f64) {
    let h = [&case["z1"], &case["z2"]]
        .into_iter()
        .flat_map(common::matrix)
        .map(|r| r.into_iter().map(|v| v as f32).collect())
        .collect();
    (h, case["temperature"].as_f64().unwrap())
}

#[test]
fn contrastive_derivation_matches_the_dcl_fixture() {
    for case in fixture_cases("dcl.json") {
        let (h, tau) = views_and_temperature(&case);
        let c = math::contrastive_numbers(&h, tau, ContrastiveLoss::Dcl).unwrap();
        let want = case["loss"].as_f64().unwrap();
        assert!((c.loss - want).abs() < 1e-4, "{} vs {want}", c.loss);
        // The per-anchor terms, summed from the similarity rows without the positive in the
        // denominator, average to lightly's loss; with it (NT-Xent) they would not.
        let mean = c.per_anchor.iter().sum::<f64>() / c.per_anchor.len() as f64;
        assert!((mean - want).abs() < 1e-4, "{mean} vs {want}");
        let nt = math::contrastive_numbers(&h, tau, ContrastiveLoss::NtXent).unwrap();
        assert!(nt.loss > want + 1e-3);
    }
}

#[test]
fn contrastive_derivation_matches_the_nt_xent_fixture() {
    for case in fixture_cases("nt_xent.json") {
        let (h, tau) = views_and_temperature(&case);
        let c = math::contrastive_numbers(&h, tau, ContrastiveLoss::NtXent).unwrap();
        assert!((c.loss - case["loss"].as_f64().unwrap()).abs() < 1e-4);
        for (a, b) in c
            .per_anchor
            .iter()
            .zip(case["per_anchor_loss"].as_array().unwrap())
        {
            assert!((a - b.as_f64().unwrap()).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
