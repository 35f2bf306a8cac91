//! Judging a representation: weighted kNN, a linear probe, collapse and quality gauges, and
//! PCA for a 2-D map. Plain f64 arithmetic on feature rows; no UI.

#![allow(clippy::needless_range_loop)] // index loops mirror the textbook formulas

pub mod embed;
pub mod judge;
pub mod linalg;
pub mod tsne;

/// Rows scaled to unit length (zero rows stay zero).
pub fn l2_normalize(rows: &[Vec<f32>]) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|r| {
            let n = r
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            r.iter().map(|v| f64::from(*v) / n).collect()
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Weighted kNN (as lightly's `knn_predict`): the k most cosine-similar bank rows vote for
/// their class with weight exp(sim / t); the class with the largest sum wins.
pub fn knn_predict(
    bank: &[Vec<f32>],
    bank_labels: &[u32],
    queries: &[Vec<f32>],
    k: usize,
    t: f64,
    classes: usize,
) -> Vec<u32> {
    let bank = l2_normalize(bank);
    let queries = l2_normalize(queries);
    queries
        .iter()
        .map(|q| {
            let mut sims: Vec<(f64, u32)> = bank
                .iter()
                .zip(bank_labels)
                .map(|(b, &l)| (dot(q, b), l))
                .collect();
            let k = k.min(sims.len());
            sims.select_nth_unstable_by(k.saturating_sub(1), |a, b| b.0.total_cmp(&a.0));
            let mut scores = vec![0f64; classes.max(1)];
            for &(s, l) in &sims[..k] {
                if let Some(slot) = scores.get_mut(l as usize) {
                    *slot += (s / t).exp();
                }
            }
            scores
                .iter()
                .enumerate()
                .fold(
                    (0usize, f64::MIN),
                    |best, (c, &v)| if v > best.1 { (c, v) } else { best },
                )
                .0 as u32
        })
        .collect()
}

/// Share of `predicted` equal to `truth`.
pub fn accuracy(predicted: &[u32], truth: &[u32]) -> f64 {
    let hits = predicted.iter().zip(truth).filter(|(p, t)| p == t).count();
    hits as f64 / truth.len().max(1) as f64
}

/// Standard deviation of the L2-normalised embeddings, averaged over dimensions (unbiased, as
/// `torch.std`); a collapsed representation gives 0, a spread-out one about 1/√d.
pub fn std_of_l2_normalized(z: &[Vec<f32>]) -> f64 {
    let u = l2_normalize(z);
    let n = u.len();
    let d = u.first().map_or(0, Vec::len);
    if n < 2 || d == 0 {
        return 0.0;
    }
    let mut total = 0.0;
    for j in 0..d {
        let mean = u.iter().map(|r| r[j]).sum::<f64>() / n as f64;
        let var = u.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        total += var.sqrt();
    }
    total / d as f64
}

/// RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values,
/// p = σ / Σσ + 1e-7; between 1 (collapsed) and min(n, d).
pub fn rankme(z: &[Vec<f32>]) -> f64 {
    let entropy: f64 = spectrum(z)
        .iter()
        .map(|s| {
            let p = s + 1e-7;
            -p * p.ln()
        })
        .sum();
    entropy.exp()
}

/// Singular values of the embedding matrix, descending, scaled to sum to 1.
pub fn spectrum(z: &[Vec<f32>]) -> Vec<f64> {
    let rows: Vec<Vec<f64>> = z
        .iter()
        .map(|r| r.iter().map(|v| f64::from(*v)).collect())
        .collect();
    let sigma = linalg::singular_values(&rows);
    let sum: f64 = sigma.iter().sum::<f64>().max(1e-12);
    sigma.iter().map(|s| s / sum).collect()
}

/// Alignment (Wang & Isola 2020): mean ‖zᵢ − zᵢ⁺‖² of L2-normalised positive pairs.
pub fn alignment(z: &[Vec<f32>], z_positive: &[Vec<f32>]) -> f64 {
    let a = l2_normalize(z);
    let b = l2_normalize(z_positive);
    let n = a.len().min(b.len()).max(1);
    a.iter()
        .zip(&b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).powi(2)).sum::<f64>())
        .sum::<f64>()
        / n as f64
}

/// Uniformity (Wang & Isola 2020): log mean exp(−2‖zᵢ − zⱼ‖²) over pairs i < j of
/// L2-normalised rows; lower is more uniform on the sphere.
pub fn uniformity(z: &[Vec<f32>]) -> f64 {
    let u = l2_normalize(z);
    let mut sum = 0.0;
    let mut count = 0usize;
    for i in 0..u.len() {
        for j in i + 1..u.len() {
            let d2: f64 = u[i].iter().zip(&u[j]).map(|(p, q)| (p - q).powi(2)).sum();
            sum += (-2.0 * d2).exp();
            count += 1;
        }
    }
    (sum / count.max(1) as f64).ln()
}

/// PCA to `components` dimensions: the projection of the centred rows and the share of the
/// variance each component explains (component signs are arbitrary).
pub fn pca(z: &[Vec<f32>], components: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let n = z.len();
    let d = z.first().map_or(0, Vec::len);
    if n < 2 || d == 0 {
        return (vec![vec![0.0; components]; n], vec![0.0; components]);
    }
    let mean: Vec<f64> = (0..d)
        .map(|j| z.iter().map(|r| f64::from(r[j])).sum::<f64>() / n as f64)
        .collect();
    let centred: Vec<Vec<f64>> = z
        .iter()
        .map(|r| {
            r.iter()
                .zip(&mean)
                .map(|(v, m)| f64::from(*v) - m)
                .collect()
        })
        .collect();
    let mut cov = vec![vec![0.0; d]; d];
    for r in &centred {
        for i in 0..d {
            for j in i..d {
                cov[i][j] += r[i] * r[j];
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            cov[i][j] /= (n - 1) as f64;
            cov[j][i] = cov[i][j];
        }
    }
    let (values, vectors) = linalg::symmetric_eigen(&cov);
    let total: f64 = values.iter().map(|v| v.max(0.0)).sum::<f64>().max(1e-300);
    let k = components.min(d);
    let ratio = values.iter().take(k).map(|v| v.max(0.0) / total).collect();
    let projection = centred
        .iter()
        .map(|r| {
            (0..k)
                .map(|c| (0..d).map(|j| r[j] * vectors[j][c]).sum())
                .collect()
        })
        .collect();
    (projection, ratio)
}

/// Why an accuracy could not be measured (shown as "not measured (why)", never as a number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
pub enum NotMeasured {
    #[error("no labels: put each class's images in its own subfolder")]
    NoLabels,
    #[error("only one class: accuracy needs at least two classes")]
    OneClass,
    #[error("nothing held out: a class needs at least {0} images for one to be held out")]
    NothingHeldOut(usize),
}

/// Whether accuracy on the fixed split of `labels` (see [`split`]) means anything.
///
/// # Errors
/// [`NotMeasured::OneClass`] with fewer than two classes present, and
/// [`NotMeasured::NothingHeldOut`] when the split holds out nothing.
pub fn measurable(labels: &[u32], holdout_every: usize) -> Result<(), NotMeasured> {
    let classes: std::collections::HashSet<u32> = labels.iter().copied().collect();
    if classes.len() < 2 {
        return Err(NotMeasured::OneClass);
    }
    let (train, test) = split(labels, holdout_every);
    if test.is_empty() || train.is_empty() {
        return Err(NotMeasured::NothingHeldOut(holdout_every.max(2)));
    }
    Ok(())
}

/// A fixed split of labelled examples into a kNN bank / probe training part and a held-out
/// part: every `holdout_every`-th example of each class (in data-set order) is held out.
pub fn split(labels: &[u32], holdout_every: usize) -> (Vec<usize>, Vec<usize>) {
    let mut seen = std::collections::HashMap::new();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, &l) in labels.iter().enumerate() {
        let c = seen.entry(l).or_insert(0usize);
        if *c % holdout_every.max(2) == holdout_every.max(2) - 1 {
            test.push(i);
        } else {
            train.push(i);
        }
        *c += 1;
    }
    (train, test)
}

/// A linear softmax classifier on standardised features, trained by full-batch gradient
/// descent with momentum; returns the predictions for `test`.
pub fn linear_probe(
    train: &[Vec<f32>],
    train_labels: &[u32],
    test: &[Vec<f32>],
    classes: usize,
    epochs: usize,
) -> Vec<u32> {
    let d = train.first().map_or(0, Vec::len);
    let n = train.len().max(1);
    let mean: Vec<f64> = (0..d)
        .map(|j| train.iter().map(|r| f64::from(r[j])).sum::<f64>() / n as f64)
        .collect();
    let std: Vec<f64> = (0..d)
        .map(|j| {
            (train
                .iter()
                .map(|r| (f64::from(r[j]) - mean[j]).powi(2))
                .sum::<f64>()
                / n as f64)
                .sqrt()
                .max(1e-6)
        })
        .collect();
    let norm = |r: &Vec<f32>| -> Vec<f64> {
        (0..d)
            .map(|j| (f64::from(r[j]) - mean[j]) / std[j])
            .collect()
    };
    let xs: Vec<Vec<f64>> = train.iter().map(norm).collect();
    let mut w = vec![vec![0.0; d + 1]; classes];
    let mut vel = vec![vec![0.0; d + 1]; classes];
    let (lr, momentum, decay) = (0.5, 0.9, 1e-4);
    let logits = |w: &[Vec<f64>], x: &[f64]| -> Vec<f64> {
        w.iter().map(|wc| dot(&wc[..d], x) + wc[d]).collect()
    };
    for _ in 0..epochs {
        let mut grad = vec![vec![0.0; d + 1]; classes];
        for (x, &y) in xs.iter().zip(train_labels) {
            let l = logits(&w, x);
            let m = l.iter().fold(f64::MIN, |a, &b| a.max(b));
            let e: Vec<f64> = l.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for c in 0..classes {
                let g = e[c] / s - f64::from(u8::from(c as u32 == y));
                for j in 0..d {
                    grad[c][j] += g * x[j];
                }
                grad[c][d] += g;
            }
        }
        for c in 0..classes {
            for j in 0..=d {
                let g = grad[c][j] / n as f64 + decay * w[c][j];
                vel[c][j] = momentum * vel[c][j] - lr * g;
                w[c][j] += vel[c][j];
            }
        }
    }
    test.iter()
        .map(|r| {
            let l = logits(&w, &norm(r));
            l.iter()
                .enumerate()
                .fold(
                    (0usize, f64::MIN),
                    |b, (c, &v)| if v > b.1 { (c, v) } else { b },
                )
                .0 as u32
        })
        .collect()
}

/// Confusion matrix: `m[truth][predicted]` counts.
pub fn confusion(predicted: &[u32], truth: &[u32], classes: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; classes]; classes];
    for (&p, &t) in predicted.iter().zip(truth) {
        if (t as usize) < classes && (p as usize) < classes {
            m[t as usize][p as usize] += 1;
        }
    }
    m
}
