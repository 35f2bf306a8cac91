//! Soft-target cross-entropy of dense logits in one pass per image: colorization-bins' loss
//! (`ops::dense_soft_cross_entropy`). Candle's chain for it (permute, max, subtract, exp, sum,
//! log, gather, and their backward) made 60% of that task's step; here the forward computes each
//! pixel's log-sum-exp along the class planes and the backward writes
//! `∂L/∂logit_q = g · (v · softmax_q − Σ_k w_k [q_k = q]) / (N·H·W)` (v = Σ_k w_k) directly.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::operands::{Nchw, f32_slice, with_values};

/// The loss of logits (N, Q, H, W) against each pixel's K target classes `indices` with
/// `weights`, both (N, K, H, W) flattened; a scalar.
pub struct DenseSoftCrossEntropy {
    pub indices: Vec<u32>,
    pub weights: Vec<f32>,
    pub k: usize,
}

/// Per pixel of one image's class planes (Q × plane): max and Σ exp(x − max), in f64 sums.
fn log_sum_exp(x: &[f32], q: usize, plane: usize) -> Vec<f32> {
    let mut max = vec![f32::NEG_INFINITY; plane];
    for c in x.chunks_exact(plane).take(q) {
        for (m, v) in max.iter_mut().zip(c) {
            *m = m.max(*v);
        }
    }
    let mut sum = vec![0f32; plane];
    for c in x.chunks_exact(plane).take(q) {
        for ((s, v), m) in sum.iter_mut().zip(c).zip(&max) {
            *s += (v - m).exp();
        }
    }
    max.iter().zip(&sum).map(|(m, s)| m + s.ln()).collect()
}

impl DenseSoftCrossEntropy {
    fn check(&self, dims: &[usize]) -> Result<Nchw> {
        let d = Nchw::of(dims, "dense cross-entropy")?;
        let want = d.n * self.k * d.h * d.w;
        if self.indices.len() != want || self.weights.len() != want {
            bail!(
                "dense cross-entropy: {} indices and {} weights for (N, K, H, W) = ({}, {}, {}, {})",
                self.indices.len(),
                self.weights.len(),
                d.n,
                self.k,
                d.h,
                d.w
            );
        }
        if let Some(bad) = self.indices.iter().find(|&&i| i as usize >= d.c) {
            bail!("dense cross-entropy: class {bad} of {} classes", d.c);
        }
        Ok(d)
    }
}

impl CustomOp1 for DenseSoftCrossEntropy {
    fn name(&self) -> &'static str {
        "pretext-dense-soft-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "dense cross-entropy logits")?;
        let Nchw { n, c: q, h, w } = self.check(l.dims())?;
        let plane = h * w;
        let (k, image) = (self.k, self.k * plane);
        let total: f64 = x
            .par_chunks((q * plane).max(1))
            .zip(self.indices.par_chunks(image.max(1)))
            .zip(self.weights.par_chunks(image.max(1)))
            .map(|((xi, idx), wt)| {
                let lse = log_sum_exp(xi, q, plane);
                let mut sum = 0f64;
                for j in 0..k {
                    for p in 0..plane {
                        let o = j * plane + p;
                        let logit = xi[idx[o] as usize * plane + p];
                        sum -= f64::from(wt[o]) * f64::from(logit - lse[p]);
                    }
                }
                sum
            })
            .sum();
        let loss = (total / (n * plane).max(1) as f64) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let Nchw { n, c: q, h, w } = self.check(x.dims())?;
        let plane = h * w;
        let (k, image) = (self.k, self.k * plane);
        let scale = g / (n * plane).max(1) as f32;
        let d = with_values(x, |x| {
            let mut d = vec![0f32; x.len()];
            d.par_chunks_mut((q * plane).max(1))
                .zip(x.par_chunks((q * plane).max(1)))
                .zip(self.indices.par_chunks(image.max(1)))
                .zip(self.weights.par_chunks(image.max(1)))
                .for_each(|(((di, xi), idx), wt)| {
                    let lse = log_sum_exp(xi, q, plane);
                    let mut v = vec![0f32; plane];
                    for j in 0..k {
                        for (vp, wp) in v.iter_mut().zip(&wt[j * plane..(j + 1) * plane]) {
                            *vp += wp;
                        }
                    }
                    for (dc, xc) in di.chunks_exact_mut(plane).zip(xi.chunks_exact(plane)) {
                        for p in 0..plane {
                            dc[p] = scale * v[p] * (xc[p] - lse[p]).exp();
                        }
                    }
                    for j in 0..k {
                        for p in 0..plane {
                            let o = j * plane + p;
                            di[idx[o] as usize * plane + p] -= scale * wt[o];
                        }
                    }
                });
            Ok(d)
        })?;
        Ok(Some(Tensor::from_vec(d, x.dims(), x.device())?))
    }
}

/// The loss of contiguous f32 CPU logits (N, Q, H, W) against `indices` and `weights`
/// (N, K, H, W).
pub fn dense_soft_cross_entropy(
    logits: &Tensor,
    indices: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    let k = indices.dims().get(1).copied().unwrap_or(0);
    let op = DenseSoftCrossEntropy {
        indices: indices.flatten_all()?.to_vec1::<u32>()?,
        weights: weights
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?,
        k,
    };
    logits.contiguous()?.apply_op1(op)
}
