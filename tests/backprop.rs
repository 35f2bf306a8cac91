//! The vendored candle-core's one behavioural patch (vendor/candle-core/PATCH.md): a node's
//! first gradient is stored as it is instead of being added to a tensor of zeroes. These
//! graphs reach every branch of that store — a first gradient kept, a second one added to
//! it, one gradient shared by both sides of a sum, and first gradients that are strided
//! views (transposed, broadcast, narrowed), which must still be summed into a plain
//! tensor — and check the gradients against central finite differences in f64.

use candle_core::{DType, Device, Result, Tensor, Var};

/// f(x) for a (3, 4) input; every use of `x` reaches backprop along another path.
fn f(x: &Tensor) -> Result<Tensor> {
    // The same tensor on both sides of a sum: one gradient shared by two entries.
    let twice = (x + x)?;
    // Used again through a transpose, so its second gradient arrives strided.
    let t = x.t()?.matmul(x)?; // (4, 4)
    // A broadcast (its gradient is summed back over the broadcast axis) and a narrow.
    let row = x.narrow(0, 1, 1)?; // (1, 4)
    let b = row.broadcast_as((3, 4))?.mul(&twice)?;
    let sq = x.sqr()?.narrow(1, 1, 2)?.sum_all()?;
    (t.sum_all()? + b.sum_all()? + sq)? + x.exp()?.mean_all()?
}

#[test]
fn gradients_of_tensors_used_several_times_match_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    let values: Vec<f64> = (0..12).map(|i| ((i * 7 % 12) as f64 - 5.5) / 6.0).collect();
    let x = Var::from_tensor(&Tensor::from_vec(values.clone(), (3, 4), &dev)?)?;
    let grads = f(x.as_tensor())?.backward()?;
    let g = grads
        .get(x.as_tensor())
        .ok_or_else(|| candle_core::Error::Msg("no gradient for x".into()))?;
    assert_eq!(g.dims(), &[3, 4]);
    let g: Vec<f64> = g.flatten_all()?.to_vec1()?;
    let h = 1e-6;
    for i in 0..values.len() {
        let at = |d: f64| -> Result<f64> {
            let mut v = values.clone();
            v[i] += d;
            f(&Tensor::from_vec(v, (3, 4), &dev)?)?.to_scalar::<f64>()
        };
        let numeric = (at(h)? - at(-h)?) / (2.0 * h);
        assert!(
            (numeric - g[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
            "∂f/∂x[{i}]: backprop {} against finite differences {numeric}",
            g[i]
        );
    }
    Ok(())
}

#[test]
fn a_first_gradient_that_is_a_strided_view_is_stored_as_a_plain_tensor() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?)?;
    // x's only gradient comes through a transpose: a strided view of ∂L/∂(xᵀ).
    let w = Tensor::arange(1f32, 7.0, &dev)?.reshape((3, 2))?;
    let loss = (x.t()? * &w)?.sum_all()?;
    let grads = loss.backward()?;
    let g = grads
        .get(x.as_tensor())
        .ok_or_else(|| candle_core::Error::Msg("no gradient for x".into()))?;
    assert!(g.is_contiguous(), "a stored gradient must be contiguous");
    assert_eq!(g.dtype(), DType::F32);
    assert_eq!(
        g.to_vec2::<f32>()?,
        w.t()?.to_vec2::<f32>()?,
        "∂/∂x of Σ xᵀ ⊙ w is wᵀ"
    );
    Ok(())
}
