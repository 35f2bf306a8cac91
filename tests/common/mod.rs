//! Helpers shared by the integration tests: hand-made image files for formats and defects the
//! `image` crate's encoders do not produce (palette PNG, EXIF orientation, lying headers).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use pretext::train::{Command, EpochSummary, Event, Outcome, PauseReason, StepMetrics, Trainer};

const TIMEOUT: Duration = Duration::from_secs(600);

/// PNG's CRC-32 of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

/// Appends one PNG chunk (length, kind, data, CRC).
pub fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut c = kind.to_vec();
    c.extend_from_slice(data);
    out.extend_from_slice(&c);
    out.extend_from_slice(&crc32(&c).to_be_bytes());
}

/// zlib stream with stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = b.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn ihdr(w: u32, h: u32, depth: u8, color_type: u8) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&w.to_be_bytes());
    d.extend_from_slice(&h.to_be_bytes());
    d.extend_from_slice(&[depth, color_type, 0, 0, 0]);
    d
}

/// An 8-bit palette PNG: `indices` are row-major palette indices.
pub fn palette_png(w: u32, h: u32, palette: &[[u8; 3]], indices: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr(w, h, 8, 3));
    let plte: Vec<u8> = palette.iter().flatten().copied().collect();
    chunk(&mut out, b"PLTE", &plte);
    let mut raw = Vec::new();
    for row in indices.chunks(w as usize) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A PNG whose header claims `w × h` RGB pixels but carries almost no data: a decoder that
/// believed it would allocate w·h·3 bytes.
pub fn lying_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr(w, h, 8, 2));
    chunk(&mut out, b"IDAT", &zlib_stored(&[0; 64]));
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A PNG that is only a header for `w × h` pixels of the given bit depth and colour type (6 =
/// RGBA): what a decompression bomb looks like before its pixels are decoded.
pub fn header_only_png(w: u32, h: u32, depth: u8, color_type: u8) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr(w, h, depth, color_type));
    chunk(&mut out, b"IDAT", &zlib_stored(&[0; 64]));
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Inserts an EXIF APP1 segment with the given orientation (1–8) after the JPEG's SOI marker.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II*\0");
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// Encodes an image with the `image` crate into the format of `path`'s extension.
pub fn save(path: &Path, img: &image::DynamicImage) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    img.save(path).unwrap();
}

/// Mean colour of a region of a `size × size` RGB image.
pub fn mean_rgb(px: &[u8], size: usize, x0: usize, y0: usize, x1: usize, y1: usize) -> [f32; 3] {
    let mut sum = [0f32; 3];
    let mut n = 0.0;
    for y in y0..y1 {
        for x in x0..x1 {
            for c in 0..3 {
                sum[c] += f32::from(px[(y * size + x) * 3 + c]);
            }
            n += 1.0;
        }
    }
    sum.map(|s| s / n)
}

/// Everything a run reported.
#[derive(Default)]
pub struct Log {
    pub steps: Vec<StepMetrics>,
    pub epochs: Vec<EpochSummary>,
    pub knn: Vec<pretext::train::KnnMetrics>,
    pub errors: Vec<String>,
    pub pauses: Vec<PauseReason>,
    pub previews: usize,
    pub run_dir: Option<PathBuf>,
    pub outcome: Option<Outcome>,
}

/// Feeds events to `on_event` (which may send commands) until the run finishes.
pub fn drive(trainer: &Trainer, mut on_event: impl FnMut(&Event, &Log)) -> Log {
    let mut log = Log::default();
    loop {
        let e = trainer
            .events()
            .recv_timeout(TIMEOUT)
            .expect("no event for too long");
        on_event(&e, &log);
        match e {
            Event::Step(m) => log.steps.push(m),
            Event::Epoch(s) => log.epochs.push(s),
            Event::Knn(k) => log.knn.push(k),
            Event::Error(m) => log.errors.push(m),
            Event::Paused { reason, .. } => log.pauses.push(reason),
            Event::Preview(_) => log.previews += 1,
            Event::Finished { run_dir, outcome } => {
                log.run_dir = run_dir;
                log.outcome = Some(outcome);
                return log;
            }
            _ => {}
        }
    }
}

pub fn run(cmd: Command) -> Log {
    let t = Trainer::spawn().unwrap();
    assert!(t.send(cmd));
    drive(&t, |_, _| {})
}

/// A JSON fixture from tests/data (reference values made by the scripts in scripts/).
pub fn fixture(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A fixture's matrix: an array of rows of numbers.
pub fn matrix(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}
