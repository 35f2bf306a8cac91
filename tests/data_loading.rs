//! Loading real files of every supported kind, plus broken ones, from folders made here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, RgbImage, Rgba};
use pretext::data::{DataError, folder};

const SIZE: usize = 16;

fn load(dir: &Path) -> Result<pretext::data::Dataset, DataError> {
    folder::load_folder(dir, SIZE, &|_, _| {}, &AtomicBool::new(false))
}

fn index_of(d: &pretext::data::Dataset, name: &str) -> usize {
    d.names
        .iter()
        .position(|n| n.ends_with(name))
        .unwrap_or_else(|| panic!("{name} not loaded; have {:?}", d.names))
}

/// Top half red, bottom half blue.
fn red_over_blue(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |_, y| {
        if y < h / 2 {
            Rgb([250, 10, 10])
        } else {
            Rgb([10, 10, 250])
        }
    })
}

fn assert_red_over_blue(px: &[u8]) {
    let top = common::mean_rgb(px, SIZE, 0, 0, SIZE, SIZE / 2 - 2);
    let bottom = common::mean_rgb(px, SIZE, 0, SIZE / 2 + 2, SIZE, SIZE);
    assert!(top[0] > 200.0 && top[2] < 60.0, "top {top:?}");
    assert!(bottom[2] > 200.0 && bottom[0] < 60.0, "bottom {bottom:?}");
}

#[test]
fn every_format_and_pixel_kind_becomes_working_size_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rgb = DynamicImage::ImageRgb8(red_over_blue(48, 40));
    for ext in ["png", "jpg", "jpeg", "bmp", "gif", "tiff", "webp"] {
        common::save(&d.join(format!("rgb.{ext}")), &rgb);
    }
    common::save(&d.join("upper.PNG"), &rgb);
    // Grayscale 8-bit and 16-bit.
    common::save(
        &d.join("gray.png"),
        &DynamicImage::ImageLuma8(ImageBuffer::from_fn(20, 20, |_, y| {
            Luma([if y < 10 { 200 } else { 30 }])
        })),
    );
    common::save(
        &d.join("gray16.png"),
        &DynamicImage::ImageLuma16(ImageBuffer::from_fn(20, 20, |_, _| Luma([65_535]))),
    );
    // 16-bit RGB keeps its colours.
    common::save(
        &d.join("rgb16.png"),
        &DynamicImage::ImageRgb16(ImageBuffer::from_fn(20, 20, |_, y| {
            if y < 10 {
                Rgb([65_000, 2_000, 2_000])
            } else {
                Rgb([2_000, 2_000, 65_000])
            }
        })),
    );
    // Transparent RGBA and grey+alpha go onto neutral grey.
    common::save(
        &d.join("rgba.png"),
        &DynamicImage::ImageRgba8(ImageBuffer::from_pixel(20, 20, Rgba([255, 0, 0, 0]))),
    );
    common::save(
        &d.join("la.png"),
        &DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(20, 20, LumaA([0, 128]))),
    );
    // Palette PNG.
    let indices: Vec<u8> = (0..20 * 20).map(|i| u8::from(i / 20 >= 10)).collect();
    common::write(
        &d.join("palette.png"),
        &common::palette_png(20, 20, &[[250, 10, 10], [10, 10, 250]], &indices),
    );
    // A README next to the images is not an image: not skipped as a failure, but listed as
    // ignored, with its type.
    common::write(&d.join("README.txt"), b"notes");

    let data = load(d).unwrap();
    assert!(data.skipped.is_empty(), "{:?}", data.skipped);
    assert_eq!(data.ignored.len(), 1, "{:?}", data.ignored);
    assert!(data.ignored[0].path.ends_with("README.txt"));
    assert!(
        data.ignored[0]
            .reason
            .starts_with("not an image file (.txt)"),
        "{}",
        data.ignored[0].reason
    );
    assert_eq!(data.len(), 14, "{:?}", data.names);
    assert!(data.labels.is_none(), "a flat folder is unlabelled");
    assert_eq!(data.image(0).len(), SIZE * SIZE * 3);
    for ext in ["png", "jpg", "jpeg", "bmp", "gif", "tiff", "webp"] {
        assert_red_over_blue(data.image(index_of(&data, &format!("rgb.{ext}"))));
    }
    assert_red_over_blue(data.image(index_of(&data, "upper.PNG")));
    assert_red_over_blue(data.image(index_of(&data, "rgb16.png")));
    assert_red_over_blue(data.image(index_of(&data, "palette.png")));
    let gray = data.image(index_of(&data, "gray.png"));
    assert!(gray.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    assert!(gray[0] > 180 && gray[gray.len() - 1] < 50);
    assert!(
        data.image(index_of(&data, "gray16.png"))
            .iter()
            .all(|&v| v == 255)
    );
    assert!(
        data.image(index_of(&data, "rgba.png"))
            .iter()
            .all(|&v| v == 128)
    );
    // Half-transparent black on grey: (0·128 + 128·127) / 255 ≈ 64.
    let la = data.image(index_of(&data, "la.png"));
    assert!(la.iter().all(|&v| (63..=65).contains(&v)), "{:?}", &la[..3]);
}

#[test]
fn exif_orientation_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    // Stored sideways: left half red, right half blue.
    let stored = RgbImage::from_fn(40, 40, |x, _| {
        if x < 20 {
            Rgb([250, 10, 10])
        } else {
            Rgb([10, 10, 250])
        }
    });
    let mut jpeg = Vec::new();
    DynamicImage::ImageRgb8(stored)
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    // Orientation 6: rotate 90° clockwise to display → left half goes to the top.
    common::write(
        &dir.path().join("cw.jpg"),
        &common::with_exif_orientation(&jpeg, 6),
    );
    // Orientation 1 stays as stored: red on the left.
    common::write(
        &dir.path().join("plain.jpg"),
        &common::with_exif_orientation(&jpeg, 1),
    );
    let data = load(dir.path()).unwrap();
    assert_red_over_blue(data.image(index_of(&data, "cw.jpg")));
    let plain = data.image(index_of(&data, "plain.jpg"));
    let left = common::mean_rgb(plain, SIZE, 0, 0, SIZE / 2 - 2, SIZE);
    assert!(left[0] > 200.0, "{left:?}");
}

#[test]
fn broken_files_are_skipped_with_reasons_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::save(
        &d.join("good.png"),
        &DynamicImage::ImageRgb8(red_over_blue(30, 30)),
    );
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(red_over_blue(64, 64))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    common::write(&d.join("truncated.png"), &png[..png.len() / 2]);
    common::write(&d.join("notes.jpg"), b"this is a text file, not a JPEG\n");
    common::write(&d.join("empty.png"), b"");
    common::write(&d.join("bomb.png"), &common::lying_png(20_000, 20_000));

    let data = load(d).unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data.skipped.len(), 4, "{:?}", data.skipped);
    let reason = |name: &str| {
        data.skipped
            .iter()
            .find(|s| s.path.ends_with(name))
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{name} not reported"))
    };
    assert_eq!(reason("empty.png"), "empty file");
    assert!(
        reason("bomb.png").contains("too large"),
        "{}",
        reason("bomb.png")
    );
    assert!(!reason("notes.jpg").is_empty());
    assert!(!reason("truncated.png").is_empty());
}

#[test]
fn labels_come_from_first_level_subfolders() {
    let dir = tempfile::tempdir().unwrap();
    let img = DynamicImage::ImageRgb8(red_over_blue(20, 20));
    for (class, n) in [("cats", 3), ("dogs", 2)] {
        for i in 0..n {
            common::save(&dir.path().join(class).join(format!("{i}.png")), &img);
        }
    }
    // Deeper folders belong to their first-level class.
    common::save(&dir.path().join("dogs/puppies/p.png"), &img);
    let data = load(dir.path()).unwrap();
    assert_eq!(data.class_names, ["cats", "dogs"]);
    assert_eq!(
        data.class_counts(),
        [("cats".to_string(), 3), ("dogs".to_string(), 3)]
    );
    assert_eq!(data.label(index_of(&data, "p.png")), Some(1));
}

#[test]
fn unusable_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(matches!(load(&missing), Err(DataError::NotFound(_))));
    let file = dir.path().join("a.png");
    common::save(&file, &DynamicImage::ImageRgb8(red_over_blue(8, 8)));
    let e = load(&file).unwrap_err();
    assert!(matches!(e, DataError::NotAFolder(_)));
    assert!(e.to_string().contains("not a folder"));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(matches!(load(&empty), Err(DataError::NoImages { .. })));
    let junk = dir.path().join("junk");
    common::write(&junk.join("x.png"), b"garbage");
    let e = load(&junk).unwrap_err();
    assert!(e.to_string().contains("1 file skipped"), "{e}");
}

#[test]
fn loading_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    common::save(
        &dir.path().join("a.png"),
        &DynamicImage::ImageRgb8(red_over_blue(8, 8)),
    );
    let r = folder::load_folder(dir.path(), SIZE, &|_, _| {}, &AtomicBool::new(true));
    assert!(matches!(r, Err(DataError::Cancelled)));
}

/// A camera-sized JPEG is decoded at a reduced DCT scale (never at full resolution), and the
/// result matches the full decode cropped and resized the same way: within a few levels of 255
/// on average (the scaled IDCT averages 2×2…8×8 blocks where the triangle filter weighs them).
#[test]
fn a_large_jpeg_decoded_at_a_smaller_dct_scale_matches_the_full_decode() {
    let (w, h) = (1600u32, 1200u32);
    let photo = RgbImage::from_fn(w, h, |x, y| {
        let fx = x as f32 / w as f32;
        let fy = y as f32 / h as f32;
        let ripple = ((x / 40 + y / 40) % 2) as f32 * 40.0;
        Rgb([
            (200.0 * fx + ripple) as u8,
            (180.0 * fy + 30.0) as u8,
            (120.0 + 100.0 * (fx * 9.0).sin() * (fy * 7.0).cos()) as u8,
        ])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&photo)
        .unwrap();
    for size in [32u32, 96] {
        // 1/8 of 1200 = 150 ≥ 96: the smallest DCT scale serves both sizes.
        let (small, _) = folder::decode_jpeg_scaled(&jpeg, size).unwrap();
        assert_eq!((small.width(), small.height()), (200, 150));
        let scaled = folder::decode_bytes(&jpeg, size).unwrap();
        let full = image::load_from_memory(&jpeg).unwrap().into_rgb8();
        let s = w.min(h);
        let square = image::imageops::crop_imm(&full, (w - s) / 2, (h - s) / 2, s, s).to_image();
        let reference = folder::fill_square(&square, size);
        assert_eq!(scaled.pixels.len(), reference.as_raw().len());
        let mean_diff = scaled
            .pixels
            .iter()
            .zip(reference.as_raw())
            .map(|(&a, &b)| f64::from(a.abs_diff(b)))
            .sum::<f64>()
            / scaled.pixels.len() as f64;
        assert!(mean_diff < 3.0, "{size} px: mean difference {mean_diff}");
    }
}
