#![allow(clippy::print_stdout, clippy::unwrap_used)]
use candle_core::{Device, Tensor, Var};
use pretext::model::kernels::norm;
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let x = Tensor::randn(0f32, 1.0, (128, 32, 32, 32), &Device::Cpu)?;
    let w = Var::from_tensor(&Tensor::ones(32, candle_core::DType::F32, &Device::Cpu)?)?;
    let b = Var::from_tensor(&Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu)?)?;
    let xv = Var::from_tensor(&x)?;
    let time = |name: &str, f: &dyn Fn() -> candle_core::Result<()>| { f().unwrap(); let t = Instant::now(); for _ in 0..5 { f().unwrap(); } println!("{name}: {:.2} ms", t.elapsed().as_secs_f64() / 5.0 * 1e3); };
    time("stats", &|| { x.apply_op1_no_bwd(&norm::BatchStats)?; Ok(()) });
    time("bn fwd", &|| { norm::batch_norm_train(&x, w.as_tensor(), b.as_tensor(), 1e-5, true)?; Ok(()) });
    let (y, _, _) = norm::batch_norm_train(xv.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5, true)?;
    let g = Tensor::randn(0f32, 1.0, y.dims(), &Device::Cpu)?;
    time("bn fwd+bwd", &|| { let (y, _, _) = norm::batch_norm_train(xv.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5, true)?; (y * &g)?.sum_all()?.backward()?; Ok(()) });
    time("mul+sum+bwd only", &|| { ((xv.as_tensor() * 1.0)? * &g)?.sum_all()?.backward()?; Ok(()) });
    let pp = Tensor::stack(&[w.as_tensor(), b.as_tensor(), &Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu)?, &Tensor::ones(32, candle_core::DType::F32, &Device::Cpu)?], 0)?;
    time("bn bwd op", &|| { x.apply_op3_no_bwd(&pp, &g, &norm::BatchNormBackward { eps: 1e-5, relu: true })?; Ok(()) });
    time("add_relu", &|| { norm::add_relu(&x, &g)?; Ok(()) });
    time("zeros_like+add", &|| { let z = x.zeros_like()?; let _ = z.add(&g)?; Ok(()) });
    time("add", &|| { let _ = x.add(&g)?; Ok(()) });
    time("vec alloc", &|| { let v = vec![0f32; 128*32*32*32]; std::hint::black_box(v); Ok(()) });
    Ok(())
}
#[allow(dead_code)]
fn unused() {}
