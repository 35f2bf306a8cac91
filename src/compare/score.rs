//! Judging: the references once per contest, each task's encoder, and the ranking.

use std::path::Path;
use std::time::Instant;

use super::{
    CompareError, ContestState, Ranking, Reference, References, StageScore, TaskResult, TaskState,
};
use crate::config::TaskKind;
use crate::data::Dataset;
use crate::eval::embed::{self, EncoderScores, STAGES};
use crate::eval::judge::{self, EvalFile};
use crate::model::Model;
use crate::train::run_dir;

/// The criterion on labelled data.
pub const KNN_CRITERION: &str = "kNN top-1 (best stage)";
/// The criterion on unlabelled data.
pub const RANKME_CRITERION: &str = "RankMe (label-free proxy)";

/// Said wherever an unlabelled contest is ranked.
pub const PROXY_NOTE: &str = "These images have no labels (or too few to hold any out), so no \
    accuracy can be measured: the tasks are ranked by RankMe (Garrido et al., ICML 2023), the \
    effective rank of the embeddings. It is a label-free proxy that tends to follow downstream \
    accuracy, not an accuracy. Uniformity and alignment (lower is better for both) are shown \
    beside it.";

/// kNN top-1 per stage, with stage names.
fn stages(knn: &[f64]) -> Vec<StageScore> {
    STAGES
        .iter()
        .zip(knn)
        .map(|(s, &top1)| StageScore {
            stage: (*s).to_string(),
            top1,
        })
        .collect()
}

/// The stage with the best kNN top-1 (the last of equals, z preferred).
fn best(knn: &[StageScore]) -> Option<StageScore> {
    knn.iter()
        .fold(None::<&StageScore>, |b, s| match b {
            Some(b) if b.top1 > s.top1 => Some(b),
            _ => Some(s),
        })
        .cloned()
}

/// The random init of each input kind the tasks use (same seed for all: the encoder's init
/// is derived from each parameter's name, so heads do not change it) and raw pixels, judged
/// once.
pub(super) fn references(
    spec: &super::ContestSpec,
    data: &Dataset,
) -> Result<References, CompareError> {
    let measurable = embed::can_measure(data);
    let labelled = measurable.is_ok();
    let mut channels: Vec<usize> = spec
        .tasks
        .iter()
        .map(|t| crate::tasks::input_channels(&[*t]))
        .collect();
    channels.sort_by(|a, b| b.cmp(a));
    channels.dedup();
    let device = crate::model::device::open(spec.base.device)?;
    let mut random_init = Vec::new();
    let mut random_scores = Vec::new();
    for c in channels {
        let model = Model::new(device.clone(), c)?;
        model.init_weights(spec.base.seed)?;
        let label = if c == 1 {
            "random init (L* input)"
        } else {
            "random init"
        };
        let (knn, probe, gauges) = match embed::score_encoder(&model, data)? {
            Ok(s) => {
                let out = (stages(&s.knn), Some(s.probe), s.gauges.clone());
                random_scores.push((c, s));
                out
            }
            Err(_) => (Vec::new(), None, embed::z_gauges(&model, data)?),
        };
        random_init.push(Reference {
            label: label.into(),
            input_channels: c,
            best_knn: best(&knn),
            knn,
            probe,
            gauges: Some(gauges),
        });
    }
    let pixel_scores = embed::score_pixels(data).ok();
    let raw_pixels = pixel_scores.map(|p| {
        let knn = vec![StageScore {
            stage: "pixels".into(),
            top1: p.knn,
        }];
        Reference {
            label: "raw pixels".into(),
            input_channels: 0,
            best_knn: best(&knn),
            knn,
            probe: Some(p.probe),
            gauges: None,
        }
    });
    Ok(References {
        labelled,
        not_measured: measurable.err().map(|w| w.to_string()),
        random_init,
        raw_pixels,
        random_scores,
        pixel_scores,
    })
}

/// Judges a task's trained encoder (kNN per stage, probe, gauges on labelled data; the gauges
/// alone otherwise), writes its run directory's eval.json, and reads its training from the
/// run directory (steps and training seconds from the resume checkpoint, the final loss from
/// metrics.csv).
pub(super) fn judge_task(
    task: TaskKind,
    run: &Path,
    data: &Dataset,
    refs: &References,
) -> Result<TaskResult, CompareError> {
    let started = Instant::now();
    // Its training has let go of the folder; held until eval.json is written, so no other
    // process continues the run between its training and its judging.
    let _lock = crate::train::run_dir::WriterLock::take(run)?;
    let (config, weights, models) = judge::load_run(run, data)?;
    let channels = crate::tasks::input_channels(&config.tasks);
    let random: Option<&EncoderScores> = refs
        .random_scores
        .iter()
        .find(|(c, _)| *c == channels)
        .map(|(_, s)| s);
    let scored = match (random, refs.pixel_scores) {
        (Some(random), Some(pixels)) => embed::score_encoder(&models.trained, data)?
            .map(|t| embed::report(data, t, random, pixels)),
        _ => Err(embed::can_measure(data)
            .err()
            .unwrap_or(crate::eval::NotMeasured::NoLabels)),
    };
    let gauges = match &scored {
        Ok(r) => r.gauges_trained.clone(),
        Err(_) => embed::z_gauges(&models.trained, data)?,
    };
    let eval_s = started.elapsed().as_secs_f64();
    EvalFile::new(data, scored.as_ref().map_err(|w| *w), &gauges, eval_s)
        .at_step(models.step)
        .write(run)?;
    let knn = match &scored {
        Ok(r) => r
            .knn
            .iter()
            .map(|s| StageScore {
                stage: s.stage.to_string(),
                top1: s.trained,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let meta = run_dir::checkpoint_metadata(&weights).unwrap_or_default();
    let number = |key: &str| meta.get(key).and_then(|v| v.parse::<f64>().ok());
    let rows = run_dir::read_metrics(run).unwrap_or_default();
    let own: Vec<&run_dir::MetricsRow> = rows.iter().filter(|r| r.task == task.name()).collect();
    let steps = number("step")
        .map(|s| s as u64)
        .or_else(|| own.last().map(|r| r.step))
        .unwrap_or(0);
    let last_epoch = own.last().map(|r| r.epoch);
    let losses: Vec<f64> = own
        .iter()
        .filter(|r| Some(r.epoch) == last_epoch)
        .filter_map(|r| r.loss)
        .collect();
    let final_loss = if losses.is_empty() {
        f64::NAN
    } else {
        losses.iter().sum::<f64>() / losses.len() as f64
    };
    let batch = config.batch.min(data.len()) as u64;
    Ok(TaskResult {
        task,
        run_dir: run.to_path_buf(),
        epochs: last_epoch.unwrap_or(0),
        steps,
        train_s: number("train_s").unwrap_or(0.0),
        images_seen: steps * batch,
        final_loss,
        best_knn: best(&knn),
        knn,
        probe: scored.as_ref().ok().map(|r| r.probe_trained),
        collapsed: embed::collapsed(&gauges),
        gauges,
        eval_s,
    })
}

/// A result's value of the criterion: best-stage kNN top-1 (labelled) or RankMe.
pub(super) fn score(labelled: bool, r: &TaskResult) -> f64 {
    if labelled {
        r.best_knn.as_ref().map_or(f64::NEG_INFINITY, |s| s.top1)
    } else {
        r.gauges.rankme
    }
}

/// The tasks judged so far, best first (ties: the linear probe, then the spec's order), with
/// the reference rows, the criterion and what the reader must know.
pub fn ranking(state: &ContestState) -> Ranking {
    let refs = state.references.as_ref();
    let labelled = refs.is_some_and(|r| r.labelled);
    let mut rows: Vec<TaskResult> = Vec::new();
    let mut pending = Vec::new();
    for e in &state.tasks {
        match &e.state {
            TaskState::Done { result } => rows.push((**result).clone()),
            _ => pending.push(e.task),
        }
    }
    rows.sort_by(|a, b| {
        score(labelled, b)
            .total_cmp(&score(labelled, a))
            .then_with(|| b.probe.unwrap_or(0.0).total_cmp(&a.probe.unwrap_or(0.0)))
    });
    let mut notes = Vec::new();
    if !labelled {
        if let Some(why) = refs.and_then(|r| r.not_measured.as_ref()) {
            notes.push(format!("kNN and linear probe: not measured ({why})."));
        }
        notes.push(PROXY_NOTE.to_string());
    }
    let collapsed: Vec<&str> = rows
        .iter()
        .filter(|r| r.collapsed)
        .map(|r| r.task.name())
        .collect();
    if !collapsed.is_empty() {
        notes.push(format!(
            "Collapsed (nearly all images on one direction or in very few dimensions): {}.",
            collapsed.join(", ")
        ));
    }
    Ranking {
        labelled,
        criterion: if labelled {
            KNN_CRITERION
        } else {
            RANKME_CRITERION
        }
        .into(),
        rows,
        pending,
        random_init: refs.map(|r| r.random_init.clone()).unwrap_or_default(),
        raw_pixels: refs.and_then(|r| r.raw_pixels.clone()),
        note: (!notes.is_empty()).then(|| notes.join(" ")),
    }
}
