//! Every reader of user files, fed thousands of mutated files: images of every supported format
//! (`decode_bytes`, `decode_to_size`, `load_folder`), the image cache's file as a folder's
//! second opening reads it (`load_folder_with`), checkpoints as `--init-from` and `--resume`
//! read them (`checkpoint::read`, then `Model::load_state_dict` and the optimiser state),
//! `config.json` (`TrainConfig` from JSON, `validate`, `RunDir::open`, `replay`, and the
//! `pretext eval` binary, which reads it on its own) and a run directory's `metrics.csv`
//! (`read_metrics`, `replay`, `RunDir::keep_metrics_through`).
//!
//! The inputs are derived from valid files made here (truncated, bit-flipped, overwritten,
//! byte runs inserted or deleted, spliced from two files, also across formats, and header
//! fields edited: image sizes, chunk and segment lengths, the safetensors header length, tensor
//! shapes, dtypes and offsets, JSON values), each from its own seed of a seeded generator, so
//! every run tries the same inputs and a failure names the seed and the mutations that made it.
//! Small files that decode to the largest images the limits allow (one per decoder) measure the
//! memory a single decode may take. Each call must return a result or an error: a panic is
//! caught and reported with its input (saved under the temporary folder), and the peak memory
//! of the process (VmHWM) must stay under a stated bound.
//!
//! Environment: `PRETEXT_FUZZ_SCALE` multiplies the number of inputs (default 1),
//! `PRETEXT_FUZZ_BASE` changes the base seed (another campaign), `PRETEXT_FUZZ_TRACE=1` names
//! every input on stderr before it is tried (to find the input behind an abort).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use common::crc32;
use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use candle_core::Device;
use image::{DynamicImage, ImageFormat, Rgba, RgbaImage};
use pretext::config::{DataSource, MaskKind, TaskKind, TaskSettings, TrainConfig};
use pretext::data::folder;
use pretext::model::{Model, checkpoint, optim::AdamW};
use pretext::train::run_dir::{self, RunDir};

/// Inputs per reader at scale 1.
const IMAGE_INPUTS: usize = 4000;
const IMAGE_FILE_INPUTS: usize = 120;
const FOLDER_FILES: usize = 150;
const CACHE_INPUTS: usize = 400;
const CHECKPOINT_INPUTS: usize = 600;
const CONFIG_INPUTS: usize = 2000;
const METRICS_INPUTS: usize = 1500;
/// Mutated configs run through the `pretext eval` binary, besides the targeted ones.
const EVAL_FUZZED_CONFIGS: usize = 40;

/// Peak resident memory allowed for the whole test (one reader call at a time). The largest
/// image the limits let through holds at most `MAX_DECODE_BYTES` (512 MiB) of decoded pixels
/// and at most 16384² pixels, whose 8-bit RGB copy on the way to the working size is 768 MiB;
/// with the test's own ~100 MiB that leaves some 700 MiB for the decoders' temporaries.
const MAX_PEAK_BYTES: u64 = 2 << 30;

const DEFAULT_BASE_SEED: u64 = 0x5EED_F022_2024_0001;

// ---------------------------------------------------------------------------------------------
// Seeded generator

/// SplitMix64: small, fast, and every input gets its own stream from its seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// The seed of input `index` of reader `reader`.
fn input_seed(base: u64, reader: u64, index: usize) -> u64 {
    Rng::new(base ^ (reader << 48) ^ (index as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)).next_u64()
}

// ---------------------------------------------------------------------------------------------
// Generic byte mutations

const INTERESTING_BYTES: [u8; 8] = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x20, 0x0A];
const INTERESTING_INTS: [u64; 24] = [
    0,
    1,
    2,
    3,
    7,
    8,
    16,
    255,
    256,
    1024,
    4095,
    8192,
    16_383,
    16_384,
    16_385,
    32_767,
    32_768,
    65_535,
    65_536,
    0x00FF_FFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    u64::MAX,
];

/// A position in `0..=len` (`end` inclusive when `inclusive`), biased to the first `hot` bytes
/// half of the time (headers are where readers decide what to allocate).
fn position(rng: &mut Rng, len: usize, hot: usize, inclusive: bool) -> usize {
    let n = len + usize::from(inclusive);
    if hot > 0 && rng.chance(50) {
        rng.below(hot.min(n))
    } else {
        rng.below(n)
    }
}

fn write_int(bytes: &mut [u8], at: usize, width: usize, big_endian: bool, v: u64) {
    for k in 0..width {
        let shift = if big_endian {
            (width - 1 - k) * 8
        } else {
            k * 8
        };
        if let Some(b) = bytes.get_mut(at + k) {
            *b = (v >> shift) as u8;
        }
    }
}

fn read_int(bytes: &[u8], at: usize, width: usize, big_endian: bool) -> u64 {
    let mut v = 0u64;
    for k in 0..width {
        let b = u64::from(bytes.get(at + k).copied().unwrap_or(0));
        let shift = if big_endian {
            (width - 1 - k) * 8
        } else {
            k * 8
        };
        v |= b << shift;
    }
    v
}

/// One random byte-level mutation; returns its description.
fn mutate_once(
    rng: &mut Rng,
    data: &mut Vec<u8>,
    donors: &[(String, Vec<u8>)],
    hot: usize,
) -> String {
    let len = data.len();
    match rng.below(9) {
        0 => {
            let at = if rng.chance(30) {
                rng.below(len.min(64) + 1)
            } else {
                position(rng, len, hot, true)
            };
            data.truncate(at);
            format!("truncate@{at}")
        }
        1 | 2 => {
            if len == 0 {
                return "flip(empty)".into();
            }
            let n = rng.range(1, 8);
            for _ in 0..n {
                let at = position(rng, len, hot, false);
                data[at] ^= 1 << rng.below(8);
            }
            format!("flip{n}")
        }
        3 => {
            if len == 0 {
                return "overwrite(empty)".into();
            }
            let n = rng.range(1, 8);
            let at = position(rng, len, hot, false);
            let fill = rng.chance(50);
            for k in 0..n {
                let v = if fill {
                    *rng.pick(&INTERESTING_BYTES)
                } else {
                    rng.byte()
                };
                if let Some(b) = data.get_mut(at + k) {
                    *b = v;
                }
            }
            format!("overwrite{n}@{at}")
        }
        4 => {
            let at = position(rng, len, hot, true);
            let n = if rng.chance(80) {
                rng.range(1, 64)
            } else {
                rng.range(65, 4096)
            };
            let run: Vec<u8> = if rng.chance(50) {
                vec![*rng.pick(&INTERESTING_BYTES); n]
            } else {
                (0..n).map(|_| rng.byte()).collect()
            };
            data.splice(at..at, run);
            format!("insert{n}@{at}")
        }
        5 => {
            if len == 0 {
                return "delete(empty)".into();
            }
            let at = position(rng, len, hot, false);
            let n = rng.range(1, 64).min(len - at);
            data.drain(at..at + n);
            format!("delete{n}@{at}")
        }
        6 => {
            let (name, other) = rng.pick(donors);
            let a = position(rng, len, hot, true);
            let b = rng.below(other.len() + 1);
            data.truncate(a);
            data.extend_from_slice(&other[b..]);
            format!("splice[..{a}]+{name}[{b}..]")
        }
        7 => {
            if len == 0 {
                return "int(empty)".into();
            }
            let width = *rng.pick(&[1usize, 2, 4, 8]);
            let be = rng.chance(50);
            let at = position(rng, len, hot, false);
            let v = *rng.pick(&INTERESTING_INTS);
            write_int(data, at, width, be, v);
            format!(
                "int{}{}={v:#x}@{at}",
                width * 8,
                if be { "be" } else { "le" }
            )
        }
        _ => {
            if len == 0 {
                return "dup(empty)".into();
            }
            let s = rng.below(len);
            let n = rng.range(1, 256).min(len - s);
            let chunk = data[s..s + n].to_vec();
            let at = position(rng, len, hot, true);
            data.splice(at..at, chunk);
            format!("dup[{s}..+{n}]@{at}")
        }
    }
}

/// One to four stacked mutations.
fn mutate(
    rng: &mut Rng,
    data: &mut Vec<u8>,
    donors: &[(String, Vec<u8>)],
    hot: usize,
    log: &mut Vec<String>,
) {
    let n = match rng.below(100) {
        0..60 => 1,
        60..85 => 2,
        _ => rng.range(3, 4),
    };
    for _ in 0..n {
        log.push(mutate_once(rng, data, donors, hot));
    }
}

// ---------------------------------------------------------------------------------------------
// Image seeds and their header fields

/// A header field that an edit may set: `width` bytes at `at`.
#[derive(Clone, Debug)]
struct Field {
    name: String,
    at: usize,
    width: usize,
    big_endian: bool,
}

fn field(name: impl Into<String>, at: usize, width: usize, big_endian: bool) -> Field {
    Field {
        name: name.into(),
        at,
        width,
        big_endian,
    }
}

struct ImageSeed {
    name: String,
    bytes: Vec<u8>,
    fields: Vec<Field>,
    png: bool,
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    img.write_to(&mut c, format)
        .unwrap_or_else(|e| panic!("encoding {format:?} {:?}: {e}", img.color()));
    c.into_inner()
}

fn pattern(w: u32, h: u32, alpha: bool) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| {
        let a = if alpha {
            ((x * 255) / w.max(1)) as u8
        } else {
            255
        };
        Rgba([
            (x * 37 + y * 11) as u8,
            (y * 53) as u8,
            ((x ^ y) * 29) as u8,
            a,
        ])
    })
}

/// A big-endian TIFF holding one Orientation entry, as EXIF payloads carry it.
fn exif_tiff(orientation: u16) -> Vec<u8> {
    let mut t = b"MM\0*".to_vec();
    t.extend_from_slice(&8u32.to_be_bytes());
    t.extend_from_slice(&1u16.to_be_bytes());
    t.extend_from_slice(&0x0112u16.to_be_bytes());
    t.extend_from_slice(&3u16.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&orientation.to_be_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(&0u32.to_be_bytes());
    t
}

/// Inserts a chunk right after IHDR.
fn png_with_chunk(png: &[u8], kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let ihdr_end = 8 + 12 + 13;
    let mut out = png[..ihdr_end].to_vec();
    common::chunk(&mut out, kind, data);
    out.extend_from_slice(&png[ihdr_end..]);
    out
}

/// Recomputes every chunk CRC of a PNG as far as its chunk lengths hold, so that a mutation
/// inside a chunk reaches the decoder instead of the CRC check.
fn png_fix_crcs(b: &mut [u8]) {
    let mut i = 8;
    while i + 12 <= b.len() {
        let len = read_int(b, i, 4, true) as usize;
        let Some(end) = (i + 8).checked_add(len) else {
            return;
        };
        if end + 4 > b.len() {
            return;
        }
        let crc = crc32(&b[i + 4..end]);
        b[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        i = end + 4;
    }
}

fn png_fields(b: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    let mut i = 8;
    while i + 12 <= b.len() {
        let len = read_int(b, i, 4, true) as usize;
        let kind = String::from_utf8_lossy(&b[i + 4..i + 8]).into_owned();
        out.push(field(format!("png {kind} length"), i, 4, true));
        if kind == "IHDR" {
            out.push(field("png width", i + 8, 4, true));
            out.push(field("png height", i + 12, 4, true));
            out.push(field("png bit depth", i + 16, 1, true));
            out.push(field("png colour type", i + 17, 1, true));
            out.push(field("png interlace", i + 20, 1, true));
        }
        if kind == "PLTE" || kind == "eXIf" {
            out.push(field(format!("png {kind} byte"), i + 8, 1, true));
        }
        i += 12 + len;
    }
    out
}

fn jpeg_fields(b: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    let mut i = 2;
    while i + 4 <= b.len() && b[i] == 0xFF {
        let code = b[i + 1];
        let len = read_int(b, i + 2, 2, true) as usize;
        out.push(field(format!("jpeg {code:02X} length"), i + 2, 2, true));
        if matches!(code, 0xC0..=0xCF) && !matches!(code, 0xC4 | 0xC8 | 0xCC) {
            out.push(field("jpeg precision", i + 4, 1, true));
            out.push(field("jpeg height", i + 5, 2, true));
            out.push(field("jpeg width", i + 7, 2, true));
            out.push(field("jpeg components", i + 9, 1, true));
            let n = usize::from(b.get(i + 9).copied().unwrap_or(0));
            for c in 0..n {
                out.push(field(format!("jpeg sampling {c}"), i + 11 + 3 * c, 1, true));
                out.push(field(
                    format!("jpeg quant table {c}"),
                    i + 12 + 3 * c,
                    1,
                    true,
                ));
            }
        }
        if code == 0xC4 || code == 0xDB {
            out.push(field(format!("jpeg {code:02X} table id"), i + 4, 1, true));
        }
        if code == 0xDD {
            out.push(field("jpeg restart interval", i + 4, 2, true));
        }
        if code == 0xE1 {
            // EXIF: the orientation value sits at a fixed place in the segment we insert.
            out.push(field("jpeg exif byte order", i + 10, 2, true));
            out.push(field("jpeg exif ifd offset", i + 14, 4, false));
            out.push(field("jpeg exif entry count", i + 18, 2, false));
            out.push(field("jpeg exif orientation", i + 28, 2, false));
        }
        if code == 0xDA {
            out.push(field("jpeg scan components", i + 4, 1, true));
            break;
        }
        i += 2 + len;
    }
    out
}

fn gif_fields(b: &[u8]) -> Vec<Field> {
    let mut out = vec![
        field("gif screen width", 6, 2, false),
        field("gif screen height", 8, 2, false),
        field("gif flags", 10, 1, false),
    ];
    let flags = b.get(10).copied().unwrap_or(0);
    let mut i = 13;
    if flags & 0x80 != 0 {
        i += 3 << ((flags & 7) + 1);
    }
    let skip_blocks = |mut i: usize| {
        while let Some(&n) = b.get(i) {
            i += 1 + usize::from(n);
            if n == 0 {
                break;
            }
        }
        i
    };
    let mut frame = 0;
    while let Some(&kind) = b.get(i) {
        match kind {
            0x21 => {
                out.push(field(
                    format!("gif extension {frame} size"),
                    i + 2,
                    1,
                    false,
                ));
                i = skip_blocks(i + 2);
            }
            0x2C => {
                out.push(field(format!("gif frame {frame} left"), i + 1, 2, false));
                out.push(field(format!("gif frame {frame} top"), i + 3, 2, false));
                out.push(field(format!("gif frame {frame} width"), i + 5, 2, false));
                out.push(field(format!("gif frame {frame} height"), i + 7, 2, false));
                out.push(field(format!("gif frame {frame} flags"), i + 9, 1, false));
                let f = b.get(i + 9).copied().unwrap_or(0);
                i += 10;
                if f & 0x80 != 0 {
                    i += 3 << ((f & 7) + 1);
                }
                out.push(field(format!("gif frame {frame} lzw size"), i, 1, false));
                i = skip_blocks(i + 1);
                frame += 1;
            }
            _ => break,
        }
    }
    out
}

fn bmp_fields() -> Vec<Field> {
    [
        ("bmp file size", 2, 4),
        ("bmp data offset", 10, 4),
        ("bmp header size", 14, 4),
        ("bmp width", 18, 4),
        ("bmp height", 22, 4),
        ("bmp planes", 26, 2),
        ("bmp bits per pixel", 28, 2),
        ("bmp compression", 30, 4),
        ("bmp image size", 34, 4),
        ("bmp colours used", 46, 4),
        ("bmp red mask", 54, 4),
        ("bmp alpha mask", 66, 4),
    ]
    .into_iter()
    .map(|(n, at, w)| field(n, at, w, false))
    .collect()
}

fn tiff_fields(b: &[u8]) -> Vec<Field> {
    let be = b.starts_with(b"MM");
    let mut out = vec![field("tiff ifd offset", 4, 4, be)];
    let ifd = read_int(b, 4, 4, be) as usize;
    let n = read_int(b, ifd, 2, be) as usize;
    out.push(field("tiff entry count", ifd, 2, be));
    for k in 0..n.min(64) {
        let e = ifd + 2 + 12 * k;
        if e + 12 > b.len() {
            break;
        }
        let tag = read_int(b, e, 2, be);
        out.push(field(format!("tiff tag {tag} type"), e + 2, 2, be));
        out.push(field(format!("tiff tag {tag} count"), e + 4, 4, be));
        out.push(field(format!("tiff tag {tag} value"), e + 8, 4, be));
    }
    out
}

fn webp_fields(b: &[u8]) -> Vec<Field> {
    let mut out = vec![
        field("webp riff size", 4, 4, false),
        field("webp chunk size", 16, 4, false),
    ];
    match b.get(12..16) {
        Some(b"VP8L") => out.push(field("webp vp8l size bits", 21, 4, false)),
        Some(b"VP8 ") => {
            out.push(field("webp vp8 frame tag", 20, 3, false));
            out.push(field("webp vp8 width", 26, 2, false));
            out.push(field("webp vp8 height", 28, 2, false));
        }
        Some(b"VP8X") => {
            out.push(field("webp vp8x flags", 20, 1, false));
            out.push(field("webp canvas width", 24, 3, false));
            out.push(field("webp canvas height", 27, 3, false));
        }
        _ => {}
    }
    out
}

fn fields_of(b: &[u8]) -> Vec<Field> {
    if b.starts_with(b"\x89PNG") {
        png_fields(b)
    } else if b.starts_with(&[0xFF, 0xD8]) {
        jpeg_fields(b)
    } else if b.starts_with(b"GIF8") {
        gif_fields(b)
    } else if b.starts_with(b"BM") {
        bmp_fields()
    } else if b.starts_with(b"II*\0") || b.starts_with(b"MM\0*") {
        tiff_fields(b)
    } else if b.starts_with(b"RIFF") {
        webp_fields(b)
    } else {
        Vec::new()
    }
}

/// Two lossy (VP8) WebP files of 1×1 pixel; the `image` crate only encodes lossless WebP.
const LOSSY_WEBP_A: [u8; 72] = [
    0x52, 0x49, 0x46, 0x46, 0x40, 0x00, 0x00, 0x00, 0x57, 0x45, 0x42, 0x50, 0x56, 0x50, 0x38, 0x20,
    0x34, 0x00, 0x00, 0x00, 0xF0, 0x01, 0x00, 0x9D, 0x01, 0x2A, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00,
    0x1C, 0x25, 0xA0, 0x02, 0x74, 0xBA, 0x01, 0xF8, 0x00, 0x04, 0x4C, 0x00, 0x00, 0xFE, 0xF5, 0xB8,
    0x7F, 0xFE, 0x9A, 0x47, 0x8D, 0x23, 0xC6, 0x91, 0xF1, 0x70, 0xFF, 0xEE, 0x81, 0x3F, 0x74, 0x09,
    0xFB, 0xA0, 0x4F, 0xFD, 0xCD, 0xA0, 0x00, 0x00,
];
const LOSSY_WEBP_B: [u8; 44] = [
    0x52, 0x49, 0x46, 0x46, 0x24, 0x00, 0x00, 0x00, 0x57, 0x45, 0x42, 0x50, 0x56, 0x50, 0x38, 0x20,
    0x18, 0x00, 0x00, 0x00, 0x30, 0x01, 0x00, 0x9d, 0x01, 0x2a, 0x01, 0x00, 0x01, 0x00, 0x02, 0x00,
    0x34, 0x25, 0xa4, 0x00, 0x03, 0x70, 0x00, 0xfe, 0xfb, 0xfd, 0x50, 0x00,
];

fn animated_gif() -> Vec<u8> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut out);
        enc.set_repeat(Repeat::Infinite).unwrap();
        let delay = image::Delay::from_numer_denom_ms(80, 1);
        let f1 = image::Frame::from_parts(pattern(20, 14, false), 0, 0, delay);
        let f2 = image::Frame::from_parts(pattern(8, 6, true), 5, 4, delay);
        enc.encode_frames([f1, f2]).unwrap();
    }
    out
}

fn image_seeds() -> Vec<ImageSeed> {
    let rgba = DynamicImage::ImageRgba8(pattern(16, 20, true));
    let rgb = DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(pattern(24, 16, false)).to_rgb8());
    let big_rgb =
        DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(pattern(64, 48, false)).to_rgb8());
    let grey = DynamicImage::ImageLuma8(rgb.to_luma8());
    let grey_alpha = DynamicImage::ImageLumaA8(rgba.to_luma_alpha8());
    let rgb16 =
        DynamicImage::ImageRgb16(DynamicImage::ImageRgba8(pattern(10, 12, false)).to_rgb16());
    let rgba16 = DynamicImage::ImageRgba16(rgba.to_rgba16());
    let grey16 = DynamicImage::ImageLuma16(rgb.to_luma16());
    let palette: Vec<[u8; 3]> = (0..16u8).map(|i| [i * 16, 255 - i * 16, i * 7]).collect();
    let indices: Vec<u8> = (0..8 * 6).map(|i| (i * 5 % 16) as u8).collect();
    let png_rgb = encode(&rgb, ImageFormat::Png);
    let jpeg_rgb = encode(&rgb, ImageFormat::Jpeg);

    let mut raw: Vec<(&str, Vec<u8>)> = vec![
        ("png-rgb8", png_rgb.clone()),
        ("png-rgba8", encode(&rgba, ImageFormat::Png)),
        ("png-grey8", encode(&grey, ImageFormat::Png)),
        ("png-grey-alpha8", encode(&grey_alpha, ImageFormat::Png)),
        ("png-rgb16", encode(&rgb16, ImageFormat::Png)),
        ("png-rgba16", encode(&rgba16, ImageFormat::Png)),
        ("png-grey16", encode(&grey16, ImageFormat::Png)),
        ("png-palette", common::palette_png(8, 6, &palette, &indices)),
        ("png-exif", png_with_chunk(&png_rgb, b"eXIf", &exif_tiff(6))),
        ("png-lying-9000", common::lying_png(9000, 9000)),
        ("png-lying-20000", common::lying_png(20_000, 12)),
        ("jpeg-rgb", jpeg_rgb.clone()),
        ("jpeg-rgb-64x48", encode(&big_rgb, ImageFormat::Jpeg)),
        ("jpeg-grey", encode(&grey, ImageFormat::Jpeg)),
        ("jpeg-exif", common::with_exif_orientation(&jpeg_rgb, 6)),
        ("webp-lossless-rgb", encode(&rgb, ImageFormat::WebP)),
        ("webp-lossless-rgba", encode(&rgba, ImageFormat::WebP)),
        ("webp-lossy-a", LOSSY_WEBP_A.to_vec()),
        ("webp-lossy-b", LOSSY_WEBP_B.to_vec()),
        ("bmp-rgb", encode(&rgb, ImageFormat::Bmp)),
        ("bmp-rgba", encode(&rgba, ImageFormat::Bmp)),
        ("bmp-grey", encode(&grey, ImageFormat::Bmp)),
        ("gif-palette", encode(&rgba, ImageFormat::Gif)),
        ("gif-animated", animated_gif()),
        ("tiff-rgb8", encode(&rgb, ImageFormat::Tiff)),
        ("tiff-rgba8", encode(&rgba, ImageFormat::Tiff)),
        ("tiff-grey8", encode(&grey, ImageFormat::Tiff)),
        ("tiff-grey16", encode(&grey16, ImageFormat::Tiff)),
        ("tiff-rgb16", encode(&rgb16, ImageFormat::Tiff)),
    ];
    // Every seed but the deliberately lying ones must decode: mutations start from valid files.
    raw.retain(|(name, bytes)| {
        let ok = folder::decode_bytes(bytes, 32).is_ok();
        if name.contains("lying") {
            assert!(!ok, "{name} should be refused");
            return true;
        }
        if name.starts_with("webp-lossy") {
            if !ok {
                println!("note: seed {name} does not decode; left out");
            }
            return ok;
        }
        assert!(ok, "seed {name} does not decode");
        true
    });
    raw.into_iter()
        .map(|(name, bytes)| ImageSeed {
            name: name.to_string(),
            fields: fields_of(&bytes),
            png: bytes.starts_with(b"\x89PNG"),
            bytes,
        })
        .collect()
}

/// Sets one header field to a value chosen to hurt: zero, one, limits ± 1, the largest values
/// of its width, or the original value nudged.
fn edit_field(rng: &mut Rng, bytes: &mut [u8], fields: &[Field]) -> String {
    let f = rng.pick(fields);
    let old = read_int(bytes, f.at, f.width, f.big_endian);
    let mask = if f.width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * f.width)) - 1
    };
    let v = match rng.below(6) {
        0 => old.wrapping_add(1),
        1 => old.wrapping_sub(1),
        2 => old.wrapping_mul(2).wrapping_add(rng.below(3) as u64),
        3 => rng.next_u64(),
        _ => *rng.pick(&INTERESTING_INTS),
    } & mask;
    write_int(bytes, f.at, f.width, f.big_endian, v);
    format!("{}={v}(was {old})", f.name)
}

/// One mutated image from a seed.
fn mutated_image(
    rng: &mut Rng,
    seed: &ImageSeed,
    donors: &[(String, Vec<u8>)],
    log: &mut Vec<String>,
) -> Vec<u8> {
    let mut bytes = seed.bytes.clone();
    let hot = 128;
    match rng.below(100) {
        0..30 if !seed.fields.is_empty() => {
            let n = if rng.chance(70) { 1 } else { rng.range(2, 3) };
            for _ in 0..n {
                log.push(edit_field(rng, &mut bytes, &seed.fields));
            }
            if rng.chance(25) {
                log.push(mutate_once(rng, &mut bytes, donors, hot));
            }
        }
        _ => mutate(rng, &mut bytes, donors, hot, log),
    }
    if seed.png && rng.chance(60) {
        png_fix_crcs(&mut bytes);
        log.push("crc-fixed".into());
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// Checkpoints (safetensors)

/// One tensor of a safetensors file, as the header describes it, with its bytes.
#[derive(Clone)]
struct StTensor {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    data: Vec<u8>,
}

struct StFile {
    tensors: Vec<StTensor>,
    metadata: Option<serde_json::Value>,
}

fn st_split(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, &[u8]) {
    let n = read_int(bytes, 0, 8, false) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let serde_json::Value::Object(map) = header else {
        panic!("safetensors header is not an object")
    };
    (map, &bytes[8 + n..])
}

fn st_parse(bytes: &[u8]) -> StFile {
    let (map, data) = st_split(bytes);
    let mut tensors = Vec::new();
    let mut metadata = None;
    for (name, v) in map {
        if name == "__metadata__" {
            metadata = Some(v);
            continue;
        }
        let offsets: Vec<usize> = v["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        tensors.push(StTensor {
            name,
            dtype: v["dtype"].as_str().unwrap().to_string(),
            shape: v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect(),
            data: data[offsets[0]..offsets[1]].to_vec(),
        });
    }
    StFile { tensors, metadata }
}

/// A header (as JSON text) and data, with the 8-byte length in front and the header padded
/// with spaces to a multiple of 8, as safetensors writes it.
fn st_assemble(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Writes the tensors back with consecutive offsets (a file whose header agrees with its data).
fn st_build(f: &StFile) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    let mut data = Vec::new();
    for t in &f.tensors {
        let start = data.len();
        data.extend_from_slice(&t.data);
        map.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    if let Some(m) = &f.metadata {
        map.insert("__metadata__".into(), m.clone());
    }
    st_assemble(&serde_json::Value::Object(map).to_string(), &data)
}

const DTYPES: [&str; 22] = [
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "X42", "f32",
];

fn dtype_bits(d: &str) -> Option<u64> {
    Some(match d {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// Resizes a tensor's bytes to what its dtype and shape need, when that is small enough to
/// build; returns whether the header now agrees with the data.
fn st_fit(rng: &mut Rng, t: &mut StTensor) -> bool {
    let Some(bits) = dtype_bits(&t.dtype) else {
        return false;
    };
    let Some(n) = t
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(bits))
    else {
        return false;
    };
    let bytes = n / 8;
    if bytes > 32 << 20 {
        return false;
    }
    let bytes = bytes as usize;
    if bytes <= t.data.len() {
        t.data.truncate(bytes);
    } else {
        let extra: Vec<u8> = (t.data.len()..bytes).map(|_| rng.byte()).collect();
        t.data.extend_from_slice(&extra);
    }
    n % 8 == 0
}

/// A tensor index, biased to the ones the loader treats specially (batch-norm counters and
/// running statistics, optimiser moments) and to the first convolution.
fn pick_tensor(rng: &mut Rng, f: &StFile) -> usize {
    let special: Vec<usize> = f
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            t.name.ends_with("num_batches_tracked")
                || t.name.contains("running")
                || t.name.starts_with("optimizer.")
                || t.name.starts_with("heads.")
        })
        .map(|(i, _)| i)
        .collect();
    if !special.is_empty() && rng.chance(40) {
        *rng.pick(&special)
    } else {
        rng.below(f.tensors.len())
    }
}

const HUGE_DIMS: [u64; 10] = [
    0,
    1,
    3,
    1 << 20,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 62,
    u64::MAX / 2,
    u64::MAX,
];

/// Edits the header of a safetensors file: shapes, dtypes, offsets, names, metadata. Edits
/// that keep header and data consistent reach the loader; the others reach the validation.
fn mutated_checkpoint(
    rng: &mut Rng,
    seed: &[u8],
    donors: &[(String, Vec<u8>)],
    log: &mut Vec<String>,
) -> Vec<u8> {
    let header_len = read_int(seed, 0, 8, false) as usize;
    let hot = 8 + header_len;
    let mut bytes = match rng.below(100) {
        // The 8-byte header length.
        0..10 => {
            let mut b = seed.to_vec();
            let n = header_len as u64;
            let len = b.len() as u64;
            let v = *rng.pick(&[
                0,
                1,
                2,
                7,
                n - 1,
                n + 1,
                n + 8,
                len,
                len - 8,
                len + 1,
                99_999_999,
                100_000_000,
                100_000_001,
                u64::from(u32::MAX),
                1 << 63,
                u64::MAX - 7,
                u64::MAX,
            ]);
            write_int(&mut b, 0, 8, false, v);
            log.push(format!("header-length={v}(was {n})"));
            b
        }
        // Structured edits that keep the data consistent with the header.
        10..45 => {
            let mut f = st_parse(seed);
            let k = rng.range(1, 2);
            for _ in 0..k {
                if f.tensors.is_empty() {
                    break;
                }
                let i = pick_tensor(rng, &f);
                match rng.below(7) {
                    0 | 1 => {
                        let d = *rng.pick(&DTYPES);
                        let t = &mut f.tensors[i];
                        t.dtype = d.to_string();
                        let fits = st_fit(rng, t);
                        log.push(format!(
                            "dtype {}={d}{}",
                            t.name,
                            if fits { "" } else { "(misfit)" }
                        ));
                    }
                    2 | 3 => {
                        let t = &mut f.tensors[i];
                        let old = t.shape.clone();
                        t.shape = match rng.below(8) {
                            0 => Vec::new(),
                            1 => vec![0],
                            2 => {
                                let mut s = old.clone();
                                s.reverse();
                                s
                            }
                            3 => {
                                let mut s = old.clone();
                                s.push(1);
                                s
                            }
                            4 => old
                                .iter()
                                .copied()
                                .take(old.len().saturating_sub(1))
                                .collect(),
                            5 => {
                                let mut s = old.clone();
                                if let Some(x) = s.first_mut() {
                                    *x *= 2;
                                }
                                s
                            }
                            6 => vec![*rng.pick(&HUGE_DIMS), *rng.pick(&HUGE_DIMS)],
                            _ => vec![1; rng.range(5, 40)],
                        };
                        let fits = st_fit(rng, t);
                        log.push(format!(
                            "shape {}={:?}(was {old:?}){}",
                            t.name,
                            t.shape,
                            if fits { "" } else { "(misfit)" }
                        ));
                    }
                    4 => {
                        let t = f.tensors.remove(i);
                        log.push(format!("drop {}", t.name));
                    }
                    5 => {
                        let j = rng.below(f.tensors.len());
                        let (a, b) = (f.tensors[i].name.clone(), f.tensors[j].name.clone());
                        f.tensors[i].name = b.clone();
                        f.tensors[j].name = a.clone();
                        log.push(format!("swap names {a}<->{b}"));
                    }
                    _ => {
                        let mut t = f.tensors[i].clone();
                        let new_name = match rng.below(4) {
                            0 => format!("optimizer.m.{}", t.name),
                            1 => format!("{}.extra", t.name),
                            2 => String::new(),
                            _ => "\u{0}\u{FFFF}é".to_string(),
                        };
                        log.push(format!("duplicate {} as {new_name:?}", t.name));
                        t.name = new_name;
                        f.tensors.push(t);
                    }
                }
            }
            if rng.chance(30) {
                let m: serde_json::Value = match rng.below(6) {
                    0 => serde_json::Value::Null,
                    1 => {
                        serde_json::json!({"step": "-1", "epoch": "x", "batch": "18446744073709551616", "optimizer_t": "NaN"})
                    }
                    2 => serde_json::json!({"step": 5}),
                    3 => serde_json::json!(["step", "1"]),
                    4 => {
                        serde_json::json!({"step": "18446744073709551615", "epoch": "18446744073709551615", "batch": "18446744073709551615", "optimizer_t": "18446744073709551615", "lr": "inf"})
                    }
                    _ => serde_json::Value::String("x".repeat(rng.range(0, 100_000))),
                };
                log.push(format!(
                    "metadata={}",
                    m.to_string().chars().take(60).collect::<String>()
                ));
                f.metadata = if m.is_null() && rng.chance(50) {
                    None
                } else {
                    Some(m)
                };
            }
            st_build(&f)
        }
        // Raw header edits that leave the data as it was.
        45..60 => {
            let (mut map, data) = st_split(seed);
            let names: Vec<String> = map
                .keys()
                .filter(|k| *k != "__metadata__")
                .cloned()
                .collect();
            let name = rng.pick(&names).clone();
            let entry = map.get_mut(&name).unwrap();
            let what = match rng.below(6) {
                0 => {
                    let s: Vec<u64> = (0..rng.range(1, 4))
                        .map(|_| *rng.pick(&HUGE_DIMS))
                        .collect();
                    entry["shape"] = serde_json::json!(s);
                    format!("shape={s:?}")
                }
                1 => {
                    let v = rng
                        .pick(&[
                            serde_json::json!([-1]),
                            serde_json::json!([1.5]),
                            serde_json::json!("3"),
                            serde_json::json!(null),
                            serde_json::json!([[2]]),
                            serde_json::json!([18_446_744_073_709_551_615u64, 2]),
                        ])
                        .clone();
                    let key = *rng.pick(&["shape", "dtype", "data_offsets"]);
                    let s = v.to_string();
                    entry[key] = v;
                    format!("{key}={s}")
                }
                2 => {
                    let d = *rng.pick(&DTYPES);
                    entry["dtype"] = serde_json::json!(d);
                    format!("dtype={d}(data kept)")
                }
                3 => {
                    let o = &entry["data_offsets"];
                    let (s, e) = (o[0].as_u64().unwrap_or(0), o[1].as_u64().unwrap_or(0));
                    let v = *rng.pick(&[
                        [e, s],
                        [s, e + 1],
                        [s + 1, e],
                        [0, 0],
                        [s, u64::MAX],
                        [u64::MAX, u64::MAX],
                        [s, 1 << 40],
                        [s, data.len() as u64],
                    ]);
                    entry["data_offsets"] = serde_json::json!(v);
                    format!("offsets={v:?}(was [{s}, {e}])")
                }
                4 => {
                    let obj = entry.as_object_mut().unwrap();
                    let key = rng.pick(&["shape", "dtype", "data_offsets"]).to_string();
                    obj.remove(&key);
                    format!("remove {key}")
                }
                _ => {
                    entry["extra"] = serde_json::json!({"nested": [1, 2, 3]});
                    "extra field".to_string()
                }
            };
            log.push(format!("raw {name}: {what}"));
            let header = serde_json::Value::Object(map).to_string();
            st_assemble(&header, data)
        }
        // Byte-level mutations, mostly in the header.
        _ => {
            let mut b = seed.to_vec();
            mutate(rng, &mut b, donors, hot, log);
            b
        }
    };
    if rng.chance(10) {
        log.push(mutate_once(rng, &mut bytes, donors, hot));
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// config.json

fn config_seeds() -> Vec<(String, Vec<u8>)> {
    let default = TrainConfig::default();
    let folder = TrainConfig {
        data: DataSource::Folder(PathBuf::from("/data/photos with spaces/ünïcode")),
        tasks: vec![
            TaskKind::Rotation,
            TaskKind::Contrastive,
            TaskKind::Inpainting,
        ],
        task_weights: vec![1.0, 0.5, 2.0],
        epochs: 30,
        batch: 64,
        size: 64,
        lr: 3e-4,
        init_from: Some(PathBuf::from("runs/old/checkpoints/epoch-0010.safetensors")),
        knn_every: 0,
        settings: TaskSettings {
            mask: MaskKind::Blocks,
            temperature: 0.2,
            ..TaskSettings::default()
        },
        ..TrainConfig::default()
    };
    let glyphs = TrainConfig {
        data: DataSource::Glyphs { count: 512 },
        tasks: vec![TaskKind::Colorization, TaskKind::Patch],
        task_weights: vec![1.0, 1.0],
        device: pretext::config::DeviceKind::Cuda,
        ..TrainConfig::default()
    };
    let mut out = Vec::new();
    for (name, c) in [("default", default), ("folder", folder), ("glyphs", glyphs)] {
        c.validate().unwrap();
        out.push((
            format!("config-{name}-pretty"),
            serde_json::to_string_pretty(&c).unwrap().into_bytes(),
        ));
        out.push((
            format!("config-{name}-compact"),
            serde_json::to_string(&c).unwrap().into_bytes(),
        ));
    }
    out
}

/// JSON texts that stress a field: wrong types, limits, overflow, non-numbers, long strings,
/// deep nesting.
fn interesting_json(rng: &mut Rng) -> String {
    const TEXTS: [&str; 62] = [
        "null",
        "true",
        "false",
        "0",
        "-0",
        "1",
        "-1",
        "2",
        "3",
        "4",
        "7",
        "8",
        "16",
        "17",
        "256",
        "257",
        "1000000000",
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "0.5",
        "1.5",
        "-1.5",
        "1e-320",
        "1e308",
        "1.8e308",
        "1e999",
        "-1e999",
        "NaN",
        "Infinity",
        "\"\"",
        "\"builtin\"",
        "\"builtin:0\"",
        "\"builtin:7\"",
        "\"builtin:8\"",
        "\"builtin:18446744073709551615\"",
        "\"builtin:99999999999999999999999\"",
        "\"glyphs:8\"",
        "\"glyphs:1000000000\"",
        "\"glyphs:-1\"",
        "\"/nonexistent/folder\"",
        "\"rotation\"",
        "\"ROTATION\"",
        "\"cpu\"",
        "\"cuda\"",
        "\"tpu\"",
        "\"blocks\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "[]",
        "{}",
        "[1]",
        "[\"rotation\",\"rotation\"]",
        "[\"rotation\",\"patch\",\"contrastive\",\"inpainting\",\"colorization\"]",
        "[1e308,1e308,1e308]",
        "[-1,-1]",
        "[0.0,NaN]",
        "{\"temperature\":0,\"mask_size\":1e9,\"augment\":{\"hue\":-1}}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    ];
    match rng.below(100) {
        0..90 => rng.pick(&TEXTS).to_string(),
        90..93 => format!("\"{}\"", "a".repeat(rng.range(1_000, 200_000))),
        93..96 => {
            let n = rng.range(100, 20_000);
            format!("[{}]", vec!["\"rotation\""; n].join(","))
        }
        _ => {
            let depth = rng.range(100, 50_000);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

fn json_paths(v: &serde_json::Value, prefix: &mut Vec<usize>, all: &mut Vec<Vec<usize>>) {
    match v {
        serde_json::Value::Object(m) => {
            for (i, (_, x)) in m.iter().enumerate() {
                prefix.push(i);
                all.push(prefix.clone());
                json_paths(x, prefix, all);
                prefix.pop();
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                prefix.push(i);
                all.push(prefix.clone());
                json_paths(x, prefix, all);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// The parent container of the value at `path` and the last step to it.
fn json_parent<'a>(
    v: &'a mut serde_json::Value,
    path: &[usize],
) -> (&'a mut serde_json::Value, Seg) {
    let mut cur = v;
    for &i in &path[..path.len() - 1] {
        cur = match cur {
            serde_json::Value::Object(m) => m.values_mut().nth(i).unwrap(),
            serde_json::Value::Array(a) => &mut a[i],
            _ => unreachable!(),
        };
    }
    let last = path[path.len() - 1];
    let seg = match &*cur {
        serde_json::Value::Object(m) => Seg::Key(m.keys().nth(last).unwrap().clone()),
        _ => Seg::Index(last),
    };
    (cur, seg)
}

const PLACEHOLDER: &str = "\u{1}fuzz-placeholder\u{1}";

/// Structured edits of a JSON document: a value replaced by a stressing text, a key removed,
/// an unknown key added, a key duplicated.
fn mutated_json(rng: &mut Rng, seed: &[u8], log: &mut Vec<String>) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(seed).unwrap();
    let mut replacement = None;
    let edits = if rng.chance(75) { 1 } else { rng.range(2, 4) };
    for _ in 0..edits {
        let mut all = Vec::new();
        json_paths(&v, &mut Vec::new(), &mut all);
        if all.is_empty() {
            break;
        }
        let path = rng.pick(&all).clone();
        let (parent, seg) = json_parent(&mut v, &path);
        let name = match &seg {
            Seg::Key(k) => k.clone(),
            Seg::Index(i) => format!("[{i}]"),
        };
        match rng.below(10) {
            0 => {
                match (parent, seg) {
                    (serde_json::Value::Object(m), Seg::Key(k)) => {
                        m.remove(&k);
                    }
                    (serde_json::Value::Array(a), Seg::Index(i)) => {
                        a.remove(i);
                    }
                    _ => {}
                }
                log.push(format!("remove {name}"));
            }
            1 => {
                if let serde_json::Value::Object(m) = parent {
                    m.insert("unknown_field".into(), serde_json::json!([1, "x"]));
                }
                log.push(format!("unknown key beside {name}"));
            }
            _ if replacement.is_none() => {
                let text = interesting_json(rng);
                log.push(format!(
                    "{name}={}",
                    text.chars().take(40).collect::<String>()
                ));
                replacement = Some(text);
                let slot = match (parent, seg) {
                    (serde_json::Value::Object(m), Seg::Key(k)) => m.get_mut(&k).unwrap(),
                    (serde_json::Value::Array(a), Seg::Index(i)) => &mut a[i],
                    _ => unreachable!(),
                };
                *slot = serde_json::Value::String(PLACEHOLDER.into());
            }
            _ => {
                let slot = match (parent, seg) {
                    (serde_json::Value::Object(m), Seg::Key(k)) => m.get_mut(&k).unwrap(),
                    (serde_json::Value::Array(a), Seg::Index(i)) => &mut a[i],
                    _ => unreachable!(),
                };
                let text = match &*slot {
                    serde_json::Value::Number(n) => serde_json::Value::String(n.to_string()),
                    serde_json::Value::String(s) => serde_json::Value::String(format!("{s}{s}")),
                    other => serde_json::Value::Array(vec![other.clone(), other.clone()]),
                };
                log.push(format!("{name} retyped/doubled"));
                *slot = text;
            }
        }
    }
    let mut text = if rng.chance(50) {
        serde_json::to_string_pretty(&v).unwrap()
    } else {
        serde_json::to_string(&v).unwrap()
    };
    if let Some(r) = replacement {
        let quoted = serde_json::to_string(PLACEHOLDER).unwrap();
        text = text.replace(&quoted, &r);
    }
    if rng.chance(10) {
        // A duplicated key: serde refuses it for structs.
        if let Some(i) = text.find("\"epochs\"") {
            text.insert_str(i, "\"epochs\": 3, ");
            log.push("duplicate epochs".into());
        }
    }
    text.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// metrics.csv

/// One CSV row with the given columns, from (column, value) pairs; other columns stay empty.
fn csv_row(columns: &[&str], values: &[(&str, String)]) -> String {
    let fields: Vec<String> = columns
        .iter()
        .map(|c| {
            values
                .iter()
                .find(|(k, _)| k == c)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    fields.join(",") + "\n"
}

/// metrics.csv files as runs write them (the columns of [`run_dir::METRICS_HEADER`]), one
/// cut short by a crash, and one of an older version without the last two columns.
fn metrics_seeds() -> Vec<(String, Vec<u8>)> {
    let legacy_header = "step,epoch,task,loss,proxy_metric,proxy_value,lr,images_per_s,wall_s";
    let task_row = |columns: &[&str], step: u64, epoch: u64, task: &str, metric: &str, v: f64| {
        csv_row(
            columns,
            &[
                ("step", step.to_string()),
                ("epoch", epoch.to_string()),
                ("task", task.to_string()),
                ("loss", (2.0 / (1.0 + step as f64)).to_string()),
                ("proxy_metric", metric.to_string()),
                ("proxy_value", v.to_string()),
                ("lr", (1e-3 * (1.0 - step as f64 / 100.0)).to_string()),
                ("images_per_s", (812.5 + step as f64).to_string()),
                ("wall_s", (0.25 * step as f64).to_string()),
                ("baseline", "0.25".to_string()),
                ("step_loss", (2.5 / (1.0 + step as f64)).to_string()),
            ],
        )
    };
    let monitor_row = |columns: &[&str], step: u64, task: &str, name: &str, v: f64| {
        csv_row(
            columns,
            &[
                ("step", step.to_string()),
                ("epoch", (step / 8).to_string()),
                ("task", task.to_string()),
                ("proxy_metric", name.to_string()),
                ("proxy_value", v.to_string()),
                ("wall_s", (0.25 * step as f64).to_string()),
            ],
        )
    };
    let columns: Vec<&str> = run_dir::METRICS_HEADER.split(',').collect();
    let header = format!("{}\n", run_dir::METRICS_HEADER);
    let mut single = header.clone();
    for s in 1..=40 {
        single += &task_row(
            &columns,
            s,
            s / 10,
            "rotation",
            "rotation_accuracy",
            0.25 + s as f64 / 100.0,
        );
    }
    let mut multi = header.clone();
    for s in 1..=30 {
        multi += &task_row(&columns, s, s / 8, "rotation", "rotation_accuracy", 0.3);
        multi += &task_row(&columns, s, s / 8, "contrastive", "top-1_accuracy", 0.1);
        if s % 10 == 0 {
            for stage in ["l1", "l2", "l3", "l4", "raw_pixels"] {
                multi += &monitor_row(&columns, s, "knn", &format!("knn_accuracy_{stage}"), 0.4125);
            }
            for g in ["std_of_l2_normalized", "rankme", "uniformity", "alignment"] {
                multi += &monitor_row(&columns, s, "gauges", g, 0.75);
            }
        }
    }
    let mut crashed = header.clone();
    for s in 1..=25 {
        crashed += &task_row(
            &columns,
            s,
            0,
            "inpainting",
            "PSNR_dB",
            18.0 + s as f64 / 10.0,
        );
    }
    crashed += "26,0,inpainting,0.1234";
    let legacy_columns: Vec<&str> = legacy_header.split(',').collect();
    let mut legacy = format!("{legacy_header}\n");
    for s in 1..=20 {
        legacy += &task_row(
            &legacy_columns,
            s,
            s / 10,
            "rotation",
            "rotation_accuracy",
            0.5,
        );
    }
    vec![
        ("metrics-rotation".into(), single.into_bytes()),
        ("metrics-multi".into(), multi.into_bytes()),
        ("metrics-crashed".into(), crashed.into_bytes()),
        ("metrics-header-only".into(), header.into_bytes()),
        ("metrics-legacy-9-columns".into(), legacy.into_bytes()),
    ]
}

/// Line- and field-level edits of a CSV file.
fn mutated_csv(rng: &mut Rng, seed: &[u8], log: &mut Vec<String>) -> Vec<u8> {
    let text = String::from_utf8_lossy(seed).into_owned();
    let mut lines: Vec<Vec<u8>> = text.split('\n').map(|l| l.as_bytes().to_vec()).collect();
    const FIELDS: [&str; 22] = [
        "",
        "-1",
        "0",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999",
        "NaN",
        "inf",
        "-inf",
        "1e999",
        "0x10",
        "１２",
        "\u{feff}7",
        " 7",
        "7 ",
        "😀",
        "a,b",
        "\"quoted,comma\"",
        "knn",
        "gauges",
        "PSNR",
        "\r",
    ];
    let edits = if rng.chance(70) { 1 } else { rng.range(2, 5) };
    for _ in 0..edits {
        let n = lines.len();
        let i = rng.below(n);
        match rng.below(10) {
            0 => {
                let l = lines[i].clone();
                lines.insert(i, l);
                log.push(format!("dup line {i}"));
            }
            1 => {
                if n > 1 {
                    lines.remove(i);
                }
                log.push(format!("drop line {i}"));
            }
            2 => {
                let j = rng.below(n);
                lines.swap(i, j);
                log.push(format!("swap lines {i},{j}"));
            }
            3..=5 => {
                let line = String::from_utf8_lossy(&lines[i]).into_owned();
                let mut f: Vec<String> = line.split(',').map(str::to_string).collect();
                let k = rng.below(f.len());
                let v = if rng.chance(10) {
                    "9".repeat(rng.range(100, 100_000))
                } else {
                    rng.pick(&FIELDS).to_string()
                };
                log.push(format!(
                    "line {i} field {k}={}",
                    v.chars().take(20).collect::<String>()
                ));
                f[k] = v;
                lines[i] = f.join(",").into_bytes();
            }
            6 => {
                let at = rng.below(lines[i].len() + 1);
                let extra = if rng.chance(50) {
                    b",".to_vec()
                } else {
                    b",,,,,,,,,,".to_vec()
                };
                lines[i].splice(at..at, extra);
                log.push(format!("commas in line {i}"));
            }
            7 => {
                let at = rng.below(lines[i].len() + 1);
                const BAD: [&[u8]; 6] =
                    [b"\xFF", b"\xC3", b"\xE2\x82", b"\0", b"\r", b"\xEF\xBB\xBF"];
                let bad = *rng.pick(&BAD);
                lines[i].splice(at..at, bad.iter().copied());
                log.push(format!("bytes {bad:?} in line {i}"));
            }
            8 => {
                for l in &mut lines {
                    l.push(b'\r');
                }
                log.push("CRLF".into());
            }
            _ => {
                let k = rng.range(1, 1000);
                for _ in 0..k {
                    lines.insert(i, Vec::new());
                }
                log.push(format!("{k} empty lines at {i}"));
            }
        }
    }
    let mut out = lines.join(&b'\n');
    if rng.chance(15) {
        let cut = rng.below(out.len() + 1);
        out.truncate(cut);
        log.push(format!("truncate@{cut}"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Small files that decode to the largest images the limits allow

/// An LSB-first bit writer, as deflate packs its bits.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, count: u32) {
        self.acc |= value << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, which deflate writes from its most significant bit.
    fn code(&mut self, code: u32, len: u32) {
        let rev = (0..len).fold(0u64, |r, i| {
            r | (u64::from((code >> i) & 1) << (len - 1 - i))
        });
        self.put(rev, len);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A zlib stream of `n` zero bytes: one fixed-Huffman block, a literal zero and then matches of
/// 258 bytes at distance 1 (13 bits each), so 512 MiB take about 3 MiB.
fn zlib_zeros(n: u64) -> Vec<u8> {
    let mut b = Bits::default();
    b.put(1, 1); // last block
    b.put(1, 2); // fixed Huffman codes
    let mut left = n;
    while left > 0 && (left == n || left < 258) {
        b.code(0x30, 8); // literal 0
        left -= 1;
    }
    while left >= 258 {
        b.code(0xC5, 8); // length 258
        b.code(0, 5); // distance 1
        left -= 258;
        while left > 0 && left < 258 {
            b.code(0x30, 8);
            left -= 1;
        }
    }
    b.code(0, 7); // end of block
    let mut out = vec![0x78, 0x01];
    out.extend(b.finish());
    out.extend_from_slice(&((((n % 65_521) << 16) | 1) as u32).to_be_bytes());
    out
}

/// A valid PNG of `w × h` zero pixels (`bits` per channel, `channels` channels).
fn zero_png(w: u32, h: u32, bits: u8, color_type: u8) -> Vec<u8> {
    let channels: u64 = match color_type {
        0 => 1,
        2 => 3,
        4 => 2,
        6 => 4,
        _ => 1,
    };
    let row = 1 + (u64::from(w) * channels * u64::from(bits)).div_ceil(8);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[bits, color_type, 0, 0, 0]);
    common::chunk(&mut out, b"IHDR", &ihdr);
    common::chunk(&mut out, b"IDAT", &zlib_zeros(row * u64::from(h)));
    common::chunk(&mut out, b"IEND", &[]);
    out
}

/// A little-endian TIFF of `w × h` zero 8-bit grey pixels in one deflate strip.
fn zero_tiff_grey(w: u32, h: u32) -> Vec<u8> {
    let data = zlib_zeros(u64::from(w) * u64::from(h));
    let entries: [(u16, u16, u32); 10] = [
        (256, 4, w),
        (257, 4, h),
        (258, 3, 8),
        (259, 3, 8),
        (262, 3, 1),
        (273, 4, 0), // strip offset, set below
        (277, 3, 1),
        (278, 4, h),
        (279, 4, data.len() as u32),
        (284, 3, 1),
    ];
    let data_at = (8 + 2 + 12 * entries.len() + 4) as u32;
    let mut out = b"II*\0".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        let value = if tag == 273 { data_at } else { value };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        if kind == 3 {
            out.extend_from_slice(&(value as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
        } else {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&data);
    out
}

/// An 8-bit RLE BMP of `w × h` whose data is only the end-of-bitmap code.
fn rle_bmp(w: i32, h: i32) -> Vec<u8> {
    let data = [0x00u8, 0x01];
    let palette = [0u8, 0, 0, 0, 255, 255, 255, 0];
    let offset = 14 + 40 + palette.len() as u32;
    let mut out = b"BM".to_vec();
    out.extend_from_slice(&(offset + data.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8u16.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // BI_RLE8
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&palette);
    out.extend_from_slice(&data);
    out
}

/// A GIF whose logical screen is `w × h` with a single 1×1 frame in it.
fn big_canvas_gif(w: u16, h: u16) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    out.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
    out.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00, 0x3B]);
    out
}

/// A JPEG whose frame header claims `w × h` but whose scan stops after a few bytes (decoded as
/// a partial image).
fn truncated_huge_jpeg(grey: bool, w: u16, h: u16) -> Vec<u8> {
    let img = DynamicImage::ImageRgba8(pattern(16, 16, false));
    let img = if grey {
        DynamicImage::ImageLuma8(img.to_luma8())
    } else {
        DynamicImage::ImageRgb8(img.to_rgb8())
    };
    let mut b = encode(&img, ImageFormat::Jpeg);
    let mut i = 2;
    while i + 4 <= b.len() {
        let code = b[i + 1];
        let len = read_int(&b, i + 2, 2, true) as usize;
        if code == 0xC0 {
            write_int(&mut b, i + 5, 2, true, u64::from(h));
            write_int(&mut b, i + 7, 2, true, u64::from(w));
        }
        if code == 0xDA {
            b.truncate(i + 2 + len + 16);
            break;
        }
        i += 2 + len;
    }
    b
}

/// Small files (at most a few MiB) that decode to the largest images the limits let through,
/// one per decoder, and one just over the limit. The first is the worst case for memory:
/// 2 bytes a pixel decoded at the largest side, then turned into RGBA and RGB on the way to
/// the working size. (Square 16384-pixel images take seconds each to resize, so only that one
/// is square.)
fn bombs() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "png grey+alpha 8-bit 16384x16384 (512 MiB)".into(),
            zero_png(16_384, 16_384, 8, 4),
        ),
        (
            "png rgba 16-bit 8192x8192 (512 MiB)".into(),
            zero_png(8192, 8192, 16, 6),
        ),
        (
            "png rgba 16-bit 8192x8193 (over the limit)".into(),
            zero_png(8192, 8193, 16, 6),
        ),
        (
            "png rgb 8-bit 16384x10922 (512 MiB)".into(),
            zero_png(16_384, 10_922, 8, 2),
        ),
        (
            "tiff grey 16384x8192 deflate (128 MiB)".into(),
            zero_tiff_grey(16_384, 8192),
        ),
        (
            "bmp rle8 16384x10922, end-of-bitmap only".into(),
            rle_bmp(16_384, 10_922),
        ),
        (
            "gif 16384x8192 canvas, 1x1 frame".into(),
            big_canvas_gif(16_384, 8192),
        ),
        (
            "jpeg rgb 16384x10922, scan cut short".into(),
            truncated_huge_jpeg(false, 16_384, 10_922),
        ),
        (
            "jpeg grey 16384x8192, scan cut short".into(),
            truncated_huge_jpeg(true, 16_384, 8192),
        ),
    ]
}

/// Each bomb alone, with the process's peak memory measured around it.
fn fuzz_bombs(h: &mut Harness) {
    h.begin("image bombs (largest allowed)");
    for (name, bytes) in bombs() {
        reset_hwm();
        let before = vm_hwm_kib();
        let start = Instant::now();
        let mut outcome = String::new();
        h.call(&format!("bomb: {name}"), &bytes, "img", || {
            let r = folder::decode_bytes(&bytes, 32);
            outcome = match &r {
                Ok(d) => format!(
                    "decoded{}",
                    if d.partial.is_some() {
                        " (partial)"
                    } else {
                        ""
                    }
                ),
                Err(e) => format!("refused: {}", e.chars().take(70).collect::<String>()),
            };
            verdict(&r)
        });
        let after = vm_hwm_kib();
        h.note_peak();
        println!(
            "fuzz: bomb {name}: {} bytes, {:.2}s, peak RSS {} MiB (from {} MiB): {outcome}",
            bytes.len(),
            start.elapsed().as_secs_f64(),
            after.unwrap_or(0) / 1024,
            before.unwrap_or(0) / 1024,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: catches panics, times calls, keeps what failed

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

struct Failure {
    id: String,
    panic: String,
    saved: Option<PathBuf>,
}

#[derive(Default)]
struct Tally {
    tried: usize,
    accepted: usize,
    refused: usize,
    panics: usize,
    violations: usize,
    time: Duration,
    wall: Duration,
    slowest: Vec<(Duration, String)>,
    peak_kib: Option<u64>,
}

struct Harness {
    base: u64,
    trace: bool,
    failures: Vec<Failure>,
    fail_dir: PathBuf,
    tallies: Vec<(&'static str, Tally)>,
    peak_kib: Option<u64>,
    section_start: Instant,
}

/// What a call gave: a result, an error, or a result that breaks the reader's own contract.
enum Verdict {
    Accepted,
    Refused,
    Violation(String),
    /// A child process panicked, aborted, was killed or hung (counted with the panics).
    Crashed(String),
}

fn verdict<T, E>(r: &Result<T, E>) -> Verdict {
    if r.is_ok() {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets VmHWM to the current resident size (Linux ≥ 4.0), so each reader's peak is its own.
fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

impl Harness {
    fn new() -> Self {
        let base = std::env::var("PRETEXT_FUZZ_BASE")
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap_or(DEFAULT_BASE_SEED);
        Self {
            base,
            trace: std::env::var_os("PRETEXT_FUZZ_TRACE").is_some(),
            failures: Vec::new(),
            fail_dir: std::env::temp_dir().join("pretext-fuzz-failures"),
            tallies: Vec::new(),
            peak_kib: vm_hwm_kib(),
            section_start: Instant::now(),
        }
    }

    fn begin(&mut self, reader: &'static str) {
        self.end();
        reset_hwm();
        self.tallies.push((reader, Tally::default()));
        self.section_start = Instant::now();
    }

    /// Closes the current section: its peak memory and wall time (making inputs included).
    fn end(&mut self) {
        self.note_peak();
        let now = Instant::now();
        if let Some((_, t)) = self.tallies.last_mut() {
            t.wall += now - self.section_start;
        }
        self.section_start = now;
    }

    fn note_peak(&mut self) {
        if let Some(k) = vm_hwm_kib() {
            self.peak_kib = Some(self.peak_kib.unwrap_or(0).max(k));
            if let Some((_, t)) = self.tallies.last_mut() {
                t.peak_kib = Some(t.peak_kib.unwrap_or(0).max(k));
            }
        }
    }

    fn seed(&self, reader: u64, index: usize) -> u64 {
        input_seed(self.base, reader, index)
    }

    /// Runs one call on one input; a panic is caught and kept with the input.
    fn call(&mut self, id: &str, input: &[u8], ext: &str, f: impl FnOnce() -> Verdict) {
        if self.trace {
            eprintln!("fuzz: {id}");
            let _ = std::io::stderr().flush();
        }
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(f));
        let took = start.elapsed();
        let (_, tally) = self.tallies.last_mut().unwrap();
        tally.tried += 1;
        tally.time += took;
        tally.slowest.push((took, id.to_string()));
        tally.slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
        tally.slowest.truncate(3);
        let problem = match result {
            Ok(Verdict::Accepted) => {
                tally.accepted += 1;
                None
            }
            Ok(Verdict::Refused) => {
                tally.refused += 1;
                None
            }
            Ok(Verdict::Violation(why)) => {
                tally.violations += 1;
                Some(format!("contract broken: {why}"))
            }
            Ok(Verdict::Crashed(why)) => {
                tally.panics += 1;
                Some(why)
            }
            Err(payload) => {
                tally.panics += 1;
                let hooked = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
                Some(hooked.unwrap_or_else(|| {
                    payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                        .unwrap_or_else(|| "panic with a non-string payload".into())
                }))
            }
        };
        if let Some(panic) = problem {
            let n = self.failures.len();
            let saved = (!input.is_empty() && n < 50)
                .then(|| {
                    std::fs::create_dir_all(&self.fail_dir).ok()?;
                    let p = self.fail_dir.join(format!("failure-{n:03}.{ext}"));
                    std::fs::write(&p, input).ok()?;
                    Some(p)
                })
                .flatten();
            self.failures.push(Failure {
                id: id.to_string(),
                panic,
                saved,
            });
        }
    }
}

fn describe(reader: &str, index: usize, seed: u64, from: &str, log: &[String]) -> String {
    format!(
        "{reader}#{index} seed={seed:#018x} from {from}: [{}]",
        log.join("; ")
    )
}

/// Keeps the frames of a backtrace worth reading (this crate, the decoders, candle, safetensors,
/// serde), the first 25 of them.
fn short_backtrace(s: &str) -> String {
    let mut out = Vec::new();
    let mut lines = s.lines().peekable();
    while let Some(l) = lines.next() {
        if out.len() >= 50 {
            break;
        }
        let keep = [
            "pretext",
            "image",
            "png",
            "gif",
            "tiff",
            "jpeg",
            "webp",
            "zune",
            "candle",
            "safetensors",
            "serde",
            "weezl",
            "fdeflate",
            "bmp",
        ]
        .iter()
        .any(|k| l.contains(k));
        if keep && !l.contains("fuzz_readers") {
            out.push(l.to_string());
            if let Some(next) = lines.peek()
                && next.trim_start().starts_with("at ")
            {
                out.push(lines.next().unwrap().to_string());
            }
        }
    }
    out.join("\n")
}

fn scale() -> f64 {
    std::env::var("PRETEXT_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64) * scale()).round().max(1.0) as usize
}

// ---------------------------------------------------------------------------------------------
// The readers

fn fuzz_images(h: &mut Harness, seeds: &[ImageSeed], donors: &[(String, Vec<u8>)], dir: &Path) {
    h.begin("image decode_bytes");
    let sizes = [16u32, 32, 33, 64];
    for i in 0..scaled(IMAGE_INPUTS) {
        let seed = h.seed(1, i);
        let mut rng = Rng::new(seed);
        let s = &seeds[i % seeds.len()];
        let mut log = Vec::new();
        let bytes = mutated_image(&mut rng, s, donors, &mut log);
        let size = *rng.pick(&sizes);
        log.push(format!("size {size}"));
        let id = describe("image", i, seed, &s.name, &log);
        h.call(&id, &bytes, "img", || {
            verdict(&folder::decode_bytes(&bytes, size))
        });
    }

    h.begin("image decode_to_size (files)");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let exts = ["jpg", "JPEG", "png", "webp", "bmp", "gif", "tif", "tiff"];
    for i in 0..scaled(IMAGE_FILE_INPUTS) {
        let seed = h.seed(2, i);
        let mut rng = Rng::new(seed);
        let s = &seeds[i % seeds.len()];
        let mut log = Vec::new();
        let bytes = match i % 40 {
            0 => {
                log.push("empty file".into());
                Vec::new()
            }
            1 => {
                log.push("text file".into());
                b"not an image\n".to_vec()
            }
            _ => mutated_image(&mut rng, s, donors, &mut log),
        };
        let path = files.join(format!("input-{i}.{}", rng.pick(&exts)));
        std::fs::write(&path, &bytes).unwrap();
        let id = describe("image-file", i, seed, &s.name, &log);
        h.call(&id, &bytes, "img", || {
            let from_file = folder::decode_to_size(&path, 32);
            let from_bytes = folder::decode_bytes(&bytes, 32);
            if from_file != from_bytes {
                return Verdict::Violation(format!(
                    "decode_to_size and decode_bytes disagree: {:?} vs {:?}",
                    from_file.as_ref().map(|d| d.partial.clone()),
                    from_bytes.as_ref().map(|d| d.partial.clone())
                ));
            }
            verdict(&from_file)
        });
        std::fs::remove_file(&path).unwrap();
    }
    // A folder is not a file.
    let id = "image-file: a folder named like an image";
    let sub = files.join("folder.png");
    std::fs::create_dir_all(&sub).unwrap();
    h.call(id, &[], "img", || {
        verdict(&folder::decode_to_size(&sub, 32))
    });

    h.begin("image load_folder");
    let root = dir.join("folder");
    for i in 0..scaled(FOLDER_FILES) {
        let seed = h.seed(3, i);
        let mut rng = Rng::new(seed);
        let s = &seeds[i % seeds.len()];
        let mut log = Vec::new();
        let bytes = if i < 4 {
            s.bytes.clone()
        } else {
            mutated_image(&mut rng, s, donors, &mut log)
        };
        let class = if i % 2 == 0 { "cats" } else { "dogs" };
        let path = root.join(class).join(format!("{i:04}.{}", rng.pick(&exts)));
        common::write(&path, &bytes);
    }
    let files_in_folder = scaled(FOLDER_FILES);
    h.call(
        &format!("load_folder of {files_in_folder} mutated files"),
        &[],
        "img",
        || {
            let r = folder::load_folder(&root, 32, &|_, _| {}, &AtomicBool::new(false));
            match &r {
                Ok(d) if d.len() + d.skipped.len() != files_in_folder => {
                    Verdict::Violation(format!(
                        "{} images + {} skipped != {files_in_folder} files",
                        d.len(),
                        d.skipped.len()
                    ))
                }
                _ => verdict(&r),
            }
        },
    );
    h.note_peak();
}

/// The image cache's file, mutated, at its place while the folder it belongs to opens again.
/// With its checksum left as the mutation made it, the load must give exactly what an uncached
/// load gives (the file is ignored); with the checksum made anew (a file that is wrong yet
/// consistent), the parser meets every mutation: the load must still answer, with every file
/// either an image or a skipped one.
fn fuzz_image_cache(h: &mut Harness, donors: &[(String, Vec<u8>)], dir: &Path) {
    use pretext::data::{LoadOptions, cache};
    h.begin("image cache file");
    let root = dir.join("cached-folder");
    let cache_dir = dir.join("image-cache");
    for i in 0..6u32 {
        let img = image::RgbImage::from_fn(24 + i, 20, |x, y| {
            image::Rgb([(x * 9 + i) as u8, (y * 11) as u8, (x ^ y) as u8])
        });
        let class = if i % 2 == 0 { "cats" } else { "dogs" };
        let path = root.join(class).join(format!("{i}.png"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(&path).unwrap();
    }
    common::write(&root.join("dogs/notes.png"), b"not a picture\n");
    let files = 7;
    let plain = folder::load_folder(&root, 16, &|_, _| {}, &AtomicBool::new(false)).unwrap();
    let load = || {
        folder::load_folder_with(
            &root,
            16,
            &LoadOptions {
                cache: Some(&cache_dir),
                progress: &|_, _| {},
                cancel: &AtomicBool::new(false),
                glimpse: None,
            },
        )
    };
    load().unwrap();
    let path = cache::file_for(&cache_dir, &root, 16);
    let good = std::fs::read(&path).unwrap();
    let same = |d: &pretext::data::Dataset| {
        d.names == plain.names
            && d.labels == plain.labels
            && d.skipped == plain.skipped
            && (0..d.len()).all(|i| d.image(i) == plain.image(i))
    };
    for i in 0..scaled(CACHE_INPUTS) {
        let seed = h.seed(11, i);
        let mut rng = Rng::new(seed);
        let mut log = Vec::new();
        let mut bytes = good.clone();
        mutate(&mut rng, &mut bytes, donors, 64, &mut log);
        let consistent = rng.chance(50) && bytes.len() >= 4;
        if consistent {
            let n = bytes.len() - 4;
            let crc = common::crc32(&bytes[..n]);
            bytes[n..].copy_from_slice(&crc.to_le_bytes());
            log.push("checksum made anew".into());
        }
        std::fs::write(&path, &bytes).unwrap();
        let id = describe("image-cache", i, seed, "a folder's cache file", &log);
        h.call(&id, &bytes, "pxc", || {
            let r = load();
            match &r {
                Ok(d) if !consistent && bytes != good && !same(d) => {
                    Verdict::Violation("a damaged cache file changed the data".into())
                }
                Ok(d) if d.len() + d.skipped.len() != files => Verdict::Violation(format!(
                    "{} images + {} skipped != {files} files",
                    d.len(),
                    d.skipped.len()
                )),
                _ => verdict(&r),
            }
        });
    }
    h.note_peak();
}

struct CheckpointSeeds {
    resume: Vec<u8>,
    encoder: Vec<u8>,
}

/// A resume checkpoint as the trainer writes it (weights, running statistics, batch counters,
/// optimiser moments, position metadata) and an encoder-only state dict as `--init-from` takes.
fn checkpoint_seeds(dir: &Path) -> CheckpointSeeds {
    let model = Model::new(Device::Cpu, 3).unwrap();
    let data = pretext::data::builtin::generate(2, 32);
    let _tasks = pretext::tasks::build(
        &[TaskKind::Rotation],
        &TaskSettings::default(),
        &model,
        &data,
    )
    .unwrap();
    model.init_weights(7).unwrap();
    let mut full = model.state_dict().unwrap();
    for (name, var) in model.trainable_vars() {
        let t = var.as_tensor();
        full.insert(format!("optimizer.m.{name}"), (t * 0.01).unwrap());
        full.insert(
            format!("optimizer.v.{name}"),
            (t.sqr().unwrap() * 0.001).unwrap(),
        );
    }
    let meta: BTreeMap<String, String> = [
        ("format", "pretext-checkpoint-1"),
        ("step", "40"),
        ("epoch", "2"),
        ("batch", "3"),
        ("tasks", "rotation"),
        ("lr", "0.001"),
        ("optimizer_t", "40"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let resume = dir.join("seed-resume.safetensors");
    checkpoint::write(&resume, &full, &meta).unwrap();
    let encoder: BTreeMap<_, _> = model
        .state_dict()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("heads."))
        .collect();
    let enc = dir.join("seed-encoder.safetensors");
    checkpoint::write(&enc, &encoder, &BTreeMap::new()).unwrap();
    CheckpointSeeds {
        resume: std::fs::read(resume).unwrap(),
        encoder: std::fs::read(enc).unwrap(),
    }
}

/// What `--init-from` and `--resume` do with a file: read it, load it into a model with the
/// run's heads, and (resume) restore the optimiser moments and the step count.
fn load_like_training(path: &Path, resume: &Model, other: &Model) -> Verdict {
    let Ok((tensors, meta)) = checkpoint::read(path, &Device::Cpu) else {
        return Verdict::Refused;
    };
    let a = resume.load_state_dict(&tensors, "fuzz");
    if a.is_ok() {
        let t = meta
            .get("optimizer_t")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let mut opt = AdamW::new(resume.trainable_vars(), 1e-3, 0.01);
        if opt.load_state(&tensors, t).is_err() {
            return Verdict::Refused;
        }
    }
    let b = other.load_state_dict(&tensors, "fuzz");
    if a.is_ok() || b.is_ok() {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

fn fuzz_checkpoints(
    h: &mut Harness,
    seeds: &CheckpointSeeds,
    image_donors: &[(String, Vec<u8>)],
    dir: &Path,
) {
    h.begin("checkpoint read + load_state_dict");
    // The model a resumed rotation run builds, and one with other heads (--init-from).
    let data = pretext::data::builtin::generate(2, 32);
    let resume_model = Model::new(Device::Cpu, 3).unwrap();
    let _t1 = pretext::tasks::build(
        &[TaskKind::Rotation],
        &TaskSettings::default(),
        &resume_model,
        &data,
    )
    .unwrap();
    let other_model = Model::new(Device::Cpu, 3).unwrap();
    let _t2 = pretext::tasks::build(
        &[TaskKind::Contrastive, TaskKind::Patch],
        &TaskSettings::default(),
        &other_model,
        &data,
    )
    .unwrap();
    // Sanity: the seeds load.
    let path = dir.join("input.safetensors");
    for (name, s) in [("resume", &seeds.resume), ("encoder", &seeds.encoder)] {
        std::fs::write(&path, s).unwrap();
        let (t, _) = checkpoint::read(&path, &Device::Cpu).unwrap();
        resume_model.load_state_dict(&t, name).unwrap();
    }
    let mut donors: Vec<(String, Vec<u8>)> = vec![
        ("resume".into(), seeds.resume.clone()),
        ("encoder".into(), seeds.encoder.clone()),
    ];
    donors.extend(image_donors.iter().take(6).cloned());
    for i in 0..scaled(CHECKPOINT_INPUTS) {
        let seed = h.seed(4, i);
        let mut rng = Rng::new(seed);
        let (from, s) = if i % 3 == 0 {
            ("resume", &seeds.resume)
        } else {
            ("encoder", &seeds.encoder)
        };
        let mut log = Vec::new();
        let bytes = mutated_checkpoint(&mut rng, s, &donors, &mut log);
        std::fs::write(&path, &bytes).unwrap();
        let id = describe("checkpoint", i, seed, from, &log);
        h.call(&id, &bytes, "safetensors", || {
            load_like_training(&path, &resume_model, &other_model)
        });
    }
    // Files that are not there or not files.
    let missing = dir.join("missing.safetensors");
    h.call("checkpoint: missing file", &[], "safetensors", || {
        verdict(&checkpoint::read(&missing, &Device::Cpu))
    });
    h.call("checkpoint: a folder", &[], "safetensors", || {
        verdict(&checkpoint::read(dir, &Device::Cpu))
    });
    h.note_peak();
}

/// A run directory as `--resume` and the app's "continue" find it.
fn make_run_dir(dir: &Path, config: &[u8], metrics: &[u8], checkpoint: &[u8]) {
    std::fs::create_dir_all(dir.join(run_dir::CHECKPOINT_DIR)).unwrap();
    std::fs::write(dir.join(run_dir::CONFIG_FILE), config).unwrap();
    std::fs::write(dir.join(run_dir::METRICS_FILE), metrics).unwrap();
    std::fs::write(
        dir.join(run_dir::CHECKPOINT_DIR).join(run_dir::RESUME_FILE),
        checkpoint,
    )
    .unwrap();
}

fn fuzz_configs(
    h: &mut Harness,
    checkpoint: &[u8],
    other_donors: &[(String, Vec<u8>)],
    dir: &Path,
) {
    h.begin("config.json");
    let seeds = config_seeds();
    let mut donors = seeds.clone();
    donors.extend(other_donors.iter().cloned());
    let run = dir.join("config-run");
    make_run_dir(
        &run,
        &seeds[0].1,
        format!("{}\n", run_dir::METRICS_HEADER).as_bytes(),
        checkpoint,
    );
    for i in 0..scaled(CONFIG_INPUTS) {
        let seed = h.seed(5, i);
        let mut rng = Rng::new(seed);
        let (from, s) = &seeds[i % seeds.len()];
        let mut log = Vec::new();
        let mut bytes = match rng.below(100) {
            0..55 => mutated_json(&mut rng, s, &mut log),
            55..90 => {
                let mut b = s.clone();
                mutate(&mut rng, &mut b, &donors, 0, &mut log);
                b
            }
            _ => {
                let mut b = mutated_json(&mut rng, s, &mut log);
                log.push(mutate_once(&mut rng, &mut b, &donors, 0));
                b
            }
        };
        if i % 97 == 0 {
            bytes = Vec::new();
            log.push("empty".into());
        }
        std::fs::write(run.join(run_dir::CONFIG_FILE), &bytes).unwrap();
        let id = describe("config", i, seed, from, &log);
        h.call(&id, &bytes, "json", || {
            // What the app does when it shows a run's settings, and what --resume does.
            let parsed = std::str::from_utf8(&bytes)
                .ok()
                .map(serde_json::from_str::<TrainConfig>);
            if let Some(Ok(c)) = &parsed {
                let _ = c.validate();
                let _ = c.tasks_label();
                let _ = c.data.to_string();
            }
            // The app opening the run directory: its curves from metrics.csv, its settings.
            let _ = run_dir::replay(&run);
            match RunDir::open(&run) {
                Ok((_run, config)) => {
                    if config.validate().is_ok() {
                        Verdict::Accepted
                    } else {
                        Verdict::Refused
                    }
                }
                Err(_) => Verdict::Refused,
            }
        });
    }
    h.note_peak();
}

/// A few labelled images for `pretext eval --data`.
fn tiny_labelled_folder(root: &Path) {
    for (class, tint) in [("a", 40u8), ("b", 200u8)] {
        for i in 0..3u8 {
            let img = RgbaImage::from_fn(8, 8, |x, y| {
                Rgba([tint, (x * 30) as u8 ^ i, (y * 30) as u8, 255])
            });
            let bytes = encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png);
            common::write(&root.join(class).join(format!("{i}.png")), &bytes);
        }
    }
}

#[cfg(unix)]
fn signal_of(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    status
        .signal()
        .map_or_else(|| "no exit code".to_string(), |s| format!("signal {s}"))
}

#[cfg(not(unix))]
fn signal_of(_status: &std::process::ExitStatus) -> String {
    "no exit code".to_string()
}

/// The message and the frames of a child's backtrace that name this crate or its callers'
/// code, without the standard library's.
fn readable_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("/rustc/") && !l.contains("skipping backtrace"))
        .take(40)
        .collect();
    lines.join("\n")
}

/// `pretext eval` reads a run directory's config.json on its own: each config runs the real
/// binary (under a 4 GiB address-space limit and a time limit), which must exit with success
/// or an error code, not a panic (101), an abort or a signal. Linux only (`sh`, `ulimit`,
/// `timeout`).
fn fuzz_eval_configs(h: &mut Harness, checkpoint: &[u8], dir: &Path) {
    h.begin("config.json via `pretext eval`");
    if !cfg!(target_os = "linux") {
        println!("fuzz: `pretext eval` runs skipped (Linux only)");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_pretext");
    let run = dir.join("eval-run");
    let images = dir.join("eval-images");
    tiny_labelled_folder(&images);
    let base = serde_json::to_value(TrainConfig::default()).unwrap();
    make_run_dir(
        &run,
        base.to_string().as_bytes(),
        format!("{}\n", run_dir::METRICS_HEADER).as_bytes(),
        checkpoint,
    );
    // Values that validate() refuses but eval sees unvalidated.
    let targeted: Vec<(&str, serde_json::Value)> = vec![
        ("/size", serde_json::json!(0)),
        ("/size", serde_json::json!(1)),
        ("/size", serde_json::json!(3)),
        ("/size", serde_json::json!(18)),
        ("/size", serde_json::json!(100_000)),
        ("/size", serde_json::json!(u64::MAX)),
        ("/tasks", serde_json::json!([])),
        ("/tasks", serde_json::json!(["rotation", "rotation"])),
        (
            "/tasks",
            serde_json::json!([
                "colorization",
                "inpainting",
                "rotation",
                "patch",
                "contrastive"
            ]),
        ),
        ("/batch", serde_json::json!(0)),
        ("/epochs", serde_json::json!(0)),
        ("/preview_images", serde_json::json!(u64::MAX)),
        ("/seed", serde_json::json!(u64::MAX)),
        ("/settings/augment/crop_min_scale", serde_json::json!(0.0)),
        ("/settings/augment/crop_min_scale", serde_json::json!(-1.0)),
        ("/settings/augment/crop_min_scale", serde_json::json!(50.0)),
        ("/settings/augment/hue", serde_json::json!(7.5)),
        ("/settings/augment/brightness", serde_json::json!(1e300)),
        ("/settings/augment/blur_p", serde_json::json!(1.0)),
        ("/settings/augment/flip_p", serde_json::json!(-3.0)),
        ("/settings/mask_size", serde_json::json!(0.0)),
        ("/settings/mask_size", serde_json::json!(1e9)),
        ("/settings/patch_gap", serde_json::json!(10.0)),
        ("/settings/temperature", serde_json::json!(0.0)),
    ];
    let mut inputs: Vec<(String, Vec<u8>)> = targeted
        .into_iter()
        .map(|(ptr, v)| {
            let mut c = base.clone();
            *c.pointer_mut(ptr).unwrap() = v.clone();
            (format!("eval-config {ptr}={v}"), c.to_string().into_bytes())
        })
        .collect();
    // Mutated configs that parse (eval takes whatever parses).
    let seeds = config_seeds();
    let mut i = 0;
    let targeted_count = inputs.len();
    while inputs.len() < targeted_count + scaled(EVAL_FUZZED_CONFIGS)
        && i < 100 * EVAL_FUZZED_CONFIGS
    {
        let seed = h.seed(7, i);
        let mut rng = Rng::new(seed);
        let (from, s) = &seeds[i % seeds.len()];
        let mut log = Vec::new();
        let bytes = mutated_json(&mut rng, s, &mut log);
        if std::str::from_utf8(&bytes)
            .ok()
            .is_some_and(|t| serde_json::from_str::<TrainConfig>(t).is_ok())
        {
            inputs.push((describe("eval-config", i, seed, from, &log), bytes));
        }
        i += 1;
    }
    let limit_kib = 4u64 << 20;
    for (id, bytes) in inputs {
        std::fs::write(run.join(run_dir::CONFIG_FILE), &bytes).unwrap();
        h.call(&id, &bytes, "json", || {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ulimit -v {limit_kib}; exec timeout 60 \"$0\" eval --run \"$1\" --data \"$2\""
                ))
                .arg(bin)
                .arg(&run)
                .arg(&images)
                .env("RUST_BACKTRACE", "1")
                // A predictable address space under the limit, whatever the machine's cores.
                .env("RAYON_NUM_THREADS", "2")
                .env("MALLOC_ARENA_MAX", "2")
                .output()
                .unwrap();
            match out.status.code() {
                Some(0) => Verdict::Accepted,
                Some(1 | 2) => Verdict::Refused,
                code => Verdict::Crashed(format!(
                    "`pretext eval` ended with {}:\n{}",
                    match code {
                        Some(101) => "exit code 101 (a panic)".to_string(),
                        Some(124) => "exit code 124 (timed out after 60 s)".to_string(),
                        Some(c) => format!("exit code {c}"),
                        None => format!(
                            "{} (SIGABRT: an abort, e.g. an allocation over the 4 GiB limit)",
                            signal_of(&out.status)
                        ),
                    },
                    readable_stderr(&out.stderr)
                )),
            }
        });
    }
}

/// Checks what `keep_metrics_through(step)` promises: the header, then only complete rows with
/// the header's number of fields whose step is at most `step`.
fn check_kept(path: &Path, step: u64) -> Result<(), String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let header = format!("{}\n", run_dir::METRICS_HEADER);
    if !text.starts_with(header.as_bytes()) {
        return Err("metrics.csv does not start with the header".into());
    }
    if !text.ends_with(b"\n") {
        return Err("metrics.csv ends with a partial line".into());
    }
    // Rows are CSV (a field may be quoted and hold a comma): read them as CSV.
    let mut rows = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&text[header.len()..]);
    let columns = run_dir::METRICS_HEADER.split(',').count();
    for record in rows.records() {
        let record = record.map_err(|e| format!("a kept row is not CSV: {e}"))?;
        if record.len() != columns {
            return Err(format!("kept row with {} fields: {record:?}", record.len()));
        }
        match record.get(0).and_then(|f| f.parse::<u64>().ok()) {
            Some(s) if s <= step => {}
            _ => return Err(format!("kept row past step {step}: {record:?}")),
        }
    }
    Ok(())
}

fn fuzz_metrics(
    h: &mut Harness,
    checkpoint: &[u8],
    other_donors: &[(String, Vec<u8>)],
    dir: &Path,
) {
    h.begin("metrics.csv");
    let seeds = metrics_seeds();
    let mut donors = seeds.clone();
    donors.extend(other_donors.iter().cloned());
    let config = serde_json::to_string_pretty(&TrainConfig::default()).unwrap();
    let run = dir.join("metrics-run");
    make_run_dir(&run, config.as_bytes(), &seeds[0].1, checkpoint);
    let metrics = run.join(run_dir::METRICS_FILE);
    for i in 0..scaled(METRICS_INPUTS) {
        let seed = h.seed(6, i);
        let mut rng = Rng::new(seed);
        let (from, s) = &seeds[i % seeds.len()];
        let mut log = Vec::new();
        let bytes = match rng.below(100) {
            0..55 => mutated_csv(&mut rng, s, &mut log),
            55..90 => {
                let mut b = s.clone();
                mutate(&mut rng, &mut b, &donors, 0, &mut log);
                b
            }
            _ => {
                let mut b = mutated_csv(&mut rng, s, &mut log);
                log.push(mutate_once(&mut rng, &mut b, &donors, 0));
                b
            }
        };
        let step = match rng.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => u64::MAX - 1,
            _ => rng.below(60) as u64,
        };
        log.push(format!("keep through {step}"));
        if i % 50 == 0 {
            // A temporary file a killed writer left behind.
            std::fs::write(
                run.join(run_dir::CHECKPOINT_DIR)
                    .join(".resume.safetensors.tmp-12345"),
                b"partial",
            )
            .unwrap();
        }
        std::fs::write(&metrics, &bytes).unwrap();
        let id = describe("metrics", i, seed, from, &log);
        h.call(&id, &bytes, "csv", || {
            // The app's view of a run, then what --resume does after a crash, then the view again.
            let before = run_dir::read_metrics(&run);
            if run_dir::replay(&run).is_err() {
                return Verdict::Violation("replay refused a run directory".into());
            }
            // The runs view reading the same file live, and its summary of it.
            let tailed = pretext::runs::MetricsTail::new(&run).poll();
            // (Compared as text: a NaN read back is not equal to itself.)
            if let (Ok(rows), Ok(t)) = (&before, &tailed)
                && format!("{rows:?}") != format!("{:?}", t.rows)
            {
                return Verdict::Violation(format!(
                    "the live tail read {} rows where read_metrics read {}",
                    t.rows.len(),
                    rows.len()
                ));
            }
            if let (Ok(config), Ok(t)) = (run_dir::read_config(&run), &tailed) {
                let mut fold = pretext::runs::SummaryFold::new(&run, &config);
                fold.push(&t.rows);
                let s = fold.summary();
                if s.steps > 0 && !s.wall_s.is_finite() {
                    return Verdict::Violation("a summary with an endless time".into());
                }
            }
            let (mut rd, _) = match RunDir::open(&run) {
                Ok(x) => x,
                Err(e) => return Verdict::Violation(format!("valid run directory refused: {e}")),
            };
            if let Err(e) = rd.keep_metrics_through(step) {
                return Verdict::Violation(format!("keep_metrics_through failed: {e}"));
            }
            drop(rd);
            if let Err(why) = check_kept(&metrics, step) {
                return Verdict::Violation(why);
            }
            let after = run_dir::read_metrics(&run);
            if run_dir::replay(&run).is_err() {
                return Verdict::Violation("replay refused the trimmed run directory".into());
            }
            match (&before, &after) {
                (Ok(_), Ok(rows)) if rows.iter().any(|r| r.step > step) => {
                    Verdict::Violation(format!("a row past step {step} survived"))
                }
                (Ok(_), Ok(_)) => Verdict::Accepted,
                _ => Verdict::Refused,
            }
        });
    }
    let missing = dir.join("no-run");
    h.call("metrics: missing run directory", &[], "csv", || {
        verdict(&run_dir::read_metrics(&missing))
    });
    h.note_peak();
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_reader_answers_mutated_files_with_a_result_or_an_error() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::panic::set_hook(Box::new(|info| {
        let bt = std::backtrace::Backtrace::force_capture();
        let text = format!("{info}\n{}", short_backtrace(&bt.to_string()));
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }));

    let mut h = Harness::new();
    let images = image_seeds();
    let ck = checkpoint_seeds(dir);
    let image_donors: Vec<(String, Vec<u8>)> = images
        .iter()
        .map(|s| (s.name.clone(), s.bytes.clone()))
        .collect();
    let mut all_donors = image_donors.clone();
    all_donors.extend(config_seeds());
    all_donors.extend(metrics_seeds());
    all_donors.push(("encoder-checkpoint".into(), ck.encoder.clone()));
    println!(
        "fuzz: base seed {:#018x}, scale {}, {} image seeds ({}), checkpoints of {} and {} bytes",
        h.base,
        scale(),
        images.len(),
        images
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        ck.resume.len(),
        ck.encoder.len()
    );

    fuzz_images(&mut h, &images, &all_donors, dir);
    fuzz_image_cache(&mut h, &image_donors, dir);
    fuzz_bombs(&mut h);
    fuzz_checkpoints(&mut h, &ck, &image_donors, dir);
    let text_donors: Vec<(String, Vec<u8>)> = all_donors
        .iter()
        .filter(|(n, _)| !n.contains("checkpoint"))
        .cloned()
        .collect();
    fuzz_configs(&mut h, &ck.resume, &text_donors, dir);
    fuzz_eval_configs(&mut h, &ck.resume, dir);
    fuzz_metrics(&mut h, &ck.resume, &text_donors, dir);
    h.end();
    let _ = std::panic::take_hook();

    let mut total = 0;
    println!(
        "fuzz: {:<34} {:>6} {:>8} {:>8} {:>6} {:>9} {:>8} {:>8} {:>10}",
        "reader", "tried", "result", "error", "panic", "contract", "calls", "wall", "peak RSS"
    );
    for (name, t) in &h.tallies {
        total += t.tried;
        println!(
            "fuzz: {name:<34} {:>6} {:>8} {:>8} {:>6} {:>9} {:>7.1}s {:>7.1}s {:>10}",
            t.tried,
            t.accepted,
            t.refused,
            t.panics,
            t.violations,
            t.time.as_secs_f64(),
            t.wall.as_secs_f64(),
            t.peak_kib
                .map_or("n/a".to_string(), |k| format!("{} MiB", k / 1024)),
        );
        for (d, id) in &t.slowest {
            println!(
                "fuzz:     slowest {:.3}s {}",
                d.as_secs_f64(),
                id.chars().take(160).collect::<String>()
            );
        }
    }
    println!(
        "fuzz: {total} inputs in {:.1}s; peak resident memory (VmHWM) {}",
        started.elapsed().as_secs_f64(),
        h.peak_kib
            .map_or("not measured (no /proc/self/status)".into(), |k| format!(
                "{} MiB",
                k / 1024
            ))
    );

    for f in &h.failures {
        eprintln!(
            "\nFAILED INPUT {}\n  saved: {}\n{}",
            f.id,
            f.saved
                .as_ref()
                .map_or("-".into(), |p| p.display().to_string()),
            f.panic
        );
    }
    let mut problems = Vec::new();
    if !h.failures.is_empty() {
        problems.push(format!(
            "{} of {total} inputs made a reader panic, abort or break its contract (listed above):\n{}",
            h.failures.len(),
            h.failures
                .iter()
                .map(|f| format!("  {}", f.id))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    match h.peak_kib {
        Some(k) if k * 1024 >= MAX_PEAK_BYTES => problems.push(format!(
            "peak resident memory {} MiB is over the bound of {} MiB (see the bombs above)",
            k / 1024,
            MAX_PEAK_BYTES >> 20
        )),
        Some(_) => {}
        None => println!("fuzz: peak memory not checked (no /proc/self/status here)"),
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
