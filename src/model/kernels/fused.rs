//! Convolution + batch norm (+ ReLU) in training mode as one custom op: the convolution's
//! output stays inside the op (kept for the backward pass), its batch statistics are taken
//! while it is fresh, and the backward pass runs batch norm's and the convolution's backward
//! back to back — no intermediate tensor and no gradient accumulation between them in
//! candle's graph.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};

use super::conv::{self, ConvGeom};
use super::{f32_slice, norm};

/// What the forward pass keeps for the backward pass and for the running statistics.
struct Saved {
    /// Convolution output (N, C, H', W').
    conv_out: Vec<f32>,
    /// [weight; bias; batch mean; batch biased variance], 4·C values.
    params: Vec<f32>,
    geom: ConvGeom,
}

/// Operands: input x (N, Cin, H, W), convolution weight (C, Cin, K, K), batch-norm weight and
/// bias stacked as (2, C).
pub struct ConvBatchNorm {
    pub stride: usize,
    pub pad: usize,
    pub eps: f32,
    pub relu: bool,
    saved: Arc<Mutex<Option<Saved>>>,
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("conv+batch-norm state lock poisoned".into())
}

/// Runs `f` on the f32 values of a contiguous CPU tensor, borrowed from candle's storage.
fn with_values<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(f32_slice(s, layout, "conv+batch-norm operand")?),
        _ => bail!("conv+batch-norm runs on the CPU only"),
    }
}

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
        let (c, hw) = (geom.o, geom.ho() * geom.wo());
        if wb.len() != 2 * c {
            bail!(
                "conv+batch-norm: {} affine values for {c} channels",
                wb.len()
            );
        }
        let conv_out = conv::forward(&geom, x, w)?;
        let stats = norm::stats(&conv_out, geom.n, c, hw);
        let mut params = wb.to_vec();
        params.extend(stats.iter().map(|s| s.0));
        params.extend(stats.iter().map(|s| s.1));
        let coef = norm::affine(&params, c, self.eps);
        let y = norm::apply(&conv_out, &coef, self.relu, hw);
        *self.saved.lock().map_err(|_| poisoned())? = Some(Saved {
            conv_out,
            params,
            geom,
        });
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
        let guard = self.saved.lock().map_err(|_| poisoned())?;
        let Some(saved) = guard.as_ref() else {
            bail!("conv+batch-norm: backward before forward");
        };
        let geom = saved.geom;
        let (c, hw) = (geom.o, geom.ho() * geom.wo());
        let numel = saved.conv_out.len();
        let mut out = vec![0f32; numel + 2 * c];
        with_values(grad, |g| {
            norm::backward_into(
                &saved.conv_out,
                &saved.params,
                g,
                self.eps,
                self.relu,
                (geom.n, c, hw),
                &mut out,
            );
            Ok(())
        })?;
        let dwb = Tensor::from_vec(out.split_off(numel), (2, c), wb.device())?;
        let d_conv = out;
        let dx = if x.track_op() {
            let dx = with_values(w, |ws| conv::backward_input(&geom, &d_conv, ws))?;
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        let dw = with_values(x, |xs| conv::backward_weight(&geom, xs, &d_conv))?;
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
    let guard = saved.lock().map_err(|_| poisoned())?;
    let Some(s) = guard.as_ref() else {
        bail!("conv+batch-norm: forward left no statistics");
    };
    let c = s.geom.o;
    let mean = Tensor::from_slice(&s.params[2 * c..3 * c], c, x.device())?;
    let var = Tensor::from_slice(&s.params[3 * c..4 * c], c, x.device())?;
    Ok((y, mean, var))
}
