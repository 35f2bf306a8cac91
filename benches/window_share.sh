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
# shellcheck source=benches/lib.sh
source benches/lib.sh
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

echo "CPU: $(cpu_line)"
echo "$task on $data, batch 128, $minutes min of training per run, $rounds rounds"
echo
echo "| round | headless steps | window steps | window / headless | window frame time (while training) |"
echo "|---|---|---|---|---|"
shares=()
for r in $(seq 1 "$rounds"); do
    "$bin" train --data "$data" --task "$task" --minutes "$minutes" --epochs 1000000 \
        --out "$out/$r/headless" >"$out/$r.headless.log" 2>&1
    headless="$(last_step "$(ls -d "$out/$r"/headless/*/ | head -1)")"
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
    window="$(last_step "$(ls -d "$out/$r"/window/runs/*/ | head -1)")"
    frames="$(grep -o 'while training: .*' "$out/$r.window.log" || echo 'not reported')"
    share="$(awk -v h="$headless" -v w="$window" 'BEGIN { printf "%.1f", 100 * w / h }')"
    shares+=("$share")
    echo "| $r | $headless | $window | $share % | $frames |"
done
echo
median="$(printf '%s\n' "${shares[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
echo "median window / headless: $median %"
echo "runs in $out"
