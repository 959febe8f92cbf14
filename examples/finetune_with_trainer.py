"""Fine-tune MambaVL with ``transformers.Trainer`` on an EPIC-KITCHENS-format dataset.

The model is a ``PreTrainedModel`` whose forward takes the batch of :class:`mambavl.data.MambaVLCollator` and returns
a loss, so ``Trainer`` drives it like any other model, with its default arguments: the model declares its two labels
(``verb_labels``, ``noun_labels``) and the outputs that are not logits (``config.keys_to_ignore_at_inference``), and
the dataset items keep their fields through ``remove_unused_columns``. Two things are specific to MambaVL:

* evaluation batches must get label-free questions: a question built from the clip's own action leaks it, even
  masked. ``Trainer`` has one ``data_collator``, so :class:`MambaVLTrainer` swaps in the evaluation collator;
* the collator and the dataset draw their per-clip randomness from the epoch: :class:`SetEpoch` passes it on.

    python examples/finetune_with_trainer.py --help
    python examples/finetune_with_trainer.py --train-annotations train.csv ... --output-dir runs/trainer
    accelerate launch --multi_gpu --num_processes 2 examples/finetune_with_trainer.py ...   # several GPUs
    torchrun --standalone --nproc_per_node 2 examples/finetune_with_trainer.py ...          # or CPU processes
"""

from __future__ import annotations

import argparse

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from mambavl import MambaVLForActionRecognition, MambaVLProcessor
from mambavl.data import EK100SegmentDataset, MambaVLCollator, VideoFileSource, label_config, load_class_list
from mambavl.metrics import recognition_metrics


class MambaVLTrainer(Trainer):
    """A ``Trainer`` whose evaluation and prediction batches come from their own collator (label-free questions)."""

    def __init__(self, *args, eval_data_collator, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    def get_eval_dataloader(self, eval_dataset=None):  # evaluate()
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def get_test_dataloader(self, test_dataset):  # predict()
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_test_dataloader(test_dataset)
        finally:
            self.data_collator = train_collator


class SetEpoch(TrainerCallback):
    """Call ``set_epoch`` on the dataset and the collator at the start of every epoch."""

    def __init__(self, *objects):
        self.objects = objects

    def on_epoch_begin(self, args, state, control, **kwargs):
        for obj in self.objects:
            obj.set_epoch(int(state.epoch or 0))


def compute_metrics(eval_prediction) -> dict[str, float]:
    """Verb, noun and action top-1/top-5 accuracy (percent) from the gathered logits and labels."""
    verb_logits, noun_logits = eval_prediction.predictions
    verb_labels, noun_labels = eval_prediction.label_ids
    return recognition_metrics(verb_logits, noun_logits, verb_labels, noun_labels)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-annotations", required=True, help="EK100-format CSV of the training segments")
    parser.add_argument("--val-annotations", help="EK100-format CSV evaluated after every epoch")
    parser.add_argument("--verb-classes", required=True, help="verb class list (EPIC_100_verb_classes.csv format)")
    parser.add_argument("--noun-classes", required=True, help="noun class list (EPIC_100_noun_classes.csv format)")
    parser.add_argument("--video-root", required=True, help="folder of the videos")
    parser.add_argument("--layout", choices=["flat", "ek100"], default="flat", help="video layout (default: flat)")
    parser.add_argument("--annotation-fps", type=float, help="rate of the annotations' frame numbers (EK100: 60)")
    parser.add_argument("--video-backbone", required=True, help="transformers video model: folder or Hub id")
    parser.add_argument("--text-backbone", required=True, help="transformers text model: folder or Hub id")
    parser.add_argument("--hidden-size", type=int, default=768, help="fusion width (default: 768)")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per clip (default: 16)")
    parser.add_argument("--image-size", type=int, default=224, help="crop size in pixels (default: 224)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--batch-size", type=int, default=8, help="batch size per device (default: 8)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (default: epochs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    verbs, nouns = load_class_list(args.verb_classes), load_class_list(args.noun_classes)
    model = MambaVLForActionRecognition.from_pretrained_backbones(
        video=args.video_backbone, text=args.text_backbone, hidden_size=args.hidden_size, **label_config(verbs, nouns)
    )
    processor = MambaVLProcessor.from_class_lists(
        args.text_backbone, verbs, nouns, num_frames=args.num_frames, image_size=args.image_size
    )

    source = VideoFileSource(args.video_root, layout=args.layout, annotation_fps=args.annotation_fps)
    train_set = EK100SegmentDataset(args.train_annotations, source, num_frames=args.num_frames, sampling="random")
    val_set = None
    if args.val_annotations:
        val_set = EK100SegmentDataset(args.val_annotations, source, num_frames=args.num_frames, sampling="center")
    train_collator = MambaVLCollator(processor, training=True)

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=0.1,  # a fraction of the training steps
        weight_decay=0.05,
        lr_scheduler_type="cosine",
        eval_strategy="epoch" if val_set is not None else "no",
        save_strategy="no",  # the final model is saved below, with its processor
        logging_steps=10,
        report_to=[],
        # Without a GPU, `accelerate` forms one process group of several (torchrun) processes only with use_cpu:
        # otherwise each process trains a model of its own.
        use_cpu=not torch.accelerator.is_available(),
    )
    trainer = MambaVLTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=train_collator,
        eval_data_collator=MambaVLCollator(processor),
        compute_metrics=compute_metrics,
        callbacks=[SetEpoch(train_set, train_collator)],
    )
    trainer.train()
    metrics = trainer.evaluate() if val_set is not None else {}
    model_dir = f"{args.output_dir}/model"
    trainer.save_model(model_dir)
    if trainer.is_world_process_zero():  # print and save once, also when several processes train
        for name, value in metrics.items():
            print(f"{name}: {value:.4g}")
        processor.save_pretrained(model_dir)
        print(f"model saved to {model_dir}")
    # Several processes: end the process group before exiting (without it gloo aborts at exit now and then,
    # "terminate called without an active exception").
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
