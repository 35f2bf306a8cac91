//! Step-through derivations of what the network computes, built from the numbers of a frozen
//! batch. No egui here: [`steps`] returns formulas, short explanations, values (each with how
//! it was computed) and pictures; the app's Math panel only draws them. The numbers come from
//! the same functions the trainer uses ([`crate::model::ops`] and each task's head).

mod siamese;

use candle_core::{DType, Device, Tensor};

pub use siamese::{SiameseMath, SiameseNumbers, siamese_numbers};

use crate::config::{ContrastiveLoss, TaskKind};
use crate::model::ops;

/// What one task computed on the frozen batch.
#[derive(Clone, Debug)]
pub enum TaskMath {
    /// Classification: −Σ log P(y|x) over softmax of logits (rotation, patch position).
    Likelihood {
        logits: Vec<Vec<f32>>,
        labels: Vec<u32>,
        /// Names of the classes, e.g. "90°".
        classes: Vec<String>,
    },
    /// DCL or NT-Xent over 2N projections (first views, then second views).
    Contrastive {
        projections: Vec<Vec<f32>>,
        temperature: f64,
        loss: ContrastiveLoss,
    },
    /// Mean squared error of a prediction against a target, over the weighted pixels.
    Reconstruction {
        /// Per image: channels × size × size, in the network's units.
        prediction: Vec<Vec<f32>>,
        target: Vec<Vec<f32>>,
        /// Per image: size × size weights (1 = counted); all ones when every pixel counts.
        weight: Vec<Vec<f32>>,
        channels: usize,
        size: usize,
    },
    /// MoCo, BYOL, SimSiam, Barlow Twins or VICReg on the 2N views.
    Siamese(Box<SiameseMath>),
    /// Class-rebalanced cross-entropy over a*b* bins at every pixel (colorization-bins).
    ColorClasses {
        /// Per image: logits, Q × size × size (bins × pixels).
        logits: Vec<Vec<f32>>,
        /// Per image: each pixel's K target bins, K × size × size.
        indices: Vec<Vec<u32>>,
        /// Per image: their soft encoding times the pixel's rebalancing weight, K × size × size.
        weights: Vec<Vec<f32>>,
        /// (a*, b*) of each bin's centre.
        bins: Vec<[f32; 2]>,
        size: usize,
    },
}

/// The frozen batch as one task saw it.
#[derive(Clone, Debug)]
pub struct TaskReport {
    pub task: TaskKind,
    /// The loss the trainer's own `forward` reports on this batch.
    pub trainer_loss: f64,
    /// What the network saw, per example, as RGB bytes (`size × size`).
    pub inputs: Vec<Vec<u8>>,
    pub input_size: usize,
    /// The originals the examples came from (before any transformation), as RGB bytes,
    /// `original_size × original_size × 3`.
    pub originals: Vec<Vec<u8>>,
    /// Side of the originals in px: the data set's working size, which two-view tasks'
    /// smaller views (`input_size`) do not share.
    pub original_size: usize,
    /// Representation z = f(x) of each input.
    pub z: Vec<Vec<f32>>,
    /// Descriptions of the transformation per example (contrastive views), if any.
    pub transforms: Vec<String>,
    pub math: TaskMath,
}

/// One real update θ ← θ − η∇L on a copy of the weights.
#[derive(Clone, Debug)]
pub struct Optimisation {
    pub eta: f64,
    /// ‖∇L‖ per parameter tensor, in model order.
    pub grad_norms: Vec<(String, f64)>,
    pub loss_before: f64,
    pub loss_after: f64,
}

/// Everything the Math panel shows for one frozen batch.
#[derive(Clone, Debug)]
pub struct MathReport {
    /// Training step at which the batch was frozen.
    pub step: u64,
    pub tasks: Vec<TaskReport>,
    pub optimisation: Option<Optimisation>,
}

/// A number with how it was computed (shown on hover).
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub label: String,
    pub value: f64,
    pub how: String,
}

fn value(label: impl Into<String>, value: f64, how: impl Into<String>) -> Value {
    Value {
        label: label.into(),
        value,
        how: how.into(),
    }
}

/// A picture of numbers.
#[derive(Clone, Debug, PartialEq)]
pub enum Picture {
    Bars {
        label: String,
        values: Vec<f32>,
        /// Index drawn in the accent colour.
        highlight: Option<usize>,
        /// Names under the bars, when few.
        names: Vec<String>,
    },
    Heatmap {
        label: String,
        rows: usize,
        cols: usize,
        values: Vec<f32>,
        range: (f32, f32),
        /// A marked cell (row, col).
        mark: Option<(usize, usize)>,
    },
    Image {
        label: String,
        size: usize,
        rgb: Vec<u8>,
    },
}

/// What a step is about; the panel uses it to know what a click on a picture selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    Representation,
    Transformation,
    Similarity,
    Contrastive,
    Likelihood,
    Reconstruction,
    /// SimSiam, BYOL: prediction against a stop-gradient target.
    Prediction,
    /// MoCo: InfoNCE against the queue.
    Queue,
    /// BYOL, MoCo: the teacher's momentum update.
    Momentum,
    /// Barlow Twins.
    CrossCorrelation,
    /// VICReg.
    VarianceCovariance,
    ColorClasses,
    Optimisation,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub kind: StepKind,
    pub title: String,
    pub formula: String,
    pub text: String,
    pub values: Vec<Value>,
    pub pictures: Vec<Picture>,
}

/// What the person chose to look at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Selection {
    /// Which task of the report.
    pub task: usize,
    /// Example (likelihood, reconstruction, representation) or anchor (contrastive).
    pub example: usize,
    /// The second element of a cosine-similarity pair.
    pub other: usize,
    /// Temperature τ for the contrastive steps (the trainer's by default).
    pub temperature: Option<f64>,
    /// The pixel (row, column) whose error the reconstruction step spells out.
    pub pixel: Option<(usize, usize)>,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            task: 0,
            example: 0,
            other: 1,
            temperature: None,
            pixel: None,
        }
    }
}

fn tensor2(rows: &[Vec<f32>]) -> candle_core::Result<Tensor> {
    let cols = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), cols), &Device::Cpu)
}

/// Contrastive quantities for every anchor at temperature τ, from the trainer's functions.
#[derive(Clone, Debug, PartialEq)]
pub struct ContrastiveNumbers {
    /// Cosine similarities (2N × 2N).
    pub sim: Vec<Vec<f32>>,
    /// ℓᵢ per anchor, summed here from the similarities.
    pub per_anchor: Vec<f64>,
    /// The loss as the trainer computes it (`ops::dcl` or `ops::nt_xent`).
    pub loss: f64,
}

/// [`ContrastiveNumbers`] of 2N projections at temperature τ for the loss `kind`: ℓᵢ =
/// −log(exp(s⁺/τ) / Σ exp(s_k/τ)), the sum over k ≠ i for NT-Xent and over k ∉ {i, i⁺} for DCL.
///
/// # Errors
/// From the trainer's loss (DCL needs at least 4 projections).
pub fn contrastive_numbers(
    projections: &[Vec<f32>],
    temperature: f64,
    kind: ContrastiveLoss,
) -> candle_core::Result<ContrastiveNumbers> {
    let h = tensor2(projections)?.to_dtype(DType::F64)?;
    let (loss, sim) = ops::contrastive_loss(&h, temperature, kind)?;
    let sim64 = sim.to_vec2::<f64>()?;
    let n = sim64.len();
    let per_anchor = sim64
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let pos = ops::positive_index(i, n);
            let denom: f64 = row
                .iter()
                .enumerate()
                .filter(|(k, _)| in_denominator(kind, i, pos, *k))
                .map(|(_, s)| (s / temperature).exp())
                .sum();
            -((row[pos] / temperature).exp() / denom).ln()
        })
        .collect();
    Ok(ContrastiveNumbers {
        sim: sim64
            .iter()
            .map(|r| r.iter().map(|&v| v as f32).collect())
            .collect(),
        per_anchor,
        loss: loss.to_scalar::<f64>()?,
    })
}

/// Whether view `k` is in anchor `i`'s denominator (its positive is `pos`): every other view
/// for NT-Xent, every other view but the positive for DCL.
fn in_denominator(kind: ContrastiveLoss, i: usize, pos: usize, k: usize) -> bool {
    k != i && (kind == ContrastiveLoss::NtXent || k != pos)
}

/// Softmax and −log P of the true class per example, and the batch mean through the trainer's
/// `ops::cross_entropy`.
pub fn likelihood_numbers(
    logits: &[Vec<f32>],
    labels: &[u32],
) -> candle_core::Result<(Vec<Vec<f32>>, Vec<f64>, f64)> {
    let x = tensor2(logits)?;
    let probs = ops::softmax(&x)?.to_vec2::<f32>()?;
    let nll = probs
        .iter()
        .zip(labels)
        .map(|(p, &y)| -f64::from(p[y as usize]).ln())
        .collect();
    let y = Tensor::new(labels, &Device::Cpu)?;
    let mean = f64::from(ops::cross_entropy(&x, &y)?.to_scalar::<f32>()?);
    Ok((probs, nll, mean))
}

/// Per-pixel squared error maps (summed over channels, weighted) and the loss
/// Σ w·(ŷ − y)² / (channels · Σ w) over the batch.
pub fn reconstruction_numbers(
    prediction: &[Vec<f32>],
    target: &[Vec<f32>],
    weight: &[Vec<f32>],
    channels: usize,
    size: usize,
) -> (Vec<Vec<f32>>, f64) {
    let plane = size * size;
    let mut total = 0f64;
    let mut count = 0f64;
    let maps = prediction
        .iter()
        .zip(target)
        .zip(weight)
        .map(|((p, t), w)| {
            (0..plane)
                .map(|px| {
                    let e: f32 = (0..channels)
                        .map(|c| (p[c * plane + px] - t[c * plane + px]).powi(2))
                        .sum();
                    total += f64::from(e * w[px]);
                    count += f64::from(w[px]) * channels as f64;
                    e * w[px]
                })
                .collect()
        })
        .collect();
    (maps, total / count.max(1.0))
}

/// What the colour-classes step derives from a frozen batch.
#[derive(Clone, Debug, PartialEq)]
pub struct ColorClassNumbers {
    /// Per image: each pixel's loss −Σ_k w_k log Ẑ(q_k), size × size.
    pub maps: Vec<Vec<f32>>,
    /// The mean of the maps over all pixels of the batch, summed here in f64.
    pub by_hand: f64,
    /// The loss by the trainer's function (`ops::dense_soft_cross_entropy`) on the same numbers.
    pub loss: f64,
}

/// Per-pixel class-rebalanced cross-entropy, its mean, and the trainer's loss on the same logits,
/// target bins and weights (`q` bins, `size × size` pixels per image).
pub fn color_class_numbers(
    logits: &[Vec<f32>],
    indices: &[Vec<u32>],
    weights: &[Vec<f32>],
    q: usize,
    size: usize,
) -> candle_core::Result<ColorClassNumbers> {
    let plane = size * size;
    let n = logits.len();
    let k = indices.first().map_or(0, Vec::len) / plane.max(1);
    let mut total = 0f64;
    let maps: Vec<Vec<f32>> = logits
        .iter()
        .zip(indices)
        .zip(weights)
        .map(|((l, idx), w)| {
            (0..plane)
                .map(|p| {
                    let at = |c: usize| f64::from(l[c * plane + p]);
                    let max = (0..q).map(at).fold(f64::MIN, f64::max);
                    let lse = max + (0..q).map(|c| (at(c) - max).exp()).sum::<f64>().ln();
                    let loss: f64 = (0..k)
                        .map(|j| {
                            let c = idx[j * plane + p] as usize;
                            -f64::from(w[j * plane + p]) * (at(c) - lse)
                        })
                        .sum();
                    total += loss;
                    loss as f32
                })
                .collect()
        })
        .collect();
    let flat = |v: &[Vec<f32>]| v.iter().flatten().copied().collect::<Vec<f32>>();
    let x = Tensor::from_vec(flat(logits), (n, q, size, size), &Device::Cpu)?;
    let y = Tensor::from_vec(
        indices.iter().flatten().copied().collect::<Vec<u32>>(),
        (n, k, size, size),
        &Device::Cpu,
    )?;
    let w = Tensor::from_vec(flat(weights), (n, k, size, size), &Device::Cpu)?;
    let loss = f64::from(ops::dense_soft_cross_entropy(&x, &y, &w)?.to_scalar::<f32>()?);
    Ok(ColorClassNumbers {
        maps,
        by_hand: total / (n * plane).max(1) as f64,
        loss,
    })
}

fn fmt(v: f64) -> String {
    if v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// The steps for the selected task of a report.
pub fn steps(report: &MathReport, sel: &Selection) -> Vec<Step> {
    let Some(t) = report.tasks.get(sel.task) else {
        return Vec::new();
    };
    let n = t.z.len().max(1);
    let i = sel.example.min(n - 1);
    let mut out = vec![representation_step(t, i)];
    match &t.math {
        TaskMath::Contrastive {
            projections,
            temperature,
            loss,
        } => {
            let tau = sel.temperature.unwrap_or(*temperature);
            out.push(transformation_step(t, i % (n / 2).max(1)));
            if let Ok(c) = contrastive_numbers(projections, tau, *loss) {
                out.push(similarity_step(projections, &c, i, sel.other.min(n - 1)));
                out.push(contrastive_step(t, &c, i, tau, *loss));
            }
        }
        TaskMath::Likelihood {
            logits,
            labels,
            classes,
        } => {
            if let Ok((probs, nll, mean)) = likelihood_numbers(logits, labels) {
                out.push(likelihood_step(
                    t, logits, labels, classes, &probs, &nll, mean, i,
                ));
            }
        }
        TaskMath::Reconstruction {
            prediction,
            target,
            weight,
            channels,
            size,
        } => {
            let (maps, loss) = reconstruction_numbers(prediction, target, weight, *channels, *size);
            let pixel = sel.pixel.unwrap_or((*size / 2, *size / 2));
            let at = PixelValues {
                prediction: &prediction[i.min(prediction.len() - 1)],
                target: &target[i.min(target.len() - 1)],
                weight: &weight[i.min(weight.len() - 1)],
                channels: *channels,
                pixel: (pixel.0.min(size - 1), pixel.1.min(size - 1)),
            };
            out.push(reconstruction_step(t, &maps, loss, *size, i, &at));
        }
        TaskMath::ColorClasses {
            logits,
            indices,
            weights,
            bins,
            size,
        } => {
            if let Ok(c) = color_class_numbers(logits, indices, weights, bins.len(), *size) {
                let pixel = sel.pixel.unwrap_or((*size / 2, *size / 2));
                let i = i.min(logits.len().saturating_sub(1));
                let at = ClassPixel {
                    logits: &logits[i],
                    indices: &indices[i],
                    weights: &weights[i],
                    bins,
                    size: *size,
                    pixel: (pixel.0.min(size - 1), pixel.1.min(size - 1)),
                };
                out.push(color_classes_step(t, &c, i, &at));
            }
        }
        TaskMath::Siamese(_) => {}
    }
    if let TaskMath::Siamese(m) = &t.math {
        out.push(transformation_step(t, i % (n / 2).max(1)));
        out.extend(siamese::steps(t, m, i));
    }
    if let Some(o) = &report.optimisation {
        out.push(optimisation_step(o));
    }
    out
}

fn representation_step(t: &TaskReport, i: usize) -> Step {
    let z = &t.z[i];
    let norm = z.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    let (formula, text, dims) = if t.task == TaskKind::Jigsaw {
        (
            "z = [f(x₁), …, f(x₉)]: each tile's mean over positions of the encoder's last feature \
             map, concatenated in the shuffled order"
                .to_string(),
            format!(
                "The encoder turns each of the 9 shuffled {p}×{p} tiles into {d} numbers on its own; \
                 the head sees the {n} numbers of all nine side by side and must tell from them how \
                 the tiles were shuffled. The downstream tasks use one image's f(x).",
                p = t.input_size / 3,
                d = z.len() / 9,
                n = z.len()
            ),
            "9 tiles × the channels of the last stage (4 × width)",
        )
    } else {
        (
            "z = f(x) = mean over positions of the encoder's last feature map".to_string(),
            format!(
                "The encoder turns the {s}×{s} input into {d} numbers: the average of each of its \
                 last {d} feature maps. Everything the tasks learn has to pass through these \
                 numbers; the downstream tasks use them too.",
                s = t.input_size,
                d = z.len()
            ),
            "channels of the last stage (4 × width)",
        )
    };
    Step {
        kind: StepKind::Representation,
        title: "Representation f(x) → z".into(),
        formula,
        text,
        values: vec![
            value("dimensions of z", z.len() as f64, dims),
            value("‖z‖", norm, "√(Σ zₖ²)"),
            value(
                "largest zₖ",
                z.iter().fold(f32::MIN, |m, v| m.max(*v)).into(),
                "max over the dimensions",
            ),
        ],
        pictures: vec![
            Picture::Image {
                label: format!("x (example {i})"),
                size: t.input_size,
                rgb: t.inputs[i].clone(),
            },
            Picture::Bars {
                label: "z".into(),
                values: z.clone(),
                highlight: None,
                names: Vec::new(),
            },
        ],
    }
}

fn transformation_step(t: &TaskReport, i: usize) -> Step {
    let n = t.inputs.len() / 2;
    let mut pictures = Vec::new();
    if let Some(o) = t.originals.get(i) {
        pictures.push(Picture::Image {
            label: "x".into(),
            size: t.original_size,
            rgb: o.clone(),
        });
    }
    for (label, k) in [("x⁺₁ = T₁(x)", i), ("x⁺₂ = T₂(x)", i + n)] {
        if let Some(v) = t.inputs.get(k) {
            pictures.push(Picture::Image {
                label: label.into(),
                size: t.input_size,
                rgb: v.clone(),
            });
        }
    }
    Step {
        kind: StepKind::Transformation,
        title: "Transformation x⁺ = T(x)".into(),
        formula: "T = grey? ∘ jitter? ∘ flip? ∘ resized crop".into(),
        text: format!(
            "Each image becomes two random views; the batch holds {} of them. The network is asked to \
             tell that the two views of an image belong together, so it must keep what survives T \
             (shapes, layout) and may drop what T changes (exact colours, position). {}",
            2 * n,
            t.transforms.get(i).cloned().unwrap_or_default()
        ),
        values: vec![value(
            "views in the batch (2N)",
            (2 * n) as f64,
            "two per image",
        )],
        pictures,
    }
}

fn similarity_step(h: &[Vec<f32>], c: &ContrastiveNumbers, a: usize, b: usize) -> Step {
    let dot: f64 = h[a]
        .iter()
        .zip(&h[b])
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na = h[a]
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt();
    let nb = h[b]
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt();
    let n = c.sim.len();
    Step {
        kind: StepKind::Similarity,
        title: "Cosine similarity".into(),
        formula: "sim(a, b) = a·b / (‖a‖ ‖b‖)".into(),
        text: "How alike two projections are, whatever their length: 1 means the same direction, 0 \
               unrelated, −1 opposite. The matrix holds every pair of the batch's views; the positives \
               sit on the two off-diagonals. Click a cell to pick a pair."
            .into(),
        values: vec![
            value("a·b", dot, format!("Σₖ h{a}ₖ · h{b}ₖ over {} dimensions", h[a].len())),
            value("‖a‖", na, format!("√(Σₖ h{a}ₖ²)")),
            value("‖b‖", nb, format!("√(Σₖ h{b}ₖ²)")),
            value(
                format!("sim(h{a}, h{b})"),
                f64::from(c.sim[a][b]),
                format!("{} / ({} · {})", fmt(dot), fmt(na), fmt(nb)),
            ),
        ],
        pictures: vec![Picture::Heatmap {
            label: format!("cosine similarity of all {n} views"),
            rows: n,
            cols: n,
            values: c.sim.iter().flatten().copied().collect(),
            range: (-1.0, 1.0),
            mark: Some((a, b)),
        }],
    }
}

fn contrastive_step(
    t: &TaskReport,
    c: &ContrastiveNumbers,
    i: usize,
    tau: f64,
    kind: ContrastiveLoss,
) -> Step {
    let n = c.sim.len();
    let pos = ops::positive_index(i, n);
    let row = &c.sim[i];
    let scaled: Vec<f32> = row.iter().map(|s| (f64::from(*s) / tau) as f32).collect();
    let exps: Vec<f32> = (0..n)
        .map(|k| {
            if in_denominator(kind, i, pos, k) {
                (f64::from(row[k]) / tau).exp() as f32
            } else {
                0.0
            }
        })
        .collect();
    let numerator = (f64::from(row[pos]) / tau).exp();
    let denominator: f64 = exps.iter().map(|&e| f64::from(e)).sum();
    let mean = c.per_anchor.iter().sum::<f64>() / c.per_anchor.len().max(1) as f64;
    let (title, formula, terms, why, trainer) = match kind {
        ContrastiveLoss::NtXent => (
            "Contrastive loss (InfoNCE / NT-Xent)",
            "ℓᵢ = −log( exp(sim(xᵢ,xᵢ⁺)/τ) / Σ_{k≠i} exp(sim(xᵢ,x_k)/τ) ),   L = mean over all 2N anchors",
            format!("Σ over the {} other views of exp(sim/τ)", n - 1),
            "",
            "L by the trainer (ops::nt_xent)",
        ),
        ContrastiveLoss::Dcl => (
            "Decoupled contrastive loss (DCL)",
            "ℓᵢ = −log( exp(sim(xᵢ,xᵢ⁺)/τ) / Σ_{k∉{i,i⁺}} exp(sim(xᵢ,x_k)/τ) ),   L = mean over all 2N anchors",
            format!(
                "Σ over the {} negatives of exp(sim/τ) (the positive left out)",
                n.saturating_sub(2)
            ),
            " Unlike NT-Xent, the positive is not in the denominator: a pair already close no \
             longer shrinks the push on the negatives (Yeh et al. 2022), and ℓ can go below 0.",
            "L by the trainer (ops::dcl)",
        ),
    };
    Step {
        kind: StepKind::Contrastive,
        title: title.into(),
        formula: formula.into(),
        text: format!(
            "For anchor {i}, the similarities to the other views are divided by τ and exponentiated; \
             the loss is small when the positive (view {pos}) stands out from the negatives. A small \
             τ sharpens the competition, a large one softens it. The mean over all {n} anchors is \
             the loss the trainer reports.{why}"
        ),
        values: vec![
            value("τ", tau, "temperature"),
            value(
                format!("sim(x{i}, x{pos})"),
                f64::from(row[pos]),
                "the positive's cosine similarity",
            ),
            value(
                "numerator",
                numerator,
                format!("exp({} / {tau})", fmt(f64::from(row[pos]))),
            ),
            value("denominator", denominator, terms),
            value(
                format!("ℓ{i}"),
                c.per_anchor[i],
                format!("−log({} / {})", fmt(numerator), fmt(denominator)),
            ),
            value("L = mean ℓ", mean, format!("Σ ℓ / {n}")),
            value(trainer, c.loss, "the function the training step calls"),
            value(
                "trainer's loss at τ of the run",
                t.trainer_loss,
                "the task's forward() on this batch",
            ),
        ],
        pictures: vec![
            Picture::Bars {
                label: format!("sim(x{i}, ·) / τ — positive highlighted"),
                values: scaled,
                highlight: Some(pos),
                names: Vec::new(),
            },
            Picture::Bars {
                label: match kind {
                    ContrastiveLoss::NtXent => "exp(sim/τ) — the denominator's terms".into(),
                    ContrastiveLoss::Dcl => {
                        format!(
                            "exp(sim/τ) — the denominator's terms (view {pos}, the positive, left out)"
                        )
                    }
                },
                values: exps,
                highlight: (kind == ContrastiveLoss::NtXent).then_some(pos),
                names: Vec::new(),
            },
            Picture::Bars {
                label: "ℓ per anchor".into(),
                values: c.per_anchor.iter().map(|&v| v as f32).collect(),
                highlight: Some(i),
                names: Vec::new(),
            },
        ],
    }
}

#[allow(clippy::too_many_arguments)]
fn likelihood_step(
    t: &TaskReport,
    logits: &[Vec<f32>],
    labels: &[u32],
    classes: &[String],
    probs: &[Vec<f32>],
    nll: &[f64],
    mean: f64,
    i: usize,
) -> Step {
    let i = i.min(logits.len().saturating_sub(1));
    let y = labels[i] as usize;
    let max = logits[i].iter().fold(f32::MIN, |m, v| m.max(*v));
    let sum_exp: f64 = logits[i].iter().map(|v| f64::from(v - max).exp()).sum();
    Step {
        kind: StepKind::Likelihood,
        title: format!("Likelihood loss ({})", t.task),
        formula: "P(y|x) = exp(logit_y) / Σ_k exp(logit_k),   L = −(1/N) Σᵢ log P(yᵢ|xᵢ)".into(),
        text: format!(
            "The head scores each of the {} possible answers; softmax turns the scores into \
             probabilities. The loss is the negative log of the probability given to the true answer: 0 \
             when the network is sure and right, large when it is sure and wrong. Averaged over the {} \
             examples it is the loss the trainer reports.",
            classes.len(),
            logits.len()
        ),
        values: vec![
            value(
                "true class y",
                y as f64,
                classes.get(y).cloned().unwrap_or_default(),
            ),
            value(
                format!(
                    "logit of y ({})",
                    classes.get(y).cloned().unwrap_or_default()
                ),
                f64::from(logits[i][y]),
                "the head's score",
            ),
            value(
                "Σ exp(logit − max)",
                sum_exp,
                "softmax's denominator, shifted by the largest logit for stability",
            ),
            value(
                "P(y|x)",
                f64::from(probs[i][y]),
                format!(
                    "exp({} − {}) / {}",
                    fmt(f64::from(logits[i][y])),
                    fmt(f64::from(max)),
                    fmt(sum_exp)
                ),
            ),
            value(
                "−log P(y|x)",
                nll[i],
                format!("−ln {}", fmt(f64::from(probs[i][y]))),
            ),
            value(
                "L = mean over the batch",
                nll.iter().sum::<f64>() / nll.len().max(1) as f64,
                format!("Σ −log P / {}", nll.len()),
            ),
            value(
                "L by the trainer (ops::cross_entropy)",
                mean,
                "the function the training step calls",
            ),
            value(
                "trainer's loss on this batch",
                t.trainer_loss,
                "the task's forward() on this batch",
            ),
        ],
        pictures: vec![
            Picture::Image {
                label: format!("x (example {i})"),
                size: t.input_size,
                rgb: t.inputs.get(i).cloned().unwrap_or_default(),
            },
            Picture::Bars {
                label: "logits".into(),
                values: logits[i].clone(),
                highlight: Some(y),
                names: classes.to_vec(),
            },
            Picture::Bars {
                label: "softmax P(k|x)".into(),
                values: probs[i].clone(),
                highlight: Some(y),
                names: classes.to_vec(),
            },
            Picture::Bars {
                label: "−log P(y|x) per example".into(),
                values: nll.iter().map(|&v| v as f32).collect(),
                highlight: Some(i),
                names: Vec::new(),
            },
        ],
    }
}

/// One pixel's numbers for the reconstruction step.
struct PixelValues<'a> {
    prediction: &'a [f32],
    target: &'a [f32],
    weight: &'a [f32],
    channels: usize,
    pixel: (usize, usize),
}

fn reconstruction_step(
    t: &TaskReport,
    maps: &[Vec<f32>],
    loss: f64,
    size: usize,
    i: usize,
    at: &PixelValues<'_>,
) -> Step {
    let i = i.min(maps.len().saturating_sub(1));
    let map = &maps[i];
    let hi = map.iter().fold(0f32, |m, v| m.max(*v)).max(1e-6);
    let image_sum: f64 = map.iter().map(|&v| f64::from(v)).sum();
    let (formula, what) = match t.task {
        TaskKind::Colorization => (
            "L = mean over pixels and a*b* of (ŷ − y)²,   y = (a*, b*) / 100",
            "the predicted colour against the true colour",
        ),
        _ => (
            "L = Σ mask·(ŷ − y)² / (3 Σ mask)",
            "the predicted pixels against the hidden ones (only the hidden region counts)",
        ),
    };
    Step {
        kind: StepKind::Reconstruction,
        title: format!("Reconstruction loss ({})", t.task),
        formula: formula.into(),
        text: format!(
            "Each pixel's squared error compares {what}. Bright pixels in the map are where the network \
             is furthest off. Summed and divided by the number of counted values it is the loss the \
             trainer reports."
        ),
        values: {
            let (r, c) = at.pixel;
            let p = r * size + c;
            let plane = size * size;
            let names: &[&str] = if at.channels == 2 {
                &["a*/100", "b*/100"]
            } else {
                &["R", "G", "B"]
            };
            let mut v = Vec::new();
            let mut sum = 0f64;
            for (ch, name) in names.iter().enumerate().take(at.channels) {
                let yhat = f64::from(at.prediction[ch * plane + p]);
                let y = f64::from(at.target[ch * plane + p]);
                sum += (yhat - y).powi(2);
                v.push(value(
                    format!("pixel ({r}, {c}) {name}: (ŷ − y)²"),
                    (yhat - y).powi(2),
                    format!("({} − {})²", fmt(yhat), fmt(y)),
                ));
            }
            let w = f64::from(at.weight[p]);
            v.push(value(
                format!("pixel ({r}, {c}): weighted error"),
                sum * w,
                format!("{} (sum over channels) × weight {w}", fmt(sum)),
            ));
            v.push(value(
                "Σ error, this image",
                image_sum,
                "Σ over the map's pixels",
            ));
            v.push(value(
                "largest pixel error",
                f64::from(hi),
                "max over the map",
            ));
            v.push(value(
                "L over the batch",
                loss,
                "Σ weighted errors / counted values",
            ));
            v.push(value(
                "trainer's loss on this batch",
                t.trainer_loss,
                "the task's forward() on this batch",
            ));
            v
        },
        pictures: vec![
            Picture::Image {
                label: format!("input (example {i})"),
                size: t.input_size,
                rgb: t.inputs.get(i).cloned().unwrap_or_default(),
            },
            Picture::Heatmap {
                label: "squared error per pixel (click a pixel)".into(),
                rows: size,
                cols: size,
                values: map.clone(),
                range: (0.0, hi),
                mark: Some(at.pixel),
            },
        ],
    }
}

/// One image's numbers at the selected pixel, for the colour-classes step.
struct ClassPixel<'a> {
    logits: &'a [f32],
    indices: &'a [u32],
    weights: &'a [f32],
    bins: &'a [[f32; 2]],
    size: usize,
    pixel: (usize, usize),
}

fn color_classes_step(
    t: &TaskReport,
    c: &ColorClassNumbers,
    i: usize,
    at: &ClassPixel<'_>,
) -> Step {
    use crate::tasks::colorization_bins::{ANNEAL_T, GRID_SIDE, PRIOR_LAMBDA, grid_cell};
    let plane = at.size * at.size;
    let q = at.bins.len();
    let (r, col) = at.pixel;
    let p = r * at.size + col;
    let k = at.indices.len() / plane.max(1);
    let logit = |b: usize| f64::from(at.logits[b * plane + p]);
    let max = (0..q).map(logit).fold(f64::MIN, f64::max);
    let sum_exp: f64 = (0..q).map(|b| (logit(b) - max).exp()).sum();
    let prob = |b: usize| (logit(b) - max).exp() / sum_exp;
    // The pixel's rebalancing weight v: the soft encoding sums to 1, so it is the weights' sum.
    let v: f64 = (0..k).map(|j| f64::from(at.weights[j * plane + p])).sum();
    let mut values = vec![value(
        format!("pixel ({r}, {col}): v = w(q*)"),
        v,
        "rebalancing weight of the pixel's nearest bin q* (Σ_k of the weights below, as Σ_k Z_k = 1)",
    )];
    let mut pixel_loss = 0f64;
    for j in 0..k {
        let b = at.indices[j * plane + p] as usize;
        let z = f64::from(at.weights[j * plane + p]) / v.max(f64::MIN_POSITIVE);
        let term = -v * z * prob(b).ln();
        pixel_loss += term;
        let [ca, cb] = at.bins.get(b).copied().unwrap_or_default();
        values.push(value(
            format!("bin {b} (a* {ca}, b* {cb}): −v·Z·log Ẑ"),
            term,
            format!(
                "−{} · {} · ln {}   (Z soft encoding, Ẑ = softmax of the logits)",
                fmt(v),
                fmt(z),
                fmt(prob(b))
            ),
        ));
    }
    let map = &c.maps[i.min(c.maps.len().saturating_sub(1))];
    let hi = map.iter().fold(0f32, |m, x| m.max(*x)).max(1e-6);
    values.extend([
        value(
            format!("pixel ({r}, {col}): loss"),
            pixel_loss,
            format!("Σ over its {k} target bins"),
        ),
        value(
            "L = mean over the batch's pixels",
            c.by_hand,
            "Σ pixel losses / (N·H·W)",
        ),
        value(
            "L by the trainer (ops::dense_soft_cross_entropy)",
            c.loss,
            "the function the training step calls",
        ),
        value(
            "trainer's loss on this batch",
            t.trainer_loss,
            "the task's forward() on this batch",
        ),
    ]);
    let predicted: Vec<f32> = (0..q).map(|b| prob(b) as f32).collect();
    let mut target = vec![0f32; q];
    for j in 0..k {
        if let Some(t) = target.get_mut(at.indices[j * plane + p] as usize) {
            *t += (f64::from(at.weights[j * plane + p]) / v.max(f64::MIN_POSITIVE)) as f32;
        }
    }
    let grid_pic = |label: String, per_bin: &[f32]| {
        let hi = per_bin.iter().fold(0f32, |m, x| m.max(*x)).max(1e-6);
        Picture::Heatmap {
            label,
            rows: GRID_SIDE,
            cols: GRID_SIDE,
            values: {
                // Bins laid out on the a*b* grid, 0 where the gamut does not reach.
                let mut grid = vec![0f32; GRID_SIDE * GRID_SIDE];
                for (&[a, b], &v) in at.bins.iter().zip(per_bin) {
                    if let Some((row, col)) = grid_cell(a, b) {
                        grid[row * GRID_SIDE + col] = v;
                    }
                }
                grid
            },
            range: (0.0, hi),
            mark: None,
        }
    };
    Step {
        kind: StepKind::ColorClasses,
        title: format!("Class-rebalanced cross-entropy ({})", t.task),
        formula: "L = −(1/NHW) Σ_{h,w} v(Z_hw) Σ_q Z_hw,q log Ẑ_hw,q,   Ẑ = softmax(logits),                     v = w_q*,   w ∝ ((1−λ)p̃ + λ/Q)⁻¹,   E_p̃[w] = 1"
            .into(),
        text: format!(
            "Each pixel's colour becomes a distribution over {q} a*b* bins: the soft encoding Z puts              weight on the {k} bins nearest the true colour (Gaussian, σ = 5). The network predicts              its own distribution Ẑ; the loss is the cross-entropy between them, times a weight v that              is large for colours the training data rarely shows (p̃: the data's colour prior,              smoothed, mixed with uniform λ = {PRIOR_LAMBDA}), so the rare, saturated colours are not              drowned by the grey and brown ones. The colour shown in previews is the annealed mean              of Ẑ at T = {ANNEAL_T}. Click a pixel of the loss map."
        ),
        values,
        pictures: vec![
            Picture::Image {
                label: format!("input L* (example {i})"),
                size: t.input_size,
                rgb: t.inputs.get(i).cloned().unwrap_or_default(),
            },
            Picture::Heatmap {
                label: "loss per pixel (click a pixel)".into(),
                rows: at.size,
                cols: at.size,
                values: map.clone(),
                range: (0.0, hi),
                mark: Some(at.pixel),
            },
            grid_pic(
                format!("Ẑ at ({r}, {col}) over a*b* (a* → right, b* → down)"),
                &predicted,
            ),
            grid_pic(format!("target Z at ({r}, {col}) (soft encoding)"), &target),
        ],
    }
}

fn optimisation_step(o: &Optimisation) -> Step {
    let total = o.grad_norms.iter().map(|(_, g)| g * g).sum::<f64>().sqrt();
    let predicted = -o.eta * total * total;
    Step {
        kind: StepKind::Optimisation,
        title: "Optimisation θ* = argmin L(θ)".into(),
        formula: "θ ← θ − η ∇L(θ)".into(),
        text: "Backpropagation gives the gradient of the loss for every weight; a small enough step \
               against it lowers the loss on this batch, to first order by η‖∇L‖². Here one plain \
               gradient step was taken on a copy of the weights, sized so that this prediction is 5% of \
               L (training itself uses AdamW, which rescales each weight's step). L is the weighted sum \
               over the run's tasks."
            .into(),
        values: vec![
            value("η", o.eta, "0.05 · L / ‖∇L‖²"),
            value("‖∇L‖ (all weights)", total, "√(Σ over tensors of ‖∇‖²)"),
            value("L before", o.loss_before, "the frozen batch, current weights"),
            value("L after one step", o.loss_after, "the frozen batch, θ − η∇L"),
            value("change", o.loss_after - o.loss_before, "after − before"),
            value(
                "first-order prediction",
                predicted,
                format!("−η‖∇L‖² = −{} · {}²", fmt(o.eta), fmt(total)),
            ),
        ],
        pictures: vec![Picture::Bars {
            label: "‖∇L‖ per weight tensor (stem → heads)".into(),
            values: o.grad_norms.iter().map(|(_, g)| *g as f32).collect(),
            highlight: None,
            names: o.grad_norms.iter().map(|(n, _)| n.clone()).collect(),
        }],
    }
}
