//! A whole residual basic block in training mode as one custom op:
//! `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, shortcut = `bnₛ(convₛ(x))` (1×1) or
//! x. Its intermediate maps stay inside the op, and its backward pass runs every step back to
//! back, so candle's graph sees one node per block instead of a dozen (each of which would
//! allocate, zero and add a gradient buffer of the block's full size).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};

use super::conv::ConvGeom;
use super::fused::{
    Chain, Input, InputGrad, PrevStage, Stage, conv_bn_backward, conv_stats, conv_stats_after,
};
use super::norm::{Affine, ChannelStats, Coef, NormAct};
use super::operands::{Nchw, SavedState, f32_slice, grad_like, tensor_like, with_values};
use super::pointwise;
use super::pool;
use super::simd;

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

    pub fn total(&self) -> usize {
        self.sizes().iter().sum()
    }
}

/// One convolution + batch norm's parts of the block's flat parameter vector.
#[derive(Clone, Copy)]
struct ConvBnParams<'a> {
    /// The convolution's weight (O, C, K, K), flat.
    conv: &'a [f32],
    /// The batch norm's weight and bias.
    bn: Affine<'a>,
}

/// The block's flat parameter vector cut into its parts ([`BlockShape`] order).
struct BlockParams<'a> {
    c1: ConvBnParams<'a>,
    c2: ConvBnParams<'a>,
    /// The 1×1 projection shortcut, when the block has one.
    shortcut: Option<ConvBnParams<'a>>,
    /// Values in all, [`BlockShape::total`].
    len: usize,
}

impl<'a> BlockParams<'a> {
    fn split(p: &'a [f32], shape: BlockShape) -> Result<Self> {
        if p.len() != shape.total() {
            bail!("{NAME}: {} parameters, expected {}", p.len(), shape.total());
        }
        let mut parts = Vec::with_capacity(9);
        let mut rest = p;
        for len in shape.sizes() {
            let (part, tail) = rest.split_at(len);
            parts.push(part);
            rest = tail;
        }
        let stage = |i: usize| ConvBnParams {
            conv: parts[i],
            bn: Affine {
                weight: parts[i + 1],
                bias: parts[i + 2],
            },
        };
        Ok(Self {
            c1: stage(0),
            c2: stage(3),
            shortcut: shape.projection.then(|| stage(6)),
            len: p.len(),
        })
    }
}

/// What the forward pass keeps for the backward pass. Not y1 = relu(bn1(conv1(x))), conv2's
/// input: the backward pass makes it again from `s1` group by group ([`Input::Normalised`]).
struct Saved {
    s1: Stage,
    s2: Stage,
    shortcut: Option<Stage>,
}

/// Batch statistics (mean, biased variance) of bn1, bn2 and the shortcut's bn, for the running
/// statistics.
pub type BlockStats = Vec<ChannelStats>;

/// The second operand of [`add_relu_normalised`].
enum Skip<'a> {
    /// The block's input, added as it is.
    Identity(&'a [f32]),
    /// The projection's convolution output, normalised per channel with `coef` first.
    Normalised { x: &'a [f32], coef: Vec<Coef> },
}

/// `relu(x · scale + shift + skip)` per channel over planes of `hw` values, `skip` as
/// [`Skip`] says: the block's last batch norm, its shortcut and the ReLU in one pass.
fn add_relu_normalised(x: &[f32], coef: &[Coef], skip: &Skip<'_>, hw: usize) -> Result<Vec<f32>> {
    let c = coef.len().max(1);
    let hw = hw.max(1);
    let (b, bcoef) = match skip {
        Skip::Identity(b) => (*b, None),
        Skip::Normalised { x: b, coef: k } => (*b, Some(k.as_slice())),
    };
    if b.len() != x.len() || bcoef.is_some_and(|k| k.len() != coef.len()) {
        bail!("residual add: the shortcut does not match the main path");
    }
    let n = x.len();
    // Small enough that LLVM inlines it into the `#[inline(always)]` closures below (an
    // attribute on a closure in a `let` is not stable Rust).
    let planes = |plane: usize| {
        let (xp, bp) = (simd::chunk(x, plane, hw), simd::chunk(b, plane, hw));
        (coef[plane % c], xp.iter().zip(bp))
    };
    Ok(match bcoef {
        Some(k) => simd::collect_chunks(
            n,
            hw,
            #[inline(always)]
            |plane| {
                let (Coef { scale, shift, .. }, pairs) = planes(plane);
                let Coef {
                    scale: bs,
                    shift: bt,
                    ..
                } = k[plane % c];
                pairs.map(move |(v, u)| (v * scale + shift + u * bs + bt).max(0.0))
            },
        ),
        None => simd::collect_chunks(
            n,
            hw,
            #[inline(always)]
            |plane| {
                let (Coef { scale, shift, .. }, pairs) = planes(plane);
                pairs.map(move |(v, u)| (v * scale + shift + u).max(0.0))
            },
        ),
    })
}

/// The block's gradients.
struct BlockGrads {
    /// ∂L/∂x (N, Cin, H, W), when it was asked for.
    dx: Option<Vec<f32>>,
    /// ∂L/∂params, in [`BlockShape`] order.
    params: Vec<f32>,
}

/// The backward pass from `m` = ∂L/∂(bn2 output + shortcut), for the block's input `x`.
fn backward(
    sv: &Saved,
    parts: &BlockParams<'_>,
    x: &[f32],
    m: Vec<f32>,
    want_x: bool,
    eps: f32,
) -> Result<BlockGrads> {
    let bn = |relu| NormAct { eps, relu };
    // Through bn2 and conv2 into ∂L/∂y1 (written into a buffer the last step gave back, where
    // there is one), taking bn1's first backward pass on the way.
    let chain = Chain {
        sums: None,
        prev: Some(PrevStage {
            stage: &sv.s1,
            relu: true,
        }),
    };
    let y1 = Input::Normalised {
        prev: &sv.s1,
        act: bn(true),
    };
    let y1_len = sv.s1.conv_out.len();
    let dy1 = match pool::take(y1_len) {
        Some(stale) => InputGrad::Write(stale),
        None => InputGrad::AddTo(simd::zeros(y1_len)),
    };
    let mut b2 = conv_bn_backward(&sv.s2, y1, parts.c2.conv, &m, bn(false), dy1, chain)?;
    let dy1 = pool::Pooled::new(b2.dx.take().unwrap_or_default());
    // ∂L/∂x gathers the main path and the shortcut in one buffer: it starts as the identity
    // shortcut's gradient (m itself, no longer needed otherwise) or as zeros for the
    // projection, whose own backward adds into it below.
    let mut m = Some(m);
    let dx0 = match &sv.shortcut {
        Some(_) if want_x => InputGrad::AddTo(simd::zeros(x.len())),
        None if want_x => m.take().map_or(InputGrad::Skip, InputGrad::AddTo),
        _ => InputGrad::Skip,
    };
    let chain = Chain {
        sums: b2.prev_sums.take(),
        prev: None,
    };
    let b1 = conv_bn_backward(
        &sv.s1,
        Input::Values(x),
        parts.c1.conv,
        &dy1,
        bn(true),
        dx0,
        chain,
    )?;
    drop(dy1);
    let mut params = Vec::with_capacity(parts.len);
    b1.append_param_grads(&mut params);
    b2.append_param_grads(&mut params);
    let dx = match (&sv.shortcut, &parts.shortcut, m) {
        (Some(st), Some(sc), Some(m)) => {
            let dx = b1.dx.map_or(InputGrad::Skip, InputGrad::AddTo);
            let input = Input::Values(x);
            let bs = conv_bn_backward(st, input, sc.conv, &m, bn(false), dx, Chain::default())?;
            bs.append_param_grads(&mut params);
            bs.dx
        }
        _ => b1.dx,
    };
    Ok(BlockGrads { dx, params })
}

/// Operands: the block's input x (N, Cin, H, W) and its flat parameter vector.
pub struct ResidualBlock {
    pub shape: BlockShape,
    pub eps: f32,
    saved: SavedState<Saved>,
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
        let parts = BlockParams::split(p, sh)?;
        let Nchw { n, c: cin, h, w } = Nchw::of(l1.dims(), NAME)?;
        if cin != sh.cin || (!sh.projection && (sh.stride != 1 || sh.cin != sh.cout)) {
            bail!("{NAME}: input {:?} does not fit {sh:?}", l1.dims());
        }
        let o = sh.cout;
        let g1 = ConvGeom::new(&[n, cin, h, w], &[o, cin, 3, 3], sh.stride, 1)?;
        let s1 = conv_stats(g1, x, parts.c1.conv, parts.c1.bn)?;
        let g2 = ConvGeom::new(&[n, o, g1.ho(), g1.wo()], &[o, o, 3, 3], 1, 1)?;
        // y1 = relu(bn1(conv1)), made group by group inside conv2's loop, not kept.
        let bn1 = NormAct {
            eps: self.eps,
            relu: true,
        };
        let s2 = conv_stats_after(&s1, bn1, g2, parts.c2.conv, parts.c2.bn)?;
        let shortcut = match parts.shortcut {
            Some(sc) => {
                let gs = ConvGeom::new(&[n, cin, h, w], &[o, cin, 1, 1], sh.stride, 0)?;
                Some(conv_stats(gs, x, sc.conv, sc.bn)?)
            }
            None => None,
        };
        // relu(bn2(conv2) + shortcut) in one pass: neither normalised map is stored.
        let skip = match &shortcut {
            Some(st) => Skip::Normalised {
                x: &st.conv_out,
                coef: st.coef(self.eps),
            },
            None => Skip::Identity(x),
        };
        let out = add_relu_normalised(&s2.conv_out, &s2.coef(self.eps), &skip, g2.hw_out())?;
        self.saved.put(Saved { s1, s2, shortcut })?;
        Ok((CpuStorage::F32(out), Shape::from((n, o, g1.ho(), g1.wo()))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // ∂L/∂(y2 + shortcut): the gradient where the block's output is positive.
        let m = with_values(res, |out| {
            with_values(grad, |g| Ok(pointwise::relu_mask_values(g, out)))
        })?;
        let want_x = x.track_op();
        let grads = self.saved.with("backward before forward", |sv| {
            with_values(p, |pv| {
                let parts = BlockParams::split(pv, self.shape)?;
                with_values(x, |xv| backward(sv, &parts, xv, m, want_x, self.eps))
            })
        })?;
        Ok((grad_like(grads.dx, x)?, Some(tensor_like(grads.params, p)?)))
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
    let saved = SavedState::new(NAME);
    let op = ResidualBlock {
        shape,
        eps: eps as f32,
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op2(&params.contiguous()?, op)?;
    let stats = saved.with("forward left no statistics", |sv| {
        let stages = [Some(&sv.s1), Some(&sv.s2), sv.shortcut.as_ref()];
        Ok(stages
            .into_iter()
            .flatten()
            .map(|st| st.stats.clone())
            .collect())
    })?;
    Ok((y, stats))
}
