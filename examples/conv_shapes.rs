//! Times each convolution of the reference encoder and decoder (batch 128, 32 px by default) through pretext's
//! kernels — forward, ∂x and ∂w separately, with their GFLOP/s — and then each residual block
//! (forward, and backward of a sum), medians of 21 runs on the kernels' compute pool:
//!
//!     cargo run --release --example conv_shapes [SIZE]
//!
//! SIZE (default 32) is the network's input side: 16 gives the default contrastive recipe's
//! half-size views (maps of 16×16, 8×8 and 4×4; batch 256, two views of 128 images).
#![allow(clippy::print_stdout, clippy::print_stderr)]
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use pretext::model::kernels;

fn main() -> anyhow::Result<()> {
    kernels::init();
    let dev = Device::Cpu;
    let size: usize = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 32,
    };
    anyhow::ensure!(
        size >= 8 && size.is_multiple_of(8),
        "SIZE must be a multiple of 8"
    );
    let n = if size == 16 { 256 } else { 128 };
    let reps = 21;
    kernels::on_compute_pool(|| run(&dev, n, reps, size))
}

fn run(dev: &Device, n: usize, reps: usize, size: usize) -> anyhow::Result<()> {
    // Map sides below are for 32 px inputs.
    let side = |h: usize| h * size / 32;
    let dev = dev.clone();
    // (cin, cout, h, k, stride, pad)
    let shapes = [
        ("stem", 3, 32, 32, 3, 1, 1),
        ("l1.c", 32, 32, 32, 3, 1, 1),
        ("l2.c1", 32, 64, 32, 3, 2, 1),
        ("l2.c2", 64, 64, 16, 3, 1, 1),
        ("l2.sc", 32, 64, 32, 1, 2, 0),
        ("l3.c1", 64, 128, 16, 3, 2, 1),
        ("l3.c2", 128, 128, 8, 3, 1, 1),
        ("l3.sc", 64, 128, 16, 1, 2, 0),
        // The decoders: c1 and c2 in sub-pixel form (four phases' 2×2 kernels on the small
        // map), then the last convolution to 2 (colorization) or 3 (inpainting) channels.
        ("dec.c1", 128, 256, 8, 2, 1, 1),
        ("dec.c2", 64, 128, 16, 2, 1, 1),
        ("dec.out2", 32, 2, 32, 3, 1, 1),
        ("dec.out3", 32, 3, 32, 3, 1, 1),
    ];
    for (name, cin, cout, h, k, s, p) in shapes {
        let h = side(h);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, cin, h, h), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, cin, k, k), &dev)?)?;
        let mut t = [Vec::new(), Vec::new(), Vec::new()];
        let ho = (h + 2 * p - k) / s + 1;
        let dy = Tensor::randn(0f32, 1.0, (n, cout, ho, ho), &dev)?;
        for _ in 0..reps + 1 {
            let t0 = Instant::now();
            let _y = pretext::model::ops::conv2d(x.as_tensor(), w.as_tensor(), s, p)?;
            let t1 = Instant::now();
            let _dx = dy.apply_op2_no_bwd(
                w.as_tensor(),
                &kernels::conv::Conv2dBackwardInput {
                    stride: s,
                    pad: p,
                    input_dims: vec![n, cin, h, h],
                },
            )?;
            let t2 = Instant::now();
            let _dw = x.as_tensor().apply_op2_no_bwd(
                &dy,
                &kernels::conv::Conv2dBackwardWeight {
                    stride: s,
                    pad: p,
                    k,
                },
            )?;
            let t3 = Instant::now();
            t[0].push((t1 - t0).as_secs_f64());
            t[1].push((t2 - t1).as_secs_f64());
            t[2].push((t3 - t2).as_secs_f64());
        }
        let gf = 2.0 * (n * cout * ho * ho * cin * k * k) as f64 / 1e9;
        let med: Vec<f64> = t.iter_mut().map(median_after_first).collect();
        println!(
            "{name:6} fwd {:6.2} ms ({:4.0} GF/s)  dx {:6.2} ms ({:4.0})  dw {:6.2} ms ({:4.0})",
            med[0] * 1e3,
            gf / med[0],
            med[1] * 1e3,
            gf / med[1],
            med[2] * 1e3,
            gf / med[2],
        );
    }
    // Whole residual blocks (forward, then backward of sum(out · r)).
    for (name, cin, cout, h, stride) in [
        ("l1", 32, 32, 32, 1),
        ("l2", 32, 64, 32, 2),
        ("l3", 64, 128, 16, 2),
    ] {
        let shape = kernels::block::BlockShape {
            cin,
            cout,
            stride,
            projection: stride != 1 || cin != cout,
        };
        let h = side(h);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, cin, h, h), &dev)?)?;
        let p = Var::from_tensor(&Tensor::randn(0f32, 0.1, shape.total(), &dev)?)?;
        let mut t = [Vec::new(), Vec::new()];
        for _ in 0..reps + 1 {
            let t0 = Instant::now();
            let (y, _) =
                kernels::block::residual_block_train(x.as_tensor(), p.as_tensor(), shape, 1e-5)?;
            let t1 = Instant::now();
            let r = y.ones_like()?;
            let t1b = Instant::now();
            let _g = (y * r)?.sum_all()?.backward()?;
            let t2 = Instant::now();
            t[0].push((t1 - t0).as_secs_f64());
            t[1].push((t2 - t1b).as_secs_f64());
        }
        let med: Vec<f64> = t.iter_mut().map(median_after_first).collect();
        println!(
            "block {name} fwd {:6.2} ms  bwd {:6.2} ms",
            med[0] * 1e3,
            med[1] * 1e3
        );
    }
    Ok(())
}

/// The median of the timings after the first (warm-up) one.
fn median_after_first(v: &mut Vec<f64>) -> f64 {
    v.remove(0);
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
