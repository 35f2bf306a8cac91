#!/usr/bin/env bash
# Learning per CPU-minute: each recipe trains for the same wall-clock minutes on the same folder,
# then `pretext eval` judges it (kNN top-1 per stage and the linear probe, held-out every fifth
# image of each class), next to random init and raw pixels. One Markdown table on stdout.
#
#   benches/recipe.sh DATA MINUTES 'NAME|TRAIN OPTIONS' ['NAME|TRAIN OPTIONS' ...]
#   benches/recipe.sh ../shared/data/emoji-twitter 3 'default|' 'contrastive|--task contrastive'
#
# Run it on an otherwise idle machine: the recipes share its cores one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh
data="${1:?usage: recipe.sh DATA MINUTES 'NAME|OPTIONS'...}"
minutes="${2:?minutes}"
shift 2
bin=${PRETEXT_BIN:-target/release/pretext}
[ -x "$bin" ] || cargo build --release
out="$(mktemp -d)"
echo "| recipe | steps | kNN stem | l1 | l2 | z | probe on z | random z | raw pixels |"
echo "|---|---|---|---|---|---|---|---|---|"
for recipe in "$@"; do
    name="${recipe%%|*}"
    opts="${recipe#*|}"
    dir="$out/$name"
    # shellcheck disable=SC2086
    "$bin" train --data "$data" --minutes "$minutes" --out "$dir" $opts \
        --json >"$dir.train.json" 2>"$dir.train.log" || true
    run="$(ls -d "$dir"/*/ | head -1)"
    "$bin" eval --run "$run" --json >"$dir.eval.json" 2>>"$dir.train.log"
    steps="$(last_step "$run")"
    python3 - "$name" "$steps" "$dir.eval.json" <<'EOF'
import json, sys
name, steps, path = sys.argv[1], sys.argv[2], sys.argv[3]
r = json.load(open(path))["report"]
pct = lambda v: f"{100 * v:.1f}"
trained = [pct(s["trained"]) for s in r["knn"]]
random_z = pct(r["knn"][-1]["random"])
print(f"| {name} | {steps} | " + " | ".join(trained) + f" | {pct(r['probe_trained'])} | {random_z} | {pct(r['knn_raw_pixels'])} |")
EOF
done
echo
echo "CPU: $(cpu_line); $minutes min each; runs in $out"
