//! `pretext train` end to end as a user runs it: exit codes, epoch lines, JSON lines, the run
//! directory, continuing a run, and one-line errors for unusable input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use pretext::config::DeviceKind;

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

fn small_run(out: &Path, extra: &[&str]) -> Output {
    let out = out.to_str().unwrap();
    let mut args = vec![
        "train",
        "--data",
        "builtin:64",
        "--task",
        "rotation",
        "--epochs",
        "2",
        "--batch",
        "16",
        "--seed",
        "3",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    pretext(&args)
}

fn run_dir_from(stdout: &str) -> std::path::PathBuf {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Run directory: "))
        .unwrap_or_else(|| panic!("no run directory in {stdout}"));
    line.into()
}

#[test]
fn train_prints_epoch_lines_and_writes_a_complete_run_directory() {
    let out = tempfile::tempdir().unwrap();
    // A denser schedule than the default budget allows: every epoch measured and saved.
    let o = small_run(out.path(), &["--monitor-budget", "100"]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", text(&o.stderr));
    let epochs: Vec<&str> = stdout.lines().filter(|l| l.starts_with("Epoch ")).collect();
    assert_eq!(epochs.len(), 2, "{stdout}");
    for (i, line) in epochs.iter().enumerate() {
        // Epoch 1/2 Loss: 1.234 Proxy accuracy: 56%
        let rest = line
            .strip_prefix(&format!("Epoch {}/2 Loss: ", i + 1))
            .unwrap();
        let (loss, acc) = rest.split_once(" Proxy accuracy: ").unwrap();
        assert!(loss.parse::<f64>().unwrap() > 0.0);
        let pct: f64 = acc.strip_suffix('%').unwrap().parse().unwrap();
        assert!((0.0..=100.0).contains(&pct));
    }
    let dir = run_dir_from(&stdout);
    assert!(dir.starts_with(out.path()));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["seed"], 3);
    assert_eq!(config["data"], "builtin:64");
    assert_eq!(config["tasks"][0], "rotation");
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let count = |csv: &str, task: &str| {
        csv.lines()
            .filter(|l| l.split(',').nth(2) == Some(task))
            .count()
    };
    assert_eq!(count(&csv, "rotation"), 8, "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("1,1,rotation,")));
    // The kNN monitor: before training and after each epoch, four stages each (labelled data),
    // plus raw pixels before training.
    assert_eq!(count(&csv, "knn"), 13, "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.starts_with("0,0,knn,,knn_accuracy_raw_pixels,")),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("0,0,knn,,knn_accuracy_l3,")),
        "{csv}"
    );
    assert_eq!(
        count(&csv, "gauges"),
        12,
        "std, RankMe, uniformity and alignment, three times: {csv}"
    );
    assert!(
        csv.lines().any(|l| l.contains(",gauges,,alignment,")),
        "{csv}"
    );
    for f in [
        "checkpoints/epoch-0001.safetensors",
        "checkpoints/epoch-0002.safetensors",
        "checkpoints/resume.safetensors",
        "previews/epoch-0001-rotation.png",
        "previews/epoch-0002-rotation.png",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let png = image::open(dir.join("previews/epoch-0002-rotation.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);

    // Continued as it was, a finished run has nothing left to train, and says so.
    let o = pretext(&["train", "--resume", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("nothing left to train"),
        "{}",
        text(&o.stderr)
    );

    // Not while another process writes it (this one holds its lock, as a training process
    // does): one line, exit code 2, and the run untouched.
    let before = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let lock = pretext::train::run_dir::WriterLock::take(&dir).unwrap();
    let o = pretext(&["train", "--resume", dir.to_str().unwrap(), "--epochs", "3"]);
    assert_one_line_error(&o, "is being written by another pretext process");
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.csv")).unwrap(),
        before
    );
    drop(lock);

    // Continue the same run to 3 epochs.
    let o = pretext(&["train", "--resume", dir.to_str().unwrap(), "--epochs", "3"]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", text(&o.stderr));
    assert!(
        stdout.lines().any(|l| l.starts_with("Epoch 3/3 Loss: ")),
        "{stdout}"
    );
    assert!(!stdout.contains("Epoch 1/3"), "{stdout}");
    assert!(
        text(&o.stderr).contains("from step 8"),
        "{}",
        text(&o.stderr)
    );
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(count(&csv, "rotation"), 12);
    assert_eq!(count(&csv, "knn"), 17, "{csv}");
}

/// Previews are a timeline of the run in a bounded number of files: the first epoch's, the
/// newest, and others spread between, however many epochs the run has.
#[test]
fn previews_stay_a_bounded_timeline_of_the_run() {
    let out = tempfile::tempdir().unwrap();
    let o = pretext(&[
        "train",
        "--data",
        "builtin:32",
        "--task",
        "rotation",
        "--epochs",
        "40",
        "--batch",
        "16",
        "--monitor-budget",
        "100",
        "--knn-every",
        "0",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let dir = run_dir_from(&text(&o.stdout));
    let mut epochs: Vec<usize> = std::fs::read_dir(dir.join("previews"))
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("epoch-").unwrap();
            assert!(rest.ends_with("-rotation.png"), "{name}");
            rest[..4].parse().unwrap()
        })
        .collect();
    epochs.sort_unstable();
    assert!(epochs.len() <= 17 && epochs.len() >= 9, "{epochs:?}");
    assert_eq!(epochs.first(), Some(&1), "{epochs:?}");
    assert_eq!(epochs.last(), Some(&40), "{epochs:?}");
    // Spread over the run, not bunched at its end.
    assert!(
        epochs.iter().filter(|&&e| e <= 20).count() >= 4,
        "{epochs:?}"
    );
}

#[test]
fn json_mode_prints_one_object_per_line() {
    let out = tempfile::tempdir().unwrap();
    let o = small_run(out.path(), &["--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let lines: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    // The kNN monitor's measurements (builtin is labelled) come as objects under `knn`, between
    // the epochs' lines; at least one before training and one after the last epoch.
    let (knn, lines): (Vec<_>, Vec<_>) = lines.into_iter().partition(|l| l.get("knn").is_some());
    assert!(knn.len() >= 2, "{knn:?}");
    assert_eq!(knn[0]["knn"]["step"], 0);
    for k in &knn {
        let k = &k["knn"];
        for stage in ["stem", "l1", "l2", "l3"] {
            let acc = k["top1"][stage]
                .as_f64()
                .unwrap_or_else(|| panic!("{stage}: {k}"));
            assert!((0.0..=1.0).contains(&acc), "{k}");
        }
        let rankme = k["gauges"]["rankme"].as_f64().unwrap();
        assert!(
            rankme >= 1.0 && rankme <= k["gauges"]["dimensions"].as_f64().unwrap(),
            "{k}"
        );
    }
    assert!(
        knn[0]["knn"]["raw_pixels"].as_f64().is_some(),
        "{:?}",
        knn[0]
    );
    assert_eq!(lines.len(), 3);
    for (i, e) in lines[..2].iter().enumerate() {
        assert_eq!(e["epoch"], i + 1);
        assert_eq!(e["epochs"], 2);
        assert_eq!(e["task"], "rotation");
        assert_eq!(e["proxy_metric"], "rotation accuracy");
        assert!(e["loss"].as_f64().unwrap() > 0.0);
        assert!((0.0..=1.0).contains(&e["proxy_value"].as_f64().unwrap()));
        assert!(e["images_per_s"].as_f64().unwrap() > 0.0);
    }
    let dir = lines[2]["run_dir"].as_str().unwrap();
    assert!(Path::new(dir).join("config.json").is_file());
    let spent = &lines[2]["not_training"];
    assert!(spent["monitor"]["count"].as_u64().unwrap() >= 2, "{spent}");
    assert!(spent["wall_s"].as_f64().unwrap() > 0.0, "{spent}");
}

/// By default, what is up to the budget — the kNN monitor, previews and checkpoints between the
/// first and last measurements — takes at most 5% of the run's time, and the run says how much
/// each took. On 64 images an epoch is a fraction of a second, so most epochs are neither
/// measured nor saved; the last one always is.
#[test]
fn watching_a_run_costs_at_most_its_budget_and_the_run_says_what_it_cost() {
    let out = tempfile::tempdir().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            "builtin:64",
            "--task",
            "rotation",
            "--epochs",
            "12",
            "--batch",
            "16",
            "--seed",
            "4",
            "--out",
            out.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        pretext(&args)
    };
    let o = train(&[]);
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("Not training: "))
        .unwrap_or_else(|| panic!("no overhead line in {stderr}"));
    for part in ["kNN monitor", "previews", "checkpoints", "%)"] {
        assert!(line.contains(part), "{line}");
    }
    let dir = run_dir_from(&stdout);
    let epochs = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("epoch-")
        })
        .count();
    assert!(dir.join("checkpoints/epoch-0012.safetensors").is_file());
    assert!(epochs < 12, "{epochs} epoch checkpoints: none was skipped");

    // The same run in JSON: the budgeted part within 5% of the wall-clock time.
    let o = train(&["--json"]);
    let last = text(&o.stdout).lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    let spent = &v["not_training"];
    let total: f64 = ["monitor", "previews", "checkpoints"]
        .iter()
        .map(|k| spent[k]["secs"].as_f64().unwrap())
        .sum();
    let budgeted = total - spent["forced_s"].as_f64().unwrap();
    let wall = spent["wall_s"].as_f64().unwrap();
    assert!(
        budgeted <= 0.05 * wall + 1e-6,
        "{budgeted} s of {wall} s: {spent}"
    );
}

fn assert_one_line_error(o: &Output, needle: &str) {
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(needle), "{stderr}");
}

#[test]
fn unusable_input_is_a_one_line_error_with_exit_code_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    let out = out.to_str().unwrap();
    let missing = tmp.path().join("no-such-folder");
    let o = pretext(&["train", "--data", missing.to_str().unwrap(), "--out", out]);
    assert_one_line_error(&o, "does not exist");

    let file = tmp.path().join("a.txt");
    std::fs::write(&file, "x").unwrap();
    let o = pretext(&["train", "--data", file.to_str().unwrap(), "--out", out]);
    assert_one_line_error(&o, "not a folder");

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("broken.png"), "not a png").unwrap();
    let o = pretext(&["train", "--data", empty.to_str().unwrap(), "--out", out]);
    assert_one_line_error(&o, "no readable image");

    let o = pretext(&[
        "train",
        "--data",
        "builtin:64",
        "--size",
        "30",
        "--out",
        out,
    ]);
    assert_one_line_error(&o, "--size");

    // CUDA where this build or machine cannot give it (always in CI): why, in one line.
    if let Some(reason) = pretext::model::device::unavailable(DeviceKind::Cuda) {
        let o = pretext(&[
            "train",
            "--data",
            "builtin:64",
            "--device",
            "cuda",
            "--out",
            out,
        ]);
        assert_one_line_error(&o, &format!("cannot use cuda: {reason}"));
        if cfg!(not(feature = "cuda")) {
            assert_one_line_error(&o, "--features cuda");
        }
    }

    let o = pretext(&["train", "--resume", tmp.path().to_str().unwrap()]);
    assert_one_line_error(&o, "not a run directory");

    let o = pretext(&["train", "--task", "telepathy"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!Path::new(out).exists(), "nothing is written for bad input");
}

#[test]
fn help_explains_every_option() {
    let o = pretext(&["train", "--help"]);
    assert!(o.status.success());
    let help = text(&o.stdout);
    for opt in [
        "--data",
        "--task",
        "--task-weights",
        "--epochs",
        "--batch",
        "--size",
        "--lr",
        "--seed",
        "--device",
        "--out",
        "--resume",
        "--json",
        "--no-cache",
        "builtin",
    ] {
        assert!(help.contains(opt), "{opt} missing from help:\n{help}");
    }
    let o = pretext(&["--help"]);
    assert!(text(&o.stdout).contains("train"));
    assert!(text(&o.stdout).contains("cache"));
}

#[test]
fn init_from_starts_a_run_from_saved_weights() {
    let out = tempfile::tempdir().unwrap();
    let o = small_run(out.path(), &[]);
    assert!(o.status.success());
    let dir = run_dir_from(&text(&o.stdout));
    let weights = dir.join("checkpoints/epoch-0002.safetensors");
    let o = pretext(&[
        "train",
        "--data",
        "builtin:64",
        "--task",
        "rotation,contrastive",
        "--epochs",
        "1",
        "--batch",
        "16",
        "--out",
        out.path().to_str().unwrap(),
        "--init-from",
        weights.to_str().unwrap(),
    ]);
    let stderr = text(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("heads.contrastive"),
        "missing heads are named: {stderr}"
    );
    let second = run_dir_from(&text(&o.stdout));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(second.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["init_from"], weights.to_str().unwrap());

    let bogus = out.path().join("bogus.safetensors");
    std::fs::write(&bogus, b"not a checkpoint").unwrap();
    let o = pretext(&[
        "train",
        "--data",
        "builtin:64",
        "--out",
        out.path().to_str().unwrap(),
        "--init-from",
        bogus.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "bogus.safetensors");
}

#[test]
fn eval_judges_a_run_against_random_init_and_raw_pixels() {
    let out = tempfile::tempdir().unwrap();
    let o = small_run(out.path(), &[]);
    assert!(o.status.success());
    let dir = run_dir_from(&text(&o.stdout));
    let o = pretext(&["eval", "--run", dir.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    let r = &v["report"];
    assert_eq!(r["classes"], 8);
    assert_eq!(r["knn"].as_array().unwrap().len(), 4);
    for s in r["knn"].as_array().unwrap() {
        for k in ["trained", "random"] {
            assert!((0.0..=1.0).contains(&s[k].as_f64().unwrap()));
        }
    }
    assert!((0.0..=1.0).contains(&r["probe_trained"].as_f64().unwrap()));
    let confusion: usize = r["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|c| c.as_u64().unwrap() as usize)
        .sum();
    assert_eq!(confusion, r["held_out"].as_u64().unwrap() as usize);
    // The same judgement is left in the run directory as eval.json.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
    assert_eq!(file["data"], "builtin:64");
    assert_eq!(file["labelled"], true);
    assert_eq!(file["report"], v["report"]);
    assert_eq!(file["gauges"], r["gauges_trained"]);
    assert!(file["seconds"].as_f64().unwrap() >= 0.0);
    // …with the step of the weights judged (the run's last), so a continued run can tell.
    let rows = pretext::train::run_dir::read_metrics(&dir).unwrap();
    let last = rows.iter().map(|r| r.step).max().unwrap();
    assert!(last > 0);
    assert_eq!(file["step"], last);
    // Text mode with an export of the embeddings, and unusable input.
    let export = out.path().join("export");
    let o = pretext(&[
        "eval",
        "--run",
        dir.to_str().unwrap(),
        "--export",
        export.to_str().unwrap(),
    ]);
    assert!(
        text(&o.stdout).contains("kNN accuracy"),
        "{}",
        text(&o.stdout)
    );
    let csv = std::fs::read_to_string(export.join("embeddings.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 64);
    assert!(csv.lines().next().unwrap().starts_with("name,label,z0,z1,"));
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with("meadow/00000,meadow,")
    );
    let npy = std::fs::read(export.join("embeddings.npy")).unwrap();
    assert_eq!(&npy[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = std::str::from_utf8(&npy[10..10 + header_len]).unwrap();
    assert!(header.contains("'shape': (64, 128)"), "{header}");
    assert_eq!((10 + header_len) % 64, 0);
    assert_eq!(npy.len(), 10 + header_len + 64 * 128 * 4);
    let o = pretext(&["eval", "--run", out.path().to_str().unwrap()]);
    assert_one_line_error(&o, "not a run directory");
}

#[test]
fn bench_reports_a_json_line_and_refuses_a_device_the_build_lacks() {
    let o = pretext(&[
        "bench", "--task", "patch", "--batch", "8", "--size", "16", "--steps", "2", "--json",
    ]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", text(&o.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["task"], "patch");
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["ops"], "pretext kernels");
    assert_eq!(report["steps"], 2);
    assert!(report["images_per_s"].as_f64().unwrap() > 0.0, "{report}");
    let split = &report["split"];
    assert!(split["forward_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(split["backward_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(!report["cpu"].as_str().unwrap().is_empty(), "{report}");
    assert!(report["peak_gflops"].as_f64().unwrap() > 0.0, "{report}");

    // The reference encoder's convolutions at 32 px, 2·(C·K²)·O·(Ho·Wo) each: stem 3→32
    // 1,769,472; stage 1 two 32→32 18,874,368; stage 2 32→64 (stride 2) 9,437,184, 64→64
    // 18,874,368 and the 1×1 shortcut 1,048,576; stage 3 the same again (9,437,184 + 18,874,368
    // + 1,048,576). Forward 98,238,464; the weight gradients the same; the input gradients all
    // but the stem's (the image needs none): 292,945,920 FLOP per image in all, as counted
    // with Winograd off. With it (AVX2 or AVX-512 CPUs), the 18,874,368-FLOP convolutions
    // of stages 1 and 2 (32×32 and 16×16 maps: F(4×4, 3×3)) count 36/144 of that in each of
    // their three passes (4,718,592), that of stage 3 (8×8: F(2×2, 3×3)) 4/9 (8,388,608),
    // and the two stride-2 3×3 convolutions' three passes 25/36 (6,553,600 each):
    // 116,785,152; on AVX-512, where stage 3 takes F(4×4, 3×3) too, 105,775,104.
    let bench = |winograd: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pretext"));
        cmd.args([
            "bench", "--task", "rotation", "--batch", "8", "--steps", "2", "--json",
        ]);
        // The count depends on the vector width (8×8 maps, below), so the 512-bit kernels
        // stay on where the CPU has them.
        cmd.env_remove("PRETEXT_DIRECT_CONV");
        if winograd {
            cmd.env_remove("PRETEXT_NO_WINOGRAD")
                .env_remove("PRETEXT_NO_STRIDED_WINOGRAD")
                .env_remove("PRETEXT_NO_WINOGRAD4");
        } else {
            cmd.env("PRETEXT_NO_WINOGRAD", "1");
        }
        let o = cmd.output().expect("run pretext");
        assert!(o.status.success(), "{}", text(&o.stderr));
        let report: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
        report
    };
    let report = bench(false);
    let flop = report["gflop_per_image"].as_f64().unwrap() * 1e9;
    assert!((flop - 292_945_920.0).abs() < 1.0, "{report}");
    let (ceiling, share) = (
        report["ceiling_images_per_s"].as_f64().unwrap(),
        report["share_of_ceiling"].as_f64().unwrap(),
    );
    let peak = report["peak_gflops"].as_f64().unwrap();
    assert!(
        (ceiling - peak / 0.292_945_92).abs() < 1e-6 * ceiling,
        "{report}"
    );
    let images_per_s = report["images_per_s"].as_f64().unwrap();
    assert!((share - images_per_s / ceiling).abs() < 1e-9, "{report}");
    let report = bench(true);
    let flop = report["gflop_per_image"].as_f64().unwrap() * 1e9;
    #[cfg(target_arch = "x86_64")]
    let winograd_runs = (std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma"))
        || std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let winograd_runs = false;
    // With AVX-512 the 8×8 maps (l3.c2 at 32 px) take F(4×4, 3×3) along the images: 2.25
    // products per output pixel and channel pair instead of F(2×2, 3×3)'s 4.
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    let want = if avx512 {
        105_775_104.0
    } else if winograd_runs {
        116_785_152.0
    } else {
        292_945_920.0
    };
    assert!((flop - want).abs() < 1.0, "{report}");

    if let Some(reason) = pretext::model::device::unavailable(DeviceKind::Cuda) {
        let o = pretext(&[
            "bench", "--task", "patch", "--steps", "1", "--device", "cuda",
        ]);
        assert_eq!(o.status.code(), Some(2));
        let stderr = text(&o.stderr);
        assert!(stderr.contains(reason), "{stderr}");
    }
}

/// The rotation task's rows in a run's metrics.csv: one per step.
fn rotation_rows(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .filter(|l| l.split(',').nth(2) == Some("rotation"))
        .count()
}

/// `--minutes` ends the run as its last epoch would (a checkpoint, the resume point, the last
/// measurement), with the cosine schedule's learning rate annealed towards zero by then; a
/// continued run trains that many more minutes.
#[test]
fn a_time_limit_ends_the_run_like_its_last_epoch_and_the_schedule_with_it() {
    let out = tempfile::tempdir().unwrap();
    let o = pretext(&[
        "train",
        "--data",
        "builtin:64",
        "--task",
        "rotation",
        "--batch",
        "16",
        "--epochs",
        "100000",
        "--minutes",
        "0.1",
        "--warmup-steps",
        "5",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("Time limit reached after step "),
        "{stderr}"
    );
    let dir = run_dir_from(&stdout);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["minutes"], 0.1);
    assert_eq!(config["lr_schedule"], "cosine");
    let names: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("step-")), "{names:?}");
    assert!(names.iter().any(|n| n == "resume.safetensors"), "{names:?}");

    // The learning rate rises over the warm-up, then falls to near zero at the limit.
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let lrs: Vec<f64> = csv
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(2) == Some("rotation"))
        .map(|l| l.split(',').nth(6).unwrap().parse().unwrap())
        .collect();
    assert!(lrs.len() > 10, "{} steps", lrs.len());
    assert!(lrs[0] < lrs[4], "warm-up: {:?}", &lrs[..5]);
    let peak = lrs.iter().copied().fold(0.0, f64::max);
    assert!(peak <= 1e-3 + 1e-12);
    assert!(*lrs.last().unwrap() < 0.2 * peak, "annealed: {lrs:?}");
    let steps = lrs.len();

    // Half a minute more of the same run.
    let o = pretext(&[
        "train",
        "--resume",
        dir.to_str().unwrap(),
        "--minutes",
        "0.05",
    ]);
    let stderr = text(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("Time limit reached after step "),
        "{stderr}"
    );
    let more = rotation_rows(&dir);
    assert!(
        more > steps,
        "{more} steps after continuing, {steps} before"
    );

    // Continued without --minutes, as the app's Continue does: its limit is spent, so it
    // trains as long again instead of ending at once having trained nothing.
    let o = pretext(&["train", "--resume", dir.to_str().unwrap()]);
    let stderr = text(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("the run had used its time limit (0.1 minutes): training 0.1 minutes more"),
        "{stderr}"
    );
    let again = rotation_rows(&dir);
    assert!(
        again > more,
        "{again} steps after continuing again, {more} before"
    );
}
