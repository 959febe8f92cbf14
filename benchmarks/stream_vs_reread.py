"""Streaming with the carried state versus re-reading a sliding window, on the synthetic long videos; memory over an
hour-long stream.

Part 1 trains the ``mambavl demo`` recognition recipe on synthetic clips (or loads ``--model``), renders held-out
untrimmed videos (:func:`mambavl.data.generate_long_videos`: 30 actions each with idle gaps) and reads every video
in three ways, a step every 4 frames (3 per second at 12 fps):

- **stream**: :class:`~mambavl.streaming.MambaVLStreamer`, the encoder reads the last 16 frames, their 64 tokens are
  fused with the carried state (the whole history), the heads pool the last window's tokens;
- **re-read 1 window**: the same window's tokens read from a zero state at every step (no history);
- **re-read K windows**: the last K windows' tokens re-read from a zero state at every step (some history, paid for
  at every step).

It reports the online metrics of each (per-frame mAP, top-1 over the action steps, background rate, the
most-frequent-action baseline) and the median time per step (encoder + fusion + heads).

Part 2 streams an hour of feature steps (64 tokens per step, 3 steps per second: 10,800 steps, 691,200 tokens)
through the same model and records the streamer's bytes at every step and the process's resident memory every
10 minutes of stream.

Writes ``benchmarks/results/stream_vs_reread.{json,md}``.

    python benchmarks/stream_vs_reread.py                 # ~4 min on 2 CPU cores
    python benchmarks/stream_vs_reread.py --quick --output-dir /tmp/svr   # smoke run
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
WINDOW, STRIDE = 16, 4


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except OSError:
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def get_model(args: argparse.Namespace) -> tuple[object, object, dict]:
    from mambavl.streaming_cli import _load

    if args.model is not None:
        model, processor = _load(args.model)
        return model, processor, {"model": str(args.model)}
    from mambavl.demo import build_demo, train_demo

    num_videos, epochs = (8, 1) if args.quick else (64, args.epochs)
    setup = build_demo(args.work_dir / "data", task="recognition", num_videos=num_videos, seed=args.seed)
    start = time.perf_counter()
    result = train_demo(setup, args.work_dir / "run", epochs=epochs, seed=args.seed, progress_bar=False)
    model, processor = _load(result.model_dir)
    return model, processor, {"train_videos": num_videos, "epochs": epochs, "train_s": time.perf_counter() - start}


@torch.no_grad()
def reread(model, processor, frames_iter, k: int) -> list[dict]:
    """Re-read the last ``k`` windows' tokens from a zero state at every step; per step: logits and seconds."""
    windows: collections.deque = collections.deque(maxlen=k)
    buffer: collections.deque = collections.deque(maxlen=WINDOW)
    q = processor(video_features=np.zeros((1, 1, 1), np.float32))
    questions = {
        key: q[key] for key in ("verb_input_ids", "verb_attention_mask", "noun_input_ids", "noun_attention_mask")
    }
    out, seen = [], 0
    for chunk in frames_iter:
        for frame in chunk:
            buffer.append(frame)
            seen += 1
            if seen < WINDOW or (seen - WINDOW) % STRIDE:
                continue
            start, cpu = time.perf_counter(), time.process_time()
            pixel_values = processor.video_processor([np.stack(buffer)], return_tensors="pt")["pixel_values"]
            windows.append(model.mambavl.video_encoder(pixel_values=pixel_values).last_hidden_state)
            logits = model(video_features=torch.cat(list(windows), dim=1), **questions)
            out.append(
                {"frame": seen - 1, "verb": logits.verb_logits[0], "noun": logits.noun_logits[0],
                 "seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}
            )  # fmt: skip
    return out


def part1(args: argparse.Namespace, model, processor) -> tuple[list[dict], dict]:
    from mambavl.data import generate_long_videos
    from mambavl.online_metrics import online_detection_metrics
    from mambavl.streaming import MambaVLStreamer, iter_video_frames

    num_long, segments = (1, 8) if args.quick else (args.long_videos, 30)
    info = generate_long_videos(
        args.work_dir / "long", num_videos=num_long, segments_per_video=segments, seed=args.seed
    )
    labels = info.labels()
    modes = [("stream", 0)] + [(f"re-read {k} window{'s' if k > 1 else ''}", k) for k in args.reread_windows]
    rows = []
    for name, k in modes:
        verbs, nouns, seconds, tv, tn, cpu = [], [], [], [], [], 0.0
        for video_id in info.video_ids:
            chunks = (f for f, _ in iter_video_frames(info.video_path(video_id)))
            if k == 0:
                streamer = MambaVLStreamer(model, processor, window=WINDOW, stride=STRIDE, fps=info.fps)
                steps = []
                for chunk in chunks:
                    start = time.process_time()
                    new = streamer.push_frames(chunk)
                    cpu += time.process_time() - start
                    steps += [
                        {"frame": s.frame, "verb": s.verb_logits, "noun": s.noun_logits, "seconds": s.seconds}
                        for s in new
                    ]
            else:
                steps = reread(model, processor, chunks, k)
                cpu += sum(s["cpu"] for s in steps)
            a, b = labels[video_id].at([s["frame"] / info.fps for s in steps])
            tv.append(a)
            tn.append(b)
            verbs += [s["verb"] for s in steps]
            nouns += [s["noun"] for s in steps]
            seconds += [s["seconds"] for s in steps]
        metrics = online_detection_metrics(
            torch.stack(verbs), torch.stack(nouns), np.concatenate(tv), np.concatenate(tn)
        )
        timing = {"ms_per_step": 1000 * statistics.median(seconds), "cpu_ms_per_step": 1000 * cpu / len(seconds)}
        rows.append({"mode": name, "context_windows": k or "all", **metrics, **timing})
        print(f"{name:<20} action top-1 {metrics['action_top1']:5.1f}%  mAP {metrics['action_mAP']:5.1f}%  "
              f"{rows[-1]['ms_per_step']:6.1f} ms/step (wall, median)  {rows[-1]['cpu_ms_per_step']:6.1f} ms/step "
              "(CPU, mean)", flush=True)  # fmt: skip
    duration = sum(info.num_frames.values()) / info.fps
    return rows, {"long_videos": num_long, "segments_per_video": segments, "seconds_of_video": duration}


@torch.no_grad()
def part2(args: argparse.Namespace, model) -> dict:
    """An hour (``--memory-hours``) of feature steps through the streamer: bytes per step and RSS over time."""
    from mambavl.streaming import MambaVLStreamer

    tokens, rate = model.config.pool_window, 3.0  # tokens per step, steps per second
    steps = int(args.memory_hours * 3600 * rate)
    q = {"verb_input_ids": torch.tensor([[2, 5, 6, 3]]), "verb_attention_mask": torch.ones(1, 4, dtype=torch.long)}
    q |= {"noun_input_ids": torch.tensor([[2, 7, 3]]), "noun_attention_mask": torch.ones(1, 3, dtype=torch.long)}
    streamer = MambaVLStreamer(model, question_inputs=q, stride=tokens, fps=rate * tokens)
    g = torch.Generator().manual_seed(0)
    size = model.config.video_feature_size
    memory, rss, every = set(), [], max(1, int(600 * rate))  # RSS every 10 minutes of stream
    start = time.perf_counter()
    for i in range(steps):
        streamer.push_features(torch.randn(tokens, size, generator=g))
        memory.add(streamer.memory_bytes)
        if i % every == 0 or i == steps - 1:
            rss.append({"minute": round((i + 1) / rate / 60, 2), "rss_mib": rss_bytes() / 2**20})
    elapsed = time.perf_counter() - start
    return {
        "stream_hours": args.memory_hours, "steps": steps, "tokens": streamer.cache.seen_tokens,
        "streamer_bytes": sorted(memory), "rss": rss, "rss_growth_mib": rss[-1]["rss_mib"] - rss[0]["rss_mib"],
        "ms_per_step": 1000 * elapsed / steps,
    }  # fmt: skip


def write(args: argparse.Namespace, report: dict) -> None:
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "stream_vs_reread.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    meta, mem = report["setup"], report["memory"]
    lines = [
        "# Streaming versus re-reading on the synthetic long videos",
        "",
        f"{meta['long_videos']} held-out untrimmed videos ({meta['seconds_of_video']:.0f} s, "
        f"{meta['segments_per_video']} actions each with idle gaps), the `mambavl demo` recognition model trained "
        f"on clips; a step every {STRIDE} frames (3 per second), the encoder reading the last {WINDOW} frames "
        f"({report['window_tokens']} tokens). Per-frame mAP over the classes present (background excluded), top-1 "
        "over the steps where an action runs. Percent. Time per step (processor + encoder + fusion + heads, not the "
        "decoding): the median wall-clock time, and the mean CPU time, which a busy machine inflates less.",
        "",
        "| Mode | History | Action top-1 | Verb top-1 | Noun top-1 | Action mAP | wall ms / step | CPU ms / step |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        history = "all (carried state)" if r["context_windows"] == "all" else f"last {r['context_windows']} window(s)"
        lines.append(
            f"| {r['mode']} | {history} | {r['action_top1']:.1f} | {r['verb_top1']:.1f} | {r['noun_top1']:.1f} | "
            f"{r['action_mAP']:.1f} | {r['ms_per_step']:.1f} | {r['cpu_ms_per_step']:.1f} |"
        )
    r0 = report["rows"][0]
    lines += [
        "",
        f"Background rate {r0['background_rate']:.1f}% of the steps; always answering the most frequent action: "
        f"{r0['majority_action_top1']:.1f}% action top-1.",
        "",
        f"Memory: {mem['stream_hours']:g} h of stream ({mem['steps']:,} steps, {mem['tokens']:,} tokens): the "
        f"streamer held {', '.join(f'{b:,}' for b in mem['streamer_bytes'])} bytes at every step; process RSS "
        + " → ".join(f"{x['rss_mib']:.0f}" for x in mem["rss"])
        + f" MiB every 10 minutes of stream (growth {mem['rss_growth_mib']:+.1f} MiB); "
        f"{mem['ms_per_step']:.2f} ms per feature step.",
        "",
        f"Command: `{' '.join(['python benchmarks/stream_vs_reread.py', *sys.argv[1:]])}` ({platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads).",
    ]
    (args.output_dir / "stream_vs_reread.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a saved demo model (default: train one)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: %(default)s)")
    parser.add_argument("--long-videos", type=int, default=3, help="held-out long videos (default: %(default)s)")
    parser.add_argument(
        "--reread-windows", default="1,4,16", help="re-read baselines: windows of context (default: %(default)s)"
    )
    parser.add_argument(
        "--memory-hours", type=float, default=1.0, help="length of the memory stream (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/stream_vs_reread"), help="default: %(default)s")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="default: %(default)s")
    parser.add_argument(
        "--quick", action="store_true", help="8 clip videos, 1 epoch, 1 short long video, 36 s of memory"
    )
    args = parser.parse_args()
    try:
        args.reread_windows = [int(k) for k in args.reread_windows.split(",") if k.strip()]
    except ValueError:
        parser.error(f"--reread-windows must be comma-separated integers, got {args.reread_windows!r}")
    if any(k < 1 for k in args.reread_windows):
        parser.error("--reread-windows must be positive")
    if args.quick:
        args.memory_hours = 0.01
    model, processor, meta = get_model(args)
    rows, setup = part1(args, model, processor)
    memory = part2(args, model)
    report = {"setup": {**meta, **setup}, "window_tokens": model.config.pool_window, "rows": rows, "memory": memory}
    write(args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
