"""EPIC-KITCHENS-format annotations as a ``datasets.Dataset`` that decodes and processes clips on access.

For users who keep their data in 🤗 Datasets: :func:`load_annotations` already gives the annotations as a
``datasets.Dataset``; :func:`hf_segment_dataset` turns them into one whose rows are clips, read from a
:class:`~mambavl.data.VideoSource` only when a row is accessed (``Dataset.with_transform``), so nothing is decoded
or stored up front::

    from mambavl import MambaVLProcessor
    from mambavl.data import VideoFileSource, hf_segment_dataset

    processor = MambaVLProcessor.from_pretrained("runs/demo/run/model")
    clips = hf_segment_dataset("annotations.csv", VideoFileSource("videos", layout="flat"), processor,
                               num_frames=8)
    clips[0]["pixel_values"].shape  # (8, 3, 32, 32): model inputs, ready for a DataLoader or Trainer

Without a processor the rows are the decoded items of :class:`~mambavl.data.EK100SegmentDataset` (``frames``,
``verb_class``, ``noun_class``, ``narration_id``, ...), to batch with :class:`~mambavl.data.MambaVLCollator`.
``Dataset`` operations that work on the annotations (``filter``, ``select``, ``train_test_split``,
``shuffle``) work before the transform is set: call them on :func:`load_annotations`'s dataset first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from .collator import MambaVLCollator
from .epic_kitchens import EK100SegmentDataset, VideoSource, load_annotations

__all__ = ["SegmentTransform", "hf_segment_dataset"]

_ROW = "__mambavl_row__"  # the column that carries each row's position in the annotations


class SegmentTransform:
    """The ``Dataset.with_transform`` function of :func:`hf_segment_dataset`: annotation rows in, clips out.

    Args:
        segments: the :class:`~mambavl.data.EK100SegmentDataset` that reads a row's frames (sampling, seeds and
            error reporting are its own).
        processor: a :class:`~mambavl.MambaVLProcessor`, to return model inputs; ``None`` returns the decoded
            items.
        training: training questions and video augmentation (with a processor).
        seed: seeds, with :meth:`set_epoch`, the frame sampling (``sampling="random"``) and, with a processor, the
            crops and question choice of each clip (by its ``narration_id``, whatever the batch it is read in).
        max_question_length: questions are padded (and truncated) to this many tokens, so that rows of different
            accesses have one shape and batch with the default collation (default: the processor's
            ``max_question_length``).
    """

    def __init__(
        self,
        segments: EK100SegmentDataset,
        processor: Any = None,
        *,
        training: bool = False,
        seed: int = 0,
        max_question_length: int | None = None,
    ):
        self.segments = segments
        self.processor = processor
        self.collator = None
        if processor is not None:
            length = max_question_length or processor.max_question_length
            self.collator = MambaVLCollator(
                processor, training=training, seed=seed, padding="max_length", max_length=length
            )

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds frame sampling and (with a processor) augmentation and question choice."""
        self.segments.set_epoch(epoch)
        if self.collator is not None:
            self.collator.set_epoch(epoch)

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """Columns of annotation rows -> columns of clips (``frames`` / model inputs, one entry per row)."""
        if _ROW not in batch:
            raise KeyError(
                f"SegmentTransform needs the {_ROW!r} column that hf_segment_dataset adds; build the dataset with "
                "hf_segment_dataset() and keep that column (transformers.Trainer drops the columns the model does not "
                "take unless TrainingArguments(remove_unused_columns=False))."
            )
        items = [self.segments[int(row)] for row in batch[_ROW]]
        if self.collator is None:
            return {key: [item[key] for item in items] for key in items[0]}
        return dict(self.collator(items))


def hf_segment_dataset(
    annotations: Any,
    source: VideoSource,
    processor: Any = None,
    *,
    num_frames: int = 8,
    sampling: str = "center",
    training: bool = False,
    seed: int = 0,
    max_question_length: int | None = None,
    verb_classes: Any = None,
    noun_classes: Any = None,
    epoch: int = 0,
) -> Any:
    """A ``datasets.Dataset`` of clips that are read and processed when accessed.

    Args:
        annotations: an EK100-format annotation file (CSV) or the ``datasets.Dataset`` of :func:`load_annotations`
            (filtered, split or shuffled as you like).
        source: where the frames (or precomputed features) come from: :class:`~mambavl.data.VideoFileSource`,
            :class:`~mambavl.data.FrameFolderSource`, :class:`~mambavl.data.FeatureSource` or your own.
        processor: a :class:`~mambavl.MambaVLProcessor`: rows are then model inputs (``pixel_values (T, C, H, W)``
            or ``video_features (F, D)``, ``verb_input_ids (L,)``, ..., ``verb_labels``, ``noun_labels``); without
            one, rows are decoded items (``frames (T, H, W, 3)`` uint8, ``verb_class``, ``narration_id``, ...).
        num_frames: frames sampled per segment.
        sampling: ``"center"`` (deterministic) or ``"random"`` (TSN sampling seeded by ``seed``, the epoch and the
            row).
        training: with a processor, training questions (masked, from each clip's labels) and augmentation.
        seed: base seed of the sampling and augmentation.
        max_question_length: with a processor, the fixed question length of the rows (default: the processor's).
        verb_classes, noun_classes: class lists (or their CSV paths) to validate the class ids when ``annotations``
            is a file.

        epoch: the epoch that seeds random sampling and augmentation; call again with the next epoch (nothing is
            decoded up front, so this is cheap).

    Returns:
        ``annotations`` (one row per segment) with a transform (``Dataset.with_transform``, a
        :class:`SegmentTransform`): indexing, slicing and iterating return clips.
    """
    import datasets

    if isinstance(annotations, (str, os.PathLike)):
        annotations = load_annotations(annotations, verb_classes, noun_classes)
    if not isinstance(annotations, datasets.Dataset):
        raise TypeError(
            f"`annotations` must be an annotation file or the datasets.Dataset of load_annotations, got "
            f"{type(annotations).__name__}."
        )
    annotations = annotations.with_format(None)
    if _ROW in annotations.column_names:
        annotations = annotations.remove_columns(_ROW)
    segments = EK100SegmentDataset(annotations, source, num_frames=num_frames, sampling=sampling, seed=seed)
    transform = SegmentTransform(
        segments, processor, training=training, seed=seed, max_question_length=max_question_length
    )
    transform.set_epoch(epoch)
    rows = annotations.add_column(_ROW, list(range(len(annotations))))
    return rows.with_transform(transform)
