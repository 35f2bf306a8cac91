#!/usr/bin/env bash
# Installs the part of the CUDA 13.0 toolkit that `cargo build --release --features cuda` needs,
# from NVIDIA's wheels on PyPI, into a folder outside the source tree. No GPU, no driver and no
# root are needed; the build then compiles candle's CUDA kernels to PTX with this nvcc.
#
#   scripts/cuda-toolkit.sh [--runtime] [DIR]      # DIR defaults to ~/.cache/pretext/cuda-13.0
#   source DIR/env.sh                              # or export what the script prints
#   cargo build --release --features cuda
#
# Pieces (all pinned to 13.0.x, the CUDA of driver 580): nvidia-cuda-nvcc (nvcc, ptxas),
# nvidia-nvvm (cicc, libdevice: nvcc cannot compile without them), nvidia-cuda-crt,
# nvidia-cuda-runtime (cuda.h, cuda_fp16.h, cuda_bf16.h, libcudart) and nvidia-cuda-cccl.
# `--runtime` adds the libraries a CUDA run opens (cuBLAS, cuBLASLt, cuRAND, NVRTC), for a GPU
# machine that has the NVIDIA driver but no toolkit.
#
# Nothing of the driver is linked: pretext's CUDA build opens libcuda, cuBLAS and friends when
# CUDA is first asked for (cudarc's dynamic loading; see ARCHITECTURE.md, "The GPU backend"), so
# there is no driver stub to make, and the binary starts on any machine. The one link name made
# here is `libcudart.so`, a linker script for the static CUDA runtime.
set -euo pipefail

VERSION="13.0.*"
runtime=0
dir=""
for arg in "$@"; do
    case "$arg" in
        --runtime) runtime=1 ;;
        -h | --help)
            sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "cuda-toolkit.sh: unknown option $arg (try --help)" >&2
            exit 2
            ;;
        *) dir="$arg" ;;
    esac
done
dir="${dir:-${XDG_CACHE_HOME:-$HOME/.cache}/pretext/cuda-13.0}"

repo="$(cd "$(dirname "$0")/.." && pwd -P)"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd -P)"
case "$dir/" in
    "$repo"/*)
        echo "cuda-toolkit.sh: $dir is inside the source tree; choose a folder outside $repo" >&2
        exit 2
        ;;
esac

python=""
for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -m pip --version >/dev/null 2>&1; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    echo "cuda-toolkit.sh: needs Python 3 with pip, to fetch NVIDIA's wheels from PyPI" >&2
    exit 1
fi

packages=(nvidia-cuda-nvcc nvidia-nvvm nvidia-cuda-crt nvidia-cuda-runtime nvidia-cuda-cccl)
if [ "$runtime" = 1 ]; then
    packages+=(nvidia-cublas nvidia-curand nvidia-cuda-nvrtc)
fi
specs=()
for p in "${packages[@]}"; do
    specs+=("$p==$VERSION")
done

wheels="$dir/wheels"
mkdir -p "$wheels"
echo "Fetching ${packages[*]} ($VERSION) into $wheels" >&2
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels" "${specs[@]}"

# Every wheel keeps its files under nvidia/cu13/{bin,nvvm,include,lib}: unpack them all into one
# tree, so that DIR/bin/nvcc finds DIR/nvvm and DIR/include as it would in a toolkit install.
# A half-finished earlier run is replaced, not trusted.
staging="$dir/.unpacking"
rm -rf "$staging"
mkdir -p "$staging"
"$python" - "$wheels" "$staging" "${packages[@]}" <<'EOF'
import os, pathlib, stat, sys, zipfile

wheels, staging, packages = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
for package in packages:
    prefix = package.replace("-", "_") + "-"
    found = sorted(w for w in wheels.glob("*.whl") if w.name.startswith(prefix) and "-13.0." in w.name)
    if not found:
        sys.exit(f"cuda-toolkit.sh: no 13.0 wheel for {package} in {wheels}")
    with zipfile.ZipFile(found[-1]) as wheel:
        for info in wheel.infolist():
            parts = pathlib.PurePosixPath(info.filename).parts
            if len(parts) < 4 or parts[:2] != ("nvidia", "cu13") or info.is_dir():
                continue
            target = staging.joinpath(*parts[2:])
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(info) as src, open(target, "wb") as dst:
                dst.write(src.read())
            mode = (info.external_attr >> 16) & 0o777
            if mode & stat.S_IXUSR or parts[2] == "bin" or "/bin/" in info.filename:
                os.chmod(target, 0o755)
EOF
for sub in bin nvvm include lib; do
    rm -rf "${dir:?}/$sub"
    if [ -e "$staging/$sub" ]; then
        mv "$staging/$sub" "$dir/$sub"
    fi
done
rm -rf "$staging"
# Some build scripts look for lib64 (a toolkit's usual layout).
ln -sfn lib "$dir/lib64"
# candle-kernels links its static kernels with `-lcudart`. Under that link name, a linker script
# hands the linker the static CUDA runtime, so the binary does not need libcudart.so.13 at run
# time either (the static runtime opens the driver itself when CUDA is first used).
cat >"$dir/lib/libcudart.so" <<EOF
/* Written by pretext's scripts/cuda-toolkit.sh: link the CUDA runtime statically. */
GROUP ( "$dir/lib/libcudart_static.a" -ldl -lrt -lpthread )
EOF

if ! "$dir/bin/nvcc" --version >/dev/null 2>&1; then
    echo "cuda-toolkit.sh: $dir/bin/nvcc does not run" >&2
    exit 1
fi
release="$("$dir/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"

cat >"$dir/env.sh" <<EOF
# CUDA $release from NVIDIA's wheels, for \`cargo build --release --features cuda\` (pretext).
export CUDA_ROOT="$dir"
export CUDA_PATH="$dir"
export PATH="$dir/bin:\$PATH"
export LIBRARY_PATH="$dir/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
# No GPU to ask at build time: candle's kernels are compiled for this compute capability
# (90 = H100/H200; PTX also runs on newer GPUs). Set your GPU's before building for another one.
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
EOF
if [ "$runtime" = 1 ]; then
    echo "export LD_LIBRARY_PATH=\"$dir/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\"" >>"$dir/env.sh"
fi

echo "CUDA $release toolkit ready in $dir. Now run:" >&2
echo "  source $dir/env.sh" >&2
cat "$dir/env.sh"
