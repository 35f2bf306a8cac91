//! The front-end-neutral run model: events in, state out, without egui; and a run directory read
//! back from disk gives the same model as the live run's events did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use pretext::config::{DataSource, TaskKind, TrainConfig};
use pretext::eval::NotMeasured;
use pretext::eval::embed::Gauges;
use pretext::tasks::metric_info;
use pretext::train::{
    Command, Event, KnnMetrics, Outcome, PauseReason, StepMetrics, StepTiming, TaskMetrics, Trainer,
};
use pretext::view::{RunStatus, RunView};

fn step(n: u64, tasks: &[(TaskKind, f64, f64, Option<f64>)]) -> Event {
    Event::Step(StepMetrics {
        step: n,
        epoch: 1,
        epochs: 2,
        batch: n as usize,
        batches: 4,
        tasks: tasks
            .iter()
            .map(|&(task, loss, metric, baseline)| TaskMetrics {
                task,
                loss,
                metric,
                baseline,
                metric_info: metric_info(task),
            })
            .collect(),
        loss: tasks.iter().map(|t| t.1).sum(),
        lr: 1e-3,
        images_per_s: 500.0,
        data_wait_s: 0.0,
        images: 128,
        step_s: 0.25,
        timing: StepTiming::default(),
        wall_s: n as f64,
    })
}

fn gauges(rankme: f64) -> Gauges {
    Gauges {
        std_of_l2_normalized: 0.03,
        std_reference: 1.0 / 16.0,
        rankme,
        dimensions: 256,
        uniformity: -2.0,
        alignment: Some(0.5),
        spectrum: Vec::new(),
    }
}

fn started() -> Event {
    Event::RunStarted {
        run_dir: PathBuf::from("runs/x"),
        config: Box::default(),
        start_step: 0,
        batches_per_epoch: 4,
        parameters: 1,
    }
}

#[test]
fn steps_become_curves_per_task_with_baselines_and_the_total() {
    let mut v = RunView::default();
    v.apply(&started());
    assert_eq!(v.status, RunStatus::Running);
    assert_eq!(v.run_dir, Some(PathBuf::from("runs/x")));
    v.apply(&step(1, &[(TaskKind::Rotation, 1.2, 0.5, None)]));
    v.apply(&step(
        2,
        &[
            (TaskKind::Rotation, 1.0, 0.75, None),
            (TaskKind::Inpainting, 0.2, 18.0, Some(12.0)),
        ],
    ));
    let c = &v.curves;
    assert_eq!(c.steps_seen, 2);
    assert_eq!(c.batches_per_epoch, 4);
    assert_eq!(c.series["loss/rotation"].points(), [[1.0, 1.2], [2.0, 1.0]]);
    // Fractions are shown in percent, PSNR as it is.
    assert_eq!(
        c.series["metric/rotation"].points(),
        [[1.0, 50.0], [2.0, 75.0]]
    );
    assert_eq!(c.series["metric/inpainting"].points(), [[2.0, 18.0]]);
    assert_eq!(c.series["baseline/inpainting"].points(), [[2.0, 12.0]]);
    // The total appears once there are several tasks.
    assert_eq!(c.series["loss/total"].points(), [[2.0, 1.2]]);
    assert_eq!(c.series["lr"].len(), 2);
    assert_eq!(v.last_step.as_ref().map(|s| s.step), Some(2));
}

#[test]
fn the_monitor_gives_stage_curves_reference_lines_gauges_and_reasons() {
    let mut v = RunView::default();
    v.apply(&Event::Knn(KnnMetrics {
        step: 0,
        epoch: 0,
        stages: vec![("l2".into(), 0.6), ("l3 (z)".into(), 0.4)],
        not_measured: None,
        raw_pixels: Some(0.55),
        gauges: gauges(128.0),
        head_gauges: Vec::new(),
    }));
    assert_eq!(v.knn.pixels, Some(0.55 * 100.0));
    assert_eq!(v.knn.start, Some(40.0));
    assert_eq!(v.curves.series["knn/l2"].points(), [[0.0, 60.0]]);
    assert_eq!(v.curves.series["gauge/rankme"].points(), [[0.0, 0.5]]);
    assert_eq!(v.curves.series["gauge/alignment"].points(), [[0.0, 0.5]]);
    assert!(v.messages.is_empty(), "{:?}", v.messages);
    // A collapsed representation is announced; a measurement without accuracies says why.
    v.apply(&Event::Knn(KnnMetrics {
        step: 10,
        epoch: 1,
        stages: Vec::new(),
        not_measured: Some(NotMeasured::OneClass),
        raw_pixels: None,
        gauges: gauges(1.0),
        head_gauges: Vec::new(),
    }));
    assert!(v.messages.last().unwrap().error);
    assert!(
        v.messages
            .last()
            .unwrap()
            .text
            .contains("collapsing at step 10")
    );
    assert!(v.knn.not_measured.as_ref().unwrap().contains("one class"));
    assert_eq!(v.knn.pixels, Some(0.55 * 100.0), "kept from step 0");
}

#[test]
fn status_follows_pause_resume_and_the_end_and_messages_do_not_repeat() {
    let mut v = RunView::default();
    assert!(!v.is_training());
    v.apply(&started());
    v.apply(&Event::Paused {
        step: 3,
        reason: PauseReason::Requested,
    });
    assert_eq!(v.status, RunStatus::Paused(PauseReason::Requested));
    assert!(v.is_training());
    v.apply(&Event::Resumed);
    assert_eq!(v.status, RunStatus::Running);
    v.apply(&Event::Warning("w".into()));
    v.apply(&Event::Warning("w".into()));
    v.apply(&Event::Error("e".into()));
    v.apply(&Event::Finished {
        run_dir: None,
        outcome: Outcome::Completed,
    });
    assert_eq!(v.status, RunStatus::Finished(Outcome::Completed));
    let texts: Vec<&str> = v.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        ["run directory: runs/x", "w", "e", "training finished"]
    );
    assert!(v.messages[2].error);
    // Clearing the run keeps the messages.
    v.clear_run();
    assert_eq!(v.status, RunStatus::Idle);
    assert!(v.curves.series.is_empty());
    assert_eq!(v.messages.len(), 4);
}

#[test]
fn a_run_read_back_from_its_directory_gives_the_live_model() {
    let out = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        data: DataSource::Builtin { count: 64 },
        tasks: vec![TaskKind::Inpainting, TaskKind::Rotation],
        task_weights: vec![0.5, 1.0],
        batch: 16,
        epochs: 3,
        knn_every: 5,
        preview_images: 2,
        out: out.path().to_path_buf(),
        ..TrainConfig::default()
    };
    let trainer = Trainer::spawn().unwrap();
    assert!(trainer.send(Command::Start(Box::new(config))));
    let mut live = RunView::default();
    let run_dir = loop {
        let e = trainer
            .events()
            .recv_timeout(Duration::from_secs(300))
            .unwrap();
        live.apply(&e);
        if let Event::Finished { run_dir, outcome } = e {
            assert_eq!(outcome, Outcome::Completed);
            break run_dir;
        }
    };
    let dir = run_dir.unwrap();
    let mut replayed = RunView::default();
    for e in pretext::train::run_dir::replay(&dir).unwrap() {
        replayed.apply(&e);
    }
    assert_eq!(live.curves.steps_seen, 12);
    assert!(live.curves.series.contains_key("knn/l3 (z)"));
    assert!(live.curves.series.contains_key("baseline/inpainting"));
    assert!(live.curves.series.contains_key("loss/total"));
    assert_eq!(replayed.curves, live.curves);
    assert_eq!(replayed.knn, live.knn);
    assert_eq!(replayed.config, live.config);
    assert_eq!(replayed.run_dir, live.run_dir);
    let (a, b) = (live.last_step.unwrap(), replayed.last_step.unwrap());
    assert_eq!(
        (a.step, a.epoch, a.loss, a.lr),
        (b.step, b.epoch, b.loss, b.lr)
    );
    assert_eq!(a.tasks, b.tasks);
}

#[test]
fn a_collapsing_head_output_is_announced_when_two_measurements_in_training_show_it() {
    let mut v = RunView::default();
    // A measurement at `step` whose head output has RankMe `head` (collapsed below 2).
    let measured = |step: u64, head: f64| {
        Event::Knn(KnnMetrics {
            step,
            epoch: 0,
            stages: Vec::new(),
            not_measured: Some(NotMeasured::NoLabels),
            raw_pixels: None,
            gauges: gauges(128.0),
            head_gauges: vec![(TaskKind::Simsiam, gauges(head))],
        })
    };
    let knn = |step: u64| measured(step, 1.2);
    // A random head is often bunched up before the first step: no alarm.
    v.apply(&knn(0));
    assert!(
        v.messages.iter().all(|m| !m.text.contains("output")),
        "{:?}",
        v.messages
    );
    assert_eq!(
        v.curves.series["gauge/simsiam output rankme"].points(),
        [[0.0, 1.2 / 256.0]]
    );
    // One collapsed-looking measurement during training is not announced: a healthy
    // SimSiam's output rank can dip below 2 once early on.
    v.apply(&knn(40));
    let announced = |v: &RunView| {
        v.messages
            .iter()
            .any(|m| m.error && m.text.contains("output"))
    };
    assert!(!announced(&v), "{:?}", v.messages);
    // A recovery in between starts the count again.
    v.apply(&measured(48, 128.0));
    v.apply(&knn(56));
    assert!(!announced(&v), "{:?}", v.messages);
    // Two in a row are.
    v.apply(&knn(64));
    assert!(
        v.messages
            .iter()
            .any(|m| m.error && m.text.contains("simsiam's output is collapsing at step 64")),
        "{:?}",
        v.messages
    );
}
