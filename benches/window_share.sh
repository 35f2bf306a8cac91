#!/usr/bin/env bash
# What the window costs the training it shows: the same run (same data, task, seed, minutes of
# training) headless with `pretext train`, then in the real app, started by `pretext DATA
# --start --quit-after-run`, on a virtual X display (Xvfb) drawn by wgpu — Mesa's lavapipe where
# there is no GPU, the software renderer the tests use. The two alternate for a number of rounds
# (a shared machine's speed drifts by several percent from minute to minute); prints each round's
# steps, the window's share of headless per round and their median, and the app's frame time
# (median, 95th percentile of its own CPU time per frame, drawing included) while training.
#
#   benches/window_share.sh [DATA] [TASK] [MINUTES] [ROUNDS]
#   benches/window_share.sh ../shared/data/emoji-twitter rotation 1 3
#
# Needs xvfb-run (Debian: xvfb) and mesa-vulkan-drivers. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
data="$(realpath "${1:-../shared/data/emoji-twitter}")"
task="${2:-rotation}"
minutes="${3:-1}"
rounds="${4:-3}"
bin="$(realpath "${PRETEXT_BIN:-target/release/pretext}")"
[ -x "$bin" ] || cargo build --release
command -v xvfb-run >/dev/null || { echo "xvfb-run is needed (Debian: xvfb)" >&2; exit 2; }
out="$(mktemp -d)"
# Both runs read the same image cache, filled here first, so neither pays for decoding.
export PRETEXT_CACHE_DIR="$out/cache"
"$bin" train --data "$data" --task "$task" --epochs 1 --batch 8 --out "$out/warm" \
    >/dev/null 2>&1 || true

# The last step of a run directory's metrics.csv (rows of the monitor are not steps).
last_step() {
    awk -F, 'NR > 1 && $3 != "knn" && $3 != "gauges" { s = $1 } END { print s + 0 }' \
        "$(ls -d "$1"/*/ | head -1)/metrics.csv"
}

echo "CPU: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), $(nproc) cores"
echo "$task on $data, batch 128, $minutes min of training per run, $rounds rounds"
echo
echo "| round | headless steps | window steps | window / headless | window frame time (while training) |"
echo "|---|---|---|---|---|"
shares=()
for r in $(seq 1 "$rounds"); do
    "$bin" train --data "$data" --task "$task" --minutes "$minutes" --epochs 1000000 \
        --out "$out/$r/headless" >"$out/$r.headless.log" 2>&1
    headless="$(last_step "$out/$r/headless")"
    mkdir -p "$out/$r/window"
    (
        cd "$out/$r/window"
        XDG_DATA_HOME="$out/$r/window/data" XDG_CONFIG_HOME="$out/$r/window/config" \
            PRETEXT_FRAME_STATS="$out/$r/frames.csv" \
            timeout "$(awk -v m="$minutes" 'BEGIN { print int(m * 60 + 600) }')" \
            xvfb-run -a -s "-screen 0 1600x1000x24" \
            "$bin" "$data" --start --quit-after-run --task "$task" --minutes "$minutes" \
            --epochs 1000000 >"$out/$r.window.log" 2>&1
    )
    window="$(last_step "$out/$r/window/runs")"
    frames="$(grep -o 'while training: .*' "$out/$r.window.log" || echo 'not reported')"
    share="$(awk -v h="$headless" -v w="$window" 'BEGIN { printf "%.1f", 100 * w / h }')"
    shares+=("$share")
    echo "| $r | $headless | $window | $share % | $frames |"
done
echo
median="$(printf '%s\n' "${shares[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
echo "median window / headless: $median %"
echo "runs in $out"
