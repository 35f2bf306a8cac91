//! The Math panel's steps for the two-view methods beyond SimCLR: the stop-gradient and the
//! negative cosine (SimSiam, BYOL), InfoNCE against MoCo's queue, the momentum update of a
//! teacher, Barlow Twins' cross-correlation and VICReg's three terms. Every loss is recomputed
//! from the frozen batch's numbers with the trainer's own functions ([`crate::model::losses`]).

use candle_core::Tensor;

use super::{Picture, Step, StepKind, TaskReport, fmt, tensor2, value};
use crate::config::TaskKind;
use crate::model::losses::{self, VicRegWeights};
use crate::model::ops;

/// What a two-view method computed on the frozen batch (2N views: the N first views, then the
/// N second views).
#[derive(Clone, Debug)]
pub struct SiameseMath {
    pub method: TaskKind,
    /// The online branch (2N, D): predictions p (SimSiam, BYOL), queries q (MoCo), embeddings
    /// (Barlow Twins, VICReg).
    pub online: Vec<Vec<f32>>,
    /// The target branch (2N, D): SimSiam's projections behind the stop-gradient, BYOL's and
    /// MoCo's momentum teacher's; empty for Barlow Twins and VICReg.
    pub target: Vec<Vec<f32>>,
    /// MoCo: the queue's keys (K, D).
    pub queue: Vec<Vec<f32>>,
    pub temperature: f64,
    pub barlow_lambda: f64,
    pub vicreg: VicRegWeights,
    /// The teacher's momentum m of the last update (BYOL, MoCo).
    pub momentum: Option<f64>,
    pub stop_gradient: bool,
    /// One teacher weight: (the student's tensor name, θₜ, θₛ) of its first element.
    pub teacher_example: Option<(String, f64, f64)>,
}

/// The numbers behind a two-view loss.
#[derive(Clone, Debug, PartialEq)]
pub struct SiameseNumbers {
    /// The loss as the trainer's function computes it.
    pub loss: f64,
    /// Per view: cos(pᵢ, target of the other view) (SimSiam, BYOL) or ℓᵢ (MoCo); empty otherwise.
    pub per_view: Vec<f64>,
    /// The named terms before their weights (Barlow Twins: on- and off-diagonal; VICReg:
    /// invariance, variance, covariance).
    pub terms: Vec<(&'static str, f64)>,
    /// C (Barlow Twins) or Cov(z₁) (VICReg), D × D, and D.
    pub matrix: Option<(Vec<f32>, usize)>,
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    Ok(f64::from(t.to_scalar::<f32>()?))
}

/// Recomputes the loss of `m` with the trainer's functions.
///
/// # Errors
/// When the rows are ragged or empty.
pub fn siamese_numbers(m: &SiameseMath) -> candle_core::Result<SiameseNumbers> {
    let online = tensor2(&m.online)?;
    let n = m.online.len() / 2;
    match m.method {
        TaskKind::Simsiam | TaskKind::Byol => {
            let target = crate::tasks::siamese::swap_views(&tensor2(&m.target)?)?;
            let loss = scalar(&losses::negative_cosine(&online, &target)?)?;
            let per_view = losses::row_cosine(&online, &target)?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f64::from)
                .collect();
            Ok(SiameseNumbers {
                loss,
                per_view,
                terms: Vec::new(),
                matrix: None,
            })
        }
        TaskKind::Moco => {
            let keys = crate::tasks::siamese::swap_views(&tensor2(&m.target)?)?;
            let queue = if m.queue.is_empty() {
                None
            } else {
                Some(tensor2(&m.queue)?)
            };
            let (loss, logits) =
                losses::moco_info_nce(&online, &keys, queue.as_ref(), m.temperature)?;
            let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
            let per_view = logp
                .narrow(1, 0, 1)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(|v| -f64::from(v))
                .collect();
            Ok(SiameseNumbers {
                loss: scalar(&loss)?,
                per_view,
                terms: Vec::new(),
                matrix: None,
            })
        }
        TaskKind::BarlowTwins => {
            let (a, b) = (online.narrow(0, 0, n)?, online.narrow(0, n, n)?);
            let bt = losses::barlow_twins(&a, &b, m.barlow_lambda)?;
            let d = bt.cross_correlation.dim(0)?;
            Ok(SiameseNumbers {
                loss: scalar(&bt.loss)?,
                per_view: Vec::new(),
                terms: vec![
                    ("Σᵢ (1 − Cᵢᵢ)²", scalar(&bt.on_diagonal)?),
                    ("Σᵢ≠ⱼ Cᵢⱼ²", scalar(&bt.off_diagonal)?),
                ],
                matrix: Some((bt.cross_correlation.flatten_all()?.to_vec1::<f32>()?, d)),
            })
        }
        _ => {
            let (a, b) = (online.narrow(0, 0, n)?, online.narrow(0, n, n)?);
            let v = losses::vicreg(&a, &b, m.vicreg)?;
            let d = v.covariance_matrix.dim(0)?;
            Ok(SiameseNumbers {
                loss: scalar(&v.loss)?,
                per_view: Vec::new(),
                terms: vec![
                    ("invariance", scalar(&v.invariance)?),
                    ("variance", scalar(&v.variance)?),
                    ("covariance", scalar(&v.covariance)?),
                ],
                matrix: Some((v.covariance_matrix.flatten_all()?.to_vec1::<f32>()?, d)),
            })
        }
    }
}

/// The method's steps after the representation and the views.
pub(super) fn steps(t: &TaskReport, m: &SiameseMath, i: usize) -> Vec<Step> {
    let Ok(c) = siamese_numbers(m) else {
        return Vec::new();
    };
    let mut out = vec![match m.method {
        TaskKind::Simsiam | TaskKind::Byol => prediction_step(t, m, &c, i),
        TaskKind::Moco => queue_step(t, m, &c, i),
        TaskKind::BarlowTwins => barlow_step(t, m, &c),
        _ => vicreg_step(t, m, &c),
    }];
    if let Some(step) = momentum_step(m) {
        out.push(step);
    }
    out
}

fn trainer_values(t: &TaskReport, c: &SiameseNumbers, function: &str) -> Vec<super::Value> {
    vec![
        value(
            format!("L by the trainer's function ({function})"),
            c.loss,
            "recomputed from the numbers shown",
        ),
        value(
            "trainer's loss",
            t.trainer_loss,
            "the task's forward() on this batch",
        ),
    ]
}

fn prediction_step(t: &TaskReport, m: &SiameseMath, c: &SiameseNumbers, i: usize) -> Step {
    let two_n = c.per_view.len().max(1);
    let i = i.min(two_n - 1);
    let other = ops::positive_index(i, two_n);
    let mean = c.per_view.iter().sum::<f64>() / two_n as f64;
    let (target, why) = if m.method == TaskKind::Byol {
        (
            "the momentum teacher's projection ξ(x)",
            "The target comes from the teacher, a slow moving average of the student, and no \
             gradient reaches it.",
        )
    } else if m.stop_gradient {
        (
            "sg(z), the same projector's output with the gradient stopped",
            "sg(·) makes the target a constant for this step: the gradient only moves the \
             predictor side. Without it, the cheapest way to agree is to map every image to the \
             same point — collapse (Chen & He 2021, §4.1).",
        )
    } else {
        (
            "z, WITHOUT the stop-gradient",
            "The stop-gradient is off: both sides move to agree, and the network is free to map \
             every image to the same point. Watch the collapse gauges (std of L2-normalised z, \
             RankMe) fall.",
        )
    };
    let mut values = vec![
        value(
            format!("cos(p{i}, target{other})"),
            c.per_view[i],
            format!("view {i}'s prediction against view {other}'s target"),
        ),
        value("L = −mean cos", -mean, format!("−Σ cos / {two_n}")),
    ];
    values.extend(trainer_values(t, c, "losses::negative_cosine"));
    Step {
        kind: StepKind::Prediction,
        title: "Prediction and stop-gradient: D(p, z) = −cos(p, sg(z))".into(),
        formula: "L = ½ D(p₁, sg(z₂)) + ½ D(p₂, sg(z₁)),   D(p, z) = −p·z / (‖p‖‖z‖)".into(),
        text: format!(
            "Each view's prediction p = h(g(f(x))) must point the same way as the other view's \
             target, {target}. {why} The loss is −1 when every prediction matches perfectly."
        ),
        values,
        pictures: vec![Picture::Bars {
            label: "(cos + 1) / 2 per view — selected highlighted".into(),
            values: c
                .per_view
                .iter()
                .map(|v| ((v + 1.0) / 2.0) as f32)
                .collect(),
            highlight: Some(i),
            names: Vec::new(),
        }],
    }
}

fn queue_step(t: &TaskReport, m: &SiameseMath, c: &SiameseNumbers, i: usize) -> Step {
    let two_n = c.per_view.len().max(1);
    let i = i.min(two_n - 1);
    let other = ops::positive_index(i, two_n);
    let k = m.queue.len();
    let cos = |a: &[f32], b: &[f32]| -> f64 {
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let na = a.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        let nb = b.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        dot / (na * nb).max(1e-12)
    };
    let q = &m.online[i];
    let positive = m.target.get(other).map_or(0.0, |key| cos(q, key));
    let negatives: Vec<f32> = m.queue.iter().map(|key| cos(q, key) as f32).collect();
    let mean = c.per_view.iter().sum::<f64>() / two_n as f64;
    let mut values = vec![
        value("τ", m.temperature, "temperature"),
        value(
            "keys in the queue (K)",
            k as f64,
            "negatives: earlier batches' keys (random unit vectors until they come)",
        ),
        value(
            format!("q{i}·k₊"),
            positive,
            format!("cosine of view {i}'s query and view {other}'s key"),
        ),
        value(
            format!("ℓ{i}"),
            c.per_view[i],
            "−log( exp(q·k₊/τ) / (exp(q·k₊/τ) + Σ exp(q·kⱼ/τ)) )",
        ),
        value("L = mean ℓ", mean, format!("Σ ℓ / {two_n}")),
    ];
    values.extend(trainer_values(t, c, "losses::moco_info_nce"));
    let mut pictures = vec![Picture::Bars {
        label: "ℓ per view".into(),
        values: c.per_view.iter().map(|&v| v as f32).collect(),
        highlight: Some(i),
        names: Vec::new(),
    }];
    if !negatives.is_empty() {
        pictures.push(Picture::Bars {
            label: format!("(q{i}·kⱼ + 1) / 2 against the {k} queued keys"),
            values: negatives.iter().map(|v| (v + 1.0) / 2.0).collect(),
            highlight: None,
            names: Vec::new(),
        });
    }
    Step {
        kind: StepKind::Queue,
        title: "InfoNCE against a queue of negatives (MoCo)".into(),
        formula: "ℓ = −log( exp(q·k₊/τ) / (exp(q·k₊/τ) + Σⱼ exp(q·kⱼ/τ)) ),   kⱼ ∈ queue".into(),
        text: format!(
            "The query q comes from the student, the key k₊ of the other view from the momentum \
             encoder, and the negatives kⱼ are the keys of earlier batches kept in a queue of \
             {} — many more negatives than one batch holds, at the price of keys made by slightly \
             older weights. The queue starts as random unit vectors, as MoCo's code starts it, so \
             the first steps have negatives too. After the update this batch's keys enter the \
             queue and the oldest leave.",
            k.max(1)
        ),
        values,
        pictures,
    }
}

fn barlow_step(t: &TaskReport, m: &SiameseMath, c: &SiameseNumbers) -> Step {
    let on = c.terms.first().map_or(0.0, |x| x.1);
    let off = c.terms.get(1).map_or(0.0, |x| x.1);
    let mut values = vec![
        value(
            "Σᵢ (1 − Cᵢᵢ)²",
            on,
            "invariance: each dimension agrees across the views",
        ),
        value(
            "Σᵢ≠ⱼ Cᵢⱼ²",
            off,
            "redundancy: dimensions carry different information",
        ),
        value("λ", m.barlow_lambda, "weight of the off-diagonal term"),
        value(
            "L",
            on + m.barlow_lambda * off,
            format!("{} + {} × {}", fmt(on), m.barlow_lambda, fmt(off)),
        ),
    ];
    values.extend(trainer_values(t, c, "losses::barlow_twins"));
    let (matrix, d) = c.matrix.clone().unwrap_or_default();
    Step {
        kind: StepKind::CrossCorrelation,
        title: "Cross-correlation towards the identity (Barlow Twins)".into(),
        formula: "Cᵢⱼ = Σ_b ẑ₁ᵦᵢ ẑ₂ᵦⱼ / N (each dimension standardised over the batch),   L = Σᵢ (1 − Cᵢᵢ)² + λ Σᵢ≠ⱼ Cᵢⱼ²".into(),
        text: format!(
            "Each of the {d} dimensions of the two views' embeddings is standardised over the {} \
             images; C correlates every dimension of view 1 with every dimension of view 2. The \
             diagonal should be 1 (the views agree), the rest 0 (no two dimensions say the same \
             thing), so a collapsed constant embedding cannot win.",
            m.online.len() / 2
        ),
        values,
        pictures: vec![Picture::Heatmap {
            label: format!("C ({d}×{d}), blue −1, white 0, red 1"),
            rows: d,
            cols: d,
            values: matrix,
            range: (-1.0, 1.0),
            mark: None,
        }],
    }
}

fn vicreg_step(t: &TaskReport, m: &SiameseMath, c: &SiameseNumbers) -> Step {
    let term = |k: usize| c.terms.get(k).map_or(0.0, |x| x.1);
    let (inv, var, cov) = (term(0), term(1), term(2));
    let w = m.vicreg;
    let mut values = vec![
        value(
            "invariance s(z₁, z₂)",
            inv,
            "mean squared difference of the two embeddings",
        ),
        value(
            "variance v",
            var,
            "mean over dimensions and views of max(0, 1 − √(Var + ε))",
        ),
        value(
            "covariance c",
            cov,
            "Σ of squared off-diagonal covariances / D, both views",
        ),
        value(
            "L",
            w.invariance * inv + w.variance * var + w.covariance * cov,
            format!(
                "{} × {} + {} × {} + {} × {}",
                w.invariance,
                fmt(inv),
                w.variance,
                fmt(var),
                w.covariance,
                fmt(cov)
            ),
        ),
    ];
    values.extend(trainer_values(t, c, "losses::vicreg"));
    let (matrix, d) = c.matrix.clone().unwrap_or_default();
    Step {
        kind: StepKind::VarianceCovariance,
        title: "Variance, invariance, covariance (VICReg)".into(),
        formula: "L = λ s(z₁, z₂) + μ [v(z₁) + v(z₂)]/2 + ν [c(z₁) + c(z₂)]".into(),
        text: "Invariance pulls the two views' embeddings together; variance keeps every \
               dimension's standard deviation over the batch at 1 or more, so the embeddings \
               cannot shrink to a point; covariance pushes the dimensions to be uncorrelated, so \
               they cannot all say the same thing."
            .into(),
        values,
        pictures: vec![Picture::Heatmap {
            label: format!("Cov(z₁) ({d}×{d}), blue −1, white 0, red ≥ 1"),
            rows: d,
            cols: d,
            values: matrix,
            range: (-1.0, 1.0),
            mark: None,
        }],
    }
}

fn momentum_step(m: &SiameseMath) -> Option<Step> {
    let mm = m.momentum?;
    let mut values = vec![value(
        "m",
        mm,
        "rises from the start value to 1 on a cosine",
    )];
    if let Some((name, teacher, student)) = &m.teacher_example {
        values.push(value(
            format!("θₜ ({name}[0])"),
            *teacher,
            "the teacher's weight now",
        ));
        values.push(value(
            format!("θₛ ({name}[0])"),
            *student,
            "the student's weight now",
        ));
        values.push(value(
            "θₜ after the next update",
            mm * teacher + (1.0 - mm) * student,
            format!(
                "{} × {} + {} × {}",
                fmt(mm),
                fmt(*teacher),
                fmt(1.0 - mm),
                fmt(*student)
            ),
        ));
    }
    Some(Step {
        kind: StepKind::Momentum,
        title: "Momentum update of the teacher".into(),
        formula: "θₜ ← m θₜ + (1 − m) θₛ,   m = 1 − (1 − m₀)(cos(πk/K) + 1)/2".into(),
        text: "The teacher (key encoder) is not trained by the gradient: after every update it \
               moves a small step (1 − m) towards the student. A slowly moving target keeps the \
               targets consistent from batch to batch; m rises to 1 on BYOL's cosine schedule, so \
               the teacher settles as training ends."
            .into(),
        values,
        pictures: Vec::new(),
    })
}
