"""What glibc's malloc costs the Mamba fusion on CPU at long sequences, and the setting that removes it.

Compares the Mamba fusion of ``benchmarks/fusion_scaling.py`` (its worker: forward and forward+backward, width 768,
batch 1, float32, 1,024 ... 16,384 video tokens; each case in ``--processes`` fresh processes, in rounds over all
cases so that a slow moment of a shared machine does not land on one setting only) under two glibc settings:

* ``default``: no ``MALLOC_*`` variable. glibc serves a block above its mmap threshold (adapting up to 32 MiB) with a
  fresh ``mmap`` and returns it on ``free``, so the next tensor of that size starts on pages the kernel must zero and
  map again: one minor page fault per 4 KiB, on every run once the fusion's largest tensors pass 32 MiB.
* ``retain``: ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296``: blocks up to 1 GiB come from
  the heap and freed memory stays with the process (both are needed), for a higher peak memory.

Target (issue 5): the forward+backward time grows at most 2.3x per doubling of the tokens, from 1,024 tokens.

Usage::

    python benchmarks/cpu_allocator.py                   # writes benchmarks/results/cpu_allocator.{json,md}
    python benchmarks/cpu_allocator.py --quick --output-dir /tmp/allocator     # tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fusion_scaling  # the sibling benchmark: its worker measures every case here
import harness

SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "retain": {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)},
}


def worker_env(setting: str) -> dict[str, str]:
    """This process's environment with every ``MALLOC_*`` variable replaced by those of ``setting``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **SETTINGS[setting]}


def run_case(args: argparse.Namespace, tokens: int, setting: str) -> dict[str, Any]:
    """One (tokens, setting) case in a fresh ``fusion_scaling.py`` worker with the setting's environment."""
    case = fusion_scaling.case_of(args, "mamba", tokens)
    result = harness.run_worker(fusion_scaling.__file__, case, env=worker_env(setting))
    expected = " ".join(f"{key}={value}" for key, value in sorted(SETTINGS[setting].items()))
    if result["malloc_env"] != expected:  # the setting must have reached the worker, or the comparison is void
        raise RuntimeError(f"the {setting} worker saw MALLOC_* = {result['malloc_env']!r}, expected {expected!r}")
    return result


def summarize(runs: list[dict[str, Any]], tokens: int, setting: str) -> dict[str, Any]:
    """One row of a (tokens, setting) case: medians over its processes, and each process's fwd+bwd time."""
    return {"video_tokens": tokens, "setting": setting, "malloc_env": runs[0]["malloc_env"],
            **{k: statistics.median(r[k] for r in runs) for k in ("fwd_ms", "fwd_bwd_ms", "fwd_bwd_faults",
                                                                   "fwd_bwd_peak_mib")},
            "min_cpu_per_wall": min(r["cpu_per_wall"] for r in runs), "threads": runs[0]["threads"],
            "fwd_bwd_ms_per_process": [r["fwd_bwd_ms"] for r in runs]}  # fmt: skip


def report(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown table (one line per size, the two settings side by side) and the checked figures."""
    by = {(r["video_tokens"], r["setting"]): r for r in rows}
    sizes = sorted({r["video_tokens"] for r in rows})
    growth = {s: fusion_scaling.growth_per_doubling(sizes, {n: by[(n, s)]["fwd_bwd_ms"] for n in sizes})
              for s in SETTINGS}  # fmt: skip
    ratio = {n: by[(n, "default")]["fwd_bwd_ms"] / by[(n, "retain")]["fwd_bwd_ms"] for n in sizes}
    cells = {"fwd_ms": "{:.1f}", "fwd_bwd_ms": "{:.1f}", "fwd_bwd_faults": "{:,.0f}", "fwd_bwd_peak_mib": "{:.0f}"}
    table = [
        [f"{n:,}", *(spec.format(by[(n, s)][k]) for s in SETTINGS for k, spec in cells.items()), f"{ratio[n]:.2f}x",
         *(harness.fmt(growth[s].get(n), "{:.2f}x") for s in SETTINGS)]
        for n in sizes
    ]  # fmt: skip
    header = ["video tokens", "default fwd (ms)", "default fwd+bwd (ms)", "faults per fwd+bwd", "peak (MiB)",
              "retain fwd (ms)", "retain fwd+bwd (ms)", "faults per fwd+bwd", "peak (MiB)",
              "default / retain fwd+bwd", "growth per doubling, default", "growth per doubling, retain"]  # fmt: skip
    checks: dict[str, Any] = {"default_over_retain_fwd_bwd": {str(n): r for n, r in ratio.items()}}
    for setting in SETTINGS:  # issue 5's linear-time bound, with fusion_scaling.py's rule
        checks.update(fusion_scaling.linear_growth_checks(growth[setting], setting))
    return harness.markdown_table(header, table), checks


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = harness.parser(__doc__, "tiny sizes, one process each, for a smoke test", repeats=3, processes=3, threads=0,
                       case_budget=120.0, wait_quiet=300.0)  # fmt: skip
    p.add_argument("--tokens", type=int, nargs="+", help="video token counts (default: 1024, 2048, ..., 16384)")
    p.add_argument("--hidden-size", type=int, default=768, help="fusion width (default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.hidden_size, args.repeats, args.processes, args.wait_quiet = 64, 1, 1, 0.0
    args.tokens = sorted(set(args.tokens or ([32, 64] if args.quick else [1024 * 2**i for i in range(5)])))
    if min(args.tokens) < 1 or args.repeats < 1 or args.processes < 1:
        p.error("--tokens, --repeats and --processes must be at least 1")
    # the rest of fusion_scaling.py's case: CPU, its question length (4 tokens with --quick), depth (unused by Mamba)
    args.device, args.question_tokens, args.depth = "cpu", 4 if args.quick else 16, 6
    started = time.strftime(fusion_scaling.STAMP)
    cases = [(n, s) for n in args.tokens for s in SETTINGS]
    runs = harness.in_rounds(cases, lambda c: run_case(args, *c), processes=args.processes,
                             wait_quiet_s=args.wait_quiet)  # fmt: skip
    rows = [summarize(case_runs, *case) for case, case_runs in runs.items()]
    table, checks = report(rows)
    spread = [f"{r['setting']} at {r['video_tokens']:,}: " + ", ".join(f"{ms:.0f}" for ms in times)
              for r in rows for times in [r["fwd_bwd_ms_per_process"]] if max(times) > 1.2 * min(times)]  # fmt: skip
    text = "\n".join([
        "# glibc malloc and the Mamba fusion on CPU" + (" (--quick smoke run)" if args.quick else ""), "",
        f"Mamba fusion (`fusion_type=\"mamba\"`, one layer), width {args.hidden_size}, batch 1, float32, N video "
        f"tokens + two {args.question_tokens}-token questions; selective scan: "
        f"{fusion_scaling.scan_backend('cpu')}; {args.threads or 'all'} threads; {args.processes} fresh process(es) "
        f"per case, medians over processes of each process's median of {args.repeats} runs (after a warm-up). "
        f"Measured from {started}.", "",
        "Settings: `default` = no `MALLOC_*` variable; `retain` = "
        + " ".join(f"`{k}={v}`" for k, v in SETTINGS["retain"].items()) + ".",
        "Faults: median minor page faults of one fwd+bwd run. Peak: max RSS over the process's own baseline.", "",
        table, "", "Checks: " + json.dumps(checks), "",
        "Processes more than 1.2x apart (fwd+bwd ms): " + ("; ".join(spread) or "none"), "",
        "Rerun: `python benchmarks/cpu_allocator.py`.", "",
    ])  # fmt: skip
    payload = {"setting": "quick" if args.quick else "full", "measured_at": started, "rows": rows, "checks": checks}
    harness.write_results(args.output_dir, "cpu_allocator", payload=payload, markdown=text)
    print(text)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
