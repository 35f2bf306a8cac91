//! t-SNE (van der Maaten & Hinton 2008) with the Barnes–Hut approximation (van der Maaten 2014),
//! through the `bhtsne` crate, for the explorer; and trustworthiness (Venna & Kaski 2001), the
//! measure scikit-learn uses to judge how well an embedding keeps neighbourhoods.
//!
//! The embedding starts from PCA scaled to a standard deviation of 10⁻⁴, as scikit-learn's
//! `init="pca"` does, so the same representation always gives the same picture.

use bhtsne::tSNE;

/// The perplexity of the explorer's t-SNE (scikit-learn's default); smaller sets use at most
/// (n − 1) / 3.
pub const PERPLEXITY: f32 = 30.0;
/// Barnes–Hut's accuracy/speed trade-off θ (scikit-learn's `angle`).
pub const THETA: f32 = 0.5;
/// Gradient-descent iterations (scikit-learn's `max_iter`).
pub const EPOCHS: usize = 1000;
/// Fewest points t-SNE is run on.
pub const MIN_POINTS: usize = 5;

/// Why there is no t-SNE.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TsneError {
    #[error("t-SNE needs at least {MIN_POINTS} points (got {0})")]
    TooFew(usize),
    #[error("the features hold a value that is not a finite number")]
    NonFinite,
}

/// The 2-D t-SNE of `z` (N, D): one point per row. `progress(epoch, epochs)` is called as the
/// iterations go (on the calling thread).
///
/// # Errors
/// Fewer than [`MIN_POINTS`] rows, or a value that is not finite.
pub fn tsne(
    z: &[Vec<f32>],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<[f64; 2]>, TsneError> {
    let n = z.len();
    if n < MIN_POINTS {
        return Err(TsneError::TooFew(n));
    }
    if z.iter().flatten().any(|v| !v.is_finite()) {
        return Err(TsneError::NonFinite);
    }
    let (pca, _) = super::pca(z, 2);
    let std = {
        let mean = pca.iter().map(|p| p[0]).sum::<f64>() / n as f64;
        (pca.iter().map(|p| (p[0] - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
    };
    let scale = if std > 0.0 { 1e-4 / std } else { 1e-4 };
    let init: Vec<f32> = pca
        .iter()
        .flat_map(|p| [(p[0] * scale) as f32, (p[1] * scale) as f32])
        .collect();
    // bhtsne needs n − 1 ≥ 3·perplexity.
    let perplexity = PERPLEXITY.min(((n - 1) / 3) as f32).max(1.0);
    let rows: Vec<&[f32]> = z.iter().map(Vec::as_slice).collect();
    let mut t: tSNE<'_, f32, &[f32]> = tSNE::new(&rows);
    t.perplexity(perplexity)
        .epochs(EPOCHS)
        .initial_embedding(init)
        .epoch_callback(move |epoch, _| progress(epoch, EPOCHS))
        .barnes_hut(THETA, |a, b| euclidean(a, b));
    Ok(t.embedding()
        .chunks(2)
        .map(|p| [f64::from(p[0]), f64::from(p[1])])
        .collect())
}

fn euclidean(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// Each row's other rows, nearest first (squared Euclidean distances in f64; ties by index).
fn ranked(points: &[Vec<f64>]) -> Vec<Vec<usize>> {
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut d: Vec<(f64, usize)> = points
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, q)| (p.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum(), j))
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            d.into_iter().map(|(_, j)| j).collect()
        })
        .collect()
}

/// Trustworthiness T(k) of an embedding `y` of `x` (Venna & Kaski 2001), as
/// `sklearn.manifold.trustworthiness`: 1 − 2/(n k (2n − 3k − 1)) Σᵢ Σ_{j ∈ Uᵢ} (r(i, j) − k),
/// where Uᵢ are the k nearest neighbours of i in the embedding that are not among its k nearest
/// in the input, and r(i, j) is j's rank among i's neighbours in the input. 1 = every
/// embedded neighbourhood is a true one. Quadratic in n: for a few thousand points.
///
/// `None` when k ≥ n / 2 (the measure is not defined) or the sizes differ.
pub fn trustworthiness(x: &[Vec<f32>], y: &[[f64; 2]], k: usize) -> Option<f64> {
    let n = x.len();
    if n != y.len() || k == 0 || 2 * k >= n {
        return None;
    }
    let xs: Vec<Vec<f64>> = x
        .iter()
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect();
    let ys: Vec<Vec<f64>> = y.iter().map(|p| p.to_vec()).collect();
    let input = ranked(&xs);
    let embedded = ranked(&ys);
    let mut penalty = 0.0;
    for i in 0..n {
        let mut rank = vec![0usize; n];
        for (r, &j) in input[i].iter().enumerate() {
            rank[j] = r + 1;
        }
        for &j in embedded[i].iter().take(k) {
            if rank[j] > k {
                penalty += (rank[j] - k) as f64;
            }
        }
    }
    let (n, k) = (n as f64, k as f64);
    Some(1.0 - penalty * 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)))
}
