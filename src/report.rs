//! The lines a run reports, formatted once for every front end: the CLI prints them, the app
//! shows them. Plain strings and JSON values only: nothing here knows a terminal, a window or a
//! command line.

use crate::data::DatasetSummary;
use crate::train::overhead::Spent;
use crate::train::{EpochSummary, KnnMetrics, Overhead, StepMetrics, TaskMetrics};

/// How many entries of each file list (skipped, partly decoded, ignored) are named one by one.
pub const LISTED_FILES: usize = 5;

/// `Epoch 1/5 Loss: 1.982 Proxy accuracy: 62%` (several tasks: one metric each).
/// `Not training: 3.1 s of 182.4 s (1.7%) — kNN monitor 2.2 s (4×), previews 0.4 s (31×),
/// checkpoints 0.5 s (5×)`.
pub fn overhead_line(o: &Overhead) -> String {
    let part = |name: &str, s: &Spent| format!("{name} {:.1} s ({}×)", s.secs, s.count);
    format!(
        "Not training: {:.1} s of {:.1} s ({:.1}%) — {}, {}, {}",
        o.total_s(),
        o.wall_s,
        o.fraction() * 100.0,
        part("kNN monitor", &o.monitor),
        part("previews", &o.previews),
        part("checkpoints", &o.checkpoints),
    )
}

/// A size in bytes as people read it: `812 KB`, `12.3 MB`, `1.20 GB` (powers of 1000).
pub fn bytes(n: u64) -> String {
    let v = n as f64;
    if v < 1e6 {
        format!("{:.0} KB", v / 1e3)
    } else if v < 1e9 {
        format!("{:.1} MB", v / 1e6)
    } else {
        format!("{:.2} GB", v / 1e9)
    }
}

/// `Checkpoints: 3 kept, 12.3 MB on disk; best kNN top-1 of z 94.1% in epoch-0012.safetensors`.
pub fn checkpoints_line(c: &crate::train::run_dir::Checkpoints) -> String {
    let mut line = format!(
        "Checkpoints: {} kept ({}), {} on disk with the resume checkpoint",
        c.kept.len(),
        c.kept.join(", "),
        bytes(c.disk_bytes)
    );
    if let Some((name, acc)) = &c.best {
        line.push_str(&format!(
            "; best kNN top-1 of z {:.1}% in {name}",
            acc * 100.0
        ));
    }
    line
}

/// `3/5`, or `3` alone in a run the time limit ends (its epochs are not limited:
/// [`crate::config::EPOCHS_UNTIL_TIME_LIMIT`]).
pub fn epoch_of(epoch: usize, epochs: usize) -> String {
    if epochs >= crate::config::EPOCHS_UNTIL_TIME_LIMIT {
        epoch.to_string()
    } else {
        format!("{epoch}/{epochs}")
    }
}

/// `Epoch 3/5 Loss: 1.982 Proxy accuracy: 62%` (`Epoch 3 …` in a run the time limit ends).
pub fn epoch_line(e: &EpochSummary) -> String {
    let mut line = format!("Epoch {} Loss: {:.3}", epoch_of(e.epoch, e.epochs), e.loss);
    if let [t] = e.tasks.as_slice() {
        line.push_str(&format!(
            " {}: {}{}",
            t.metric_info.label,
            t.metric_info.format(t.metric),
            baseline(t)
        ));
    } else {
        for t in &e.tasks {
            line.push_str(&format!(
                " | {} loss {:.3} {}: {}{}",
                t.task,
                t.loss,
                t.metric_info.name,
                t.metric_info.format(t.metric),
                baseline(t)
            ));
        }
    }
    line
}

/// ` (mean fill 21.3 dB)` when the task has a baseline, else nothing.
fn baseline(t: &TaskMetrics) -> String {
    match (t.baseline, t.metric_info.baseline) {
        (Some(b), Some(name)) => format!(" ({name} {})", t.metric_info.format(b)),
        _ => String::new(),
    }
}

/// One epoch as a JSON object: the first task's metric at the top level (one-task runs read
/// just that), every task's under `tasks`; `epochs` is `null` in a run the time limit ends.
pub fn epoch_json(e: &EpochSummary) -> serde_json::Value {
    let first = e.tasks.first();
    serde_json::json!({
        "epoch": e.epoch,
        "epochs": (e.epochs < crate::config::EPOCHS_UNTIL_TIME_LIMIT).then_some(e.epochs),
        "task": e.tasks.iter().map(|t| t.task.name()).collect::<Vec<_>>().join(","),
        "loss": e.loss,
        "proxy_metric": first.map(|t| t.metric_info.name),
        "proxy_value": first.map(|t| t.metric),
        "baseline": first.and_then(|t| t.baseline),
        "images_per_s": e.images_per_s,
        "step": e.step,
        "wall_s": e.wall_s,
        "tasks": e.tasks.iter().map(|t| serde_json::json!({
            "task": t.task.name(),
            "loss": t.loss,
            "proxy_metric": t.metric_info.name,
            "proxy_value": t.metric,
            "baseline": t.baseline,
            "baseline_name": t.metric_info.baseline,
        })).collect::<Vec<_>>(),
    })
}

/// One measurement of the kNN monitor as a JSON object under `knn`: kNN top-1 per encoder stage
/// (`stem`, `l1`, `l2`, `l3`; l3 is z) and on raw pixels, the gauges of z, and the gauges of each
/// two-view method's own output; or only why nothing was measured.
/// `{"knn":{"step":200,"epoch":3,"top1":{"stem":0.31,…},"raw_pixels":0.29,"gauges":{"rankme":…}}}`
pub fn knn_json(k: &KnnMetrics) -> serde_json::Value {
    let gauges = |g: &crate::eval::embed::Gauges| {
        serde_json::json!({
            "rankme": finite(g.rankme),
            "dimensions": g.dimensions,
            "std_of_l2_normalized": finite(g.std_of_l2_normalized),
            "std_reference": finite(g.std_reference),
            "uniformity": finite(g.uniformity),
            "alignment": g.alignment.and_then(finite),
        })
    };
    if k.stages.is_empty() {
        return serde_json::json!({"knn": {
            "step": k.step,
            "epoch": k.epoch,
            "not_measured": k.not_measured.map(|why| why.to_string()),
        }});
    }
    let top1: serde_json::Map<String, serde_json::Value> = k
        .stages
        .iter()
        .map(|(stage, acc)| {
            let name = crate::eval::embed::stage_key(stage);
            (name.to_string(), serde_json::json!(acc))
        })
        .collect();
    let outputs: serde_json::Map<String, serde_json::Value> = k
        .head_gauges
        .iter()
        .map(|(task, g)| (task.name().to_string(), gauges(g)))
        .collect();
    serde_json::json!({"knn": {
        "step": k.step,
        "epoch": k.epoch,
        "top1": top1,
        "raw_pixels": k.raw_pixels,
        "gauges": gauges(&k.gauges),
        "output_gauges": outputs,
    }})
}

/// `Some(v)` for a finite number (JSON has no NaN), else `None` (`null`).
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// `loss 1.234  rotation accuracy 56%  1234 img/s`: the running numbers of one step.
pub fn step_numbers(m: &StepMetrics) -> String {
    let mut parts = vec![format!("loss {:.3}", m.loss)];
    parts.extend(
        m.tasks
            .iter()
            .map(|t| format!("{} {}", t.metric_info.name, t.metric_info.format(t.metric))),
    );
    parts.push(format!("{:.0} img/s", m.images_per_s));
    parts.join("  ")
}

/// `kNN at step 200: stem 31.2% · l1 40.0% · l2 52.5% · l3 61.3% (raw pixels 28.8%)`, or
/// `kNN accuracy: not measured (why)` when there are no accuracies and a reason; `None` when
/// there is neither.
pub fn knn_line(k: &KnnMetrics) -> Option<String> {
    if k.stages.is_empty() {
        return k
            .not_measured
            .map(|why| format!("kNN accuracy: not measured ({why})"));
    }
    let stages: Vec<String> = k
        .stages
        .iter()
        .map(|(s, a)| format!("{s} {:.1}%", a * 100.0))
        .collect();
    let pixels = k
        .raw_pixels
        .map(|p| format!(" (raw pixels {:.1}%)", p * 100.0))
        .unwrap_or_default();
    Some(format!(
        "kNN at step {}: {}{pixels}",
        k.step,
        stages.join(" · ")
    ))
}

/// `Data: 2400 images (8 classes) from builtin at 32 px, loaded in 0.41 s (5854 files/s)` (a
/// folder loaded through the image cache adds `; 2400 of 2400 from the cache` — files, a skipped
/// one's outcome being cached as well — and a line saying what
/// went wrong with the cache when something did), then each non-empty file list: its heading,
/// the first [`LISTED_FILES`] entries (`  path: reason`) and `  … and N more`.
pub fn data_lines(s: &DatasetSummary) -> Vec<String> {
    let classes = if s.classes.is_empty() {
        "unlabelled".to_string()
    } else {
        format!("{} classes", s.classes.len())
    };
    // Files read: the images and the files that could not be used.
    let files = s.images + s.skipped.len();
    // Of the files the cache could serve (a dangling link is never read), how many it did; a
    // skipped file's outcome is cached too.
    let from_cache = s
        .cache
        .as_ref()
        .map(|c| format!("; {} of {} from the cache", c.hits, c.hits + c.decoded))
        .unwrap_or_default();
    let mut lines = vec![format!(
        "Data: {} images ({classes}) from {} at {} px, loaded in {:.2} s ({:.0} files/s{from_cache})",
        s.images,
        s.source,
        s.size,
        s.load_secs,
        files as f64 / s.load_secs.max(1e-9)
    )];
    if let Some(note) = s.cache.as_ref().and_then(|c| c.note.as_ref()) {
        lines.push(format!("Image cache: {note}"));
    }
    for (list, heading, noun) in [
        (
            &s.skipped,
            "Skipped {} that could not be used:",
            ("file", "files"),
        ),
        (
            &s.partial,
            "Used {} only partly decoded:",
            ("file", "files"),
        ),
        (&s.ignored, "Ignored {} on purpose:", ("entry", "entries")),
    ] {
        lines.extend(file_list(list, heading, noun));
    }
    lines
}

/// On a labelled folder of more than [`crate::eval::embed::MONITOR_IMAGES`] images: that the
/// live kNN monitor measures on an even subset, so `pretext eval` (every image) gives other
/// figures. `kNN monitor: on 1000 of 1906 images, evenly spread (…)`.
pub fn monitor_subset_line(s: &DatasetSummary) -> Option<String> {
    let n = crate::eval::embed::MONITOR_IMAGES;
    // With fewer than two classes the monitor measures no accuracy at all.
    (s.classes.len() >= 2 && s.images > n).then(|| {
        format!(
            "kNN monitor: on {n} of {} images, evenly spread, the same each time (pretext eval \
             judges all of them: its kNN bank is larger, so its figures are usually higher)",
            s.images
        )
    })
}

/// A heading whose `{}` becomes the count with its noun (singular, plural), then the entries;
/// nothing for an empty list.
fn file_list(list: &[(String, String)], heading: &str, noun: (&str, &str)) -> Vec<String> {
    if list.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![heading.replace("{}", &crate::text::count(list.len(), noun.0, noun.1))];
    lines.extend(
        list.iter()
            .take(LISTED_FILES)
            .map(|(path, reason)| format!("  {path}: {reason}")),
    );
    if list.len() > LISTED_FILES {
        lines.push(format!("  … and {} more", list.len() - LISTED_FILES));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(skipped: usize) -> DatasetSummary {
        DatasetSummary {
            source: "photos".into(),
            images: 10,
            size: 32,
            classes: Vec::new(),
            skipped: (0..skipped)
                .map(|i| (format!("bad{i}.png"), "not an image".into()))
                .collect(),
            ignored: Vec::new(),
            partial: Vec::new(),
            load_secs: 2.0,
            cache: None,
        }
    }

    fn epoch(epochs: usize) -> EpochSummary {
        use crate::config::TaskKind;
        EpochSummary {
            epoch: 56,
            epochs,
            step: 900,
            tasks: vec![crate::train::TaskMetrics {
                task: TaskKind::Rotation,
                loss: 0.5,
                metric: 0.75,
                baseline: None,
                metric_info: crate::tasks::metric_info(TaskKind::Rotation),
            }],
            loss: 0.5,
            images_per_s: 100.0,
            wall_s: 60.0,
        }
    }

    #[test]
    fn a_run_the_time_limit_ends_counts_epochs_without_a_total() {
        let unlimited = crate::config::EPOCHS_UNTIL_TIME_LIMIT;
        assert!(epoch_line(&epoch(60)).starts_with("Epoch 56/60 Loss: 0.500"));
        assert!(epoch_line(&epoch(unlimited)).starts_with("Epoch 56 Loss: 0.500"));
        assert_eq!(epoch_json(&epoch(60))["epochs"], 60);
        assert!(epoch_json(&epoch(unlimited))["epochs"].is_null());
        assert_eq!(epoch_of(3, unlimited + 1), "3");
    }

    #[test]
    fn a_knn_measurement_in_json_has_every_stage_or_says_why_not() {
        let gauges = crate::eval::embed::gauges(&[vec![1.0, 0.0], vec![0.0, 1.0]]);
        let mut k = KnnMetrics {
            step: 200,
            epoch: 3,
            stages: vec![("stem".into(), 0.25), ("l3 (z)".into(), 0.5)],
            not_measured: None,
            raw_pixels: Some(0.2),
            gauges,
            head_gauges: vec![(
                crate::config::TaskKind::Simsiam,
                crate::eval::embed::gauges(&[vec![1.0, 1.0], vec![1.0, 1.0]]),
            )],
        };
        let v = knn_json(&k);
        assert_eq!(v["knn"]["step"], 200);
        assert_eq!(v["knn"]["top1"]["l3"], 0.5);
        assert_eq!(v["knn"]["raw_pixels"], 0.2);
        assert_eq!(v["knn"]["gauges"]["dimensions"], 2);
        // No NaN in JSON: a gauge that could not be computed is null.
        assert!(v["knn"]["output_gauges"]["simsiam"].is_object(), "{v}");
        assert!(serde_json::to_string(&v).is_ok());
        k.stages.clear();
        k.not_measured = Some(crate::eval::NotMeasured::NoLabels);
        let v = knn_json(&k);
        assert!(v["knn"]["top1"].is_null(), "{v}");
        assert!(
            v["knn"]["not_measured"]
                .as_str()
                .unwrap()
                .starts_with("no labels")
        );
    }

    #[test]
    fn a_large_labelled_folder_says_the_monitor_measures_a_subset() {
        let mut s = summary(0);
        assert_eq!(monitor_subset_line(&s), None, "unlabelled");
        s.classes = vec![("a".into(), 950), ("b".into(), 956)];
        s.images = 1906;
        let line = monitor_subset_line(&s).unwrap();
        assert!(
            line.starts_with("kNN monitor: on 1000 of 1906 images"),
            "{line}"
        );
        s.images = 1000;
        assert_eq!(monitor_subset_line(&s), None, "all of them");
        s.images = 1906;
        s.classes.truncate(1);
        assert_eq!(
            monitor_subset_line(&s),
            None,
            "one class: no accuracy measured"
        );
    }

    #[test]
    fn data_lines_name_five_files_then_count_the_rest() {
        let lines = data_lines(&summary(7));
        assert_eq!(
            lines[0],
            "Data: 10 images (unlabelled) from photos at 32 px, loaded in 2.00 s (8 files/s)"
        );
        assert_eq!(lines[1], "Skipped 7 files that could not be used:");
        assert_eq!(lines[2], "  bad0.png: not an image");
        assert_eq!(lines[7], "  … and 2 more");
        assert_eq!(lines.len(), 8);
        assert_eq!(data_lines(&summary(0)).len(), 1);
    }

    #[test]
    fn a_cached_load_says_how_many_files_came_from_the_cache() {
        let mut s = summary(0);
        s.cache = Some(crate::data::CacheUse {
            hits: 9,
            decoded: 1,
            note: Some("damaged".into()),
        });
        let lines = data_lines(&s);
        assert_eq!(
            lines[0],
            "Data: 10 images (unlabelled) from photos at 32 px, loaded in 2.00 s (5 files/s; 9 of 10 from the cache)"
        );
        assert_eq!(lines[1], "Image cache: damaged");
    }
}
