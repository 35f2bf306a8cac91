//! The runs view's library: finding run directories, reading metrics.csv as another process
//! writes it, the summaries of the table, the curves against epoch and wall-clock time, and the
//! thread that follows a run live.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pretext::runs::watch::{WatchCommand, WatchUpdate, Watcher, no_notify};
use pretext::runs::{Judged, MetricsTail, RunSummary, SummaryFold, find_runs};
use pretext::train::run_dir::{self, METRICS_HEADER, RowEvents};
use pretext::view::overlay::{Quantity, overlay};
use pretext::view::{RunView, WALL_SERIES, XAxis};

fn pretext(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pretext"))
        // Never the home folder's image cache: a scratch one.
        .env(
            "PRETEXT_CACHE_DIR",
            std::env::temp_dir().join("pretext-test-cache"),
        )
        .args(args)
        .output()
        .expect("run pretext")
}

/// A finished two-epoch rotation run on 48 built-in scenes at 16 px, under `out`.
fn tiny_run(out: &Path, task: &str) -> PathBuf {
    let o = pretext(&[
        "train",
        "--data",
        "builtin:48",
        "--size",
        "16",
        "--task",
        task,
        "--epochs",
        "3",
        "--batch",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Run directory: "))
        .unwrap_or_else(|| panic!("no run directory in {stdout}"))
        .into()
}

/// A long run writing into `out`, killed when the guard drops.
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn long_run(out: &Path) -> Writer {
    Writer(
        Command::new(env!("CARGO_BIN_EXE_pretext"))
            // Never the home folder's image cache: a scratch one.
            .env(
                "PRETEXT_CACHE_DIR",
                std::env::temp_dir().join("pretext-test-cache"),
            )
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
                out.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The run directory a process has created under `out` (waits for its first rows).
fn wait_for_run(out: &Path) -> PathBuf {
    let start = Instant::now();
    loop {
        if let Some(d) = find_runs(out).into_iter().next()
            && run_dir::read_metrics(&d).is_ok_and(|r| r.len() > 2)
        {
            return d;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no run appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn row_line(step: u64, epoch: usize, loss: f64, wall: f64) -> String {
    format!("{step},{epoch},rotation,{loss},rotation_accuracy,0.5,0.001,100,{wall},0.25,{loss}\n")
}

#[test]
fn runs_are_found_under_the_folder_and_inside_contests_only() {
    let root = tempfile::tempdir().unwrap();
    let make = |p: &Path| {
        std::fs::create_dir_all(p).unwrap();
        std::fs::write(p.join("config.json"), "{}").unwrap();
        std::fs::write(p.join("metrics.csv"), format!("{METRICS_HEADER}\n")).unwrap();
    };
    make(&root.path().join("20261130-120000-rotation"));
    make(
        &root
            .path()
            .join("compare-20261130-rotation+contrastive/runs/a"),
    );
    // A folder that is not a contest is not searched below its first level.
    make(&root.path().join("elsewhere/deeper/run"));
    std::fs::write(
        root.path()
            .join("compare-20261130-rotation+contrastive/contest.json"),
        "{}",
    )
    .unwrap();
    std::fs::create_dir_all(root.path().join("empty")).unwrap();
    let found: Vec<String> = find_runs(root.path())
        .iter()
        .map(|p| {
            p.strip_prefix(root.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        found,
        [
            "20261130-120000-rotation",
            "compare-20261130-rotation+contrastive/runs/a"
        ]
    );
    assert!(find_runs(&root.path().join("missing")).is_empty());
}

#[test]
fn the_tail_reads_complete_lines_as_they_are_written_and_starts_over_on_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.csv");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut tail = MetricsTail::new(dir.path());
    assert!(tail.poll().unwrap().rows.is_empty());
    // The header and a row and a half.
    let second = row_line(2, 1, 1.2, 0.2);
    write!(
        f,
        "{METRICS_HEADER}\n{}{}",
        row_line(1, 1, 1.3, 0.1),
        &second[..9]
    )
    .unwrap();
    f.flush().unwrap();
    let t = tail.poll().unwrap();
    assert!(!t.reset);
    assert_eq!(t.rows.iter().map(|r| r.step).collect::<Vec<_>>(), [1]);
    assert!(tail.poll().unwrap().rows.is_empty(), "the half line waits");
    write!(f, "{}{}", &second[9..], row_line(3, 1, 1.1, 0.3)).unwrap();
    f.flush().unwrap();
    let t = tail.poll().unwrap();
    assert_eq!(t.rows.iter().map(|r| r.step).collect::<Vec<_>>(), [2, 3]);
    assert!((t.rows[0].loss.unwrap() - 1.2).abs() < 1e-12);
    // A continued run trims its rows: the file is written anew, shorter.
    drop(f);
    std::fs::write(
        &path,
        format!("{METRICS_HEADER}\n{}", row_line(1, 1, 1.3, 0.1)),
    )
    .unwrap();
    let t = tail.poll().unwrap();
    assert!(t.reset);
    assert_eq!(t.rows.len(), 1);
    assert!(
        MetricsTail::new(&dir.path().join("missing"))
            .poll()
            .is_err()
    );
}

#[test]
fn rows_in_pieces_give_the_events_of_a_replay() {
    let out = tempfile::tempdir().unwrap();
    let dir = tiny_run(out.path(), "rotation");
    let replayed = run_dir::replay(&dir).unwrap();
    let rows = run_dir::read_metrics(&dir).unwrap();
    let config = run_dir::read_config(&dir).unwrap();
    let mut grouper = RowEvents::new(config.epochs, run_dir::batches_per_epoch(&rows));
    let mut events = vec![run_dir::started_event(
        &dir,
        &config,
        grouper.batches_per_epoch,
    )];
    for chunk in rows.chunks(5) {
        events.extend(grouper.push(chunk.to_vec()));
    }
    events.extend(grouper.finish());
    let (mut a, mut b) = (RunView::default(), RunView::default());
    for e in &replayed {
        a.apply(e);
    }
    for e in &events {
        b.apply(e);
    }
    assert_eq!(a.curves, b.curves);
    assert!(a.curves.steps_seen >= 9, "3 epochs of 3 steps");
    assert!(
        a.curves.series.keys().any(|k| k.starts_with("knn/")),
        "the monitor's rows became kNN curves"
    );
}

#[test]
fn a_summary_has_the_runs_numbers_and_takes_an_evaluation() {
    let out = tempfile::tempdir().unwrap();
    let dir = tiny_run(out.path(), "rotation");
    let config = run_dir::read_config(&dir).unwrap();
    let rows = run_dir::read_metrics(&dir).unwrap();
    let mut fold = SummaryFold::new(&dir, &config);
    fold.push(&rows);
    let s = fold.summary().clone();
    assert_eq!(s.tasks, "rotation");
    assert_eq!(s.size, 16);
    let last = rows.iter().rfind(|r| r.loss.is_some()).unwrap();
    assert_eq!(s.steps, last.step);
    assert_eq!(s.epoch, 3);
    // The run's time includes its last measurement, after the last step.
    let wall = rows.iter().fold(0.0f64, |m, r| m.max(r.wall_s));
    assert!(wall >= last.wall_s);
    assert!((s.wall_s - wall).abs() < 1e-9, "{} vs {wall}", s.wall_s);
    assert_eq!(s.final_loss, last.step_loss);
    let (name, value, percent) = s.proxy.clone().unwrap();
    assert_eq!(name, "rotation accuracy");
    assert!(percent && (value - last.proxy_value).abs() < 1e-12);
    let (stage, knn) = s.best_knn.clone().unwrap();
    let knn_rows: Vec<_> = rows
        .iter()
        .filter(|r| r.task == "knn" && r.proxy_metric != "knn_accuracy_raw_pixels")
        .collect();
    let last_step = knn_rows.last().unwrap().step;
    let last_knn = knn_rows
        .iter()
        .filter(|r| r.step == last_step)
        .fold(0.0f64, |m, r| m.max(r.proxy_value));
    assert!(
        (knn - last_knn).abs() < 1e-12,
        "best stage {stage} {knn} vs {last_knn}"
    );
    assert!(s.probe.is_none());
    // An evaluation (pretext eval, pretext compare) wins over the monitor.
    let eval = serde_json::json!({
        "report": {
            "knn": [
                {"stage": "stem", "trained": 0.4, "random": 0.3},
                {"stage": "l3 (z)", "trained": 0.9, "random": 0.3},
            ],
            "probe_trained": 0.8,
        }
    });
    assert_eq!(s.knn_from, Some(Judged::Monitor(last_step)));
    assert!(fold.set_eval(&eval));
    assert_eq!(fold.summary().best_knn, Some(("l3".into(), 0.9)));
    assert_eq!(fold.summary().knn_from, Some(Judged::Eval(None)));
    assert_eq!(fold.summary().probe, Some(0.8));
    assert!(!fold.set_eval(&eval), "nothing changed");
    assert!(!fold.set_eval(&serde_json::json!({"not_measured": "no labels"})));

    // An evaluation of the latest weights (eval.json records their step) wins too…
    let mut judged = eval.clone();
    judged["step"] = serde_json::json!(s.steps);
    assert!(fold.set_eval(&judged));
    assert_eq!(fold.summary().knn_from, Some(Judged::Eval(Some(s.steps))));
    assert_eq!(fold.summary().best_knn, Some(("l3".into(), 0.9)));
    assert!(!fold.summary().eval_outgrown());
    // …but once the run has trained past the step it judged (continued), the table shows the
    // monitor's newer figure, and the probe is marked as the older weights'.
    judged["step"] = serde_json::json!(s.steps - 1);
    assert!(fold.set_eval(&judged));
    let outgrown = fold.summary();
    assert!(outgrown.eval_outgrown());
    assert_eq!(outgrown.knn_from, Some(Judged::Monitor(last_step)));
    assert_eq!(outgrown.best_knn, Some((stage.clone(), knn)));
    assert_eq!(outgrown.probe, Some(0.8));
    assert_eq!(outgrown.eval_step, Some(s.steps - 1));
}

#[test]
fn curves_go_against_epochs_and_wall_clock_time_across_a_continuation() {
    let mut v = RunView::default();
    let dir = PathBuf::from("runs/x");
    let config = pretext::config::TrainConfig {
        tasks: vec![pretext::config::TaskKind::Rotation],
        ..Default::default()
    };
    v.apply(&run_dir::started_event(&dir, &config, 4));
    let mut grouper = RowEvents::new(10, 4);
    let header = csv::StringRecord::from(METRICS_HEADER.split(',').collect::<Vec<_>>());
    let rows: Vec<run_dir::MetricsRow> = (1..=8u64)
        .map(|step| {
            // Steps 1–4 in the first session (30 s each); 5–8 continued, time from 0 again.
            let wall = if step <= 4 {
                30.0 * step as f64
            } else {
                30.0 * (step - 4) as f64
            };
            let line = row_line(step, (step as usize - 1) / 4 + 1, 1.0 / step as f64, wall);
            csv::StringRecord::from(line.trim_end().split(',').collect::<Vec<_>>())
                .deserialize(Some(&header))
                .unwrap()
        })
        .collect();
    for e in grouper.push(rows).into_iter().chain(grouper.finish()) {
        v.apply(&e);
    }
    let wall = v.curves.series[WALL_SERIES].points();
    assert_eq!(wall.last().unwrap(), &[8.0, 240.0], "continuations add up");
    let by_epoch = v.curves.points_against("loss/rotation", XAxis::Epoch);
    assert_eq!(by_epoch[3][0], 1.0);
    assert_eq!(by_epoch[7][0], 2.0);
    let by_time = v.curves.points_against("loss/rotation", XAxis::WallClock);
    assert!(
        (by_time[7][0] - 4.0).abs() < 1e-12,
        "8 steps of 30 s = 4 min"
    );
    assert!((by_time[0][0] - 0.5).abs() < 1e-12);
    let lines = overlay(
        [("x", &v), ("empty", &RunView::default())],
        Quantity::Loss,
        XAxis::Step,
        0.0,
    );
    assert_eq!(lines.len(), 1, "a run without the series has no line");
    assert_eq!(lines[0].name, "x");
    assert_eq!(lines[0].points.len(), 8);
}

/// Updates until `cond` holds on the steps seen so far.
fn follow_until(w: &Watcher, view: &mut RunView, dir: &Path, cond: impl Fn(&RunView) -> bool) {
    let start = Instant::now();
    while !cond(view) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out: {} steps",
            view.curves.steps_seen
        );
        if let Ok(u) = w.updates().recv_timeout(Duration::from_millis(200))
            && let WatchUpdate::Events {
                dir: d,
                reset,
                events,
                ..
            } = u
            && d == dir
        {
            if reset {
                *view = RunView::default();
            }
            for e in &events {
                view.apply(e);
            }
        }
    }
}

/// The next listing the watcher sends, within 20 s.
fn next_listing(w: &Watcher) -> Option<Vec<RunSummary>> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(WatchUpdate::Listed(list)) = w.updates().recv_timeout(Duration::from_millis(200))
        {
            return Some(list);
        }
    }
    None
}

#[test]
fn listing_the_same_folder_again_sends_its_runs_again() {
    // The app empties its table when List is pressed; an unchanged folder must fill it again.
    let out = tempfile::tempdir().unwrap();
    let run = tiny_run(out.path(), "rotation");
    let w = Watcher::spawn(no_notify()).unwrap();
    for time in ["first", "second"] {
        assert!(w.send(WatchCommand::Root(out.path().to_path_buf())));
        let list = next_listing(&w).unwrap_or_else(|| panic!("no listing the {time} time"));
        assert!(list.iter().any(|s| s.dir == run), "{time}: {list:?}");
    }
}

#[test]
fn a_run_another_process_writes_is_followed_live_and_listed() {
    let out = tempfile::tempdir().unwrap();
    let writer = long_run(out.path());
    let dir = wait_for_run(out.path());
    let w = Watcher::spawn(no_notify()).unwrap();
    assert!(w.send(WatchCommand::Root(out.path().to_path_buf())));
    assert!(w.send(WatchCommand::Follow(dir.clone())));
    let mut view = RunView::default();
    follow_until(&w, &mut view, &dir, |v| v.curves.steps_seen > 0);
    let first = view.curves.steps_seen;
    assert!(view.config.is_some(), "the follow starts with RunStarted");
    follow_until(&w, &mut view, &dir, |v| v.curves.steps_seen >= first + 10);
    let steps: Vec<f64> = view.curves.series["loss/rotation"]
        .points()
        .iter()
        .map(|p| p[0])
        .collect();
    assert!(
        steps.windows(2).all(|w| w[1] > w[0]),
        "no step twice: {steps:?}"
    );
    // The listing has it too, with its steps, as being written while its writer holds the
    // lock, and as not once the writer has gone.
    let listed_until = |cond: &dyn Fn(&RunSummary) -> bool, what: &str| {
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "never listed {what}"
            );
            if let Ok(WatchUpdate::Listed(list)) =
                w.updates().recv_timeout(Duration::from_millis(200))
                && let Some(s) = list.iter().find(|s| s.dir == dir)
                && cond(s)
            {
                assert_eq!(s.tasks, "rotation");
                break;
            }
        }
    };
    listed_until(&|s| s.steps > 0 && s.writing == Some(true), "as written");
    drop(writer);
    listed_until(
        &|s| s.steps > 0 && s.writing == Some(false),
        "as no longer written",
    );
    // A folder that is not a run is a problem, said once, not a panic.
    assert!(w.send(WatchCommand::Follow(out.path().join("nothing"))));
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no problem reported"
        );
        if let Ok(WatchUpdate::Problem { dir, message }) =
            w.updates().recv_timeout(Duration::from_millis(200))
        {
            assert!(dir.ends_with("nothing"));
            assert!(message.contains("config.json"), "{message}");
            break;
        }
    }
}

#[test]
fn a_run_directory_a_pytorch_script_writes_is_listed_and_followed() {
    // What the README's PyTorch snippet leaves: config.json copied from a pretext run, nine
    // columns written by Python's csv module, a checkpoint saved by safetensors.torch with its
    // step in the metadata.
    let out = tempfile::tempdir().unwrap();
    let source = tiny_run(out.path(), "contrastive");
    let run = out.path().join("20261130-ddp-contrastive");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    std::fs::copy(source.join("config.json"), run.join("config.json")).unwrap();
    let mut csv =
        String::from("step,epoch,task,loss,proxy_metric,proxy_value,lr,images_per_s,wall_s\r\n");
    for step in 1..=30u64 {
        csv.push_str(&format!(
            "{step},{},contrastive,{},positive_top-1,{},0.001,{},{}\r\n",
            (step - 1) / 10 + 1,
            5.0 / step as f64,
            step as f64 / 40.0,
            1234.5,
            0.5 * step as f64
        ));
    }
    std::fs::write(run.join("metrics.csv"), csv).unwrap();
    let data = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    let metadata = Some(std::collections::HashMap::from([(
        "step".to_string(),
        "30".to_string(),
    )]));
    safetensors::serialize_to_file(
        [("stem.0.weight", view)],
        metadata,
        &run.join("checkpoints/epoch-0003.safetensors"),
    )
    .unwrap();

    let w = Watcher::spawn(no_notify()).unwrap();
    assert!(w.send(WatchCommand::Root(out.path().to_path_buf())));
    assert!(w.send(WatchCommand::Follow(run.clone())));
    let mut view = RunView::default();
    let start = Instant::now();
    let (mut listed, mut checkpoints) = (false, false);
    while !(listed && checkpoints && view.curves.steps_seen == 30) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "listed {listed}, checkpoints {checkpoints}, {} steps",
            view.curves.steps_seen
        );
        match w.updates().recv_timeout(Duration::from_millis(200)) {
            Ok(WatchUpdate::Listed(list)) => {
                if let Some(s) = list.iter().find(|s| s.dir == run) {
                    assert_eq!(s.steps, 30);
                    assert_eq!(s.epoch, 3);
                    assert!((s.wall_s - 15.0).abs() < 1e-9);
                    listed = true;
                }
            }
            Ok(WatchUpdate::Checkpoints {
                dir,
                checkpoints: c,
            }) if dir == run => {
                assert_eq!(c.kept, ["epoch-0003.safetensors"]);
                checkpoints = true;
            }
            Ok(WatchUpdate::Events {
                dir, reset, events, ..
            }) if dir == run => {
                if reset {
                    view = RunView::default();
                }
                for e in &events {
                    view.apply(e);
                }
            }
            _ => {}
        }
    }
    assert_eq!(view.curves.batches_per_epoch, 10);
    let top1 = view.curves.series["metric/contrastive"].points();
    assert!((top1[29][1] - 75.0).abs() < 1e-9, "percent: {:?}", top1[29]);
}
