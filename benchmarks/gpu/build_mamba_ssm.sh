#!/usr/bin/env bash
# Build mamba-ssm and causal-conv1d from their sdists, for Hopper (sm_90) only, with no network (README.md, section 1,
# says how the sdists are fetched and why each step below is needed).
#
#     bash benchmarks/gpu/build_mamba_ssm.sh [SDIST_DIR (.whl) [TARGET_DIR (/tmp/mambavl_site) [WHEEL_DIR]]]
#
# Environment: MAX_JOBS (default: CPUs), MAMBAVL_GENCODE (default "arch=compute_90,code=sm_90"), CUDA_HOME (default:
# found from nvcc), PYTHON (default python3). Needs nvcc of torch's CUDA major version, a CUDA build of torch,
# setuptools, wheel, packaging and ninja (all in the GPU machine's image).
set -euo pipefail
die() { echo "build_mamba_ssm.sh: ERROR: $*" >&2; exit 1; }

SDIST_DIR=${1:-.whl} TARGET_DIR=${2:-/tmp/mambavl_site} WHEEL_DIR=${3:-/tmp/mambavl_wheels}
PYTHON=${PYTHON:-python3} BUILD_ROOT=${MAMBAVL_BUILD_ROOT:-/tmp/mambavl_build}
export MAX_JOBS=${MAX_JOBS:-$(nproc)} MAMBAVL_GENCODE=${MAMBAVL_GENCODE:-arch=compute_90,code=sm_90}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# without FORCE_BUILD, bdist_wheel first downloads a prebuilt wheel and dies offline on an uncaught URLError
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE
export MAMBA_SKIP_CUDA_BUILD=FALSE CAUSAL_CONV1D_SKIP_CUDA_BUILD=FALSE

# ---- the sources and the toolchain -------------------------------------------------------------------------------
[ -d "$SDIST_DIR" ] || die "no folder $SDIST_DIR with the sdists (fetch them: benchmarks/gpu/README.md, section 1)"
sdist() {  # the one SDIST_DIR/NAME-*.tar.gz
    local found=("$SDIST_DIR"/"$1"-*.tar.gz)
    [ ${#found[@]} -eq 1 ] && [ -f "${found[0]}" ] || die "expected exactly one $SDIST_DIR/$1-*.tar.gz"
    echo "${found[0]}"
}
mamba_sdist=$(sdist mamba_ssm) && conv_sdist=$(sdist causal_conv1d) || exit 1
"$PYTHON" -c 'import torch, setuptools, wheel, packaging, ninja; assert torch.version.cuda, "not a CUDA build of torch"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), GPU visible: {torch.cuda.is_available()}")' ||
    die "the build needs a CUDA build of torch and setuptools, wheel, packaging, ninja"
# torch's BuildExtension runs the `ninja` program: without it on PATH it silently compiles one file at a time
ninja_dir=$("$PYTHON" -c 'import ninja; print(getattr(ninja, "BIN_DIR", ""))' 2>/dev/null || true)
command -v ninja >/dev/null || export PATH="$ninja_dir:$(dirname "$(command -v "$PYTHON")"):$PATH"
command -v ninja >/dev/null || die "no ninja on PATH (pip's ninja package has one): without it the build is serial"

# torch guesses CUDA_HOME from `which nvcc`, wrong when nvcc is a wrapper script (e.g. /usr/local/bin/nvcc running
# /usr/local/cuda-13.0/bin/nvcc): take the first folder with bin/nvcc and include/cuda_runtime.h
nvcc=$(readlink -f "$(command -v nvcc || echo /nonexistent)")
wrapped=$(grep -so '/[^ "]*/bin/nvcc' "$nvcc" | head -n 1 || true)
for c in ${CUDA_HOME:-} /usr/local/cuda "${nvcc%/bin/nvcc}" "${wrapped%/bin/nvcc}" /usr/local/cuda-*; do
    [ -x "$c/bin/nvcc" ] && [ -f "$c/include/cuda_runtime.h" ] && export CUDA_HOME=$c && break
done
[ -x "${CUDA_HOME:-}/bin/nvcc" ] || die "no CUDA toolkit (bin/nvcc and include/cuda_runtime.h): set CUDA_HOME"
export PATH="$CUDA_HOME/bin:$PATH"
nvcc_release=$(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
torch_cuda=$("$PYTHON" -c 'import torch; print(torch.version.cuda)')
echo "CUDA_HOME=$CUDA_HOME (nvcc $nvcc_release), torch's CUDA $torch_cuda, MAX_JOBS=$MAX_JOBS, $MAMBAVL_GENCODE"
[ "${nvcc_release%%.*}" = "${torch_cuda%%.*}" ] ||
    die "nvcc $nvcc_release and torch's CUDA $torch_cuda differ in major version: the extension would not load"
[ -d "$CUDA_HOME/include/cub" ] || [ -d "$CUDA_HOME/include/cccl/cub" ] ||
    die "no CUB headers under $CUDA_HOME/include (or include/cccl): the kernels include <cub/...>"

# ---- unpack, keep only the gencode targets of MAMBAVL_GENCODE (not nine: nine times less compilation), build ---
build_one() {  # build_one SDIST NAME -> a wheel in WHEEL_DIR, the log in BUILD_ROOT/NAME.log
    tar -xzf "$1" -C "$BUILD_ROOT"
    local setup=("$BUILD_ROOT/$2"-*/setup.py) hack="# HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
    local flags="cc_flag = [f for g in os.environ['MAMBAVL_GENCODE'].split() for f in ('-gencode', g)]"
    # the "# HACK" block comes after cc_flag is filled: replace it just before, with the same indentation
    [ "$(grep -c "$hack" "${setup[0]}")" = 1 ] || die "${setup[0]}: no single '$hack' block: not supported"
    sed -i "s|^\( *\)\($hack\)|\1$flags\n\1print('mambavl patch: nvcc targets', cc_flag)\n\1\2|" "${setup[0]}"
    cd "$(dirname "${setup[0]}")"
    "$PYTHON" -m pip wheel --no-build-isolation --no-deps --no-index -v -w "$WHEEL_DIR" . >"$BUILD_ROOT/$2.log" 2>&1
}
rm -rf "$BUILD_ROOT" && mkdir -p "$BUILD_ROOT" "$TARGET_DIR" "$WHEEL_DIR"
started=$(date +%s) status=0
echo "building $(basename "$conv_sdist") and $(basename "$mamba_sdist") in parallel (logs in $BUILD_ROOT)"
(build_one "$conv_sdist" causal_conv1d) & conv_pid=$!
(build_one "$mamba_sdist" mamba_ssm) & mamba_pid=$!
failed() { echo "---- $1 build FAILED; end of its log:" >&2; tail -n 60 "$BUILD_ROOT/$1.log" >&2; status=1; }
wait $conv_pid || failed causal_conv1d
wait $mamba_pid || failed mamba_ssm
echo "build step done in $(($(date +%s) - started)) s:" && ls -l "$WHEEL_DIR"
grep -h "mambavl patch: nvcc targets" "$BUILD_ROOT"/*.log | sort -u || echo "WARNING: the setup.py patch did not print"

# ---- install what was built, even after a partial failure: the check then shows which half works ---------------
built=$(ls "$WHEEL_DIR"/causal_conv1d-*.whl "$WHEEL_DIR"/mamba_ssm-*.whl 2>/dev/null || true)
# shellcheck disable=SC2086  # $built: the wheels' paths, one a word
[ -z "$built" ] || "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade -t "$TARGET_DIR" $built
[ $status -eq 0 ] || die "build failed (full logs: $BUILD_ROOT/*.log); installed: ${built:-nothing}"
PYTHONPATH="$TARGET_DIR${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c 'import causal_conv1d, causal_conv1d_cuda, mamba_ssm
import selective_scan_cuda
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # what mambavl imports
print(f"mamba-ssm {mamba_ssm.__version__}, causal-conv1d {causal_conv1d.__version__}")' ||
    die "the built packages do not import (see above)"
echo "OK: installed into $TARGET_DIR (export PYTHONPATH=$TARGET_DIR:\$PYTHONPATH)"
