//! `pretext compare` end to end on tiny generated data (the image budget, so time does not
//! matter): the folder's contents, exit codes and one-line errors, stop and resume through the
//! library, resume after the process was killed, and the label-free ranking of an unlabelled
//! folder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pretext::compare::{self, Budget, ContestEvent, ContestOutcome, ContestSpec, TaskState};
use pretext::config::{DataSource, TaskKind, TrainConfig};

fn pretext(args: &[&str]) -> Output {
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A two-task contest on 48 generated glyphs at 16 px: 2 epochs of 3 batches of 16.
fn small_contest(out: &Path, data: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "compare",
        "--data",
        data,
        "--size",
        "16",
        "--tasks",
        "rotation,contrastive",
        "--images",
        "96",
        "--batch",
        "16",
        "--seed",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    pretext(&args)
}

fn contest_dir(stdout: &str) -> PathBuf {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Contest folder: "))
        .unwrap_or_else(|| panic!("no contest folder in {stdout}"))
        .into()
}

fn run_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir.join(compare::RUNS_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn compare_ranks_two_tasks_and_writes_a_complete_folder() {
    let out = tempfile::tempdir().unwrap();
    let o = small_contest(out.path(), "glyphs:48", &[]);
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Budget: 96 images seen per task → 2 epochs"),
        "{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("rotation: 2 epochs, 6 steps")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("contrastive: 2 epochs, 6 steps")),
        "{stdout}"
    );
    assert!(
        stdout.contains("Ranked by kNN top-1 (best stage)"),
        "{stdout}"
    );
    let dir = contest_dir(&stdout);
    assert!(dir.starts_with(out.path()));
    assert!(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("compare-")
    );

    // contest.json: both tasks done, each with its result.
    let (spec, state) = compare::open(&dir).unwrap();
    assert_eq!(spec.tasks, [TaskKind::Rotation, TaskKind::Contrastive]);
    assert_eq!(spec.budget, Budget::Images(96));
    for e in &state.tasks {
        let TaskState::Done { result } = &e.state else {
            panic!("{:?} not done", e.task)
        };
        assert_eq!(result.steps, 6);
        assert_eq!(result.images_seen, 96);
        assert_eq!(result.knn.len(), 4);
        assert!(result.run_dir.starts_with(dir.join(compare::RUNS_DIR)));
    }

    // ranking.md: the criterion, both tasks, the reference rows, the data and the CPU.
    let md = std::fs::read_to_string(dir.join(compare::RANKING_FILE)).unwrap();
    for needle in [
        "kNN top-1 (best stage)",
        "| rotation |",
        "| contrastive |",
        "*random init*",
        "*raw pixels*",
        "glyphs:48",
        "- CPU: ",
        "- Started: ",
    ] {
        assert!(md.contains(needle), "{needle} missing from\n{md}");
    }
    assert!(!md.contains("label-free proxy"), "{md}");

    // results.csv: one row per task, then the references; accuracies in [0, 1].
    let mut reader = csv::Reader::from_path(dir.join(compare::RESULTS_CSV)).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let names: Vec<&str> = rows.iter().map(|r| &r[col("name")]).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names[..2].contains(&"rotation") && names[..2].contains(&"contrastive"));
    assert_eq!(&names[2..], ["random init", "raw pixels"]);
    assert_eq!(&rows[0][col("rank")], "1");
    assert_eq!(&rows[1][col("rank")], "2");
    let first: f64 = rows[0][col("knn_top1")].parse().unwrap();
    let second: f64 = rows[1][col("knn_top1")].parse().unwrap();
    assert!(first >= second, "ranked best first");
    for r in &rows {
        for c in ["knn_top1", "linear_probe"] {
            let v: f64 = r[col(c)].parse().unwrap();
            assert!((0.0..=1.0).contains(&v), "{c} = {v}");
        }
    }
    for r in &rows[..2] {
        assert_eq!(&r[col("kind")], "task");
        assert_eq!(&r[col("images_seen")], "96");
        assert!(r[col("rankme")].parse::<f64>().unwrap() >= 1.0);
        assert!(dir.join(&r[col("run_dir")]).join("metrics.csv").is_file());
    }

    // results.json holds the ranking; chart.png is a PNG of a sensible size.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(compare::RESULTS_JSON)).unwrap())
            .unwrap();
    assert_eq!(json["ranking"]["rows"].as_array().unwrap().len(), 2);
    assert_eq!(json["ranking"]["labelled"], true);
    let png = std::fs::read(dir.join(compare::CHART_FILE)).unwrap();
    let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
    assert!(
        img.width() >= 400 && img.height() >= 300,
        "{}×{}",
        img.width(),
        img.height()
    );
    let rgb = img.to_rgb8();
    let coloured = rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(coloured > 1000, "the chart has something drawn on it");
    // The legend is a strip under the chart (over the bars, at the top right, it hid the last
    // task's): the kNN bars' swatch is in the bottom rows.
    let h = rgb.height();
    let swatch_below = rgb
        .enumerate_pixels()
        .any(|(_, y, p)| y + 40 >= h && p.0 == [66, 118, 189]);
    assert!(swatch_below, "the legend's kNN swatch under the chart");

    // Each task's run directory, with its eval.json in the keys the runs view reads.
    let runs = run_dirs(&dir);
    assert_eq!(runs.len(), 2);
    for run in &runs {
        for f in ["metrics.csv", "config.json", "eval.json"] {
            assert!(run.join(f).is_file(), "{} has no {f}", run.display());
        }
        let eval: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
        assert_eq!(eval["data"], "glyphs:48");
        assert_eq!(eval["labelled"], true);
        assert_eq!(eval["report"]["knn"].as_array().unwrap().len(), 4);
        assert!(eval["gauges"]["rankme"].as_f64().unwrap() >= 1.0);
        assert!(eval["seconds"].as_f64().unwrap() >= 0.0);
        assert!(eval.get("not_measured").is_none());
    }
}

fn assert_one_line_error(o: &Output, needle: &str) {
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(needle), "{needle} not in {stderr}");
}

#[test]
fn unusable_input_is_a_one_line_error_with_exit_code_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = pretext(&[
        "compare",
        "--data",
        "glyphs:48",
        "--tasks",
        "rotation,telepathy",
        "--images",
        "96",
    ]);
    assert_one_line_error(&o, "telepathy");
    let missing = tmp.path().join("no-such-folder");
    let o = small_contest(&out, missing.to_str().unwrap(), &[]);
    assert_one_line_error(&o, "does not exist");
    let base = [
        "compare",
        "--data",
        "glyphs:48",
        "--tasks",
        "rotation",
        "--out",
        out.to_str().unwrap(),
    ];
    for (extra, needle) in [
        (&["--minutes", "0"][..], "--minutes"),
        (&["--images", "0"][..], "--images"),
        (&["--minutes", "1", "--images", "9"][..], "not both"),
        (&[][..], "give a budget"),
        (&["--images", "96", "--size", "30"][..], "--size"),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        assert_one_line_error(&pretext(&args), needle);
    }
    let o = pretext(&["compare", "--resume", tmp.path().to_str().unwrap()]);
    assert_one_line_error(&o, "not a contest folder");
    assert!(!out.exists(), "nothing is written for unusable input");
}

fn spec(data: DataSource) -> ContestSpec {
    ContestSpec {
        base: TrainConfig {
            data,
            size: 16,
            batch: 16,
            seed: 2,
            ..TrainConfig::default()
        },
        tasks: vec![TaskKind::Rotation, TaskKind::Contrastive],
        budget: Budget::Images(96),
    }
}

#[test]
fn a_stopped_contest_resumes_without_training_done_tasks_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = compare::create(tmp.path(), &spec(DataSource::Glyphs { count: 48 })).unwrap();
    let stop = AtomicBool::new(false);
    let mut started = Vec::new();
    let outcome = compare::run(&dir, None, &stop, &mut |e| {
        if let ContestEvent::TaskStarted { index, .. } = e {
            started.push(index);
            if index == 1 {
                stop.store(true, Ordering::Relaxed);
            }
        }
    })
    .unwrap();
    assert_eq!(outcome, ContestOutcome::Stopped);
    assert_eq!(started, [0, 1]);
    let (_, state) = compare::open(&dir).unwrap();
    let TaskState::Done { result: first } = &state.tasks[0].state else {
        panic!("{:?}", state.tasks[0].state)
    };
    assert!(
        matches!(
            state.tasks[1].state,
            TaskState::Running { .. } | TaskState::Pending
        ),
        "{:?}",
        state.tasks[1].state
    );
    // The partial ranking is there already, with the task still to come said.
    let md = std::fs::read_to_string(dir.join(compare::RANKING_FILE)).unwrap();
    assert!(
        md.contains("| rotation |") && md.contains("Not judged yet"),
        "{md}"
    );
    let metrics = first.run_dir.join("metrics.csv");
    let before = std::fs::read(&metrics).unwrap();
    let eval_before = std::fs::read(first.run_dir.join("eval.json")).unwrap();

    let stop = AtomicBool::new(false);
    let mut started = Vec::new();
    let mut done = Vec::new();
    let mut last_ranking = None;
    let outcome = compare::run(&dir, None, &stop, &mut |e| match e {
        ContestEvent::TaskStarted { index, .. } => started.push(index),
        ContestEvent::TaskDone(r) => done.push(r.task),
        ContestEvent::Ranking(r) => last_ranking = Some(r),
        _ => {}
    })
    .unwrap();
    assert_eq!(outcome, ContestOutcome::Completed);
    assert_eq!(started, [1], "only the interrupted task trains");
    assert_eq!(done, [TaskKind::Contrastive]);
    assert_eq!(
        std::fs::read(&metrics).unwrap(),
        before,
        "done task untouched"
    );
    assert_eq!(
        std::fs::read(first.run_dir.join("eval.json")).unwrap(),
        eval_before
    );
    let ranking = last_ranking.unwrap();
    assert_eq!(ranking.rows.len(), 2);
    assert!(ranking.pending.is_empty());
    let (_, state) = compare::open(&dir).unwrap();
    let TaskState::Done { result: second } = &state.tasks[1].state else {
        panic!("{:?}", state.tasks[1].state)
    };
    assert_eq!(second.steps, 6, "the continued task trains to its budget");
    assert_eq!(run_dirs(&dir).len(), 2);
}

#[test]
fn a_killed_contest_is_resumed_from_the_command_line() {
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pretext"))
        // Never the home folder's image cache: a scratch one.
        .env(
            "PRETEXT_CACHE_DIR",
            std::env::temp_dir().join("pretext-test-cache"),
        )
        .args([
            "compare",
            "--data",
            "glyphs:48",
            "--size",
            "16",
            "--tasks",
            "rotation,contrastive",
            "--images",
            "960",
            "--batch",
            "16",
            "--out",
        ])
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the first task is training.
    let deadline = Instant::now() + Duration::from_secs(300);
    let dir = loop {
        assert!(
            Instant::now() < deadline,
            "the contest never started training"
        );
        let found = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.join(compare::CONTEST_FILE).is_file());
        if let Some(dir) = found
            && let Ok((_, state)) = compare::open(&dir)
            && matches!(state.tasks[0].state, TaskState::Running { .. })
        {
            break dir;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // While it runs, a second process cannot take the folder over.
    let o = pretext(&["compare", "--resume", dir.to_str().unwrap()]);
    assert_one_line_error(&o, "is being written by another pretext process");
    // Killed, it leaves no lock behind.
    child.kill().unwrap();
    child.wait().unwrap();
    let o = pretext(&["compare", "--resume", dir.to_str().unwrap()]);
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{}", text(&o.stderr));
    assert_eq!(contest_dir(&stdout), dir);
    let (_, state) = compare::open(&dir).unwrap();
    for e in &state.tasks {
        let TaskState::Done { result } = &e.state else {
            panic!("{:?}", e.state)
        };
        assert_eq!(result.steps, 60, "{:?} trained to its budget", e.task);
    }
    assert_eq!(run_dirs(&dir).len(), 2, "one run directory per task");
}

#[test]
fn an_unlabelled_folder_is_ranked_by_rankme_and_says_it_is_a_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    let glyphs = pretext::data::builtin::generate_glyphs(40, 16);
    for i in 0..glyphs.len() {
        let img = image::RgbImage::from_raw(16, 16, glyphs.image(i).to_vec()).unwrap();
        img.save(folder.join(format!("{i:03}.png"))).unwrap();
    }
    let out = tmp.path().join("out");
    let o = small_contest(&out, folder.to_str().unwrap(), &["--json"]);
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{}", text(&o.stderr));
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "task_started",
            "task_done",
            "ranking",
            "task_started",
            "task_done",
            "ranking",
            "ranking",
            "finished"
        ]
    );
    let ranking = &events[6]["ranking"];
    assert_eq!(ranking["labelled"], false);
    assert_eq!(ranking["criterion"], "RankMe (label-free proxy)");
    let rows = ranking["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let rankme = |r: &serde_json::Value| r["gauges"]["rankme"].as_f64().unwrap();
    assert!(rankme(&rows[0]) >= rankme(&rows[1]));
    assert!(rows[0]["best_knn"].is_null() && rows[0]["probe"].is_null());
    let dir = PathBuf::from(events[7]["dir"].as_str().unwrap());
    let md = std::fs::read_to_string(dir.join(compare::RANKING_FILE)).unwrap();
    assert!(md.contains("Ranked by RankMe (label-free proxy)"), "{md}");
    assert!(
        md.contains("a label-free proxy") && md.contains("not an accuracy"),
        "{md}"
    );
    assert!(md.contains("*random init*"), "{md}");
    for run in run_dirs(&dir) {
        let eval: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
        assert_eq!(eval["labelled"], false);
        assert!(eval.get("report").is_none());
        assert!(eval["not_measured"].as_str().unwrap().contains("label"));
        assert!(eval["gauges"]["alignment"].as_f64().is_some());
    }
    let png = std::fs::read(dir.join(compare::CHART_FILE)).unwrap();
    assert!(image::load_from_memory(&png).is_ok());
}
