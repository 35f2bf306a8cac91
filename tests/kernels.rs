//! The CPU kernels against candle's own operations and against finite differences.

use candle_core::{Device, Result, Tensor, Var};
use pretext::model::kernels::{conv, norm, pointwise, subpixel};
use pretext::model::ops;

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(dims: &[usize], seed: u64) -> Result<Tensor> {
    let n = dims.iter().product();
    Tensor::from_vec(values(n, seed), dims, &Device::Cpu)
}

/// The gradient of `v` in `store`, an error when there is none.
fn grad_of<'a>(store: &'a candle_core::backprop::GradStore, v: &Var) -> Result<&'a Tensor> {
    store
        .get(v)
        .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

fn max_abs(a: &Tensor) -> Result<f32> {
    a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// (N, C, H, W, O, K, stride, padding)
type Geometry = (usize, usize, usize, usize, usize, usize, usize, usize);

const GEOMETRIES: [Geometry; 49] = [
    (2, 3, 8, 8, 4, 3, 1, 1),
    (3, 4, 9, 7, 5, 3, 2, 1),
    (2, 4, 8, 8, 6, 1, 2, 0),
    (2, 5, 6, 6, 3, 1, 1, 0),
    (1, 2, 5, 5, 2, 3, 1, 0),
    (2, 3, 7, 7, 4, 5, 2, 2),
    (5, 8, 4, 4, 8, 3, 1, 1),
    // "Same" convolutions of other shapes: two wrapped columns per side, a map narrower than
    // the kernel's reach, a non-square map.
    (2, 3, 6, 6, 4, 5, 1, 2),
    (1, 2, 2, 2, 3, 3, 1, 1),
    (2, 3, 5, 7, 4, 3, 1, 1),
    // Small output maps are multiplied a group of images at a time: full groups and a shorter
    // last one, strided, pointwise.
    (19, 3, 4, 4, 5, 3, 1, 1),
    (11, 3, 4, 4, 5, 1, 1, 0),
    (9, 3, 6, 6, 4, 3, 2, 1),
    (16, 3, 6, 6, 4, 3, 2, 1),
    (3, 2, 5, 5, 2, 3, 1, 0),
    // Wider "same" convolutions: other input and output widths with a short last group, more
    // images than one group holds, a non-square map, a 2×2 map, an odd side.
    (3, 16, 8, 8, 12, 3, 1, 1),
    (37, 8, 4, 4, 16, 3, 1, 1),
    (2, 9, 6, 10, 8, 3, 1, 1),
    (1, 8, 2, 2, 8, 3, 1, 1),
    (2, 8, 7, 7, 8, 3, 1, 1),
    // Outputs larger than the input, whose backward pass also runs flipped (with padding
    // K − 1 − P): the sub-pixel decoders' 2×2 kernels with padding 1, one image and groups of
    // them, and a 3×3 kernel with padding 2.
    (2, 8, 5, 6, 12, 2, 1, 1),
    (5, 16, 4, 4, 8, 2, 1, 1),
    (3, 9, 4, 5, 5, 3, 1, 2),
    // Rows of whole 8-pixel vectors, which the direct kernels run on AVX2 machines: a 3-channel
    // input, one and two vectors per row with 1, 2 and 3 vectors left in a tile, output
    // channels that allow the direct forward pass but not the direct backward one, the encoder's
    // first stage (on AVX2 and AVX-512 CPUs now Winograd F(4×4, 3×3)'s: one 512-bit chunk), and
    // an input wider than one band of rows.
    (2, 3, 8, 8, 32, 3, 1, 1),
    (3, 8, 5, 16, 16, 3, 1, 1),
    (2, 16, 7, 8, 32, 3, 1, 1),
    (1, 12, 8, 24, 20, 3, 1, 1),
    (2, 32, 16, 32, 32, 3, 1, 1),
    (1, 64, 20, 40, 16, 3, 1, 1),
    // 4 input channels, 8 output ones: on AVX2 ∂L/∂x direct (the flipped weight although
    // C < 8) and ∂L/∂w by im2col.
    (2, 4, 6, 8, 8, 3, 1, 1),
    // Stride 2 with output rows of whole vectors: an even and an odd input side, the encoder's
    // second stage, 4 output channels.
    (2, 8, 16, 16, 16, 3, 2, 1),
    (3, 4, 15, 31, 16, 3, 2, 1),
    (1, 32, 32, 32, 64, 3, 2, 1),
    (2, 6, 16, 16, 4, 3, 2, 1),
    // Winograd F(2×2, 3×3) (at least 16 channels, even height, rows of whole vectors): all
    // three passes in 512-bit form on AVX-512 (24 tiles, ending inside a chunk of 32), 8-pixel
    // rows (256-bit form, also on AVX-512 CPUs), and 48 output channels (∂L/∂w in 256-bit
    // form only, or none).
    (2, 16, 6, 16, 32, 3, 1, 1),
    (3, 20, 10, 8, 16, 3, 1, 1),
    (2, 32, 6, 32, 48, 3, 1, 1),
    // 4×4 maps, which AVX-512 CPUs run as one F(4×4, 3×3) tile per image, 32 images along
    // the lanes: every pass (70 images: two full chunks and a part of one), and 24 output
    // channels (the forward pass and ∂L/∂x there, ∂L/∂w by im2col).
    (70, 32, 4, 4, 32, 3, 1, 1),
    (5, 16, 4, 4, 24, 3, 1, 1),
    // 8×8 maps with stride 1, which AVX-512 CPUs run as four F(4×4, 3×3) tiles per image, 16
    // images along the lanes: every pass (37 images: two full chunks and a part of one); and 24
    // output channels, which keep F(2×2, 3×3) (the forward pass and ∂L/∂x two images per
    // chunk, ∂L/∂w by im2col).
    (37, 32, 8, 8, 64, 3, 1, 1),
    (5, 16, 8, 8, 24, 3, 1, 1),
    // 8×8 maps with stride 2, which AVX-512 CPUs run with the stride-2 form, 16 images along
    // the lanes: every pass (37 images: two full chunks and a part of one), and 24 output
    // channels (the forward pass and ∂L/∂x there, ∂L/∂w by im2col).
    (37, 32, 8, 8, 64, 3, 2, 1),
    (5, 16, 8, 8, 24, 3, 2, 1),
    // Winograd's stride-2 form (sides multiples of 4, output rows of whole vectors): 8-pixel
    // output rows (256-bit form), 80 tiles ending inside a chunk of 32 with 17 channels.
    (2, 16, 16, 16, 32, 3, 2, 1),
    (1, 17, 20, 64, 32, 3, 2, 1),
    // 8×8 maps: stride 1 with C ≠ O, which AVX-512 CPUs take with F(4×4, 3×3) along the
    // images forward and for ∂L/∂w, and ∂L/∂x (16 output channels) two images per chunk with
    // F(2×2, 3×3) (three images: a pair, then one alone); and an 8×8 output of stride 2
    // (forward and ∂L/∂x in pairs).
    (3, 16, 8, 8, 32, 3, 1, 1),
    (3, 32, 16, 16, 16, 3, 2, 1),
    // 16×16 maps, which AVX-512 CPUs take two images per chunk with F(4×4, 3×3) (three
    // images: a pair, then one alone in half a chunk), AVX2 ones one image per chunk; and
    // F(4×4, 3×3) with C ≠ O (so ∂L/∂x runs flipped), 12 tiles a row.
    (3, 32, 16, 16, 32, 3, 1, 1),
    (3, 16, 8, 48, 32, 3, 1, 1),
];

/// `conv::conv2d(x, wt)` against candle's own convolution: the output, and the gradient of
/// `sum(y · r)` for every variable in `vars` (x and/or the weight, named): the output to 2e-5
/// of its largest value (F(4×4, 3×3)'s transforms round more than a direct sum: with 64
/// channels its largest error was 3.6e-6 of the largest output), the gradients to 1e-4.
fn assert_conv_matches_candle(
    x: &Tensor,
    wt: &Var,
    (s, p): (usize, usize),
    vars: &[(&str, &Var)],
    seed: u64,
    what: &str,
) -> Result<()> {
    let ours = conv::conv2d(x, wt.as_tensor(), s, p)?;
    let stock = x.conv2d(wt.as_tensor(), p, s, 1, 1)?;
    assert_eq!(ours.dims(), stock.dims(), "{what}");
    let d = max_diff(&ours, &stock)?;
    let scale = max_abs(&stock)?.max(1.0);
    assert!(
        d / scale < 2e-5,
        "{what}: forward differs by {d} (scale {scale})"
    );

    let r = tensor(ours.dims(), seed)?;
    let g_ours = (ours * &r)?.sum_all()?.backward()?;
    let g_stock = (stock * &r)?.sum_all()?.backward()?;
    for (name, v) in vars {
        let (a, b) = (grad_of(&g_ours, v)?, grad_of(&g_stock, v)?);
        let d = max_diff(a, b)?;
        let scale = max_abs(b)?.max(1.0);
        assert!(
            d / scale < 1e-4,
            "{what}: {name} gradient differs by {d} (scale {scale})"
        );
    }
    Ok(())
}

#[test]
fn conv2d_forward_and_gradients_match_candle() -> Result<()> {
    for (i, &(n, c, h, w, o, k, s, p)) in GEOMETRIES.iter().enumerate() {
        let seed = i as u64 * 10;
        let x = Var::from_tensor(&tensor(&[n, c, h, w], seed)?)?;
        let wt = Var::from_tensor(&tensor(&[o, c, k, k], seed + 1)?)?;
        let vars = [("input", &x), ("weight", &wt)];
        let what = format!("geometry {i}");
        assert_conv_matches_candle(x.as_tensor(), &wt, (s, p), &vars, seed + 2, &what)?;
    }
    Ok(())
}

/// ∂L/∂w alone (an input that needs no gradient, as the network's images), where the direct
/// kernels' tiles of 6 taps leave 1 to 5 taps over (C·9 = 27, 45, 63, 81, 99 taps; the
/// strided ones run im2col).
#[test]
fn conv2d_weight_gradient_alone_matches_candle() -> Result<()> {
    for (i, (c, s)) in [(3usize, 1usize), (5, 1), (7, 2), (9, 1), (11, 2)]
        .into_iter()
        .enumerate()
    {
        let seed = 500 + i as u64 * 10;
        let x = tensor(&[2, c, 8 * s, 16 * s], seed)?;
        let wt = Var::from_tensor(&tensor(&[16, c, 3, 3], seed + 1)?)?;
        let what = format!("{c} channels");
        assert_conv_matches_candle(&x, &wt, (s, 1), &[("weight", &wt)], seed + 2, &what)?;
    }
    Ok(())
}

/// Central differences of `f` at a few coordinates of `v` against the analytic gradient.
fn check_finite_differences(
    v: &Var,
    analytic: &Tensor,
    f: &dyn Fn(&Tensor) -> Result<f32>,
    what: &str,
) -> Result<()> {
    let base = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let grad = analytic.flatten_all()?.to_vec1::<f32>()?;
    let eps = 1e-2f32;
    let f0 = f(v.as_tensor())?;
    let (mut checked, mut tried) = (0, 0);
    for idx in (0..base.len()).step_by((base.len() / 11).max(1)) {
        let mut plus = base.clone();
        plus[idx] += eps;
        let mut minus = base.clone();
        minus[idx] -= eps;
        let fp = f(&Tensor::from_vec(plus, v.dims(), &Device::Cpu)?)?;
        let fm = f(&Tensor::from_vec(minus, v.dims(), &Device::Cpu)?)?;
        tried += 1;
        // Where a ReLU kink lies within ±eps the one-sided slopes disagree and no central
        // difference is meaningful: skip that coordinate.
        let (right, left) = ((fp - f0) / eps, (f0 - fm) / eps);
        if (right - left).abs() > 0.05 * right.abs().max(left.abs()).max(1.0) {
            continue;
        }
        checked += 1;
        let numeric = (fp - fm) / (2.0 * eps);
        let tol = 2e-2 * numeric.abs().max(grad[idx].abs()).max(1.0);
        assert!(
            (numeric - grad[idx]).abs() < tol,
            "{what}[{idx}]: finite difference {numeric} vs analytic {}",
            grad[idx]
        );
    }
    assert!(
        checked * 2 >= tried,
        "{what}: only {checked} of {tried} coordinates were smooth enough to check"
    );
    Ok(())
}

#[test]
fn conv2d_gradients_match_finite_differences() -> Result<()> {
    // Strided convolutions (im2col), and a "same" one on rows of whole vectors (the direct
    // kernels on AVX2 machines).
    conv2d_finite_differences((2, 3, 6, 5, 4, 3, 2, 1))?;
    conv2d_finite_differences((2, 8, 4, 8, 16, 3, 1, 1))?;
    conv2d_finite_differences((1, 4, 6, 16, 16, 3, 2, 1))
}

fn conv2d_finite_differences(geometry: Geometry) -> Result<()> {
    let (n, c, h, w, o, k, s, p) = geometry;
    let x = Var::from_tensor(&tensor(&[n, c, h, w], 7)?)?;
    let wt = Var::from_tensor(&tensor(&[o, c, k, k], 8)?)?;
    let y = conv::conv2d(x.as_tensor(), wt.as_tensor(), s, p)?;
    let r = tensor(y.dims(), 9)?;
    let grads = (y * &r)?.sum_all()?.backward()?;
    let loss = |xv: &Tensor, wv: &Tensor| -> Result<f32> {
        (conv::conv2d(xv, wv, s, p)? * &r)?
            .sum_all()?
            .to_scalar::<f32>()
    };
    let gx = grad_of(&grads, &x)?;
    let gw = grad_of(&grads, &wt)?;
    check_finite_differences(&x, gx, &|t| loss(t, wt.as_tensor()), "conv input")?;
    check_finite_differences(&wt, gw, &|t| loss(x.as_tensor(), t), "conv weight")
}

/// Batch norm (+ ReLU) written with candle's stock operations.
fn stock_batch_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, relu: bool) -> Result<Tensor> {
    let (mean, var, _) = ops::batch_stats(x)?;
    let y = ops::normalize(x, &mean, &var, weight, bias, 1e-5)?;
    if relu { y.relu() } else { Ok(y) }
}

#[test]
fn batch_norm_forward_and_gradients_match_candle() -> Result<()> {
    for (i, relu) in [false, true].into_iter().enumerate() {
        let seed = 100 + i as u64 * 10;
        // Values far from zero mean, so the statistics matter.
        let x = Var::from_tensor(&((tensor(&[4, 3, 5, 6], seed)? * 3.0)? + 2.0)?)?;
        let weight = Var::from_tensor(&(tensor(&[3], seed + 1)? + 1.0)?)?;
        let bias = Var::from_tensor(&tensor(&[3], seed + 2)?)?;
        let norm::BatchNormOutput { y: ours, mean, var } = norm::batch_norm_train(
            x.as_tensor(),
            weight.as_tensor(),
            bias.as_tensor(),
            1e-5,
            relu,
        )?;
        let stock = stock_batch_norm(x.as_tensor(), weight.as_tensor(), bias.as_tensor(), relu)?;
        let d = max_diff(&ours, &stock)?;
        assert!(d < 1e-4, "relu {relu}: forward differs by {d}");
        let (m, v, _) = ops::batch_stats(x.as_tensor())?;
        assert!(max_diff(&mean, &m.flatten_all()?)? < 1e-5);
        assert!(max_diff(&var, &v.flatten_all()?)? < 1e-4);

        let r = tensor(ours.dims(), seed + 3)?;
        let g_ours = (ours * &r)?.sum_all()?.backward()?;
        let g_stock = (stock * &r)?.sum_all()?.backward()?;
        for (name, v) in [("input", &x), ("weight", &weight), ("bias", &bias)] {
            let (a, b) = (grad_of(&g_ours, v)?, grad_of(&g_stock, v)?);
            let d = max_diff(a, b)?;
            assert!(d < 1e-4, "relu {relu}: {name} gradient differs by {d}");
        }
    }
    Ok(())
}

#[test]
fn batch_norm_gradients_match_finite_differences() -> Result<()> {
    let x = Var::from_tensor(&(tensor(&[3, 2, 4, 4], 31)? * 2.0)?)?;
    let weight = Var::from_tensor(&(tensor(&[2], 32)? + 1.5)?)?;
    let bias = Var::from_tensor(&tensor(&[2], 33)?)?;
    let norm::BatchNormOutput { y, .. } = norm::batch_norm_train(
        x.as_tensor(),
        weight.as_tensor(),
        bias.as_tensor(),
        1e-5,
        true,
    )?;
    let r = tensor(y.dims(), 34)?;
    let grads = (y * &r)?.sum_all()?.backward()?;
    let loss = |xv: &Tensor, wv: &Tensor, bv: &Tensor| -> Result<f32> {
        (norm::batch_norm_train(xv, wv, bv, 1e-5, true)?.y * &r)?
            .sum_all()?
            .to_scalar::<f32>()
    };
    check_finite_differences(
        &x,
        grad_of(&grads, &x)?,
        &|t| loss(t, weight.as_tensor(), bias.as_tensor()),
        "bn input",
    )?;
    check_finite_differences(
        &weight,
        grad_of(&grads, &weight)?,
        &|t| loss(x.as_tensor(), t, bias.as_tensor()),
        "bn weight",
    )?;
    check_finite_differences(
        &bias,
        grad_of(&grads, &bias)?,
        &|t| loss(x.as_tensor(), weight.as_tensor(), t),
        "bn bias",
    )
}

#[test]
fn batch_norm_eval_uses_the_given_statistics() -> Result<()> {
    let x = tensor(&[2, 3, 4, 4], 41)?;
    let weight = (tensor(&[3], 42)? + 1.0)?;
    let bias = tensor(&[3], 43)?;
    let mean = tensor(&[3], 44)?;
    let var = (tensor(&[3], 45)?.abs()? + 0.5)?;
    for relu in [false, true] {
        let ours = norm::batch_norm_eval(&x, &weight, &bias, &mean, &var, 1e-5, relu)?;
        let shape = (1, 3, 1, 1);
        let stock = ops::normalize(
            &x,
            &mean.reshape(shape)?,
            &var.reshape(shape)?,
            &weight,
            &bias,
            1e-5,
        )?;
        let stock = if relu { stock.relu()? } else { stock };
        assert!(max_diff(&ours, &stock)? < 1e-5);
    }
    Ok(())
}

#[test]
fn add_relu_matches_candle() -> Result<()> {
    let a = Var::from_tensor(&tensor(&[2, 3, 4, 5], 51)?)?;
    let b = Var::from_tensor(&tensor(&[2, 3, 4, 5], 52)?)?;
    let ours = pointwise::add_relu(a.as_tensor(), b.as_tensor())?;
    let stock = (a.as_tensor() + b.as_tensor())?.relu()?;
    assert!(max_diff(&ours, &stock)? < 1e-6);
    let r = tensor(ours.dims(), 53)?;
    let g1 = (ours * &r)?.sum_all()?.backward()?;
    let g2 = (stock * &r)?.sum_all()?.backward()?;
    for v in [&a, &b] {
        let (x, y) = (grad_of(&g1, v)?, grad_of(&g2, v)?);
        assert!(max_diff(x, y)? < 1e-6);
    }
    Ok(())
}

/// The whole encoder, forward in training mode and backward, gives the same z, running
/// statistics and parameter gradients with the kernels as with candle's stock operations.
#[test]
fn encoder_with_kernels_matches_stock_candle() -> Result<()> {
    encoder_matches_stock(4)
}

/// As above with several runs of images per thread and groups of images per product inside
/// them (20 images; on AVX-512 the 8×8 maps take the images along Winograd's lanes in
/// groups of 16, a full group and part of one; elsewhere smaller groups), so the residual
/// blocks' grouped backward passes — ∂x, ∂w and batch norm's sums of the stage before — are
/// checked too.
#[test]
fn encoder_with_kernels_matches_stock_candle_in_groups_of_images() -> Result<()> {
    one_thread(|| encoder_matches_stock(20))
}

/// The fused ops keep their large buffers in a pool between steps and write into them again
/// without zeroing them first (a convolution's output, ∂L/∂y1 inside a residual block). With
/// every buffer in the pool filled with NaN after a first step, a second step on the same
/// batch must give the first step's values exactly: a value a kernel leaves unwritten would
/// show as NaN. 16 px leaves even maps at every stage, 28 px a 7×7 one at the last.
#[test]
fn encoder_kernels_overwrite_every_value_of_the_buffers_they_reuse() -> Result<()> {
    use pretext::model::kernels::pool;
    let _alone = ENCODER_STEPS.lock().unwrap_or_else(|e| e.into_inner());
    for side in [16, 28] {
        let n = 32;
        let (z1, g1) = encoder_step(false, n, side)?;
        let held = pool::poison_held();
        assert!(
            held >= 4,
            "{side} px: the first step gave back {held} buffers"
        );
        let (before, missed_before) = (pool::reuses(), pool::misses());
        let (z2, g2) = encoder_step(false, n, side)?;
        let reused = pool::reuses() - before;
        // The stem's, each block's two or three convolution outputs (all ≥ 256 KiB at 32
        // images) and each block's ∂L/∂y1: 12.
        assert!(
            reused >= 12,
            "{side} px: the second step reused {reused} buffers"
        );
        let missed = pool::misses() - missed_before;
        assert_eq!(
            missed, 0,
            "{side} px: the second step found no buffer {missed} times"
        );
        assert_eq!(max_diff(&z1, &z2)?, 0.0, "{side} px: z");
        assert_eq!(g1.len(), g2.len());
        for ((name, a), (_, b)) in g1.iter().zip(&g2) {
            assert_eq!(max_diff(a, b)?, 0.0, "{side} px: {name}");
        }
    }
    Ok(())
}

/// Held by the tests that run whole encoder steps, so that none takes the buffers another
/// one's steps gave back to the kernels' pool in between.
static ENCODER_STEPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One training step's z and the gradients and running statistics after it, with candle's
/// stock ops or the kernels, for a batch of `n` images of `side` px.
fn encoder_step(stock: bool, n: usize, side: usize) -> Result<(Tensor, Vec<(String, Tensor)>)> {
    use pretext::model::{Model, kernels};
    let run = || -> anyhow::Result<(Tensor, Vec<(String, Tensor)>)> {
        kernels::set_stock_ops(stock);
        let model = Model::new(Device::Cpu, 3)?;
        model.init_weights(5)?;
        let x = tensor(&[n, 3, side, side], 61)?;
        let out = model.encoder.forward(&x, true)?;
        let r = tensor(out.fmap.dims(), 62)?;
        let grads = (&out.fmap * &r)?.sum_all()?.backward()?;
        let mut g = Vec::new();
        for (name, v) in model.trainable_vars() {
            if let Some(t) = grads.get(&v) {
                g.push((name, t.detach()));
            }
        }
        let state = model.state_dict()?;
        for (name, t) in state {
            if name.ends_with("running_var") || name.ends_with("running_mean") {
                g.push((name, t.detach()));
            }
        }
        // Detached, so that the step's graph (and the buffers its ops keep) goes with it.
        Ok((out.z.detach(), g))
    };
    let result = run().map_err(|e| candle_core::Error::Msg(e.to_string()));
    kernels::set_stock_ops(false);
    result
}

fn encoder_matches_stock(n: usize) -> Result<()> {
    let _alone = ENCODER_STEPS.lock().unwrap_or_else(|e| e.into_inner());
    let (z_stock, g_stock) = encoder_step(true, n, 16)?;
    let (z_ours, g_ours) = encoder_step(false, n, 16)?;
    assert!(max_diff(&z_ours, &z_stock)? < 1e-4);
    assert_eq!(g_ours.len(), g_stock.len());
    assert!(g_ours.len() > 20, "only {} gradients", g_ours.len());
    for ((n1, a), (n2, b)) in g_ours.iter().zip(&g_stock) {
        assert_eq!(n1, n2);
        let d = max_diff(a, b)?;
        let scale = max_abs(b)?.max(1e-3);
        assert!(d / scale < 1e-3, "{n1}: differs by {d} (scale {scale})");
    }
    Ok(())
}

#[test]
fn bias_act_and_upsample_match_candle() -> Result<()> {
    for relu in [false, true] {
        let x = Var::from_tensor(&tensor(&[2, 3, 4, 5], 71)?)?;
        let b = Var::from_tensor(&tensor(&[3], 72)?)?;
        let ours = pointwise::bias_act(x.as_tensor(), b.as_tensor(), relu)?;
        let stock = x
            .as_tensor()
            .broadcast_add(&b.as_tensor().reshape((1, 3, 1, 1))?)?;
        let stock = if relu { stock.relu()? } else { stock };
        assert!(max_diff(&ours, &stock)? < 1e-6);
        let r = tensor(ours.dims(), 73)?;
        let g1 = (ours * &r)?.sum_all()?.backward()?;
        let g2 = (stock * &r)?.sum_all()?.backward()?;
        for v in [&x, &b] {
            let (p, q) = (grad_of(&g1, v)?, grad_of(&g2, v)?);
            assert!(max_diff(p, q)? < 1e-5, "relu {relu}");
        }
    }
    let x = Var::from_tensor(&tensor(&[2, 3, 4, 5], 74)?)?;
    let ours = pointwise::upsample2x(x.as_tensor())?;
    let stock = x.as_tensor().upsample_nearest2d(8, 10)?;
    assert_eq!(ours.dims(), &[2, 3, 8, 10]);
    assert!(max_diff(&ours, &stock)? < 1e-7);
    let r = tensor(ours.dims(), 75)?;
    let g = (ours * &r)?.sum_all()?.backward()?;
    let gx = grad_of(&g, &x)?;
    // Each input pixel's gradient is the sum of the 2×2 block it was copied to.
    let r4: Vec<Vec<Vec<Vec<f32>>>> = (0..2)
        .map(|n| r.get(n)?.to_vec3::<f32>())
        .collect::<Result<_>>()?;
    let g4: Vec<Vec<Vec<Vec<f32>>>> = (0..2)
        .map(|n| gx.get(n)?.to_vec3::<f32>())
        .collect::<Result<_>>()?;
    for n in 0..2 {
        for c in 0..3 {
            for y in 0..4 {
                for xx in 0..5 {
                    let want = r4[n][c][2 * y][2 * xx]
                        + r4[n][c][2 * y][2 * xx + 1]
                        + r4[n][c][2 * y + 1][2 * xx]
                        + r4[n][c][2 * y + 1][2 * xx + 1];
                    assert!((g4[n][c][y][xx] - want).abs() < 1e-5);
                }
            }
        }
    }
    Ok(())
}

/// The decoders' nearest ×2 upsampling + 3×3 convolution + bias (+ ReLU) with candle's own
/// ops: the reference the sub-pixel kernel must reproduce.
fn stock_upsample_conv(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    // Upsampling from reshape and broadcast (candle's upsample_nearest2d backward overwrites).
    let up = x
        .reshape((n, c, h, 1, wd, 1))?
        .broadcast_as((n, c, h, 2, wd, 2))?
        .reshape((n, c, 2 * h, 2 * wd))?;
    let y = up
        .conv2d(w, 1, 1, 1, 1)?
        .broadcast_add(&b.reshape((1, (), 1, 1))?)?;
    if relu { y.relu() } else { Ok(y) }
}

#[test]
fn subpixel_upsample_conv_matches_candle() -> Result<()> {
    // (N, C, H, W, O): square and non-square maps, a 1-pixel side, the decoders' channel
    // counts on 8×8 and 16×16 maps, and batches that the convolution splits into groups.
    let cases = [
        (2, 3, 4, 5, 4),
        (1, 2, 1, 3, 3),
        (3, 16, 8, 8, 8),
        (19, 8, 4, 4, 6),
        (2, 12, 16, 16, 5),
    ];
    for (i, &(n, c, h, w, o)) in cases.iter().enumerate() {
        for relu in [true, false] {
            let seed = 100 + 10 * i as u64;
            let x = Var::from_tensor(&tensor(&[n, c, h, w], seed)?)?;
            let wt = Var::from_tensor(&(tensor(&[o, c, 3, 3], seed + 1)? * 0.3)?)?;
            let b = Var::from_tensor(&(tensor(&[o], seed + 2)? * 0.1)?)?;
            let ours = subpixel::upsample_conv3x3_bias_act(
                x.as_tensor(),
                wt.as_tensor(),
                b.as_tensor(),
                relu,
            )?;
            let stock = stock_upsample_conv(x.as_tensor(), wt.as_tensor(), b.as_tensor(), relu)?;
            assert_eq!(ours.dims(), &[n, o, 2 * h, 2 * w]);
            let scale = max_abs(&stock)?.max(1e-3);
            let d = max_diff(&ours, &stock)?;
            assert!(
                d / scale < 1e-5,
                "case {i} relu {relu}: output differs by {d}"
            );
            let r = tensor(ours.dims(), seed + 3)?;
            let g1 = (ours * &r)?.sum_all()?.backward()?;
            let g2 = (stock * &r)?.sum_all()?.backward()?;
            for (v, name) in [(&x, "x"), (&wt, "weight"), (&b, "bias")] {
                let (p, q) = (grad_of(&g1, v)?, grad_of(&g2, v)?);
                let scale = max_abs(q)?.max(1e-3);
                let d = max_diff(p, q)?;
                assert!(
                    d / scale < 1e-4,
                    "case {i} relu {relu}: ∂{name} differs by {d}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn subpixel_upsample_conv_gradients_match_finite_differences() -> Result<()> {
    let x = Var::from_tensor(&tensor(&[2, 3, 3, 4], 201)?)?;
    let wt = Var::from_tensor(&tensor(&[4, 3, 3, 3], 202)?)?;
    let b = Var::from_tensor(&tensor(&[4], 203)?)?;
    let y =
        subpixel::upsample_conv3x3_bias_act(x.as_tensor(), wt.as_tensor(), b.as_tensor(), true)?;
    let r = tensor(y.dims(), 204)?;
    let grads = (y * &r)?.sum_all()?.backward()?;
    let loss = |xv: &Tensor, wv: &Tensor, bv: &Tensor| -> Result<f32> {
        (subpixel::upsample_conv3x3_bias_act(xv, wv, bv, true)? * &r)?
            .sum_all()?
            .to_scalar::<f32>()
    };
    let (xt, wtt, bt) = (x.as_tensor(), wt.as_tensor(), b.as_tensor());
    check_finite_differences(&x, grad_of(&grads, &x)?, &|t| loss(t, wtt, bt), "input")?;
    check_finite_differences(&wt, grad_of(&grads, &wt)?, &|t| loss(xt, t, bt), "weight")?;
    check_finite_differences(&b, grad_of(&grads, &b)?, &|t| loss(xt, wtt, t), "bias")
}

#[test]
fn fused_conv_batch_norm_matches_the_separate_ops() -> Result<()> {
    fused_matches_separate(3)
}

/// Several runs of images per thread, and groups of images per product inside each run (8×8
/// maps: groups of 2; 4×4: groups of 8): the grouped backward passes, at any core count.
#[test]
fn fused_conv_batch_norm_matches_the_separate_ops_in_groups_of_images() -> Result<()> {
    one_thread(|| fused_matches_separate(12))
}

/// Runs `f` on a rayon pool of one thread, where a batch is cut into runs of a quarter of it.
fn one_thread(f: impl FnOnce() -> Result<()> + Send) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(candle_core::Error::wrap)?
        .install(f)
}

fn fused_matches_separate(n: usize) -> Result<()> {
    use pretext::model::kernels::fused;
    // Stride-1 "same" stages of 8 or more input channels run their backward pass flipped (one
    // im2col of ∂L/∂y for both products), the others as the adjoint of the forward pass.
    let cases = [
        (true, 1, 3),
        (false, 2, 3),
        (false, 2, 1),
        (true, 1, 5),
        (false, 1, 1),
    ];
    for (i, &(relu, stride, k)) in cases.iter().enumerate() {
        let seed = 200 + 10 * i as u64;
        let x = Var::from_tensor(&tensor(&[n, 8, 8, 8], seed)?)?;
        let w = Var::from_tensor(&tensor(&[5, 8, k, k], seed + 1)?)?;
        let weight = Var::from_tensor(&(tensor(&[5], seed + 2)? + 1.0)?)?;
        let bias = Var::from_tensor(&tensor(&[5], seed + 3)?)?;
        let pad = k / 2;
        let norm::BatchNormOutput {
            y: y1,
            mean: m1,
            var: v1,
        } = fused::conv_batch_norm_train(
            x.as_tensor(),
            w.as_tensor(),
            weight.as_tensor(),
            bias.as_tensor(),
            stride,
            pad,
            1e-5,
            relu,
        )?;
        let a = x.as_tensor().conv2d(w.as_tensor(), pad, stride, 1, 1)?;
        let y2 = stock_batch_norm(&a, weight.as_tensor(), bias.as_tensor(), relu)?;
        let (m2, v2, _) = ops::batch_stats(&a)?;
        assert!(max_diff(&y1, &y2)? < 1e-4, "case {i}: forward");
        assert!(max_diff(&m1, &m2.flatten_all()?)? < 1e-5, "case {i}: mean");
        assert!(max_diff(&v1, &v2.flatten_all()?)? < 1e-4, "case {i}: var");
        let r = tensor(y1.dims(), seed + 4)?;
        let g1 = (y1 * &r)?.sum_all()?.backward()?;
        let g2 = (y2 * &r)?.sum_all()?.backward()?;
        for (name, v) in [("x", &x), ("w", &w), ("weight", &weight), ("bias", &bias)] {
            let (p, q) = (grad_of(&g1, v)?, grad_of(&g2, v)?);
            let d = max_diff(p, q)?;
            let scale = max_abs(q)?.max(1.0);
            assert!(d / scale < 1e-4, "case {i}: {name} gradient differs by {d}");
        }
    }
    Ok(())
}

#[test]
fn residual_block_gradients_match_finite_differences() -> Result<()> {
    use pretext::model::kernels::block::{BlockShape, residual_block_train};
    for (i, shape) in [
        BlockShape {
            cin: 3,
            cout: 3,
            stride: 1,
            projection: false,
        },
        BlockShape {
            cin: 2,
            cout: 4,
            stride: 2,
            projection: true,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 300 + 10 * i as u64;
        let x = Var::from_tensor(&tensor(&[3, shape.cin, 6, 6], seed)?)?;
        // Batch-norm weights near 1 so the block is well conditioned.
        let mut p = values(shape.total(), seed + 1);
        let sizes = shape.sizes();
        let mut at = 0;
        for (k, n) in sizes.iter().enumerate() {
            if k % 3 == 1 {
                for v in &mut p[at..at + n] {
                    *v = 1.0 + 0.3 * *v;
                }
            }
            at += n;
        }
        let params = Var::from_tensor(&Tensor::from_vec(p, shape.total(), &Device::Cpu)?)?;
        let (y, stats) = residual_block_train(x.as_tensor(), params.as_tensor(), shape, 1e-5)?;
        assert_eq!(stats.len(), if shape.projection { 3 } else { 2 });
        let r = tensor(y.dims(), seed + 2)?;
        let grads = (y * &r)?.sum_all()?.backward()?;
        let loss = |xv: &Tensor, pv: &Tensor| -> Result<f32> {
            (residual_block_train(xv, pv, shape, 1e-5)?.0 * &r)?
                .sum_all()?
                .to_scalar::<f32>()
        };
        let gx = grad_of(&grads, &x)?;
        let gp = grad_of(&grads, &params)?;
        check_finite_differences(&x, gx, &|t| loss(t, params.as_tensor()), "block input")?;
        check_finite_differences(&params, gp, &|t| loss(x.as_tensor(), t), "block params")?;
    }
    Ok(())
}
