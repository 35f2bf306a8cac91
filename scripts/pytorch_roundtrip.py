#!/usr/bin/env python3
"""z = f(x) of a pretext checkpoint, computed by PyTorch from image files.

This is the README's PyTorch recipe as a program: the reference encoder (ResNet stem + three
basic blocks, the names of pretext's checkpoints), the weights loaded by name, and each image
prepared as the checkpoint's `preprocessing` metadata says. `tests/pytorch_roundtrip.rs`
compares what it wrote (tests/data/pytorch_roundtrip.json) with pretext's own z.

    python3 scripts/pytorch_roundtrip.py CHECKPOINT IMAGE... --out FILE.json

Needs torch, safetensors, pillow and numpy. Only RGB runs ("input": "rgb"); a colorization-only
run's L* input would need an sRGB -> CIE L*a*b* conversion as well.
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors import safe_open
from safetensors.torch import load_file


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.sc = None
        if stride != 1 or cin != cout:
            self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + (x if self.sc is None else self.sc(x)))


class Encoder(nn.Module):
    def __init__(self, cin=3, w=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.l1 = Block(w, w, 1)
        self.l2 = Block(w, 2 * w, 2)
        self.l3 = Block(2 * w, 4 * w, 2)

    def forward(self, x):
        return self.l3(self.l2(self.l1(self.stem(x)))).mean((2, 3))


def prepare(path, pre):
    """One image file -> (C, H, W) float tensor, as `pre` (the checkpoint's metadata) says."""
    img = Image.open(path)
    if pre["exif_orientation"]:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA")).astype(np.uint32)
        a = rgba[..., 3:4]
        bg = np.array(pre["background"], dtype=np.uint32)
        rgb = (rgba[..., :3] * a + bg * (255 - a) + 127) // 255
        img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    else:
        img = img.convert("RGB")
    assert pre["crop"] == "center_square", pre["crop"]
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    size = pre["size"]
    if s != size:
        assert pre["resize_filter"] == "triangle", pre["resize_filter"]
        img = img.resize((size, size), Image.BILINEAR)
    x = np.asarray(img).astype(np.float32) / 255.0
    x = (x - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    with safe_open(a.checkpoint, "pt") as f:
        pre = json.loads(f.metadata()["preprocessing"])
    if pre["input"] != "rgb":
        raise SystemExit(f"only RGB runs are handled here, not {pre['input']}")
    state = {k: v for k, v in load_file(a.checkpoint).items() if not k.startswith("heads.")}
    enc = Encoder(cin=len(pre["mean"]))
    enc.load_state_dict(state)  # strict: every encoder tensor by name
    enc.eval()
    x = torch.stack([prepare(f, pre) for f in a.images])
    with torch.no_grad():
        z = enc(x)
    out = {
        "checkpoint": os.path.basename(a.checkpoint),
        "torch": torch.__version__,
        "preprocessing": pre,
        "images": [{"file": os.path.basename(f), "z": row.tolist()} for f, row in zip(a.images, z)],
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"{len(a.images)} embeddings of {z.shape[1]} numbers -> {a.out}")


if __name__ == "__main__":
    main()
