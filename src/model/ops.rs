//! The tensor operations the model is built from, in one place so that each can be swapped for
//! a faster implementation without touching the model code.

use candle_core::{D, Result, Tensor};

/// 2-D convolution without bias; `x` is (N, C, H, W), `w` is (O, C, K, K).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.conv2d(w, padding, stride, 1, 1)
}

/// 2-D convolution with a per-channel bias.
pub fn conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let y = conv2d(x, w, stride, padding)?;
    y.broadcast_add(&b.reshape((1, (), 1, 1))?)
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.relu()
}

/// `x · wᵀ + b` for `x` of shape (N, in) and `w` of shape (out, in).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Global average pooling: (N, C, H, W) → (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}

/// Batch statistics for batch norm: per-channel mean and biased variance over (N, H, W),
/// both of shape (1, C, 1, 1), plus the number of values each was taken over.
pub fn batch_stats(x: &Tensor) -> Result<(Tensor, Tensor, usize)> {
    let (n, _c, h, w) = x.dims4()?;
    let mean = x.mean_keepdim((0, 2, 3))?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
    Ok((mean, var, n * h * w))
}

/// `(x − mean) / √(var + eps) · weight + bias`, all per channel; `mean` and `var` are (1, C, 1, 1).
pub fn normalize(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let inv = (var + eps)?.sqrt()?.recip()?;
    let scale = weight.reshape((1, (), 1, 1))?.broadcast_mul(&inv)?;
    let shift = bias
        .reshape((1, (), 1, 1))?
        .broadcast_sub(&mean.broadcast_mul(&scale)?)?;
    x.broadcast_mul(&scale)?.broadcast_add(&shift)
}

/// Row-wise softmax.
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax_last_dim(logits)
}

/// Mean softmax cross-entropy `−(1/N) Σ log P(yᵢ|xᵢ)` of (N, K) logits against u32 labels.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?;
    picked.neg()?.mean_all()
}
