//! The losses of the two-view methods beyond SimCLR (whose NT-Xent and DCL are
//! [`super::ops::nt_xent`] and [`super::ops::dcl`]): negative cosine (SimSiam, BYOL), InfoNCE
//! against a queue of negatives (MoCo), the cross-correlation loss of Barlow Twins and the three
//! terms of VICReg. Each is written once here and used by the trainer, the previews and the Math
//! panel alike; each is checked against the reference implementation's numbers
//! (`tests/data/*.json`, from lightly and PyTorch).
//!
//! Shapes: `(N, D)` for N samples of D dimensions.

use candle_core::{D, Result, Tensor};

use super::ops::{cross_entropy, l2_normalize_rows};

/// Added to the biased variance before standardising (as batch norm; lightly's Barlow Twins).
pub const BARLOW_EPS: f64 = 1e-5;

/// Negative cosine similarity D(p, z) = −(1/N) Σᵢ pᵢ·zᵢ / (‖pᵢ‖‖zᵢ‖) (SimSiam, Chen & He 2021,
/// eq. 1; BYOL, Grill et al. 2020, up to BYOL's 2 − 2·cos). The caller detaches `z` for the
/// stop-gradient. Reference: `lightly.loss.NegativeCosineSimilarity`.
///
/// # Errors
/// When the shapes differ or are not 2-D.
pub fn negative_cosine(p: &Tensor, z: &Tensor) -> Result<Tensor> {
    let cos = (l2_normalize_rows(p)? * l2_normalize_rows(z)?)?.sum(1)?;
    cos.mean_all()?.neg()
}

/// Per-row cosine similarity pᵢ·zᵢ / (‖pᵢ‖‖zᵢ‖), (N,).
///
/// # Errors
/// When the shapes differ or are not 2-D.
pub fn row_cosine(p: &Tensor, z: &Tensor) -> Result<Tensor> {
    (l2_normalize_rows(p)? * l2_normalize_rows(z)?)?.sum(1)
}

/// MoCo's InfoNCE (He et al. 2020, eq. 1) with q, k and the queue L2-normalised:
/// logits = [q·k₊, q·queueᵀ] / τ, the positive at index 0, mean cross-entropy.
/// `q`, `k`: (N, D); `queue`: (K, D) of earlier keys (K may be 0: the positive alone).
/// Returns the loss and the logits (N, 1 + K).
///
/// # Errors
/// When the shapes do not fit.
pub fn moco_info_nce(
    q: &Tensor,
    k: &Tensor,
    queue: Option<&Tensor>,
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let qn = l2_normalize_rows(q)?;
    let kn = l2_normalize_rows(k)?;
    let positive = (&qn * &kn)?.sum_keepdim(1)?;
    let logits = match queue {
        Some(queue) if queue.dim(0)? > 0 => {
            let negatives = qn.matmul(&l2_normalize_rows(queue)?.t()?)?;
            Tensor::cat(&[&positive, &negatives], 1)?
        }
        _ => positive,
    };
    let logits = (logits / temperature)?;
    let n = q.dim(0)?;
    let targets = Tensor::zeros(n, candle_core::DType::U32, q.device())?;
    Ok((cross_entropy(&logits, &targets)?, logits))
}

/// Each column standardised over the batch: (x − mean) / √(biased var + eps).
fn standardise(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(0)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(0)?;
    centred.broadcast_div(&(var + eps)?.sqrt()?)
}

/// What the Barlow Twins loss computed.
pub struct BarlowTwins {
    /// Σᵢ (1 − Cᵢᵢ)² + λ Σᵢ≠ⱼ Cᵢⱼ², a scalar.
    pub loss: Tensor,
    /// The cross-correlation matrix C (D, D).
    pub cross_correlation: Tensor,
    /// Σᵢ (1 − Cᵢᵢ)², the invariance term (scalar).
    pub on_diagonal: Tensor,
    /// Σᵢ≠ⱼ Cᵢⱼ², the redundancy-reduction term before λ (scalar).
    pub off_diagonal: Tensor,
}

/// Barlow Twins (Zbontar et al. 2021, eq. 1–2): each dimension of z₁ and z₂ (N, D) standardised
/// over the batch, C = z₁ᵀz₂ / N, loss = Σᵢ (1 − Cᵢᵢ)² + λ Σᵢ≠ⱼ Cᵢⱼ². Reference:
/// `lightly.loss.BarlowTwinsLoss`.
///
/// # Errors
/// When the shapes differ or are not 2-D.
pub fn barlow_twins(z1: &Tensor, z2: &Tensor, lambda: f64) -> Result<BarlowTwins> {
    let (n, d) = z1.dims2()?;
    let a = standardise(z1, BARLOW_EPS)?;
    let b = standardise(z2, BARLOW_EPS)?;
    let c = (a.t()?.matmul(&b)? / n as f64)?;
    let eye = Tensor::eye(d, c.dtype(), c.device())?;
    let diagonal = (&c * &eye)?.sum(1)?;
    let on_diagonal = (1.0 - diagonal)?.sqr()?.sum_all()?;
    let off = (&c * (1.0 - &eye)?)?;
    let off_diagonal = off.sqr()?.sum_all()?;
    let loss = (&on_diagonal + (&off_diagonal * lambda)?)?;
    Ok(BarlowTwins {
        loss,
        cross_correlation: c,
        on_diagonal,
        off_diagonal,
    })
}

/// The weights of VICReg's three terms and the variance term's ε.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VicRegWeights {
    /// λ, invariance.
    pub invariance: f64,
    /// μ, variance.
    pub variance: f64,
    /// ν, covariance.
    pub covariance: f64,
    pub eps: f64,
}

impl Default for VicRegWeights {
    /// The paper's λ = μ = 25, ν = 1, ε = 1e-4.
    fn default() -> Self {
        Self {
            invariance: 25.0,
            variance: 25.0,
            covariance: 1.0,
            eps: 1e-4,
        }
    }
}

/// What the VICReg loss computed; every term a scalar before its weight.
pub struct VicReg {
    /// λ·invariance + μ·variance + ν·covariance.
    pub loss: Tensor,
    /// Mean squared distance of the two embeddings, (1/ND) Σ ‖z₁ᵢ − z₂ᵢ‖².
    pub invariance: Tensor,
    /// Mean over the two branches of (1/D) Σⱼ max(0, 1 − √(Var(zⱼ) + ε)), unbiased variance.
    pub variance: Tensor,
    /// Sum over the two branches of (1/D) Σᵢ≠ⱼ Cov(z)ᵢⱼ².
    pub covariance: Tensor,
    /// Cov(z₁) (D, D), for the picture.
    pub covariance_matrix: Tensor,
}

/// The covariance matrix (D, D) of (N, D) rows, unbiased.
fn covariance_matrix(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    centred.t()?.matmul(&centred)? / (n.max(2) - 1) as f64
}

fn variance_term(x: &Tensor, eps: f64) -> Result<Tensor> {
    let n = x.dim(0)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let var = (centred.sqr()?.sum(0)? / (n.max(2) - 1) as f64)?;
    let std = (var + eps)?.sqrt()?;
    (1.0 - std)?.relu()?.mean_all()
}

fn covariance_term(cov: &Tensor) -> Result<Tensor> {
    let d = cov.dim(0)?;
    let eye = Tensor::eye(d, cov.dtype(), cov.device())?;
    (cov * (1.0 - eye)?)?.sqr()?.sum_all()? / d as f64
}

/// VICReg (Bardes et al. 2022, eq. 1–6) of two embeddings (N, D). Reference:
/// `lightly.loss.VICRegLoss`.
///
/// # Errors
/// When the shapes differ or are not 2-D.
pub fn vicreg(z1: &Tensor, z2: &Tensor, w: VicRegWeights) -> Result<VicReg> {
    let invariance = (z1 - z2)?.sqr()?.mean_all()?;
    let variance = ((variance_term(z1, w.eps)? + variance_term(z2, w.eps)?)? * 0.5)?;
    let cov1 = covariance_matrix(z1)?;
    let covariance = (covariance_term(&cov1)? + covariance_term(&covariance_matrix(z2)?)?)?;
    let loss = (((&invariance * w.invariance)? + (&variance * w.variance)?)?
        + (&covariance * w.covariance)?)?;
    Ok(VicReg {
        loss,
        invariance,
        variance,
        covariance,
        covariance_matrix: cov1,
    })
}

/// The share of samples whose other view is the most cosine-similar of the batch's other
/// views: for each row i of `a` (N, D), whether argmaxⱼ cos(aᵢ, bⱼ) = i. Chance is 1/N.
///
/// # Errors
/// When the shapes do not fit.
pub fn view_top1(a: &Tensor, b: &Tensor) -> Result<f64> {
    let sim = l2_normalize_rows(a)?.matmul(&l2_normalize_rows(b)?.t()?)?;
    let best = sim.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let n = best.len().max(1);
    let right = best
        .iter()
        .enumerate()
        .filter(|(i, j)| *i == **j as usize)
        .count();
    Ok(right as f64 / n as f64)
}
