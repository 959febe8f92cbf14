"""Batching dataset items into model inputs through a :class:`~mambavl.MambaVLProcessor`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..metrics import IGNORE_INDEX

__all__ = ["MambaVLCollator"]


class MambaVLCollator:
    """Collate :class:`~mambavl.data.EK100SegmentDataset` items (or any dicts with the same keys) into a batch.

    Works as ``collate_fn`` of a ``DataLoader``, as the ``data_collator`` of ``transformers.Trainer`` and in
    :func:`mambavl.training.train`.

    Each item has ``frames`` ``(T, H, W, 3)`` uint8 (or ``(V, T, H, W, 3)`` for ``V`` temporal views) or
    ``video_features`` ``(T, D)`` (or ``(V, T, D)``), and ``verb_class``/``noun_class`` (``-100`` when unlabeled)
    and ``narration_id``. Training batches get action-aware masked questions and random crops; evaluation batches
    label-free questions and center crops. Each clip's randomness is seeded by ``(seed, epoch, narration id, view)``,
    so a clip is prepared the same whenever it is prepared again, whatever its batch mates: what exact resumption of
    a training run, and a batch split across processes, need. ``None`` items (segments that
    ``EK100SegmentDataset(on_error="skip")`` skipped as unreadable) are left out of the batch, so that
    ``transformers.Trainer`` passes over them too.

    With several views the model inputs have ``B * V`` rows (views of a clip adjacent), the labels ``B`` rows, and
    the batch has ``num_views = V``, which the model's forward takes: it averages each clip's views' logits (so
    ``transformers.Trainer.evaluate``/``predict`` and :func:`mambavl.training.evaluate` get one row per clip).

    Args:
        processor: a :class:`~mambavl.MambaVLProcessor` (its class names turn class ids into training questions).
        training: training mode (masked action-aware questions, video augmentation).
        seed: base seed of the batch randomness.
        return_metadata: also return ``narration_id`` (a list of strings): useful for predictions, but not a model
            input (leave it off for ``transformers.Trainer``).
        **processor_kwargs: passed to the processor call (e.g. ``num_frames``).
    """

    def __init__(
        self,
        processor: Any,
        training: bool = False,
        seed: int = 0,
        return_metadata: bool = False,
        **processor_kwargs: Any,
    ):
        self.processor = processor
        self.training = training
        self.seed = seed
        self.return_metadata = return_metadata
        self.processor_kwargs = processor_kwargs
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the batch randomness."""
        self.epoch = epoch

    def _clip_seed(self, key: str, view: int) -> int:
        digest = hashlib.sha256(f"{self.seed}|{self.epoch}|{key}|{view}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % (2**63)

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        if not items:
            raise ValueError("Cannot collate an empty list of items.")
        kept = [item for item in items if item is not None]  # segments skipped as unreadable (on_error="skip")
        if not kept:
            raise ValueError(
                f"Every item of this batch of {len(items)} is None: each segment was skipped as unreadable "
                '(EK100SegmentDataset(on_error="skip")). mambavl.training.train passes over such a batch; other '
                'loops (transformers.Trainer) cannot: find the bad files up front with check_videos="decode".'
            )
        items = kept
        field = "frames" if "frames" in items[0] else "video_features" if "video_features" in items[0] else None
        if field is None or any(field not in item for item in items):
            raise ValueError(
                f"Every item needs `frames` (T, H, W, 3) or `video_features` (T, D); got keys {sorted(items[0])}. "
                "(With transformers.Trainer, items that are plain dicts lose every key that is not a model argument: "
                "return a Mapping that is not a dict, such as mambavl.data.SegmentItem, or set "
                "TrainingArguments(remove_unused_columns=False).)"
            )
        base_rank = 4 if field == "frames" else 2
        values = [torch.as_tensor(item[field]) for item in items]
        ranks = {value.dim() for value in values}
        if len(ranks) != 1 or (rank := ranks.pop()) not in (base_rank, base_rank + 1):
            raise ValueError(f"Items' `{field}` must all be {base_rank}-D, or all {base_rank + 1}-D with views.")
        if rank == base_rank:
            clips, views = values, 1
        else:
            view_counts = sorted({value.shape[0] for value in values})
            if len(view_counts) != 1:
                raise ValueError(f"All items must have the same number of views; got {view_counts}.")
            views = view_counts[0]
            clips = [clip for value in values for clip in value.unbind(0)]

        keys = [str(item.get("narration_id", i)) for i, item in enumerate(items)]
        verbs = [_class_id(item.get("verb_class")) for item in items]
        nouns = [_class_id(item.get("noun_class")) for item in items]
        repeat = lambda values: [v for v in values for _ in range(views)]  # noqa: E731
        inputs = {"videos": clips} if field == "frames" else {"video_features": clips}
        batch = dict(
            self.processor(
                **inputs,
                verbs=repeat(verbs),
                nouns=repeat(nouns),
                training=self.training,
                keys=repeat(keys),
                seed=[self._clip_seed(key, view) for key in keys for view in range(views)],
                **self.processor_kwargs,
            )
        )
        if views > 1:
            for name in ("verb_labels", "noun_labels"):
                if name in batch:
                    batch[name] = batch[name][::views]
            batch["num_views"] = views
        if self.return_metadata:
            batch["narration_id"] = keys
        return batch


def _class_id(value: Any) -> int | None:
    if value is None:
        return None
    value = int(value)
    return None if value == IGNORE_INDEX else value
