//! The working-size image cache: a folder's decoded pixels kept on disk, so the next opening of
//! the same folder at the same working size decodes only the files that changed.
//!
//! # Where
//!
//! `PRETEXT_CACHE_DIR` when set (tests use it), else the platform's cache folder:
//! `$XDG_CACHE_HOME/pretext/images` or `~/.cache/pretext/images` (Linux and other Unix),
//! `~/Library/Caches/pretext/images` (macOS), `%LOCALAPPDATA%\pretext\cache\images` (Windows).
//! `pretext cache` says where it is and how large; `pretext cache --clear` and the app's
//! "Clear image cache" remove it. Only files named like the cache's own (`*.pxc` and their
//! temporary files) are ever read, counted or removed there.
//!
//! # Key
//!
//! One file per (canonical folder path, pixel key): the pixel key names everything that
//! decides a file's working-size pixels — the working size, EXIF orientation, the background
//! of transparent pixels, the crop, the resize filter, and the version of the decoding code
//! ([`Preprocessing::pixel_key`]). The file is named by a 64-bit FNV-1a hash of that key and
//! holds the whole key, which must match byte for byte (a hash collision reads as a foreign
//! file). Inside, one entry per file of the folder, keyed by its path relative to the folder
//! (its bytes), its size, its modification time and (Unix) its status-change time, both in
//! nanoseconds: a file edited, touched, replaced (even by one of the same size with its old
//! modification time restored) or renamed no longer matches and is decoded again. An entry
//! holds the decoded pixels, or the reason a file could not be used (so broken files are not
//! decoded again either); files that could not be opened or read are not remembered (their
//! permissions may change without their times). Labels and display names are not stored:
//! they are recomputed from the paths.
//!
//! # Format (version 1; integers little-endian)
//!
//! ```text
//! magic      8 bytes  "pretext\x1c"
//! version    u32      1
//! size       u32      working size (pixels are size × size × 3 bytes, RGB)
//! key_len    u32      then the key: folder path bytes, 0, pixel key (UTF-8)
//! count      u32      entries
//! entry × count:
//!   path_len u32      then the path relative to the folder (bytes)
//!   len      u64      file size in bytes
//!   mtime    i64      modification time, ns since 1970
//!   ctime    i64      status-change time, ns since 1970 (0 where there is none)
//!   kind     u8       0 image, 1 image partly decoded, 2 not usable
//!   reason   u32 + bytes (UTF-8; empty for kind 0)
//!   pixels   size × size × 3 bytes (kinds 0 and 1)
//! crc32      u32      of every byte before it
//! ```
//!
//! # Safety
//!
//! A file is written to a temporary file in the same folder, flushed to disk and renamed over
//! the old one, so a reader sees the old file or the new one, never half of one. A file that is
//! truncated, fails its checksum, has another magic, version, size or key, or does not parse
//! to its last byte is ignored as if absent (and rewritten after the load); reading never
//! panics and never allocates more than the file's own length. A file is at most
//! [`MAX_FILE_BYTES`] (a larger folder is loaded but not cached), and after each write the
//! least recently used files are removed until the folder holds at most [`MAX_TOTAL_BYTES`].

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::preprocess::Preprocessing;

/// First bytes of every cache file.
pub const MAGIC: [u8; 8] = *b"pretext\x1c";
/// Format version: a file of another version is ignored (and rewritten).
pub const VERSION: u32 = 1;
/// Extension of cache files: the only files the cache reads, counts or removes.
pub const EXTENSION: &str = "pxc";
/// The environment variable that names the cache folder.
pub const ENV_DIR: &str = "PRETEXT_CACHE_DIR";
/// Largest cache file written or read (2 GiB: 10,000 images at 256 px).
pub const MAX_FILE_BYTES: u64 = 2 << 30;
/// Most bytes the cache folder keeps: after a write, the least recently used files go first.
pub const MAX_TOTAL_BYTES: u64 = 8 << 30;

/// The platform's cache folder for images, or `dir` when given, or `PRETEXT_CACHE_DIR` when
/// set; `None` when no home folder is known.
pub fn location(dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(d) = dir {
        return Some(d.to_path_buf());
    }
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(d) = var(ENV_DIR) {
        return Some(PathBuf::from(d));
    }
    if cfg!(windows) {
        return var("LOCALAPPDATA").map(|d| PathBuf::from(d).join("pretext/cache/images"));
    }
    if cfg!(target_os = "macos") {
        return var("HOME").map(|h| PathBuf::from(h).join("Library/Caches/pretext/images"));
    }
    var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("pretext/images"))
}

/// The cache folder a load with `config` uses, `None` when it uses none (`--no-cache`).
pub fn for_config(config: &crate::config::TrainConfig) -> Option<PathBuf> {
    if config.cache {
        location(config.cache_dir.as_deref())
    } else {
        None
    }
}

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    /// Modification time, ns since 1970.
    pub mtime_ns: i64,
    /// Status-change time (Unix), ns since 1970; 0 elsewhere.
    pub ctime_ns: i64,
}

fn nanos(t: &std::io::Result<SystemTime>) -> i64 {
    let Ok(t) = *t else { return 0 };
    let ns = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
}

impl Stamp {
    /// The stamp of a file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let ctime_ns = {
            use std::os::unix::fs::MetadataExt;
            meta.ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec())
        };
        #[cfg(not(unix))]
        let ctime_ns = 0;
        Self {
            len: meta.len(),
            mtime_ns: nanos(&meta.modified()),
            ctime_ns,
        }
    }
}

/// What is remembered of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remembered<'a> {
    /// Its working-size pixels, and why only part of it decoded when that is so.
    Image {
        pixels: &'a [u8],
        partial: Option<&'a str>,
    },
    /// Why it could not be used.
    Unusable(&'a str),
}

const KIND_IMAGE: u8 = 0;
const KIND_PARTIAL: u8 = 1;
const KIND_UNUSABLE: u8 = 2;

/// One entry as found in a file: where its parts are in the file's bytes.
struct Entry {
    stamp: Stamp,
    kind: u8,
    reason: std::ops::Range<usize>,
    pixels: std::ops::Range<usize>,
}

/// The cache of one folder at one working size, as read from its file.
pub struct Cache {
    path: PathBuf,
    key: Vec<u8>,
    size: usize,
    bytes: Vec<u8>,
    entries: HashMap<Vec<u8>, Entry>,
    /// Why the file that was there could not be used, when it could not.
    pub note: Option<String>,
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The key of folder `root` (canonical) under `pixel_key`.
fn key(root: &Path, pixel_key: &str) -> Vec<u8> {
    let mut k = root.as_os_str().as_encoded_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(pixel_key.as_bytes());
    k
}

/// The cache file of folder `root` at working size `size` in cache folder `dir`.
pub fn file_for(dir: &Path, root: &Path, size: usize) -> PathBuf {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    file_for_key(dir, &key(&root, &Preprocessing::at_size(size).pixel_key()))
}

/// The cache file for a key: its hash in hex.
fn file_for_key(dir: &Path, key: &[u8]) -> PathBuf {
    dir.join(format!("{:016x}.{EXTENSION}", fnv1a(key)))
}

/// A bounds-checked reader over a file's bytes: every read says `None` past the end.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<std::ops::Range<usize>> {
        let end = self.at.checked_add(n)?;
        (end <= self.b.len()).then(|| {
            let r = self.at..end;
            self.at = end;
            r
        })
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let r = self.take(N)?;
        self.b.get(r)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }
    /// A u32 length, then that many bytes.
    fn counted(&mut self) -> Option<std::ops::Range<usize>> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }
}

/// Parses a whole file; `Err` says why it cannot be used.
fn parse(bytes: &[u8], key: &[u8], size: usize) -> Result<HashMap<Vec<u8>, Entry>, &'static str> {
    let Some(body_len) = bytes.len().checked_sub(4) else {
        return Err("truncated");
    };
    let mut r = Reader { b: bytes, at: 0 };
    if r.array::<8>() != Some(MAGIC) {
        return Err("not a pretext cache file");
    }
    if r.u32() != Some(VERSION) {
        return Err("written by another version");
    }
    let body = bytes.get(..body_len).ok_or("truncated")?;
    let stored = bytes
        .get(body_len..)
        .and_then(|c| <[u8; 4]>::try_from(c).ok())
        .map(u32::from_le_bytes);
    if stored != Some(crc32fast::hash(body)) {
        return Err("damaged (checksum mismatch)");
    }
    let mut r = Reader { b: body, at: r.at };
    let bad = "damaged (does not parse)";
    if r.u32().and_then(|s| usize::try_from(s).ok()) != Some(size) {
        return Err("another working size");
    }
    let k = r.counted().ok_or(bad)?;
    if body.get(k) != Some(key) {
        return Err("another folder or preprocessing");
    }
    let count = r.u32().ok_or(bad)?;
    let image_bytes = size * size * 3;
    let mut entries = HashMap::new();
    for _ in 0..count {
        let path = r.counted().ok_or(bad)?;
        let stamp = Stamp {
            len: r.u64().ok_or(bad)?,
            mtime_ns: r.i64().ok_or(bad)?,
            ctime_ns: r.i64().ok_or(bad)?,
        };
        let kind = r.u8().ok_or(bad)?;
        let reason = r.counted().ok_or(bad)?;
        if std::str::from_utf8(body.get(reason.clone()).ok_or(bad)?).is_err() {
            return Err(bad);
        }
        let pixels = match kind {
            KIND_IMAGE | KIND_PARTIAL => r.take(image_bytes).ok_or(bad)?,
            KIND_UNUSABLE => 0..0,
            _ => return Err(bad),
        };
        let path = body.get(path).ok_or(bad)?.to_vec();
        let entry = Entry {
            stamp,
            kind,
            reason,
            pixels,
        };
        if entries.insert(path, entry).is_some() {
            return Err(bad);
        }
    }
    if r.at != body.len() {
        return Err(bad);
    }
    Ok(entries)
}

impl Cache {
    /// The cache of folder `root` at working size `size` in cache folder `dir`: what its file
    /// holds, or nothing when the file is absent, unreadable, damaged or not this folder's
    /// (then [`Cache::note`] says why, except for an absent file).
    pub fn open(dir: &Path, root: &Path, size: usize) -> Self {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let key = key(&root, &Preprocessing::at_size(size).pixel_key());
        let path = file_for_key(dir, &key);
        let mut cache = Self {
            path,
            key,
            size,
            bytes: Vec::new(),
            entries: HashMap::new(),
            note: None,
        };
        let bytes = match read_bounded(&cache.path) {
            Ok(Some(b)) => b,
            Ok(None) => return cache,
            Err(why) => {
                cache.note = Some(format!(
                    "{} was not used ({why}); it is rewritten",
                    cache.path.display()
                ));
                return cache;
            }
        };
        match parse(&bytes, &cache.key, size) {
            Ok(entries) => {
                cache.entries = entries;
                cache.bytes = bytes;
            }
            Err(why) => {
                cache.note = Some(format!(
                    "{} was not used ({why}); it is rewritten",
                    cache.path.display()
                ));
            }
        }
        cache
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many files it remembers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What is remembered of the file at `rel` (relative to the folder), if its stamp is still
    /// `stamp`.
    pub fn get(&self, rel: &[u8], stamp: Stamp) -> Option<Remembered<'_>> {
        let e = self.entries.get(rel).filter(|e| e.stamp == stamp)?;
        let reason = std::str::from_utf8(self.bytes.get(e.reason.clone())?).ok()?;
        Some(match e.kind {
            KIND_UNUSABLE => Remembered::Unusable(reason),
            kind => Remembered::Image {
                pixels: self.bytes.get(e.pixels.clone())?,
                partial: (kind == KIND_PARTIAL).then_some(reason),
            },
        })
    }

    /// Writes `entries` (path relative to the folder, stamp, what to remember) as this
    /// folder's cache file, atomically; then trims the cache folder to [`MAX_TOTAL_BYTES`].
    /// Returns the bytes written.
    ///
    /// # Errors
    /// When the folder cannot be made or written, or the file would exceed
    /// [`MAX_FILE_BYTES`].
    pub fn write(&self, entries: &[(&[u8], Stamp, Remembered<'_>)]) -> std::io::Result<u64> {
        let image_bytes = self.size * self.size * 3;
        let mut total: u64 = 8 + 4 + 4 + 4 + self.key.len() as u64 + 4 + 4;
        for (rel, _, what) in entries {
            total += 4 + rel.len() as u64 + 8 + 8 + 8 + 1 + 4;
            total += match what {
                Remembered::Image { partial, .. } => {
                    image_bytes as u64 + partial.map_or(0, |p| p.len() as u64)
                }
                Remembered::Unusable(why) => why.len() as u64,
            };
        }
        if total > MAX_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "it would take {} (at most {} a folder)",
                gigabytes(total),
                gigabytes(MAX_FILE_BYTES)
            )));
        }
        let too_long = || std::io::Error::other("an entry is longer than 4 GiB");
        let len32 = |n: usize| u32::try_from(n).map_err(|_| too_long());
        let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&len32(self.size)?.to_le_bytes());
        out.extend_from_slice(&len32(self.key.len())?.to_le_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&len32(entries.len())?.to_le_bytes());
        for (rel, stamp, what) in entries {
            out.extend_from_slice(&len32(rel.len())?.to_le_bytes());
            out.extend_from_slice(rel);
            out.extend_from_slice(&stamp.len.to_le_bytes());
            out.extend_from_slice(&stamp.mtime_ns.to_le_bytes());
            out.extend_from_slice(&stamp.ctime_ns.to_le_bytes());
            let (kind, reason, pixels) = match what {
                Remembered::Image {
                    pixels,
                    partial: None,
                } => (KIND_IMAGE, "", Some(*pixels)),
                Remembered::Image {
                    pixels,
                    partial: Some(p),
                } => (KIND_PARTIAL, *p, Some(*pixels)),
                Remembered::Unusable(why) => (KIND_UNUSABLE, *why, None),
            };
            out.push(kind);
            out.extend_from_slice(&len32(reason.len())?.to_le_bytes());
            out.extend_from_slice(reason.as_bytes());
            if let Some(p) = pixels {
                if p.len() != image_bytes {
                    return Err(std::io::Error::other("an image of another size"));
                }
                out.extend_from_slice(p);
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        write_atomic(&self.path, &out)?;
        if let Some(dir) = self.path.parent() {
            trim(dir, MAX_TOTAL_BYTES, &self.path);
        }
        Ok(out.len() as u64)
    }

    /// Marks the file as just used (its modification time), so trimming keeps it longest.
    pub fn touch(&self) {
        if let Ok(f) = std::fs::File::options().write(true).open(&self.path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }
}

/// A file's bytes, `None` when it does not exist; refused when larger than
/// [`MAX_FILE_BYTES`] or not a regular file.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.is_file() {
        return Err("not a file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {}", gigabytes(MAX_FILE_BYTES)));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            use std::io::Read;
            f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)
        })
        .map_err(|e| e.to_string())?;
    Ok(Some(bytes))
}

/// Bytes in GB (powers of 1000), as the cache's messages give them.
fn gigabytes(n: u64) -> String {
    format!("{:.2} GB", n as f64 / 1e9)
}

/// Temporary files of this process get distinct names (two loads of one folder may write at
/// the same time).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes through a temporary file in the same folder, flushed, then renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether a file name is one of the cache's: `<hex>.pxc` or a temporary file of one.
fn is_cache_file(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    let base = name
        .strip_prefix('.')
        .and_then(|n| n.split_once(".tmp-"))
        .map_or(name, |(b, _)| b);
    base.strip_suffix(&format!(".{EXTENSION}"))
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// The cache's own files in `dir`: (path, bytes, last used).
fn cache_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64, SystemTime)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !is_cache_file(&entry.file_name()) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((entry.path(), meta.len(), used));
        }
    }
    Ok(out)
}

/// Removes the least recently used cache files (never `keep`) until `dir` holds at most
/// `max` bytes of them.
fn trim(dir: &Path, max: u64, keep: &Path) {
    let Ok(mut files) = cache_files(dir) else {
        return;
    };
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort_by_key(|f| f.2);
    for (path, len, _) in files {
        if total <= max {
            break;
        }
        if path != keep && std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(len);
        }
    }
}

/// What the cache folder holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub files: usize,
    pub bytes: u64,
}

/// The cache files in `dir` and their bytes.
///
/// # Errors
/// When `dir` exists but cannot be listed.
pub fn usage(dir: &Path) -> std::io::Result<Usage> {
    let files = cache_files(dir)?;
    Ok(Usage {
        files: files.len(),
        bytes: files.iter().map(|f| f.1).sum(),
    })
}

/// Removes every cache file in `dir` (nothing else there); returns what was removed.
///
/// # Errors
/// When `dir` cannot be listed or a cache file cannot be removed (those removed before stay
/// removed).
pub fn clear(dir: &Path) -> std::io::Result<Usage> {
    let mut removed = Usage::default();
    for (path, len, _) in cache_files(dir)? {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                removed.files += 1;
                removed.bytes += len;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_caches_own_names_count() {
        let yes = ["0123456789abcdef.pxc", ".0123456789abcdef.pxc.tmp-12-0"];
        let no = [
            "notes.txt",
            "0123.pxc",
            "0123456789abcdeg.pxc",
            "x.pxc.tmp-1",
        ];
        for n in yes {
            assert!(is_cache_file(std::ffi::OsStr::new(n)), "{n}");
        }
        for n in no {
            assert!(!is_cache_file(std::ffi::OsStr::new(n)), "{n}");
        }
    }

    #[test]
    fn another_size_or_preprocessing_is_another_file() {
        let dir = Path::new("/cache");
        let root = Path::new("/photos");
        assert_ne!(file_for(dir, root, 32), file_for(dir, root, 64));
        let mut p = Preprocessing::at_size(32);
        let a = file_for_key(dir, &key(root, &p.pixel_key()));
        p.background = [0, 0, 0];
        let b = file_for_key(dir, &key(root, &p.pixel_key()));
        p.background = [128; 3];
        p.resize_filter = "lanczos3".into();
        let c = file_for_key(dir, &key(root, &p.pixel_key()));
        assert!(a != b && a != c && b != c);
    }

    #[test]
    fn location_prefers_the_given_folder() {
        let d = Path::new("/somewhere/else");
        assert_eq!(location(Some(d)).as_deref(), Some(d));
    }
}
