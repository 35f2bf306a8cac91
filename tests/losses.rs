//! Loss functions against reference values computed by PyTorch (tests/data/*.json).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, matrix};
use pretext::model::ops;

#[test]
fn cross_entropy_and_softmax_match_pytorch() {
    let f = fixture("cross_entropy.json");
    let logits = matrix(&f["logits"]);
    let labels: Vec<u32> = f["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let (n, k) = (logits.len(), logits[0].len());
    let flat: Vec<f64> = logits.iter().flatten().copied().collect();
    for (dtype, tol) in [(DType::F64, 1e-5), (DType::F32, 1e-4)] {
        let x = Tensor::from_vec(flat.clone(), (n, k), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let y = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
        let loss = ops::cross_entropy(&x, &y)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want = f["loss"].as_f64().unwrap();
        assert!((loss - want).abs() < tol, "{dtype:?}: {loss} vs {want}");
        let p = ops::softmax(&x)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for (row, want_row) in p.iter().zip(matrix(&f["softmax"])) {
            for (a, b) in row.iter().zip(want_row) {
                assert!((a - b).abs() < tol, "{dtype:?}: softmax {a} vs {b}");
            }
        }
    }
    // Accuracy of the arg-max against the labels.
    let correct = logits
        .iter()
        .zip(&labels)
        .filter(|(r, y)| {
            let best = r
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > r[b] { i } else { b });
            best as u32 == **y
        })
        .count();
    assert!((correct as f64 / n as f64 - f["accuracy"].as_f64().unwrap()).abs() < 1e-12);
}

fn tensor(rows: &[Vec<f64>], dtype: DType) -> Tensor {
    let (n, d) = (rows.len(), rows[0].len());
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (n, d), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

#[test]
fn nt_xent_matches_lightly_in_every_case() {
    let f = fixture("nt_xent.json");
    for case in f["cases"].as_array().unwrap() {
        let z1 = matrix(&case["z1"]);
        let z2 = matrix(&case["z2"]);
        let tau = case["temperature"].as_f64().unwrap();
        let z: Vec<Vec<f64>> = z1.iter().chain(&z2).cloned().collect();
        for (dtype, tol) in [(DType::F64, 1e-5), (DType::F32, 1e-4)] {
            let (loss, sim) = ops::nt_xent(&tensor(&z, dtype), tau).unwrap();
            let loss = loss
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let want = case["loss"].as_f64().unwrap();
            assert!(
                (loss - want).abs() < tol,
                "τ={tau} {dtype:?}: {loss} vs {want}"
            );
            let sim64 = sim.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
            for (row, want_row) in sim64.iter().zip(matrix(&case["cosine_similarity"])) {
                for (a, b) in row.iter().zip(want_row) {
                    assert!((a - b).abs() < tol, "cosine {a} vs {b}");
                }
            }
            let sim32: Vec<Vec<f32>> = sim64
                .iter()
                .map(|r| r.iter().map(|&v| v as f32).collect())
                .collect();
            assert!(
                (ops::positive_top1(&sim32) - case["positive_top1"].as_f64().unwrap()).abs()
                    < 1e-12
            );
            // Per-anchor losses, from the similarity row: −log(exp(s⁺/τ) / Σ_{k≠i} exp(s_k/τ)).
            let per: Vec<f64> = case["per_anchor_loss"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (i, row) in sim64.iter().enumerate() {
                let pos = ops::positive_index(i, row.len());
                let denom: f64 = row
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != i)
                    .map(|(_, s)| (s / tau).exp())
                    .sum();
                let l = -((row[pos] / tau).exp() / denom).ln();
                assert!(
                    (l - per[i]).abs() < tol * 10.0,
                    "anchor {i}: {l} vs {}",
                    per[i]
                );
            }
            assert!((per.iter().sum::<f64>() / per.len() as f64 - want).abs() < 1e-9);
        }
    }
}

#[test]
fn dcl_and_its_gradient_match_lightly_in_every_case() {
    let f = fixture("dcl.json");
    for case in f["cases"].as_array().unwrap() {
        let z1 = matrix(&case["z1"]);
        let z2 = matrix(&case["z2"]);
        let n = z1.len();
        let tau = case["temperature"].as_f64().unwrap();
        let z: Vec<Vec<f64>> = z1.iter().chain(&z2).cloned().collect();
        let want_grad: Vec<Vec<f64>> = matrix(&case["grad_z1"])
            .into_iter()
            .chain(matrix(&case["grad_z2"]))
            .collect();
        for (dtype, tol) in [(DType::F64, 1e-9), (DType::F32, 1e-4)] {
            let v = candle_core::Var::from_tensor(&tensor(&z, dtype)).unwrap();
            let (loss, sim) = ops::dcl(v.as_tensor(), tau).unwrap();
            let got = loss
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let want = case["loss"].as_f64().unwrap();
            assert!(
                (got - want).abs() < tol * want.abs().max(1.0),
                "N={n} τ={tau} {dtype:?}: {got} vs {want}"
            );
            assert_eq!(sim.dims(), [2 * n, 2 * n]);
            let grads = loss.backward().unwrap();
            let g = grads
                .get(v.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap();
            for (row, want_row) in g.iter().zip(&want_grad) {
                for (a, b) in row.iter().zip(want_row) {
                    assert!(
                        (a - b).abs() < tol * 10.0,
                        "N={n} τ={tau} {dtype:?}: ∂L/∂z {a} vs {b}"
                    );
                }
            }
        }
        // DCL is NT-Xent without the positive in the denominator: never the same value.
        let (nt, _) = ops::nt_xent(&tensor(&z, DType::F64), tau).unwrap();
        let nt = nt.to_scalar::<f64>().unwrap();
        assert!(nt > case["loss"].as_f64().unwrap(), "{nt}");
    }
    // Two views of one image leave an anchor no negative.
    let one = tensor(&[vec![1.0, 0.0], vec![0.0, 1.0]], DType::F32);
    assert!(ops::dcl(&one, 0.5).is_err());
}

#[test]
fn srgb_to_lab_matches_scikit_image_and_round_trips() {
    use pretext::data::color::{lab_to_rgb, rgb_to_lab};
    let f = fixture("lab.json");
    let rgb = matrix(&f["rgb"]);
    let lab = matrix(&f["lab"]);
    let back = matrix(&f["rgb_roundtrip"]);
    for ((c, l), r) in rgb.iter().zip(&lab).zip(&back) {
        let ours = rgb_to_lab([c[0], c[1], c[2]]);
        for k in 0..3 {
            assert!((ours[k] - l[k]).abs() < 1e-5, "{c:?}: {ours:?} vs {l:?}");
        }
        let rt = lab_to_rgb(ours);
        for k in 0..3 {
            assert!(
                (rt[k] - r[k]).abs() < 1e-5,
                "{c:?}: round trip {rt:?} vs {r:?}"
            );
            assert!((rt[k] - c[k]).abs() < 1e-5, "{c:?}: round trip {rt:?}");
        }
    }
}

#[test]
fn image_to_lab_planes_gives_rgb_to_lab_of_every_byte() {
    use pretext::data::color::{image_to_lab_planes, rgb_to_lab};
    // Every byte value in every channel, in three different combinations.
    let rgb: Vec<u8> = (0..=255u8)
        .flat_map(|v| [v, 255 - v, v.wrapping_mul(7)])
        .collect();
    let (l, a, b) = image_to_lab_planes(&rgb);
    assert_eq!(l.len(), 256);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        let want = rgb_to_lab([px[0], px[1], px[2]].map(|v| f64::from(v) / 255.0));
        let got = [l[i], a[i], b[i]];
        for k in 0..3 {
            assert_eq!(got[k], want[k] as f32, "{px:?}: {got:?} vs {want:?}");
        }
    }
}

#[test]
fn dense_soft_cross_entropy_is_the_weighted_log_likelihood_of_each_pixel() {
    // (N, Q, H, W) = (2, 6, 3, 2), K = 3 target classes per pixel, checked pixel by pixel in f64.
    let (n, q, h, w, k) = (2usize, 6usize, 3usize, 2usize, 3usize);
    let plane = h * w;
    let mut rng = pretext::rng::Rng::new(4);
    let logits: Vec<f32> = (0..n * q * plane).map(|_| rng.range(-3.0, 3.0)).collect();
    let indices: Vec<u32> = (0..n * k * plane).map(|_| rng.below(q) as u32).collect();
    let weights: Vec<f32> = (0..n * k * plane).map(|_| rng.range(0.0, 2.0)).collect();
    let mut want = 0f64;
    for i in 0..n {
        for p in 0..plane {
            let at = |c: usize| f64::from(logits[(i * q + c) * plane + p]);
            let lse = (0..q).map(|c| at(c).exp()).sum::<f64>().ln();
            for j in 0..k {
                let o = (i * k + j) * plane + p;
                want -= f64::from(weights[o]) * (at(indices[o] as usize) - lse);
            }
        }
    }
    want /= (n * plane) as f64;
    let x = candle_core::Var::from_vec(logits, (n, q, h, w), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(indices, (n, k, h, w), &Device::Cpu).unwrap();
    let wt = Tensor::from_vec(weights, (n, k, h, w), &Device::Cpu).unwrap();
    // The own CPU kernel and candle's stock chain (what CUDA runs): same loss, same gradient.
    let mut grads = Vec::new();
    for stock in [false, true] {
        pretext::model::kernels::set_stock_ops(stock);
        let loss = ops::dense_soft_cross_entropy(x.as_tensor(), &y, &wt).unwrap();
        let value = loss.to_scalar::<f32>().unwrap();
        assert!(
            (f64::from(value) - want).abs() < 1e-5,
            "stock {stock}: {value} vs {want}"
        );
        let g = loss.backward().unwrap();
        grads.push(
            g.get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    pretext::model::kernels::set_stock_ops(false);
    let worst = grads[0]
        .iter()
        .zip(&grads[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-6, "gradients differ by {worst}");
    assert!(grads[0].iter().any(|g| g.abs() > 1e-3));
    let x = x.as_tensor();
    // One target class of weight 1 per pixel is the ordinary cross-entropy, pixel by pixel.
    let flat = x
        .permute((0, 2, 3, 1))
        .unwrap()
        .reshape((n * plane, q))
        .unwrap();
    let labels: Vec<u32> = (0..n * plane).map(|i| (i % q) as u32).collect();
    let dense_labels: Vec<u32> = (0..n)
        .flat_map(|i| (0..plane).map(move |p| ((i * plane + p) % q) as u32))
        .collect();
    let one = Tensor::ones((n, 1, h, w), DType::F32, &Device::Cpu).unwrap();
    let dense = ops::dense_soft_cross_entropy(
        x,
        &Tensor::from_vec(dense_labels, (n, 1, h, w), &Device::Cpu).unwrap(),
        &one,
    )
    .unwrap()
    .to_scalar::<f32>()
    .unwrap();
    let plain = ops::cross_entropy(
        &flat,
        &Tensor::new(labels.as_slice(), &Device::Cpu).unwrap(),
    )
    .unwrap()
    .to_scalar::<f32>()
    .unwrap();
    assert!((dense - plain).abs() < 1e-5, "{dense} vs {plain}");
}
