"""One streaming step of 8 new video tokens against the history length: cached Mamba vs recomputing.

For each history length ``H`` (1k to 1M video tokens), the time and the peak memory of taking in 8 new video tokens
and producing the verb / noun features, with a verb and a noun question of 16 tokens, batch 1, no gradients:

* **(a) cached Mamba step**: ``MambaFusion(new 8 tokens, cache_params=cache)`` with a
  :class:`~mambavl.MambaVLCache` that has seen ``H`` tokens (the questions are cached too);
* **(b) Mamba recompute**: the Mamba fusion over all ``H + 8`` tokens (what a clip model does at every step);
* **(c) transformer recompute**: a 6x4 transformer fusion over all ``H + 8`` tokens, and **(c, window)** over the
  last 16k tokens once the history is longer (the usual way to bound a transformer's cost).

Only the fusion modules run (``build_fusion`` at width ``--hidden-size``, float32); the cache of (a) is primed by
streaming the history through it in chunks of 4,096 tokens (one cache, primed up to each length in turn, a copy kept
at each). (a) is timed last, in ``--repeats`` rounds over all lengths (each sample: steps for at least 200 ms), so that
a busy machine slows every length alike; the table gives the median and the fastest sample. Other times are
medians of :func:`harness.time_call` (one warm-up call; a CPU case that got less than 85% of its threads' CPU time is
noted "contended"); the peak memory is :func:`harness.peak_mib` of one call (CPU: resident-set high-water mark over
the start, after glibc's ``malloc_trim`` gave freed memory back; CUDA: ``max_memory_allocated`` over the start).

A recompute case is skipped, and the table says so, when the previous length predicts it to take longer than
``--case-budget`` seconds (linear growth for (b), quadratic for (c)) or more than ``--max-memory-gib``.

Targets (issue 15): (a) flat within 1.3x from 1k to 1M; at 64k history (a) at least 100x faster than (b) and
1,000x faster than (c). The ratios are computed from the same run.

Usage::

    python benchmarks/streaming.py                     # the full run: 1k..1M tokens, width 768 (long on CPU)
    python benchmarks/streaming.py --device cuda       # on a GPU: writes streaming_cuda.*
    python benchmarks/streaming.py --quick             # a small run: 1k..4k tokens, width 128
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

from mambavl import MambaVLCache, MambaVLConfig
from mambavl.fusion import build_fusion

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NEW_TOKENS, QUESTION_TOKENS, PRIME_CHUNK = 8, 16, 4096
FIELDS = [
    "history", "a_ms", "a_min_ms", "a_mib", "b_ms", "b_mib", "c_ms", "c_mib", "c_window_ms", "c_window_mib",
    "b_over_a", "c_over_a", "c_window_over_a", "note",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--histories", default="1024,4096,16384,65536,262144,1048576", help="comma-separated lengths")
    p.add_argument("--hidden-size", type=int, default=768)
    p.add_argument("--window", type=int, default=16384, help="the transformer's window for (c, window)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--case-budget", type=float, default=120.0, help="seconds one recompute case may take")
    p.add_argument("--max-memory-gib", type=float, default=48.0)
    p.add_argument("--wait-quiet", type=float, default=0.0, help="seconds to wait for a quiet machine before a case")
    p.add_argument("--quick", action="store_true", help="histories 1k,2k,4k at width 128, window 2k, 5 repeats")
    p.add_argument("--output-dir", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    if args.quick:
        args.histories, args.hidden_size, args.repeats, args.window = "1024,2048,4096", 128, 5, 2048
    args.histories = sorted(int(h) for h in args.histories.split(","))
    return args


def build(args: argparse.Namespace, fusion_type: str) -> torch.nn.Module:
    config = MambaVLConfig(
        hidden_size=args.hidden_size, video_feature_size=args.hidden_size, fusion_type=fusion_type,
        fusion_transformer_depth=6, fusion_transformer_heads=4, text_config={"model_type": "bert", "vocab_size": 8},
    )  # fmt: skip
    return build_fusion(config).to(args.device).eval()


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so a call's resident-set peak counts what it
    allocates instead of reusing pages an earlier case left resident. No-op elsewhere."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(fn, args: argparse.Namespace, repeats: int | None = None, min_sample_ms: float = 0.0) -> tuple[Any, ...]:
    """(median ms, peak MiB, contended, min ms) of ``fn`` (a recompute case)."""
    harness.wait_for_quiet(args.wait_quiet)
    timing = harness.time_call(
        fn, repeats=repeats or args.repeats, budget_s=args.case_budget, min_sample_ms=min_sample_ms, device=args.device
    )
    release_free_memory()
    busy = harness.contended(timing, torch.get_num_threads()) if not str(args.device).startswith("cuda") else False
    return timing["median_ms"], harness.peak_mib(fn, device=args.device), busy, timing["min_ms"]


def predicted(last: tuple[int, float, float] | None, history: int, power: int) -> tuple[float, float]:
    """Seconds and GiB a recompute at ``history`` should take, from the last measured (history, ms, MiB)."""
    if last is None:
        return 0.0, 0.0
    scale = (history + NEW_TOKENS) / (last[0] + NEW_TOKENS)
    return last[1] / 1e3 * scale**power, last[2] / 1024 * scale


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, D = args.device, args.hidden_size
    mamba, transformer = build(args, "mamba"), build(args, "transformer")
    verb, noun = (torch.randn(1, QUESTION_TOKENS, D, device=dev) for _ in range(2))
    new = torch.randn(1, NEW_TOKENS, D, device=dev)
    cache = MambaVLCache(mamba.layers[0].fusion.config, 1, device=dev)
    rows, snapshots, last_b, last_c, window_result = [], [], None, None, None
    with torch.no_grad():
        mamba(new, verb, noun, cache_params=cache)  # the stream's first call: questions cached
        for history in args.histories:
            note = []
            while (seen := cache.seen_tokens) < history:  # prime the cache up to this history
                mamba(torch.randn(1, min(PRIME_CHUNK, history - seen), D, device=dev), None, None, cache_params=cache)
            snapshots.append(copy.deepcopy(cache))  # the stream's state at this history, for (a) below
            row, video = {"history": history}, None
            for key, module, power, last in (("b", mamba, 1, last_b), ("c", transformer, 2, last_c)):
                seconds, gib = predicted(last, history, power)
                if seconds > args.case_budget or gib > args.max_memory_gib:
                    note.append(f"{key} skipped (predicted {seconds:,.0f} s, {gib:,.1f} GiB)")
                    continue
                video = torch.randn(1, history + NEW_TOKENS, D, device=dev) if video is None else video
                ms, mib, busy, _ = measure(lambda m=module, v=video: m(v, verb, noun), args, repeats=3)
                note += [f"{key} contended"] if busy else []
                row.update({f"{key}_ms": ms, f"{key}_mib": mib})
                if key == "b":
                    last_b = (history, ms, mib)
                else:
                    last_c = (history, ms, mib)
            del video
            if history + NEW_TOKENS > args.window:
                if window_result is None:
                    window = torch.randn(1, args.window, D, device=dev)
                    window_result = measure(lambda w=window: transformer(w, verb, noun), args, repeats=3)[:2]
                    del window
                row.update({"c_window_ms": window_result[0], "c_window_mib": window_result[1]})
            row["note"] = note
            rows.append(row)
            print(f"history {history:>9,}: (b) {harness.fmt(row.get('b_ms'))} ms  (c) {harness.fmt(row.get('c_ms'))} "
                  f"ms  {'; '.join(note)}", file=sys.stderr)  # fmt: skip
        # (a) in rounds over every history, so that a busy machine slows all lengths alike; each sample is many
        # steps (at least 200 ms), each round one sample per length
        samples: list[list[float]] = [[] for _ in rows]
        busy = [False] * len(rows)
        for _ in range(args.repeats):
            for i, snapshot in enumerate(snapshots):
                timing = harness.time_call(
                    lambda c=snapshot: mamba(new, None, None, cache_params=c), repeats=1, min_sample_ms=200,
                    device=dev,
                )  # fmt: skip
                samples[i].append(timing["median_ms"])
                busy[i] |= not dev.startswith("cuda") and harness.contended(timing, torch.get_num_threads())
        for row, snapshot, times, contended in zip(rows, snapshots, samples, busy, strict=True):
            release_free_memory()
            a_ms = statistics.median(times)
            row.update(a_ms=a_ms, a_min_ms=min(times))
            row["a_mib"] = harness.peak_mib(lambda c=snapshot: mamba(new, None, None, cache_params=c), device=dev)
            for key in ("b", "c", "c_window"):
                if row.get(f"{key}_ms") is not None:
                    row[f"{key}_over_a"] = row[f"{key}_ms"] / a_ms
            row["note"] = "; ".join((["a contended"] if contended else []) + row["note"])
            print(f"history {row['history']:>9,}: (a) {a_ms:.2f} ms", file=sys.stderr)
    return {"rows": rows, "cache_nbytes": cache.nbytes}


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """The targets, checked on this run's rows."""
    lines = []
    first, last = rows[0], rows[-1]
    lines.append(
        f"(a) at {last['history']:,} vs {first['history']:,} tokens of history: "
        f"{last['a_ms'] / first['a_ms']:.2f}x (median), {last['a_min_ms'] / first['a_min_ms']:.2f}x (fastest sample; "
        "steadier on a busy machine) (target: within 1.3x from 1k to 1M)"
    )
    at64k = next((r for r in rows if r["history"] == 65536), None)
    if at64k is not None:
        for key, target in (("b", 100), ("c", 1000)):
            ratio = at64k.get(f"{key}_over_a")
            lines.append(
                f"at 64k: ({key}) / (a) = {harness.fmt(ratio, '{:,.0f}')}x (target >= {target:,}x)"
                if ratio is not None
                else f"at 64k: ({key}) skipped"
            )
    return lines


def table_row(r: dict[str, Any]) -> list[str]:
    f = harness.fmt
    return [
        f"{r['history']:,}", f(r["a_ms"], "{:,.2f}"), f(r.get("a_min_ms"), "{:,.2f}"), f(r["a_mib"]),
        f(r.get("b_ms")), f(r.get("b_mib")), f(r.get("b_over_a"), "{:,.0f}x"), f(r.get("c_ms")), f(r.get("c_mib")),
        f(r.get("c_over_a"), "{:,.0f}x"),
        f(r.get("c_window_ms")), r["note"],
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    rows = result["rows"]
    header = [
        "history (tokens)", "(a) cached step ms", "(a) fastest ms", "(a) MiB", "(b) Mamba recompute ms", "(b) MiB",
        "(b)/(a)", "(c) transformer ms", "(c) MiB", "(c)/(a)", f"(c) last {args.window:,} ms", "note",
    ]  # fmt: skip
    table = harness.markdown_table(header, [table_row(r) for r in rows])
    info = harness.machine_info(args.device)
    lines = summary(rows)
    markdown = "\n".join(
        [
            f"One step of {NEW_TOKENS} new video tokens (batch 1, width {args.hidden_size}, float32, "
            f"{QUESTION_TOKENS}-token questions, no gradients) on {info.get('device_name') or info.get('cpu')}, "
            f"torch {info.get('torch')}, {info.get('torch_threads')} threads. Cache: {result['cache_nbytes']:,} bytes "
            "at every length.",
            "",
            table,
            "",
            *[f"- {line}" for line in lines],
            "",
            f"Command: `{harness.command_line()}`",
        ]
    )
    print(markdown)
    stem = f"streaming_{'cuda' if str(args.device).startswith('cuda') else 'cpu'}{'_quick' if args.quick else ''}"
    harness.write_results(
        args.output_dir, stem, payload={"args": vars(args), "machine": info, **result, "summary": lines},
        markdown=markdown, csv_rows=rows, csv_fields=FIELDS,
    )  # fmt: skip
    plot(rows, args, Path(args.output_dir) / f"{stem}.png")


def plot(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    """Time of one step against the history, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label in (
        ("a", "(a) cached Mamba step"), ("b", "(b) Mamba recompute"), ("c", "(c) transformer 6x4 recompute"),
        ("c_window", f"(c) transformer over the last {args.window:,}"),
    ):  # fmt: skip
        points = [(r["history"], r[f"{key}_ms"]) for r in rows if r.get(f"{key}_ms") is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="history (video tokens)", ylabel=f"ms per step of {NEW_TOKENS} tokens")
    ax.set_title(f"Streaming step vs history (width {args.hidden_size}, {args.device})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
