"""What glibc's malloc costs the Mamba fusion on CPU at long sequences, and the setting that removes it.

On Linux, PyTorch's CPU tensors come from glibc's ``malloc``. glibc serves a block above its mmap threshold (which
adapts upwards, to at most 32 MiB by default) with a fresh ``mmap`` and gives it back to the OS on ``free``; the next
tensor of that size then starts on pages the kernel must zero and map again, one minor page fault per 4 KiB. At
width 768 the Mamba fusion's largest tensors pass 32 MiB at a few thousand tokens (the input projection's
``N x 3072`` floats at about 2,700, the scan's ``N x 1536`` at about 5,500), and from there every forward+backward
pays those faults again.

This benchmark runs the Mamba fusion of ``benchmarks/fusion_scaling.py`` (same module, inputs and timing; forward
and forward+backward, batch 1, float32) at each size under two glibc settings, side by side:

* ``default``: the process environment without any ``MALLOC_*`` variable;
* ``retain``: ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296``, so blocks up to 1 GiB come
  from the heap and freed memory stays with the process (both are needed: either alone still faults at some sizes).
  The price is memory: the process keeps its high-water mark instead of returning freed blocks to the OS.

Every (size, setting) case runs in ``--processes`` fresh processes, in rounds over all cases (so a slow moment of a
shared machine does not land on one setting only), after waiting for a quiet machine; the table reports the median
over processes of each process's median time, the median page faults of one run and the peak memory.

Usage::

    python benchmarks/cpu_allocator.py                   # writes benchmarks/results/cpu_allocator.{json,md}
    python benchmarks/cpu_allocator.py --quick --output-dir /tmp/allocator     # tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fusion_scaling  # the sibling benchmark: one definition of the case and its timing

logger = logging.getLogger("cpu_allocator")

RESULTS_DIR = fusion_scaling.RESULTS_DIR
#: The glibc settings compared, as the ``MALLOC_*`` environment of the worker processes.
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "retain": {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)},
}


def worker_env(setting: str) -> dict[str, str]:
    """This process's environment with every ``MALLOC_*`` variable replaced by those of ``setting``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    return {**env, **SETTINGS[setting]}


def run_case(args: argparse.Namespace, tokens: int, setting: str) -> dict[str, Any]:
    """One (tokens, setting) case in a fresh process (``fusion_scaling.py --worker``); returns its JSON result."""
    command = fusion_scaling.worker_command(args.case_args, "mamba", tokens)
    proc = subprocess.run(command, env=worker_env(setting), capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"cpu_allocator: the {setting} case at {tokens} tokens failed (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-2000:]}"
        )
    result = json.loads(lines[-1])
    expected = " ".join(f"{key}={value}" for key, value in sorted(SETTINGS[setting].items()))
    if result["malloc_env"] != expected:  # the setting must have reached the worker, or the comparison is void
        raise RuntimeError(
            f"cpu_allocator: the {setting} worker saw MALLOC_* = {result['malloc_env']!r}, expected {expected!r}"
        )
    return result


def measure(args: argparse.Namespace) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """All cases, ``args.processes`` rounds over (tokens, setting); results per case, one per process."""
    results: dict[tuple[int, str], list[dict[str, Any]]] = {(n, s): [] for n in args.tokens for s in SETTINGS}
    for round_ in range(args.processes):
        for tokens in args.tokens:
            for setting in SETTINGS:
                if args.wait_quiet > 0:
                    fusion_scaling.wait_for_quiet(args.wait_quiet)
                result = run_case(args, tokens, setting)
                results[(tokens, setting)].append(result)
                logger.info(
                    "round %d, %6d tokens, %-7s: fwd %8.1f ms, fwd+bwd %8.1f ms, %9.0f faults/run, peak %6.0f MiB, "
                    "%.2f CPU/wall", round_ + 1, tokens, setting, result["fwd_ms"], result["fwd_bwd_ms"],
                    result["fwd_bwd_faults"], result["fwd_bwd_peak_mib"], result["cpu_per_wall"],
                )  # fmt: skip
    return results


def summarize(results: dict[tuple[int, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (tokens, setting): medians over the processes, and the per-process fwd+bwd times."""
    rows = []
    for (tokens, setting), runs in results.items():
        rows.append({
            "video_tokens": tokens, "setting": setting, "malloc_env": runs[0]["malloc_env"],
            "fwd_ms": statistics.median(r["fwd_ms"] for r in runs),
            "fwd_bwd_ms": statistics.median(r["fwd_bwd_ms"] for r in runs),
            "fwd_bwd_faults": statistics.median(r["fwd_bwd_faults"] for r in runs),
            "fwd_bwd_peak_mib": statistics.median(r["fwd_bwd_peak_mib"] for r in runs),
            "min_cpu_per_wall": min(r["cpu_per_wall"] for r in runs), "threads": runs[0]["threads"],
            "fwd_bwd_ms_per_process": [r["fwd_bwd_ms"] for r in runs],
        })  # fmt: skip
    return rows


def report(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown table (one line per size, the two settings side by side) and the checked figures."""
    by = {(r["video_tokens"], r["setting"]): r for r in rows}
    sizes = sorted({r["video_tokens"] for r in rows})
    lines = [
        "| video tokens | default fwd (ms) | default fwd+bwd (ms) | faults per fwd+bwd | peak (MiB) "
        "| retain fwd (ms) | retain fwd+bwd (ms) | faults per fwd+bwd | peak (MiB) | default / retain fwd+bwd "
        "| growth per doubling, default | growth per doubling, retain |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    growth = {
        setting: fusion_scaling.growth_per_doubling(sizes, {n: by[(n, setting)]["fwd_bwd_ms"] for n in sizes})
        for setting in SETTINGS
    }
    ratio: dict[int, float] = {}
    for n in sizes:
        default, retain = by[(n, "default")], by[(n, "retain")]
        ratio[n] = default["fwd_bwd_ms"] / retain["fwd_bwd_ms"]
        cells = [f"{n:,}"]
        for row in (default, retain):
            cells += [f"{row['fwd_ms']:.1f}", f"{row['fwd_bwd_ms']:.1f}", f"{row['fwd_bwd_faults']:,.0f}",
                      f"{row['fwd_bwd_peak_mib']:.0f}"]  # fmt: skip
        cells.append(f"{ratio[n]:.2f}x")
        cells += [f"{growth[s][n]:.2f}x" if n in growth[s] else "-" for s in SETTINGS]
        lines.append("| " + " | ".join(cells) + " |")
    checks: dict[str, Any] = {"default_over_retain_fwd_bwd": {str(n): r for n, r in ratio.items()}}
    for setting in SETTINGS:  # issue 5's linear-time bound, with fusion_scaling.py's rule
        checks.update(fusion_scaling.linear_growth_checks(growth[setting], setting))
    return "\n".join(lines), checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", help="video token counts (default: 1024, 2048, ..., 16384)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per process after a warm-up (default: 3)")
    parser.add_argument(
        "--processes", type=int, default=3, help="fresh processes per (size, setting), in rounds (default: 3)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads in each case (default: torch's, one per core)"
    )
    parser.add_argument(
        "--wait-quiet", type=float, default=None,
        help="before each case wait up to this many seconds for no other running task (default: 300, 0 with "
        "--quick; 0 disables)",
    )  # fmt: skip
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one process each, for a smoke test")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens = args.tokens or [32, 64]
        args.hidden_size, args.repeats, args.processes = 64, 1, 1
    args.tokens = sorted(set(args.tokens or [1024 * 2**i for i in range(5)]))
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 300.0
    for name in ("repeats", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if any(n < 1 for n in args.tokens):
        parser.error(f"--tokens must be positive, got {args.tokens}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    case = ["--device", "cpu", "--hidden-size", str(args.hidden_size), "--repeats", str(args.repeats)]
    case += ["--question-tokens", "4"] if args.quick else []
    case += ["--threads", str(args.threads)] if args.threads is not None else []
    args.case_args = fusion_scaling.parse_args(case)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not sys.platform.startswith("linux"):
        logger.warning("cpu_allocator: the MALLOC_* variables are glibc's; on %s they change nothing", sys.platform)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rows = summarize(measure(args))
    table, checks = report(rows)
    spread = [
        f"{r['setting']} at {r['video_tokens']:,}: " + ", ".join(f"{ms:.0f}" for ms in r["fwd_bwd_ms_per_process"])
        for r in rows
        if max(r["fwd_bwd_ms_per_process"]) > 1.2 * min(r["fwd_bwd_ms_per_process"])
    ]
    info = fusion_scaling.scan_backend("cpu")
    text = "\n".join([
        "# glibc malloc and the Mamba fusion on CPU" + (" (--quick smoke run)" if args.quick else ""),
        "",
        f"Mamba fusion (`fusion_type=\"mamba\"`, one layer), width {args.hidden_size}, batch 1, float32, N video "
        f"tokens + two {args.case_args.question_tokens}-token questions; selective scan: {info}; "
        f"{args.threads or 'all'} threads; {args.processes} fresh process(es) per case, medians over processes of "
        f"each process's median of {args.repeats} runs (after a warm-up). Measured from {started}.",
        "",
        "Settings: `default` = no `MALLOC_*` variable; `retain` = "
        + " ".join(f"`{k}={v}`" for k, v in SETTINGS["retain"].items()) + ".",
        "Faults: median minor page faults of one fwd+bwd run. Peak: max RSS over the process's own baseline.",
        "",
        table,
        "",
        "Checks: " + json.dumps(checks),
        "",
        "Processes more than 1.2x apart (fwd+bwd ms): " + ("; ".join(spread) if spread else "none"),
        "",
        "Rerun: `python benchmarks/cpu_allocator.py`.",
        "",
    ])  # fmt: skip
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "cpu_allocator.md").write_text(text)
    payload = {"setting": "quick" if args.quick else "full", "measured_at": started, "rows": rows, "checks": checks}
    (args.output_dir / "cpu_allocator.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(text)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
