//! How an image file becomes the encoder's input, written down where a user looks: in a run's
//! `config.json` and in every checkpoint's metadata (key `preprocessing`, a JSON string). The
//! same weights give the same z in PyTorch only when the images go in the same way; the
//! README's PyTorch snippet follows these fields, and `tests/pytorch_roundtrip.rs` checks z
//! against what PyTorch computed from them.

use serde::{Deserialize, Serialize};

use super::folder::BACKGROUND;
use super::ops::{INPUT_MEAN, INPUT_STD};
use crate::config::TrainConfig;

/// The input convention of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// The network sees `size × size` pixels.
    pub size: usize,
    /// `"rgb"`: three channels. `"lab_l"`: CIE L* (D65) alone, as one channel — colorization
    /// trained by itself.
    pub input: String,
    /// The EXIF orientation is applied first (JPEG, TIFF, WebP).
    pub exif_orientation: bool,
    /// Transparent pixels are composited onto this sRGB colour, in 8 bits:
    /// `(v·a + bg·(255 − a) + 127) / 255` (integer division).
    pub background: [u8; 3],
    /// `"center_square"`: the largest centred square, in source pixels (after compositing).
    pub crop: String,
    /// `"triangle"`: a separable triangle filter widened by the downscale factor — PIL's
    /// `Image.BILINEAR`, torchvision's `resize(..., antialias=True)` — to 8-bit RGB.
    pub resize_filter: String,
    /// How a pixel value becomes a number: `"v / 255"` (rgb) or `"L* / 100"` (lab_l).
    pub scale: String,
    /// Then `(scaled − mean) / std`, per channel.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Channel order of the network input: (N, C, H, W).
    pub layout: String,
}

impl Preprocessing {
    /// The convention of a run with `config` (the same for every data source; generated images
    /// are drawn at the working size, so their crop and resize do nothing).
    pub fn of(config: &TrainConfig) -> Self {
        let lightness = crate::tasks::input_channels(&config.tasks) == 1;
        let channels = if lightness { 1 } else { 3 };
        Self {
            size: config.size,
            input: if lightness { "lab_l" } else { "rgb" }.to_owned(),
            exif_orientation: true,
            background: [BACKGROUND; 3],
            crop: "center_square".to_owned(),
            resize_filter: "triangle".to_owned(),
            scale: if lightness { "L* / 100" } else { "v / 255" }.to_owned(),
            mean: vec![INPUT_MEAN; channels],
            std: vec![INPUT_STD; channels],
            layout: "NCHW".to_owned(),
        }
    }

    /// The convention of an RGB run at working size `size`: what a folder's pixels are loaded
    /// with whatever the tasks (L* is computed from them later).
    pub fn at_size(size: usize) -> Self {
        Self::of(&TrainConfig {
            size,
            ..TrainConfig::default()
        })
    }

    /// Everything that decides a file's working-size pixels when a folder loads (the image
    /// cache's key): size, EXIF orientation, background, crop, resize filter, and the version
    /// of the decoding code. Input channels, scale and normalisation apply later, to the pixels.
    pub fn pixel_key(&self) -> String {
        format!(
            "size {}; exif_orientation {}; background {:?}; crop {}; resize_filter {}; \
             decoding {} (pretext {})",
            self.size,
            self.exif_orientation,
            self.background,
            self.crop,
            self.resize_filter,
            super::folder::DECODING_VERSION,
            env!("CARGO_PKG_VERSION"),
        )
    }

    /// As a JSON string (for checkpoint metadata).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TaskKind;

    #[test]
    fn rgb_runs_say_mean_half_and_std_quarter_on_grey_128() {
        let p = Preprocessing::of(&TrainConfig::default());
        assert_eq!(p.input, "rgb");
        assert_eq!(p.mean, [0.5; 3]);
        assert_eq!(p.std, [0.25; 3]);
        assert_eq!(p.background, [128; 3]);
        assert_eq!(p.size, 32);
        let back: Preprocessing = serde_json::from_str(&p.to_json()).unwrap_or_else(|_| {
            panic!("{}", p.to_json());
        });
        assert_eq!(back, p);
    }

    #[test]
    fn colorization_alone_sees_lightness() {
        let config = TrainConfig {
            tasks: vec![TaskKind::Colorization],
            ..TrainConfig::default()
        };
        let p = Preprocessing::of(&config);
        assert_eq!((p.input.as_str(), p.mean.len()), ("lab_l", 1));
        assert_eq!(p.scale, "L* / 100");
        // The normalisation the colorization task applies.
        let l = 37.0f32;
        let x = (l / 100.0 - p.mean[0]) / p.std[0];
        assert!((x - crate::tasks::colorization::normalize_l(l)).abs() < 1e-6);
    }
}
