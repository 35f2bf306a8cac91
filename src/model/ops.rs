//! The tensor operations the model is built from, in one place so that each can be swapped for
//! a faster implementation without touching the model code.

use candle_core::{D, Result, Tensor};

use super::kernels;
pub use super::kernels::norm::BatchNormOutput;
use crate::config::ContrastiveLoss;

/// 2-D convolution without bias; `x` is (N, C, H, W), `w` is (O, C, K, K).
/// On the CPU this is [`kernels::conv::conv2d`]; elsewhere candle's own convolution.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if kernels::applies(x.device(), x.dtype()) {
        kernels::conv::conv2d(x, w, stride, padding)
    } else {
        x.conv2d(w, padding, stride, 1, 1)
    }
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
    if kernels::applies(x.device(), x.dtype()) {
        return kernels::pointwise::bias_act(&y, b, false);
    }
    y.broadcast_add(&b.reshape((1, (), 1, 1))?)
}

/// `relu(conv2d(x, w) + b)`, with bias and ReLU fused on the CPU.
pub fn conv2d_bias_relu(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if kernels::applies(x.device(), x.dtype()) {
        return kernels::pointwise::bias_act(&conv2d(x, w, stride, padding)?, b, true);
    }
    conv2d_bias(x, w, b, stride, padding)?.relu()
}

/// Whether `x` goes through pretext's own CPU kernels (CPU, f32, not switched off).
pub fn kernels_apply(x: &Tensor) -> bool {
    kernels::applies(x.device(), x.dtype())
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.relu()
}

/// `relu(a + b)`, fused on the CPU.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if kernels::applies(a.device(), a.dtype()) && a.dims() == b.dims() {
        kernels::pointwise::add_relu(a, b)
    } else {
        (a + b)?.relu()
    }
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

/// Training-mode batch norm, optionally followed by ReLU: returns the output and the batch's
/// per-channel mean and biased variance (each of shape (C,)) for the running statistics.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormOutput> {
    if kernels::batch_norm_applies(x.device(), x.dtype(), x.dim(1)?) {
        return kernels::norm::batch_norm_train(x, weight, bias, eps, relu);
    }
    let (mean, var, _) = batch_stats(x)?;
    let y = normalize(x, &mean, &var, weight, bias, eps)?;
    let y = if relu { y.relu()? } else { y };
    Ok(BatchNormOutput {
        y,
        mean: mean.flatten_all()?,
        var: var.flatten_all()?,
    })
}

/// `bn(conv2d(x, w))` in training mode (then ReLU): the output and the batch's per-channel
/// mean and biased variance, each (C,). One fused op on the CPU.
#[allow(clippy::too_many_arguments)]
pub fn conv_batch_norm_train(
    x: &Tensor,
    w: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
    eps: f64,
    relu: bool,
) -> Result<BatchNormOutput> {
    if kernels::applies(x.device(), x.dtype()) {
        return kernels::fused::conv_batch_norm_train(
            x, w, weight, bias, stride, padding, eps, relu,
        );
    }
    batch_norm_train(&conv2d(x, w, stride, padding)?, weight, bias, eps, relu)
}

/// Evaluation-mode batch norm with the running statistics (each of shape (C,)), optionally
/// followed by ReLU. For inference: on the CPU and CUDA no gradient flows through it.
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    if kernels::batch_norm_applies(x.device(), x.dtype(), x.dim(1)?) {
        return kernels::norm::batch_norm_eval(x, weight, bias, mean, var, eps, relu);
    }
    let shape = (1, (), 1, 1);
    let y = normalize(
        x,
        &mean.reshape(shape)?,
        &var.reshape(shape)?,
        weight,
        bias,
        eps,
    )?;
    if relu { y.relu() } else { Ok(y) }
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

/// Soft-target cross-entropy of dense logits, each pixel's few target classes weighted:
/// `L = −(1/(N·H·W)) Σ_{n,h,w} Σ_k weights[n,k,h,w] · log softmax(logits[n,·,h,w])[indices[n,k,h,w]]`.
/// logits (N, Q, H, W); indices (N, K, H, W) u32 class numbers; weights (N, K, H, W) in the
/// logits' dtype. With the soft encoding of the true colour over its K nearest a*b* bins times
/// the class-rebalancing weight, this is Zhang et al. 2016's loss (eq. 2 with the weighting of
/// eq. 3); the classes not listed have target 0 and add nothing.
pub fn dense_soft_cross_entropy(
    logits: &Tensor,
    indices: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    if kernels::applies(logits.device(), logits.dtype()) {
        return kernels::dense_ce::dense_soft_cross_entropy(logits, indices, weights);
    }
    let (n, _, h, w) = logits.dims4()?;
    // Classes last: every reduction and the gather then run along contiguous rows.
    let last = |t: &Tensor| t.permute((0, 2, 3, 1))?.contiguous();
    let logp = candle_nn::ops::log_softmax(&last(logits)?, D::Minus1)?;
    let picked = logp.gather(&last(indices)?, 3)?;
    (picked * last(weights)?)?.sum_all()?.neg()? / (n * h * w).max(1) as f64
}

/// Nearest-neighbour upsampling ×2, (N, C, H, W) → (N, C, 2H, 2W), built from reshape and
/// broadcast so its gradient accumulates correctly (candle's `upsample_nearest2d` backward
/// overwrites when its input is used twice).
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    if kernels::applies(x.device(), x.dtype()) {
        return kernels::pointwise::upsample2x(x);
    }
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, 2, w, 2))?
        .reshape((n, c, 2 * h, 2 * w))
}

/// `relu(conv3×3(upsample2x(x), w) + b)` (padding 1), or without the ReLU when `relu` is off:
/// the decoders' upsampling stages, (N, C, H, W) → (N, O, 2H, 2W) for `w` (O, C, 3, 3). On the
/// CPU in sub-pixel form ([`kernels::subpixel`]: the same result with 4/9 of the
/// multiplications); elsewhere the composition itself.
///
/// # Errors
/// When `w` is not (O, C, 3, 3) for `x`'s C, or `b` not (O,).
pub fn upsample2x_conv3x3_bias(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    if kernels::applies(x.device(), x.dtype()) {
        return kernels::subpixel::upsample_conv3x3_bias_act(x, w, b, relu);
    }
    let up = upsample2x(x)?;
    if relu {
        conv2d_bias_relu(&up, w, b, 1, 1)
    } else {
        conv2d_bias(&up, w, b, 1, 1)
    }
}

/// Mean squared error.
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.sqr()?.mean_all()
}

/// Rows scaled to unit length (`F.normalize`, eps 1e-12).
pub fn l2_normalize_rows(z: &Tensor) -> Result<Tensor> {
    let norm = z.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    z.broadcast_div(&norm)
}

/// Cosine similarity of every pair of rows: sim(a, b) = a·b / (‖a‖‖b‖).
pub fn cosine_similarity_matrix(z: &Tensor) -> Result<Tensor> {
    let u = l2_normalize_rows(z)?;
    u.matmul(&u.t()?)
}

/// Index of each anchor's positive among 2N views laid out as (view 1 of all N, view 2 of all
/// N): i ↔ i + N (mod 2N).
pub fn positive_index(i: usize, two_n: usize) -> usize {
    (i + two_n / 2) % two_n
}

/// NT-Xent / InfoNCE over 2N views (rows: the N first views, then the N second views):
/// ℓᵢ = −log( exp(sim(zᵢ, zᵢ⁺)/τ) / Σ_{k≠i} exp(sim(zᵢ, z_k)/τ) ), mean over all 2N anchors.
/// Returns the loss and the cosine-similarity matrix.
pub fn nt_xent(z: &Tensor, temperature: f64) -> Result<(Tensor, Tensor)> {
    let (two_n, _) = z.dims2()?;
    let sim = cosine_similarity_matrix(z)?;
    // Self-similarity is excluded: a large negative on the diagonal gives exp(·) = 0.
    let eye = Tensor::eye(two_n, z.dtype(), z.device())?;
    let logits = ((&sim / temperature)? + (eye * -1e9)?)?;
    let targets: Vec<u32> = (0..two_n)
        .map(|i| positive_index(i, two_n) as u32)
        .collect();
    let targets = Tensor::new(targets.as_slice(), z.device())?;
    Ok((cross_entropy(&logits, &targets)?, sim))
}

/// Decoupled contrastive loss (DCL; Yeh et al. 2022, "Decoupled Contrastive Learning", eq. 6,
/// unweighted, as lightly's `DCLLoss`) over 2N views laid out as for [`nt_xent`]: NT-Xent with
/// the positive left out of the denominator,
/// ℓᵢ = −sim(zᵢ, zᵢ⁺)/τ + log Σ_{k∉{i, i⁺}} exp(sim(zᵢ, z_k)/τ), mean over all 2N anchors.
/// Returns the loss and the cosine-similarity matrix. z: (2N, D).
///
/// # Errors
/// Fewer than 4 views (2 images): an anchor then has no negative.
pub fn dcl(z: &Tensor, temperature: f64) -> Result<(Tensor, Tensor)> {
    let (two_n, _) = z.dims2()?;
    if two_n < 4 || two_n % 2 != 0 {
        candle_core::bail!("DCL needs two views of at least 2 images, got {two_n} views");
    }
    let sim = cosine_similarity_matrix(z)?;
    let scaled = (&sim / temperature)?;
    // 1 at each anchor's positive (i, i + N mod 2N), made on the device: picks it out, and with
    // the diagonal leaves the denominator.
    let eye = Tensor::eye(two_n, z.dtype(), z.device())?;
    let positive = eye.roll(two_n as i32 / 2, 1)?;
    let negatives = (&scaled + ((eye + &positive)? * -1e9)?)?;
    let pulled = (&scaled * &positive)?.sum(1)?;
    let loss = (negatives.log_sum_exp(1)? - pulled)?.mean_all()?;
    Ok((loss, sim))
}

/// The contrastive task's loss `kind` over 2N views laid out as for [`nt_xent`]: [`nt_xent`]
/// or [`dcl`]. Returns the loss and the cosine-similarity matrix. z: (2N, D).
///
/// # Errors
/// As the loss chosen.
pub fn contrastive_loss(
    z: &Tensor,
    temperature: f64,
    kind: ContrastiveLoss,
) -> Result<(Tensor, Tensor)> {
    match kind {
        ContrastiveLoss::NtXent => nt_xent(z, temperature),
        ContrastiveLoss::Dcl => dcl(z, temperature),
    }
}

/// Share of anchors whose positive is the most similar of the other 2N − 1 views.
pub fn positive_top1(sim: &[Vec<f32>]) -> f64 {
    let two_n = sim.len();
    let hits = sim
        .iter()
        .enumerate()
        .filter(|(i, row)| {
            let best = (0..two_n)
                .filter(|j| j != i)
                .fold(None::<usize>, |b, j| match b {
                    Some(b) if row[b] >= row[j] => Some(b),
                    _ => Some(j),
                });
            best == Some(positive_index(*i, two_n))
        })
        .count();
    hits as f64 / two_n.max(1) as f64
}
