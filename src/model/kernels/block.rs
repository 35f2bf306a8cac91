//! A whole residual basic block in training mode as one custom op:
//! `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, shortcut = `bnₛ(convₛ(x))` (1×1) or
//! x. Its intermediate maps stay inside the op, and its backward pass runs every step back to
//! back, so candle's graph sees one node per block instead of a dozen (each of which would
//! allocate, zero and add a gradient buffer of the block's full size).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};

use super::conv::ConvGeom;
use super::fused::{Chain, Stage, conv_bn_backward, conv_stats, conv_stats_after};
use super::{f32_slice, norm, pointwise, poisoned, with_values};

/// Where each parameter sits in the block's flat parameter vector: conv1 weight, bn1 weight,
/// bn1 bias, conv2 weight, bn2 weight, bn2 bias, then (with a projection shortcut) the 1×1
/// conv weight, its bn weight and bias.
#[derive(Clone, Copy, Debug)]
pub struct BlockShape {
    pub cin: usize,
    pub cout: usize,
    pub stride: usize,
    pub projection: bool,
}

impl BlockShape {
    /// Sizes of the parameters in flat order.
    pub fn sizes(&self) -> Vec<usize> {
        let (i, o) = (self.cin, self.cout);
        let mut v = vec![o * i * 9, o, o, o * o * 9, o, o];
        if self.projection {
            v.extend([o * i, o, o]);
        }
        v
    }
    fn offsets(&self) -> Vec<usize> {
        self.sizes()
            .iter()
            .scan(0, |acc, s| {
                let start = *acc;
                *acc += s;
                Some(start)
            })
            .collect()
    }
    pub fn total(&self) -> usize {
        self.sizes().iter().sum()
    }
}

struct Saved {
    s1: Stage,
    /// relu(bn1(conv1(x))), the input of conv2.
    y1: Vec<f32>,
    s2: Stage,
    shortcut: Option<Stage>,
}

/// Batch statistics (mean, biased variance) of bn1, bn2 and the shortcut's bn, for the running
/// statistics.
pub type BlockStats = Vec<(Vec<f32>, Vec<f32>)>;

pub struct ResidualBlock {
    pub shape: BlockShape,
    pub eps: f32,
    saved: Arc<Mutex<Option<Saved>>>,
}

const NAME: &str = "residual block";

impl CustomOp2 for ResidualBlock {
    fn name(&self) -> &'static str {
        "pretext-residual-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "block input")?;
        let p = f32_slice(s2, l2, "block parameters")?;
        let sh = self.shape;
        if p.len() != sh.total() {
            bail!(
                "residual block: {} parameters, expected {}",
                p.len(),
                sh.total()
            );
        }
        let &[n, cin, h, w] = l1.dims() else {
            bail!("residual block: expected (N, C, H, W), got {:?}", l1.dims());
        };
        if cin != sh.cin || (!sh.projection && (sh.stride != 1 || sh.cin != sh.cout)) {
            bail!("residual block: input {:?} does not fit {sh:?}", l1.dims());
        }
        let (o, off) = (sh.cout, sh.offsets());
        let part = |i: usize| &p[off[i]..off[i] + sh.sizes()[i]];
        let g1 = ConvGeom::new(&[n, cin, h, w], &[o, cin, 3, 3], sh.stride, 1)?;
        let st1 = conv_stats(g1, x, part(0), (part(1), part(2)))?;
        let g2 = ConvGeom::new(&[n, o, g1.ho(), g1.wo()], &[o, o, 3, 3], 1, 1)?;
        // y1 = relu(bn1(conv1)), made image by image inside conv2's loop.
        let (st2, y1) = conv_stats_after(&st1, (self.eps, true), g2, part(3), (part(4), part(5)))?;
        let shortcut = if sh.projection {
            let gs = ConvGeom::new(&[n, cin, h, w], &[o, cin, 1, 1], sh.stride, 0)?;
            Some(conv_stats(gs, x, part(6), (part(7), part(8)))?)
        } else {
            None
        };
        // relu(bn2(conv2) + shortcut) in one pass: neither normalised map is stored.
        let skip = match &shortcut {
            Some(st) => norm::Skip::Normalised(&st.conv_out, st.coef(self.eps)),
            None => norm::Skip::Identity(x),
        };
        let out = norm::apply_add_relu(&st2.conv_out, &st2.coef(self.eps), &skip, g2.hw_out())?;
        *self.saved.lock().map_err(|_| poisoned(NAME))? = Some(Saved {
            s1: st1,
            y1,
            s2: st2,
            shortcut,
        });
        Ok((CpuStorage::F32(out), Shape::from((n, o, g1.ho(), g1.wo()))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().map_err(|_| poisoned(NAME))?;
        let Some(sv) = guard.as_ref() else {
            bail!("residual block: backward before forward");
        };
        let sh = self.shape;
        let eps = self.eps;
        // ∂L/∂(y2 + shortcut): the gradient where the block's output is positive.
        let m = with_values(res, |out| {
            with_values(grad, |g| Ok(pointwise::relu_mask_values(g, out)))
        })?;
        let want_x = x.track_op();
        let (dx, dp) = with_values(p, |pv| {
            with_values(x, |xv| {
                let off = sh.offsets();
                let sizes = sh.sizes();
                let part = |i: usize| &pv[off[i]..off[i] + sizes[i]];
                // Through bn2 and conv2 into ∂L/∂y1 (zeros to start from), taking bn1's first
                // backward pass on the way.
                let chain = Chain {
                    sums: None,
                    prev: Some((&sv.s1, true)),
                };
                let dy1 = Some(vec![0f32; sv.y1.len()]);
                let ((dy1, dw2, dg2, db2), s1_sums) =
                    conv_bn_backward(&sv.s2, &sv.y1, part(3), &m, (eps, false), dy1, chain)?;
                let dy1 = dy1.unwrap_or_default();
                // ∂L/∂x gathers the main path and the shortcut in one buffer: it starts as the
                // identity shortcut's gradient (m itself, no longer needed otherwise) or as
                // zeros for the projection, whose own backward adds into it below.
                let (dx0, m) = match &sv.shortcut {
                    Some(_) => (want_x.then(|| vec![0f32; xv.len()]), Some(m)),
                    None => (want_x.then_some(m), None),
                };
                let chain = Chain {
                    sums: s1_sums,
                    prev: None,
                };
                let ((dx, dw1, dg1, db1), _) =
                    conv_bn_backward(&sv.s1, xv, part(0), &dy1, (eps, true), dx0, chain)?;
                let mut dp = Vec::with_capacity(sh.total());
                for v in [&dw1, &dg1, &db1, &dw2, &dg2, &db2] {
                    dp.extend_from_slice(v);
                }
                let dx = match (&sv.shortcut, m) {
                    (Some(st), Some(m)) => {
                        let chain = Chain::default();
                        let ((dx, dws, dgs, dbs), _) =
                            conv_bn_backward(st, xv, part(6), &m, (eps, false), dx, chain)?;
                        for v in [&dws, &dgs, &dbs] {
                            dp.extend_from_slice(v);
                        }
                        dx
                    }
                    _ => dx,
                };
                Ok((dx, dp))
            })
        })?;
        let dx = match dx {
            Some(v) => Some(Tensor::from_vec(v, x.shape(), x.device())?),
            None => None,
        };
        Ok((dx, Some(Tensor::from_vec(dp, p.shape(), p.device())?)))
    }
}

/// Runs a residual block in training mode: returns the output and the batch statistics of its
/// batch norms (bn1, bn2, shortcut bn) for the running statistics. `params` is the block's
/// flat parameter vector in [`BlockShape`] order.
pub fn residual_block_train(
    x: &Tensor,
    params: &Tensor,
    shape: BlockShape,
    eps: f64,
) -> Result<(Tensor, BlockStats)> {
    let saved = Arc::new(Mutex::new(None));
    let op = ResidualBlock {
        shape,
        eps: eps as f32,
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op2(&params.contiguous()?, op)?;
    let guard = saved.lock().map_err(|_| poisoned(NAME))?;
    let Some(sv) = guard.as_ref() else {
        bail!("residual block: forward left no statistics");
    };
    let stats = |st: &Stage| {
        let (mean, var) = st.stats();
        (mean.to_vec(), var.to_vec())
    };
    let mut out = vec![stats(&sv.s1), stats(&sv.s2)];
    if let Some(st) = &sv.shortcut {
        out.push(stats(st));
    }
    Ok((y, out))
}
