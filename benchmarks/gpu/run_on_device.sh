#!/usr/bin/env bash
# One command on the lent GPU machine, sized for a 15-minute window (README.md, section 2): mamba-ssm and causal-conv1d
# (already installed on a warm machine, carried wheels, else built for sm_90), then check_cuda.py: correctness first,
# then the timings cut to what is left of MAMBAVL_DEVICE_LIMIT_S (default 510, under the run's timeout_s of 540).
# Results, logs and freshly built wheels go to $OUT (default /tmp/mambavl_out outside the device tool).
#
#     bash benchmarks/gpu/run_on_device.sh [check_cuda.py arguments, e.g. --sections scan_timing,model_timing]
#
# Carried (the repo's ignored .whl/): the sdists mamba_ssm-*.tar.gz and causal_conv1d-*.tar.gz; built/*.whl (or their
# *.whl.part-aa, -ab ... pieces) from an earlier call; py/*.whl, installed only if `import mambavl` fails.
set -uo pipefail

T0=$(date +%s)
LIMIT=${MAMBAVL_DEVICE_LIMIT_S:-510}
OUT=${OUT:-/tmp/mambavl_out}
SITE=/tmp/mambavl_site  # survives between calls while the machine stays warm: a second call then builds nothing
WHEELS=/tmp/mambavl_wheels PARTS=/tmp/mambavl_parts
mkdir -p "$OUT" "$SITE" "$WHEELS"
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log() { echo "[run_on_device $(($(date +%s) - T0))s] $*"; }
pip_install() { python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$@"; }
have_kernels() {
    python3 -c 'import selective_scan_cuda, causal_conv1d_cuda
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn' >/dev/null 2>&1
}

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')
log "$gpu"
if ! have_kernels && [ -d .whl/built ]; then
    for first in .whl/built/*.whl.part-aa; do  # wheels come back split to fit the 16 MiB limit on returned files
        [ -e "$first" ] && cat "${first%.part-aa}".part-* >"$WHEELS/$(basename "${first%.part-aa}")"
    done
    cp .whl/built/*.whl "$WHEELS"/ 2>/dev/null
    ls "$WHEELS"/mamba_ssm-*.whl "$WHEELS"/causal_conv1d-*.whl >/dev/null 2>&1 &&
        pip_install "$WHEELS"/mamba_ssm-*.whl "$WHEELS"/causal_conv1d-*.whl
fi
if have_kernels; then
    log "kernels already importable (warm machine or carried wheels): no build"
else
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    log "building mamba-ssm and causal-conv1d for sm_90 (about 2 minutes on 16 cores; build.log)"
    bash benchmarks/gpu/build_mamba_ssm.sh .whl "$SITE" "$WHEELS" >"$OUT/build.log" 2>&1 ||
        log "BUILD FAILED: the check runs anyway and records the fallback; end of build.log:"
    grep -v "ptxas info\|^ *\[\|Compiling\|bytes stack frame\|Used [0-9]* registers" "$OUT/build.log" | tail -n 15
    tail -c 8000000 "$OUT/build.log" >"$OUT/b" && mv "$OUT/b" "$OUT/build.log"  # at most 8 MB come back
    rm -rf "$PARTS" && mkdir -p "$PARTS"  # the wheels, for .whl/built/ next time: pieces under 16 MiB, if they fit
    for w in "$WHEELS"/*.whl; do  # beside the 4 other files in the 8 files that come back
        [ -e "$w" ] && split -b 15m -a 2 "$w" "$PARTS/$(basename "$w").part-"
    done
    if [ "$(ls "$PARTS" | wc -l)" -le 4 ]; then mv "$PARTS"/* "$OUT"/ 2>/dev/null
    else log "built wheels too large to return ($(du -sh "$WHEELS" | cut -f1)): a cold machine builds again"; fi
fi
if ! python3 -c 'import mambavl' 2>/tmp/mambavl_import_error.txt; then
    log "import mambavl failed: $(tail -n 1 /tmp/mambavl_import_error.txt); installing .whl/py/*.whl"
    pip_install .whl/py/*.whl
fi

BUDGET=$((LIMIT - $(date +%s) + T0 - 15))
log "check_cuda.py --time-budget $BUDGET (correctness first, then timings cut to the budget)"
python3 benchmarks/gpu/check_cuda.py --device cuda --output-dir "$OUT" --time-budget "$BUDGET" "$@" 2>&1 |
    tee "$OUT/check_cuda.log"
status=${PIPESTATUS[0]}
log "check_cuda.py exited with $status; \$OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
