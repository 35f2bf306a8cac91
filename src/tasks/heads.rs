//! Heads shared by several tasks: a two-layer MLP and the dense decoder.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::model::{Linear, ops};

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
        let y = ops::conv2d_bias_relu(&ops::upsample2x(fmap)?, &self.c1.0, &self.c1.1, 1, 1)?;
        let y = ops::conv2d_bias_relu(&ops::upsample2x(&y)?, &self.c2.0, &self.c2.1, 1, 1)?;
        ops::conv2d_bias(&y, &self.out.0, &self.out.1, 1, 1)
    }
}
