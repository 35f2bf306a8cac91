#!/usr/bin/env bash
# Side-by-side training throughput: `pretext bench` and the PyTorch reference
# (torch_bench.py) run alternately on the same machine, task by task and size by size, with the
# ratio and each side's share of the machine's ceiling (this machine's fp32 matrix-product peak,
# measured by `pretext bench`, divided by the step's matrix-product arithmetic per image).
#
#   benches/compare_torch.sh PATH/TO/torch_bench.py [PYTHON_WITH_TORCH]
#
# Environment: TASKS (default: rotation contrastive colorization inpainting), SIZES (32 64 96),
# BATCH (default 128 at 32 px and 64 above, as in README's tables), STEPS (20), ROUNDS (2;
# the best of the rounds is kept for each side, and the last column gives the range of the
# ratios of each round's pair, run back to back — on a machine whose speed drifts from minute to
# minute that range says how far to trust the ratio), THREADS (2, PyTorch's thread count). Builds
# pretext in release mode first. Both sides feed the network `size`-pixel inputs (the
# contrastive task's two views at the full size).
set -euo pipefail

torch_bench=${1:?usage: $0 PATH/TO/torch_bench.py [PYTHON_WITH_TORCH]}
python=${2:-python3}
tasks=${TASKS:-rotation contrastive colorization inpainting}
sizes=${SIZES:-32 64 96}
steps=${STEPS:-20}
rounds=${ROUNDS:-2}
threads=${THREADS:-2}

cd "$(dirname "$0")/.."
cargo build --release --quiet
pretext=target/release/pretext
"$python" -c 'import torch' || { echo "error: $python cannot import torch" >&2; exit 2; }

field() { "$python" -c 'import json,sys; v=json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]]; print("nan" if v is None else v)' "$1"; }
best() { printf '%s\n' "$@" | sort -g | tail -1; }

header=
for size in $sizes; do
  if [ "$size" -le 32 ]; then batch=${BATCH:-128}; else batch=${BATCH:-64}; fi
  for task in $tasks; do
    ours=(); theirs=()
    for _ in $(seq "$rounds"); do
      json="$("$pretext" bench --task "$task" --batch "$batch" --size "$size" --steps "$steps" --json)"
      ours+=("$(field images_per_s <<<"$json")")
      theirs+=("$("$python" "$torch_bench" --task "$task" --batch "$batch" --size "$size" --steps "$steps" --threads "$threads" | field images_per_s)")
    done
    if [ -z "$header" ]; then
      header=1
      printf '%s · fp32 matrix-product peak %.0f GFLOP/s (2048², measured by pretext bench)\n\n' \
        "$(field cpu <<<"$json")" "$(field peak_gflops <<<"$json")"
      printf '| task | size | batch | pretext images/s | PyTorch images/s | ratio | pretext %% of ceiling | PyTorch %% of ceiling | ratio per round |\n|---|---|---|---|---|---|---|---|---|\n'
    fi
    o=$(best "${ours[@]}"); t=$(best "${theirs[@]}")
    "$python" -c '
import sys
task, size, batch = sys.argv[1:4]
o, t, g, p = map(float, sys.argv[4:8])
pairs = sys.argv[8:]
half = len(pairs) // 2
per_round = sorted(float(a) / float(b) for a, b in zip(pairs[:half], pairs[half:]))
spread = f"{per_round[0]:.2f}–{per_round[-1]:.2f}" if len(per_round) > 1 else f"{per_round[0]:.2f}"
ceiling = p / g if g == g and g > 0 else float("nan")
print(f"| {task} | {size} px | {batch} | {o:.1f} | {t:.1f} | {o/t:.2f} | {100*o/ceiling:.0f}% | {100*t/ceiling:.0f}% | {spread} |")
' "$task" "$size" "$batch" "$o" "$t" "$(field gflop_per_image <<<"$json")" "$(field peak_gflops <<<"$json")" \
      "${ours[@]}" "${theirs[@]}"
  done
done
