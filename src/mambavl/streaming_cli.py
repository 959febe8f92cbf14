"""Streaming commands: ``mambavl stream``, ``mambavl evaluate --task online`` and ``mambavl demo --task streaming``.

:mod:`mambavl.cli` registers them with one line each; everything heavy is imported inside the functions.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _mambavl_cli import positive_int as _positive_int  # standard library only

__all__ = [
    "add_online_evaluate_arguments",
    "add_stream_parser",
    "add_streaming_demo_arguments",
    "run_evaluate_online",
    "run_stream",
    "run_streaming_demo",
    "stream_source",
    "write_predictions",
]

logger = logging.getLogger("mambavl")

FEATURE_SUFFIXES = (".safetensors", ".npy")
PREDICTION_SUFFIXES = (".jsonl", ".csv")
#: The streaming demo: windows of 16 frames (1.3 s at 12 fps, about one action), a step every 4 frames (3 per second).
DEMO_WINDOW, DEMO_STRIDE, DEMO_LONG_VIDEOS, DEMO_SEGMENTS = 16, 4, 3, 30


# ---------------------------------------------------------------------------------------------------- shared helpers
def _add_streamer_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("streaming")
    g.add_argument(
        "--window", type=_positive_int, default=None,
        help="frames the video encoder reads at each step; the processor samples its num_frames from them "
        "(default: the processor's num_frames)",
    )  # fmt: skip
    g.add_argument(
        "--stride", type=_positive_int, default=None,
        help="frames (or feature steps) between two steps (default: the window for frames, 1 for features)",
    )  # fmt: skip
    g.add_argument(
        "--sample-fps", type=float, default=None,
        help="decode the video at this frame rate (default: every frame, the video's own rate)",
    )  # fmt: skip
    g.add_argument(
        "--feature-fps", type=float, default=None,
        help="steps per second of a .npy feature file (.safetensors files may carry their own 'fps') (default: 1)",
    )  # fmt: skip
    g.add_argument(
        "--pool-window", default="auto",
        help="fused video tokens the heads pool: 'auto' (the model's config.pool_window when set, else one window's "
        "tokens, or --stride feature steps), 'all' (everything seen) or a number (default: %(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--reread", action="store_true",
        help="re-read each window from a zero state instead of carrying the state (the sliding-window baseline)",
    )  # fmt: skip
    g.add_argument("--verb-question", default=None, help="your own verb question (default: label-free questions)")
    g.add_argument("--noun-question", default=None, help="your own noun question (default: label-free questions)")


def _load(model_dir: str | Path, pool_window: str = "auto", *, features: bool = False, stride: int | None = None):
    """The saved model (recognition or anticipation, from its config's architectures) with the ``--pool-window``
    applied, and its processor."""
    from transformers import AutoConfig

    from . import MambaVLForActionAnticipation, MambaVLForActionRecognition, MambaVLProcessor
    from .streaming import tokens_per_window

    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise SystemExit(f"--model {model_dir}: no config.json there; pass a folder written by save_pretrained.")
    config = AutoConfig.from_pretrained(path)
    anticipation = "MambaVLForActionAnticipation" in (getattr(config, "architectures", None) or [])
    model_class = MambaVLForActionAnticipation if anticipation else MambaVLForActionRecognition
    processor = MambaVLProcessor.from_pretrained(path)
    window = None  # --pool-window all
    if pool_window not in ("all", "auto"):
        try:
            window = int(pool_window)
        except (TypeError, ValueError):
            window = 0
        if window < 1:
            raise SystemExit(f"--pool-window must be 'auto', 'all' or a positive integer, got {pool_window!r}.")
    model = model_class.from_pretrained(path).eval()
    if pool_window == "auto":
        window = model.config.pool_window
        if window is None:
            window = (stride or 1) if features else tokens_per_window(model, processor)
    model.config.pool_window = window  # the fusion and the cache read it at each call: no second load
    return model, processor


def _make_streamer(model: Any, processor: Any, args: argparse.Namespace, fps: float, features: bool) -> Any:
    from .streaming import MambaVLStreamer

    questions = None
    if args.verb_question or args.noun_question:
        if not (args.verb_question and args.noun_question):
            raise SystemExit("Pass both --verb-question and --noun-question (or neither).")
        questions = (args.verb_question, args.noun_question)
    try:
        return MambaVLStreamer(
            model, processor, window=None if features else args.window, stride=args.stride, questions=questions,
            top_k=args.top_k, fps=fps, carry_state=not args.reread,
        )  # fmt: skip
    except ValueError as error:
        raise SystemExit(str(error)) from error


def _feature_chunks(path: Path, feature_fps: float | None, chunk: int = 64) -> tuple[Any, float]:
    from .data import FeatureSource

    source = FeatureSource(path.parent, feature_fps=feature_fps)
    array, fps = source._load(path.stem)
    fps = fps or feature_fps or 1.0
    return (array[i : i + chunk] for i in range(0, len(array), chunk)), float(fps)


def stream_source(
    streamer_factory: Any,
    path: str | Path,
    *,
    sample_fps: float | None = None,
    feature_fps: float | None = None,
    progress: bool = True,
    on_step: Any = None,
) -> tuple[list[Any], float, float]:
    """Stream a video file (or a ``.safetensors`` / ``.npy`` feature file) through a fresh streamer.

    Args:
        streamer_factory: ``f(fps, features) -> MambaVLStreamer`` (the rate of the fed frames is known only once the
            file is open).
        path: the file.
        sample_fps / feature_fps: see ``mambavl stream --help``.
        progress: show a progress bar (over the file's frames or feature steps).
        on_step: called with each :class:`~mambavl.streaming.StreamStep` as it completes.

    Returns:
        ``(steps, fps, duration_s)``: every step, the rate of the fed stream and its length in seconds.
    """
    from tqdm.auto import tqdm

    from .data import read_video_info
    from .streaming import iter_video_frames

    path = Path(path)
    if not path.exists():
        raise SystemExit(f"{path}: no such file.")
    features = path.suffix.lower() in FEATURE_SUFFIXES
    if features:
        chunks, fps = _feature_chunks(path, feature_fps)
        total = None
    else:
        info = read_video_info(path)
        fps = float(min(sample_fps, info.fps) if sample_fps else info.fps)  # never above the video's rate
        total = round(info.num_frames * fps / info.fps)
        chunks = (frames for frames, _ in iter_video_frames(path, sample_fps=sample_fps))
    streamer = streamer_factory(fps, features)
    steps: list[Any] = []
    seen = 0
    with tqdm(total=total, unit="frame", disable=not progress, leave=False, desc=path.name) as bar:
        for chunk in chunks:
            new = streamer.push_features(chunk) if features else streamer.push_frames(chunk)
            seen += len(chunk)
            bar.update(len(chunk))
            for step in new:
                if on_step is not None:
                    on_step(step, bar)
            steps.extend(new)
    return steps, fps, seen / fps


def write_predictions(path: str | Path, steps: Sequence[Any], truth: Any = None) -> Path:
    """Write the steps as JSONL (one record per step) or CSV (one row per step, the top action), by suffix.

    ``truth``: optional ``(verb_ids, noun_ids)`` arrays of the ground truth at each step (-1 for background).
    """
    path = Path(path)
    if path.suffix.lower() not in PREDICTION_SUFFIXES:
        raise ValueError(f"Predictions are written as .jsonl or .csv (by suffix), got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            header = ["step", "frame", "time", "verb_id", "verb", "noun_id", "noun", "score", "seconds"]
            writer.writerow(header + (["true_verb_id", "true_noun_id"] if truth is not None else []))
            for i, step in enumerate(steps):
                top = step.top
                row = [step.index, step.frame, step.time, top["verb_id"], top["verb"], top["noun_id"], top["noun"]]
                row += [f"{top['score']:.6f}", f"{step.seconds:.6f}"]
                if truth is not None:
                    row += [int(truth[0][i]), int(truth[1][i])]
                writer.writerow(row)
        return path
    with open(path, "w", encoding="utf-8") as handle:
        for i, step in enumerate(steps):
            record = step.to_dict()
            if truth is not None:
                record["true_verb_id"], record["true_noun_id"] = int(truth[0][i]), int(truth[1][i])
            handle.write(json.dumps(record) + "\n")
    return path


def _truth(labels: Any, steps: Sequence[Any], task: str, anticipation_time: float) -> tuple[Any, Any]:
    import numpy as np

    times = np.array([s.time for s in steps], dtype=np.float64)
    if task == "anticipation":
        return labels.anticipation_targets(times, anticipation_time)
    return labels.at(times)


def _timeline(path: Path, steps: Sequence[Any], model: Any, labels: Any, title: str) -> Path:
    import numpy as np

    from .timeline import plot_timeline

    config = model.config
    verbs = (
        [config.verb_id2label.get(i, str(i)) for i in range(config.num_verb_classes)] if config.verb_id2label else None
    )
    nouns = (
        [config.noun_id2label.get(i, str(i)) for i in range(config.num_noun_classes)] if config.noun_id2label else None
    )
    return plot_timeline(
        path, np.array([s.time for s in steps]), [s.top["verb_id"] for s in steps], [s.top["noun_id"] for s in steps],
        [s.top["score"] for s in steps], labels=labels, verb_names=verbs, noun_names=nouns, title=title,
    )  # fmt: skip


def _read_labels(annotations: Path, annotation_fps: float | None, **kwargs: Any) -> dict[str, Any]:
    """:func:`~mambavl.data.untrimmed_labels` of ``--annotations``, with a missing or bad file a one-line exit."""
    from .data import untrimmed_labels

    if not annotations.exists():
        raise SystemExit(f"--annotations {annotations}: no such file.")
    try:
        return untrimmed_labels(annotations, annotation_fps=annotation_fps, **kwargs)
    except (ValueError, TypeError) as error:
        raise SystemExit(f"--annotations {annotations}: {error}") from error


# ------------------------------------------------------------------------------------------------------------ stream
def add_stream_parser(sub: Any) -> None:
    """Register ``mambavl stream``."""
    p = sub.add_parser(
        "stream",
        help="online action recognition / anticipation over a whole video, step by step",
        description=(
            "Stream a video file (or a .safetensors/.npy feature file) through a saved MambaVL with its recurrent "
            "state: every --stride frames the video encoder reads the last --window frames, the model fuses their "
            "tokens with the carried state and reports the top actions now (recognition model) or next "
            "(anticipation model). Memory stays constant however long the video. Writes the predictions (JSONL or "
            "CSV) and a PNG timeline; with --annotations (EPIC-KITCHENS format) it also draws the ground truth and "
            "prints the online metrics."
        ),
    )
    p.add_argument("video", type=Path, help="a video file, or a features file (.safetensors / .npy, one row a step)")
    p.add_argument("--model", required=True, help="a saved MambaVL folder (model + processor)")
    p.add_argument("--annotations", type=Path, default=None, help="EK100-format CSV with this video's segments")
    p.add_argument(
        "--annotation-fps", type=float, default=None,
        help="rate of the annotations' start/stop_frame; given, labels come from frames, else from the timestamps "
        "(default: timestamps)",
    )  # fmt: skip
    p.add_argument(
        "--video-id", default=None, help="the video's id in --annotations (default: the file name without suffix)"
    )
    p.add_argument(
        "--anticipation-time", type=float, default=1.0,
        help="t_a in seconds: an anticipation model's step at t is scored against the action at t + t_a "
        "(default: %(default)s)",
    )  # fmt: skip
    _add_streamer_arguments(p)
    p.add_argument("--top-k", type=_positive_int, default=5, help="actions reported per step (default: %(default)s)")
    p.add_argument(
        "--output", type=Path, default=None,
        help="predictions file, .jsonl or .csv (default: <output-dir>/<video>.predictions.jsonl)",
    )  # fmt: skip
    p.add_argument(
        "--output-dir",
        type=Path,
        default=Path("runs/stream"),
        help="where the predictions and the timeline go (default: %(default)s)",
    )
    p.add_argument("--no-timeline", action="store_true", help="do not write the PNG timeline (default: write it)")
    p.add_argument("--quiet", action="store_true", help="no per-step lines and no progress bar (default: show them)")
    p.add_argument("--verbose", action="store_true", help="debug logging (default: off)")
    p.set_defaults(func=run_stream)


def run_stream(args: argparse.Namespace) -> int:
    """``mambavl stream``."""
    features = args.video.suffix.lower() in FEATURE_SUFFIXES
    if args.output is not None and args.output.suffix.lower() not in PREDICTION_SUFFIXES:
        raise SystemExit(f"--output {args.output}: the predictions are written as .jsonl or .csv (by suffix).")
    labels = truth = None
    if args.annotations is not None:  # read before the stream: a bad file or a wrong video id fails at once
        video_id = args.video_id or args.video.stem
        all_labels = _read_labels(args.annotations, args.annotation_fps)
        if video_id not in all_labels:
            known = list(all_labels)
            given = "--video-id" if args.video_id else "the file name without suffix; pass --video-id"
            raise SystemExit(
                f"--annotations {args.annotations} has no segment of video {video_id!r} ({given}); its videos: "
                f"{', '.join(known[:10])}{' ...' if len(known) > 10 else ''}."
            )
        labels = all_labels[video_id]
    model, processor = _load(args.model, args.pool_window, features=features, stride=args.stride)

    def show(step: Any, bar: Any) -> None:
        if not args.quiet:
            top = step.top
            bar.write(f"{step.time:9.2f} s  {top['verb'] or top['verb_id']} {top['noun'] or top['noun_id']}  "
                      f"{top['score']:.3f}")  # fmt: skip

    start = time.time()
    steps, fps, duration = stream_source(
        lambda fps, features: _make_streamer(model, processor, args, fps, features), args.video,
        sample_fps=args.sample_fps, feature_fps=args.feature_fps, progress=not args.quiet, on_step=show,
    )  # fmt: skip
    if not steps:
        if features:
            need = f"--stride {args.stride or 1} feature steps"
        else:
            need = f"--window {args.window or processor.video_processor.num_frames} frames"
        raise SystemExit(
            f"{args.video}: too short for one step ({duration:.2f} s, {round(duration * fps)} "
            f"{'feature steps' if features else 'frames'} at {fps:g} per second; a step needs {need})."
        )
    task = steps[0].task
    if labels is not None:
        labels.duration = max(labels.duration, duration)  # the end of the video past its last segment is background
        truth = _truth(labels, steps, task, args.anticipation_time)
    out = args.output or args.output_dir / f"{args.video.stem}.predictions.jsonl"
    write_predictions(out, steps, truth)
    per_step = sum(s.seconds for s in steps) / len(steps)
    print(f"{len(steps)} steps over {duration:.1f} s of video in {time.time() - start:.1f} s "
          f"({1000 * per_step:.1f} ms per step); predictions: {out}")  # fmt: skip
    if not args.no_timeline:
        png = _timeline(args.output_dir / f"{args.video.stem}.timeline.png", steps, model, labels, args.video.name)
        print(f"timeline: {png}")
    if truth is not None:
        metrics = _online_metrics(steps, truth, task)
        _print_metrics(metrics)
    return 0


def _online_metrics(steps: Sequence[Any], truth: tuple[Any, Any], task: str) -> dict[str, float]:
    import torch

    from .online_metrics import online_anticipation_metrics, online_detection_metrics

    verb = torch.stack([s.verb_logits for s in steps])
    noun = torch.stack([s.noun_logits for s in steps])
    try:
        if task == "anticipation":
            return online_anticipation_metrics(verb, noun, truth[0], truth[1])
        return online_detection_metrics(verb, noun, truth[0], truth[1])
    except ValueError as error:
        raise SystemExit(f"Cannot score the stream: {error}") from error


def _print_metrics(metrics: dict[str, Any]) -> None:
    for key, value in metrics.items():
        print(f"  {key:<22} {value:8.2f}" if isinstance(value, float) else f"  {key:<22} {value:8d}")


# --------------------------------------------------------------------------------------------- evaluate --task online
def add_online_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The streaming options of ``mambavl evaluate --task online`` (``mambavl.cli`` declares the ``online`` task)."""
    _add_streamer_arguments(parser)
    g = parser.add_argument_group("online evaluation")
    g.add_argument(
        "--top-k",
        type=_positive_int,
        default=5,
        help="actions kept per step in the predictions (default: %(default)s)",
    )
    g.add_argument(
        "--predictions-dir", type=Path, default=None,
        help="with --task online: write <video>.predictions.jsonl and <video>.timeline.png here (default: none)",
    )  # fmt: skip


def run_evaluate_online(args: argparse.Namespace) -> int:
    """``mambavl evaluate --task online``: stream every video of ``--annotations`` and score all steps together."""
    import numpy as np

    if getattr(args, "frames_root", None) is not None:
        raise SystemExit("--task online streams video files (--video-root) or feature files (--features-root).")
    # the annotations are read once, before the model loads; each video's ground truth ends with the video (below)
    all_labels = _read_labels(args.annotations, args.annotation_fps)
    features = args.features_root is not None
    model, processor = _load(args.model, args.pool_window, features=features, stride=args.stride)
    source_path = _source_paths(args)
    all_steps, truths, per_video = [], ([], []), {}
    for video_id, labels in all_labels.items():
        path = source_path(video_id)
        steps, _, duration = stream_source(
            lambda fps, features: _make_streamer(model, processor, args, fps, features), path,
            sample_fps=args.sample_fps, feature_fps=args.feature_fps, progress=True,
        )  # fmt: skip
        if not steps:
            logger.warning("%s: too short for one step; left out", path)
            continue
        labels.duration = max(labels.duration, duration)
        truth = _truth(labels, steps, steps[0].task, args.anticipation_time)
        all_steps += steps
        truths[0].append(truth[0])
        truths[1].append(truth[1])
        per_video[video_id] = len(steps)
        if args.predictions_dir is not None:
            write_predictions(args.predictions_dir / f"{video_id}.predictions.jsonl", steps, truth)
            _timeline(args.predictions_dir / f"{video_id}.timeline.png", steps, model, labels, video_id)
    if not all_steps:
        raise SystemExit("No video gave a step: nothing to score.")
    metrics: dict[str, Any] = _online_metrics(
        all_steps, (np.concatenate(truths[0]), np.concatenate(truths[1])), all_steps[0].task
    )
    metrics["ms_per_step"] = 1000 * float(np.mean([s.seconds for s in all_steps]))
    print(f"\n{args.annotations.name}: {len(per_video)} videos, {len(all_steps)} steps")
    _print_metrics(metrics)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({**metrics, "videos": per_video}, indent=2))
    return 0


def _source_paths(args: argparse.Namespace) -> Any:
    """``video_id -> Path``: the video file of ``--video-root`` or the feature file of ``--features-root``, from one
    source for all videos (a video source lists each folder once)."""
    if args.video_root is not None:
        from .data import VideoFileSource

        videos = VideoFileSource(args.video_root, layout=args.layout)
        return lambda video_id: Path(videos.path(video_id))
    from .data import FeatureSource

    features = FeatureSource(args.features_root)
    return lambda video_id: Path(features.location(video_id))


# ---------------------------------------------------------------------------------------------- demo --task streaming
def add_streaming_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mambavl demo --task streaming`` (added to the demo parser)."""
    g = parser.add_argument_group("--task streaming")
    g.add_argument(
        "--long-videos", type=_positive_int, default=DEMO_LONG_VIDEOS,
        help=f"held-out untrimmed videos streamed, {DEMO_SEGMENTS} actions each (default: %(default)s)",
    )  # fmt: skip


def run_streaming_demo(args: argparse.Namespace) -> int:
    """``mambavl demo --task streaming``: train on synthetic clips, stream held-out long videos, score, draw."""
    import numpy as np

    from .data import generate_long_videos
    from .demo import DEFAULT_EPOCHS, build_demo, train_demo

    start = time.time()
    out = args.output_dir
    quick = args.quick
    num_videos, epochs = (8, 2) if quick else (args.num_videos, args.epochs or DEFAULT_EPOCHS["recognition"])
    long_videos, segments = (1, 8) if quick else (args.long_videos, DEMO_SEGMENTS)
    print(f"[1/5] synthetic egocentric clips -> {out / 'data'}")
    try:
        setup = build_demo(out / "data", task="recognition", num_videos=num_videos, seed=args.seed)
    except ImportError as error:
        raise SystemExit(str(error)) from error
    print(f"      {setup.info.num_train_segments} training clips, {setup.info.num_verbs} verbs x "
          f"{setup.info.num_nouns} nouns")  # fmt: skip
    print(f"[2/5] training the recognition model on clips for {epochs} epochs on the CPU")
    result = train_demo(
        setup, out / "run", epochs=epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed
    )
    model, processor = _load(result.model_dir)  # pool_window: one window's tokens
    long_dir = out / "data-long"
    print(f"[3/5] {long_videos} held-out untrimmed videos ({segments} actions each, idle gaps) -> {long_dir}")
    info = generate_long_videos(long_dir, num_videos=long_videos, segments_per_video=segments, seed=args.seed)
    labels = info.labels()
    print(f"[4/5] streaming them: a step every {DEMO_STRIDE} frames over the last {DEMO_WINDOW}, state carried")
    args_stream = argparse.Namespace(
        window=DEMO_WINDOW, stride=DEMO_STRIDE, verb_question=None, noun_question=None, top_k=5, reread=False,
    )  # fmt: skip
    all_steps, truth_v, truth_n = [], [], []
    first = None
    for video_id in info.video_ids:
        steps, _, _ = stream_source(
            lambda fps, features: _make_streamer(model, processor, args_stream, fps, features),
            info.video_path(video_id), progress=True,
        )  # fmt: skip
        tv, tn = labels[video_id].at([s.time for s in steps])
        all_steps += steps
        truth_v.append(tv)
        truth_n.append(tn)
        if first is None:
            first = (video_id, steps, (tv, tn))
    metrics = _online_metrics(all_steps, (np.concatenate(truth_v), np.concatenate(truth_n)), "recognition")
    video_id, steps, truth = first
    write_predictions(out / f"{video_id}.predictions.jsonl", steps, truth)
    png = _timeline(out / "streaming_timeline.png", steps, model, labels[video_id], f"{video_id} (held out)")
    print(f"[5/5] timeline of {video_id}: {png}")
    duration = sum(info.num_frames.values()) / info.fps
    per_step = 1000 * np.mean([s.seconds for s in all_steps])
    print(f"\nonline action detection on {len(info.video_ids)} held-out long videos ({duration:.0f} s, "
          f"{metrics['num_steps']} steps, {per_step:.1f} ms per step):")  # fmt: skip
    print(f"  background rate        {metrics['background_rate']:6.1f}%  (steps with no action; not scored for top-1)")
    print(f"  verb / noun / action per-frame mAP   {metrics['verb_mAP']:5.1f}% / {metrics['noun_mAP']:5.1f}% / "
          f"{metrics['action_mAP']:5.1f}%")  # fmt: skip
    print(f"  verb / noun / action top-1           {metrics['verb_top1']:5.1f}% / {metrics['noun_top1']:5.1f}% / "
          f"{metrics['action_top1']:5.1f}%")  # fmt: skip
    print(f"  always the most frequent action      {metrics['majority_action_top1']:5.1f}% action top-1")
    elapsed = time.time() - start
    summary = {**metrics, "ms_per_step": per_step, "seconds_of_video": duration, "videos": info.video_ids,
               "epochs": epochs, "window": DEMO_WINDOW, "stride": DEMO_STRIDE, "total_seconds": elapsed}  # fmt: skip
    (out / "streaming_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n({elapsed:.0f} s in all; metrics: {out / 'streaming_metrics.json'})")
    return 0
