//! Loss functions against reference values computed by PyTorch (tests/data/*.json).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{DType, Device, Tensor};
use pretext::model::ops;

fn fixture(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn matrix(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

#[test]
fn cross_entropy_and_softmax_match_pytorch() {
    let f = fixture("cross_entropy.json");
    let logits = matrix(&f["logits"]);
    let labels: Vec<u32> = f["labels"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let (n, k) = (logits.len(), logits[0].len());
    let flat: Vec<f64> = logits.iter().flatten().copied().collect();
    for (dtype, tol) in [(DType::F64, 1e-5), (DType::F32, 1e-4)] {
        let x = Tensor::from_vec(flat.clone(), (n, k), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let y = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
        let loss = ops::cross_entropy(&x, &y).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        let want = f["loss"].as_f64().unwrap();
        assert!((loss - want).abs() < tol, "{dtype:?}: {loss} vs {want}");
        let p = ops::softmax(&x).unwrap().to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
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
            let best = r.iter().enumerate().fold(0, |b, (i, v)| if *v > r[b] { i } else { b });
            best as u32 == **y
        })
        .count();
    assert!((correct as f64 / n as f64 - f["accuracy"].as_f64().unwrap()).abs() < 1e-12);
}
