#!/usr/bin/env bash
# One call on the lent GPU machine: install what was carried, build (or reuse) mamba-ssm and causal-conv1d, run
# check_cuda.py, and leave the results, the logs and the built wheels under $OUT.
#
# Usage (repository root on the GPU machine; `.whl` carried, see benchmarks/gpu/README.md):
#
#     bash benchmarks/gpu/run_on_device.sh [extra check_cuda.py arguments, e.g. --sections scan_timing]
#
# Carried layout (the repo's ignored .whl/ folder):
#   .whl/mamba_ssm-*.tar.gz, .whl/causal_conv1d-*.tar.gz   the sdists (always)
#   .whl/built/*.whl (or *.whl.part-aa, -ab, ... pieces)   wheels built by an earlier call: no rebuild when they load
#   .whl/py/*.whl                                          pure-Python wheels, installed only if `import mambavl`
#                                                          fails with the machine's own packages (e.g. transformers)
# Environment: MAMBAVL_DEVICE_LIMIT_S (default 590: the call's time limit, minus a margin), OUT (default
# /tmp/mambavl_out when not run by the device tool).
set -uo pipefail

T0=$(date +%s)
LIMIT=${MAMBAVL_DEVICE_LIMIT_S:-590}
OUT=${OUT:-/tmp/mambavl_out}
SITE=/tmp/mambavl_site
WHEELS=/tmp/mambavl_wheels
mkdir -p "$OUT" "$SITE" "$WHEELS"
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=python3
elapsed() { echo $(($(date +%s) - T0)); }
log() { echo "[run_on_device $(elapsed)s] $*"; }

log "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
$PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
                                 torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO GPU")'

# ---- 1. mamba-ssm and causal-conv1d: carried prebuilt wheels, else build from the sdists --------------------------
have_kernels() {
    $PY -c 'import selective_scan_cuda, causal_conv1d_cuda
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn' >/dev/null 2>&1
}
if [ -d .whl/built ]; then
    for first in .whl/built/*.whl.part-aa; do  # reassemble wheels split to fit the 16 MiB limit on returned files
        [ -e "$first" ] || continue
        cat "${first%.part-aa}".part-* >"$WHEELS/$(basename "${first%.part-aa}")"
    done
    cp .whl/built/*.whl "$WHEELS"/ 2>/dev/null
    if ls "$WHEELS"/mamba_ssm-*.whl "$WHEELS"/causal_conv1d-*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
            "$WHEELS"/mamba_ssm-*.whl "$WHEELS"/causal_conv1d-*.whl
    fi
fi
if have_kernels; then
    log "using the carried prebuilt wheels: $(ls "$WHEELS" | tr '\n' ' ')"
    BUILT=carried
else
    [ -d .whl/built ] && log "carried wheels missing or not loadable here: building from the sdists"
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    bash benchmarks/gpu/build_mamba_ssm.sh .whl "$SITE" "$WHEELS" 2>&1 | tee "$OUT/build.log" | grep -v "^ *ptxas info\|^ *\[\|^ *Compiling\|bytes stack frame\|^ *Used [0-9]* registers" | tail -n 40
    if [ "${PIPESTATUS[0]}" -ne 0 ]; then
        log "BUILD FAILED: the check runs anyway and records the fallback (see build.log, *_build_tail.log)"
        for name in mamba_ssm causal_conv1d; do  # the end of pip's verbose logs (nvcc errors), within the size limit
            [ -f "/tmp/mambavl_build/$name.log" ] && tail -c 3000000 "/tmp/mambavl_build/$name.log" >"$OUT/${name}_build_tail.log"
        done
    fi
    BUILT=fresh
    # keep the log under the 16 MiB limit on returned files
    if [ -f "$OUT/build.log" ] && [ "$(stat -c %s "$OUT/build.log")" -gt 8000000 ]; then
        tail -c 8000000 "$OUT/build.log" >"$OUT/build.log.tmp" && mv "$OUT/build.log.tmp" "$OUT/build.log"
    fi
fi
# return freshly built wheels (split when over 15 MiB) so the next call can carry them in .whl/built/
if [ "$BUILT" = fresh ]; then
    for w in "$WHEELS"/*.whl; do
        [ -e "$w" ] || continue
        if [ "$(stat -c %s "$w")" -gt 15728640 ]; then
            split -b 15m -a 2 "$w" "$OUT/$(basename "$w").part-"
        else
            cp "$w" "$OUT"/
        fi
    done
fi

# ---- 2. the library itself: the machine's packages, else the carried pure-Python wheels ---------------------------
if ! $PY -c 'import mambavl' 2>"$OUT/import_error.txt"; then
    log "import mambavl failed with the machine's packages: $(tail -n 1 "$OUT/import_error.txt")"
    if ls .whl/py/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/py/*.whl
        $PY -c 'import mambavl' || log "still failing after installing .whl/py/*.whl"
    fi
else
    rm -f "$OUT/import_error.txt"
fi

# ---- 3. the check -------------------------------------------------------------------------------------------------
BUDGET=$((LIMIT - $(elapsed) - 20))
log "running check_cuda.py with --time-budget $BUDGET"
$PY benchmarks/gpu/check_cuda.py --device cuda --output-dir "$OUT" --time-budget "$BUDGET" "$@" 2>&1 |
    tee "$OUT/check_cuda.log"
status=${PIPESTATUS[0]}
log "check_cuda.py exited with $status; files in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
