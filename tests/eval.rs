//! Downstream evaluation against reference values from lightly and scikit-learn.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fixture, matrix};
use pretext::eval;

fn rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    matrix(v)
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as f32).collect())
        .collect()
}

fn labels(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn weighted_knn_matches_lightly() {
    let f = fixture("knn.json");
    let predicted = eval::knn_predict(
        &rows(&f["bank"]),
        &labels(&f["bank_labels"]),
        &rows(&f["queries"]),
        f["k"].as_u64().unwrap() as usize,
        f["t"].as_f64().unwrap(),
        f["num_classes"].as_u64().unwrap() as usize,
    );
    assert_eq!(predicted, labels(&f["predicted"]));
}

#[test]
fn collapse_and_quality_gauges_match_the_references() {
    let f = fixture("diagnostics.json");
    let z = rows(&f["z"]);
    let zp = rows(&f["z_positive_normalized"]);
    let close = |a: f64, b: &serde_json::Value, what: &str| {
        let b = b.as_f64().unwrap();
        assert!(
            (a - b).abs() < 1e-5 * b.abs().max(1.0),
            "{what}: {a} vs {b}"
        );
    };
    close(
        eval::std_of_l2_normalized(&z),
        &f["std_of_l2_normalized"],
        "std",
    );
    close(eval::rankme(&z), &f["rankme"], "rankme");
    close(eval::alignment(&z, &zp), &f["alignment"], "alignment");
    close(eval::uniformity(&z), &f["uniformity"], "uniformity");
    // A collapsed representation: every row the same.
    let collapsed = vec![vec![1.0f32, 2.0, 3.0]; 10];
    assert!(eval::std_of_l2_normalized(&collapsed) < 1e-9);
    assert!((eval::rankme(&collapsed) - 1.0).abs() < 1e-3);
}

#[test]
fn pca_matches_scikit_learn_up_to_signs() {
    let f = fixture("pca.json");
    let (projection, ratio) = eval::pca(&rows(&f["z"]), 2);
    for (a, b) in ratio
        .iter()
        .zip(f["explained_variance_ratio"].as_array().unwrap())
    {
        assert!((a - b.as_f64().unwrap()).abs() < 1e-6, "{a} vs {b}");
    }
    let want = f["projection"].as_array().unwrap();
    for c in 0..2 {
        let sign = if (projection[0][c] * want[0][c].as_f64().unwrap()) < 0.0 {
            -1.0
        } else {
            1.0
        };
        for (p, w) in projection.iter().zip(want) {
            assert!((sign * p[c] - w[c].as_f64().unwrap()).abs() < 1e-5);
        }
    }
}

#[test]
fn linear_probe_separates_separable_classes_and_split_is_fixed() {
    // Two Gaussian-ish blobs in 4-D.
    let mut rng = pretext::rng::Rng::new(4);
    let make = |rng: &mut pretext::rng::Rng, c: u32| -> Vec<f32> {
        (0..4)
            .map(|j| rng.normal() * 0.3 + if j == 0 { c as f32 * 2.0 } else { 0.0 })
            .collect()
    };
    let labels: Vec<u32> = (0..200).map(|i| (i % 2) as u32).collect();
    let x: Vec<Vec<f32>> = labels.iter().map(|&c| make(&mut rng, c)).collect();
    let (train, test) = eval::split(&labels, 5);
    assert_eq!(test.len(), 40);
    assert_eq!(eval::split(&labels, 5), (train.clone(), test.clone()));
    let pick = |idx: &[usize]| idx.iter().map(|&i| x[i].clone()).collect::<Vec<_>>();
    let pl = |idx: &[usize]| idx.iter().map(|&i| labels[i]).collect::<Vec<_>>();
    let pred = eval::linear_probe(&pick(&train), &pl(&train), &pick(&test), 2, 200);
    assert!(eval::accuracy(&pred, &pl(&test)) > 0.95);
    let m = eval::confusion(&pred, &pl(&test), 2);
    assert_eq!(m.iter().flatten().sum::<usize>(), 40);
}
