//! Crash during a checkpoint: a real `pretext train` process is killed with SIGKILL at many
//! different moments — while it starts up, mid-epoch, right after an epoch checkpoint, while
//! `checkpoints/resume.safetensors` or an epoch checkpoint is being written, while `--resume`
//! trims metrics.csv — and each time `pretext train --resume` must continue from the last good
//! checkpoint with the step count intact. After every kill the run directory is checked: every
//! checkpoint under its final name is readable, the resume checkpoint never goes back, and
//! metrics.csv holds each training step up to it exactly once. A last `--resume` runs to the end.

#![cfg(unix)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use candle_core::Device;
use pretext::model::checkpoint;
use pretext::train::run_dir::{
    CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, METRICS_HEADER, RESUME_FILE,
};

const DATA: &str = "builtin:64";
const BATCH: u64 = 16;
/// 64 images in batches of 16.
const STEPS_PER_EPOCH: u64 = 4;
/// Enough that the kills end well before the run does (they take about 15 epochs here, on two
/// cores); on a much faster machine the run may complete first, then the remaining kills are
/// skipped.
const EPOCHS: u64 = 60;
/// Kills that must have happened even when the run completed before the plan's end.
const MIN_KILLS: usize = 12;
const TOTAL_STEPS: u64 = EPOCHS * STEPS_PER_EPOCH;
const TASK: &str = "rotation";
/// How often the test looks for the moment to kill.
const POLL: Duration = Duration::from_micros(100);

/// When to send SIGKILL.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// This long after the process was started.
    After(Duration),
    /// As soon as the process's temporary file for `<name>` (`.<name>….tmp-<pid>`) appears:
    /// the checkpoint (or metrics.csv) is being written. Given up after `give_up`, then killed.
    WhileWriting(&'static str, Duration),
    /// As soon as an epoch checkpoint newer than the process's start appears: between the epoch
    /// file and the resume file.
    AfterEpochFile,
}

/// What the test saw when it killed the process.
#[derive(Debug, Default)]
struct Killed {
    /// Seconds from the start to the kill.
    at_s: f64,
    /// The awaited moment was seen (false: killed at the fallback time).
    hit: bool,
    /// The process's temporary files that were left in the run directory.
    leftovers: Vec<String>,
}

/// Deterministic spread of delays (xorshift64*).
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform between `lo` and `hi` seconds.
    fn delay(&mut self, lo: f64, hi: f64) -> Kill {
        Kill::After(Duration::from_secs_f64(lo * (hi / lo).powf(self.unit())))
    }
}

fn ms(n: u64) -> Kill {
    Kill::After(Duration::from_millis(n))
}

/// The kills, in order: very early ones (no checkpoint yet: `--resume` must refuse and a fresh
/// run starts), then timed ones spread from startup to a few seconds, interleaved with kills
/// aimed at the checkpoint writes.
fn plan() -> Vec<Kill> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let resume = Kill::WhileWriting(RESUME_FILE, Duration::from_secs(30));
    let epoch = Kill::WhileWriting("epoch-", Duration::from_secs(30));
    // Only written when a resume must drop rows past its checkpoint: give up sooner.
    let metrics = Kill::WhileWriting(METRICS_FILE, Duration::from_secs(3));
    vec![
        ms(0),
        ms(20),
        r.delay(0.05, 0.3),
        r.delay(0.5, 1.5),
        r.delay(0.01, 0.2),
        resume,
        metrics,
        r.delay(0.3, 3.0),
        Kill::AfterEpochFile,
        r.delay(0.02, 0.5),
        epoch,
        r.delay(0.3, 3.0),
        resume,
        r.delay(0.3, 3.0),
        Kill::AfterEpochFile,
        metrics,
        r.delay(0.1, 1.0),
        epoch,
        r.delay(0.3, 3.0),
        resume,
        r.delay(0.05, 0.5),
        r.delay(0.3, 3.0),
        epoch,
        resume,
    ]
}

fn spawn(args: &[&str], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pretext"))
        // Never the home folder's image cache: a scratch one.
        .env(
            "PRETEXT_CACHE_DIR",
            std::env::temp_dir().join("pretext-test-cache"),
        )
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(log.with_extension("out")).unwrap())
        .stderr(File::create(log.with_extension("err")).unwrap())
        .spawn()
        .expect("start pretext")
}

fn read_log(log: &Path, ext: &str) -> String {
    std::fs::read_to_string(log.with_extension(ext)).unwrap_or_default()
}

/// The run directory a fresh run created under its own `--out` folder, if any yet.
fn find_run(out: &Path) -> Option<PathBuf> {
    std::fs::read_dir(out)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
}

/// The process's temporary files (`.<name>.tmp-<pid>`) in the run directory and checkpoints/.
fn temporaries(run: &Path, pid: u32) -> Vec<String> {
    let suffix = format!(".tmp-{pid}");
    [run.to_path_buf(), run.join(CHECKPOINT_DIR)]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.ends_with(&suffix))
        .collect()
}

/// An epoch checkpoint written after `since`.
fn new_epoch_file(run: &Path, since: SystemTime) -> bool {
    let Ok(entries) = std::fs::read_dir(run.join(CHECKPOINT_DIR)) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("epoch-")
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > since)
    })
}

/// Waits for the moment `kill` names, then sends SIGKILL (`Child::kill`). `run` is the run
/// directory, or the `--out` folder to find a fresh run's directory in. Returns the exit status
/// and what was seen; the status is the process's own when it ended first.
fn kill_at(
    child: &mut Child,
    kill: Kill,
    run: &mut Option<PathBuf>,
    out: &Path,
) -> (ExitStatus, Killed) {
    let started = Instant::now();
    let since = SystemTime::now();
    let pid = child.id();
    let (deadline, mut hit) = match kill {
        Kill::After(d) => (d, true),
        Kill::WhileWriting(_, give_up) => (give_up, false),
        Kill::AfterEpochFile => (Duration::from_secs(30), false),
    };
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let seen = Killed {
                at_s: started.elapsed().as_secs_f64(),
                ..Killed::default()
            };
            return (status, seen);
        }
        if run.is_none() {
            *run = find_run(out);
        }
        if let Some(dir) = run.as_deref() {
            hit = hit
                || match kill {
                    Kill::After(_) => true,
                    Kill::WhileWriting(name, _) => temporaries(dir, pid)
                        .iter()
                        .any(|t| t.starts_with(&format!(".{name}"))),
                    Kill::AfterEpochFile => new_epoch_file(dir, since),
                };
        }
        let at_deadline = started.elapsed() >= deadline;
        let ready = match kill {
            Kill::After(_) => at_deadline,
            _ => hit || at_deadline,
        };
        if ready {
            child.kill().unwrap();
            let at_s = started.elapsed().as_secs_f64();
            let status = child.wait().unwrap();
            if run.is_none() {
                *run = find_run(out);
            }
            let leftovers = run
                .as_deref()
                .map(|d| temporaries(d, pid))
                .unwrap_or_default();
            return (
                status,
                Killed {
                    at_s,
                    hit,
                    leftovers,
                },
            );
        }
        std::thread::sleep(POLL);
    }
}

fn meta_u64(meta: &BTreeMap<String, String>, key: &str, path: &Path) -> u64 {
    meta.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}: no valid `{key}` in {meta:?}", path.display()))
}

/// Checks the run directory after a kill and returns the step of its resume checkpoint (None
/// when there is none yet). `last` is the step of the resume checkpoint before that process ran:
/// the checkpoint may only stay or move forward.
fn check_run_dir(run: &Path, last: Option<u64>, what: &str) -> Option<u64> {
    let ck = run.join(CHECKPOINT_DIR);
    // Every file under a final name is a complete, readable checkpoint whose position matches
    // its name (a half-written one would fail to parse or to load).
    let mut epochs = BTreeSet::new();
    let mut resume = None;
    for entry in std::fs::read_dir(&ck).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            assert!(
                name.contains(".tmp-"),
                "{what}: unexpected file {name} in {}",
                ck.display()
            );
            continue;
        }
        let path = entry.path();
        let (tensors, meta) = checkpoint::read(&path, &Device::Cpu).unwrap_or_else(|e| {
            panic!(
                "{what}: {} is not a readable checkpoint: {e}",
                path.display()
            )
        });
        assert!(
            !tensors.is_empty(),
            "{what}: {} holds no tensors",
            path.display()
        );
        let step = meta_u64(&meta, "step", &path);
        let epoch = meta_u64(&meta, "epoch", &path);
        assert_eq!(
            step,
            epoch * STEPS_PER_EPOCH,
            "{what}: {} {meta:?}",
            path.display()
        );
        if name == RESUME_FILE {
            assert_eq!(meta_u64(&meta, "batch", &path), 0, "{what}: {meta:?}");
            assert_eq!(
                meta_u64(&meta, "optimizer_t", &path),
                step,
                "{what}: {meta:?}"
            );
            assert!(
                tensors.keys().any(|k| k.starts_with("optimizer.")),
                "{what}: the resume checkpoint has no optimiser state"
            );
            resume = Some(step);
        } else {
            let n: u64 = name
                .strip_prefix("epoch-")
                .and_then(|n| n.strip_suffix(".safetensors"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{what}: unexpected checkpoint {name}"));
            assert_eq!(epoch, n, "{what}: {name} {meta:?}");
            epochs.insert(n);
        }
    }
    if let Some(last) = last {
        let now =
            resume.unwrap_or_else(|| panic!("{what}: the resume checkpoint (step {last}) is gone"));
        assert!(
            now >= last,
            "{what}: the resume checkpoint went back from step {last} to {now}"
        );
    }
    let s = resume.unwrap_or(0);
    let resume_epoch = s / STEPS_PER_EPOCH;
    // Epoch checkpoints are written before the resume checkpoint: all up to it exist, and at
    // most the one after it.
    assert!(
        (1..=resume_epoch).all(|e| epochs.contains(&e)),
        "{what}: resume at epoch {resume_epoch} but epoch checkpoints {epochs:?}"
    );
    assert!(
        epochs.last().is_none_or(|&e| e <= resume_epoch + 1),
        "{what}: resume at epoch {resume_epoch} but epoch checkpoints {epochs:?}"
    );
    check_metrics(run, s, what);
    resume
}

/// metrics.csv: the header, then training rows 1, 2, …, M in order, each once, with
/// `step` ≤ M ≤ `step` + one epoch (rows past the checkpoint can only come from the epoch the
/// killed process was in); a half-written last line is allowed (the next resume drops it);
/// monitor rows never twice. Returns M.
fn check_metrics(run: &Path, step: u64, what: &str) -> u64 {
    let path = run.join(METRICS_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        assert_eq!(
            step, 0,
            "{what}: no metrics.csv next to a resume checkpoint"
        );
        return 0;
    };
    let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{what}: metrics.csv: {e}"));
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut lines = complete.lines();
    match lines.next() {
        Some(h) => assert_eq!(h, METRICS_HEADER, "{what}"),
        None => {
            assert_eq!(
                step, 0,
                "{what}: empty metrics.csv next to a resume checkpoint"
            );
            return 0;
        }
    }
    let mut steps = Vec::new();
    let mut monitor = BTreeSet::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(
            f.len(),
            METRICS_HEADER.split(',').count(),
            "{what}: malformed row {line:?}"
        );
        let s: u64 = f[0].parse().unwrap_or_else(|_| panic!("{what}: {line:?}"));
        match f[2] {
            TASK => {
                let epoch: u64 = f[1].parse().unwrap();
                assert_eq!(epoch, s.div_ceil(STEPS_PER_EPOCH), "{what}: {line:?}");
                assert!(f[3].parse::<f64>().unwrap().is_finite(), "{what}: {line:?}");
                steps.push(s);
            }
            "knn" | "gauges" => {
                assert!(s <= steps.last().copied().unwrap_or(0), "{what}: {line:?}");
                let key = (s, f[2].to_string(), f[4].to_string());
                assert!(monitor.insert(key), "{what}: monitor row twice: {line:?}");
            }
            other => panic!("{what}: unexpected task {other} in {line:?}"),
        }
    }
    let m = steps.len() as u64;
    let expected: Vec<u64> = (1..=m).collect();
    assert!(
        steps == expected,
        "{what}: training steps in metrics.csv are not 1..={m} once each: {steps:?}"
    );
    assert!(
        (step..=step + STEPS_PER_EPOCH).contains(&m),
        "{what}: metrics.csv has {m} training steps, the resume checkpoint is at step {step}"
    );
    m
}

/// `--resume` of a run directory without a resume checkpoint must refuse, clearly, with exit
/// code 2, and leave the directory as it was.
fn check_resume_refused(run: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_pretext"))
        // Never the home folder's image cache: a scratch one.
        .env(
            "PRETEXT_CACHE_DIR",
            std::env::temp_dir().join("pretext-test-cache"),
        )
        .args(["train", "--resume", run.to_str().unwrap()])
        .output()
        .expect("run pretext");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    let reason = if run.join(CONFIG_FILE).is_file() {
        format!("no {CHECKPOINT_DIR}/{RESUME_FILE} to continue from")
    } else {
        format!("cannot read {CONFIG_FILE}")
    };
    let expected = format!("error: {} is not a run directory: {reason}", run.display());
    assert!(
        stderr.lines().any(|l| l.starts_with(&expected)),
        "expected {expected:?} in:\n{stderr}"
    );
    assert!(!run.join(CHECKPOINT_DIR).join(RESUME_FILE).exists());
}

/// The `Epoch N/EPOCHS` lines of one process: consecutive, starting after `from_step`.
fn check_epoch_lines(stdout: &str, from_step: u64, what: &str) -> usize {
    let epochs: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Epoch "))
        .map(|l| {
            let (n, rest) = l.split_once('/').unwrap();
            assert!(rest.starts_with(&format!("{EPOCHS} Loss: ")), "{what}: {l}");
            n.parse().unwrap()
        })
        .collect();
    let first = from_step / STEPS_PER_EPOCH + 1;
    let expected: Vec<u64> = (first..first + epochs.len() as u64).collect();
    assert_eq!(epochs, expected, "{what}: epoch lines\n{stdout}");
    epochs.len()
}

#[test]
fn sigkill_at_many_moments_then_resume_continues_from_the_last_checkpoint() {
    let started = Instant::now();
    let out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let epochs = EPOCHS.to_string();
    let batch = BATCH.to_string();
    let plan = plan();

    let mut run: Option<PathBuf> = None;
    // Step of the run's resume checkpoint, as last checked.
    let mut last: Option<u64> = None;
    let mut fresh_starts = 0;
    let mut refusals = 0;
    let mut continued = 0;
    let mut mid_write = 0;
    let mut completed_early = false;
    let mut kills = 0;
    for (i, &kill) in plan.iter().enumerate() {
        let log = logs.path().join(format!("kill-{i:02}"));
        let resuming = last.is_some();
        let (mut child, fresh_out) = if let (Some(dir), true) = (&run, resuming) {
            (
                spawn(&["train", "--resume", dir.to_str().unwrap()], &log),
                None,
            )
        } else {
            if let Some(dir) = &run {
                // Killed before its first checkpoint: nothing to continue from.
                check_resume_refused(dir);
                refusals += 1;
            }
            fresh_starts += 1;
            let fresh = out.path().join(format!("fresh-{fresh_starts}"));
            let args = [
                "train",
                "--data",
                DATA,
                "--task",
                TASK,
                "--batch",
                &batch,
                "--epochs",
                &epochs,
                "--size",
                "32",
                "--knn-every",
                "0",
                // A checkpoint after every epoch, all of them kept, as the kills expect.
                "--monitor-budget",
                "100",
                "--keep-checkpoints",
                "0",
                "--seed",
                "5",
                "--out",
                fresh.to_str().unwrap(),
            ];
            run = None;
            (spawn(&args, &log), Some(fresh))
        };
        let pid = child.id();
        let search = fresh_out.clone().unwrap_or_default();
        let (status, seen) = kill_at(&mut child, kill, &mut run, &search);
        let what = format!("kill {i} ({kill:?}, pid {pid}, at {:.3} s)", seen.at_s);
        let stdout = read_log(&log, "out");
        let stderr = read_log(&log, "err");
        assert!(
            !stderr.contains("error") && !stderr.contains("panicked"),
            "{what}: the process reported an error before it was killed:\n{stderr}"
        );
        if status.signal() == Some(9) {
            kills += 1;
        } else {
            // Only a run that has completed may end by itself.
            assert!(status.success(), "{what}: {status}\n{stderr}");
            completed_early = true;
        }
        if resuming {
            let dir = run.as_deref().unwrap();
            let expected = last.unwrap();
            // The process may have been killed before it said where it continues from.
            let said: Vec<&str> = stderr
                .lines()
                .filter(|l| l.starts_with("Continuing "))
                .collect();
            if !said.is_empty() {
                assert_eq!(
                    said,
                    [format!("Continuing {} from step {expected}", dir.display())],
                    "{what}\n{stderr}"
                );
                continued += 1;
            }
            check_epoch_lines(&stdout, expected, &what);
        } else {
            check_epoch_lines(&stdout, 0, &what);
        }
        if !seen.leftovers.is_empty() {
            mid_write += 1;
        }
        let now = run
            .as_deref()
            .and_then(|dir| check_run_dir(dir, last, &what));
        println!(
            "{what}: {} hit {} -> resume checkpoint at step {}{}",
            if resuming { "resumed," } else { "fresh," },
            seen.hit,
            now.map_or("-".into(), |s| s.to_string()),
            if seen.leftovers.is_empty() {
                String::new()
            } else {
                format!(", killed mid-write: {:?}", seen.leftovers)
            }
        );
        last = now;
        if completed_early {
            assert_eq!(
                now,
                Some(TOTAL_STEPS),
                "{what}: ended by itself before the end"
            );
            println!("the run completed before the rest of the kills");
            break;
        }
    }
    assert!(
        kills >= MIN_KILLS,
        "the run completed after only {kills} kills: raise EPOCHS"
    );

    // The last resume runs to the end.
    let dir = run.expect("a run directory after the kills");
    let from = last.expect("a resume checkpoint after the kills");
    let log = logs.path().join("final");
    let mut child = spawn(&["train", "--resume", dir.to_str().unwrap()], &log);
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the final resume did not finish in 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = read_log(&log, "out");
    let stderr = read_log(&log, "err");
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l == format!("Continuing {} from step {from}", dir.display())),
        "{stderr}"
    );
    let lines = check_epoch_lines(&stdout, from, "final resume");
    assert_eq!(lines as u64, EPOCHS - from / STEPS_PER_EPOCH, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("Run directory: {}", dir.display())),
        "{stdout}"
    );
    let end = check_run_dir(&dir, Some(from), "final resume");
    assert_eq!(end, Some(TOTAL_STEPS));
    assert_eq!(
        check_metrics(&dir, TOTAL_STEPS, "final resume"),
        TOTAL_STEPS
    );
    let csv = std::fs::read_to_string(dir.join(METRICS_FILE)).unwrap();
    assert!(csv.ends_with('\n'), "metrics.csv ends in a half line");
    for e in 1..=EPOCHS {
        assert!(
            dir.join(CHECKPOINT_DIR)
                .join(format!("epoch-{e:04}.safetensors"))
                .is_file()
        );
    }
    let left: Vec<String> = std::fs::read_dir(dir.join(CHECKPOINT_DIR))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        left.is_empty(),
        "temporary files left in checkpoints/: {left:?}"
    );
    // Reported, not required: temporary files left next to metrics.csv (a resume killed while
    // rewriting it), and epoch ends without kNN rows (a process killed before it flushed them).
    let root_left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    let monitored: BTreeSet<u64> = csv
        .lines()
        .filter(|l| l.split(',').nth(2) == Some("knn"))
        .filter_map(|l| l.split(',').next()?.parse().ok())
        .collect();
    let unmonitored: Vec<u64> = (0..=EPOCHS)
        .map(|e| e * STEPS_PER_EPOCH)
        .filter(|s| !monitored.contains(s))
        .collect();
    println!("temporary files left in the run directory: {root_left:?}");
    println!("epoch ends without kNN rows in metrics.csv (steps): {unmonitored:?}");

    println!(
        "{kills} kills ({fresh_starts} fresh starts, {refusals} refused resumes, {continued} killed \
         resumes that had said where they continue, {mid_write} killed mid-write), then resumed \
         from step {from} to {TOTAL_STEPS}, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(continued > 0, "no killed resume got as far as continuing");
}
