//! Makes the PNGs in `screenshots/` from the real app mid-training (rendered offscreen with
//! wgpu): `cargo run --release --example screenshots` (see screenshots/README.md).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::Path;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use pretext::config::{DataSource, TaskKind, TrainConfig};
use pretext::ui::{DataState, MapKind, Persisted, PretextApp, Tab, TsneMap};

const TRAIN_SECS: u64 = 90;
const TWO_VIEW_SECS: u64 = 60;

fn frames_until(h: &mut Harness<'_, PretextApp>, what: &str, cond: impl Fn(&PretextApp) -> bool) {
    let start = Instant::now();
    while !cond(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "timed out waiting for {what}"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.run_steps(4);
}

fn save(h: &mut Harness<'_, PretextApp>, name: &str) {
    let img = h.render().expect("render");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("screenshots")
        .join(name);
    img.save(&path).unwrap();
    println!("wrote {}", path.display());
}

fn main() {
    let out = tempfile::tempdir().unwrap();
    let mut h = Harness::builder()
        .with_size(eframe::egui::vec2(1500.0, 950.0))
        .wgpu()
        .build_eframe(|cc| PretextApp::new(&cc.egui_ctx, None, None).unwrap());
    let tasks = vec![
        TaskKind::Colorization,
        TaskKind::Inpainting,
        TaskKind::Rotation,
        TaskKind::Contrastive,
    ];
    h.state_mut().settings = Persisted {
        config: TrainConfig {
            data: DataSource::Builtin { count: 512 },
            task_weights: vec![1.0; tasks.len()],
            tasks,
            batch: 32,
            // Until it is stopped below: the inspection needs a run that is going, and a fixed
            // number of epochs can end before the 90 s on a fast machine.
            epochs: pretext::config::EPOCHS_UNTIL_TIME_LIMIT,
            minutes: Some(30.0),
            preview_images: 4,
            out: out.path().to_path_buf(),
            // A denser schedule than the default 5%, so that every curve has points after the
            // 90 s this example trains (the README says so).
            monitor_budget: 25.0,
            ..TrainConfig::default()
        },
        show_frame_time: true,
        ..Persisted::default()
    };
    h.state_mut().open_data(DataSource::Builtin { count: 512 });
    frames_until(&mut h, "data", |a| matches!(a.data, DataState::Ready(_)));
    h.state_mut().start();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(TRAIN_SECS) || h.state().run.last_epoch.is_none() {
        h.step();
        std::thread::sleep(Duration::from_millis(30));
    }
    save(&mut h, "training.png");

    h.state_mut().inspect(13);
    frames_until(&mut h, "inspection", |a| a.tabs.inspection.is_some());
    h.state_mut().tabs.tab = Tab::Inspect;
    h.run_steps(4);
    save(&mut h, "inspect.png");

    h.state_mut().tabs.tab = Tab::Augmentations;
    frames_until(&mut h, "augmented views", |a| a.tabs.augment.view.is_some());
    h.run_steps(4);
    save(&mut h, "augmentations.png");

    // The Math panel on a frozen batch: contrastive loss, likelihood, reconstruction, update.
    h.state_mut().send(pretext::train::Command::Freeze {
        images: 8,
        eta: None,
    });
    frames_until(&mut h, "frozen batch", |a| a.tabs.math.report.is_some());
    let tasks: Vec<TaskKind> = h
        .state()
        .tabs
        .math
        .report
        .as_ref()
        .unwrap()
        .tasks
        .iter()
        .map(|t| t.task)
        .collect();
    let find = |k: TaskKind| tasks.iter().position(|t| *t == k).unwrap_or(0);
    for (name, task, step) in [
        ("math-contrastive.png", find(TaskKind::Contrastive), 3),
        ("math-similarity.png", find(TaskKind::Contrastive), 2),
        ("math-likelihood.png", find(TaskKind::Rotation), 1),
        ("math-reconstruction.png", find(TaskKind::Inpainting), 1),
        ("math-optimisation.png", find(TaskKind::Rotation), 2),
    ] {
        h.state_mut().tabs.tab = Tab::Math;
        h.state_mut().tabs.math.sel.task = task;
        h.state_mut().tabs.math.sel.example = 3;
        h.state_mut().tabs.math.step = step;
        h.run_steps(4);
        save(&mut h, name);
    }
    h.state_mut().send(pretext::train::Command::Embed);
    frames_until(&mut h, "embedding", |a| a.tabs.explorer.embedding.is_some());
    h.state_mut().tabs.explorer.selected = Some(13);
    h.state_mut().tabs.tab = Tab::Explorer;
    h.run_steps(4);
    save(&mut h, "explorer.png");
    h.state_mut().tabs.explorer.map = MapKind::Tsne;
    h.run_steps(2);
    frames_until(&mut h, "t-SNE", |a| {
        matches!(a.tabs.explorer.tsne, Some(TsneMap::Ready { .. }))
    });
    save(&mut h, "explorer-tsne.png");
    // The first run ends before the view is cleared, so none of its events reach the next.
    h.state_mut().send(pretext::train::Command::Stop);
    frames_until(&mut h, "the first run's end", |a| {
        matches!(a.run.status, pretext::ui::RunStatus::Finished(_))
    });
    h.state_mut().reset();
    h.run_steps(4);
    two_view_methods(&mut h, out.path());
    contest(&mut h, out.path());
}

/// A contest of four tasks on the glyphs, half a minute each, in the Runs tab: mid-way (the
/// partial ranking, the curves of the tasks so far) and at the end.
fn contest(h: &mut Harness<'_, PretextApp>, out: &Path) {
    use pretext::ui::contest::{BudgetKind, ContestForm};
    let data = DataSource::Glyphs { count: 800 };
    h.state_mut().settings.config = TrainConfig {
        data: data.clone(),
        tasks: vec![TaskKind::Rotation],
        out: out.to_path_buf(),
        ..TrainConfig::default()
    };
    h.state_mut().settings.contest = ContestForm {
        tasks: [
            TaskKind::Rotation,
            TaskKind::Jigsaw,
            TaskKind::Contrastive,
            TaskKind::Vicreg,
        ]
        .into(),
        kind: BudgetKind::Minutes,
        minutes: 0.5,
        ..ContestForm::default()
    };
    h.state_mut().open_data(data);
    frames_until(h, "glyphs", |a| matches!(a.data, DataState::Ready(_)));
    h.state_mut().tabs.tab = Tab::Runs;
    h.state_mut().perform(pretext::ui::Action::StartContest);
    frames_until(h, "the third task half-way", |a| {
        let c = &a.tabs.runs.contest;
        c.current.is_some_and(|(_, i, _)| i == 3) && c.progress > 0.5
    });
    save(h, "contest.png");
    frames_until(h, "the contest's end", |a| {
        a.tabs.runs.contest.outcome.is_some()
    });
    h.state_mut().tabs.runs.x_axis = pretext::view::XAxis::WallClock;
    h.state_mut().tabs.runs.stage = 2;
    // The followed runs' last rows.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        h.step();
        std::thread::sleep(Duration::from_millis(30));
    }
    save(h, "runs.png");
}

/// MoCo and Barlow Twins on one encoder: their previews (the queue, the cross-correlation
/// matrix) beside the curves, and Barlow Twins' step in the Math panel.
fn two_view_methods(h: &mut Harness<'_, PretextApp>, out: &Path) {
    let tasks = vec![TaskKind::Moco, TaskKind::BarlowTwins];
    h.state_mut().settings.config = TrainConfig {
        data: DataSource::Builtin { count: 512 },
        task_weights: vec![1.0; tasks.len()],
        tasks,
        batch: 64,
        epochs: pretext::config::EPOCHS_UNTIL_TIME_LIMIT,
        minutes: Some(30.0),
        preview_images: 4,
        out: out.to_path_buf(),
        monitor_budget: 25.0,
        ..TrainConfig::default()
    };
    h.state_mut().tabs.tab = Tab::Training;
    h.state_mut().start();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(TWO_VIEW_SECS) || h.state().run.last_epoch.is_none()
    {
        h.step();
        std::thread::sleep(Duration::from_millis(30));
    }
    save(h, "training-two-view.png");
    h.state_mut().tabs.math.report = None;
    h.state_mut().send(pretext::train::Command::Freeze {
        images: 8,
        eta: None,
    });
    frames_until(h, "frozen batch", |a| a.tabs.math.report.is_some());
    let barlow = h
        .state()
        .tabs
        .math
        .report
        .as_ref()
        .unwrap()
        .tasks
        .iter()
        .position(|t| t.task == TaskKind::BarlowTwins)
        .unwrap_or(0);
    h.state_mut().tabs.tab = Tab::Math;
    h.state_mut().tabs.math.sel.task = barlow;
    h.state_mut().tabs.math.step = 2;
    h.run_steps(4);
    save(h, "math-cross-correlation.png");
    h.state_mut().send(pretext::train::Command::Stop);
    frames_until(h, "the two-view run's end", |a| {
        matches!(a.run.status, pretext::ui::RunStatus::Finished(_))
    });
    h.state_mut().reset();
    h.run_steps(4);
}
