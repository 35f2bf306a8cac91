//! Image folders as users have them: recursive scan (walkdir: symbolic-link loops detected, each
//! real file once, hidden entries left out), parallel decode with memory limits decided from the
//! header, EXIF orientation, every pixel format turned into 8-bit RGB at the working size, labels
//! from first-level subfolders (ImageFolder layout), and a report of every file that was skipped,
//! ignored or only partly decoded. Through the image cache ([`super::cache`]), a file unchanged
//! since the folder's last opening is not decoded again.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use image::{GenericImageView, imageops::FilterType};
use rayon::prelude::*;

use super::cache::{Cache, Remembered, Stamp};
use super::{CacheUse, DataError, Dataset, LoadOptions, Skipped, disambiguate, display_os};
use crate::config::DataSource;

/// File extensions that are decoded (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// Largest width or height accepted; a larger image is skipped, not decoded.
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoded image (bytes of its pixels in the file's own format, from the header); a
/// decompression bomb is refused here before anything is allocated.
pub const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;
/// Largest file read (a larger one is skipped unread).
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// The version of the decoding code: part of the image cache's key, so pixels cached by code
/// that decoded differently are not used. Raise it with any change to what a file decodes to.
pub const DECODING_VERSION: u32 = 2;
/// Grey that transparent pixels are composited onto.
pub const BACKGROUND: u8 = 128;
/// How deep the scan follows subfolders.
const MAX_DEPTH: usize = 32;

fn is_image_path(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// How the reason for a file of a type that is not decoded begins.
pub const NOT_AN_IMAGE: &str = "not an image file";

/// Why a file whose name is not that of an image type is left out: its type, and for the formats
/// people most often expect to work (camera raw, HEIF, SVG) what to do instead.
fn not_an_image_reason(p: &Path) -> String {
    let ext = p.extension().map(|e| e.to_string_lossy().to_lowercase());
    let Some(ext) = ext else {
        return format!(
            "{NOT_AN_IMAGE} (no extension; images are .{})",
            IMAGE_EXTENSIONS.join(", .")
        );
    };
    let hint = match ext.as_str() {
        "cr2" | "cr3" | "nef" | "arw" | "dng" | "orf" | "rw2" | "raf" | "pef" | "srw" => {
            ": a camera raw file, not decoded (export it as JPEG or PNG)".to_string()
        }
        "heic" | "heif" | "avif" => ": HEIF/AVIF is not decoded (convert it to JPEG or PNG)".into(),
        "svg" => ": a vector drawing, not decoded (render it to PNG)".into(),
        _ => format!(" (images are .{})", IMAGE_EXTENSIONS.join(", .")),
    };
    format!("{NOT_AN_IMAGE} (.{ext}){hint}")
}

/// Why an entry is left out on purpose, when it is: hidden names (`.git`, `.DS_Store`,
/// `.ipynb_checkpoints`, AppleDouble `._x.jpg`) and macOS archive metadata (`__MACOSX`).
pub fn hidden_reason(name: &std::ffi::OsStr) -> Option<&'static str> {
    let bytes = name.as_encoded_bytes();
    if bytes.first() == Some(&b'.') {
        Some("hidden (name starts with '.')")
    } else if bytes == b"__MACOSX" {
        Some("macOS archive metadata (__MACOSX)")
    } else {
        None
    }
}

/// What identifies a file or folder on disk, whatever path leads to it.
#[cfg(unix)]
fn identity(_path: &Path, meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn identity(path: &Path, _meta: &std::fs::Metadata) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Image files, each real file once, sorted by path.
    pub files: Vec<PathBuf>,
    /// Entries that could not be used (unreadable folders, dangling links).
    pub skipped: Vec<Skipped>,
    /// Entries left out on purpose (hidden, not an image type, links back up, second links to
    /// the same target).
    pub ignored: Vec<Skipped>,
}

/// All image files below `root`. Symbolic links are followed, but each real file and folder is
/// taken once (a loop of links ends the walk there), hidden entries are ignored, and the walk
/// stops at 32 levels.
///
/// # Errors
/// [`DataError::NotFound`], [`DataError::NotAFolder`] or [`DataError::Io`] when `root` itself
/// cannot be listed.
pub fn scan(root: &Path) -> Result<Scan, DataError> {
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
    if let Err(e) = std::fs::read_dir(root) {
        return Err(DataError::Io {
            path: root.to_path_buf(),
            source: e,
        });
    }
    let left_out = RefCell::new(Vec::new());
    let seen_dirs = RefCell::new(HashSet::new());
    if let Some(id) = identity(root, &meta) {
        seen_dirs.borrow_mut().insert(id);
    }
    let mut out = Scan::default();
    let mut seen_files = HashSet::new();
    let walk = walkdir::WalkDir::new(root)
        .follow_links(true)
        .max_depth(MAX_DEPTH)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            if e.depth() == 0 {
                return true;
            }
            if let Some(reason) = hidden_reason(e.file_name()) {
                left_out.borrow_mut().push(Skipped {
                    path: e.path().to_path_buf(),
                    reason: reason.to_string(),
                });
                return false;
            }
            if e.file_type().is_dir()
                && let Ok(m) = e.metadata()
                && let Some(id) = identity(e.path(), &m)
                && !seen_dirs.borrow_mut().insert(id)
            {
                left_out.borrow_mut().push(Skipped {
                    path: e.path().to_path_buf(),
                    reason: "a second link to a folder already scanned".into(),
                });
                return false;
            }
            true
        });
    for entry in walk {
        match entry {
            Ok(e) => {
                if !e.file_type().is_file() {
                    continue;
                }
                if !is_image_path(e.path()) {
                    out.ignored.push(Skipped {
                        reason: not_an_image_reason(e.path()),
                        path: e.into_path(),
                    });
                    continue;
                }
                let id = e.metadata().ok().and_then(|m| identity(e.path(), &m));
                match id {
                    Some(id) if !seen_files.insert(id) => out.ignored.push(Skipped {
                        path: e.path().to_path_buf(),
                        reason: "a second link to a file already included".into(),
                    }),
                    _ => out.files.push(e.into_path()),
                }
            }
            Err(err) => match walk_error(&err) {
                (true, s) => out.ignored.push(s),
                (false, s) => out.skipped.push(s),
            },
        }
    }
    out.ignored.extend(left_out.into_inner());
    out.ignored.sort_by(|a, b| a.path.cmp(&b.path));
    out.files.sort();
    Ok(out)
}

/// What a walk error means for the person: (ignored on purpose?, the entry and why).
fn walk_error(err: &walkdir::Error) -> (bool, Skipped) {
    let path = err.path().map(Path::to_path_buf).unwrap_or_default();
    if let Some(ancestor) = err.loop_ancestor() {
        let reason = format!(
            "symbolic link back to an enclosing folder ({}): its files are already included",
            super::display_path(ancestor)
        );
        return (true, Skipped { path, reason });
    }
    let dangling = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink())
        && std::fs::metadata(&path).is_err();
    let reason = if dangling {
        "dangling symbolic link (its target does not exist)".to_string()
    } else {
        let why = err
            .io_error()
            .map_or_else(|| err.to_string(), ToString::to_string);
        format!("not readable: {why}")
    };
    (false, Skipped { path, reason })
}

/// One decoded file at the working size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// `size × size × 3` bytes, row-major RGB.
    pub pixels: Vec<u8>,
    /// Why only part of the file could be used, when that is so.
    pub partial: Option<String>,
}

/// Why a file gave no image: it could not be read (the image cache does not remember that:
/// permissions may change without the file's times), or what its bytes are.
enum Failure {
    Io(String),
    Content(String),
}

impl Failure {
    fn reason(self) -> String {
        match self {
            Self::Io(r) | Self::Content(r) => r,
        }
    }
}

/// Decodes one file into `size × size` RGB bytes, or says why it cannot.
///
/// The header decides first: a side over [`MAX_SIDE`] or more than [`MAX_DECODE_BYTES`] of
/// pixels is refused before any pixel is allocated. The centre square is cropped in source
/// coordinates and only then resized, so time and memory do not depend on the aspect ratio.
///
/// # Errors
/// A sentence for people: unreadable, empty, too large, not an image, or not a valid one.
pub fn decode_to_size(path: &Path, size: u32) -> Result<Decoded, String> {
    decode_file(path, size).map_err(Failure::reason)
}

fn decode_file(path: &Path, size: u32) -> Result<Decoded, Failure> {
    let mut file =
        std::fs::File::open(path).map_err(|e| Failure::Io(format!("cannot open: {e}")))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Err(Failure::Content("empty file".into()));
    }
    if len > MAX_FILE_BYTES {
        return Err(Failure::Content(format!(
            "file too large ({} MiB; files up to {} MiB are read)",
            len >> 20,
            MAX_FILE_BYTES >> 20
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.by_ref()
        .take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Io(format!("cannot read: {e}")))?;
    decode_bytes(&bytes, size).map_err(Failure::Content)
}

/// [`decode_to_size`] on the bytes of a file already in memory.
///
/// # Errors
/// As [`decode_to_size`].
pub fn decode_bytes(bytes: &[u8], size: u32) -> Result<Decoded, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    // A complete JPEG at least twice the working size (a camera photo): read and decoded by
    // libjpeg alone, at a reduced DCT scale, never at full resolution. Anything else, or
    // anything libjpeg declines, takes the general path below.
    if let Some((img, orientation)) = decode_jpeg_scaled(bytes, size) {
        return Ok(Decoded {
            pixels: to_working_size(img, orientation, size),
            partial: None,
        });
    }
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let format = reader.format();
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(describe_image_error)?;
    let (w, h) = decoder.dimensions();
    check_limits(w, h, decoder.total_bytes(), decoder.color_type())?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let complete = format != Some(ImageFormat::Jpeg) || jpeg_is_complete(bytes);
    let img = DynamicImage::from_decoder(decoder).map_err(describe_image_error)?;
    let partial = (!complete).then(|| {
        "partly decoded: the file ends before the image does (the missing part is grey)".into()
    });
    Ok(Decoded {
        pixels: to_working_size(img, orientation, size),
        partial,
    })
}

/// Whether a `w × h` image of `color`, `total` bytes decoded, stays within [`MAX_SIDE`] and
/// [`MAX_DECODE_BYTES`] (with what cropping and converting it needs); the reason when not.
fn check_limits(w: u32, h: u32, total: u64, color: image::ColorType) -> Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("not a valid image: {w}×{h} pixels"));
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(too_large(&format!("{w}×{h} px")));
    }
    let extra = working_bytes(w, h, color);
    if total.saturating_add(extra) > MAX_DECODE_BYTES {
        let mib = |b: u64| b.div_ceil(1 << 20);
        let also = if extra > 0 {
            format!(" + {} MiB to crop and convert", mib(extra))
        } else {
            String::new()
        };
        return Err(too_large(&format!(
            "{w}×{h} px, {} MiB decoded{also}",
            mib(total)
        )));
    }
    Ok(())
}

/// A decoded image's centre square at `size × size` in 8-bit RGB, oriented for display.
fn to_working_size(
    img: DynamicImage,
    orientation: image::metadata::Orientation,
    size: u32,
) -> Vec<u8> {
    let square = centre_square(img);
    // The centre square of an oriented image is the oriented centre square.
    let mut oriented = DynamicImage::ImageRgb8(fill_square(&to_rgb8(square), size));
    oriented.apply_orientation(orientation);
    oriented.into_rgb8().into_raw()
}

/// A complete JPEG whose short side is at least twice `size`, decoded by libjpeg-turbo (through
/// mozjpeg) at the smallest DCT scale (1/8, 1/4, 1/2) whose short side is still at least
/// `size`, as 8-bit RGB or grey, with its EXIF orientation (the last EXIF segment's, as the
/// image crate reads it). `None` when that is not possible here: not a JPEG, cut short (the
/// general path decodes what there is and says so), too small, over the limits (the general
/// path says why), CMYK, a coding process or precision this build of libjpeg does not decode,
/// an error.
///
/// libjpeg reports a fatal error by unwinding out of its error handler (mozjpeg's, through
/// `resume_unwind`, so no panic message is printed); it is caught here, and any panic of the
/// wrapper with it, so a damaged file is never more than a `None`.
pub fn decode_jpeg_scaled(
    bytes: &[u8],
    size: u32,
) -> Option<(DynamicImage, image::metadata::Orientation)> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let (img, orientation) = std::panic::catch_unwind(|| libjpeg_scaled(bytes, size))
        .ok()
        .flatten()?;
    (img.width().min(img.height()) >= size).then_some((img, orientation))
}

/// A JPEG's bytes as libjpeg reads them, noting whether it asked for more than there is (a file
/// cut short: libjpeg then sees an end marker and fills the rest grey). This is how the libjpeg
/// path knows a file is complete without [`jpeg_is_complete`]'s pass over every byte.
struct Watched<'a> {
    rest: &'a [u8],
    ran_out: bool,
}

impl std::io::Read for Watched<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.ran_out |= self.rest.is_empty() && !buf.is_empty();
        self.rest.read(buf)
    }
}

impl std::io::BufRead for Watched<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.ran_out |= self.rest.is_empty();
        Ok(self.rest)
    }

    fn consume(&mut self, n: usize) {
        self.rest = self.rest.get(n..).unwrap_or_default();
    }
}

/// [`decode_jpeg_scaled`]'s work; it may unwind (libjpeg's fatal errors).
fn libjpeg_scaled(bytes: &[u8], size: u32) -> Option<(DynamicImage, image::metadata::Orientation)> {
    use image::ColorType;
    use mozjpeg::ColorSpace as C;
    let source = Watched {
        rest: bytes,
        ran_out: false,
    };
    let mut d = mozjpeg::Decompress::with_markers(&[mozjpeg::Marker::APP(1)])
        .from_reader(source)
        .ok()?;
    let (w, h) = (
        u32::try_from(d.width()).ok()?,
        u32::try_from(d.height()).ok()?,
    );
    let color = match d.color_space() {
        C::JCS_GRAYSCALE => ColorType::L8,
        C::JCS_YCbCr | C::JCS_RGB => ColorType::Rgb8,
        _ => return None,
    };
    // The general path's limits: what they refuse is left to it, to be refused with its reasons.
    let decoded = u64::from(w) * u64::from(h) * u64::from(color.bytes_per_pixel());
    check_limits(w, h, decoded, color).ok()?;
    let short = u64::from(w.min(h));
    if short < 2 * u64::from(size) {
        return None;
    }
    // libjpeg rounds a scaled side up: ⌈side · n / 8⌉.
    let n = [1u8, 2, 4]
        .into_iter()
        .find(|&n| (short * u64::from(n)).div_ceil(8) >= u64::from(size))?;
    let orientation = d
        .markers()
        .filter_map(|m| m.data.strip_prefix(b"Exif\0\0"))
        .filter(|exif| !exif.is_empty())
        .last()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    d.scale(n);
    // What Pillow's `draft()` asks of libjpeg too: the fast integer IDCT and box upsampling of
    // chroma. At these scales the image is resized down afterwards, which hides the difference.
    d.dct_method(mozjpeg::DctMethod::IntegerFast);
    d.do_fancy_upsampling(false);
    let mut s = if color == ColorType::L8 {
        d.grayscale()
    } else {
        d.rgb()
    }
    .ok()?;
    let (sw, sh) = (
        u32::try_from(s.width()).ok()?,
        u32::try_from(s.height()).ok()?,
    );
    let pixels = s.read_scanlines::<u8>().ok()?;
    // Through the end marker: a file cut short has made libjpeg ask for more by now.
    if s.finish_into_inner().ok()?.ran_out {
        return None;
    }
    if color == ColorType::L8 {
        image::GrayImage::from_raw(sw, sh, pixels).map(DynamicImage::ImageLuma8)
    } else {
        RgbImage::from_raw(sw, sh, pixels).map(DynamicImage::ImageRgb8)
    }
    .map(|img| (img, orientation))
}

/// Bytes a decode needs besides the decoded pixels: the centre square's copy (for an image that
/// is not square) and its conversion to 8-bit RGB (none for 8-bit RGB and RGBA, which are
/// converted in place). The decode limit counts them, so one image never needs more than
/// [`MAX_DECODE_BYTES`] in all.
fn working_bytes(w: u32, h: u32, color: image::ColorType) -> u64 {
    use image::ColorType as C;
    let s = u64::from(w.min(h));
    let crop = if w == h {
        0
    } else {
        s * s * u64::from(color.bytes_per_pixel())
    };
    let convert = match color {
        C::Rgb8 | C::Rgba8 => 0,
        c if c.has_alpha() => s * s * 4,
        _ => s * s * 3,
    };
    crop + convert
}

fn too_large(what: &str) -> String {
    format!(
        "too large to decode safely ({what}; limits: {MAX_SIDE} px a side, {} MiB)",
        MAX_DECODE_BYTES >> 20
    )
}

fn describe_image_error(e: image::ImageError) -> String {
    match e {
        image::ImageError::Limits(l) => too_large(&l.to_string()),
        image::ImageError::Unsupported(u) => format!("not a supported image: {u}"),
        other => format!("not a valid image: {other}"),
    }
}

/// The centre square of an image, in its own pixel format (no copy when it is square).
fn centre_square(img: DynamicImage) -> DynamicImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img;
    }
    let s = w.min(h);
    img.crop_imm((w - s) / 2, (h - s) / 2, s, s)
}

/// Whether a JPEG's bytes reach its end-of-image marker: segments are walked from the start
/// and entropy-coded data scanned for markers, so an EXIF thumbnail's own end marker or data
/// appended after the image (motion photos) do not mislead. Not a JPEG: true.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return true;
    }
    let mut i = 2;
    loop {
        // The next marker: 0xFF (fill bytes allowed), then its code.
        let Some(k) = b.get(i..).and_then(|r| r.iter().position(|&x| x == 0xFF)) else {
            return false;
        };
        i += k;
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = b.get(i) else {
            return false;
        };
        i += 1;
        match code {
            0xD9 => return true,
            0x00 | 0x01 | 0xD0..=0xD7 => {}
            _ => {
                let Some(len) = b
                    .get(i..i + 2)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                else {
                    return false;
                };
                if len < 2 || i + len > b.len() {
                    return false;
                }
                i += len;
                if code == 0xDA {
                    // Entropy-coded data: 0xFF 0x00 is a stuffed byte, 0xFF 0xD0..D7 a restart.
                    loop {
                        let Some(k) = b.get(i..).and_then(|r| r.iter().position(|&x| x == 0xFF))
                        else {
                            return false;
                        };
                        i += k;
                        match b.get(i + 1) {
                            None => return false,
                            Some(0x00 | 0xD0..=0xD7) => i += 2,
                            Some(0xFF) => i += 1,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

/// Any pixel format (grey, 16-bit, palette, with or without alpha) to 8-bit RGB; transparent
/// pixels are composited onto a neutral grey. 8-bit RGB is returned as it is and 8-bit RGBA is
/// composited in place (no second buffer).
pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut buf = rgba.into_raw();
    let pixels = buf.len() / 4;
    for i in 0..pixels {
        // Pixel i is read whole before its RGB is written at 3i, which never reaches pixel i+1.
        let a = u32::from(buf[4 * i + 3]);
        for c in 0..3 {
            let v = (u32::from(buf[4 * i + c]) * a + u32::from(BACKGROUND) * (255 - a) + 127) / 255;
            buf[3 * i + c] = v as u8;
        }
    }
    buf.truncate(3 * pixels);
    RgbImage::from_raw(w, h, buf).unwrap_or_else(|| RgbImage::new(w, h))
}

/// Crops the centre square, then resizes it to `size × size`.
pub fn fill_square(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == size && h == size {
        return img.clone();
    }
    let s = w.min(h);
    let square = image::imageops::crop_imm(img, (w - s) / 2, (h - s) / 2, s, s);
    if s == size {
        return square.to_image();
    }
    image::imageops::resize(&*square, size, size, FilterType::Triangle)
}

/// The first-level folder of an image (its class), when it sits in one.
fn class_key(rel: &Path) -> Option<OsString> {
    let mut c = rel.components();
    let first = c.next()?;
    c.next()?;
    Some(first.as_os_str().to_os_string())
}

/// Decodes the files at `todo` (indices into `files`) in parallel at the working size; `None`
/// for files not decoded because loading was cancelled. Progress counts on from `done_before`;
/// the first images decoded are offered to the glimpse.
fn decode_some(
    files: &[PathBuf],
    rel: &[PathBuf],
    todo: &[usize],
    size: usize,
    done_before: usize,
    options: &LoadOptions<'_>,
) -> Vec<Option<Result<Decoded, Failure>>> {
    let total = files.len();
    (options.progress)(done_before, total);
    let done = AtomicUsize::new(done_before);
    let side = u32::try_from(size).unwrap_or(u32::MAX);
    todo.par_iter()
        .map(|&i| {
            if options.cancel.load(Ordering::Relaxed) {
                return None;
            }
            let r = decode_file(&files[i], side);
            if let (Some(g), Ok(d)) = (options.glimpse, &r)
                && g.wants_more()
            {
                g.offer(size, || display_os(rel[i].as_os_str()), &d.pixels);
            }
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            (options.progress)(n, total);
            Some(r)
        })
        .collect()
}

/// Labels and displayed class names from each image's class key: classes keep their identity
/// (the folder name's bytes); only their display is lossy, and never ambiguous.
fn classes(class_of: &[OsString]) -> (Vec<u32>, Vec<String>) {
    let classes: BTreeMap<&OsString, u32> = class_of
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c, i as u32))
        .collect();
    let labels = class_of.iter().map(|c| classes[c]).collect();
    let mut shown: Vec<String> = classes.keys().map(|c| display_os(c)).collect();
    disambiguate(&mut shown);
    (labels, shown)
}

/// Loads a folder without the image cache: scan, decode in parallel, labels from first-level
/// subfolders.
///
/// # Errors
/// As [`scan`]; [`DataError::NoImages`] when nothing could be decoded, [`DataError::Cancelled`]
/// when `cancel` was set.
pub fn load_folder(
    root: &Path,
    size: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
    cancel: &AtomicBool,
) -> Result<Dataset, DataError> {
    load_folder_with(
        root,
        size,
        &LoadOptions {
            cache: None,
            progress,
            cancel,
            glimpse: None,
        },
    )
}

/// What became of one file.
enum Outcome<'c> {
    Remembered(Remembered<'c>),
    Decoded(Result<Decoded, Failure>),
}

/// What the cache will remember of one file: image `k` of the data set, or why it is unusable.
enum Keep {
    Image { k: usize, partial: Option<String> },
    Unusable(String),
}

/// Loads a folder: scan, take from the image cache what it holds for files unchanged since
/// (when `options.cache` names its folder), decode the rest in parallel, labels from
/// first-level subfolders; then write the cache back if anything changed.
///
/// # Errors
/// As [`scan`]; [`DataError::NoImages`] when nothing could be decoded, [`DataError::Cancelled`]
/// when `options.cancel` was set. A cache that cannot be read or written is no error: the
/// folder loads all the same, and [`CacheUse::note`] says what happened.
pub fn load_folder_with(
    root: &Path,
    size: usize,
    options: &LoadOptions<'_>,
) -> Result<Dataset, DataError> {
    let Scan {
        files,
        mut skipped,
        ignored,
    } = scan(root)?;
    let total = files.len();
    let rel: Vec<PathBuf> = files
        .iter()
        .map(|p| p.strip_prefix(root).unwrap_or(p).to_path_buf())
        .collect();
    let rel_bytes = |i: usize| rel[i].as_os_str().as_encoded_bytes();

    // What the cache remembers of files whose stamp has not changed. The stamp is taken before
    // decoding: a file that changes while it decodes is stored under its older stamp, and so
    // decoded again next time.
    let cache = options.cache.map(|dir| Cache::open(dir, root, size));
    let stamps: Vec<Option<Stamp>> = match &cache {
        Some(_) => files
            .par_iter()
            .map(|p| std::fs::metadata(p).ok().map(|m| Stamp::of(&m)))
            .collect(),
        None => vec![None; total],
    };
    let remembered: Vec<Option<Remembered<'_>>> = (0..total)
        .map(|i| {
            let (c, s) = (cache.as_ref()?, stamps[i]?);
            c.get(rel_bytes(i), s)
        })
        .collect();
    let hits = remembered.iter().flatten().count();
    if let Some(g) = options.glimpse {
        for (i, r) in remembered.iter().enumerate() {
            if !g.wants_more() {
                break;
            }
            if let Some(Remembered::Image { pixels, .. }) = r {
                g.offer(size, || display_os(rel[i].as_os_str()), pixels);
            }
        }
    }
    let todo: Vec<usize> = (0..total).filter(|&i| remembered[i].is_none()).collect();
    let mut decoded = decode_some(&files, &rel, &todo, size, hits, options).into_iter();
    if options.cancel.load(Ordering::Relaxed) {
        return Err(DataError::Cancelled);
    }
    let mut outcomes = Vec::with_capacity(total);
    for r in &remembered {
        outcomes.push(match r {
            Some(r) => Outcome::Remembered(*r),
            None => match decoded.next().flatten() {
                Some(d) => Outcome::Decoded(d),
                None => return Err(DataError::Cancelled),
            },
        });
    }

    // Labels: ImageFolder layout when every image sits inside a first-level subfolder.
    let labelled = !rel.is_empty() && rel.iter().all(|r| class_key(r).is_some());

    let mut pixels = Vec::with_capacity(total * size * size * 3);
    let mut names = Vec::with_capacity(total);
    let mut paths = Vec::with_capacity(total);
    let mut partial = Vec::new();
    let mut class_of: Vec<OsString> = Vec::with_capacity(total);
    let mut keep: Vec<(usize, Keep)> = Vec::new();
    let mut new_entries = 0usize;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let (image, unusable, cacheable) = match outcome {
            Outcome::Remembered(Remembered::Image { pixels, partial }) => (
                Some((
                    std::borrow::Cow::Borrowed(pixels),
                    partial.map(str::to_owned),
                )),
                None,
                true,
            ),
            Outcome::Remembered(Remembered::Unusable(why)) => (None, Some(why.to_owned()), true),
            Outcome::Decoded(Ok(d)) => {
                new_entries += 1;
                (
                    Some((std::borrow::Cow::Owned(d.pixels), d.partial)),
                    None,
                    true,
                )
            }
            Outcome::Decoded(Err(Failure::Content(why))) => {
                new_entries += 1;
                (None, Some(why), true)
            }
            Outcome::Decoded(Err(Failure::Io(why))) => (None, Some(why), false),
        };
        let cacheable = cacheable && stamps[i].is_some();
        let path = &files[i];
        if let Some((px, part)) = image {
            if cacheable {
                keep.push((
                    i,
                    Keep::Image {
                        k: names.len(),
                        partial: part.clone(),
                    },
                ));
            }
            pixels.extend_from_slice(&px);
            if let Some(reason) = part {
                partial.push(Skipped {
                    path: path.clone(),
                    reason,
                });
            }
            names.push(display_os(rel[i].as_os_str()));
            paths.push(path.clone());
            if labelled {
                class_of.push(class_key(&rel[i]).unwrap_or_default());
            }
        } else if let Some(reason) = unusable {
            if cacheable {
                keep.push((i, Keep::Unusable(reason.clone())));
            }
            skipped.push(Skipped {
                path: path.clone(),
                reason,
            });
        }
    }
    if names.is_empty() {
        return Err(DataError::NoImages {
            path: root.to_path_buf(),
            skipped,
            ignored,
        });
    }
    disambiguate(&mut names);
    let (labels, class_names) = if labelled {
        let (labels, names) = classes(&class_of);
        (Some(labels), names)
    } else {
        (None, Vec::new())
    };
    let mut data = Dataset::from_parts(
        DataSource::Folder(root.to_path_buf()),
        size,
        pixels,
        names,
        labels,
        class_names,
        skipped,
    );
    data.ignored = ignored;
    data.partial = partial;
    data.paths = paths;

    if let Some(cache) = &cache {
        // Written back when a file is new or changed, or one it remembered is gone.
        let changed = new_entries > 0 || hits != cache.len();
        let mut note = cache.note.clone();
        if changed {
            let entries: Vec<(&[u8], Stamp, Remembered<'_>)> = keep
                .iter()
                .filter_map(|(i, k)| {
                    let what = match k {
                        Keep::Image { k, partial } => Remembered::Image {
                            pixels: data.image(*k),
                            partial: partial.as_deref(),
                        },
                        Keep::Unusable(why) => Remembered::Unusable(why),
                    };
                    Some((rel_bytes(*i), stamps[*i]?, what))
                })
                .collect();
            if let Err(e) = cache.write(&entries) {
                note = Some(format!(
                    "not written to {} ({e}); the next opening decodes again",
                    cache.path().display()
                ));
            }
        } else {
            cache.touch();
        }
        data.cache = Some(CacheUse {
            hits,
            decoded: todo.len(),
            note,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_square_crops_the_centre() {
        // 40x20 image: left half black, right half white -> the centre 20x20 square, at 10.
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

    #[test]
    fn jpeg_end_is_found_past_thumbnails_and_stuffing() {
        // SOI, an APP1 segment holding an end marker, SOS, data with stuffing and a restart.
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00];
        j.extend([
            0xFF, 0xDA, 0x00, 0x03, 0x01, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56,
        ]);
        assert!(!jpeg_is_complete(&j), "no end marker yet");
        j.extend([0xFF, 0xD9]);
        assert!(jpeg_is_complete(&j));
        j.extend(b"appended video");
        assert!(
            jpeg_is_complete(&j),
            "data after the end is not a truncation"
        );
        assert!(!jpeg_is_complete(&j[..7]), "cut inside a segment");
        assert!(jpeg_is_complete(b"\x89PNG"), "not a JPEG");
    }

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let ripple = ((x / 40 + y / 40) % 2) as f32 * 40.0;
            image::Rgb([
                (200.0 * fx + ripple) as u8,
                (180.0 * fy + 30.0) as u8,
                (120.0 + 100.0 * (fx * 9.0).sin() * (fy * 7.0).cos()) as u8,
            ])
        })
    }

    fn jpeg(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(img)
            .unwrap();
        out
    }

    fn mean_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(x.abs_diff(y)))
            .sum::<f64>()
            / a.len() as f64
    }

    /// A camera-sized JPEG: libjpeg's scaled decode gives the smallest DCT scale whose short side
    /// is still the working size, and about the pixels of the full decode resized to that size.
    #[test]
    fn camera_jpegs_decode_at_a_dct_scale_close_to_the_full_decode() {
        let (w, h) = (4000, 3000);
        let colour = DynamicImage::ImageRgb8(photo(w, h));
        let grey = DynamicImage::ImageLuma8(colour.to_luma8());
        for img in [colour, grey] {
            let bytes = jpeg(&img);
            let full = image::load_from_memory(&bytes).unwrap();
            for (size, scaled) in [
                (32, (500, 375)),
                (375, (500, 375)),
                (376, (1000, 750)),
                (1000, (2000, 1500)),
            ] {
                let (small, _) = decode_jpeg_scaled(&bytes, size).unwrap();
                assert_eq!(small.dimensions(), scaled, "{size} px");
                assert_eq!(small.color(), full.color(), "{size} px");
                let reference = full.resize_exact(scaled.0, scaled.1, FilterType::Triangle);
                let d = mean_diff(small.as_bytes(), reference.as_bytes());
                assert!(d < 3.0, "{size} px, {:?}: mean difference {d}", img.color());
            }
            // Not twice the working size: no scale would do.
            assert!(decode_jpeg_scaled(&bytes, 1501).is_none());
        }
    }

    /// A CMYK JPEG is not decoded at a DCT scale but at full size, through the image crate.
    #[test]
    fn cmyk_jpegs_fall_back_to_the_full_decode() {
        let (w, h) = (96, 64);
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_CMYK);
        c.set_size(w, h);
        let mut c = c.start_compress(Vec::new()).unwrap();
        let cmyk: Vec<u8> = (0..w * h)
            .flat_map(|i| [(i % 251) as u8, 40, 200, 10])
            .collect();
        c.write_scanlines(&cmyk).unwrap();
        let bytes = c.finish().unwrap();
        assert!(decode_jpeg_scaled(&bytes, 16).is_none());
        let d = decode_bytes(&bytes, 16).unwrap();
        assert_eq!(d.pixels.len(), 16 * 16 * 3);
    }

    /// Damaged JPEGs (header fields changed, data flipped, cut short) give an image or `None`,
    /// never a panic or an abort: libjpeg's fatal errors unwind out of the C code and are caught.
    #[test]
    fn damaged_jpegs_never_panic_in_the_scaled_decode() {
        let (w, h) = (640u32, 480u32);
        let good = jpeg(&DynamicImage::ImageRgb8(photo(w, h)));
        let sof = good.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
        let sos = good.windows(2).position(|m| m == [0xFF, 0xDA]).unwrap();
        // 12-bit samples: a fatal error in libjpeg's header reading (8-bit build).
        let mut twelve = good.clone();
        twelve[sof + 4] = 12;
        let header = std::panic::catch_unwind(|| mozjpeg::Decompress::new_mem(&twelve).is_ok());
        assert!(header.is_err(), "libjpeg's fatal errors unwind");
        assert!(decode_jpeg_scaled(&twelve, 32).is_none());
        let mut cases = vec![twelve];
        for field in [
            sof + 2,
            sof + 4,
            sof + 9,
            sof + 10,
            sof + 11,
            sos + 4,
            sos + 6,
        ] {
            for v in [0u8, 1, 3, 0x44, 0xFF] {
                let mut b = good.clone();
                b[field] = v;
                cases.push(b);
            }
        }
        for k in 1..40 {
            let mut b = good.clone();
            let at = sos + (good.len() - sos) * k / 40;
            b[at] ^= 0x5A;
            cases.push(b.clone());
            b.truncate(at);
            cases.push(b);
        }
        for b in &cases {
            if let Some((img, _)) = decode_jpeg_scaled(b, 32) {
                assert!(img.width().min(img.height()) >= 32);
            }
            let _ = decode_bytes(b, 32);
        }
        // A file cut short anywhere is left to the general path, which says it is partial; data
        // after the end marker (motion photos) is no truncation.
        assert!(decode_jpeg_scaled(&good, 32).is_some());
        for k in 0..40 {
            let cut = &good[..sof + (good.len() - 1 - sof) * k / 40];
            assert!(
                decode_jpeg_scaled(cut, 32).is_none(),
                "cut at {}",
                cut.len()
            );
            let d = decode_bytes(cut, 32);
            assert!(
                d.is_err() || d.is_ok_and(|d| d.partial.is_some()),
                "cut at {}",
                cut.len()
            );
        }
        let mut longer = good.clone();
        longer.extend_from_slice(b"\0\0\0\x18ftypmp42 appended video");
        assert!(decode_jpeg_scaled(&longer, 32).is_some());
    }
}
