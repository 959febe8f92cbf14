"""Time and peak memory of the Mamba fusion vs a 6x4 transformer fusion as the number of video tokens grows.

Only the fusion modules are measured (``mambavl.fusion.build_fusion`` with ``fusion_type="mamba"`` and
``"transformer"``), at width 768, batch 1, float32, with ``N`` video tokens and a verb and a noun question of 16
tokens each (no padding, so no attention mask: SDPA may use its flash kernels). For each case:

* **forward**: ``fusion(...)`` under ``torch.no_grad()`` (inference);
* **forward+backward**: ``fusion(...)`` then ``(verb_features + noun_features).sum().backward()``, with the inputs
  requiring gradients (as when the projections below the fusion are trained).

Timing: one warm-up run, then the median of ``--repeats`` runs (fewer when a run is long, see ``--case-budget``;
a warm-up longer than a quarter of the case's budget counts as a timed run; the CSV says how many runs were timed).
On CUDA the runs are timed with CUDA events after a synchronize.

Peak memory: every (fusion, tokens) case runs in a fresh Python subprocess. On CPU the peak is the process's maximum
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after the runs minus the same maximum just before
the first run (after the module and the inputs were built): the extra memory the computation needed (activations,
gradients, attention and scan workspaces, allocator slack), excluding weights and inputs. The forward runs first, so
the forward+backward peak (which is larger) is read from the same high-water mark. On CUDA it is
``torch.cuda.max_memory_allocated()`` minus the memory allocated before the runs.

On a shared CPU machine, each case first waits (``--wait-quiet``) until no other task is running, and a case that got
less than 85% of its threads' CPU time (other processes took the cores) runs once more; the CSV keeps the run that got
the most CPU (``cpu_per_wall``) and marks a case still contended as such.

Cases are skipped (and listed) when the previous size predicts a run longer than ``--case-budget`` or the total
time would pass ``--time-budget``; ``--max-tokens`` caps the sizes.

Usage::

    python benchmarks/fusion_scaling.py                        # CPU, writes benchmarks/results/fusion_scaling_cpu.*
    python benchmarks/fusion_scaling.py --device cuda          # CUDA, writes fusion_scaling_cuda.*
    python benchmarks/fusion_scaling.py --quick --output-dir /tmp/scaling    # tiny smoke run
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("fusion_scaling")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FUSIONS = ("mamba", "transformer")
#: A CPU case that got less than this fraction of ``threads`` CPU seconds per wall second was contended.
CONTENDED_FRACTION = 0.85
#: Statuses of measured cases.
MEASURED = ("ok", "contended")
CSV_FIELDS = [
    "device", "fusion", "video_tokens", "question_tokens", "hidden_size", "status", "fwd_ms", "fwd_bwd_ms",
    "fwd_repeats", "fwd_bwd_repeats", "fwd_peak_mib", "fwd_bwd_peak_mib", "fwd_bwd_faults", "memory_method",
    "attention_kernel", "scan_backend", "threads", "cpu_per_wall", "malloc_env", "load_1min", "measured_at",
    "reused",
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# one case, in a fresh process
# --------------------------------------------------------------------------------------------


def build_case(fusion_type: str, tokens: int, hidden_size: int, question_tokens: int, depth: int, device: str):
    """The fusion module and its inputs for one case."""
    from mambavl import MambaVLConfig
    from mambavl.fusion import build_fusion

    config = MambaVLConfig(
        hidden_size=hidden_size, video_feature_size=hidden_size, fusion_type=fusion_type,
        fusion_transformer_depth=depth, fusion_transformer_heads=4,
    )  # fmt: skip
    torch.manual_seed(0)
    fusion = build_fusion(config).to(device)  # PyTorch's default init: timing does not depend on the values
    video = torch.randn(1, tokens, hidden_size, device=device)
    verb = torch.randn(1, question_tokens, hidden_size, device=device)
    noun = torch.randn(1, question_tokens, hidden_size, device=device)
    return fusion, (video, verb, noun)


class _Timer:
    """Wall-clock timer: CUDA events on CUDA, ``time.perf_counter`` on CPU; returns milliseconds."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3


def _minor_faults() -> int:
    """Minor page faults of this process so far (each a fresh page the kernel zeroed and mapped; 0 off Unix)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _malloc_env() -> str:
    """The glibc malloc settings in this process's environment (``MALLOC_*`` variables), as ``NAME=value`` pairs."""
    return " ".join(f"{key}={value}" for key, value in sorted(os.environ.items()) if key.startswith("MALLOC_"))


def _repeat(fn, timer: _Timer, repeats: int, budget_ms: float) -> tuple[float, int, float]:
    """One warm-up, then up to ``repeats`` timed runs within ``budget_ms``: (median ms, timed runs, median faults).

    A warm-up longer than a quarter of the budget is itself kept as a timed run (its one-time costs, a few
    milliseconds of allocation and kernel set-up, are negligible next to it), so a long case costs one or two runs.
    The faults are the minor page faults of each timed run (see :func:`_minor_faults`).
    """

    def run() -> tuple[float, int]:
        before = _minor_faults()
        ms = timer(fn)
        return ms, _minor_faults() - before

    warm = run()
    runs = [warm] if warm[0] > budget_ms / 4 else []
    count = min(repeats, int((budget_ms - warm[0]) // max(warm[0], 1e-3)))
    runs += [run() for _ in range(max(count, 0 if runs else 1))]
    return statistics.median(ms for ms, _ in runs), len(runs), statistics.median(faults for _, faults in runs)


def _max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20  # KiB on Linux, bytes on macOS


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one (fusion, tokens) case in this process (call it in a fresh one)."""
    (tokens,) = args.tokens
    fusion, inputs = build_case(args.fusion, tokens, args.hidden_size, args.question_tokens, args.depth, args.device)
    timer = _Timer(args.device)
    cuda = args.device.startswith("cuda")
    budget_ms = args.case_budget * 1e3 / 2  # half for the forward, half for forward+backward

    def forward():
        with torch.no_grad():
            fusion(*inputs)

    leaves = [x.detach().requires_grad_(True) for x in inputs]

    def forward_backward():
        fusion.zero_grad(set_to_none=True)
        for x in leaves:
            x.grad = None
        out = fusion(*leaves)
        (out.verb_features.sum() + out.noun_features.sum()).backward()

    def peak_mib(baseline: float) -> float:
        if cuda:
            return (torch.cuda.max_memory_allocated() - baseline) / 2**20
        return _max_rss_mib() - baseline

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _max_rss_mib()
    usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fwd_ms, fwd_runs, _ = _repeat(forward, timer, args.repeats, budget_ms)
    fwd_peak = peak_mib(baseline)
    fwd_bwd_ms, fwd_bwd_runs, fwd_bwd_faults = _repeat(forward_backward, timer, args.repeats, budget_ms)
    fwd_bwd_peak = peak_mib(baseline)
    # CPU seconds this process got per wall second: about the thread count when it had the cores to itself, less
    # when other processes competed for them (a check on the timings' quality on a shared machine).
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    cpu_per_wall = cpu / max(time.perf_counter() - wall, 1e-9)
    return {
        "fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms, "fwd_repeats": fwd_runs, "fwd_bwd_repeats": fwd_bwd_runs,
        "fwd_peak_mib": fwd_peak, "fwd_bwd_peak_mib": fwd_bwd_peak, "fwd_bwd_faults": fwd_bwd_faults,
        "threads": torch.get_num_threads(), "cpu_per_wall": cpu_per_wall,
        "malloc_env": _malloc_env(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# backends actually used
# --------------------------------------------------------------------------------------------


def attention_kernels(device: str, hidden_size: int) -> str:
    """The SDPA kernels the transformer fusion runs on ``device`` (forward and backward), read from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    fusion, inputs = build_case("transformer", 64, hidden_size, 16, 1, device)
    leaves = [x.requires_grad_(True) for x in inputs]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        out = fusion(*leaves)
        out.verb_features.sum().backward()
    names = sorted({e.key for e in prof.key_averages() if "attention" in e.key and "scaled_dot_product" in e.key})
    names = [n for n in names if n != "aten::scaled_dot_product_attention"]
    return ", ".join(names) or "math (unfused: matmul + softmax)"


def scan_backend(device: str) -> str:
    """The selective-scan backend ``"auto"`` picks for float32 inputs on ``device``."""
    from mambavl.ops import resolve_backend

    if resolve_backend("auto", torch.empty(1, device=device)) == "cuda":
        return "cuda (mamba-ssm kernel)"
    return "torch (pure PyTorch, chunked)"


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def worker_command(args: argparse.Namespace, fusion: str, tokens: int) -> list[str]:
    """The command line that measures one (fusion, tokens) case in a fresh process (also used by cpu_allocator.py)."""
    return [
        sys.executable, str(Path(__file__).resolve()), "--worker", "--fusion", fusion, "--tokens", str(tokens),
        "--device", args.device, "--hidden-size", str(args.hidden_size), "--question-tokens",
        str(args.question_tokens), "--depth", str(args.depth), "--repeats", str(args.repeats), "--case-budget",
        str(args.case_budget),
    ] + (["--threads", str(args.threads)] if args.threads is not None else [])  # fmt: skip


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV written by this script, with numbers parsed (empty cells: ``None``)."""
    integers = ("video_tokens", "question_tokens", "hidden_size", "fwd_repeats", "fwd_bwd_repeats", "threads")
    floats = (
        "fwd_ms", "fwd_bwd_ms", "fwd_peak_mib", "fwd_bwd_peak_mib", "fwd_bwd_faults", "cpu_per_wall", "load_1min",
    )  # fmt: skip
    written = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(path.stat().st_mtime))
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                if key in integers or key in floats:
                    parsed[key] = (int if key in integers else float)(value) if value else None
                else:
                    parsed[key] = value
            if parsed.get("status") in MEASURED and not parsed.get("measured_at"):
                parsed["measured_at"] = f"before {written} (file time)"
            rows.append(parsed)
    return rows


def load_clean_rows(path: Path, args: argparse.Namespace) -> dict[tuple[str, int], dict[str, Any]]:
    """Uncontended, successful rows of an earlier run's CSV with this run's settings, keyed by (fusion, tokens)."""
    if not path.is_file():
        return {}
    clean = {}
    cpu = not args.device.startswith("cuda")
    for row in read_rows(path):
        if row.get("status") != "ok" or row.get("device") != args.device or row.get("cpu_per_wall") is None:
            continue
        same_setting = (row["hidden_size"], row["question_tokens"]) == (args.hidden_size, args.question_tokens) and (
            args.threads is None or row["threads"] == args.threads
        )
        if same_setting and not (cpu and row["cpu_per_wall"] < CONTENDED_FRACTION * row["threads"]):
            clean[(row["fusion"], row["video_tokens"])] = {**row, "reused": "yes"}
    return clean


def measure_all(args: argparse.Namespace, kernels: str, reuse: dict | None = None) -> list[dict[str, Any]]:
    """Run every case in a fresh subprocess, in order of size, skipping those predicted to be too long.

    ``reuse`` maps ``(fusion, tokens)`` to rows of an earlier run (``--resume``) that are kept as they are.
    """
    reuse = reuse or {}
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    backend = scan_backend(args.device)
    logger.info("SDPA kernels (transformer fusion): %s; selective scan: %s", kernels, backend)
    memory_method = (
        "torch.cuda.max_memory_allocated - allocated before"
        if args.device.startswith("cuda")
        else "max RSS (getrusage) - max RSS before the runs, fresh process"
    )
    history: dict[str, list[tuple[int, float]]] = {fusion: [] for fusion in FUSIONS}  # (tokens, ms of one pair)
    for tokens in args.tokens:  # size by size, so a time budget cuts the largest sizes of both fusions
        for fusion in FUSIONS:
            row = {
                "device": args.device, "fusion": fusion, "video_tokens": tokens,
                "question_tokens": args.question_tokens, "hidden_size": args.hidden_size,
                "memory_method": memory_method, "attention_kernel": kernels if fusion == "transformer" else "",
                "scan_backend": backend if fusion == "mamba" else "",
            }  # fmt: skip
            if (fusion, tokens) in reuse:
                kept = reuse[(fusion, tokens)]
                rows.append(kept)
                history[fusion].append((tokens, kept["fwd_ms"] + kept["fwd_bwd_ms"]))
                logger.info("%-11s %6d tokens: kept from the earlier run (%s)", fusion, tokens, kept["measured_at"])
                continue
            predicted = _predict_seconds(history[fusion], tokens, fusion)
            elapsed = time.monotonic() - started
            reason = None
            if tokens > args.max_tokens.get(fusion, math.inf):
                reason = f"above --max-tokens ({args.max_tokens[fusion]})"
            elif predicted is not None and predicted > 2 * args.case_budget:
                reason = f"predicted {predicted:.0f}s per run pair > 2 x --case-budget ({args.case_budget:.0f}s)"
            elif predicted is not None and elapsed + predicted * 2 > args.time_budget:
                reason = f"would pass --time-budget ({args.time_budget:.0f}s; {elapsed:.0f}s used)"
            if reason:
                logger.info("skip %s at %d tokens: %s", fusion, tokens, reason)
                rows.append({**row, "status": f"skipped: {reason}"})
                continue
            result, waited = _run_worker(args, fusion, tokens)
            started += waited  # waiting for a quiet machine does not count against --time-budget
            if "error" in result:
                rows.append({**row, "status": result["error"]})
                continue
            rows.append({**row, **result})
            history[fusion].append((tokens, result["fwd_ms"] + result["fwd_bwd_ms"]))
            logger.info(
                "%-11s %6d tokens: fwd %9.1f ms, fwd+bwd %9.1f ms, peak %7.1f / %7.1f MiB, %.2f CPU/wall (%s)",
                fusion, tokens, result["fwd_ms"], result["fwd_bwd_ms"], result["fwd_peak_mib"],
                result["fwd_bwd_peak_mib"], result["cpu_per_wall"], result["status"],
            )  # fmt: skip
    return rows


def _run_worker(args: argparse.Namespace, fusion: str, tokens: int) -> tuple[dict[str, Any], float]:
    """Run one case in a fresh process; on CPU, wait for a quiet machine first and run a contended case again once.

    Returns the result (with ``status`` "ok" or "contended", or ``error``) and the seconds spent waiting.
    """
    cpu = not args.device.startswith("cuda")
    waited, best = 0.0, None
    for attempt in range(2 if cpu and args.wait_quiet > 0 else 1):
        if cpu and args.wait_quiet > 0:
            waited += wait_for_quiet(args.wait_quiet)
        load = _load_average()
        proc = subprocess.run(worker_command(args, fusion, tokens), capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            logger.warning("%s at %d tokens failed (exit %d): %s", fusion, tokens, proc.returncode,
                           proc.stderr.strip()[-2000:])  # fmt: skip
            return {"error": f"failed: exit {proc.returncode}"}, waited
        result = {**json.loads(lines[-1]), "load_1min": load}
        # With T threads and the cores to itself, a case gets about T CPU seconds per wall second.
        contended = cpu and result["cpu_per_wall"] < CONTENDED_FRACTION * result["threads"]
        result["status"] = "contended" if contended else "ok"
        if best is None or result["cpu_per_wall"] > best["cpu_per_wall"]:
            best = result
        if not contended:
            break
        if attempt == 0 and args.wait_quiet > 0:
            logger.info("%s at %d tokens ran contended (%.2f CPU/wall); running it again once the machine is quiet",
                        fusion, tokens, result["cpu_per_wall"])  # fmt: skip
    return best, waited


def _running_tasks() -> float:
    """Runnable tasks on the machine besides this sampler, averaged over one second (from /proc/loadavg)."""
    samples = []
    for _ in range(5):
        try:
            samples.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return 0.0
        time.sleep(0.2)
    return sum(samples) / len(samples)


def wait_for_quiet(max_wait: float) -> float:
    """Wait (at most ``max_wait`` seconds) until no other task is running; returns the seconds waited."""
    start = time.monotonic()
    while (busy := _running_tasks()) >= 0.5 and time.monotonic() - start < max_wait:
        time.sleep(5)
    waited = time.monotonic() - start
    if busy >= 0.5:
        logger.warning("machine still busy (%.1f other running tasks) after waiting %.0fs; measuring anyway", busy,
                       waited)  # fmt: skip
    elif waited > 2:
        logger.info("waited %.0fs for a quiet machine", waited)
    return waited


def _predict_seconds(history: list[tuple[int, float]], tokens: int, fusion: str) -> float | None:
    """Predicted seconds of one forward + one forward+backward at ``tokens``, from the measured sizes."""
    if not history:
        return None
    last_tokens, last_ms = history[-1]
    if len(history) >= 2:
        (t0, ms0), (t1, ms1) = history[-2], history[-1]
        exponent = max(1.0, min(2.0, math.log(ms1 / ms0) / math.log(t1 / t0))) if ms0 > 0 else 1.0
    else:
        exponent = 2.0 if fusion == "transformer" else 1.0
    return last_ms / 1e3 * (tokens / last_tokens) ** exponent


def growth_per_doubling(sizes: list[int], times_ms: dict[int, float]) -> dict[int, float]:
    """Time at ``N`` / time at ``N/2`` for each size ``N`` in sorted ``sizes`` whose predecessor there is ``N/2``,
    where both were measured (keys of ``times_ms``)."""
    return {
        n: times_ms[n] / times_ms[prev]
        for prev, n in itertools.pairwise(sizes)
        if n == 2 * prev and n in times_ms and prev in times_ms
    }


def linear_growth_checks(growth: dict[int, float], prefix: str) -> dict[str, Any]:
    """Issue 5's linear-time check on ``growth`` (from :func:`growth_per_doubling`), keys prefixed by ``prefix``.

    Checked on the sizes where fixed per-call costs no longer dominate (from 1,024 tokens, when measured; all sizes
    otherwise): the largest growth per doubling must be at most 2.3x.
    """
    large = {n: g for n, g in growth.items() if n >= 1024} or growth
    if not large:
        return {}
    return {
        f"{prefix}_growth_checked_from_tokens": min(large),
        f"{prefix}_max_growth_per_doubling": max(large.values()),
        f"{prefix}_growth_at_most_2.3x": max(large.values()) <= 2.3,
    }


def summary_table(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown table with the transformer/Mamba ratios and Mamba's growth per doubling, and the checked targets."""
    ok = {(r["fusion"], r["video_tokens"]): r for r in rows if r["status"] in MEASURED}
    sizes = sorted({r["video_tokens"] for r in rows})
    lines = [
        "| video tokens | Mamba fwd (ms) | Mamba fwd+bwd (ms) | Transf. fwd (ms) | Transf. fwd+bwd (ms) "
        "| T/M fwd | T/M fwd+bwd | Mamba fwd+bwd growth per doubling | Mamba peak fwd+bwd (MiB) "
        "| Transf. peak fwd+bwd (MiB) | Mamba page faults per fwd+bwd |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(value: float | None, fmt: str = "{:.1f}") -> str:
        return "-" if value is None else fmt.format(value)

    growth = growth_per_doubling(sizes, {n: r["fwd_bwd_ms"] for (fusion, n), r in ok.items() if fusion == "mamba"})
    for n in sizes:
        m, t = ok.get(("mamba", n)), ok.get(("transformer", n))
        lines.append(
            "| " + " | ".join([
                f"{n:,}", cell(m and m["fwd_ms"]), cell(m and m["fwd_bwd_ms"]), cell(t and t["fwd_ms"]),
                cell(t and t["fwd_bwd_ms"]), cell(m and t and t["fwd_ms"] / m["fwd_ms"], "{:.2f}x"),
                cell(m and t and t["fwd_bwd_ms"] / m["fwd_bwd_ms"], "{:.2f}x"), cell(growth.get(n), "{:.2f}x"),
                cell(m and m["fwd_bwd_peak_mib"], "{:.0f}"), cell(t and t["fwd_bwd_peak_mib"], "{:.0f}"),
                cell(m and m.get("fwd_bwd_faults"), "{:,.0f}"),
            ]) + " |"
        )  # fmt: skip
    common = [n for n in sizes if ("mamba", n) in ok and ("transformer", n) in ok]
    largest = max(common) if common else None
    checks: dict[str, Any] = {"largest_common_tokens": largest}
    if largest is not None:
        speedup = ok[("transformer", largest)]["fwd_bwd_ms"] / ok[("mamba", largest)]["fwd_bwd_ms"]
        checks["fwd_bwd_speedup_at_largest"] = speedup
        checks["speedup_at_least_5x"] = speedup >= 5
    if growth:
        checks["mamba_growth_per_doubling"] = {str(k): v for k, v in growth.items()}
        checks.update(linear_growth_checks(growth, "mamba"))
    return "\n".join(lines), checks


def plot(rows: list[dict[str, Any]], path: Path, device: str, args: argparse.Namespace) -> None:
    """Log-log time (fwd and fwd+bwd) and peak memory against video tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"mamba": "tab:green", "transformer": "tab:red"}
    labels = {"mamba": "Mamba fusion", "transformer": f"Transformer {args.depth}x4 (SDPA)"}
    for fusion in FUSIONS:
        done = sorted(
            (r for r in rows if r["fusion"] == fusion and r["status"] in MEASURED), key=lambda r: r["video_tokens"]
        )
        if not done:
            continue
        x = [r["video_tokens"] for r in done]
        ax_time.plot(x, [r["fwd_ms"] for r in done], "o--", color=colors[fusion], label=f"{labels[fusion]} fwd")
        ax_time.plot(x, [r["fwd_bwd_ms"] for r in done], "s-", color=colors[fusion], label=f"{labels[fusion]} fwd+bwd")
        ax_mem.plot(x, [max(r["fwd_peak_mib"], 0.1) for r in done], "o--", color=colors[fusion],
                    label=f"{labels[fusion]} fwd")  # fmt: skip
        ax_mem.plot(x, [max(r["fwd_bwd_peak_mib"], 0.1) for r in done], "s-", color=colors[fusion],
                    label=f"{labels[fusion]} fwd+bwd")  # fmt: skip
    contended = [r for r in rows if r["status"] == "contended"]
    if contended:
        times = [(r["video_tokens"], ms) for r in contended for ms in (r["fwd_ms"], r["fwd_bwd_ms"])]
        ax_time.plot(*zip(*times, strict=True), "kx", markersize=9, label="contended: other processes took CPU")
    for ax, ylabel in ((ax_time, "time (ms)"), (ax_mem, "peak memory over baseline (MiB, 0 drawn at 0.1)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"video tokens (+ {args.question_tokens}-token questions)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    threads = f", {torch.get_num_threads()} threads" if device == "cpu" else ""
    ax_time.set_title(f"Fusion time, width {args.hidden_size}, batch 1, float32, {device}{threads}", fontsize=10)
    ax_mem.set_title("Peak memory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--tokens", type=int, nargs="+", help="video token counts (default: 256, 512, ..., 16384)")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="skip sizes above this (both fusions; default: none)"
    )
    parser.add_argument(
        "--max-tokens-transformer", type=int, default=None, help="skip transformer sizes above this (default: none)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case after a warm-up (default: 3)")
    parser.add_argument(
        "--case-budget", type=float, default=120.0,
        help="seconds for the runs of one case (half forward, half forward+backward); fewer repeats when runs are "
        "long, and a size is skipped when the previous sizes predict one forward + one forward+backward longer than "
        "twice this (default: 120)",
    )  # fmt: skip
    parser.add_argument(
        "--time-budget", type=float, default=840.0, help="stop starting cases after this many seconds (default: 840)"
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads in each case (default: torch's, one per core); 1 is steadier on a busy machine",
    )  # fmt: skip
    parser.add_argument(
        "--wait-quiet", type=float, default=None,
        help="CPU: before each case wait up to this many seconds for no other running task, and run a case again "
        "once if it got less than 85%% of its threads' CPU time (default: 300, 0 with --quick; 0 disables)",
    )  # fmt: skip
    parser.add_argument(
        "--resume", action="store_true",
        help="keep the uncontended rows of the existing CSV in --output-dir (same device and sizes) and measure only "
        "the other cases",
    )  # fmt: skip
    parser.add_argument(
        "--report-only", action="store_true", help="measure nothing: rebuild the .md and .png from the existing CSV"
    )
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--question-tokens", type=int, default=16)
    parser.add_argument("--depth", type=int, default=6, help="transformer fusion depth (default: 6; heads: 4)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fusion", choices=FUSIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens = args.tokens or [32, 64]
        args.hidden_size, args.depth, args.repeats, args.question_tokens = 64, 2, 2, 4
    args.tokens = sorted(set(args.tokens or [256 * 2**i for i in range(7)]))
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 300.0
    if any(n < 1 for n in args.tokens):
        parser.error(f"--tokens must be positive, got {args.tokens}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    args.max_tokens = {
        "mamba": args.max_tokens or math.inf,
        "transformer": min(args.max_tokens or math.inf, args.max_tokens_transformer or math.inf),
    }
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_case(args)), flush=True)
        return {}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device_name = "cuda" if args.device.startswith("cuda") else "cpu"
    stem = args.output_dir / f"fusion_scaling_{device_name}"
    if args.report_only:
        if not stem.with_suffix(".csv").is_file():
            raise FileNotFoundError(f"--report-only needs {stem.with_suffix('.csv')}, which does not exist")
        rows = read_rows(stem.with_suffix(".csv"))
        kernels = next((r["attention_kernel"] for r in rows if r.get("attention_kernel")), "-")
        load_note = "report rebuilt from the CSV (`--report-only`); see `load_1min` there for each case"
    else:
        load_before = _load_average()
        logger.info("1-minute load average before: %s; torch threads: %d", load_before, torch.get_num_threads())
        kernels = attention_kernels(args.device, args.hidden_size)
        reuse = load_clean_rows(stem.with_suffix(".csv"), args) if args.resume else {}
        rows = measure_all(args, kernels, reuse)
        load_note = f"{load_before:.2f} before, {_load_average():.2f} after this invocation"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in row.items()})
    plot(rows, stem.with_suffix(".png"), device_name, args)
    table, checks = summary_table(rows)
    ratios = [r["cpu_per_wall"] for r in rows if r["status"] in MEASURED]
    cpu_use = f"min {min(ratios):.2f}, max {max(ratios):.2f}" if ratios else "-"
    skipped = [
        f"{r['fusion']} at {r['video_tokens']:,} tokens: {r['status']}" for r in rows if r["status"] not in MEASURED
    ]
    contended = [
        f"{r['fusion']} at {r['video_tokens']:,} tokens ({r['cpu_per_wall']:.2f} CPU/wall)"
        for r in rows
        if r["status"] == "contended"
    ]
    malloc_env = "; ".join(sorted({r["malloc_env"] for r in rows if r.get("malloc_env")})) or "none"
    if device_name == "cuda":
        hardware = torch.cuda.get_device_name()
    else:
        hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    text = "\n".join([
        f"# Fusion scaling on {device_name}" + (" (--quick smoke run)" if args.quick else ""),
        "",
        f"Mamba fusion vs transformer fusion ({args.depth}x4, PyTorch SDPA), width {args.hidden_size}, batch 1, "
        f"float32, N video tokens + verb and noun questions of {args.question_tokens} tokens. "
        f"Hardware: {hardware}; torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"1-minute load average: {load_note} (the CSV's `load_1min` is the load as each case started, this "
        "benchmark's own threads included).",
        "",
        f"SDPA kernels of the transformer fusion (profiler, forward and backward): {kernels}; "
        f"selective scan: {scan_backend(args.device)}.",
        f"Timing: median of up to {args.repeats} runs after one warm-up (see the CSV for the run counts); "
        "forward under `torch.no_grad()`, forward+backward with input gradients.",
        f"Peak memory: {rows[0]['memory_method'] if rows else '-'}.",
        "A forward peak of 0 MiB means the forward fit in memory the process had already touched while setting up.",
        f"CPU seconds per wall second during the runs (about the thread count when the cores were free): {cpu_use}.",
        "",
        table,
        "",
        "T/M: transformer time / Mamba time. Growth per doubling: Mamba fwd+bwd time at N / at N/2 "
        "(1.0 = constant, 2.0 = linear, 4.0 = quadratic). Page faults: median minor page faults of one Mamba "
        "fwd+bwd run, each a fresh 4 KiB page the kernel zeroes and maps (about 1 us each on the benchmark's CPU "
        "machine). glibc's malloc gives every block above 32 MiB back to the OS when it is freed, so the fusion's "
        "largest tensors fault on every run once they pass 32 MiB (at width 768: the input projection's `N x 3072` "
        "floats from about 2,700 tokens, the scan's `N x 1536` from about 5,500); "
        "`benchmarks/cpu_allocator.py` measures what that costs and how to avoid it. glibc settings from the "
        f"environment (`MALLOC_*`): {malloc_env}.",
        "",
        "Targets: " + json.dumps(checks),
        "",
        "Skipped or failed: " + ("; ".join(skipped) if skipped else "none"),
        "",
        "Kept from an earlier run (`--resume`; see `measured_at` in the CSV): "
        + (", ".join(f"{r['fusion']} at {r['video_tokens']:,}" for r in rows if r.get("reused")) or "none"),
        "",
        "Contended (other processes took CPU time during the case even after waiting and one retry; its times are "
        "inflated): " + ("; ".join(contended) if contended else "none"),
        "",
        "Rerun: `python benchmarks/fusion_scaling.py" + (f" --device {args.device}" if device_name == "cuda" else "")
        + "` (on a shared machine it waits for quiet moments; `--resume` re-measures only the contended or missing "
        "cases, `--report-only` rebuilds this page from the CSV).",
        "",
    ])  # fmt: skip
    stem.with_suffix(".md").write_text(text)
    print(text)
    logger.info("wrote %s.{csv,png,md}", stem)
    return {"rows": rows, "checks": checks}


if __name__ == "__main__":
    main(sys.argv[1:])
