#!/usr/bin/env bash
# Learning per CPU-minute against PyTorch: the same folder, the same wall-clock minutes, one
# after the other on this machine —
#   1. the PyTorch peer (benches/torch_reference.py: SimCLR as a user would write it),
#   2. pretext's default recipe headless (`pretext train --minutes M`),
#   3. pretext's default recipe in the app's window (`pretext DATA --start --quit-after-run`)
#      on a virtual X display drawn by Mesa's lavapipe, the software renderer the tests use —
# each judged by the same `pretext eval` (kNN top-1 per stage on the held-out fifth of each
# class, linear probe on z). One Markdown table on stdout.
#
#   benches/learn_per_minute.sh [DATA] [MINUTES] [PYTHON]
#   benches/learn_per_minute.sh ../shared/data/emoji-twitter 3 ~/torchref/bin/python
#
# PYTHON needs torch and safetensors. The window run needs xvfb-run and mesa-vulkan-drivers.
# Run it on an otherwise idle machine. One run's z moves by about ±2 points, so a kind of CPU
# is judged on several runs: save each table and `benches/lead_summary.py run1.md run2.md …`
# prints them as one table with the mean lead on z, headless and with the window open.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh
data="$(realpath "${1:-../shared/data/emoji-twitter}")"
minutes="${2:-3}"
python="${3:-python3}"
bin="$(realpath "${PRETEXT_BIN:-target/release/pretext}")"
[ -x "$bin" ] || cargo build --release
out="$(mktemp -d)"
export PRETEXT_CACHE_DIR="$out/cache"

# steps, then the kNN per stage and the probe, from `pretext eval --json`.
row() {
    "$python" - "$1" "$2" "$3" <<'EOF'
import json, sys
name, steps, path = sys.argv[1], sys.argv[2], sys.argv[3]
r = json.load(open(path))["report"]
pct = lambda v: f"{100 * v:.1f}"
knn = " | ".join(pct(s["trained"]) for s in r["knn"])
print(f"| {name} | {steps} | {knn} | {pct(r['probe_trained'])} |")
EOF
}

echo "| | steps in $minutes min | kNN stem | l1 | l2 | z | linear probe on z |"
echo "|---|---|---|---|---|---|---|"

"$python" benches/torch_reference.py "$data" --minutes "$minutes" --out "$out/torch.safetensors" \
    >"$out/torch.json"
torch_steps="$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps"])' "$out/torch.json")"
torch_version="$("$python" -c 'import torch; print(torch.__version__)')"
"$bin" eval --weights "$out/torch.safetensors" --data "$data" --json >"$out/torch.eval.json"
row "PyTorch $torch_version, SimCLR τ 0.5" "$torch_steps" "$out/torch.eval.json"

"$bin" train --data "$data" --minutes "$minutes" --epochs 1000000 --out "$out/headless" \
    >"$out/headless.log" 2>&1
run="$(ls -d "$out"/headless/*/ | head -1)"
"$bin" eval --run "$run" --json >"$out/headless.eval.json"
row "pretext default, headless" "$(last_step "$run")" "$out/headless.eval.json"

mkdir -p "$out/window"
(
    cd "$out/window"
    XDG_DATA_HOME="$out/window/data" XDG_CONFIG_HOME="$out/window/config" \
        timeout "$(awk -v m="$minutes" 'BEGIN { print int(m * 60 + 600) }')" \
        xvfb-run -a -s "-screen 0 1600x1000x24" \
        "$bin" "$data" --start --quit-after-run --minutes "$minutes" --epochs 1000000 \
        >"$out/window.log" 2>&1
)
run="$(ls -d "$out"/window/runs/*/ | head -1)"
"$bin" eval --run "$run" --json >"$out/window.eval.json"
row "pretext default, window open" "$(last_step "$run")" "$out/window.eval.json"

echo
echo "CPU: $(cpu_line); runs in $out"
