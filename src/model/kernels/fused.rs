//! Convolution + batch norm (+ ReLU) in training mode as one custom op: the convolution's
//! output stays inside the op (kept for the backward pass), its batch statistics are taken
//! while it is fresh, and the backward pass runs batch norm's and the convolution's backward
//! back to back — no intermediate tensor and no gradient accumulation between them in
//! candle's graph.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::conv::{self, ConvGeom};
use super::{f32_slice, norm, poisoned, with_values};

/// One convolution + batch norm as kept for the backward pass and the running statistics.
pub(super) struct Stage {
    pub(super) geom: ConvGeom,
    /// Convolution output (N, C, H', W').
    pub(super) conv_out: Vec<f32>,
    /// [weight; bias; batch mean; batch biased variance], 4·C values.
    pub(super) params: Vec<f32>,
}

impl Stage {
    /// The batch (mean, biased variance) per channel.
    pub(super) fn stats(&self) -> (&[f32], &[f32]) {
        let c = self.geom.o;
        (&self.params[2 * c..3 * c], &self.params[3 * c..4 * c])
    }
}

/// conv → batch statistics → normalise (+ ReLU): the stage and its output.
pub(super) fn conv_bn(
    geom: ConvGeom,
    x: &[f32],
    w: &[f32],
    (weight, bias): (&[f32], &[f32]),
    eps: f32,
    relu: bool,
) -> Result<(Stage, Vec<f32>)> {
    let (c, hw) = (geom.o, geom.ho() * geom.wo());
    if weight.len() != c || bias.len() != c {
        bail!("conv+batch-norm: affine parameters do not match {c} channels");
    }
    let conv_out = conv::forward(&geom, x, w)?;
    let stats = norm::stats(&conv_out, geom.n, c, hw);
    let mut params = Vec::with_capacity(4 * c);
    params.extend_from_slice(weight);
    params.extend_from_slice(bias);
    params.extend(stats.iter().map(|s| s.0));
    params.extend(stats.iter().map(|s| s.1));
    let y = norm::apply(&conv_out, &norm::affine(&params, c, eps), relu, hw);
    Ok((
        Stage {
            geom,
            conv_out,
            params,
        },
        y,
    ))
}

/// (∂L/∂input if wanted, ∂L/∂conv weight, ∂L/∂bn weight, ∂L/∂bn bias).
pub(super) type StageGrads = (Option<Vec<f32>>, Vec<f32>, Vec<f32>, Vec<f32>);

/// Backward through one conv + bn (+ ReLU) stage, given the stage's input and weight.
pub(super) fn conv_bn_backward(
    st: &Stage,
    input: &[f32],
    w: &[f32],
    grad: &[f32],
    eps: f32,
    relu: bool,
    want_input: bool,
) -> Result<StageGrads> {
    let g = st.geom;
    let (c, hw) = (g.o, g.ho() * g.wo());
    let numel = st.conv_out.len();
    let mut out = vec![0f32; numel + 2 * c];
    norm::backward_into(
        &st.conv_out,
        &st.params,
        grad,
        eps,
        relu,
        (g.n, c, hw),
        &mut out,
    );
    let dbn = out.split_off(numel);
    let d_conv = out;
    let dx = if want_input {
        Some(conv::backward_input(&g, &d_conv, w)?)
    } else {
        None
    };
    let dw = conv::backward_weight(&g, input, &d_conv)?;
    Ok((dx, dw, dbn[..c].to_vec(), dbn[c..].to_vec()))
}

/// Operands: input x (N, Cin, H, W), convolution weight (C, Cin, K, K), batch-norm weight and
/// bias stacked as (2, C).
pub struct ConvBatchNorm {
    pub stride: usize,
    pub pad: usize,
    pub eps: f32,
    pub relu: bool,
    saved: Arc<Mutex<Option<Stage>>>,
}

const NAME: &str = "conv+batch-norm";

impl CustomOp3 for ConvBatchNorm {
    fn name(&self) -> &'static str {
        "pretext-conv-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "conv input")?;
        let w = f32_slice(s2, l2, "conv weight")?;
        let wb = f32_slice(s3, l3, "batch norm weight and bias")?;
        let geom = ConvGeom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let c = geom.o;
        if wb.len() != 2 * c {
            bail!("{NAME}: {} affine values for {c} channels", wb.len());
        }
        let (stage, y) = conv_bn(geom, x, w, wb.split_at(c), self.eps, self.relu)?;
        *self.saved.lock().map_err(|_| poisoned(NAME))? = Some(stage);
        Ok((
            CpuStorage::F32(y),
            Shape::from((geom.n, c, geom.ho(), geom.wo())),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().map_err(|_| poisoned(NAME))?;
        let Some(stage) = guard.as_ref() else {
            bail!("{NAME}: backward before forward");
        };
        let c = stage.geom.o;
        let (dx, dw, dgamma, dbeta) = with_values(grad, |g| {
            with_values(w, |ws| {
                with_values(x, |xs| {
                    conv_bn_backward(stage, xs, ws, g, self.eps, self.relu, x.track_op())
                })
            })
        })?;
        let dwb = Tensor::from_vec([dgamma, dbeta].concat(), (2, c), wb.device())?;
        let dx = match dx {
            Some(v) => Some(Tensor::from_vec(v, x.shape(), x.device())?),
            None => None,
        };
        let dw = Tensor::from_vec(dw, w.shape(), w.device())?;
        Ok((dx, Some(dw), Some(dwb)))
    }
}

/// `bn(conv(x, w))` (then ReLU) with batch statistics; returns the output and the batch mean
/// and biased variance per channel, each (C,).
#[allow(clippy::too_many_arguments)]
pub fn conv_batch_norm_train(
    x: &Tensor,
    w: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: usize,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBatchNorm {
        stride,
        pad,
        eps: eps as f32,
        relu,
        saved: saved.clone(),
    };
    let wb = Tensor::stack(&[weight, bias], 0)?;
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &wb, op)?;
    let guard = saved.lock().map_err(|_| poisoned(NAME))?;
    let Some(stage) = guard.as_ref() else {
        bail!("{NAME}: forward left no statistics");
    };
    let (mean, var) = stage.stats();
    let c = mean.len();
    Ok((
        y,
        Tensor::from_slice(mean, c, x.device())?,
        Tensor::from_slice(var, c, x.device())?,
    ))
}
