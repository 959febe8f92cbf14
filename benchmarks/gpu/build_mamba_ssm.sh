#!/usr/bin/env bash
# Build mamba-ssm and causal-conv1d from their sdists, for Hopper (sm_90) only, with no network (README.md, section 1,
# says how the sdists are fetched and why each step below is needed).
#
#     bash benchmarks/gpu/build_mamba_ssm.sh [SDIST_DIR [TARGET_DIR [WHEEL_DIR]]]
#
#   SDIST_DIR   mamba_ssm-*.tar.gz and causal_conv1d-*.tar.gz         (default: .whl)
#   TARGET_DIR  where the built packages are installed (PYTHONPATH)    (default: /tmp/mambavl_site)
#   WHEEL_DIR   where the built wheels are written                    (default: /tmp/mambavl_wheels)
#
# Environment: MAX_JOBS (default: CPUs), MAMBAVL_GENCODE (default "arch=compute_90,code=sm_90"), CUDA_HOME (default:
# found from nvcc), PYTHON (default python3). Needs nvcc of torch's CUDA major version, a CUDA build of torch,
# setuptools, wheel, packaging and ninja (all in the GPU machine's image).
set -euo pipefail

die() {
    echo "build_mamba_ssm.sh: ERROR: $*" >&2
    exit 1
}

SDIST_DIR=${1:-.whl}
TARGET_DIR=${2:-/tmp/mambavl_site}
WHEEL_DIR=${3:-/tmp/mambavl_wheels}
PYTHON=${PYTHON:-python3}
BUILD_ROOT=${MAMBAVL_BUILD_ROOT:-/tmp/mambavl_build}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
GENCODE=${MAMBAVL_GENCODE:-arch=compute_90,code=sm_90}
export MAMBAVL_GENCODE=$GENCODE
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE
export MAMBA_SKIP_CUDA_BUILD=FALSE CAUSAL_CONV1D_SKIP_CUDA_BUILD=FALSE
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- the source distributions ------------------------------------------------------------------------------------
[ -d "$SDIST_DIR" ] || die "no folder $SDIST_DIR with the sdists (fetch them first: benchmarks/gpu/README.md, section 1)"
shopt -s nullglob
mamba_sdists=("$SDIST_DIR"/mamba_ssm-*.tar.gz)
conv_sdists=("$SDIST_DIR"/causal_conv1d-*.tar.gz)
shopt -u nullglob
[ ${#mamba_sdists[@]} -eq 1 ] || die "expected exactly one $SDIST_DIR/mamba_ssm-*.tar.gz, found ${#mamba_sdists[@]}"
[ ${#conv_sdists[@]} -eq 1 ] || die "expected exactly one $SDIST_DIR/causal_conv1d-*.tar.gz, found ${#conv_sdists[@]}"

# ---- the toolchain -----------------------------------------------------------------------------------------------
"$PYTHON" - <<'EOF' || die "the build needs a CUDA build of torch and setuptools, wheel, packaging, ninja (see above)"
import importlib.util, sys
missing = [m for m in ("torch", "setuptools", "wheel", "packaging", "ninja") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {missing}")
import torch
if torch.version.cuda is None:
    sys.exit(f"torch {torch.__version__} is not a CUDA build")
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"GPU visible: {torch.cuda.is_available()}")
EOF

# torch's BuildExtension runs the `ninja` program; without it on PATH it silently compiles one file at a time
if ! command -v ninja >/dev/null; then
    ninja_dir=$("$PYTHON" -c 'import ninja, os; print(getattr(ninja, "BIN_DIR", ""))' 2>/dev/null || true)
    [ -n "$ninja_dir" ] && [ -x "$ninja_dir/ninja" ] && export PATH="$ninja_dir:$PATH"
    py_bin=$(dirname "$(command -v "$PYTHON")")
    [ -x "$py_bin/ninja" ] && export PATH="$py_bin:$PATH"
fi
command -v ninja >/dev/null || die "no ninja program on PATH (pip's ninja package provides one): a build without it is serial"
echo "ninja $(ninja --version) at $(command -v ninja)"

find_cuda_home() {
    # torch's own guess is dirname(dirname(which nvcc)), wrong when nvcc is a wrapper script (e.g. /usr/local/bin/nvcc
    # running /usr/local/cuda-13.0/bin/nvcc): look for a folder with bin/nvcc and include/cuda_runtime.h.
    local candidates=()
    [ -n "${CUDA_HOME:-}" ] && candidates+=("$CUDA_HOME")
    candidates+=(/usr/local/cuda)
    if command -v nvcc >/dev/null; then
        local nvcc_path
        nvcc_path=$(readlink -f "$(command -v nvcc)")
        candidates+=("$(dirname "$(dirname "$nvcc_path")")")
        # a wrapper script: `exec /path/to/cuda/bin/nvcc "$@"`
        local wrapped
        wrapped=$(grep -o '/[^ "]*/bin/nvcc' "$nvcc_path" 2>/dev/null | head -n 1 || true)
        [ -n "$wrapped" ] && candidates+=("$(dirname "$(dirname "$wrapped")")")
    fi
    candidates+=(/usr/local/cuda-*)
    local c
    for c in "${candidates[@]}"; do
        if [ -x "$c/bin/nvcc" ] && [ -f "$c/include/cuda_runtime.h" ]; then
            echo "$c"
            return 0
        fi
    done
    return 1
}
CUDA_HOME=$(find_cuda_home) || die "no CUDA toolkit found (a folder with bin/nvcc and include/cuda_runtime.h); set CUDA_HOME"
export CUDA_HOME
export PATH="$CUDA_HOME/bin:$PATH"
nvcc_release=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
torch_cuda=$("$PYTHON" -c 'import torch; print(torch.version.cuda)')
echo "CUDA_HOME=$CUDA_HOME (nvcc $nvcc_release), torch built with CUDA $torch_cuda, MAX_JOBS=$MAX_JOBS, gencode: $GENCODE"
[ "${nvcc_release%%.*}" = "${torch_cuda%%.*}" ] ||
    die "nvcc $nvcc_release and torch's CUDA $torch_cuda differ in major version: the extension would not load"
if [ ! -d "$CUDA_HOME/include/cub" ] && [ ! -d "$CUDA_HOME/include/cccl/cub" ]; then
    die "no CUB headers under $CUDA_HOME/include (or include/cccl): the kernels include <cub/...>"
fi

# ---- unpack, patch the gencode flags, build ----------------------------------------------------------------------
rm -rf "$BUILD_ROOT"
mkdir -p "$BUILD_ROOT" "$TARGET_DIR" "$WHEEL_DIR"

patch_setup() {
    # Insert, just before the "# HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI" block (inside the CUDA branch,
    # after cc_flag was filled), a line that replaces cc_flag by the gencode values of MAMBAVL_GENCODE.
    "$PYTHON" - "$1" <<'EOF'
import sys
path = sys.argv[1]
lines = open(path).read().split("\n")
anchor = [i for i, line in enumerate(lines) if line.strip().startswith("# HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI")]
if len(anchor) != 1 or "cc_flag = []" not in "\n".join(lines[: anchor[0]]):
    sys.exit(f"{path}: cannot find where cc_flag is complete (the '# HACK: The compiler flag' block); "
             "this version of setup.py is not supported by build_mamba_ssm.sh")
indent = lines[anchor[0]][: len(lines[anchor[0]]) - len(lines[anchor[0]].lstrip())]
lines[anchor[0]:anchor[0]] = [
    f"{indent}# patched by mambavl's benchmarks/gpu/build_mamba_ssm.sh: only the gencode targets in MAMBAVL_GENCODE",
    f"{indent}cc_flag = [f for g in os.environ['MAMBAVL_GENCODE'].split() for f in ('-gencode', g)]",
    f"{indent}print('mambavl patch: nvcc targets', cc_flag)",
]
open(path, "w").write("\n".join(lines))
EOF
}

build_one() {  # build_one SDIST NAME -> wheel in WHEEL_DIR, log in BUILD_ROOT/NAME.log
    local sdist=$1 name=$2 src
    tar -xzf "$sdist" -C "$BUILD_ROOT"
    src=$(find "$BUILD_ROOT" -mindepth 1 -maxdepth 1 -type d -name "${name}-*" | head -n 1)
    [ -n "$src" ] && [ -f "$src/setup.py" ] || die "$sdist did not unpack to a folder with setup.py"
    patch_setup "$src/setup.py"
    (cd "$src" && "$PYTHON" -m pip wheel --no-build-isolation --no-deps --no-index -v -w "$WHEEL_DIR" .) \
        >"$BUILD_ROOT/$name.log" 2>&1
}

started=$(date +%s)
echo "building $(basename "${conv_sdists[0]}") and $(basename "${mamba_sdists[0]}") in parallel (logs in $BUILD_ROOT)"
build_one "${conv_sdists[0]}" causal_conv1d &
conv_pid=$!
build_one "${mamba_sdists[0]}" mamba_ssm &
mamba_pid=$!
status=0
wait "$conv_pid" || { echo "---- causal-conv1d build FAILED; end of its log:" >&2; tail -n 60 "$BUILD_ROOT/causal_conv1d.log" >&2; status=1; }
wait "$mamba_pid" || { echo "---- mamba-ssm build FAILED; end of its log:" >&2; tail -n 60 "$BUILD_ROOT/mamba_ssm.log" >&2; status=1; }
echo "build step done in $(($(date +%s) - started)) s:"
ls -l "$WHEEL_DIR"
grep -h "mambavl patch: nvcc targets" "$BUILD_ROOT"/*.log | sort -u || echo "WARNING: the setup.py patch did not print"

# ---- install (what was built, even after a partial failure: the check then shows which half works) ---------------
shopt -s nullglob
built=("$WHEEL_DIR"/causal_conv1d-*.whl "$WHEEL_DIR"/mamba_ssm-*.whl)
shopt -u nullglob
if [ ${#built[@]} -gt 0 ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$TARGET_DIR" "${built[@]}"
fi
[ $status -eq 0 ] || die "build failed (full logs: $BUILD_ROOT/*.log); installed: ${built[*]:-nothing}"
PYTHONPATH="$TARGET_DIR${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - <<'EOF' || die "the built packages do not import (see above)"
import causal_conv1d, causal_conv1d_cuda, selective_scan_cuda
import mamba_ssm
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # what mambavl imports
print(f"mamba-ssm {mamba_ssm.__version__} ({selective_scan_cuda.__file__}), "
      f"causal-conv1d {causal_conv1d.__version__} ({causal_conv1d_cuda.__file__})")
EOF
echo "OK: installed into $TARGET_DIR (export PYTHONPATH=$TARGET_DIR:\$PYTHONPATH)"
