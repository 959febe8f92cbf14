"""Fine-tune MambaVL on an EPIC-KITCHENS-format dataset with Accelerate (:func:`mambavl.training.train`).

Inputs: annotation CSVs with the EPIC-KITCHENS-100 columns, the verb and noun class lists, and a folder of videos.
Start from pretrained backbones (``--video-backbone`` and ``--text-backbone``: local folders or Hub ids) or from a
saved MambaVL (``--model``). Checkpoints, a metrics log and the final model (``<output-dir>/model``, loadable with
``from_pretrained``) go to ``--output-dir``.

The same script runs on one CPU or GPU, or on several processes; ``--batch-size`` is the global batch:

    python examples/train_accelerate.py --help
    python examples/train_accelerate.py --train-annotations train.csv ... --output-dir runs/mine
    accelerate launch --multi_gpu --num_processes 2 examples/train_accelerate.py --train-annotations train.csv ...
    torchrun --standalone --nproc_per_node 2 examples/train_accelerate.py --train-annotations train.csv ...
"""

from __future__ import annotations

import argparse
import logging
import os

from accelerate.utils import set_seed

from mambavl import MambaVLForActionRecognition, MambaVLProcessor
from mambavl.data import (
    EK100SegmentDataset,
    MambaVLCollator,
    VideoFileSource,
    label_config,
    load_annotations,
    load_class_list,
)
from mambavl.training import TrainingConfig, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--train-annotations", required=True, help="EK100-format CSV of the training segments")
    data.add_argument("--val-annotations", help="EK100-format CSV evaluated after every epoch")
    data.add_argument("--verb-classes", required=True, help="verb class list (EPIC_100_verb_classes.csv format)")
    data.add_argument("--noun-classes", required=True, help="noun class list (EPIC_100_noun_classes.csv format)")
    data.add_argument("--video-root", required=True, help="folder of the videos")
    data.add_argument(
        "--layout", choices=["flat", "ek100"], default="flat",
        help="flat: <root>/<video_id>.mp4; ek100: <root>/<participant>/videos/<video_id>.MP4 (default: flat)",
    )  # fmt: skip
    data.add_argument(
        "--annotation-fps", type=float, help="rate of start_frame/stop_frame if not the videos' (EK100: 60)"
    )
    model = parser.add_argument_group("model (either --model, or --video-backbone and --text-backbone)")
    model.add_argument("--model", help="a saved MambaVL folder (model + processor) to fine-tune")
    model.add_argument("--video-backbone", help="transformers video model: folder or Hub id")
    model.add_argument("--text-backbone", help="transformers text model with a mask token: folder or Hub id")
    model.add_argument("--hidden-size", type=int, default=768, help="fusion width (default: 768)")
    model.add_argument("--num-frames", type=int, default=16, help="frames per clip (default: 16)")
    model.add_argument("--image-size", type=int, default=224, help="crop size in pixels (default: 224)")
    run = parser.add_argument_group("training")
    run.add_argument("--output-dir", required=True)
    run.add_argument("--epochs", type=int, default=10)
    run.add_argument("--batch-size", type=int, default=8, help="global batch size (default: 8)")
    run.add_argument("--learning-rate", type=float, default=1e-4)
    run.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    run.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    run.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default: 0)")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    run.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.video_backbone or args.text_backbone):
        parser.error("pass either --model, or --video-backbone and --text-backbone")
    if not args.model and not (args.video_backbone and args.text_backbone):
        parser.error("--video-backbone and --text-backbone go together")
    return args


def build_model_and_processor(args: argparse.Namespace):
    """A MambaVL model and its processor: loaded from --model, or built around the two backbones."""
    if args.model:
        return MambaVLForActionRecognition.from_pretrained(args.model), MambaVLProcessor.from_pretrained(args.model)
    verbs, nouns = load_class_list(args.verb_classes), load_class_list(args.noun_classes)
    model = MambaVLForActionRecognition.from_pretrained_backbones(
        video=args.video_backbone, text=args.text_backbone, hidden_size=args.hidden_size, **label_config(verbs, nouns)
    )
    processor = MambaVLProcessor.from_class_lists(
        args.text_backbone, verbs, nouns, num_frames=args.num_frames, image_size=args.image_size
    )
    return model, processor


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mambavl").setLevel(logging.INFO)  # the evaluation after each epoch, resumption
    set_seed(args.seed)  # before the model: its fusion, projections and heads are drawn from the seed
    model, processor = build_model_and_processor(args)
    num_frames = processor.video_processor.num_frames

    source = VideoFileSource(args.video_root, layout=args.layout, annotation_fps=args.annotation_fps)
    train_set = EK100SegmentDataset(
        load_annotations(args.train_annotations), source, num_frames=num_frames, sampling="random", seed=args.seed
    )
    val_set = None
    if args.val_annotations:
        val_set = EK100SegmentDataset(load_annotations(args.val_annotations), source, num_frames, sampling="center")

    config = TrainingConfig(
        output_dir=args.output_dir,
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_steps=args.max_steps,
        mixed_precision=args.mixed_precision,
        num_workers=args.num_workers,
        seed=args.seed,
        resume_from_checkpoint="auto" if args.resume else None,
    )
    result = train(
        model,
        train_set,
        MambaVLCollator(processor, training=True, seed=args.seed),  # masked, label-derived questions; augmentation
        config,
        eval_dataset=val_set,
        eval_collate_fn=MambaVLCollator(processor),  # label-free questions, centre crops
        processor=processor,  # saved next to every checkpoint's model
    )
    if os.environ.get("RANK", "0") == "0":  # print once, also when several processes train
        for name, value in result.eval_metrics.items():
            print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")
        print(f"model saved to {result.model_dir}")


if __name__ == "__main__":
    main()
