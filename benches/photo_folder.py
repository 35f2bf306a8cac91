#!/usr/bin/env python3
"""Opening a folder of camera photos: pretext next to Pillow, in one run.

Makes N camera-sized JPEGs (4000x3000, quality 90, synthetic content, an EXIF orientation on
every fifth), drops them from nothing (they are in the page cache after writing, as in the
issue's measurement), then times, each over the whole folder:
  - Pillow, full decode + centre crop + resize (what an ImageFolder does);
  - Pillow with draft() (JPEG's own scaled IDCT), then crop + resize;
  - pretext (`pretext train` reports "loaded in ... (files/s)"; both cores).

    python3 benches/photo_folder.py [--count 100] [--size 32] [--dir /tmp/pretext-photos]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image


def make(folder, count):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:3000, 0:4000].astype(np.float32)
    base = np.stack([x / 4000 * 200, y / 3000 * 180 + 30, 120 + 60 * np.sin(x / 300) * np.cos(y / 200)], -1)
    for i in range(count):
        path = os.path.join(folder, f"IMG_{i:04d}.jpg")
        if os.path.exists(path):
            continue
        noise = rng.normal(0, 12, (375, 500, 3)).astype(np.float32)
        img = np.clip(base + np.tile(noise, (8, 8, 1)) + i, 0, 255).astype(np.uint8)
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
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.BILINEAR)
    return len(files) / (time.perf_counter() - t)


def pretext(folder, size, binary):
    out = tempfile.mkdtemp()
    r = subprocess.run([binary, "train", "--data", folder, "--size", str(size), "--task", "rotation",
                        "--epochs", "1", "--batch", "16", "--out", out], capture_output=True, text=True)
    m = re.search(r"loaded in ([0-9.]+) s \(([0-9.]+) files/s\)", r.stderr)
    if not m:
        sys.exit(f"no load time in pretext's output:\n{r.stderr}")
    return float(m.group(2))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "pretext-photos"))
    p.add_argument("--pretext", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "pretext"))
    a = p.parse_args()
    make(a.dir, a.count)
    rows = [("Pillow, full decode + resize", pillow(a.dir, a.size, False)),
            ("Pillow with draft()", pillow(a.dir, a.size, True)),
            ("pretext", pretext(a.dir, a.size, a.pretext))]
    print(f"{a.count} JPEGs 4000x3000 q90, {a.size} px working size, files in the page cache")
    print("| loader | files/s |\n|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.1f} |")


if __name__ == "__main__":
    main()
