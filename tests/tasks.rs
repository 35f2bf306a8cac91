//! The pretext tasks: augmentation invariants, and each task — alone and together — trained
//! briefly on the built-in scenes beats its trivial baseline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use pretext::config::{Augment, DataSource, LrSchedule, TaskKind, TrainConfig};
use pretext::data::augment;
use pretext::rng::Rng;
use pretext::train::{Command, EpochSummary, Outcome, TaskMetrics};

fn scene(size: usize) -> Vec<u8> {
    pretext::data::builtin::generate(1, size).image(0).to_vec()
}

#[test]
fn crops_stay_inside_the_image_and_flips_are_flips() {
    let mut rng = Rng::new(5);
    for size in [16usize, 32, 64] {
        for _ in 0..500 {
            let [x, y, w, h] = augment::random_crop_box(size, 0.2, &mut rng);
            let s = size as f32;
            assert!(
                x >= 0.0 && y >= 0.0 && x + w <= s + 1e-3 && y + h <= s + 1e-3,
                "{x} {y} {w} {h}"
            );
            assert!(w * h >= 0.2 * s * s * 0.999, "area {}", w * h / (s * s));
            let ratio = w / h;
            assert!((0.749..=1.334).contains(&ratio), "{ratio}");
        }
    }
    let img = augment::bytes_to_unit(&scene(32));
    let mut flipped = img.clone();
    augment::hflip(&mut flipped, 32);
    for y in 0..32 {
        for x in 0..32 {
            for c in 0..3 {
                assert_eq!(
                    flipped[(y * 32 + x) * 3 + c],
                    img[(y * 32 + 31 - x) * 3 + c]
                );
            }
        }
    }
    augment::hflip(&mut flipped, 32);
    assert_eq!(flipped, img);
    // The whole-image crop is the identity.
    let same = augment::crop_resize(&img, 32, [0.0, 0.0, 32.0, 32.0]);
    assert!(same.iter().zip(&img).all(|(a, b)| (a - b).abs() < 1e-6));
}

#[test]
fn augment_follows_its_settings() {
    let src = scene(32);
    let mut rng = Rng::new(9);
    let gray = Augment {
        gray_p: 1.0,
        ..Augment::default()
    };
    let (v, rec) = augment::augment(&src, 32, &gray, &mut rng);
    assert!(rec.gray);
    assert!(
        v.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]),
        "grey views have equal channels"
    );
    let none = Augment {
        crop_min_scale: 1.0,
        flip_p: 0.0,
        jitter_p: 0.0,
        gray_p: 0.0,
        blur_p: 0.0,
        ..Augment::default()
    };
    for _ in 0..20 {
        let (v, rec) = augment::augment(&src, 32, &none, &mut rng);
        assert!(!rec.flipped && rec.jitter.is_none() && !rec.gray && rec.blur_sigma.is_none());
        // Full-area crops with an aspect ratio of at most 4:3 still cover the whole image.
        let err = v
            .iter()
            .zip(augment::bytes_to_unit(&src))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 0.3, "{err}");
    }
    // Strong jitter changes colours; blur smooths.
    let jitter = Augment {
        jitter_p: 1.0,
        blur_p: 1.0,
        ..none.clone()
    };
    let (v, rec) = augment::augment(&src, 32, &jitter, &mut rng);
    assert!(rec.jitter.is_some() && rec.blur_sigma.is_some());
    assert_ne!(augment::unit_to_bytes(&v), src);
}

/// Trains `tasks` on built-in scenes and returns the last epoch.
fn train(tasks: &[TaskKind], count: usize, epochs: usize) -> EpochSummary {
    let out = tempfile::tempdir().unwrap();
    let log = common::run(Command::Start(Box::new(TrainConfig {
        data: DataSource::Builtin { count },
        tasks: tasks.to_vec(),
        task_weights: vec![1.0; tasks.len()],
        batch: 32,
        epochs,
        lr_schedule: LrSchedule::Constant,
        out: out.path().to_path_buf(),
        preview_images: 4,
        ..TrainConfig::default()
    })));
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);
    // A preview per task before training and after the last epoch (in between as the
    // monitoring budget allows).
    assert!(log.previews >= tasks.len() * 2, "{} previews", log.previews);
    let last = log.epochs.last().unwrap().clone();
    for t in &last.tasks {
        eprintln!(
            "{}: loss {:.3}, {} {} (baseline {:?})",
            t.task,
            t.loss,
            t.metric_info.name,
            t.metric_info.format(t.metric),
            t.baseline.map(|b| t.metric_info.format(b))
        );
    }
    last
}

fn metric(e: &EpochSummary, task: TaskKind) -> &TaskMetrics {
    e.tasks.iter().find(|t| t.task == task).unwrap()
}

#[test]
fn colorization_beats_the_best_constant_colour() {
    let e = train(&[TaskKind::Colorization], 256, 3);
    let t = metric(&e, TaskKind::Colorization);
    assert!(
        t.metric > t.baseline.unwrap() + 0.03,
        "{} vs {:?}",
        t.metric,
        t.baseline
    );
}

#[test]
fn colorization_bins_cover_the_srgb_gamut() {
    use pretext::tasks::colorization_bins::{Bins, GRID_SIDE, grid_cell};
    let bins = Bins::in_gamut();
    // Of the 23×23 grid of a*b* bins 10 apart, 261 are reached by some 8-bit sRGB colour (the
    // paper keeps 313 by a criterion it does not state; bins whose centre itself is in gamut at
    // some L* would be 229).
    assert_eq!(bins.len(), 261);
    assert!(bins.len() < GRID_SIDE * GRID_SIDE);
    // Every pixel of the data lands in a bin of the set, at most half a cell from its centre.
    let data = pretext::data::builtin::generate(16, 32);
    for i in 0..data.len() {
        let (_, a, b) = pretext::data::color::image_to_lab_planes(data.image(i));
        for (&a, &b) in a.iter().zip(&b) {
            let q = bins.nearest(a, b) as usize;
            let [ca, cb] = bins.centres()[q];
            assert!(
                (ca - a).abs() <= 5.0 && (cb - b).abs() <= 5.0,
                "{a} {b} → {ca} {cb}"
            );
            assert_eq!(grid_cell(ca, cb), Some(bins.cells()[q]));
        }
    }
    // Pure colours and greys are in; a*b* far outside the gamut is not.
    for rgb in [
        [1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.5, 0.5, 0.5],
        [1.0, 1.0, 0.0],
    ] {
        let lab = pretext::data::color::rgb_to_lab(rgb);
        let q = bins.nearest(lab[1] as f32, lab[2] as f32) as usize;
        assert_eq!(
            bins.cells()[q],
            grid_cell(lab[1] as f32, lab[2] as f32).unwrap()
        );
    }
    let far = bins.nearest(-100.0, -100.0) as usize;
    assert_ne!(bins.centres()[far], [-100.0, -100.0]);
}

#[test]
fn colorization_bins_soft_encoding_and_rebalancing() {
    use pretext::tasks::colorization_bins::{
        Bins, PRIOR_LAMBDA, Prior, SOFT_NEIGHBOURS, rebalancing_weights,
    };
    let bins = Bins::in_gamut();
    let mut rng = Rng::new(3);
    for _ in 0..500 {
        let (a, b) = (rng.range(-90.0, 90.0), rng.range(-100.0, 90.0));
        let soft = bins.soft_encode(a, b);
        let total: f32 = soft.iter().map(|s| s.1).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        let mut distinct: Vec<u32> = soft.iter().map(|s| s.0).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), SOFT_NEIGHBOURS);
        // Nearest first, weights falling with distance; no other bin is nearer than the fifth.
        let d = |q: u32| {
            let [ca, cb] = bins.centres()[q as usize];
            (ca - a).hypot(cb - b)
        };
        assert!(
            soft.windows(2)
                .all(|w| d(w[0].0) <= d(w[1].0) && w[0].1 >= w[1].1)
        );
        let fifth = d(soft[SOFT_NEIGHBOURS - 1].0);
        assert!((0..bins.len() as u32).all(|q| distinct.contains(&q) || d(q) >= fifth));
        assert_eq!(d(soft[0].0), d(bins.nearest(a, b)));
    }
    // The prior of the built-in scenes: weights have mean 1 under the smoothed prior, and rarer
    // colours weigh more.
    let data = pretext::data::builtin::generate(64, 32);
    let prior = Prior::of(&data, &bins);
    assert_eq!(prior.images, 64);
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    assert!((sum(&prior.empirical) - 1.0).abs() < 1e-9);
    assert!((sum(&prior.smoothed) - 1.0).abs() < 1e-9);
    let mean: f64 = prior
        .weights
        .iter()
        .zip(&prior.smoothed)
        .map(|(w, p)| w * p)
        .sum();
    assert!((mean - 1.0).abs() < 1e-9, "E[w] = {mean}");
    let (common, rare) = (0..bins.len()).fold((0, 0), |(c, r), q| {
        let p = &prior.smoothed;
        (
            if p[q] > p[c] { q } else { c },
            if p[q] < p[r] { q } else { r },
        )
    });
    assert!(prior.weights[rare] > prior.weights[common]);
    // λ = 1 is no rebalancing at all: every weight 1.
    assert!(
        rebalancing_weights(&prior.smoothed, 1.0)
            .iter()
            .all(|w| (w - 1.0).abs() < 1e-9)
    );
    // w ∝ ((1−λ)p̃ + λ/Q)⁻¹: the product is the same for every bin.
    let qn = bins.len() as f64;
    let products: Vec<f64> = prior
        .weights
        .iter()
        .zip(&prior.smoothed)
        .map(|(w, p)| w * ((1.0 - PRIOR_LAMBDA) * p + PRIOR_LAMBDA / qn))
        .collect();
    assert!(
        products
            .iter()
            .all(|c| (c / products[0] - 1.0).abs() < 1e-9)
    );
}

#[test]
fn annealed_mean_runs_from_the_mode_to_the_mean() {
    use pretext::tasks::colorization_bins::{Bins, annealed_mean};
    let bins = Bins::in_gamut();
    let q = bins.len();
    let mut rng = Rng::new(8);
    // Two pixels (H·W = 2), each its own distribution with a clear mode.
    let plane = 2;
    let modes = [100usize, 7];
    let dists: Vec<Vec<f32>> = modes
        .iter()
        .map(|&mode| {
            let mut p: Vec<f32> = (0..q).map(|_| rng.range(0.0, 1.0)).collect();
            p[mode] = 30.0;
            let total: f32 = p.iter().sum();
            p.iter().map(|v| v / total).collect()
        })
        .collect();
    // Logits log p, laid out (1, Q, 1, 2).
    let logits: Vec<f32> = (0..q)
        .flat_map(|c| dists.iter().map(move |d| d[c].ln()))
        .collect();
    let at = |t: f32| annealed_mean(&logits, bins.centres(), plane, t);
    let close = |x: f32, y: f32| (x - y).abs() < 1e-3;
    let (t1, cold, paper) = (at(1.0), at(0.01), at(0.38));
    for (px, (d, &mode)) in dists.iter().zip(&modes).enumerate() {
        let mean = |c: usize| {
            d.iter()
                .zip(bins.centres())
                .map(|(p, x)| p * x[c])
                .sum::<f32>()
        };
        let (a, b) = (t1[px], t1[plane + px]);
        assert!(close(a, mean(0)) && close(b, mean(1)), "T = 1: {a} {b}");
        let [ma, mb] = bins.centres()[mode];
        assert!(close(cold[px], ma) && close(cold[plane + px], mb), "T → 0");
        // T = 0.38 lies between: nearer the mode than the mean is.
        let to_mode = |v: &[f32]| (v[px] - ma).hypot(v[plane + px] - mb);
        assert!(to_mode(&paper) < to_mode(&t1));
    }
}

#[test]
fn colorization_bins_beats_the_best_constant_colour() {
    let e = train(&[TaskKind::ColorizationBins], 256, 3);
    let t = metric(&e, TaskKind::ColorizationBins);
    assert!(
        t.metric > t.baseline.unwrap() + 0.03,
        "{} vs {:?}",
        t.metric,
        t.baseline
    );
}

#[test]
fn colorization_bins_distribution_at_a_pixel() {
    use pretext::model::Model;
    use pretext::tasks::colorization_bins::ColorizationBins;
    let data = pretext::data::builtin::generate(8, 32);
    let model = Model::new(candle_core::Device::Cpu, 1).unwrap();
    let task =
        ColorizationBins::new(&model, 1, &pretext::config::TaskSettings::default(), &data).unwrap();
    model.init_weights(1).unwrap();
    let d = task.distribution_at(&model, &data, 3, (16, 16)).unwrap();
    assert_eq!(d.len(), task.bins().len());
    assert!((d.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    assert!(d.iter().all(|p| *p >= 0.0));
    assert!(task.distribution_at(&model, &data, 3, (32, 0)).is_err());
    assert!(task.distribution_at(&model, &data, 8, (0, 0)).is_err());
    assert!(
        model
            .named_vars()
            .keys()
            .any(|k| k.starts_with("heads.colorization_bins."))
    );
}

#[test]
fn inpainting_beats_mean_fill() {
    let e = train(&[TaskKind::Inpainting], 256, 3);
    let t = metric(&e, TaskKind::Inpainting);
    assert!(
        t.metric > t.baseline.unwrap() + 0.5,
        "{} dB vs {:?}",
        t.metric,
        t.baseline
    );
}

#[test]
fn patch_position_beats_chance() {
    let e = train(&[TaskKind::Patch], 256, 3);
    let t = metric(&e, TaskKind::Patch);
    assert!(t.metric > 0.2, "{} vs chance 0.125", t.metric);
}

#[test]
fn jigsaw_permutation_sets_are_fixed_and_far_apart() {
    use pretext::tasks::jigsaw::{TILES, hamming, min_hamming, permutation_set};
    let s30 = permutation_set(30);
    let s100 = permutation_set(100);
    assert_eq!((s30.len(), s100.len()), (30, 100));
    // Greedy farthest-point selection from the identity: every pair of the 30 differs in at
    // least 7 of the 9 positions, every pair of the 100 in at least 6.
    assert_eq!(min_hamming(&s30), 7);
    assert_eq!(min_hamming(&s100), 6);
    // The first 8 are pairwise deranged (distance 9).
    assert_eq!(min_hamming(&s30[..8]), 9);
    // Deterministic, and a larger set extends a smaller one.
    assert_eq!(permutation_set(30), s30);
    assert_eq!(&s100[..30], s30.as_slice());
    assert_eq!(s30[0], [0, 1, 2, 3, 4, 5, 6, 7, 8]);
    for p in &s100 {
        let mut sorted = *p;
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [0, 1, 2, 3, 4, 5, 6, 7, 8],
            "{p:?} is not a permutation"
        );
    }
    // The second choice is as far from the identity as an order can be.
    assert_eq!(hamming(&s30[0], &s30[1]), TILES as u32);
}

#[test]
fn jigsaw_tiles_round_trip_through_their_permutation() {
    use pretext::config::TaskSettings;
    use pretext::tasks::BatchMaker;
    use pretext::tasks::jigsaw::{JigsawMaker, TILES, permutation_set, shuffle, unshuffle};
    let set = std::sync::Arc::new(permutation_set(30));
    let names: Vec<u32> = (0..TILES as u32).collect();
    for p in set.iter() {
        let shuffled = shuffle(&names, p);
        assert_eq!(unshuffle(&shuffled, p), names);
        // Position k of the puzzle holds original tile p[k].
        assert!(shuffled.iter().zip(p).all(|(&t, &q)| t == u32::from(q)));
    }
    assert_ne!(shuffle(&names, &set[1]), names);
    // The batch maker's puzzles, put back by their label's permutation, are the image's tiles
    // in reading order.
    let data = pretext::data::builtin::generate(6, 32);
    let maker = JigsawMaker {
        gap: TaskSettings::default().patch_gap,
        permutations: set.clone(),
    };
    let indices = [0usize, 3, 5];
    let batch = maker.make(&data, &indices, 17);
    let p = batch.inputs.shape[2];
    assert_eq!(batch.inputs.shape, [TILES * indices.len(), 3, p, p]);
    let pretext::tasks::BatchExtra::Patches(layouts) = &batch.extra else {
        panic!("no layouts");
    };
    let tile_len = 3 * p * p;
    for (n, &idx) in indices.iter().enumerate() {
        let puzzle: Vec<Vec<f32>> = batch.inputs.data[n * TILES * tile_len..][..TILES * tile_len]
            .chunks(tile_len)
            .map(<[f32]>::to_vec)
            .collect();
        let restored = unshuffle(&puzzle, &set[batch.labels[n] as usize]);
        for (k, &(x, y)) in layouts[n].origins.iter().enumerate() {
            let mut want = Vec::new();
            pretext::data::ops::push_chw(
                &augment::extract(data.image(idx), 32, x, y, p),
                p,
                &mut want,
            );
            assert_eq!(restored[k], want, "image {idx}, tile {k}");
        }
    }
}

#[test]
fn jigsaw_beats_chance() {
    let e = train(&[TaskKind::Jigsaw], 256, 3);
    let t = metric(&e, TaskKind::Jigsaw);
    let chance = t.baseline.unwrap();
    assert!((chance - 1.0 / 30.0).abs() < 1e-9);
    assert!(t.metric > 0.2, "{} vs chance {chance}", t.metric);
}

#[test]
fn contrastive_ranks_positives_far_above_chance() {
    let e = train(&[TaskKind::Contrastive], 256, 2);
    let t = metric(&e, TaskKind::Contrastive);
    let chance = t.baseline.unwrap();
    assert!((chance - 1.0 / 63.0).abs() < 1e-9);
    assert!(t.metric > 3.0 * chance, "{} vs chance {chance}", t.metric);
}

#[test]
fn several_tasks_on_one_encoder_all_learn() {
    let e = train(
        &[
            TaskKind::Rotation,
            TaskKind::Inpainting,
            TaskKind::Contrastive,
        ],
        192,
        3,
    );
    assert!(metric(&e, TaskKind::Rotation).metric > 0.45);
    let inp = metric(&e, TaskKind::Inpainting);
    assert!(
        inp.metric > inp.baseline.unwrap(),
        "{} vs {:?}",
        inp.metric,
        inp.baseline
    );
    let con = metric(&e, TaskKind::Contrastive);
    assert!(con.metric > 3.0 * con.baseline.unwrap());
}

#[test]
fn colorization_with_other_tasks_sees_lightness_in_three_channels() {
    assert_eq!(pretext::tasks::input_channels(&[TaskKind::Colorization]), 1);
    assert_eq!(
        pretext::tasks::input_channels(&[TaskKind::ColorizationBins, TaskKind::Colorization]),
        1
    );
    assert_eq!(
        pretext::tasks::input_channels(&[TaskKind::Colorization, TaskKind::Rotation]),
        3
    );
    let e = train(&[TaskKind::Colorization, TaskKind::Rotation], 64, 1);
    assert_eq!(e.tasks.len(), 2);
}

#[test]
fn a_clicked_pixel_shows_its_colour_distribution_in_the_colorization_bins_preview() {
    use pretext::tasks::PixelGrid;
    // The click mapping: three pictures of 16 px drawn 4× from x = 6, 76, 146; rows at y = 6, 76.
    let grid = PixelGrid {
        columns: vec![6, 76, 146],
        rows: vec![6, 76],
        side: 16,
        factor: 4,
    };
    assert_eq!(grid.pixel_at(6.0, 6.0), Some((0, 0)));
    assert_eq!(
        grid.pixel_at(76.0 + 4.0 * 5.0 + 1.0, 76.0 + 4.0 * 3.0),
        Some((3, 5))
    );
    assert_eq!(grid.pixel_at(70.0, 10.0), None, "between pictures");
    assert_eq!(grid.pixel_at(10.0, 200.0), None, "below the rows");

    let out = tempfile::tempdir().unwrap();
    let trainer = pretext::train::Trainer::spawn().unwrap();
    assert!(trainer.send(Command::Start(Box::new(TrainConfig {
        data: DataSource::Builtin { count: 32 },
        tasks: vec![TaskKind::ColorizationBins],
        batch: 16,
        epochs: 1,
        out: out.path().to_path_buf(),
        preview_images: 2,
        ..TrainConfig::default()
    }))));
    let log = common::drive(&trainer, |_, _| {});
    assert_eq!(log.outcome, Some(Outcome::Completed), "{:?}", log.errors);
    assert!(trainer.send(Command::SelectPixel {
        task: TaskKind::ColorizationBins,
        pixel: (3, 5),
    }));
    let preview = loop {
        match trainer
            .events()
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap()
        {
            pretext::train::Event::Preview(p) => break p,
            pretext::train::Event::Warning(w) => panic!("{w}"),
            _ => {}
        }
    };
    assert_eq!(preview.task, TaskKind::ColorizationBins);
    assert!(
        preview.caption.contains("(row 3, column 5"),
        "{}",
        preview.caption
    );
    let grid = preview.pixels.clone().unwrap();
    assert_eq!(grid.rows.len(), 2, "one row per inspection image");
    assert_eq!(grid.side, 32);
}
