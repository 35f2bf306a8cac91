//! The contest's lines, formatted once for every front end (the CLI prints them, ranking.md
//! holds them, the app can show them): the budget, a task's summary, the ranking table.

use std::time::SystemTime;

use super::{Budget, ContestSpec, ContestState, Ranking, Reference, TaskResult};
use crate::data::Dataset;
use crate::text::{count, minutes};

/// `2026-11-28 20:54:00 UTC`.
pub fn date(t: SystemTime) -> String {
    let s = crate::train::run_dir::timestamp(t);
    match (
        s.get(0..4),
        s.get(4..6),
        s.get(6..8),
        s.get(9..11),
        s.get(11..13),
        s.get(13..15),
    ) {
        (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(se)) => {
            format!("{y}-{mo}-{d} {h}:{mi}:{se} UTC")
        }
        _ => s,
    }
}

/// `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The budget in words, with the rounding to whole epochs said:
/// `Budget: 3,000 images seen per task → 10 epochs of 300 images (whole batches of 128: 2,560
/// images)` or `Budget: 2 minutes of training per task`.
pub fn budget_line(spec: &ContestSpec, data: &Dataset, epochs: usize) -> String {
    match spec.budget {
        Budget::Minutes(m) => format!("Budget: {} of training per task", minutes(m)),
        Budget::Images(n) => {
            let len = data.len().max(1);
            let batch = spec.base.batch.min(len);
            let per_epoch = (len / batch).max(1) * batch;
            let seen = (epochs * per_epoch) as u64;
            let mut line = format!(
                "Budget: {} images seen per task → {} of {} images",
                thousands(n),
                count(epochs, "epoch", "epochs"),
                thousands(len as u64)
            );
            if seen != n {
                line.push_str(&format!(
                    " (rounded to whole epochs of whole batches of {batch}: {} images)",
                    thousands(seen)
                ));
            }
            line
        }
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "—".to_string(), f)
}

/// `rotation: 10 epochs, 20 steps, 2,560 images in 12.3 s, final loss 0.812 — kNN top-1 41.2%
/// (l2), linear probe 38.0%, RankMe 23.4, uniformity -2.10, alignment 0.52`.
pub fn task_line(r: &TaskResult) -> String {
    let mut line = format!(
        "{}: {}, {}, {} images in {:.1} s, final loss {:.3}",
        r.task,
        count(r.epochs, "epoch", "epochs"),
        count(r.steps, "step", "steps"),
        thousands(r.images_seen),
        r.train_s,
        r.final_loss
    );
    line.push_str(" —");
    if let Some(b) = &r.best_knn {
        line.push_str(&format!(" kNN top-1 {} ({}),", pct(b.top1), b.stage));
    }
    if let Some(p) = r.probe {
        line.push_str(&format!(" linear probe {},", pct(p)));
    }
    line.push_str(&format!(
        " RankMe {:.1}, uniformity {:.2}, alignment {}",
        r.gauges.rankme,
        r.gauges.uniformity,
        opt(r.gauges.alignment, |a| format!("{a:.2}"))
    ));
    if r.collapsed {
        line.push_str(" (collapsed)");
    }
    line
}

/// The ranking as a Markdown table, best first, the references below the tasks.
pub fn ranking_table(ranking: &Ranking) -> Vec<String> {
    let mut lines = Vec::new();
    if ranking.labelled {
        lines.push(
            "| # | Task | kNN top-1 (best stage) | Stage | Linear probe | RankMe | Uniformity | Alignment | Images seen | Training s | Final loss |"
                .into(),
        );
        lines.push("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|".into());
        for (i, r) in ranking.rows.iter().enumerate() {
            lines.push(format!(
                "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {} | {} | {:.1} | {:.3} |",
                i + 1,
                task_cell(r),
                opt(r.best_knn.as_ref().map(|b| b.top1), pct),
                r.best_knn.as_ref().map_or("—", |b| b.stage.as_str()),
                opt(r.probe, pct),
                r.gauges.rankme,
                r.gauges.uniformity,
                opt(r.gauges.alignment, |a| format!("{a:.2}")),
                thousands(r.images_seen),
                r.train_s,
                r.final_loss
            ));
        }
        for f in references(ranking) {
            lines.push(format!(
                "| — | *{}* | {} | {} | {} | {} | {} | {} | | | |",
                f.label,
                opt(f.best_knn.as_ref().map(|b| b.top1), pct),
                f.best_knn.as_ref().map_or("—", |b| b.stage.as_str()),
                opt(f.probe, pct),
                opt(f.gauges.as_ref().map(|g| g.rankme), |v| format!("{v:.1}")),
                opt(f.gauges.as_ref().map(|g| g.uniformity), |v| format!(
                    "{v:.2}"
                )),
                opt(f.gauges.as_ref().and_then(|g| g.alignment), |v| format!(
                    "{v:.2}"
                )),
            ));
        }
    } else {
        lines.push(
            "| # | Task | RankMe | Uniformity | Alignment | std of L2-normalised z | Images seen | Training s | Final loss |"
                .into(),
        );
        lines.push("|---|---|---:|---:|---:|---:|---:|---:|---:|".into());
        for (i, r) in ranking.rows.iter().enumerate() {
            lines.push(format!(
                "| {} | {} | {:.1} | {:.2} | {} | {:.4} | {} | {:.1} | {:.3} |",
                i + 1,
                task_cell(r),
                r.gauges.rankme,
                r.gauges.uniformity,
                opt(r.gauges.alignment, |a| format!("{a:.2}")),
                r.gauges.std_of_l2_normalized,
                thousands(r.images_seen),
                r.train_s,
                r.final_loss
            ));
        }
        for f in references(ranking) {
            let g = f.gauges.as_ref();
            lines.push(format!(
                "| — | *{}* | {} | {} | {} | {} | | | |",
                f.label,
                opt(g.map(|g| g.rankme), |v| format!("{v:.1}")),
                opt(g.map(|g| g.uniformity), |v| format!("{v:.2}")),
                opt(g.and_then(|g| g.alignment), |v| format!("{v:.2}")),
                opt(g.map(|g| g.std_of_l2_normalized), |v| format!("{v:.4}")),
            ));
        }
    }
    lines
}

/// The reference rows: each random init, then raw pixels.
fn references(ranking: &Ranking) -> impl Iterator<Item = &Reference> {
    ranking.random_init.iter().chain(&ranking.raw_pixels)
}

fn task_cell(r: &TaskResult) -> String {
    if r.collapsed {
        format!("{} (collapsed)", r.task)
    } else {
        r.task.to_string()
    }
}

/// `Ranked by kNN top-1 (best stage): every fifth image of each class held out, k = 20.`
pub fn criterion_line(ranking: &Ranking) -> String {
    if ranking.labelled {
        format!(
            "Ranked by {}: weighted kNN (k = {}, t = {}) on the encoder's pooled features, every \
             fifth image of each class held out; the linear probe is on z.",
            ranking.criterion,
            crate::eval::embed::KNN_K,
            crate::eval::embed::KNN_T
        )
    } else {
        format!("Ranked by {}.", ranking.criterion)
    }
}

/// ranking.md: what was compared on what (data, budget, CPU, date), the criterion, the note,
/// the table, and the tasks still to come.
pub fn markdown(
    spec: &ContestSpec,
    state: &ContestState,
    ranking: &Ranking,
    images: usize,
) -> String {
    let mut out = vec![
        format!("# Contest: {}", spec.tasks_label().replace('+', ", ")),
        String::new(),
        format!(
            "- Data: {} ({images} images at {} px)",
            spec.base.data, spec.base.size
        ),
        format!(
            "- Budget: {}",
            match spec.budget {
                Budget::Minutes(m) => format!("{} of training per task", minutes(m)),
                Budget::Images(n) => format!(
                    "{} source images seen per task, rounded to {}",
                    thousands(n),
                    count(spec.budget.epochs(images), "whole epoch", "whole epochs")
                ),
            }
        ),
        format!(
            "- Batch {}, seed {}, device {}",
            spec.base.batch, spec.base.seed, spec.base.device
        ),
        format!("- CPU: {}", state.cpu),
        format!("- Started: {}", state.created),
        String::new(),
        criterion_line(ranking),
        String::new(),
    ];
    if let Some(note) = &ranking.note {
        out.push(format!("**Note.** {note}"));
        out.push(String::new());
    }
    out.extend(ranking_table(ranking));
    if !ranking.pending.is_empty() {
        out.push(String::new());
        let names: Vec<&str> = ranking.pending.iter().map(|t| t.name()).collect();
        out.push(format!(
            "Not judged yet (the contest was stopped or is running): {}.",
            names.join(", ")
        ));
    }
    out.push(String::new());
    out.join("\n")
}
