"""A ``transformers`` pipeline for MambaVL: ``pipeline("egocentric-action-recognition", model=...)``.

Registered with ``transformers``' pipeline registry when ``mambavl`` is imported::

    import mambavl  # registers the task
    from transformers import pipeline

    recognizer = pipeline("egocentric-action-recognition", model="runs/demo/run/model")
    recognizer("clip.mp4", top_k=3)
    # [{"verb": "take", "noun": "cup", "score": 0.41, "verb_id": 0, "noun_id": 3, "label": "take cup"}, ...]
    recognizer(frames, question="What is the person doing with the [MASK]?")  # frames: (T, H, W, 3) uint8

``pipeline("video-classification", model=...)`` does not work for MambaVL models: ``transformers``' video
classification pipeline needs torchvision video processors and a single ``logits`` output, while MambaVL answers
verb and noun questions; it fails with a message naming the ``video-classification`` pipeline. Use this task.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence, Sized
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Pipeline

logger = logging.getLogger(__name__)

__all__ = ["TASK", "EgocentricActionRecognitionPipeline", "register_pipelines"]

#: The task name of :class:`EgocentricActionRecognitionPipeline` in ``transformers.pipeline``.
TASK = "egocentric-action-recognition"


class EgocentricActionRecognitionPipeline(Pipeline):
    """Top-``k`` (verb, noun) actions of egocentric video clips with a MambaVL model and its processor.

    Build it with ``transformers.pipeline("egocentric-action-recognition", model=folder_or_hub_id)`` (after
    ``import mambavl``), or directly from a model and a :class:`~mambavl.MambaVLProcessor`.

    Call it with:

    - a video file path: ``num_frames`` frames (the processor's) are sampled at the centres of equal segments of
      the whole video, or of ``start`` .. ``end`` seconds;
    - decoded frames: a ``(T, H, W, 3)`` (or channels-first ``(T, 3, H, W)``) uint8 array or tensor;
    - a list of those: one result list per clip (run ``batch_size`` clips at a time with the pipeline's usual
      ``batch_size`` option).

    Keyword arguments: ``top_k`` (default 5) actions to return; ``question``: your own question (one string used
    for both the verb and the noun question, or a ``(verb_question, noun_question)`` pair), with the tokenizer's
    mask token where the answer goes; by default the processor's label-free questions; ``start`` / ``end``
    (seconds, video files only; an ``end`` past the end of the video reads to its end, with a warning).

    Returns:
        For one clip, a list of ``top_k`` dicts ``{"verb", "noun", "label", "score", "verb_id", "noun_id"}``, best
        first, ``score = p(verb) * p(noun)``; for a list of clips, one such list per clip.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from .processing_mambavl import MambaVLProcessor

        if not isinstance(self.processor, MambaVLProcessor):
            raise ValueError(
                f"The {TASK!r} pipeline needs a MambaVLProcessor (saved next to the model by "
                f"processor.save_pretrained), got {type(self.processor).__name__}."
            )
        if not hasattr(self.model, "verb_head"):
            raise ValueError(
                f"The {TASK!r} pipeline needs a MambaVL model with verb and noun heads "
                f"(MambaVLForActionRecognition), got {type(self.model).__name__}."
            )

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        question: str | tuple[str, str] | None = None,
        start: float | None = None,
        end: float | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if kwargs:
            raise TypeError(
                f"The {TASK!r} pipeline got unexpected argument(s) {sorted(kwargs)}; it takes top_k, question, "
                "start and end."
            )
        preprocess: dict[str, Any] = {}
        if question is not None:
            preprocess["question"] = question
        if start is not None:
            preprocess["start"] = start
        if end is not None:
            preprocess["end"] = end
        postprocess: dict[str, Any] = {}
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"`top_k` must be a positive integer, got {top_k!r}.")
            postprocess["top_k"] = top_k
        return preprocess, {}, postprocess

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        """Recognise the actions of a clip or of a list of clips; see the class docstring."""
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        return super().__call__(inputs, **kwargs)

    def preprocess(
        self,
        inputs: Any,
        question: str | tuple[str, str] | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> dict[str, torch.Tensor]:
        if isinstance(inputs, (str, os.PathLike)):
            frames = self._read_video(os.fspath(inputs), start, end)
        elif isinstance(inputs, (np.ndarray, torch.Tensor)):
            if inputs.ndim != 4:
                raise ValueError(
                    f"Decoded frames must be (T, H, W, 3) (or (T, 3, H, W)), got shape {tuple(inputs.shape)}; pass a "
                    "list of clips for a batch."
                )
            if start is not None or end is not None:
                raise ValueError("`start` / `end` select seconds of a video file; slice decoded frames yourself.")
            frames = inputs
        else:
            raise TypeError(
                f"The {TASK!r} pipeline takes a video path, a (T, H, W, 3) array/tensor of frames, or a list of "
                f"them; got {type(inputs).__name__}."
            )
        text = None
        if question is not None:
            text = [tuple(question)] if isinstance(question, (tuple, list)) else question
        return dict(self.processor(videos=[frames], text=text))

    def _read_video(self, path: str, start: float | None, end: float | None) -> np.ndarray:
        from .data import decode_frames, read_video_info, sample_frame_indices

        info = read_video_info(path)
        if start is not None and start < 0:
            raise ValueError(f"start={start!r}: the start of the clip (seconds) must be 0 or more.")
        first = 0 if start is None else round(start * info.fps)
        last = info.num_frames - 1 if end is None else min(info.num_frames - 1, round(end * info.fps))
        if end is not None and round(end * info.fps) > info.num_frames:
            logger.warning(
                "end=%r s is past the end of %s (%.1f s, %d frames at %s fps): reading to the end of the video.",
                end, path, info.num_frames / info.fps, info.num_frames, info.fps,
            )  # fmt: skip
        if not 0 <= first <= last:
            raise ValueError(
                f"start={start!r} / end={end!r} select no frame of {path} ({info.num_frames} frames at "
                f"{info.fps} fps)."
            )
        num_frames = self.processor.video_processor.num_frames or (last - first + 1)
        (indices,) = sample_frame_indices(first + 1, last + 1, num_frames, "center")
        return decode_frames(path, [i - 1 for i in indices])

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        """As ``Pipeline.get_iterator``, with a collate of its own for ``batch_size > 1``: ``transformers``' pads
        only ``input_ids`` and a feature extractor's inputs, and this pipeline has neither."""
        if batch_size == 1:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        from torch.utils.data import DataLoader
        from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            num_workers = 1 if num_workers > 1 else num_workers  # as transformers does for iterables
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=self._collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def _collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Clips prepared one by one (one row each) -> a batch; questions padded on the right (pad id, mask 0)."""
        batch = {}
        pad_id = self.processor.tokenizer.pad_token_id or 0
        for key in items[0]:
            rows = [item[key] for item in items]
            if key.endswith(("_input_ids", "_attention_mask")):
                length = max(row.shape[-1] for row in rows)
                value = pad_id if key.endswith("_input_ids") else 0
                rows = [F.pad(row, (0, length - row.shape[-1]), value=value) for row in rows]
            batch[key] = torch.cat(rows, dim=0)
        return batch

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(**model_inputs, return_dict=True)
        return {"verb_logits": out.verb_logits, "noun_logits": out.noun_logits}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], top_k: int = 5) -> list[dict[str, Any]]:
        from .metrics import rank_actions

        verb_logits, noun_logits = model_outputs["verb_logits"].float(), model_outputs["noun_logits"].float()
        top_k = min(top_k, verb_logits.shape[-1] * noun_logits.shape[-1])
        verb_ids, noun_ids, scores = rank_actions(verb_logits, noun_logits, k=top_k)
        verbs, nouns = self._names("verb"), self._names("noun")
        results = []
        for v, n, s in zip(verb_ids[0].tolist(), noun_ids[0].tolist(), scores[0].tolist(), strict=True):
            verb, noun = verbs.get(v, str(v)), nouns.get(n, str(n))
            results.append(
                {"verb": verb, "noun": noun, "label": f"{verb} {noun}", "score": s, "verb_id": v, "noun_id": n}
            )
        return results

    def _names(self, kind: str) -> dict[int, str]:
        """Class names: the config's ``verb_id2label`` / ``noun_id2label``, else the processor's class lists."""
        mapping = getattr(self.model.config, f"{kind}_id2label", None)
        if mapping:
            return {int(k): str(v) for k, v in mapping.items()}
        names: Sequence[str] | None = getattr(self.processor, f"{kind}_classes", None)
        return dict(enumerate(names)) if names else {}


def register_pipelines() -> None:
    """Register ``"egocentric-action-recognition"`` with ``transformers.pipeline`` (done by ``import mambavl``)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    from .modeling_mambavl import MambaVLForActionRecognition

    if TASK in PIPELINE_REGISTRY.supported_tasks:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=EgocentricActionRecognitionPipeline,
        pt_model=MambaVLForActionRecognition,
        type="multimodal",
    )


register_pipelines()
