#!/usr/bin/env python3
"""Summarise several outputs of benches/learn_per_minute.sh (one Markdown table each).

    benches/lead_summary.py run1.md run2.md …

Prints one row per run — PyTorch's steps / z / probe, then pretext's headless and window-open
steps / z (lead over PyTorch's z) / probe — and, over the runs, the mean lead on z with its
range, the steps' ranges, the mean z of each, and in how many runs the probe on z was ahead of
PyTorch's. Leads are in points of kNN top-1 (%). Standard library only.
"""

import statistics
import sys


def parse(path):
    """The three rows of one table: {name: (steps, z, probe)}."""
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 7 or not cells[1].replace(",", "").isdigit():
                continue
            try:
                z, probe = float(cells[5]), float(cells[6])
            except ValueError:
                continue
            name = cells[0]
            key = "torch" if name.startswith("PyTorch") else (
                "window" if "window" in name else "headless")
            rows[key] = (int(cells[1].replace(",", "")), z, probe)
    missing = {"torch", "headless", "window"} - rows.keys()
    if missing:
        sys.exit(f"{path}: no {', '.join(sorted(missing))} row; is it learn_per_minute.sh's output?")
    return rows


def main(paths):
    if not paths:
        sys.exit(__doc__.strip())
    runs = [parse(p) for p in paths]
    print("| run | PyTorch steps / z / probe | headless steps / z (lead) / probe "
          "| window open steps / z (lead) / probe |")
    print("|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        ts, tz, tp = r["torch"]
        cells = [f"{ts:,} / {tz:.1f} / {tp:.1f}"]
        for key in ("headless", "window"):
            s, z, p = r[key]
            cells.append(f"{s:,} / {z:.1f} ({z - tz:+.1f}) / {p:.1f}")
        print(f"| {i} | " + " | ".join(cells) + " |")
    print()
    tz = [r["torch"][1] for r in runs]
    steps = [r["torch"][0] for r in runs]
    print(f"PyTorch: {min(steps):,}–{max(steps):,} steps, z {statistics.mean(tz):.2f} on average")
    for key, label in (("headless", "headless"), ("window", "window open")):
        leads = [r[key][1] - r["torch"][1] for r in runs]
        steps = [r[key][0] for r in runs]
        ahead = sum(r[key][2] > r["torch"][2] for r in runs)
        level = sum(r[key][2] == r["torch"][2] for r in runs)
        print(f"{label}: {min(steps):,}–{max(steps):,} steps, "
              f"z {statistics.mean(r[key][1] for r in runs):.2f} on average, "
              f"lead on z mean {statistics.mean(leads):+.2f} "
              f"({min(leads):+.1f} to {max(leads):+.1f}), "
              f"probe ahead in {ahead} of {len(runs)}" + (f", level in {level}" if level else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
