"""MambaVLProcessor: frames and masked questions in, model inputs out."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .metrics import IGNORE_INDEX
from .questions import QuestionBuilder
from .video_processing_mambavl import MambaVLVideoProcessor

__all__ = ["MambaVLProcessor"]

logger = logging.getLogger(__name__)


class MambaVLProcessor(ProcessorMixin):
    r"""Prepares clips and questions for :class:`~mambavl.MambaVLForActionRecognition`.

    It combines a :class:`~mambavl.MambaVLVideoProcessor` (frames -> ``pixel_values``), any Hugging Face tokenizer
    that has a mask token, and a :class:`~mambavl.questions.QuestionBuilder` that writes the verb and noun questions
    with the clip's action words replaced by the mask token.

    Questions depend on the mode:

    - ``training=True``: action-aware templates (or question-bank paraphrases) filled with the clip's verb and noun,
      then masked (``"strict"`` policy by default: neither question contains any form of the verb or noun);
    - ``training=False`` (evaluation, inference): label-free questions, whatever labels are passed, because a
      question derived from the ground truth leaks it (see :mod:`mambavl.questions`).

    Args:
        video_processor: a :class:`~mambavl.MambaVLVideoProcessor`.
        tokenizer: a tokenizer with a mask token (RoBERTa ``<mask>``, BERT/MiniLM ``[MASK]``, ...). It must pad on
            the right (the fusion scan is causal); the processor sets ``padding_side="right"``.
        question_config: a :class:`~mambavl.questions.QuestionBuilder` or its
            :meth:`~mambavl.questions.QuestionBuilder.to_dict` (templates, question
            bank, masking policy, class instances). Its mask token is always the tokenizer's.
        verb_classes: verb class names, index = class id (names are needed to build training questions from
            class ids).
        noun_classes: noun class names, index = class id.
        max_question_length: questions are tokenized to at most this many tokens; longer ones are truncated with a
            logged warning.

    Example:

    >>> import numpy as np
    >>> from transformers import BertTokenizer
    >>> from mambavl import MambaVLProcessor, MambaVLVideoProcessor
    >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "person", "doing", "?"]
    >>> tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    >>> processor = MambaVLProcessor(MambaVLVideoProcessor(num_frames=4, size=32, crop_size=32), tokenizer,
    ...                              verb_classes=["take", "put"], noun_classes=["cup", "plate"])
    >>> clip = np.zeros((10, 48, 64, 3), dtype=np.uint8)
    >>> batch = processor(videos=[clip], verbs=[1], nouns=[0])
    >>> tuple(batch["pixel_values"].shape), batch["verb_labels"].tolist(), batch["noun_labels"].tolist()
    ((1, 4, 3, 32, 32), [1], [0])
    """

    def __init__(
        self,
        video_processor: MambaVLVideoProcessor,
        tokenizer: Any,
        question_config: QuestionBuilder | Mapping[str, Any] | None = None,
        verb_classes: Sequence[str] | None = None,
        noun_classes: Sequence[str] | None = None,
        max_question_length: int = 64,
        **kwargs: Any,
    ):
        mask_token = getattr(tokenizer, "mask_token", None)
        if not mask_token:
            raise ValueError(
                f"The tokenizer ({type(tokenizer).__name__}) has no mask token: MambaVL masks the action words of "
                "its questions with it. Use a tokenizer with a mask token (RoBERTa, BERT, MiniLM, ...) or set "
                "`tokenizer.mask_token`."
            )
        if isinstance(question_config, QuestionBuilder):
            question_config = question_config.to_dict()
        self.question_config = dict(question_config or {})
        self.question_builder = QuestionBuilder.from_dict(self.question_config, mask_token=mask_token)
        self.question_config["mask_token"] = mask_token
        self.verb_classes = _class_names(verb_classes, "verb_classes")
        self.noun_classes = _class_names(noun_classes, "noun_classes")
        if (
            isinstance(max_question_length, bool)
            or not isinstance(max_question_length, int)
            or max_question_length < 3
        ):
            raise ValueError(f"`max_question_length` must be an integer >= 3, got {max_question_length!r}.")
        self.max_question_length = max_question_length
        tokenizer.padding_side = "right"
        super().__init__(video_processor, tokenizer, **kwargs)

    @classmethod
    def from_class_lists(
        cls,
        tokenizer: Any,
        verb_classes: Sequence[Any] | str | os.PathLike,
        noun_classes: Sequence[Any] | str | os.PathLike,
        *,
        num_frames: int = 16,
        image_size: int = 224,
        **kwargs: Any,
    ) -> MambaVLProcessor:
        """A processor for EPIC-KITCHENS-format class lists, with the paper's question set-up.

        Class names come from the lists' keys, and each class's instances (``"pick-up"``, ``"grab"`` for
        ``take``) go to the question builder, so masking also hides the narration words of a class.

        Args:
            tokenizer: a tokenizer with a mask token, or the folder / Hub id of one (``AutoTokenizer``).
            verb_classes: :class:`~mambavl.data.ActionClass` list or the path of ``EPIC_100_verb_classes.csv``.
            noun_classes: the same for nouns.
            num_frames: frames per clip (``T`` of ``pixel_values (B, T, 3, image_size, image_size)``).
            image_size: side of the square crop, in pixels (the shorter side is resized to it first).
            **kwargs: other :class:`MambaVLProcessor` arguments (``max_question_length``, ...).
        """
        from transformers import AutoTokenizer

        from .data.epic_kitchens import _as_class_list, class_names, instances_by_key

        verbs, nouns = _as_class_list(verb_classes), _as_class_list(noun_classes)
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        return cls(
            MambaVLVideoProcessor(num_frames=num_frames, size=image_size, crop_size=image_size),
            tokenizer,
            question_config={"verb_instances": instances_by_key(verbs), "noun_instances": instances_by_key(nouns)},
            verb_classes=class_names(verbs),
            noun_classes=class_names(nouns),
            **kwargs,
        )

    # -- transformers plumbing: the default versions resolve the video processor through torchvision-only classes.
    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        if argument_name == "video_processor":
            if not isinstance(argument, MambaVLVideoProcessor):
                raise TypeError(f"`video_processor` must be a MambaVLVideoProcessor, got {type(argument).__name__}.")
            return MambaVLVideoProcessor
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def _get_arguments_from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, processor_dict: dict | None = None, **kwargs: Any
    ) -> list[Any]:
        kwargs.pop("trust_remote_code", None)
        hub = ("subfolder", "cache_dir", "force_download", "local_files_only", "token", "revision")
        video_processor = MambaVLVideoProcessor.from_pretrained(
            pretrained_model_name_or_path, **{k: kwargs[k] for k in hub if k in kwargs}
        )
        tokenizer = cls._load_tokenizer_from_pretrained("tokenizer", pretrained_model_name_or_path, **kwargs)
        return [video_processor, tokenizer]

    # -- processing ------------------------------------------------------------------------------------------------
    def __call__(
        self,
        videos: Any = None,
        verbs: Sequence[int | str | None] | None = None,
        nouns: Sequence[int | str | None] | None = None,
        questions: Sequence[tuple[str, str]] | None = None,
        *,
        video_features: Any = None,
        training: bool = False,
        keys: Sequence[str] | None = None,
        seed: int | Sequence[int] | None = None,
        return_tensors: str = "pt",
        **video_kwargs: Any,
    ) -> BatchFeature:
        """Prepare a batch.

        Args:
            videos: clips for the video processor: one clip (``(T, H, W, C)`` uint8 array/tensor, or a list of
                ``H x W x C`` frames) or a list of clips.
            verbs: per clip, a verb class id (int: also returned as ``verb_labels``), a verb name (str: used for
                training questions only), or None.
            nouns: per clip, a noun class id, a noun name, or None.
            questions: per clip, your own ``(verb_question, noun_question)``; they are masked with the clip's verb
                and noun when known. Default: built by the question builder.
            video_features: precomputed video tokens instead of ``videos``: a ``(B, F, D)`` array/tensor or a list of
                ``(F, D)`` ones (same ``F``).
            training: training mode: action-aware masked questions and random video augmentation. Otherwise
                label-free questions and deterministic center crops.
            keys: per clip identifiers (e.g. narration ids) for deterministic question choice.
            seed: seeds the random choices of this call (question templates, crops), for reproducible training; a
                list gives each clip its own seed, so that a clip's questions and crop do not depend on which
                clips share its batch (e.g. on how many processes split the batch).
            return_tensors: only ``"pt"`` is supported.
            **video_kwargs: overrides for the video processor (``num_frames``, ``crop_size``, ...).

        Returns:
            A ``BatchFeature`` with ``pixel_values (B, T, C, H, W)`` or ``video_features (B, F, D)``,
            ``verb_input_ids``, ``verb_attention_mask`` ``(B, Lv)``, ``noun_input_ids``, ``noun_attention_mask``
            ``(B, Ln)``, and ``verb_labels``/``noun_labels`` ``(B,)`` when class ids were given.
        """
        if return_tensors != "pt":
            raise ValueError(
                f"MambaVLProcessor returns PyTorch tensors only (return_tensors='pt'), got {return_tensors!r}."
            )
        if (videos is None) == (video_features is None):
            raise ValueError("Pass exactly one of `videos` or `video_features`.")
        data: dict[str, Any] = {}
        if videos is not None:
            data["pixel_values"] = self.video_processor(
                videos, do_train_augmentation=training, seed=seed, return_tensors="pt", **video_kwargs
            )["pixel_values"]
            batch = data["pixel_values"].shape[0]
        else:
            data["video_features"] = _stack_features(video_features)
            batch = data["video_features"].shape[0]

        verb_names, verb_labels = self._labels(verbs, "verbs", self.verb_classes, batch)
        noun_names, noun_labels = self._labels(nouns, "nouns", self.noun_classes, batch)
        verb_questions, noun_questions = self.build_questions(
            verb_names, noun_names, questions, training=training, keys=keys, seed=seed
        )
        for name, texts in (("verb", verb_questions), ("noun", noun_questions)):
            encoded = self._tokenize(texts, name)
            data[f"{name}_input_ids"] = encoded["input_ids"]
            data[f"{name}_attention_mask"] = encoded["attention_mask"]
        if verb_labels is not None:
            data["verb_labels"] = verb_labels
        if noun_labels is not None:
            data["noun_labels"] = noun_labels
        return BatchFeature(data, tensor_type="pt")

    def build_questions(
        self,
        verbs: Sequence[str | None],
        nouns: Sequence[str | None],
        questions: Sequence[tuple[str, str]] | None = None,
        *,
        training: bool = False,
        keys: Sequence[str] | None = None,
        seed: int | Sequence[int] | None = None,
    ) -> tuple[list[str], list[str]]:
        """The masked (verb questions, noun questions) of a batch, as strings; see :meth:`__call__`."""
        batch = len(verbs)
        if keys is not None and len(keys) != batch:
            raise ValueError(f"`keys` has {len(keys)} entries for a batch of {batch} clips.")
        if isinstance(seed, Sequence):
            if len(seed) != batch:
                raise ValueError(f"`seed` has {len(seed)} per-clip seeds for a batch of {batch} clips.")
            rngs = [random.Random(s) for s in seed]
        else:
            rngs = [random.Random(seed) if seed is not None else None] * batch
        verb_questions, noun_questions = [], []
        if questions is not None:
            if len(questions) != batch:
                raise ValueError(f"`questions` has {len(questions)} entries for a batch of {batch} clips.")
            for i, pair in enumerate(questions):
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(q, str) for q in pair)):
                    raise ValueError(f"`questions[{i}]` must be a (verb_question, noun_question) pair of strings.")
                vq, nq = self.question_builder.mask_questions(pair[0], pair[1], verbs[i], nouns[i])
                verb_questions.append(vq)
                noun_questions.append(nq)
            return verb_questions, noun_questions
        for i in range(batch):
            verb, noun = (verbs[i], nouns[i]) if training else (None, None)
            key = keys[i] if keys is not None else None
            vq, nq = self.question_builder.build(verb, noun, train=training, key=key, rng=rngs[i])
            verb_questions.append(vq)
            noun_questions.append(nq)
        return verb_questions, noun_questions

    def _labels(
        self, values: Sequence[int | str | None] | None, name: str, classes: list[str] | None, batch: int
    ) -> tuple[list[str | None], torch.Tensor | None]:
        """Names for the question builder and label tensor (when class ids are given) of ``verbs``/``nouns``."""
        if values is None:
            return [None] * batch, None
        if isinstance(values, (str, int)) or not isinstance(values, Sequence | torch.Tensor | np.ndarray):
            raise TypeError(f"`{name}` must be a list with one entry per clip, got {type(values).__name__}.")
        values = values.tolist() if isinstance(values, (torch.Tensor, np.ndarray)) else list(values)
        if len(values) != batch:
            raise ValueError(f"`{name}` has {len(values)} entries for a batch of {batch} clips.")
        kinds = {type(v) for v in values if v is not None}
        if not kinds <= {int, str} or kinds == {int, str}:
            raise TypeError(
                f"`{name}` must hold class ids (int) or names (str), not a mix: got {sorted(map(str, kinds))}."
            )
        if kinds != {int}:
            return values, None
        if classes is not None:
            bad = [v for v in values if v is not None and not 0 <= v < len(classes)]
            if bad:
                raise ValueError(f"`{name}` has class ids outside [0, {len(classes)}): {bad[:10]}.")
        elif any(v is not None and v < 0 for v in values):
            raise ValueError(f"`{name}` has negative class ids: {[v for v in values if v is not None and v < 0]}.")
        names = [classes[v] if (classes is not None and v is not None) else None for v in values]
        labels = torch.tensor([IGNORE_INDEX if v is None else v for v in values], dtype=torch.long)
        return names, labels

    def _tokenize(self, texts: list[str], name: str) -> Any:
        limit = self.max_question_length
        encoded = self.tokenizer(texts, padding=True, return_tensors="pt", return_attention_mask=True)
        lengths = encoded["attention_mask"].sum(dim=1).tolist()  # right padding: valid tokens, specials included
        too_long = [i for i, n in enumerate(lengths) if n > limit]
        if not too_long:  # the usual case: one tokenization
            return encoded
        logger.warning(
            "%d %s question(s) longer than max_question_length=%d tokens were truncated (e.g. %r, %d tokens).",
            len(too_long), name, limit, texts[too_long[0]], lengths[too_long[0]],
        )  # fmt: skip
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=limit, return_tensors="pt", return_attention_mask=True
        )

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True, **kwargs: Any) -> list[str]:
        """Decode question ids back to text, keeping the mask tokens visible (padding and other special tokens are
        dropped when ``skip_special_tokens``)."""
        if isinstance(sequences, torch.Tensor):
            sequences = sequences.tolist()
        if not skip_special_tokens:
            return self.tokenizer.batch_decode(sequences, skip_special_tokens=False, **kwargs)
        drop = set(self.tokenizer.all_special_ids) - {self.tokenizer.mask_token_id}
        return self.tokenizer.batch_decode([[i for i in ids if i not in drop] for ids in sequences], **kwargs)

    def decode(self, token_ids: Any, skip_special_tokens: bool = True, **kwargs: Any) -> str:
        """Decode one question (see :meth:`batch_decode`)."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        return self.batch_decode([token_ids], skip_special_tokens=skip_special_tokens, **kwargs)[0]

    @property
    def model_input_names(self) -> list[str]:
        return [
            "pixel_values", "video_features", "verb_input_ids", "verb_attention_mask", "noun_input_ids",
            "noun_attention_mask",
        ]  # fmt: skip


def _class_names(names: Sequence[str] | None, argname: str) -> list[str] | None:
    if names is None:
        return None
    names = list(names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"`{argname}` must be a non-empty list of class names (strings).")
    return names


def _stack_features(features: Any) -> torch.Tensor:
    if isinstance(features, (torch.Tensor, np.ndarray)) and np.ndim(features) == 3:
        return torch.as_tensor(features, dtype=torch.float32)
    if isinstance(features, Sequence) and features:
        tensors = [torch.as_tensor(f, dtype=torch.float32) for f in features]
        shapes = {tuple(t.shape) for t in tensors}
        if any(t.dim() != 2 for t in tensors) or len(shapes) != 1:
            raise ValueError(
                f"`video_features` must be (B, F, D) or a list of (F, D) with one shape, got shapes {sorted(shapes)}."
            )
        return torch.stack(tensors)
    raise ValueError("`video_features` must be a (B, F, D) array/tensor or a non-empty list of (F, D) ones.")
