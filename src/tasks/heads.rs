//! Heads shared by several tasks: a two-layer MLP and the dense decoder.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::model::encoder::{BatchNorm, Counters};
use crate::model::{Linear, Model, ops};

/// Linear → ReLU → Linear, named like `nn.Sequential` (`0.weight`, `2.weight`).
pub struct Mlp {
    first: Linear,
    second: Linear,
}

impl Mlp {
    pub fn new(vb: &VarBuilder<'_>, inputs: usize, hidden: usize, outputs: usize) -> Result<Self> {
        Ok(Self {
            first: Linear::new(&vb.pp("0"), inputs, hidden)?,
            second: Linear::new(&vb.pp("2"), hidden, outputs)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.second.forward(&ops::relu(&self.first.forward(x)?)?)
    }
}

/// Linear → BatchNorm1d → ReLU → Linear (→ BatchNorm1d), named like `nn.Sequential`
/// (`0.weight`, `1.running_mean`, `3.weight`, `4.weight`): the projectors and predictors of
/// SimSiam, BYOL, Barlow Twins and VICReg. (N, inputs) → (N, outputs).
pub struct BnMlp {
    first: Linear,
    norm: BatchNorm,
    second: Linear,
    /// SimSiam's projector ends with a batch norm too.
    out_norm: Option<BatchNorm>,
}

impl BnMlp {
    /// Creates the layers under `vb` and registers their batch-norm counters with `model`.
    ///
    /// # Errors
    /// When the parameters cannot be created.
    pub fn new(
        model: &Model,
        vb: &VarBuilder<'_>,
        (inputs, hidden, outputs): (usize, usize, usize),
        out_norm: bool,
    ) -> Result<Self> {
        let mut counters: Counters = Vec::new();
        let head = Self {
            first: Linear::new(&vb.pp("0"), inputs, hidden)?,
            norm: BatchNorm::new(hidden, &vb.pp("1"), &mut counters)?,
            second: Linear::new(&vb.pp("3"), hidden, outputs)?,
            out_norm: if out_norm {
                Some(BatchNorm::new(outputs, &vb.pp("4"), &mut counters)?)
            } else {
                None
            },
        };
        model.add_counters(counters);
        Ok(head)
    }

    /// (N, inputs) → (N, outputs). `train`: batch statistics (and the running ones updated),
    /// else running statistics.
    ///
    /// # Errors
    /// When `x` is not (N, inputs).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.first.forward(x)?;
        let (n, c) = h.dims2()?;
        let h = self
            .norm
            .forward(&h.reshape((n, c, 1, 1))?, train, true)?
            .reshape((n, c))?;
        let y = self.second.forward(&h)?;
        match &self.out_norm {
            Some(bn) => {
                let (n, c) = y.dims2()?;
                bn.forward(&y.reshape((n, c, 1, 1))?, train, false)?
                    .reshape((n, c))
            }
            None => Ok(y),
        }
    }
}

/// The reference decoder: 2× (nearest upsample ×2 → conv3×3 → ReLU), then conv3×3 to the
/// output channels; (N, 128, S/4, S/4) → (N, out, S, S). Names `c1`, `c2`, `out` as PyTorch.
pub struct Decoder {
    c1: (Tensor, Tensor),
    c2: (Tensor, Tensor),
    out: (Tensor, Tensor),
}

fn conv(vb: &VarBuilder<'_>, cin: usize, cout: usize) -> Result<(Tensor, Tensor)> {
    Ok((
        vb.get_with_hints((cout, cin, 3, 3), "weight", Init::Const(0.0))?,
        vb.get_with_hints(cout, "bias", Init::Const(0.0))?,
    ))
}

impl Decoder {
    pub fn new(vb: &VarBuilder<'_>, inputs: usize, outputs: usize) -> Result<Self> {
        Ok(Self {
            c1: conv(&vb.pp("c1"), inputs, 64)?,
            c2: conv(&vb.pp("c2"), 64, 32)?,
            out: conv(&vb.pp("out"), 32, outputs)?,
        })
    }

    pub fn forward(&self, fmap: &Tensor) -> Result<Tensor> {
        let y = ops::upsample2x_conv3x3_bias(fmap, &self.c1.0, &self.c1.1, true)?;
        let y = ops::upsample2x_conv3x3_bias(&y, &self.c2.0, &self.c2.1, true)?;
        ops::conv2d_bias(&y, &self.out.0, &self.out.1, 1, 1)
    }
}
