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

/// The second patch: ∂L/∂x of a conv2d is computed as a stride-1 conv2d of the zero-inserted,
/// padded output gradient with the flipped, transposed weight, instead of upstream's
/// `conv_transpose2d`. For every geometry the encoder uses, and odd ones (odd sizes, where
/// the transposed convolution needs an output padding; wide kernels; H ≠ W; dilation, which
/// falls back), the input gradient equals upstream's formula on the same output gradient.
///
/// On the CPU the patch applies only with `CANDLE_CONV2D_INPUT_GRAD=conv2d`, read once per
/// process, so the test runs itself again in a child process with it set.
#[test]
fn conv2d_input_gradient_equals_the_transposed_convolution() -> Result<()> {
    const NAME: &str = "conv2d_input_gradient_equals_the_transposed_convolution";
    if std::env::var("CANDLE_CONV2D_INPUT_GRAD").as_deref() != Ok("conv2d") {
        let exe = std::env::current_exe()?;
        let out = std::process::Command::new(exe)
            .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env("CANDLE_CONV2D_INPUT_GRAD", "conv2d")
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the child run failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return Ok(());
    }
    let dev = Device::Cpu;
    // (C, O, H, W, K, padding, stride, dilation)
    let cases = [
        (3, 4, 8, 8, 3, 1, 1, 1),
        (3, 4, 8, 8, 3, 1, 2, 1),
        (3, 4, 7, 7, 3, 1, 2, 1),
        (3, 4, 8, 6, 1, 0, 2, 1),
        (3, 4, 9, 8, 1, 0, 2, 1),
        (2, 5, 8, 7, 3, 0, 1, 1),
        (2, 3, 11, 10, 5, 2, 2, 1),
        (2, 3, 10, 10, 5, 1, 3, 1),
        (2, 3, 9, 9, 3, 1, 1, 2),
        (2, 3, 6, 6, 3, 3, 1, 1),
    ];
    for (c, o, h, w, k, padding, stride, dilation) in cases {
        let len = 2 * c * h * w;
        let x = Var::from_tensor(&Tensor::from_vec(
            (0..len)
                .map(|i| ((i * 37 % 101) as f64 - 50.0) / 25.0)
                .collect::<Vec<_>>(),
            (2, c, h, w),
            &dev,
        )?)?;
        let kernel = Tensor::from_vec(
            (0..o * c * k * k)
                .map(|i| ((i * 53 % 97) as f64 - 48.0) / 40.0)
                .collect::<Vec<_>>(),
            (o, c, k, k),
            &dev,
        )?;
        let y = x
            .as_tensor()
            .conv2d(&kernel, padding, stride, dilation, 1)?;
        // A loss whose ∂L/∂y is not uniform: L = Σ y ⊙ r.
        let r = Tensor::from_vec(
            (0..y.elem_count())
                .map(|i| ((i * 29 % 61) as f64 - 30.0) / 15.0)
                .collect::<Vec<_>>(),
            y.dims(),
            &dev,
        )?;
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let got = grads
            .get(x.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("no gradient for x".into()))?;
        // Upstream's formula; conv_transpose2d takes one output padding for both axes, so
        // use the larger one and cut the other axis back (it only adds trailing rows).
        let out = |axis: usize| -> Result<usize> {
            Ok((y.dim(axis)? - 1) * stride + dilation * (k - 1) + 1 - 2 * padding)
        };
        let out_padding = (h - out(2)?).max(w - out(3)?);
        let want = r
            .conv_transpose2d(&kernel, padding, out_padding, stride, dilation)?
            .narrow(2, 0, h)?
            .narrow(3, 0, w)?;
        assert_eq!(
            got.dims(),
            &[2, c, h, w],
            "case {:?}",
            (c, o, h, w, k, padding, stride)
        );
        let got: Vec<f64> = got.flatten_all()?.to_vec1()?;
        let want: Vec<f64> = want.flatten_all()?.to_vec1()?;
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - e).abs() <= 1e-9 * (1.0 + e.abs()),
                "case {:?}: ∂x[{i}] = {g}, conv_transpose2d gives {e}",
                (c, o, h, w, k, padding, stride, dilation)
            );
        }
    }
    Ok(())
}
