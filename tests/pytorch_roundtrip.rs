//! The same weights mean the same thing in PyTorch. `tests/data/pytorch_roundtrip.json` holds z
//! that PyTorch computed with `scripts/pytorch_roundtrip.py` for the images in
//! `tests/data/roundtrip/` (a photo cropped and shrunk, one already at the working size, a
//! transparent portrait, a grey one), from the checkpoint `tests/data/roundtrip.safetensors`
//! and nothing but its `preprocessing` metadata. pretext's own loader and encoder must give the
//! same z.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use pretext::data::folder;
use pretext::data::preprocess::Preprocessing;
use pretext::eval::embed;
use pretext::model::{Model, checkpoint};

#[test]
fn pytorch_gets_pretexts_z_from_the_checkpoint_and_its_preprocessing_metadata() {
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir.join("pytorch_roundtrip.json")).unwrap(),
    )
    .unwrap();
    let path = data_dir.join("roundtrip.safetensors");
    let (tensors, meta) = checkpoint::read(&path, &Device::Cpu).unwrap();
    let pre: Preprocessing = serde_json::from_str(&meta["preprocessing"]).unwrap();
    let used: Preprocessing = serde_json::from_value(fixture["preprocessing"].clone()).unwrap();
    assert_eq!(
        pre, used,
        "the fixture was made from this checkpoint's metadata"
    );

    let model = Model::new(Device::Cpu, pre.mean.len()).unwrap();
    model
        .load_state_dict(&tensors, &path.display().to_string())
        .unwrap();
    let data = folder::load_folder(
        &data_dir.join("roundtrip"),
        pre.size,
        &|_, _| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    let images = fixture["images"].as_array().unwrap();
    assert_eq!(data.len(), images.len(), "{:?}", data.names);
    let all: Vec<usize> = (0..data.len()).collect();
    let z = embed::stage_features_of(&model, &data, &all)
        .unwrap()
        .pop()
        .unwrap();

    for image in images {
        let file = image["file"].as_str().unwrap();
        let theirs: Vec<f32> = serde_json::from_value(image["z"].clone()).unwrap();
        let i = data
            .names
            .iter()
            .position(|n| n.ends_with(file))
            .unwrap_or_else(|| panic!("{file} not loaded: {:?}", data.names));
        let ours = &z[i];
        assert_eq!(ours.len(), theirs.len());
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = ours
            .iter()
            .zip(&theirs)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let dot: f32 = ours.iter().zip(&theirs).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = dot / (norm(ours) * norm(&theirs));
        // Both sides read the same bytes and run the same arithmetic in f32; where the image is
        // resized, PIL's bilinear filter and the image crate's triangle filter may round a
        // pixel differently by one level in 255.
        let resized = !file.starts_with("exact");
        let tolerance = if resized { 2e-2 } else { 1e-4 };
        assert!(
            diff <= tolerance * scale && cosine > 0.999,
            "{file}: z differs by {diff} (largest |z| {scale}), cosine {cosine}"
        );
    }
}
