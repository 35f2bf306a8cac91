//! The working-size image cache: a second opening decodes nothing and gives the same data; a
//! changed, replaced, removed or new file is noticed; another size is another file; a damaged,
//! foreign or unwritable cache never gives wrong data; `pretext cache --clear` removes it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use image::{DynamicImage, Rgb, RgbImage};
use pretext::data::cache;
use pretext::data::loader::Glimpse;
use pretext::data::{Dataset, LoadOptions, folder};

const SIZE: usize = 16;

fn picture(seed: u32, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 7 + seed * 31) as u8,
            (y * 5 + seed * 17) as u8,
            ((x ^ y) + seed) as u8,
        ])
    })
}

/// Two classes of images (PNG, JPEG with an EXIF orientation, BMP), a text file named .png, a
/// truncated JPEG and an empty file.
fn folder_of_photos(root: &Path) {
    for i in 0..4u32 {
        common::save(
            &root.join(format!("cats/c{i}.png")),
            &DynamicImage::ImageRgb8(picture(i, 40, 30)),
        );
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&picture(9, 64, 48))
        .unwrap();
    common::write(
        &root.join("dogs/rotated.jpg"),
        &common::with_exif_orientation(&jpeg, 6),
    );
    common::write(&root.join("dogs/cut.jpg"), &jpeg[..jpeg.len() * 6 / 10]);
    common::save(
        &root.join("dogs/d.bmp"),
        &DynamicImage::ImageRgb8(picture(5, 20, 20)),
    );
    common::write(&root.join("dogs/notes.png"), b"not a picture\n");
    common::write(&root.join("dogs/empty.jpg"), b"");
}

fn load(root: &Path, dir: &Path, size: usize) -> Dataset {
    load_glimpsed(root, dir, size, None)
}

fn load_glimpsed(root: &Path, dir: &Path, size: usize, glimpse: Option<&Glimpse>) -> Dataset {
    let options = LoadOptions {
        cache: Some(dir),
        progress: &|_, _| {},
        cancel: &AtomicBool::new(false),
        glimpse,
    };
    folder::load_folder_with(root, size, &options).unwrap()
}

fn uncached(root: &Path) -> Dataset {
    folder::load_folder(root, SIZE, &|_, _| {}, &AtomicBool::new(false)).unwrap()
}

/// (hits, decoded) of a load through the cache.
fn use_of(d: &Dataset) -> (usize, usize) {
    let c = d.cache.as_ref().expect("loaded through the cache");
    (c.hits, c.decoded)
}

/// Everything a load gives, pixels included, is the same.
fn assert_same(a: &Dataset, b: &Dataset) {
    assert_eq!(a.names, b.names);
    assert_eq!(a.paths, b.paths);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.class_names, b.class_names);
    assert_eq!(a.skipped, b.skipped);
    assert_eq!(a.partial, b.partial);
    assert_eq!(a.ignored, b.ignored);
    assert_eq!(a.size, b.size);
    for i in 0..a.len() {
        assert!(a.image(i) == b.image(i), "pixels of {} differ", a.names[i]);
    }
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == cache::EXTENSION));
    v.sort();
    v
}

/// Files in the folder: 7 images (one partly decoded) and 2 that cannot be used.
const FILES: usize = 9;

#[test]
fn a_second_opening_decodes_nothing_and_gives_the_same_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, dir) = (tmp.path().join("photos"), tmp.path().join("cache"));
    folder_of_photos(&root);
    let plain = uncached(&root);
    let first = load(&root, &dir, SIZE);
    assert_eq!(use_of(&first), (0, FILES));
    assert_same(&plain, &first);
    assert_eq!(first.len(), 7, "{:?}", first.skipped);
    assert_eq!(first.partial.len(), 1, "the cut JPEG is partly decoded");
    assert_eq!(first.skipped.len(), 2, "the text file and the empty file");
    assert_eq!(cache_files(&dir).len(), 1);
    assert_eq!(
        cache_files(&dir)[0],
        cache::file_for(&dir, &root, SIZE),
        "the file is named by the folder and the pixel key"
    );

    let second = load(&root, &dir, SIZE);
    assert_eq!(
        use_of(&second),
        (FILES, 0),
        "every file, broken ones too, comes from the cache"
    );
    assert_same(&first, &second);
    assert!(second.cache.as_ref().unwrap().note.is_none());

    // Reached through another spelling of the same folder: the same cache.
    let other = root.join("cats").join("..");
    let third = load(&other, &dir, SIZE);
    assert_eq!(use_of(&third), (FILES, 0));
}

#[test]
fn changed_replaced_removed_and_new_files_are_noticed() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, dir) = (tmp.path().join("photos"), tmp.path().join("cache"));
    folder_of_photos(&root);
    load(&root, &dir, SIZE);

    // Touched: the same bytes, a new modification time.
    let touched = root.join("cats/c0.png");
    std::fs::File::options()
        .write(true)
        .open(&touched)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let d = load(&root, &dir, SIZE);
    assert_eq!(use_of(&d), (FILES - 1, 1));

    // Replaced by another picture of the same byte size (BMP), even with the old modification
    // time put back: decoded again, and its new pixels are the ones used.
    let bmp = root.join("dogs/d.bmp");
    let before = std::fs::metadata(&bmp).unwrap();
    common::save(&bmp, &DynamicImage::ImageRgb8(picture(77, 20, 20)));
    std::fs::File::options()
        .write(true)
        .open(&bmp)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    assert_eq!(std::fs::metadata(&bmp).unwrap().len(), before.len());
    let d = load(&root, &dir, SIZE);
    assert_eq!(use_of(&d), (FILES - 1, 1));
    assert_same(&uncached(&root), &d);

    // Removed and new.
    std::fs::remove_file(root.join("cats/c1.png")).unwrap();
    common::save(
        &root.join("cats/new.png"),
        &DynamicImage::ImageRgb8(picture(42, 24, 24)),
    );
    let d = load(&root, &dir, SIZE);
    assert_eq!(use_of(&d), (FILES - 1, 1));
    assert!(!d.names.iter().any(|n| n.ends_with("c1.png")));
    assert!(d.names.iter().any(|n| n == "cats/new.png"));
    assert_same(&uncached(&root), &d);
    let again = load(&root, &dir, SIZE);
    assert_eq!(use_of(&again), (FILES, 0));
    assert_same(&d, &again);
}

#[test]
fn another_working_size_uses_another_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, dir) = (tmp.path().join("photos"), tmp.path().join("cache"));
    folder_of_photos(&root);
    load(&root, &dir, SIZE);
    let d = load(&root, &dir, 32);
    assert_eq!(use_of(&d), (0, FILES));
    assert_eq!(d.image(0).len(), 32 * 32 * 3);
    assert_eq!(cache_files(&dir).len(), 2);
    assert_eq!(use_of(&load(&root, &dir, SIZE)), (FILES, 0));
    assert_eq!(use_of(&load(&root, &dir, 32)), (FILES, 0));
}

/// Loads with the cache file replaced by `bytes`: the data are right, every file is decoded,
/// a note says why, and the file is rewritten (the next load takes everything from it).
fn survives(name: &str, bytes: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let (root, dir) = (tmp.path().join("photos"), tmp.path().join("cache"));
    folder_of_photos(&root);
    let first = load(&root, &dir, SIZE);
    let file = cache::file_for(&dir, &root, SIZE);
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, bytes(good)).unwrap();
    let d = load(&root, &dir, SIZE);
    assert_same(&first, &d);
    assert_eq!(use_of(&d), (0, FILES), "{name}");
    let note = d.cache.as_ref().unwrap().note.clone();
    assert!(
        note.as_deref().is_some_and(|n| n.contains("was not used")),
        "{name}: {note:?}"
    );
    let again = load(&root, &dir, SIZE);
    assert_eq!(use_of(&again), (FILES, 0), "{name}: rewritten");
    assert_same(&first, &again);
}

#[test]
fn a_truncated_cache_file_is_ignored_and_rewritten() {
    survives("truncated", |b| b[..b.len() / 2].to_vec());
    survives("empty", |_| Vec::new());
    survives("three bytes", |b| b[..3].to_vec());
}

#[test]
fn a_corrupt_byte_is_caught_by_the_checksum() {
    // One bit flipped in the pixels, in the header, in the checksum itself.
    survives("pixel", |mut b| {
        let at = b.len() - 20;
        b[at] ^= 0x10;
        b
    });
    survives("count", |mut b| {
        b[16] ^= 1;
        b
    });
    survives("checksum", |mut b| {
        let at = b.len() - 1;
        b[at] ^= 0x80;
        b
    });
}

#[test]
fn a_foreign_or_old_file_at_the_cache_path_is_ignored() {
    survives("foreign", |_| {
        b"GIF89a and some other program's bytes".to_vec()
    });
    survives("old version", |mut b| {
        b[8] = 0;
        // A file that is right in all but its version: the checksum made anew.
        let n = b.len() - 4;
        let crc = common::crc32(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
        b
    });
    // Another folder's valid cache file put in this one's place.
    let tmp = tempfile::tempdir().unwrap();
    let (other, dir) = (tmp.path().join("other"), tmp.path().join("cache"));
    common::save(
        &other.join("x.png"),
        &DynamicImage::ImageRgb8(picture(3, 16, 16)),
    );
    load(&other, &dir, SIZE);
    let theirs = std::fs::read(cache::file_for(&dir, &other, SIZE)).unwrap();
    survives("another folder's", move |_| theirs);
}

#[test]
fn a_cache_folder_that_cannot_be_written_still_loads_right() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("photos");
    folder_of_photos(&root);
    let plain = uncached(&root);

    // A file where the cache folder should be.
    let blocked = tmp.path().join("not-a-folder");
    std::fs::write(&blocked, b"x").unwrap();
    let d = load(&root, &blocked.join("images"), SIZE);
    assert_same(&plain, &d);
    assert_eq!(use_of(&d), (0, FILES));
    let note = d.cache.as_ref().unwrap().note.clone().unwrap_or_default();
    assert!(note.contains("not written"), "{note}");

    // A read-only folder (root may write there all the same: then it is simply used).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = tmp.path().join("read-only");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let d = load(&root, &ro, SIZE);
        assert_same(&plain, &d);
        let d = load(&root, &ro, SIZE);
        assert_same(&plain, &d);
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn the_glimpse_holds_the_first_images_with_their_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, dir) = (tmp.path().join("photos"), tmp.path().join("cache"));
    folder_of_photos(&root);
    for (limit, pass) in [
        (3, "decoded"),
        (100, "from the cache"),
        (4, "from the cache"),
    ] {
        let g = Glimpse::new(limit);
        let d = load_glimpsed(&root, &dir, SIZE, Some(&g));
        let seen = g.newer_than(0).expect("images arrived");
        assert_eq!(seen.names.len(), limit.min(d.len()), "{pass}");
        for (i, name) in seen.names.iter().enumerate() {
            let k = d.names.iter().position(|n| n == name).unwrap();
            assert!(seen.image(i) == d.image(k), "{pass}: {name}");
        }
        assert!(g.newer_than(seen.version).is_none());
    }
}

#[test]
fn clearing_removes_only_the_caches_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, dir) = (tmp.path().join("photos"), tmp.path().join("cache"));
    folder_of_photos(&root);
    load(&root, &dir, SIZE);
    load(&root, &dir, 32);
    std::fs::write(dir.join("keep-me.txt"), b"mine").unwrap();
    let usage = cache::usage(&dir).unwrap();
    assert_eq!(usage.files, 2);

    let pretext = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pretext"))
            .args(args)
            .env(cache::ENV_DIR, &dir)
            .output()
            .unwrap()
    };
    let shown = pretext(&["cache"]);
    assert!(shown.status.success());
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains(&dir.display().to_string()) && text.contains("2 files"),
        "{text}"
    );

    let cleared = pretext(&["cache", "--clear"]);
    assert_eq!(cleared.status.code(), Some(0));
    let text = String::from_utf8_lossy(&cleared.stdout);
    assert!(text.contains("Removed 2 cache files"), "{text}");
    assert!(cache_files(&dir).is_empty());
    assert!(dir.join("keep-me.txt").exists(), "not the cache's: kept");
    assert_eq!(use_of(&load(&root, &dir, SIZE)), (0, FILES));
}

#[test]
fn train_reports_the_cache_and_no_cache_bypasses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, dir) = (tmp.path().join("photos"), tmp.path().join("cache"));
    folder_of_photos(&root);
    let train = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pretext"))
            .args(["train", "--data"])
            .arg(&root)
            .args(["--size", "16", "--task", "rotation", "--epochs", "1"])
            .args(["--batch", "4", "--out"])
            .arg(tmp.path().join("runs"))
            .args(extra)
            .env(cache::ENV_DIR, &dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
    };
    let off = train(&["--no-cache"]);
    assert!(!off.contains("from the cache"), "{off}");
    assert!(cache_files(&dir).is_empty(), "--no-cache writes nothing");
    let first = train(&[]);
    assert!(
        first.contains(&format!("; 0 of {FILES} from the cache)")),
        "{first}"
    );
    let second = train(&[]);
    assert!(
        second.contains(&format!("; {FILES} of {FILES} from the cache)")),
        "{second}"
    );
}
