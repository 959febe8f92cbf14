"""Time and peak memory of the Mamba fusion against a 6x4 transformer fusion as the number of video tokens grows.

Compares the fusion modules alone (``mambavl.fusion.build_fusion`` with ``fusion_type="mamba"`` and
``"transformer"``, SDPA attention) at width 768, batch 1, float32, ``N`` video tokens (256 ... 16,384) and a verb and
a noun question of 16 tokens: forward (``no_grad``) and forward+backward (``(verb + noun features).sum()``, inputs
requiring gradients), time, peak memory and, for Mamba, the page faults of one forward+backward. Each case runs in a
fresh process on a quiet machine (``benchmarks/harness.py``); sizes predicted to pass ``--case-budget`` or
``--time-budget`` are skipped.

Targets (issue 5): the Mamba fusion's forward+backward at least 5x faster than the transformer's at the largest size
both ran, and its time growing linearly: at most 2.3x per doubling of ``N`` from 1,024 tokens.

Usage::

    python benchmarks/fusion_scaling.py --repeats 7         # CPU: writes benchmarks/results/fusion_scaling_cpu.*
    python benchmarks/fusion_scaling.py --device cuda       # CUDA: fusion_scaling_cuda.*
    python benchmarks/fusion_scaling.py --quick --output-dir /tmp/scaling    # tiny smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from mambavl import MambaVLConfig
from mambavl.fusion import build_fusion
from mambavl.ops import resolve_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

FUSIONS = ("mamba", "transformer")
MEASURED = ("ok", "contended")
STAMP = "%Y-%m-%dT%H:%M:%S%z"
CSV_FIELDS = [
    "device", "fusion", "video_tokens", "question_tokens", "hidden_size", "status", "fwd_ms", "fwd_bwd_ms",
    "fwd_repeats", "fwd_bwd_repeats", "fwd_peak_mib", "fwd_bwd_peak_mib", "fwd_bwd_faults", "memory_method",
    "attention_kernel", "scan_backend", "threads", "cpu_per_wall", "malloc_env", "load_1min", "measured_at", "reused",
]  # fmt: skip


def build_case(case: dict[str, Any]) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The fusion module (PyTorch's default init) and its inputs ``(video, verb, noun)``, each ``(1, tokens, D)``."""
    width, device = case["hidden_size"], case["device"]
    config = MambaVLConfig(hidden_size=width, video_feature_size=width, fusion_type=case["fusion"],
                           fusion_transformer_depth=case["depth"], fusion_transformer_heads=4)  # fmt: skip
    torch.manual_seed(0)
    sizes = (case["tokens"], case["question_tokens"], case["question_tokens"])
    return build_fusion(config).to(device), [torch.randn(1, n, width, device=device) for n in sizes]


def measure(case: dict[str, Any]) -> dict[str, Any]:
    """One (fusion, tokens) case in this process (a fresh one): forward, then forward+backward."""
    if case["threads"]:
        torch.set_num_threads(case["threads"])
    fusion, inputs = build_case(case)
    leaves = [x.detach().requires_grad_(True) for x in inputs]

    def forward() -> None:
        with torch.no_grad():
            fusion(*inputs)

    def forward_backward() -> None:
        fusion.zero_grad(set_to_none=True)
        out = fusion(*leaves)
        (out.verb_features.sum() + out.noun_features.sum()).backward()

    timing = {"repeats": case["repeats"], "budget_s": case["case_budget"] / 2, "device": case["device"]}
    with harness.PeakMemory(case["device"]) as peak:  # the forward first: fwd+bwd's larger peak reads the same mark
        fwd = harness.time_call(forward, **timing)
        fwd_peak = peak.mib()
        fwd_bwd = harness.time_call(forward_backward, **timing)
    shares = [t["cpu_per_wall"] for t in (fwd, fwd_bwd) if t["cpu_per_wall"] is not None]
    return {
        "fwd_ms": fwd["median_ms"], "fwd_bwd_ms": fwd_bwd["median_ms"], "fwd_repeats": fwd["samples"],
        "fwd_bwd_repeats": fwd_bwd["samples"], "fwd_peak_mib": fwd_peak, "fwd_bwd_peak_mib": peak.mib(),
        "fwd_bwd_faults": fwd_bwd["faults_per_call"], "threads": torch.get_num_threads(),
        "cpu_per_wall": min(shares, default=None), "malloc_env": harness.machine_info()["malloc_env"],
        "measured_at": time.strftime(STAMP),
    }  # fmt: skip


def attention_kernels(device: str, hidden_size: int) -> str:
    """The SDPA kernels the transformer fusion runs on ``device`` (forward and backward), read from the profiler."""
    case = {"fusion": "transformer", "tokens": 64, "question_tokens": 16, "depth": 1}
    fusion, inputs = build_case({**case, "hidden_size": hidden_size, "device": device})
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device == "cuda")) as prof:
        fusion(*[x.requires_grad_(True) for x in inputs]).verb_features.sum().backward()
    names = sorted({e.key for e in prof.key_averages() if "attention" in e.key and "scaled_dot_product" in e.key})
    return ", ".join(n for n in names if n != "aten::scaled_dot_product_attention") or "math (unfused)"


def scan_backend(device: str) -> str:
    """The selective-scan backend ``"auto"`` picks for float32 inputs on ``device``."""
    picked = resolve_backend("auto", torch.empty(1, device=device))
    return "cuda (mamba-ssm kernel)" if picked == "cuda" else "torch (pure PyTorch, chunked)"


def case_of(args: argparse.Namespace, fusion: str, tokens: int) -> dict[str, Any]:
    """The worker's case for one (fusion, tokens) (also used by cpu_allocator.py)."""
    keys = ("device", "hidden_size", "question_tokens", "depth", "repeats", "case_budget", "threads")
    return {"fusion": fusion, "tokens": tokens, **{k: getattr(args, k) for k in keys}}


def predict_seconds(history: list[tuple[int, float]], tokens: int, fusion: str) -> float | None:
    """Seconds of one forward + one forward+backward at ``tokens``, extrapolated from the sizes measured."""
    if not history:
        return None
    t1, ms1 = history[-1]
    exponent = 2.0 if fusion == "transformer" else 1.0  # attention is quadratic, the scan linear
    if len(history) > 1:
        t0, ms0 = history[-2]
        exponent = max(1.0, min(2.0, math.log(ms1 / ms0) / math.log(t1 / t0)))
    return ms1 / 1e3 * (tokens / t1) ** exponent


def load_clean_rows(path: Path, args: argparse.Namespace) -> dict[tuple[str, int], dict[str, Any]]:
    """``--resume``: the uncontended, measured rows of an earlier CSV with this run's device, width, question tokens
    and (when given) threads, keyed by ``(fusion, tokens)``; rows without ``measured_at`` get the file's time."""
    if not path.is_file():
        return {}
    written = time.strftime(STAMP, time.localtime(path.stat().st_mtime))
    wanted, clean = (args.device, args.hidden_size, args.question_tokens, args.threads), {}
    for row in harness.read_csv(path):
        setting = (row["device"], row["hidden_size"], row["question_tokens"], args.threads and row.get("threads"))
        if row["status"] == "ok" and setting == wanted and not harness.contended(row, row.get("threads") or 1):
            when = row.get("measured_at") or f"before {written} (file time)"
            clean[(row["fusion"], row["video_tokens"])] = {**row, "reused": "yes", "measured_at": when}
    return clean


def measure_all(args: argparse.Namespace, reuse: dict) -> list[dict[str, Any]]:
    """Every case in order of size (both fusions per size), in a fresh process, skipping those predicted too long."""
    rows, history, started = [], {f: [] for f in FUSIONS}, time.monotonic()
    cpu = args.device == "cpu"
    memory = "VmHWM - RSS before the runs, fresh process" if cpu else "max_memory_allocated - allocated before"
    setting = {"device": args.device, "question_tokens": args.question_tokens, "hidden_size": args.hidden_size,
               "memory_method": memory}  # fmt: skip
    kernels, scan = attention_kernels(args.device, args.hidden_size), scan_backend(args.device)
    backends = {"mamba": {"attention_kernel": "", "scan_backend": scan},
                "transformer": {"attention_kernel": kernels, "scan_backend": ""}}  # fmt: skip
    quiet = {"wait_quiet_s": args.wait_quiet if cpu else 0.0, "retries": 1 if cpu and args.wait_quiet else 0,
             "is_contended": lambda r: harness.contended(r, r["threads"])}  # fmt: skip
    for tokens, fusion in itertools.product(args.tokens, FUSIONS):
        row = {**setting, "fusion": fusion, "video_tokens": tokens, **backends[fusion]}
        predicted, elapsed = predict_seconds(history[fusion], tokens, fusion), time.monotonic() - started
        if (fusion, tokens) in reuse:
            row = reuse[(fusion, tokens)]
        elif predicted and predicted > 2 * args.case_budget:
            row["status"] = (f"skipped: predicted {predicted:.0f}s per run pair > 2 x --case-budget "
                             f"({args.case_budget:.0f}s)")  # fmt: skip
        elif predicted and elapsed + 2 * predicted > args.time_budget:
            row["status"] = f"skipped: would pass --time-budget ({args.time_budget:.0f}s; {elapsed:.0f}s used)"
        else:
            row["load_1min"], case = os.getloadavg()[0], case_of(args, fusion, tokens)
            try:
                row.update(harness.run_quietly(lambda case=case: harness.run_worker(__file__, case), **quiet))
                row["status"] = "contended" if harness.contended(row, row["threads"]) else "ok"  # never on CUDA
                started += row["waited_for_quiet_s"]  # waiting does not count against --time-budget
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                row["status"] = "failed"
        rows.append(row)
        if row["status"] in MEASURED:
            history[fusion].append((tokens, row["fwd_ms"] + row["fwd_bwd_ms"]))
        times = f"fwd {row['fwd_ms']:.1f} ms, fwd+bwd {row['fwd_bwd_ms']:.1f} ms " if "fwd_ms" in row else ""
        print(f"{fusion} at {tokens} tokens: {times}({row['status']})", file=sys.stderr)
    return rows


def growth_per_doubling(sizes: list[int], times_ms: dict[int, float]) -> dict[int, float]:
    """Time at ``N`` / time at ``N/2``, for each measured ``N`` of sorted ``sizes`` whose predecessor is ``N/2``."""
    return {n: times_ms[n] / times_ms[p] for p, n in itertools.pairwise(sizes)
            if n == 2 * p and n in times_ms and p in times_ms}  # fmt: skip


def linear_growth_checks(growth: dict[int, float], prefix: str) -> dict[str, Any]:
    """Issue 5's linear-time check: the largest growth per doubling from 1,024 tokens (all sizes if none) <= 2.3x."""
    large = {n: g for n, g in growth.items() if n >= 1024} or growth
    if not large:
        return {}
    worst = max(large.values())
    return {f"{prefix}_growth_checked_from_tokens": min(large), f"{prefix}_max_growth_per_doubling": worst,
            f"{prefix}_growth_at_most_2.3x": worst <= 2.3}  # fmt: skip


def plot(rows: list[dict[str, Any]], path: Path, args: argparse.Namespace) -> None:
    """Log-log time (fwd and fwd+bwd) and peak memory against video tokens."""
    import matplotlib.pyplot as plt  # here: the workers do not need it

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = {"_ms": "time (ms)", "_peak_mib": "peak memory over baseline (MiB, 0 drawn at 0.1)"}
    for ax, (suffix, ylabel) in zip(axes, panels.items(), strict=True):
        for fusion, color in zip(FUSIONS, ("tab:green", "tab:red"), strict=True):
            done = [r for r in rows if r["fusion"] == fusion and r["status"] in MEASURED]  # in order of size
            label = "Mamba fusion" if fusion == "mamba" else f"Transformer {args.depth}x4 (SDPA)"
            for mode, style in (("fwd", "o--"), ("fwd_bwd", "s-")):  # a peak of 0 is drawn at 0.1 on the log axis
                ax.plot([r["video_tokens"] for r in done], [max(r[mode + suffix], 0.1) for r in done], style,
                        color=color, label=f"{label} {mode.replace('_', '+')}")  # fmt: skip
        ax.set(yscale="log", xlabel=f"video tokens (+ {args.question_tokens}-token questions)", ylabel=ylabel)
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"Fusion time, width {args.hidden_size}, batch 1, float32, {args.device}", fontsize=10)
    axes[1].set_title("Peak memory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(rows: list[dict[str, Any]], args: argparse.Namespace, load_note: str) -> tuple[str, dict]:
    """The Markdown page of a run (setting, table, targets, cases not measured cleanly) and the checked targets."""
    ok = {(r["fusion"], r["video_tokens"]): r for r in rows if r["status"] in MEASURED}
    sizes = sorted({r["video_tokens"] for r in rows})
    growth = growth_per_doubling(sizes, {n: r["fwd_bwd_ms"] for (f, n), r in ok.items() if f == "mamba"})
    table = []
    for n in sizes:
        m, t = ok.get(("mamba", n)), ok.get(("transformer", n))
        table.append([
            f"{n:,}", *(harness.fmt(r and r[k]) for r in (m, t) for k in ("fwd_ms", "fwd_bwd_ms")),
            *(harness.fmt(m and t and t[k] / m[k], "{:.2f}x") for k in ("fwd_ms", "fwd_bwd_ms")),
            harness.fmt(growth.get(n), "{:.2f}x"), harness.fmt(m and m["fwd_bwd_peak_mib"], "{:.0f}"),
            harness.fmt(t and t["fwd_bwd_peak_mib"], "{:.0f}"), harness.fmt(m and m.get("fwd_bwd_faults"), "{:,.0f}"),
        ])  # fmt: skip
    header = ["video tokens", "Mamba fwd (ms)", "Mamba fwd+bwd (ms)", "Transf. fwd (ms)", "Transf. fwd+bwd (ms)",
              "T/M fwd", "T/M fwd+bwd", "Mamba fwd+bwd growth per doubling", "Mamba peak fwd+bwd (MiB)",
              "Transf. peak fwd+bwd (MiB)", "Mamba page faults per fwd+bwd"]  # fmt: skip
    common = [n for n in sizes if ("mamba", n) in ok and ("transformer", n) in ok]
    checks: dict[str, Any] = {"largest_common_tokens": max(common, default=None)}
    if common:
        speedup = ok[("transformer", common[-1])]["fwd_bwd_ms"] / ok[("mamba", common[-1])]["fwd_bwd_ms"]
        checks.update(fwd_bwd_speedup_at_largest=speedup, speedup_at_least_5x=speedup >= 5)
    if growth:
        checks["mamba_growth_per_doubling"] = {str(k): v for k, v in growth.items()}
        checks.update(linear_growth_checks(growth, "mamba"))
    measured = list(ok.values())
    shares = sorted(r["cpu_per_wall"] for r in measured if r.get("cpu_per_wall") is not None) or [None]
    repeats = max((r["fwd_repeats"] for r in measured), default=args.repeats)
    machine = {**harness.machine_info(args.device), "torch_threads": rows[0].get("threads") if rows else "-"}
    kernels, scan = (next((r[k] for r in rows if r.get(k)), "-") for k in ("attention_kernel", "scan_backend"))
    malloc = "; ".join(sorted({r["malloc_env"] for r in measured if r.get("malloc_env")})) or "none"
    listed = {"Skipped or failed": [f"{r['fusion']} at {r['video_tokens']:,} tokens: {r['status']}"
                                    for r in rows if r["status"] not in MEASURED],
              "Kept from an earlier run (`--resume`; see `measured_at` in the CSV)": [
                  f"{r['fusion']} at {r['video_tokens']:,}" for r in rows if r.get("reused")],
              "Contended (other processes took CPU time even after waiting and one retry; times inflated)": [
                  f"{r['fusion']} at {r['video_tokens']:,} tokens ({r['cpu_per_wall']:.2f} CPU/wall)"
                  for r in rows if r["status"] == "contended"]}  # fmt: skip
    text = "\n".join([
        f"# Fusion scaling on {args.device}" + (" (--quick smoke run)" if args.quick else ""), "",
        f"Mamba fusion vs transformer fusion ({args.depth}x4, PyTorch SDPA: {kernels}), width {args.hidden_size}, "
        f"batch 1, float32, N video tokens + verb and noun questions of {args.question_tokens} tokens; selective "
        f"scan: {scan}. Hardware: {harness.describe(machine)}. 1-minute load average: "
        f"{load_note}.", "",
        f"Timing: median of up to {repeats} runs after one warm-up (the CSV has the run counts); forward under "
        "`torch.no_grad()`, forward+backward with input gradients; CPU seconds per wall second "
        f"{harness.fmt(shares[0], '{:.2f}')} to {harness.fmt(shares[-1], '{:.2f}')} (about the thread count on free "
        "cores). Peak memory: "
        f"{rows[0]['memory_method'] if rows else '-'} (0: the forward fit in memory already touched).", "",
        harness.markdown_table(header, table), "",
        "T/M: transformer time / Mamba time. Growth per doubling: Mamba fwd+bwd time at N / at N/2 (2.0 = linear). "
        "Page faults: median minor page faults of one Mamba fwd+bwd (`benchmarks/cpu_allocator.py` measures what "
        f"they cost). glibc settings (`MALLOC_*`): {malloc}.", "", "Targets: " + json.dumps(checks), "",
        *(f"{title}: {'; '.join(items) or 'none'}\n" for title, items in listed.items()),
        f"Rerun: `python benchmarks/fusion_scaling.py{' --device cuda' if args.device != 'cpu' else ''}` "
        "(`--resume` re-measures only the contended or missing cases, `--report-only` rebuilds this page).", "",
    ])  # fmt: skip
    return text, checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = harness.parser(__doc__, "tiny sizes, for a smoke test", repeats=3, threads=0, case_budget=120.0,
                       wait_quiet=300.0)  # fmt: skip
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--tokens", type=int, nargs="+", help="video token counts (default: 256, 512, ..., 16384)")
    p.add_argument("--hidden-size", type=int, default=768, help="fusion width (default: %(default)s)")
    p.add_argument("--time-budget", type=float, default=840.0, help="stop starting cases after this many seconds")
    p.add_argument("--resume", action="store_true", help="keep the uncontended rows of the existing CSV")
    p.add_argument("--report-only", action="store_true", help="measure nothing: rebuild .md and .png from the CSV")
    args = p.parse_args(argv)
    args.question_tokens, args.depth = (4, 2) if args.quick else (16, 6)  # the transformer has 4 heads
    if args.quick:
        args.hidden_size, args.repeats, args.wait_quiet = 64, 2, 0.0
    args.tokens = sorted(set(args.tokens or ([32, 64] if args.quick else [256 * 2**i for i in range(7)])))
    if min(args.tokens) < 1 or args.repeats < 1 or args.threads < 0:
        p.error("--tokens and --repeats must be at least 1, --threads at least 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        harness.print_result(measure(json.loads(args.worker)))
        return {}
    stem = args.output_dir / f"fusion_scaling_{args.device}"
    csv_path = stem.with_suffix(".csv")
    if args.report_only:
        rows = harness.read_csv(csv_path)
        load_note = "report rebuilt from the CSV (`--report-only`); see `load_1min` there for each case"
    else:
        load_before = os.getloadavg()[0]
        rows = measure_all(args, load_clean_rows(csv_path, args) if args.resume else {})
        load_note = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after this invocation"
    text, checks = report(rows, args, load_note)
    harness.write_results(args.output_dir, stem.name, markdown=text, csv_rows=rows, csv_fields=CSV_FIELDS)
    plot(rows, stem.with_suffix(".png"), args)
    print(text)
    return {"rows": rows, "checks": checks}


if __name__ == "__main__":
    main(sys.argv[1:])
