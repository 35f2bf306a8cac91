//! Random transformations T(x) for contrastive views, inpainting masks and patch layouts.
//! Images here are `size × size` RGB, either bytes or floats in [0, 1], row-major HWC.

use crate::config::{Augment, MaskKind};
use crate::rng::Rng;

/// What T did to one view, for previews and the math panel.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentRecord {
    /// Crop box in source pixels: x, y, width, height.
    pub crop: [f32; 4],
    pub flipped: bool,
    /// Brightness, contrast, saturation factors and hue shift, when jitter was applied.
    pub jitter: Option<[f32; 4]>,
    pub gray: bool,
    pub blur_sigma: Option<f32>,
}

pub fn bytes_to_unit(src: &[u8]) -> Vec<f32> {
    src.iter().map(|&v| f32::from(v) / 255.0).collect()
}

pub fn unit_to_bytes(src: &[f32]) -> Vec<u8> {
    src.iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

/// A random crop box covering `[min_scale, 1]` of the area with aspect ratio in [3/4, 4/3]
/// (torchvision's RandomResizedCrop); always inside the image.
pub fn random_crop_box(size: usize, min_scale: f64, rng: &mut Rng) -> [f32; 4] {
    let s = size as f32;
    let area = s * s;
    for _ in 0..10 {
        let target = area * rng.range(min_scale as f32, 1.0);
        let log_ratio = rng.range((3.0f32 / 4.0).ln(), (4.0f32 / 3.0).ln());
        let ratio = log_ratio.exp();
        let w = (target * ratio).sqrt();
        let h = (target / ratio).sqrt();
        if w <= s && h <= s {
            let x = rng.range(0.0, s - w + f32::EPSILON).min(s - w);
            let y = rng.range(0.0, s - h + f32::EPSILON).min(s - h);
            return [x, y, w, h];
        }
    }
    [0.0, 0.0, s, s]
}

/// Bilinear resampling of the crop box back to `size × size`.
pub fn crop_resize(src: &[f32], size: usize, b: [f32; 4]) -> Vec<f32> {
    crop_resize_to(src, size, b, size)
}

/// Bilinear resampling of the crop box `b` of a `size × size` image to `out × out`.
pub fn crop_resize_to(src: &[f32], size: usize, b: [f32; 4], out: usize) -> Vec<f32> {
    let mut dst = vec![0.0; out * out * 3];
    let max = (size - 1) as f32;
    for y in 0..out {
        let sy = (b[1] + (y as f32 + 0.5) * b[3] / out as f32 - 0.5).clamp(0.0, max);
        let y0 = sy.floor() as usize;
        let y1 = (y0 + 1).min(size - 1);
        let fy = sy - y0 as f32;
        for x in 0..out {
            let sx = (b[0] + (x as f32 + 0.5) * b[2] / out as f32 - 0.5).clamp(0.0, max);
            let x0 = sx.floor() as usize;
            let x1 = (x0 + 1).min(size - 1);
            let fx = sx - x0 as f32;
            for c in 0..3 {
                let p = |yy: usize, xx: usize| src[(yy * size + xx) * 3 + c];
                let top = p(y0, x0) * (1.0 - fx) + p(y0, x1) * fx;
                let bottom = p(y1, x0) * (1.0 - fx) + p(y1, x1) * fx;
                dst[(y * out + x) * 3 + c] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    dst
}

pub fn hflip(img: &mut [f32], size: usize) {
    for row in img.chunks_exact_mut(size * 3) {
        for x in 0..size / 2 {
            for c in 0..3 {
                row.swap(x * 3 + c, (size - 1 - x) * 3 + c);
            }
        }
    }
}

fn luma(p: &[f32]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

pub fn to_gray(img: &mut [f32]) {
    for p in img.chunks_exact_mut(3) {
        let g = luma(p);
        p.fill(g);
    }
}

fn rgb_to_hsv(p: &[f32]) -> [f32; 3] {
    let (r, g, b) = (p[0], p[1], p[2]);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d <= 0.0 {
        0.0
    } else if max == r {
        ((g - b) / d).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / d + 2.0) / 6.0
    } else {
        ((r - g) / d + 4.0) / 6.0
    };
    let s = if max <= 0.0 { 0.0 } else { d / max };
    [h, s, max]
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let p = v * (1.0 - s);
    let q = v * (1.0 - s * f);
    let t = v * (1.0 - s * (1.0 - f));
    match i as i32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Brightness, contrast and saturation factors and a hue shift (in turns), applied in that
/// order, clipped to [0, 1] after each (as torchvision's ColorJitter with a fixed order).
pub fn color_jitter(img: &mut [f32], f: [f32; 4]) {
    let [brightness, contrast, saturation, hue] = f;
    for v in img.iter_mut() {
        *v = (*v * brightness).clamp(0.0, 1.0);
    }
    let n = (img.len() / 3).max(1) as f32;
    let mean = img.chunks_exact(3).map(luma).sum::<f32>() / n;
    for v in img.iter_mut() {
        *v = ((*v - mean) * contrast + mean).clamp(0.0, 1.0);
    }
    for p in img.chunks_exact_mut(3) {
        let g = luma(p);
        for v in p.iter_mut() {
            *v = ((*v - g) * saturation + g).clamp(0.0, 1.0);
        }
    }
    if hue != 0.0 {
        for p in img.chunks_exact_mut(3) {
            let [h, s, v] = rgb_to_hsv(p);
            p.copy_from_slice(&hsv_to_rgb(h + hue, s, v));
        }
    }
}

fn blur_pass(from: &[f32], to: &mut [f32], size: usize, kernel: &[f32], horizontal: bool) {
    let n = size as isize;
    let radius = (kernel.len() / 2) as isize;
    for y in 0..n {
        for x in 0..n {
            for c in 0..3 {
                let mut acc = 0.0;
                for (k, w) in kernel.iter().enumerate() {
                    let d = k as isize - radius;
                    let (sx, sy) = if horizontal {
                        ((x + d).clamp(0, n - 1), y)
                    } else {
                        (x, (y + d).clamp(0, n - 1))
                    };
                    acc += w * from[((sy * n + sx) * 3) as usize + c];
                }
                to[((y * n + x) * 3) as usize + c] = acc;
            }
        }
    }
}

/// Separable Gaussian blur (edges clamped).
pub fn gaussian_blur(img: &mut [f32], size: usize, sigma: f32) {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let mut tmp = vec![0.0; img.len()];
    blur_pass(img, &mut tmp, size, &kernel, true);
    blur_pass(&tmp, img, size, &kernel, false);
}

/// One random view T(x) of a byte image, as floats in [0, 1].
pub fn augment(src: &[u8], size: usize, a: &Augment, rng: &mut Rng) -> (Vec<f32>, AugmentRecord) {
    augment_to(src, size, size, a, rng)
}

/// One random view T(x) of a `size × size` byte image, drawn at `out × out` pixels, as
/// floats in [0, 1] (the crop box is recorded in the source's pixels).
pub fn augment_to(
    src: &[u8],
    size: usize,
    out: usize,
    a: &Augment,
    rng: &mut Rng,
) -> (Vec<f32>, AugmentRecord) {
    let crop = random_crop_box(size, a.crop_min_scale, rng);
    let mut img = crop_resize_to(&bytes_to_unit(src), size, crop, out);
    let size = out;
    let flipped = f64::from(rng.f32()) < a.flip_p;
    if flipped {
        hflip(&mut img, size);
    }
    let jitter = if f64::from(rng.f32()) < a.jitter_p {
        let factor = |rng: &mut Rng, s: f64| rng.range((1.0 - s).max(0.0) as f32, (1.0 + s) as f32);
        let f = [
            factor(rng, a.brightness),
            factor(rng, a.contrast),
            factor(rng, a.saturation),
            rng.range(-a.hue as f32, a.hue as f32),
        ];
        color_jitter(&mut img, f);
        Some(f)
    } else {
        None
    };
    let gray = f64::from(rng.f32()) < a.gray_p;
    if gray {
        to_gray(&mut img);
    }
    let blur_sigma = if f64::from(rng.f32()) < a.blur_p {
        let scale = size as f32 / 32.0;
        let sigma = rng.range(0.1, 2.0) * scale;
        gaussian_blur(&mut img, size, sigma);
        Some(sigma)
    } else {
        None
    };
    (
        img,
        AugmentRecord {
            crop,
            flipped,
            jitter,
            gray,
            blur_sigma,
        },
    )
}

/// An inpainting mask, 1 where hidden.
pub fn mask(kind: MaskKind, fraction: f64, size: usize, rng: &mut Rng) -> Vec<u8> {
    let mut m = vec![0u8; size * size];
    let side = ((fraction * size as f64).round() as usize).clamp(1, size);
    let square = |m: &mut [u8], x: usize, y: usize, s: usize| {
        for yy in y..(y + s).min(size) {
            for xx in x..(x + s).min(size) {
                m[yy * size + xx] = 1;
            }
        }
    };
    match kind {
        MaskKind::Center => {
            let o = (size - side) / 2;
            square(&mut m, o, o, side);
        }
        MaskKind::Random => {
            let x = rng.below(size - side + 1);
            let y = rng.below(size - side + 1);
            square(&mut m, x, y, side);
        }
        MaskKind::Blocks => {
            let small = (side / 2).max(1);
            let target = side * side;
            let mut covered = 0;
            let mut guard = 0;
            while covered < target && guard < 1000 {
                let x = rng.below(size - small + 1);
                let y = rng.below(size - small + 1);
                square(&mut m, x, y, small);
                covered = m.iter().filter(|&&v| v == 1).count();
                guard += 1;
            }
        }
    }
    m
}

/// Relative patch position: a 3×3 grid of cells over the image, one patch per cell, smaller
/// than its cell by the gap and placed at a random offset inside it (jitter), so the network
/// cannot match edges or lines across patches.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchLayout {
    /// Side of every patch in pixels.
    pub patch: usize,
    /// Top-left corner of the patch in each cell, reading order (index 4 is the centre).
    pub origins: [(usize, usize); 9],
}

/// Cell index of neighbour class `k` (0..8): the eight cells around the centre, reading order.
pub const NEIGHBOUR_CELLS: [usize; 8] = [0, 1, 2, 3, 5, 6, 7, 8];

pub fn patch_layout(size: usize, gap: f64, rng: &mut Rng) -> PatchLayout {
    let cell = size as f64 / 3.0;
    let patch = ((cell * (1.0 - gap)).floor() as usize).clamp(2, cell.floor() as usize);
    let mut origins = [(0, 0); 9];
    for (i, o) in origins.iter_mut().enumerate() {
        let (cx, cy) = ((i % 3) as f64 * cell, (i / 3) as f64 * cell);
        let slack = (cell.floor() as usize).saturating_sub(patch);
        let jx = rng.below(slack + 1);
        let jy = rng.below(slack + 1);
        *o = (cx.round() as usize + jx, cy.round() as usize + jy);
        o.0 = o.0.min(size - patch);
        o.1 = o.1.min(size - patch);
    }
    PatchLayout { patch, origins }
}

/// A square region of a byte image.
pub fn extract(src: &[u8], size: usize, x: usize, y: usize, side: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(side * side * 3);
    for yy in y..y + side {
        out.extend_from_slice(&src[(yy * size + x) * 3..(yy * size + x + side) * 3]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cover_what_they_say() {
        let mut rng = Rng::new(1);
        let m = mask(MaskKind::Center, 0.5, 32, &mut rng);
        assert_eq!(m.iter().filter(|&&v| v == 1).count(), 256);
        assert_eq!(m[16 * 32 + 16], 1);
        assert_eq!(m[0], 0);
        let r = mask(MaskKind::Random, 0.25, 32, &mut rng);
        assert_eq!(r.iter().filter(|&&v| v == 1).count(), 64);
        let b = mask(MaskKind::Blocks, 0.5, 32, &mut rng);
        let covered = b.iter().filter(|&&v| v == 1).count();
        assert!((256..=256 + 64).contains(&covered), "{covered}");
    }

    #[test]
    fn patches_stay_inside_their_cells_with_gaps() {
        let mut rng = Rng::new(2);
        for size in [32usize, 64, 96] {
            for _ in 0..50 {
                let l = patch_layout(size, 0.25, &mut rng);
                let cell = size as f64 / 3.0;
                for (i, &(x, y)) in l.origins.iter().enumerate() {
                    assert!(x + l.patch <= size && y + l.patch <= size);
                    let (cx, cy) = ((i % 3) as f64 * cell, (i / 3) as f64 * cell);
                    assert!(
                        x as f64 >= cx.round()
                            && (x + l.patch) as f64 <= cx.round() + cell.floor() + 1.0
                    );
                    assert!(
                        y as f64 >= cy.round()
                            && (y + l.patch) as f64 <= cy.round() + cell.floor() + 1.0
                    );
                }
                assert!(l.patch < (size / 3));
            }
        }
    }

    #[test]
    fn hue_round_trip() {
        for p in [[0.2f32, 0.5, 0.9], [1.0, 0.0, 0.0], [0.3, 0.3, 0.3]] {
            let [h, s, v] = rgb_to_hsv(&p);
            let q = hsv_to_rgb(h, s, v);
            for c in 0..3 {
                assert!((p[c] - q[c]).abs() < 1e-5, "{p:?} {q:?}");
            }
        }
    }
}
