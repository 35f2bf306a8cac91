//! The default encoder: a small ResNet that matches the reference encoder
//! (stem conv3×3 → BN → ReLU, then three residual basic blocks 32→32, 32→64 /2, 64→128 /2,
//! z = global average pool of the last stage). Tensor names follow the PyTorch module's
//! `state_dict` keys (`stem.0.weight`, `l1.c1.weight`, `l2.sc.1.running_var`, …).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use super::ops;

/// Batch normalisation with running statistics, as `torch.nn.BatchNorm2d` (momentum 0.1,
/// eps 1e-5, running variance updated with the unbiased batch variance).
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    /// `num_batches_tracked` of PyTorch; shared with the model so checkpoints can carry it.
    batches: Arc<AtomicU64>,
}

pub const BN_MOMENTUM: f64 = 0.1;
pub const BN_EPS: f64 = 1e-5;

impl BatchNorm {
    pub fn new(channels: usize, vb: &VarBuilder<'_>, counters: &mut Counters) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let rm = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let rv = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        let batches = Arc::new(AtomicU64::new(0));
        counters.push((
            format!("{}.num_batches_tracked", vb.prefix()),
            batches.clone(),
        ));
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&rm)?,
            running_var: Var::from_tensor(&rv)?,
            batches,
        })
    }

    /// `bn(conv2d(x, w))` (batch statistics in training, running statistics otherwise), then
    /// ReLU when `relu` is set; in training on the CPU one fused op.
    pub fn conv_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        stride: usize,
        padding: usize,
        train: bool,
        relu: bool,
    ) -> Result<Tensor> {
        if !train {
            return self.forward(&ops::conv2d(x, w, stride, padding)?, false, relu);
        }
        let ops::BatchNormOutput { y, mean, var } = ops::conv_batch_norm_train(
            x,
            w,
            &self.weight,
            &self.bias,
            stride,
            padding,
            BN_EPS,
            relu,
        )?;
        let (n, _c, h, wd) = y.dims4()?;
        self.update_running(&mean, &var, n * h * wd)?;
        Ok(y)
    }

    /// Normalises `x` (batch statistics in training, running statistics otherwise) and, when
    /// `relu` is set, applies ReLU in the same pass.
    pub fn forward(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if train {
            let ops::BatchNormOutput { y, mean, var } =
                ops::batch_norm_train(x, &self.weight, &self.bias, BN_EPS, relu)?;
            let (n, _c, h, w) = x.dims4()?;
            self.update_running(&mean, &var, n * h * w)?;
            Ok(y)
        } else {
            ops::batch_norm_eval(
                x,
                &self.weight,
                &self.bias,
                self.running_mean.as_tensor(),
                self.running_var.as_tensor(),
                BN_EPS,
                relu,
            )
        }
    }

    /// PyTorch's running-statistics update from a batch's mean and biased variance over
    /// `count` values per channel (the variance stored unbiased).
    fn update_running(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let m = BN_MOMENTUM;
        let unbiased = (var.detach() * (count as f64 / (count.max(2) - 1) as f64))?;
        let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.detach() * m)?)?;
        let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        self.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// `num_batches_tracked` counters by tensor name.
pub type Counters = Vec<(String, Arc<AtomicU64>)>;

fn conv_weight(
    vb: &VarBuilder<'_>,
    name: &str,
    cin: usize,
    cout: usize,
    k: usize,
) -> Result<Tensor> {
    vb.get_with_hints((cout, cin, k, k), name, Init::Const(0.0))
}

/// Residual basic block: conv3×3 → BN → ReLU → conv3×3 → BN, + shortcut, → ReLU.
pub struct Block {
    c1: Tensor,
    b1: BatchNorm,
    c2: Tensor,
    b2: BatchNorm,
    shortcut: Option<(Tensor, BatchNorm)>,
    stride: usize,
}

impl Block {
    pub fn new(
        cin: usize,
        cout: usize,
        stride: usize,
        vb: &VarBuilder<'_>,
        counters: &mut Counters,
    ) -> Result<Self> {
        let c1 = conv_weight(vb, "c1.weight", cin, cout, 3)?;
        let b1 = BatchNorm::new(cout, &vb.pp("b1"), counters)?;
        let c2 = conv_weight(vb, "c2.weight", cout, cout, 3)?;
        let b2 = BatchNorm::new(cout, &vb.pp("b2"), counters)?;
        let shortcut = if stride != 1 || cin != cout {
            let sc = vb.pp("sc");
            Some((
                conv_weight(&sc, "0.weight", cin, cout, 1)?,
                BatchNorm::new(cout, &sc.pp("1"), counters)?,
            ))
        } else {
            None
        };
        Ok(Self {
            c1,
            b1,
            c2,
            b2,
            shortcut,
            stride,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train && ops::kernels_apply(x) {
            return self.forward_fused(x);
        }
        let y = self
            .b1
            .forward(&ops::conv2d(x, &self.c1, self.stride, 1)?, train, true)?;
        let y = self
            .b2
            .forward(&ops::conv2d(&y, &self.c2, 1, 1)?, train, false)?;
        let s = match &self.shortcut {
            Some((w, bn)) => bn.forward(&ops::conv2d(x, w, self.stride, 0)?, train, false)?,
            None => x.clone(),
        };
        ops::add_relu(&y, &s)
    }
}

impl Block {
    /// Training forward as one op ([`crate::model::kernels::block`]).
    fn forward_fused(&self, x: &Tensor) -> Result<Tensor> {
        use crate::model::kernels::block::{BlockShape, residual_block_train};
        let (cout, cin) = self.c1.dims4().map(|(o, i, _, _)| (o, i))?;
        let shape = BlockShape {
            cin,
            cout,
            stride: self.stride,
            projection: self.shortcut.is_some(),
        };
        let mut parts = vec![
            self.c1.flatten_all()?,
            self.b1.weight.clone(),
            self.b1.bias.clone(),
            self.c2.flatten_all()?,
            self.b2.weight.clone(),
            self.b2.bias.clone(),
        ];
        let mut norms = vec![&self.b1, &self.b2];
        if let Some((w, bn)) = &self.shortcut {
            parts.extend([w.flatten_all()?, bn.weight.clone(), bn.bias.clone()]);
            norms.push(bn);
        }
        let params = Tensor::cat(&parts, 0)?;
        let (y, stats) = residual_block_train(x, &params, shape, BN_EPS)?;
        let (n, _c, h, w) = y.dims4()?;
        for (bn, crate::model::kernels::norm::ChannelStats { mean, var }) in
            norms.into_iter().zip(stats)
        {
            let dev = y.device();
            let c = mean.len();
            bn.update_running(
                &Tensor::from_vec(mean, c, dev)?,
                &Tensor::from_vec(var, c, dev)?,
                n * h * w,
            )?;
        }
        Ok(y)
    }
}

/// What the encoder gives: the last feature map and the pooled representation z.
pub struct EncoderOutput {
    /// (N, 4w, H/4, W/4)
    pub fmap: Tensor,
    /// (N, 4w)
    pub z: Tensor,
}

pub struct Encoder {
    stem_conv: Tensor,
    stem_bn: BatchNorm,
    l1: Block,
    l2: Block,
    l3: Block,
    pub in_channels: usize,
    pub width: usize,
}

impl Encoder {
    pub fn new(
        in_channels: usize,
        width: usize,
        vb: &VarBuilder<'_>,
        counters: &mut Counters,
    ) -> Result<Self> {
        let stem = vb.pp("stem");
        Ok(Self {
            stem_conv: conv_weight(&stem, "0.weight", in_channels, width, 3)?,
            stem_bn: BatchNorm::new(width, &stem.pp("1"), counters)?,
            l1: Block::new(width, width, 1, &vb.pp("l1"), counters)?,
            l2: Block::new(width, 2 * width, 2, &vb.pp("l2"), counters)?,
            l3: Block::new(2 * width, 4 * width, 2, &vb.pp("l3"), counters)?,
            in_channels,
            width,
        })
    }

    /// Size of the representation z.
    pub fn z_dim(&self) -> usize {
        4 * self.width
    }

    /// Globally pooled features of every stage (stem, l1, l2, l3 — the last is z), in
    /// evaluation mode: where in the network the useful representation lives.
    pub fn stage_features(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let s0 = self
            .stem_bn
            .conv_forward(x, &self.stem_conv, 1, 1, false, true)?;
        let s1 = self.l1.forward(&s0, false)?;
        let s2 = self.l2.forward(&s1, false)?;
        let s3 = self.l3.forward(&s2, false)?;
        [s0, s1, s2, s3].iter().map(ops::global_avg_pool).collect()
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<EncoderOutput> {
        let y = self
            .stem_bn
            .conv_forward(x, &self.stem_conv, 1, 1, train, true)?;
        let y = self.l1.forward(&y, train)?;
        let y = self.l2.forward(&y, train)?;
        let fmap = self.l3.forward(&y, train)?;
        let z = ops::global_avg_pool(&fmap)?;
        Ok(EncoderOutput { fmap, z })
    }
}
