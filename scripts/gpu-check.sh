#!/usr/bin/env bash
# The CUDA checks, in one run, on a machine with an NVIDIA GPU and PyTorch but no Rust.
#
# Here (with the toolkit from scripts/cuda-toolkit.sh):
#   scripts/gpu-check.sh --prepare PATH/TO/torch_bench.py     # fills .gpu/ (git-ignored)
# There, from the repository root, with .gpu/ copied along:
#   scripts/gpu-check.sh [OUT [PARTS]]     # OUT defaults to ./gpu-report, PARTS to 12354
# (the parts run in the order given; part 3's cases can be narrowed with TASKS, SIZES and
# BATCHES, e.g. TASKS="rotation contrastive" SIZES=96 BATCHES=512, STEPS sets its steps,
# PLAIN=0 leaves out the plain CUDA build there and BENCHMARK=0 the cuDNN build's searched
# algorithms)
# (one device command may run 600 s at most: `OUT 12` then `OUT 345` splits the run in two).
#
# It runs, each with a time limit, writing everything to OUT/log and OUT/bench.csv:
#   1. tests/cuda.rs, built with cuDNN: batch norm's and a convolution's values and gradients, a
#      step's loss and gradients
#      for every task equal the CPU's, and the app trains all five tasks with every panel; run
#      again with candle's own backward convolutions (CANDLE_CONV2D_CUDNN_BACKWARD=0);
#   2. `pretext train --device cuda` for each task alone and all five together (a short run);
#   3. `pretext bench --device cuda` next to `torch_bench.py --device cuda` (cuDNN, benchmark
#      mode) for rotation, contrastive, colorization and inpainting at 32 and 96 px, batch 128
#      and 512, alternating the two, and the ratio per case; and the same pretext built with
#      `--features cudnn` (candle's convolutions through cuDNN), with its own ratio, and that
#      build again with cuDNN's algorithms found by timing (PRETEXT_CUDNN_BENCHMARK=1; BENCHMARK=0
#      leaves it out); every
#      bench's JSON (forward, backward, optimiser split) goes to OUT/bench.jsonl;
#   4. pretext's batch norm kernels and the backward convolutions, each alternated with what
#      they replace, in OUT/backward.csv (ROUNDS=1 halves it): in the cuDNN build, the batch
#      norm kernels against candle-nn's chain of ops (PRETEXT_STOCK_OPS=1), then cuDNN's
#      backward-data and backward-filter (vendored candle's patch, the default) against
#      candle's conv2d formulations (CANDLE_CONV2D_CUDNN_BACKWARD=0); in the
#      plain CUDA build, ∂L/∂x as a conv2d (the default) against upstream's naive
#      conv_transpose2d kernel (CANDLE_CONV2D_INPUT_GRAD=transpose);
#   5. what the CUDA step's time goes to: Nsight Compute's GPU time of every kernel of a few
#      bench steps of the cuDNN build (contrastive 32 px and rotation 96 px), in OUT/kernels-*.csv.
#   By default part 5 runs before part 4, which matters least, so a run cut short loses part 4.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    set -e
    torch_bench="${2:?usage: gpu-check.sh --prepare PATH/TO/torch_bench.py}"
    if [ -z "${CUDA_ROOT:-}" ]; then
        echo "gpu-check.sh: source the env.sh that scripts/cuda-toolkit.sh wrote first" >&2
        exit 2
    fi
    cargo build --release --features cudnn
    mkdir -p .gpu
    rm -f .gpu/*
    strip -o .gpu/pretext-cudnn target/release/pretext
    cargo build --release --features cuda
    # Before the test build: `cargo test` builds the binary too, with the test's features.
    strip -o .gpu/pretext target/release/pretext
    # The test binary is the cuDNN build's (part 1 also runs it without cuDNN's backward):
    # a fourth binary would not fit in what travels.
    test_bin="$(cargo test --release --features cudnn --test cuda --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)"
    # What travels is at most 64 MiB: without debug info and xz-compressed, each binary is
    # about 13 MB (the CUDA kernels make it 80 MB unpacked).
    strip -o .gpu/cuda-test "$test_bin"
    if cmp -s .gpu/pretext .gpu/pretext-cudnn; then
        echo "gpu-check.sh: the CUDA and cuDNN builds came out the same binary" >&2
        exit 1
    fi
    xz -T0 -6 .gpu/pretext .gpu/cuda-test .gpu/pretext-cudnn
    # The reference's NT-Xent makes its targets on the CPU, so its contrastive task fails on
    # CUDA ("Expected all tensors to be on the same device"): the copy makes them on z's device.
    sed 's/torch.cat(\[torch.arange(n, 2\*n), torch.arange(0, n)\])/&.to(z.device)/' \
        "$torch_bench" >.gpu/torch_bench.py
    grep -q 'torch.arange(0, n)\]).to(z.device)' .gpu/torch_bench.py ||
        echo "gpu-check.sh: the reference's NT-Xent targets were not moved to z's device" >&2
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    ls -l .gpu >&2
    echo "ready: carry .gpu and run scripts/gpu-check.sh there" >&2
    exit 0
fi

out="${1:-gpu-report}"
parts="${2:-12354}"
mkdir -p "$out"
log="$out/log"
touch "$log"
# Timed steps per bench (after 3 warm-up steps), both sides.
steps="${STEPS:-10}"
say() { echo "$*" | tee -a "$log"; }
start=$SECONDS
header() { say "$* (at $((SECONDS - start)) s)"; }

# The CUDA libraries a run opens: the driver's folder, a toolkit, and PyTorch's wheels.
python="${PYTHON:-python3}"
libs="/usr/local/nvidia/lib64:/usr/local/nvidia/lib:/usr/local/cuda/lib64"
site="$("$python" -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)"
if [ -n "$site" ] && [ -d "$site/nvidia" ]; then
    for d in $(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u); do
        libs="$libs:$d"
    done
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

work="$(mktemp -d)"
for b in pretext cuda-test pretext-cudnn; do
    # xz, or Python's lzma where xz is not installed.
    if ! { xz -dc ".gpu/$b.xz" 2>/dev/null ||
        "$python" -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' \
            ".gpu/$b.xz"; } >"$work/$b"; then
        echo "gpu-check.sh: .gpu/$b.xz is missing; run --prepare where the project builds" >&2
        exit 2
    fi
    chmod +x "$work/$b"
done
bin="$work/pretext"
say "# $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
say "# CPU: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)"
"$python" -c 'import torch; print("# torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>&1 | tee -a "$log"

# The images/s of a bench's JSON line.
value() { sed -n 's/.*"images_per_s": *\([0-9.eE+-]*\).*/\1/p' | tail -1; }

part_1() {
    header "## 1. CUDA step = CPU step"
    timeout 240 "$work/cuda-test" --nocapture --test-threads 1 2>&1 | tee -a "$log"
    say "### again with candle's own backward convolutions (CANDLE_CONV2D_CUDNN_BACKWARD=0)"
    CANDLE_CONV2D_CUDNN_BACKWARD=0 timeout 240 "$work/cuda-test" --nocapture --test-threads 1 \
        a_cuda_ 2>&1 | grep -E '^test |test result' | tee -a "$log"
}

part_2() {
    header "## 2. training on CUDA"
    for task in rotation contrastive colorization inpainting patch rotation,contrastive,colorization,inpainting,patch; do
        say "### $task"
        timeout 120 "$bin" train --data builtin:1024 --task "$task" --device cuda --epochs 2 \
            --out "$out/runs" 2>&1 | tail -4 | tee -a "$log"
    done
    # The last run (all five tasks) evaluated on the CPU: its checkpoint is an ordinary one.
    last="$(ls -td "$out"/runs/*/ 2>/dev/null | head -1)"
    if [ -n "$last" ]; then
        say "### files of $last"
        ls "$last" | tr '\n' ' ' | tee -a "$log"
        say ""
        timeout 120 "$bin" eval --run "$last" 2>&1 | tail -12 | tee -a "$log"
    fi
}

part_3() {
    header "## 3. pretext vs PyTorch on CUDA (images/s; views/s for contrastive)"
    csv="$out/bench.csv"
    echo "task,size,batch,pretext_images_per_s,torch_images_per_s,ratio,pretext_cudnn_images_per_s,ratio_cudnn,pretext_cudnn_benchmark_images_per_s,ratio_cudnn_benchmark" >"$csv"
    for task in ${TASKS:-rotation contrastive colorization inpainting}; do
        for size in ${SIZES:-32 96}; do
            for batch in ${BATCHES:-128 512}; do
                ours=""
                if [ "${PLAIN:-1}" != 0 ]; then
                    ours="$(timeout 90 "$bin" bench --device cuda --task "$task" --size "$size" --batch "$batch" \
                        --steps "$steps" --json 2>>"$log" | tee -a "$out/bench.jsonl" | value)"
                fi
                theirs="$(timeout 90 "$python" .gpu/torch_bench.py --device cuda --task "$task" --size "$size" \
                    --batch "$batch" --steps "$steps" 2>>"$log" | value)"
                dnn="$(timeout 90 "$work/pretext-cudnn" bench --device cuda --task "$task" --size "$size" \
                    --batch "$batch" --steps "$steps" --json 2>>"$log" | tee -a "$out/bench.jsonl" | value)"
                found="-"
                if [ "${BENCHMARK:-1}" != 0 ]; then
                    found="$(PRETEXT_CUDNN_BENCHMARK=1 timeout 90 "$work/pretext-cudnn" bench --device cuda --task "$task" \
                        --size "$size" --batch "$batch" --steps "$steps" --json 2>>"$log" | tee -a "$out/bench.jsonl" | value)"
                    found="${found:-failed}"
                fi
                ratio="$(awk -v a="${ours:-0}" -v b="${theirs:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }')"
                ratio_dnn="$(awk -v a="${dnn:-0}" -v b="${theirs:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }')"
                ratio_found="$(awk -v a="${found//[!0-9.]/}" -v b="${theirs:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }')"
                say "$task ${size}px batch $batch: pretext ${ours:-failed} torch ${theirs:-failed} ratio $ratio; with cuDNN ${dnn:-failed} ratio $ratio_dnn; cuDNN's algorithms searched $found ratio $ratio_found"
                echo "$task,$size,$batch,${ours:-},${theirs:-},$ratio,${dnn:-},$ratio_dnn,${found//[!0-9.]/},$ratio_found" >>"$csv"
            done
        done
    done
}

part_5() {
    header "## 5. GPU time per kernel (Nsight Compute)"
    ncu="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
    if [ -z "$ncu" ]; then
        say "no ncu on this machine"
    else
        for case in "contrastive 32 512" "rotation 96 128"; do
            set -- $case
            # Three warm-up steps and three timed ones; the first 2,000 launches after start.
            timeout 150 "$ncu" --clock-control none --metrics gpu__time_duration.sum \
                --launch-count 2000 --csv --print-summary per-kernel \
                --log-file "$out/kernels-$1-$2.csv" \
                "$work/pretext-cudnn" bench --device cuda --task "$1" --size "$2" --batch "$3" --steps 3 --json \
                >>"$out/bench.jsonl" 2>>"$log"
            say "$1 ${2}px batch $3: $(wc -l <"$out/kernels-$1-$2.csv" 2>/dev/null || echo no) lines of kernels"
        done
    fi
}
part_4() {
    header "## 4. batch norm and backward convolutions: the default against the alternative, images/s"
    grads="$out/backward.csv"
    echo "build,task,size,batch,round,default_images_per_s,alternative_images_per_s,alternative" >"$grads"
    for variant in "pretext-cudnn PRETEXT_STOCK_OPS=1" "pretext-cudnn CANDLE_CONV2D_CUDNN_BACKWARD=0" "pretext CANDLE_CONV2D_INPUT_GRAD=transpose"; do
        set -- $variant
        build="$1"
        alternative="$2"
        for case in "contrastive 32 128" "rotation 96 128" "inpainting 96 512"; do
            set -- $case
            for round in $(seq "${ROUNDS:-2}"); do
                a="$(timeout 90 "$work/$build" bench --device cuda --task "$1" --size "$2" --batch "$3" \
                    --steps "$steps" --json 2>>"$log" | tee -a "$out/bench.jsonl" | value)"
                b="$(env "$alternative" timeout 90 "$work/$build" bench --device cuda \
                    --task "$1" --size "$2" --batch "$3" --steps "$steps" --json 2>>"$log" |
                    tee -a "$out/bench.jsonl" | value)"
                say "$build $1 ${2}px batch $3 round $round: default ${a:-failed}, $alternative ${b:-failed}"
                echo "$build,$1,$2,$3,$round,${a:-},${b:-},$alternative" >>"$grads"
            done
        done
    done
}
# The parts in the order given.
for p in $(echo "$parts" | grep -o .); do
    if declare -F "part_$p" >/dev/null; then "part_$p"; else say "no part $p"; fi
done
say "# done $(date -u +%FT%TZ) ($((SECONDS - start)) s)"
