"""Online detection on synthetic long videos: streaming with the carried state vs re-reading a sliding window; memory
over an hour-long stream.

Part 1 reads held-out untrimmed videos (30 actions each with idle gaps; the ``mambavl demo`` recognition model trained
here on clips, or ``--model``), a step every 4 frames: as a **stream** (the last 16 frames' 64 tokens fused with the
carried state, the whole history) and by **re-reading the last K windows** (K = 1, 4, 16: some history, paid for at
every step) from a zero state at every step: the online metrics and the time per step of each. Part 2 streams an hour
of feature steps (64 tokens, 3 a second): the streamer's bytes at every step, the process's memory every 10 minutes.

Expected: the streamer's bytes the same at every step and the resident memory flat over the hour; a stream step
cheaper than any re-read. No accuracy target: the demo model is trained on clips (see docs/guides/online.md).

    python benchmarks/stream_vs_reread.py                                  # ~4 min on 2 CPU cores
    python benchmarks/stream_vs_reread.py --quick --output-dir /tmp/svr    # smoke run
"""

from __future__ import annotations

import collections
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

from mambavl.export import QUESTION_KEYS
from mambavl.streaming import MambaVLStreamer, iter_video_frames
from mambavl.streaming_cli import _load

WINDOW, STRIDE = 16, 4


def rss_mib() -> float:
    """This process's resident memory now (Linux /proc; 0 elsewhere)."""
    with contextlib.suppress(OSError):
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return 0.0


def feature_steps(model, steps: int, tokens: int):
    """``steps`` random feature steps (seed 0), each ``(1, tokens, video_feature_size)``."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, tokens, model.config.video_feature_size, generator=g) for _ in range(steps))


def get_model(args) -> tuple[object, object, dict]:
    """``--model``, or the demo recipe trained here; and what to report of it."""
    if args.model is not None:
        return *_load(args.model), {"model": str(args.model)}
    from mambavl.demo import build_demo, train_demo

    num_videos, epochs = (8, 1) if args.quick else (64, args.epochs)
    setup = build_demo(args.work_dir / "data", task="recognition", num_videos=num_videos, seed=args.seed)
    start = time.perf_counter()
    result = train_demo(setup, args.work_dir / "run", epochs=epochs, seed=args.seed, progress_bar=False)
    meta = {"train_videos": num_videos, "epochs": epochs, "train_s": time.perf_counter() - start}
    return *_load(result.model_dir), meta


class Reread:
    """The last ``k`` windows' tokens re-read from a zero state at every step; ``push_frames`` as the streamer's."""

    def __init__(self, model, processor, k: int):
        self.model, self.processor, self.seen = model, processor, 0
        self.windows, self.frames = collections.deque(maxlen=k), collections.deque(maxlen=WINDOW)
        batch = processor(video_features=np.zeros((1, 1, 1), np.float32))
        self.questions = {key: batch[key] for key in QUESTION_KEYS}

    @torch.no_grad()
    def push_frames(self, chunk) -> list[SimpleNamespace]:
        steps = []
        for frame in chunk:
            self.frames.append(frame)
            self.seen += 1
            if self.seen < WINDOW or (self.seen - WINDOW) % STRIDE:
                continue
            start = time.perf_counter()
            pixels = self.processor.video_processor([np.stack(self.frames)], return_tensors="pt")["pixel_values"]
            self.windows.append(self.model.mambavl.video_encoder(pixel_values=pixels).last_hidden_state)
            out = self.model(video_features=torch.cat(list(self.windows), dim=1), **self.questions)
            seconds = time.perf_counter() - start
            steps.append(SimpleNamespace(frame=self.seen - 1, verb_logits=out.verb_logits[0],
                                         noun_logits=out.noun_logits[0], seconds=seconds))  # fmt: skip
        return steps


def part1(args, model, processor) -> tuple[list[dict], dict]:
    """Part 1: the online metrics and time per step of the stream and of each re-read."""
    from mambavl.data import generate_long_videos
    from mambavl.online_metrics import online_detection_metrics

    num_long, segments = (1, 8) if args.quick else (args.long_videos, 30)
    info = generate_long_videos(args.work_dir / "long", num_videos=num_long, segments_per_video=segments,
                                seed=args.seed)  # fmt: skip
    labels, rows = info.labels(), []
    for k in [0, *args.reread_windows]:  # 0: the stream
        steps, cpu, truth = [], 0.0, []
        for video_id in info.video_ids:
            if k:
                reader = Reread(model, processor, k)
            else:
                reader = MambaVLStreamer(model, processor, window=WINDOW, stride=STRIDE, fps=info.fps)
            video_steps = []
            for chunk, _ in iter_video_frames(info.video_path(video_id)):
                start = time.process_time()
                video_steps += reader.push_frames(chunk)
                cpu += time.process_time() - start
            steps += video_steps
            truth.append(labels[video_id].at([s.frame / info.fps for s in video_steps]))
        verbs, nouns = (torch.stack([getattr(s, key) for s in steps]) for key in ("verb_logits", "noun_logits"))
        verb_labels, noun_labels = (np.concatenate(y) for y in zip(*truth, strict=True))
        metrics = online_detection_metrics(verbs, nouns, verb_labels, noun_labels)
        name = f"re-read {k} window{'s' if k > 1 else ''}" if k else "stream"
        timing = {"ms_per_step": 1000 * statistics.median(s.seconds for s in steps)}
        timing["cpu_ms_per_step"] = 1000 * cpu / len(steps)
        rows.append({"mode": name, "context_windows": k or "all", **metrics, **timing})
        print(f"{name}: action top-1 {metrics['action_top1']:.1f}%, {timing['ms_per_step']:.1f} ms/step", flush=True)
    duration = sum(info.num_frames.values()) / info.fps
    return rows, {"long_videos": num_long, "segments_per_video": segments, "seconds_of_video": duration}


@torch.no_grad()
def part2(args, model) -> dict:
    """Part 2: ``--memory-hours`` of feature steps through the streamer: its bytes per step and RSS over time."""
    tokens, rate = model.config.pool_window, 3.0  # tokens per step, steps per second
    steps = int(args.memory_hours * 3600 * rate)
    q = {"verb_input_ids": torch.tensor([[2, 5, 6, 3]]), "verb_attention_mask": torch.ones(1, 4, dtype=torch.long)}
    q |= {"noun_input_ids": torch.tensor([[2, 7, 3]]), "noun_attention_mask": torch.ones(1, 3, dtype=torch.long)}
    streamer = MambaVLStreamer(model, question_inputs=q, stride=tokens, fps=rate * tokens)
    memory, rss, every = set(), [], max(1, int(600 * rate))  # RSS every 10 minutes of stream
    start = time.perf_counter()
    for i, features in enumerate(feature_steps(model, steps, tokens)):
        streamer.push_features(features[0])
        memory.add(streamer.memory_bytes)
        if i % every == 0 or i == steps - 1:
            rss.append({"minute": round((i + 1) / rate / 60, 2), "rss_mib": rss_mib()})
    elapsed = time.perf_counter() - start
    return {
        "stream_hours": args.memory_hours, "steps": steps, "tokens": streamer.cache.seen_tokens,
        "streamer_bytes": sorted(memory), "rss": rss, "rss_growth_mib": rss[-1]["rss_mib"] - rss[0]["rss_mib"],
        "ms_per_step": 1000 * elapsed / steps,
    }  # fmt: skip


def markdown(report: dict) -> str:
    meta, mem = report["setup"], report["memory"]
    header = ["Mode", "History", "Action top-1", "Verb top-1", "Noun top-1", "Action mAP", "wall ms / step",
              "CPU ms / step"]  # fmt: skip
    cells = ("action_top1", "verb_top1", "noun_top1", "action_mAP", "ms_per_step", "cpu_ms_per_step")
    history = {"all": "all (carried state)"}
    rows = [[r["mode"], history.get(r["context_windows"], f"last {r['context_windows']} window(s)"),
             *(f"{r[c]:.1f}" for c in cells)] for r in report["rows"]]  # fmt: skip
    first = report["rows"][0]
    return "\n\n".join([
        "# Streaming versus re-reading on the synthetic long videos",
        f"{meta['long_videos']} held-out untrimmed videos ({meta['seconds_of_video']:.0f} s, "
        f"{meta['segments_per_video']} actions each with idle gaps), the `mambavl demo` recognition model trained "
        f"on clips; a step every {STRIDE} frames (3 per second), the encoder reading the last {WINDOW} frames "
        f"({report['window_tokens']} tokens). Per-frame mAP over the classes present (background excluded), top-1 "
        "over the steps where an action runs. Percent. Time per step (processor + encoder + fusion + heads, not the "
        "decoding): the median wall-clock time, and the mean CPU time, which a busy machine inflates less.",
        harness.markdown_table(header, rows),
        f"Background rate {first['background_rate']:.1f}% of the steps; always answering the most frequent action: "
        f"{first['majority_action_top1']:.1f}% action top-1.",
        f"Memory: {mem['stream_hours']:g} h of stream ({mem['steps']:,} steps, {mem['tokens']:,} tokens): the "
        f"streamer held {', '.join(f'{b:,}' for b in mem['streamer_bytes'])} bytes at every step; process RSS "
        + " → ".join(f"{x['rss_mib']:.0f}" for x in mem["rss"])
        + f" MiB every 10 minutes of stream (growth {mem['rss_growth_mib']:+.1f} MiB); "
        f"{mem['ms_per_step']:.2f} ms per feature step.",
        f"Command: `{harness.command_line()}` ({harness.describe(harness.machine_info())}).",
    ])  # fmt: skip


def main() -> None:
    p = harness.parser(__doc__, "8 clip videos, 1 epoch, 1 short long video, 36 s of memory")
    p.add_argument("--model", type=Path, default=None, help="a saved demo model (default: train one)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default: %(default)s)")
    p.add_argument("--long-videos", type=int, default=3, help="held-out long videos (default: %(default)s)")
    p.add_argument("--reread-windows", type=harness.int_list, default="1,4,16", help="re-reads' windows")
    p.add_argument("--memory-hours", type=float, default=1.0, help="hours of memory stream (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=Path("runs/stream_vs_reread"), help="default: %(default)s")
    args = p.parse_args()
    if min(args.reread_windows) < 1:
        p.error("--reread-windows must be positive")
    args.memory_hours = 0.01 if args.quick else args.memory_hours
    model, processor, meta = get_model(args)
    rows, setup = part1(args, model, processor)
    memory = part2(args, model)
    report = {"setup": {**meta, **setup}, "window_tokens": model.config.pool_window, "rows": rows, "memory": memory}
    text = markdown(report)
    harness.write_results(args.output_dir, "stream_vs_reread", payload=report, markdown=text)
    print(text)


if __name__ == "__main__":
    main()
