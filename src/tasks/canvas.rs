//! A tiny RGB canvas for preview pictures (no text: captions travel beside the picture).

use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    /// Row-major RGB bytes.
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: [u8; 3]) -> Self {
        let rgb = background
            .iter()
            .copied()
            .cycle()
            .take(width * height * 3)
            .collect();
        Self { width, height, rgb }
    }

    pub fn fill_rect(&mut self, x: usize, y: usize, w: usize, h: usize, color: [u8; 3]) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                let o = (yy * self.width + xx) * 3;
                self.rgb[o..o + 3].copy_from_slice(&color);
            }
        }
    }

    /// A rectangle outline `t` pixels thick.
    pub fn frame(&mut self, x: usize, y: usize, w: usize, h: usize, t: usize, color: [u8; 3]) {
        self.fill_rect(x, y, w, t, color);
        self.fill_rect(x, (y + h).saturating_sub(t), w, t, color);
        self.fill_rect(x, y, t, h, color);
        self.fill_rect((x + w).saturating_sub(t), y, t, h, color);
    }

    /// Copies an RGB image of `w × h`, scaled up by an integer `factor` (nearest neighbour).
    pub fn blit(&mut self, src: &[u8], w: usize, h: usize, factor: usize, x: usize, y: usize) {
        for yy in 0..h * factor {
            let ty = y + yy;
            if ty >= self.height {
                break;
            }
            for xx in 0..w * factor {
                let tx = x + xx;
                if tx >= self.width {
                    break;
                }
                let s = ((yy / factor) * w + xx / factor) * 3;
                let d = (ty * self.width + tx) * 3;
                self.rgb[d..d + 3].copy_from_slice(&src[s..s + 3]);
            }
        }
    }

    /// Vertical bars for values in [0, 1], the `highlight`ed one in blue.
    pub fn bars(
        &mut self,
        x: usize,
        y: usize,
        w: usize,
        h: usize,
        values: &[f32],
        highlight: Option<usize>,
    ) {
        let bar_w = w / values.len().max(1);
        for (k, &p) in values.iter().enumerate() {
            let bh = (p.clamp(0.0, 1.0) * h as f32).round() as usize;
            let color = if Some(k) == highlight {
                [80, 150, 255]
            } else {
                [170, 170, 170]
            };
            self.fill_rect(
                x + k * bar_w + 1,
                y + h - bh,
                bar_w.saturating_sub(2).max(1),
                bh,
                color,
            );
        }
    }

    /// A heat map of values in `range` (blue → white → red), each value a `cell`-pixel square,
    /// `cols` values a row, its top-left corner at `at`.
    pub fn heatmap(
        &mut self,
        at: (usize, usize),
        values: &[f32],
        cols: usize,
        cell: usize,
        range: (f32, f32),
    ) {
        let (lo, hi) = range;
        for (i, &v) in values.iter().enumerate() {
            let t = ((v - lo) / (hi - lo).max(1e-12)).clamp(0.0, 1.0);
            let color = if t < 0.5 {
                let u = t * 2.0;
                [
                    (40.0 + 215.0 * u) as u8,
                    (70.0 + 185.0 * u) as u8,
                    (200.0 + 55.0 * u) as u8,
                ]
            } else {
                let u = (t - 0.5) * 2.0;
                [255, (255.0 - 195.0 * u) as u8, (255.0 - 215.0 * u) as u8]
            };
            self.fill_rect(
                at.0 + (i % cols) * cell,
                at.1 + (i / cols) * cell,
                cell,
                cell,
                color,
            );
        }
    }

    pub fn save_png(&self, path: &Path) -> Result<(), image::ImageError> {
        let img =
            image::RgbImage::from_raw(self.width as u32, self.height as u32, self.rgb.clone())
                .ok_or_else(|| {
                    image::ImageError::Parameter(image::error::ParameterError::from_kind(
                        image::error::ParameterErrorKind::DimensionMismatch,
                    ))
                })?;
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )?;
        crate::model::checkpoint::write_atomic(path, &bytes).map_err(image::ImageError::IoError)
    }
}
