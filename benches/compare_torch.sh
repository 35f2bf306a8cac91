#!/usr/bin/env bash
# Side-by-side training throughput: `pretext bench` and the PyTorch reference
# (torch_bench.py) run alternately on the same machine, task by task, and the ratio printed.
#
#   benches/compare_torch.sh PATH/TO/torch_bench.py [PYTHON_WITH_TORCH]
#
# Environment: TASKS (default: rotation contrastive colorization inpainting), BATCH (128),
# SIZE (32), STEPS (20), ROUNDS (2; the best of the rounds is kept for each side),
# THREADS (2, PyTorch's thread count). Builds pretext in release mode first.
set -euo pipefail

torch_bench=${1:?usage: $0 PATH/TO/torch_bench.py [PYTHON_WITH_TORCH]}
python=${2:-python3}
tasks=${TASKS:-rotation contrastive colorization inpainting}
batch=${BATCH:-128}
size=${SIZE:-32}
steps=${STEPS:-20}
rounds=${ROUNDS:-2}
threads=${THREADS:-2}

cd "$(dirname "$0")/.."
cargo build --release --quiet
pretext=target/release/pretext
"$python" -c 'import torch' || { echo "error: $python cannot import torch" >&2; exit 2; }

field() { "$python" -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]])' "$1"; }
best() { printf '%s\n' "$@" | sort -g | tail -1; }

printf '| task | pretext images/s | PyTorch images/s | ratio |\n|---|---|---|---|\n'
for task in $tasks; do
  ours=(); theirs=()
  for _ in $(seq "$rounds"); do
    ours+=("$("$pretext" bench --task "$task" --batch "$batch" --size "$size" --steps "$steps" --json | field images_per_s)")
    theirs+=("$("$python" "$torch_bench" --task "$task" --batch "$batch" --size "$size" --steps "$steps" --threads "$threads" | field images_per_s)")
  done
  o=$(best "${ours[@]}"); t=$(best "${theirs[@]}")
  "$python" -c 'import sys; task,o,t=sys.argv[1],float(sys.argv[2]),float(sys.argv[3]); print(f"| {task} | {o:.1f} | {t:.1f} | {o/t:.2f} |")' "$task" "$o" "$t"
done
