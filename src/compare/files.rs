//! The contest folder's result files: ranking.md, results.csv, results.json and chart.png, each
//! replaced atomically, all written again after every task.

use std::path::Path;

use serde::Serialize;

use super::{
    CHART_FILE, CompareError, ContestSpec, ContestState, RANKING_FILE, RESULTS_CSV, RESULTS_JSON,
    Ranking, Reference, TaskResult,
};
use crate::model::checkpoint::write_atomic;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CompareError> {
    let path = dir.join(name);
    write_atomic(&path, bytes).map_err(|source| CompareError::Write { path, source })
}

/// Writes every result file of the contest as it stands.
pub(super) fn write_all(
    dir: &Path,
    spec: &ContestSpec,
    state: &ContestState,
    ranking: &Ranking,
    images: usize,
) -> Result<(), CompareError> {
    let md = super::lines::markdown(spec, state, ranking, images);
    write(dir, RANKING_FILE, md.as_bytes())?;
    write(dir, RESULTS_CSV, &csv(ranking, dir)?)?;
    let json = serde_json::json!({
        "spec": spec,
        "images": images,
        "cpu": state.cpu,
        "started": state.created,
        "ranking": ranking,
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| CompareError::Write {
        path: dir.join(RESULTS_JSON),
        source: e.into(),
    })?;
    write(dir, RESULTS_JSON, text.as_bytes())?;
    let png = super::chart::draw(ranking).map_err(CompareError::Chart)?;
    write(dir, CHART_FILE, &png)
}

/// One row of results.csv: a task (`kind` task, with its rank) or a reference (`kind`
/// reference). Empty cells where a number does not apply.
#[derive(Serialize)]
struct Row {
    rank: Option<usize>,
    name: String,
    kind: &'static str,
    knn_top1: Option<f64>,
    knn_stage: Option<String>,
    knn_stem: Option<f64>,
    knn_l1: Option<f64>,
    knn_l2: Option<f64>,
    knn_l3: Option<f64>,
    linear_probe: Option<f64>,
    rankme: Option<f64>,
    uniformity: Option<f64>,
    alignment: Option<f64>,
    std_of_l2_normalized: Option<f64>,
    collapsed: Option<bool>,
    epochs: Option<usize>,
    steps: Option<u64>,
    images_seen: Option<u64>,
    train_s: Option<f64>,
    final_loss: Option<f64>,
    run_dir: Option<String>,
}

fn stage(knn: &[super::StageScore], i: usize) -> Option<f64> {
    knn.get(i).map(|s| s.top1)
}

fn task_row(rank: usize, r: &TaskResult, dir: &Path) -> Row {
    let g = &r.gauges;
    Row {
        rank: Some(rank),
        name: r.task.name().into(),
        kind: "task",
        knn_top1: r.best_knn.as_ref().map(|b| b.top1),
        knn_stage: r.best_knn.as_ref().map(|b| b.stage.clone()),
        knn_stem: stage(&r.knn, 0),
        knn_l1: stage(&r.knn, 1),
        knn_l2: stage(&r.knn, 2),
        knn_l3: stage(&r.knn, 3),
        linear_probe: r.probe,
        rankme: Some(g.rankme),
        uniformity: Some(g.uniformity),
        alignment: g.alignment,
        std_of_l2_normalized: Some(g.std_of_l2_normalized),
        collapsed: Some(r.collapsed),
        epochs: Some(r.epochs),
        steps: Some(r.steps),
        images_seen: Some(r.images_seen),
        train_s: Some(r.train_s),
        final_loss: r.final_loss.is_finite().then_some(r.final_loss),
        run_dir: Some(
            r.run_dir
                .strip_prefix(dir)
                .unwrap_or(&r.run_dir)
                .display()
                .to_string(),
        ),
    }
}

fn reference_row(f: &Reference) -> Row {
    let g = f.gauges.as_ref();
    let per_stage = f.knn.len() == crate::eval::embed::STAGES.len();
    let at = |i| if per_stage { stage(&f.knn, i) } else { None };
    Row {
        rank: None,
        name: f.label.clone(),
        kind: "reference",
        knn_top1: f.best_knn.as_ref().map(|b| b.top1),
        knn_stage: f.best_knn.as_ref().map(|b| b.stage.clone()),
        knn_stem: at(0),
        knn_l1: at(1),
        knn_l2: at(2),
        knn_l3: at(3),
        linear_probe: f.probe,
        rankme: g.map(|g| g.rankme),
        uniformity: g.map(|g| g.uniformity),
        alignment: g.and_then(|g| g.alignment),
        std_of_l2_normalized: g.map(|g| g.std_of_l2_normalized),
        collapsed: g.map(crate::eval::embed::collapsed),
        epochs: None,
        steps: None,
        images_seen: None,
        train_s: None,
        final_loss: None,
        run_dir: None,
    }
}

fn csv(ranking: &Ranking, dir: &Path) -> Result<Vec<u8>, CompareError> {
    let err = |e: csv::Error| CompareError::Write {
        path: dir.join(RESULTS_CSV),
        source: std::io::Error::other(e.to_string()),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    for (i, r) in ranking.rows.iter().enumerate() {
        w.serialize(task_row(i + 1, r, dir)).map_err(err)?;
    }
    for f in ranking.random_init.iter().chain(&ranking.raw_pixels) {
        w.serialize(reference_row(f)).map_err(err)?;
    }
    w.into_inner().map_err(|e| err(e.into_error().into()))
}
