#!/usr/bin/env bash
# One command on the lent GPU machine, sized for a 15-minute window (machine start and idle included, 10 minutes at
# most a command): mamba-ssm and causal-conv1d (already installed on a warm machine, carried wheels, else built for
# sm_90), then check_cuda.py: correctness sections first, then the timings cut to what is left of the limit. Results,
# logs and freshly built wheels go to $OUT. See benchmarks/gpu/README.md.
#
#     bash benchmarks/gpu/run_on_device.sh [check_cuda.py arguments, e.g. --sections scan_timing,model_timing]
#
# Carried (the repo's ignored .whl/): mamba_ssm-*.tar.gz and causal_conv1d-*.tar.gz (the sdists); built/*.whl (or
# *.whl.part-aa, -ab ... pieces) from an earlier call; py/*.whl, installed only if `import mambavl` fails.
# Environment: MAMBAVL_DEVICE_LIMIT_S (default 510: this command's whole time, under the run's timeout_s of 540),
# OUT (default /tmp/mambavl_out outside the device tool).
set -uo pipefail

T0=$(date +%s)
LIMIT=${MAMBAVL_DEVICE_LIMIT_S:-510}
OUT=${OUT:-/tmp/mambavl_out}
SITE=/tmp/mambavl_site  # survives between calls while the machine stays warm: a second call then builds nothing
WHEELS=/tmp/mambavl_wheels
mkdir -p "$OUT" "$SITE" "$WHEELS"
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log() { echo "[run_on_device $(($(date +%s) - T0))s] $*"; }
have_kernels() {
    python3 -c 'import selective_scan_cuda, causal_conv1d_cuda
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn' >/dev/null 2>&1
}

log "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
if ! have_kernels && [ -d .whl/built ]; then
    for first in .whl/built/*.whl.part-aa; do  # wheels split to fit the 16 MiB limit on returned files
        [ -e "$first" ] && cat "${first%.part-aa}".part-* >"$WHEELS/$(basename "${first%.part-aa}")"
    done
    cp .whl/built/*.whl "$WHEELS"/ 2>/dev/null
    ls "$WHEELS"/mamba_ssm-*.whl "$WHEELS"/causal_conv1d-*.whl >/dev/null 2>&1 &&
        python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
            "$WHEELS"/mamba_ssm-*.whl "$WHEELS"/causal_conv1d-*.whl
fi
if have_kernels; then
    log "kernels already importable (warm machine or carried wheels): no build"
else
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    log "building mamba-ssm and causal-conv1d for sm_90 (about 2 minutes on 16 cores; build.log)"
    bash benchmarks/gpu/build_mamba_ssm.sh .whl "$SITE" "$WHEELS" >"$OUT/build.log" 2>&1 ||
        log "BUILD FAILED: the check runs anyway and records the fallback; end of build.log:"
    grep -v "ptxas info\|^ *\[\|Compiling\|bytes stack frame\|Used [0-9]* registers" "$OUT/build.log" | tail -n 15
    [ "$(stat -c %s "$OUT/build.log")" -gt 8000000 ] && tail -c 8000000 "$OUT/build.log" >"$OUT/b" && mv "$OUT/b" "$OUT/build.log"
    mkdir -p /tmp/mambavl_parts && rm -f /tmp/mambavl_parts/*
    for w in "$WHEELS"/*.whl; do  # the built wheels come back in pieces under 16 MiB, for .whl/built/ next time,
        [ -e "$w" ] && split -b 15m -a 2 "$w" "/tmp/mambavl_parts/$(basename "$w").part-"
    done  # when they fit beside the 4 other files in the 8 files that come back
    if [ "$(ls /tmp/mambavl_parts | wc -l)" -le 4 ]; then mv /tmp/mambavl_parts/* "$OUT"/ 2>/dev/null
    else log "built wheels too large to return ($(du -sh "$WHEELS" | cut -f1)): a cold machine builds again"; fi
fi
if ! python3 -c 'import mambavl' 2>/tmp/mambavl_import_error.txt; then
    log "import mambavl failed: $(tail -n 1 /tmp/mambavl_import_error.txt); installing .whl/py/*.whl"
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/py/*.whl
fi

BUDGET=$((LIMIT - $(date +%s) + T0 - 15))
log "check_cuda.py --time-budget $BUDGET (correctness first, then timings cut to the budget)"
python3 benchmarks/gpu/check_cuda.py --device cuda --output-dir "$OUT" --time-budget "$BUDGET" "$@" 2>&1 |
    tee "$OUT/check_cuda.log"
status=${PIPESTATUS[0]}
log "check_cuda.py exited with $status; \$OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
