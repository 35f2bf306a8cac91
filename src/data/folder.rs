//! Image folders as users have them: recursive scan, parallel decode with memory limits, EXIF
//! orientation, every pixel format turned into 8-bit RGB at the working size, labels from
//! first-level subfolders (ImageFolder layout), and a report of every file that was skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage, imageops::FilterType};
use rayon::prelude::*;

use super::{DataError, Dataset, Skipped};
use crate::config::DataSource;

/// File extensions that are decoded (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// Largest width or height accepted; a larger image is skipped, not decoded.
pub const MAX_SIDE: u32 = 16_384;
/// Largest allocation one decoder may make (a decompression bomb stops here).
pub const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;
/// Grey that transparent pixels are composited onto.
pub const BACKGROUND: u8 = 128;
/// How deep the scan follows subfolders.
const MAX_DEPTH: usize = 32;

fn is_image_path(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// All image files below `root`, sorted, with unreadable subfolders reported as skipped.
pub fn scan(root: &Path) -> Result<(Vec<PathBuf>, Vec<Skipped>), DataError> {
    let meta = std::fs::metadata(root).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound(root.to_path_buf()),
        _ => DataError::Io {
            path: root.to_path_buf(),
            source: e,
        },
    })?;
    if !meta.is_dir() {
        return Err(DataError::NotAFolder(root.to_path_buf()));
    }
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if dir == root => {
                return Err(DataError::Io {
                    path: dir,
                    source: e,
                });
            }
            Err(e) => {
                skipped.push(Skipped {
                    path: dir,
                    reason: format!("folder not readable: {e}"),
                });
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if depth < MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
            } else if meta.is_file() && is_image_path(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok((files, skipped))
}

/// Decodes one file into `size × size` RGB bytes, or says why it cannot.
pub fn decode_to_size(path: &Path, size: u32) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Err("empty file".into());
    }
    let mut reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(describe_image_error)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(describe_image_error)?;
    img.apply_orientation(orientation);
    let rgb = to_rgb8(img);
    Ok(fill_square(&rgb, size).into_raw())
}

fn describe_image_error(e: image::ImageError) -> String {
    match e {
        image::ImageError::Limits(l) => format!(
            "too large to decode safely ({l}; limits: {MAX_SIDE} px a side, {} MiB)",
            MAX_DECODE_BYTES / (1024 * 1024)
        ),
        image::ImageError::Unsupported(u) => format!("not a supported image: {u}"),
        other => format!("not a valid image: {other}"),
    }
}

/// Any pixel format (grey, 16-bit, palette, with or without alpha) to 8-bit RGB; transparent
/// pixels are composited onto a neutral grey.
pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let (w, h) = rgba.dimensions();
        let mut out = RgbImage::new(w, h);
        for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
            let a = u32::from(p[3]);
            for c in 0..3 {
                let v = (u32::from(p[c]) * a + u32::from(BACKGROUND) * (255 - a) + 127) / 255;
                o[c] = v as u8;
            }
        }
        out
    } else {
        img.into_rgb8()
    }
}

/// Resizes so the short side is `size`, then crops the centre square.
pub fn fill_square(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == size && h == size {
        return img.clone();
    }
    let scale = f64::from(size) / f64::from(w.min(h));
    let nw = ((f64::from(w) * scale).round() as u32).max(size);
    let nh = ((f64::from(h) * scale).round() as u32).max(size);
    let resized = image::imageops::resize(img, nw, nh, FilterType::Triangle);
    let x = (nw - size) / 2;
    let y = (nh - size) / 2;
    image::imageops::crop_imm(&resized, x, y, size, size).to_image()
}

/// Loads a folder: scan, decode in parallel, labels from first-level subfolders.
pub fn load_folder(
    root: &Path,
    size: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
    cancel: &AtomicBool,
) -> Result<Dataset, DataError> {
    let (files, mut skipped) = scan(root)?;
    let total = files.len();
    progress(0, total);
    let done = AtomicUsize::new(0);
    let side = u32::try_from(size).unwrap_or(u32::MAX);
    let decoded: Vec<Option<Result<Vec<u8>, String>>> = files
        .par_iter()
        .map(|path| {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            let r = decode_to_size(path, side);
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            progress(n, total);
            Some(r)
        })
        .collect();
    if cancel.load(Ordering::Relaxed) {
        return Err(DataError::Cancelled);
    }

    // Labels: ImageFolder layout when every image sits inside a first-level subfolder.
    let rel: Vec<PathBuf> = files
        .iter()
        .map(|p| p.strip_prefix(root).unwrap_or(p).to_path_buf())
        .collect();
    let labelled = !rel.is_empty() && rel.iter().all(|r| r.components().count() >= 2);

    let mut pixels = Vec::with_capacity(total * size * size * 3);
    let mut names = Vec::with_capacity(total);
    let mut class_of: Vec<String> = Vec::with_capacity(total);
    for ((path, r), rel) in files.iter().zip(decoded).zip(&rel) {
        match r {
            Some(Ok(px)) => {
                pixels.extend_from_slice(&px);
                names.push(rel.to_string_lossy().into_owned());
                if labelled {
                    let class = rel
                        .components()
                        .next()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .unwrap_or_default();
                    class_of.push(class);
                }
            }
            Some(Err(reason)) => skipped.push(Skipped {
                path: path.clone(),
                reason,
            }),
            None => return Err(DataError::Cancelled),
        }
    }
    if names.is_empty() {
        return Err(DataError::NoImages {
            path: root.to_path_buf(),
            skipped,
        });
    }
    let (labels, class_names) = if labelled {
        let classes: BTreeMap<&str, u32> = class_of
            .iter()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .enumerate()
            .map(|(i, c)| (c, i as u32))
            .collect();
        let labels = class_of.iter().map(|c| classes[c.as_str()]).collect();
        let names = classes.keys().map(|s| (*s).to_string()).collect();
        (Some(labels), names)
    } else {
        (None, Vec::new())
    };
    Ok(Dataset::from_parts(
        DataSource::Folder(root.to_path_buf()),
        size,
        pixels,
        names,
        labels,
        class_names,
        skipped,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_square_crops_the_centre() {
        // 4x2 image: left half black, right half white -> centre 2x2 crop after scaling to 2.
        let mut img = RgbImage::new(40, 20);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = if x < 20 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            };
        }
        let out = fill_square(&img, 10);
        assert_eq!(out.dimensions(), (10, 10));
        assert!(out.get_pixel(0, 5)[0] < 30);
        assert!(out.get_pixel(9, 5)[0] > 225);
    }

    #[test]
    fn alpha_is_composited_on_grey() {
        let img = image::RgbaImage::from_pixel(2, 2, image::Rgba([255, 0, 0, 0]));
        let rgb = to_rgb8(DynamicImage::ImageRgba8(img));
        assert_eq!(rgb.get_pixel(0, 0).0, [BACKGROUND; 3]);
    }
}
