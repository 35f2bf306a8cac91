#!/usr/bin/env python3
"""The PyTorch peer for learning per minute: SimCLR on a folder, as a user would write it.

The reference encoder and projector (../shared/reference's spec: ResNet stem + three basic
blocks, Linear(128,128)-ReLU-Linear(128,64)), NT-Xent with tau = 0.5, AdamW at 1e-3, batch
128, the images prepared exactly as pretext prepares them (scripts/pytorch_roundtrip.py), and
SimCLR's augmentations done on the batch in torch (random resized crop with scale 0.2-1 via
grid_sample, horizontal flip, colour jitter 0.4/0.4/0.4 with p = 0.8, greyscale with p = 0.2).
It trains for the given wall-clock minutes on the given threads and saves the encoder's
state_dict with safetensors, so that `pretext eval --weights FILE --data DIR` judges it with the
same split, kNN and probe as pretext's own runs.

    python3 benches/torch_reference.py DATA --minutes 2 --out torch.safetensors [--threads 2]
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from pytorch_roundtrip import Encoder, prepare  # noqa: E402

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PRE = {"size": 32, "input": "rgb", "exif_orientation": True, "background": [128, 128, 128],
       "crop": "center_square", "resize_filter": "triangle", "scale": "v / 255",
       "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "layout": "NCHW"}


def load(folder):
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs
                   if f.lower().endswith(EXTENSIONS) and not f.startswith("."))
    return torch.stack([prepare(f, PRE) for f in files])


def augment(x, g):
    """SimCLR views of a batch of normalised images (N, 3, H, W)."""
    n = x.shape[0]
    scale = torch.empty(n).uniform_(0.2, 1.0, generator=g)
    ratio = torch.exp(torch.empty(n).uniform_(-0.2877, 0.2877, generator=g))  # 3/4 .. 4/3
    w = torch.sqrt(scale * ratio).clamp(max=1.0)
    h = torch.sqrt(scale / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    v = F.grid_sample(x * 0.25 + 0.5, grid, align_corners=False, padding_mode="border")
    jitter = (torch.rand(n, 1, 1, 1, generator=g) < 0.8).float()
    b = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 0.8 - 0.4) * jitter
    c = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 0.8 - 0.4) * jitter
    s = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 0.8 - 0.4) * jitter
    v = v * b
    mean = v.mean((1, 2, 3), keepdim=True)
    v = (v - mean) * c + mean
    grey = (0.299 * v[:, 0:1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:3])
    v = (v - grey) * s + grey
    to_grey = (torch.rand(n, 1, 1, 1, generator=g) < 0.2).float()
    grey = (0.299 * v[:, 0:1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:3]).expand_as(v)
    v = v * (1 - to_grey) + grey * to_grey
    return (v.clamp(0, 1) - 0.5) / 0.25


def nt_xent(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / tau
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    x = load(a.data)
    loaded = time.perf_counter() - t0
    enc = Encoder()
    head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))
    opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=a.lr)
    steps = 0
    start = time.perf_counter()
    deadline = start + a.minutes * 60
    while time.perf_counter() < deadline:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - a.batch + 1, a.batch):
            if time.perf_counter() >= deadline:
                break
            b = x[order[i:i + a.batch]]
            loss = nt_xent(head(enc(augment(b, g))), head(enc(augment(b, g))), a.tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    state = {k: v.contiguous() for k, v in enc.state_dict().items()}
    save_file(state, a.out, metadata={"preprocessing": json.dumps(PRE), "step": str(steps)})
    print(json.dumps({"steps": steps, "seconds": time.perf_counter() - start, "load_s": loaded,
                      "images": len(x), "loss": loss.item(), "torch": torch.__version__,
                      "threads": a.threads}))


if __name__ == "__main__":
    main()
