//! Features of a whole data set from an encoder (every stage), and the evaluation report that
//! compares a trained encoder with a randomly initialised one and with raw pixels.

use candle_core::Tensor;

use super::{
    NotMeasured, accuracy, alignment, knn_predict, linear_probe, measurable, rankme, split,
    std_of_l2_normalized, uniformity,
};
use crate::config::TaskKind;
use crate::data::{Dataset, color, ops as px};
use crate::model::{Model, ModelError};

/// Stage names, first to last.
pub const STAGES: [&str; 4] = ["stem", "l1", "l2", "l3 (z)"];

/// A stage's name without its note, as files and JSON keys have it: `l3 (z)` → `l3`.
pub fn stage_key(stage: &str) -> &str {
    stage.split_whitespace().next().unwrap_or(stage)
}

/// kNN defaults (as lightly's benchmarks).
pub const KNN_K: usize = 20;
pub const KNN_T: f64 = 0.1;
/// Every fifth image of each class is held out.
pub const HOLDOUT_EVERY: usize = 5;

/// Pooled features of every stage for every image, `stages[s][image]`.
pub fn stage_features(model: &Model, data: &Dataset) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
    let all: Vec<usize> = (0..data.len()).collect();
    stage_features_of(model, data, &all)
}

/// Pooled features of every stage for the images `indices`.
pub fn stage_features_of(
    model: &Model,
    data: &Dataset,
    indices: &[usize],
) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
    let s = data.size;
    let channels = model.encoder.in_channels;
    let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(indices.len()); STAGES.len()];
    for chunk in indices.chunks(256) {
        let mut input = Vec::with_capacity(chunk.len() * channels * s * s);
        for &i in chunk {
            if channels == 1 {
                let (l, _, _) = color::image_to_lab_planes(data.image(i));
                input.extend(
                    l.iter()
                        .map(|&v| crate::tasks::colorization::normalize_l(v)),
                );
            } else {
                px::push_chw(data.image(i), s, &mut input);
            }
        }
        let x = Tensor::from_vec(input, (chunk.len(), channels, s, s), &model.device)?;
        for (k, f) in model.encoder.stage_features(&x)?.iter().enumerate() {
            out[k].extend(f.to_vec2::<f32>()?);
        }
    }
    Ok(out)
}

/// Raw pixels as features (the floor any representation should beat).
pub fn pixel_features(data: &Dataset) -> Vec<Vec<f32>> {
    (0..data.len())
        .map(|i| {
            data.image(i)
                .iter()
                .map(|&v| f32::from(v) / 255.0)
                .collect()
        })
        .collect()
}

/// kNN accuracy of `features` on the fixed split.
pub fn knn_accuracy(features: &[Vec<f32>], labels: &[u32], classes: usize) -> f64 {
    let (train, test) = split(labels, HOLDOUT_EVERY);
    let pick = |idx: &[usize]| idx.iter().map(|&i| features[i].clone()).collect::<Vec<_>>();
    let lab = |idx: &[usize]| idx.iter().map(|&i| labels[i]).collect::<Vec<_>>();
    let pred = knn_predict(
        &pick(&train),
        &lab(&train),
        &pick(&test),
        KNN_K,
        KNN_T,
        classes,
    );
    accuracy(&pred, &lab(&test))
}

/// Linear-probe accuracy of `features` on the fixed split, with the predictions.
pub fn probe_accuracy(
    features: &[Vec<f32>],
    labels: &[u32],
    classes: usize,
) -> (f64, Vec<u32>, Vec<u32>) {
    let (train, test) = split(labels, HOLDOUT_EVERY);
    let pick = |idx: &[usize]| idx.iter().map(|&i| features[i].clone()).collect::<Vec<_>>();
    let lab = |idx: &[usize]| idx.iter().map(|&i| labels[i]).collect::<Vec<_>>();
    let truth = lab(&test);
    let pred = linear_probe(&pick(&train), &lab(&train), &pick(&test), classes, 300);
    (accuracy(&pred, &truth), pred, truth)
}

/// Quality gauges of a representation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gauges {
    pub std_of_l2_normalized: f64,
    /// 1/√d: what a representation spread evenly over the sphere gives.
    pub std_reference: f64,
    pub rankme: f64,
    pub dimensions: usize,
    pub uniformity: f64,
    /// Alignment E‖f(x) − f(x⁺)‖² of L2-normalised z over two augmented views of the same
    /// images (Wang & Isola 2020; 0 = views coincide, 4 = opposite), when measured.
    pub alignment: Option<f64>,
    /// Normalised singular values of z, descending (what RankMe summarises).
    pub spectrum: Vec<f64>,
}

pub fn gauges(z: &[Vec<f32>]) -> Gauges {
    let d = z.first().map_or(0, Vec::len);
    // Uniformity is quadratic in the number of rows: a fixed subset keeps it quick.
    let sample: Vec<Vec<f32>> = z.iter().step_by((z.len() / 1000).max(1)).cloned().collect();
    Gauges {
        std_of_l2_normalized: std_of_l2_normalized(z),
        std_reference: 1.0 / (d.max(1) as f64).sqrt(),
        rankme: rankme(z),
        dimensions: d,
        uniformity: uniformity(&sample),
        alignment: None,
        spectrum: super::spectrum(z),
    }
}

/// kNN accuracy per stage for one encoder.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StageKnn {
    pub stage: &'static str,
    pub trained: f64,
    pub random: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalReport {
    pub images: usize,
    pub classes: usize,
    pub held_out: usize,
    pub knn: Vec<StageKnn>,
    pub knn_raw_pixels: f64,
    pub probe_trained: f64,
    pub probe_random: f64,
    pub probe_raw_pixels: f64,
    /// `confusion[truth][predicted]` of the trained encoder's probe.
    pub confusion: Vec<Vec<usize>>,
    pub gauges_trained: Gauges,
    pub gauges_random: Gauges,
}

/// Whether accuracies can be measured on `data` (labelled, two classes, something held out).
///
/// # Errors
/// The reason they cannot.
pub fn can_measure(data: &Dataset) -> Result<(), NotMeasured> {
    let labels = data.labels.as_ref().ok_or(NotMeasured::NoLabels)?;
    measurable(labels, HOLDOUT_EVERY)
}

/// One encoder judged on labelled data: kNN top-1 of every stage, the linear probe on z (with
/// its confusion) and the gauges of z, alignment included.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncoderScores {
    /// kNN top-1 per stage, in [`STAGES`] order.
    pub knn: Vec<f64>,
    pub probe: f64,
    /// `confusion[truth][predicted]` of the probe.
    pub confusion: Vec<Vec<usize>>,
    pub held_out: usize,
    pub gauges: Gauges,
}

/// kNN top-1 and linear probe of raw pixels (the floor any representation should beat).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PixelScores {
    pub knn: f64,
    pub probe: f64,
}

/// Judges one encoder on labelled data; the inner error says why accuracies cannot be measured
/// on this data.
///
/// # Errors
/// A model error from computing features.
pub fn score_encoder(
    model: &Model,
    data: &Dataset,
) -> Result<Result<EncoderScores, NotMeasured>, ModelError> {
    if let Err(why) = can_measure(data) {
        return Ok(Err(why));
    }
    let Some(labels) = &data.labels else {
        return Ok(Err(NotMeasured::NoLabels));
    };
    let classes = data.class_names.len();
    let f = stage_features(model, data)?;
    let knn = f
        .iter()
        .map(|stage| knn_accuracy(stage, labels, classes))
        .collect();
    let last = STAGES.len() - 1;
    let (probe, pred, truth) = probe_accuracy(&f[last], labels, classes);
    Ok(Ok(EncoderScores {
        knn,
        probe,
        confusion: super::confusion(&pred, &truth, classes),
        held_out: truth.len(),
        gauges: Gauges {
            alignment: Some(view_alignment(model, data)?),
            ..gauges(&f[last])
        },
    }))
}

/// kNN top-1 and linear probe of raw pixels on labelled data.
///
/// # Errors
/// Why accuracies cannot be measured on this data.
pub fn score_pixels(data: &Dataset) -> Result<PixelScores, NotMeasured> {
    can_measure(data)?;
    let labels = data.labels.as_ref().ok_or(NotMeasured::NoLabels)?;
    let classes = data.class_names.len();
    let pixels = pixel_features(data);
    Ok(PixelScores {
        knn: knn_accuracy(&pixels, labels, classes),
        probe: probe_accuracy(&pixels, labels, classes).0,
    })
}

/// The gauges of z (alignment included) on any data, labelled or not.
///
/// # Errors
/// A model error from computing features.
pub fn z_gauges(model: &Model, data: &Dataset) -> Result<Gauges, ModelError> {
    let z = stage_features(model, data)?.pop().unwrap_or_default();
    Ok(Gauges {
        alignment: Some(view_alignment(model, data)?),
        ..gauges(&z)
    })
}

/// The report of a trained encoder against a random init and raw pixels, from their scores on
/// the same data (so a contest judges the random init and the pixels once for every task).
pub fn report(
    data: &Dataset,
    trained: EncoderScores,
    random: &EncoderScores,
    pixels: PixelScores,
) -> EvalReport {
    EvalReport {
        images: data.len(),
        classes: data.class_names.len(),
        held_out: trained.held_out,
        knn: STAGES
            .iter()
            .zip(trained.knn.iter().zip(&random.knn))
            .map(|(&stage, (&trained, &random))| StageKnn {
                stage,
                trained,
                random,
            })
            .collect(),
        knn_raw_pixels: pixels.knn,
        probe_trained: trained.probe,
        probe_random: random.probe,
        probe_raw_pixels: pixels.probe,
        confusion: trained.confusion,
        gauges_trained: trained.gauges,
        gauges_random: random.gauges.clone(),
    }
}

/// Compares a trained and a randomly initialised encoder on labelled data; the inner error
/// says why accuracies cannot be measured on this data.
///
/// # Errors
/// A model error from computing features.
pub fn evaluate(
    trained: &Model,
    random: &Model,
    data: &Dataset,
) -> Result<Result<EvalReport, NotMeasured>, ModelError> {
    let t = match score_encoder(trained, data)? {
        Ok(t) => t,
        Err(why) => return Ok(Err(why)),
    };
    let r = match score_encoder(random, data)? {
        Ok(r) => r,
        Err(why) => return Ok(Err(why)),
    };
    Ok(score_pixels(data).map(|p| report(data, t, &r, p)))
}

/// Images the live kNN monitor uses at most (evenly spread over the set).
pub const MONITOR_IMAGES: usize = 1000;

/// What the live kNN monitor measured.
pub struct Monitor {
    /// kNN accuracy per stage, in [`STAGES`] order (empty when not measured).
    pub stages: Vec<f64>,
    /// Why there are no accuracies, when there are none.
    pub not_measured: Option<NotMeasured>,
    pub raw_pixels: Option<f64>,
    /// Gauges of z on the same images.
    pub gauges: Gauges,
    /// Gauges of the tasks' own outputs on the same images, for the tasks whose head can
    /// collapse on its own ([`crate::tasks::PretextTask::head_output`]).
    pub head_gauges: Vec<(TaskKind, Gauges)>,
}

/// Images whose two augmented views measure alignment.
pub const ALIGNMENT_IMAGES: usize = 256;

/// The seed of the alignment views: the same views at every measurement, so the curve moves
/// only with the encoder.
const ALIGNMENT_SEED: u64 = 0x000A_116E;

/// Alignment of z over two SimCLR views (crop, flip, colour jitter, grey, blur) of each of up to
/// [`ALIGNMENT_IMAGES`] images spread over the data.
pub fn view_alignment(model: &Model, data: &Dataset) -> Result<f64, ModelError> {
    use crate::config::Augment;
    use crate::data::augment::{augment, unit_to_bytes};
    let n = data.len().min(ALIGNMENT_IMAGES);
    let s = data.size;
    let aug = Augment::default();
    let mut views: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    for k in 0..n {
        let i = k * data.len() / n.max(1);
        let mut rng = crate::rng::Rng::derive(ALIGNMENT_SEED, &[i as u64]);
        for v in &mut views {
            v.extend(unit_to_bytes(&augment(data.image(i), s, &aug, &mut rng).0));
        }
    }
    let mut z = Vec::with_capacity(2);
    for pixels in views {
        let set = Dataset::from_parts(
            data.source.clone(),
            s,
            pixels,
            (0..n).map(|i| i.to_string()).collect(),
            None,
            Vec::new(),
            Vec::new(),
        );
        let idx: Vec<usize> = (0..n).collect();
        z.push(
            stage_features_of(model, &set, &idx)?
                .pop()
                .unwrap_or_default(),
        );
    }
    Ok(alignment(&z[0], &z[1]))
}

/// On an even subset of the data: kNN accuracy of every stage (labelled data), of raw pixels
/// when `with_pixels`, and the gauges of z, alignment included.
pub fn monitor(
    model: &Model,
    data: &Dataset,
    with_pixels: bool,
    tasks: &[Box<dyn crate::tasks::PretextTask>],
) -> Result<Monitor, ModelError> {
    let n = data.len().min(MONITOR_IMAGES);
    let indices: Vec<usize> = (0..n).map(|i| i * data.len() / n.max(1)).collect();
    let feats = stage_features_of(model, data, &indices)?;
    let z = feats.last().map_or(&[][..], Vec::as_slice);
    let mut gauges = gauges(z);
    let mut head_gauges = Vec::new();
    if let Some(d) = z.first().map(Vec::len) {
        let flat: Vec<f32> = z.iter().flatten().copied().collect();
        let zt = Tensor::from_vec(flat, (z.len(), d), &model.device)?;
        for task in tasks {
            if let Some(out) = task.head_output(&zt)? {
                head_gauges.push((task.kind(), self::gauges(&out.to_vec2::<f32>()?)));
            }
        }
    }
    gauges.alignment = Some(view_alignment(model, data)?);
    let labels: Vec<u32> = match &data.labels {
        Some(all) => indices.iter().map(|&i| all[i]).collect(),
        None => Vec::new(),
    };
    let why = match &data.labels {
        None => Some(NotMeasured::NoLabels),
        Some(_) => measurable(&labels, HOLDOUT_EVERY).err(),
    };
    if let Some(why) = why {
        return Ok(Monitor {
            stages: Vec::new(),
            not_measured: Some(why),
            raw_pixels: None,
            gauges,
            head_gauges,
        });
    }
    let classes = data.class_names.len();
    let stages = feats
        .iter()
        .map(|f| knn_accuracy(f, &labels, classes))
        .collect();
    let raw_pixels = with_pixels.then(|| {
        let p: Vec<Vec<f32>> = indices
            .iter()
            .map(|&i| {
                data.image(i)
                    .iter()
                    .map(|&v| f32::from(v) / 255.0)
                    .collect()
            })
            .collect();
        knn_accuracy(&p, &labels, classes)
    });
    Ok(Monitor {
        stages,
        not_measured: None,
        raw_pixels,
        gauges,
        head_gauges,
    })
}

/// The whole data set in embedding space, for the explorer.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub step: u64,
    /// z of every image.
    pub z: Vec<Vec<f32>>,
    /// PCA to 2-D, and the variance share of the two components.
    pub projection: Vec<[f64; 2]>,
    pub explained: [f64; 2],
    pub gauges: Gauges,
    /// Linear-probe accuracy and `confusion[truth][predicted]` on the held-out split, or why
    /// it was not measured.
    pub probe: Result<(f64, Vec<Vec<usize>>), NotMeasured>,
}

/// Embeds every image with `model` and summarises the representation.
pub fn embedding(model: &Model, data: &Dataset, step: u64) -> Result<Embedding, ModelError> {
    let feats = stage_features(model, data)?;
    let z = feats.into_iter().last().unwrap_or_default();
    let (proj, ratio) = super::pca(&z, 2);
    let probe = can_measure(data).and_then(|()| {
        let labels = data.labels.as_ref().ok_or(NotMeasured::NoLabels)?;
        let (acc, pred, truth) = probe_accuracy(&z, labels, data.class_names.len());
        Ok((acc, super::confusion(&pred, &truth, data.class_names.len())))
    });
    Ok(Embedding {
        step,
        gauges: Gauges {
            alignment: Some(view_alignment(model, data)?),
            ..gauges(&z)
        },
        projection: proj
            .iter()
            .map(|p| {
                [
                    p.first().copied().unwrap_or(0.0),
                    p.get(1).copied().unwrap_or(0.0),
                ]
            })
            .collect(),
        explained: [
            ratio.first().copied().unwrap_or(0.0),
            ratio.get(1).copied().unwrap_or(0.0),
        ],
        probe,
        z,
    })
}

/// Whether the gauges say the representation has collapsed (all images mapped to nearly the
/// same direction, or to very few dimensions).
pub fn collapsed(g: &Gauges) -> bool {
    g.std_of_l2_normalized < 0.1 * g.std_reference || g.rankme < 2.0
}

/// The `k` images most cosine-similar to image `i`, with their similarities.
pub fn neighbours(z: &[Vec<f32>], i: usize, k: usize) -> Vec<(usize, f64)> {
    let u = super::l2_normalize(z);
    let Some(q) = u.get(i) else {
        return Vec::new();
    };
    let mut sims: Vec<(usize, f64)> = u
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(j, r)| (j, r.iter().zip(q).map(|(a, b)| a * b).sum()))
        .collect();
    sims.sort_by(|a, b| b.1.total_cmp(&a.1));
    sims.truncate(k);
    sims
}

/// Writes `embeddings.csv` (name, label, z₀ … z_d) and `embeddings.npy` (N × d float32, the
/// same rows) into `dir`; returns the two paths.
pub fn export(
    dir: &std::path::Path,
    data: &Dataset,
    z: &[Vec<f32>],
) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir)?;
    let d = z.first().map_or(0, Vec::len);
    let mut csv = String::from("name,label");
    for k in 0..d {
        let _ = write!(csv, ",z{k}");
    }
    csv.push('\n');
    for (i, row) in z.iter().enumerate() {
        let name = data
            .names
            .get(i)
            .map(|n| n.replace(',', "_"))
            .unwrap_or_default();
        let label = data
            .label(i)
            .and_then(|l| data.class_names.get(l as usize))
            .cloned()
            .unwrap_or_default();
        let _ = write!(csv, "{name},{label}");
        for v in row {
            let _ = write!(csv, ",{v}");
        }
        csv.push('\n');
    }
    let csv_path = dir.join("embeddings.csv");
    crate::model::checkpoint::write_atomic(&csv_path, csv.as_bytes())?;

    // NPY version 1.0: magic, header length, a Python dict header padded to 64 bytes.
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {d}), }}",
        z.len()
    );
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(
        &u16::try_from(header.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes(),
    );
    npy.extend_from_slice(header.as_bytes());
    for row in z {
        for v in row {
            npy.extend_from_slice(&v.to_le_bytes());
        }
    }
    let npy_path = dir.join("embeddings.npy");
    crate::model::checkpoint::write_atomic(&npy_path, &npy)?;
    Ok((csv_path, npy_path))
}
