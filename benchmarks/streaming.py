"""One streaming step of 8 new video tokens against the history length: cached Mamba vs recomputing.

Targets (issue 15): (a) the cached step's time within 1.3x from 1k to 1M tokens of history, with flat memory; at 64k
tokens of history (b) recomputing the Mamba fusion at least 100x slower than (a), (c) the transformer at least 1,000x.

For each history length ``H``, the time and peak memory of one step of 8 new video tokens to the verb / noun features
(16-token questions, batch 1, float32, no gradients; the fusion modules alone, at width ``--hidden-size``):

* **(a) cached Mamba step**: ``MambaFusion(new 8 tokens, cache_params=cache)``, the cache having seen ``H`` tokens;
* **(b) Mamba recompute**: the Mamba fusion over all ``H + 8`` tokens (what a clip model does at every step);
* **(c) transformer recompute**: a 6x4 transformer fusion over all ``H + 8`` tokens, and **(c, window)** over the
  last ``--window`` tokens once the history is longer (the usual way to bound a transformer's cost).

A recompute predicted (from the previous length) to pass ``--case-budget`` seconds or ``--max-memory-gib`` is skipped.

    python benchmarks/streaming.py --threads 1 --case-budget 60   # the committed CPU table: 1k..1M, width 768
    python benchmarks/streaming.py --device cuda                   # writes streaming_cuda.*
    python benchmarks/streaming.py --quick                         # 1k..4k tokens, width 128
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

NEW_TOKENS, QUESTION_TOKENS, PRIME_CHUNK = 8, 16, 4096
RECOMPUTES = ("b", "c", "c_window")
FIELDS = ["history", "a_ms", "a_min_ms", "a_mib", *(f"{k}_{unit}" for k in RECOMPUTES for unit in ("ms", "mib")),
          *(f"{k}_over_a" for k in RECOMPUTES), "note"]  # the CSV's columns  # fmt: skip


def build(args: argparse.Namespace, fusion_type: str) -> torch.nn.Module:
    config = MambaVLConfig(
        hidden_size=args.hidden_size, video_feature_size=args.hidden_size, fusion_type=fusion_type,
        fusion_transformer_depth=6, fusion_transformer_heads=4, text_config={"model_type": "bert", "vocab_size": 8},
    )  # fmt: skip
    return build_fusion(config).to(args.device).eval()


def peak_mib(fn, device: str) -> float:
    """``harness.peak_mib`` after giving freed heap memory back to the OS (glibc's ``malloc_trim``; no-op elsewhere),
    so that the resident-set peak counts what ``fn`` allocates instead of reusing pages an earlier case left."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return harness.peak_mib(fn, device=device)


def recompute(fn, args: argparse.Namespace) -> tuple[float, float, bool]:
    """(median ms, peak MiB, contended) of a recompute case: at most 3 calls, on a quiet machine if one comes."""
    harness.wait_for_quiet(args.wait_quiet)
    timing = harness.time_call(fn, repeats=3, budget_s=args.case_budget, device=args.device)
    return timing["median_ms"], peak_mib(fn, args.device), harness.contended(timing, torch.get_num_threads())


def recompute_row(history: int, last: dict[str, Any], args: argparse.Namespace, modules, verb, noun) -> dict:
    """(b), (c) and (c, window) at ``history``; ``last`` keeps the last measured (history, ms, MiB) of each."""
    row, note, video = {"history": history}, [], None
    for key, module, power in (("b", modules[0], 1), ("c", modules[1], 2)):
        if key in last:  # predict from the last length: linear growth for (b), quadratic for (c)
            scale = (history + NEW_TOKENS) / (last[key][0] + NEW_TOKENS)
            seconds, gib = last[key][1] / 1e3 * scale**power, last[key][2] / 1024 * scale
            if seconds > args.case_budget or gib > args.max_memory_gib:
                note.append(f"{key} skipped (predicted {seconds:,.0f} s, {gib:,.1f} GiB)")
                continue
        if video is None:
            video = torch.randn(1, history + NEW_TOKENS, args.hidden_size, device=args.device)
        ms, mib, busy = recompute(lambda m=module, v=video: m(v, verb, noun), args)
        note += [f"{key} contended"] if busy else []
        row.update({f"{key}_ms": ms, f"{key}_mib": mib})
        last[key] = (history, ms, mib)
    del video  # freed before the window's case
    if history + NEW_TOKENS > args.window:
        if "window" not in last:  # the same for every longer history: measured once
            window = torch.randn(1, args.window, args.hidden_size, device=args.device)
            last["window"] = recompute(lambda: modules[1](window, verb, noun), args)[:2]
        row["c_window_ms"], row["c_window_mib"] = last["window"]
    print(f"history {history:>9,}: (b) {harness.fmt(row.get('b_ms'))} ms  (c) {harness.fmt(row.get('c_ms'))} ms  "
          f"{'; '.join(note)}", file=sys.stderr)  # fmt: skip
    return {**row, "note": note}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, width = args.device, args.hidden_size
    mamba, transformer = build(args, "mamba"), build(args, "transformer")
    verb, noun, new = (torch.randn(1, n, width, device=dev) for n in (QUESTION_TOKENS, QUESTION_TOKENS, NEW_TOKENS))
    cache = MambaVLCache(mamba.layers[0].fusion.config, 1, device=dev)
    rows, steps, last = [], [], {}
    with torch.no_grad():
        mamba(new, verb, noun, cache_params=cache)  # the stream's first call: questions cached
        for history in sorted(args.histories):
            while (seen := cache.seen_tokens) < history:  # prime the cache up to this history
                chunk = torch.randn(1, min(PRIME_CHUNK, history - seen), width, device=dev)
                mamba(chunk, None, None, cache_params=cache)
            snapshot = copy.deepcopy(cache)  # the stream's state at this history, for (a)
            steps.append(lambda c=snapshot: mamba(new, None, None, cache_params=c))
            rows.append(recompute_row(history, last, args, (mamba, transformer), verb, noun))
        # (a) last, in rounds over every history (a sample: steps for at least 200 ms), so that a busy machine slows
        # every length alike; the table gives the median and the fastest sample
        samples, busy = [[] for _ in rows], [False] * len(rows)
        for _ in range(args.repeats):
            for i, step in enumerate(steps):
                timing = harness.time_call(step, repeats=1, min_sample_ms=200, device=dev)
                samples[i].append(timing["median_ms"])
                busy[i] |= harness.contended(timing, torch.get_num_threads())
        for row, step, times, contended in zip(rows, steps, samples, busy, strict=True):
            row.update(a_ms=statistics.median(times), a_min_ms=min(times), a_mib=peak_mib(step, dev))
            for key in RECOMPUTES:
                if row.get(f"{key}_ms") is not None:
                    row[f"{key}_over_a"] = row[f"{key}_ms"] / row["a_ms"]
            row["note"] = "; ".join((["a contended"] if contended else []) + row["note"])
            print(f"history {row['history']:>9,}: (a) {row['a_ms']:.2f} ms", file=sys.stderr)
    return {"rows": rows, "cache_nbytes": cache.nbytes}


def summary(rows: list[dict[str, Any]], window: int) -> list[str]:
    """The targets, checked on this run's rows ((c) skipped at 64k: its window stands in)."""
    first, last = rows[0], rows[-1]
    lines = [
        f"(a) at {last['history']:,} vs {first['history']:,} tokens of history: "
        f"{last['a_ms'] / first['a_ms']:.2f}x (median), {last['a_min_ms'] / first['a_min_ms']:.2f}x (fastest sample; "
        "steadier on a busy machine) (target: within 1.3x from 1k to 1M)"
    ]
    for row in (r for r in rows if r["history"] == 65536):
        for key, target in (("b", 100), ("c", 1000)):
            ratio, name = row.get(f"{key}_over_a"), f"({key})"
            if ratio is None and key == "c" and row.get("c_window_over_a") is not None:
                ratio, name = row["c_window_over_a"], f"(c) skipped; (c) over the last {window:,} tokens"
            lines.append(f"at 64k: ({key}) skipped" if ratio is None else
                         f"at 64k: {name} / (a) = {ratio:,.0f}x (target >= {target:,}x)")  # fmt: skip
    return lines


def table(rows: list[dict[str, Any]], window: int) -> str:
    f = harness.fmt
    header = [
        "history (tokens)", "(a) cached step ms", "(a) fastest ms", "(a) MiB", "(b) Mamba recompute ms", "(b) MiB",
        "(b)/(a)", "(c) transformer ms", "(c) MiB", "(c)/(a)", f"(c) last {window:,} ms", "note",
    ]  # fmt: skip
    return harness.markdown_table(header, [
        [f"{r['history']:,}", f(r["a_ms"], "{:,.2f}"), f(r["a_min_ms"], "{:,.2f}"), f(r["a_mib"]), f(r.get("b_ms")),
         f(r.get("b_mib")), f(r.get("b_over_a"), "{:,.0f}x"), f(r.get("c_ms")), f(r.get("c_mib")),
         f(r.get("c_over_a"), "{:,.0f}x"), f(r.get("c_window_ms")), r["note"]]
        for r in rows
    ])  # fmt: skip


def plot(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    """Time of one step against the history, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = {"a": "(a) cached Mamba step", "b": "(b) Mamba recompute", "c": "(c) transformer 6x4 recompute",
              "c_window": f"(c) transformer over the last {args.window:,}"}  # fmt: skip
    for key, label in labels.items():
        points = [(r["history"], r[f"{key}_ms"]) for r in rows if r.get(f"{key}_ms") is not None]
        ax.plot(*zip(*points, strict=True), marker="o", label=label)  # no points: no line, no legend entry
    ax.set(xscale="log", yscale="log", xlabel="history (video tokens)", ylabel=f"ms per step of {NEW_TOKENS} tokens",
           title=f"Streaming step vs history (width {args.hidden_size}, {args.device})")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    quick = "histories 1k,2k,4k at width 128, window 2k, 5 repeats"
    p = harness.parser(__doc__, quick, repeats=7, threads=0, case_budget=120.0, wait_quiet=0.0)
    histories = "1024,4096,16384,65536,262144,1048576"
    p.add_argument("--histories", type=harness.int_list, default=histories, help="comma-separated token counts")
    p.add_argument("--hidden-size", type=int, default=768)
    p.add_argument("--window", type=int, default=16384, help="the transformer's window for (c, window)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-memory-gib", type=float, default=48.0, help="skip a recompute predicted to need more")
    args = p.parse_args(argv)
    if args.quick:
        args.histories, args.hidden_size, args.repeats, args.window = [1024, 2048, 4096], 128, 5, 2048
    result = run(args)
    info, lines = harness.machine_info(args.device), summary(result["rows"], args.window)
    setup = (
        f"One step of {NEW_TOKENS} new video tokens (batch 1, width {args.hidden_size}, float32, {QUESTION_TOKENS}-"
        f"token questions, no gradients) on {harness.describe(info)}. Cache: {result['cache_nbytes']:,} bytes at "
        "every length."
    )
    bullets = "\n".join(f"- {line}" for line in lines)
    command = f"Command: `{harness.command_line()}`"
    markdown = "\n\n".join([setup, table(result["rows"], args.window), bullets, command])
    print(markdown)
    stem = f"streaming_{'cuda' if str(args.device).startswith('cuda') else 'cpu'}{'_quick' if args.quick else ''}"
    payload = {"args": vars(args), "machine": info, **result, "summary": lines}
    harness.write_results(args.output_dir, stem, payload=payload, markdown=markdown, csv_rows=result["rows"],
                          csv_fields=FIELDS)  # fmt: skip
    plot(result["rows"], args, args.output_dir / f"{stem}.png")


if __name__ == "__main__":
    main()
