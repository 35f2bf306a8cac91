#!/usr/bin/env python3
"""Opening a folder of camera photos: pretext next to Pillow, first and second opening, in one run.

Makes two folders of synthetic photos (an EXIF orientation on every fifth), unless they are
there already:
  - N camera-sized JPEGs (4000x3000, quality 90);
  - M small JPEGs (640x480, quality 90), for the second opening of a large folder (a file
    taken from the cache is not decoded, so its size hardly matters there).
The files are in the page cache after writing (a folder just copied or opened before). Then times, each
over a whole folder:
  - Pillow, full decode + centre crop + resize (what an ImageFolder does);
  - Pillow with draft() (JPEG's own scaled IDCT), then crop + resize;
  - pretext, first opening (image cache cleared) and second opening (cache warm): the
    "loaded in ... (files/s; K of N from the cache)" line of `pretext train`, both cores.
The image cache is a scratch folder (PRETEXT_CACHE_DIR), never the home folder's.

    python3 benches/photo_folder.py [--count 100] [--many 10000] [--size 32]
                                    [--dir /tmp/pretext-photos] [--pretext target/release/pretext]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image


def make(folder, count, w, h):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 200, y / h * 180 + 30, 120 + 60 * np.sin(x / (w / 13)) * np.cos(y / (h / 15))], -1)
    th, tw = h // 8, w // 8
    for i in range(count):
        path = os.path.join(folder, f"IMG_{i:05d}.jpg")
        if os.path.exists(path):
            continue
        noise = rng.normal(0, 12, (th, tw, 3)).astype(np.float32)
        img = np.clip(base + np.tile(noise, (8, 8, 1)) + (i % 50), 0, 255).astype(np.uint8)
        im = Image.fromarray(img)
        exif = Image.Exif()
        if i % 5 == 0:
            exif[0x0112] = 6
        im.save(path, quality=90, exif=exif.tobytes())


def pillow(folder, size, draft):
    files = sorted(os.listdir(folder))
    t = time.perf_counter()
    for f in files:
        im = Image.open(os.path.join(folder, f))
        if draft:
            im.draft("RGB", (size, size))
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.BILINEAR)
    secs = time.perf_counter() - t
    return secs, len(files) / secs, None


def pretext(folder, size, binary, cache_dir):
    out = tempfile.mkdtemp()
    env = dict(os.environ, PRETEXT_CACHE_DIR=cache_dir)
    r = subprocess.run([binary, "train", "--data", folder, "--size", str(size), "--task", "rotation",
                        "--epochs", "1", "--minutes", "0.001", "--batch", "16", "--out", out],
                       capture_output=True, text=True, env=env)
    shutil.rmtree(out, ignore_errors=True)
    text = r.stderr + r.stdout
    m = re.search(r"loaded in ([0-9.]+) s \(([0-9.]+) files/s(?:; ([0-9]+) of [0-9]+ from the cache)?\)", text)
    if not m:
        sys.exit(f"no load time in pretext's output:\n{text}")
    return float(m.group(1)), float(m.group(2)), m.group(3)


def clear(binary, cache_dir):
    env = dict(os.environ, PRETEXT_CACHE_DIR=cache_dir)
    subprocess.run([binary, "cache", "--clear"], check=True, capture_output=True, env=env)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, default=100, help="camera-sized JPEGs")
    p.add_argument("--many", type=int, default=10000, help="small JPEGs for the second opening (0: none)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "pretext-photos"))
    p.add_argument("--pretext", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "pretext"))
    a = p.parse_args()
    camera = os.path.join(a.dir, f"camera-{a.count}")
    many = os.path.join(a.dir, f"small-{a.many}")
    make(camera, a.count, 4000, 3000)
    if a.many:
        make(many, a.many, 640, 480)
    cache_dir = tempfile.mkdtemp(prefix="pretext-bench-cache-")
    try:
        rows = [("Pillow, full decode + resize", pillow(camera, a.size, False)),
                ("Pillow with draft()", pillow(camera, a.size, True))]
        clear(a.pretext, cache_dir)
        rows.append(("pretext, first opening (cache cleared)", pretext(camera, a.size, a.pretext, cache_dir)))
        rows.append(("pretext, second opening (cache warm)", pretext(camera, a.size, a.pretext, cache_dir)))
        print(f"{a.count} JPEGs 4000x3000 q90 (EXIF orientation on every fifth), {a.size} px working size, "
              "files in the page cache")
        table(rows)
        if a.many:
            rows = [("Pillow with draft()", pillow(many, a.size, True))]
            clear(a.pretext, cache_dir)
            rows.append(("pretext, first opening (cache cleared)", pretext(many, a.size, a.pretext, cache_dir)))
            rows.append(("pretext, second opening (cache warm)", pretext(many, a.size, a.pretext, cache_dir)))
            print()
            print(f"{a.many} JPEGs 640x480 q90, {a.size} px working size, files in the page cache")
            table(rows)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def table(rows):
    print("| loader | seconds | files/s | from the cache |\n|---|---|---|---|")
    for name, (secs, rate, hits) in rows:
        print(f"| {name} | {secs:.2f} | {rate:.1f} | {hits if hits is not None else '-'} |")


if __name__ == "__main__":
    main()
