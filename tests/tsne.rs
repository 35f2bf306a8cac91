//! The explorer's t-SNE against scikit-learn's on the same data (tests/data/tsne.json, made by
//! scripts/tsne_fixture.py): trustworthiness, the field's measure of how well an embedding
//! keeps neighbourhoods, equals scikit-learn's exactly on fixed embeddings, and pretext's
//! t-SNE keeps neighbourhoods within 0.01 of scikit-learn's t-SNE.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use pretext::eval::tsne::{self, TsneError};

fn fixture() -> serde_json::Value {
    common::fixture("tsne.json")
}

fn rows(v: &serde_json::Value) -> Vec<Vec<f64>> {
    common::matrix(v)
}

fn points(v: &serde_json::Value) -> Vec<[f64; 2]> {
    rows(v).into_iter().map(|r| [r[0], r[1]]).collect()
}

fn input(f: &serde_json::Value) -> Vec<Vec<f32>> {
    rows(&f["x"])
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as f32).collect())
        .collect()
}

#[test]
fn trustworthiness_equals_scikit_learns() {
    let f = fixture();
    let x = input(&f);
    let k = f["n_neighbors"].as_u64().unwrap() as usize;
    for (embedding, want) in [
        ("sklearn_embedding", "sklearn_trustworthiness"),
        ("poor_embedding", "poor_trustworthiness"),
    ] {
        let got = tsne::trustworthiness(&x, &points(&f[embedding]), k).unwrap();
        let want = f[want].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{embedding}: {got} vs {want}");
    }
    // Undefined for k ≥ n / 2 and for sizes that differ.
    assert!(tsne::trustworthiness(&x, &points(&f["poor_embedding"]), 150).is_none());
    assert!(tsne::trustworthiness(&x[..10], &points(&f["poor_embedding"]), 2).is_none());
}

#[test]
fn the_t_sne_map_keeps_neighbourhoods_as_well_as_scikit_learns() {
    let f = fixture();
    let x = input(&f);
    let k = f["n_neighbors"].as_u64().unwrap() as usize;
    let mut last = 0;
    let map = tsne::tsne(&x, |epoch, total| {
        assert!(epoch < total);
        last = epoch + 1;
    })
    .unwrap();
    assert_eq!(last, tsne::EPOCHS, "progress reaches the last iteration");
    assert_eq!(map.len(), x.len());
    assert!(map.iter().flatten().all(|v| v.is_finite()));
    let ours = tsne::trustworthiness(&x, &map, k).unwrap();
    let theirs = f["sklearn_trustworthiness"].as_f64().unwrap();
    eprintln!("trustworthiness (k = {k}): pretext {ours:.4}, scikit-learn {theirs:.4}");
    assert!(ours > theirs - 0.01, "{ours} vs scikit-learn {theirs}");
    // Far better than a random projection of the same data.
    assert!(ours > f["poor_trustworthiness"].as_f64().unwrap() + 0.2);
}

#[test]
fn too_few_points_or_non_finite_values_are_refused() {
    let few = vec![vec![0.0f32, 1.0]; 4];
    assert_eq!(tsne::tsne(&few, |_, _| {}), Err(TsneError::TooFew(4)));
    let mut bad = vec![vec![0.5f32, 1.0]; 20];
    bad[3][1] = f32::NAN;
    assert_eq!(tsne::tsne(&bad, |_, _| {}), Err(TsneError::NonFinite));
    // A small set works with a smaller perplexity.
    let small: Vec<Vec<f32>> = (0..12).map(|i| vec![i as f32, (i % 3) as f32]).collect();
    assert_eq!(tsne::tsne(&small, |_, _| {}).unwrap().len(), 12);
}
