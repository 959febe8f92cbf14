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

from .hub import MambaVLHubMixin, processor_auto_map
from .metrics import IGNORE_INDEX
from .questions import QuestionBuilder
from .video_processing_mambavl import _CONFIG_KEYS as VIDEO_CONFIG_KEYS
from .video_processing_mambavl import MambaVLVideoProcessor

__all__ = ["MambaVLProcessor"]

logger = logging.getLogger(__name__)


class MambaVLProcessor(MambaVLHubMixin, ProcessorMixin):
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
        max_question_length: questions are tokenized to at most this many tokens (and never more than the
            tokenizer's ``model_max_length``, the text encoder's position limit); longer ones are truncated, keeping
            their special and mask tokens, with one logged warning (see ``truncation`` in :meth:`__call__`).

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
        hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs and k != "trust_remote_code"}
        video_processor = MambaVLVideoProcessor.from_pretrained(pretrained_model_name_or_path, **hub)
        tokenizer = cls._load_tokenizer_from_pretrained("tokenizer", pretrained_model_name_or_path, **hub)
        return [video_processor, tokenizer]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> MambaVLProcessor:
        """Load a processor saved with ``save_pretrained`` (a folder or a Hub id).

        Keyword arguments override the saved settings: the video processor's (``num_frames``, ``do_normalize``,
        ``crop_size``, ...; or as a dict ``videos_kwargs``), this class's (``max_question_length``,
        ``verb_classes``, ...), plus the usual Hub arguments (``revision``, ``local_files_only``, ``token``, ...).
        An unknown keyword is a ``TypeError``, not silently dropped.

        Example::

            processor = MambaVLProcessor.from_pretrained("runs/demo/run/model", num_frames=8, do_normalize=False)
        """
        video_overrides = dict(kwargs.pop("videos_kwargs", None) or {})
        video_overrides.update({k: kwargs.pop(k) for k in list(kwargs) if k in VIDEO_CONFIG_KEYS})
        for key in _MODEL_LOADING_KWARGS:  # what `transformers.pipeline` passes to every component; not ours
            kwargs.pop(key, None)
        unknown = sorted(k for k in kwargs if k not in _HUB_KWARGS and k not in _INIT_KWARGS and not k.startswith("_"))
        if unknown:
            raise TypeError(
                f"MambaVLProcessor.from_pretrained got unexpected argument(s) {unknown}; it accepts the video "
                f"processor's settings {list(VIDEO_CONFIG_KEYS)}, the processor's {list(_INIT_KWARGS)} and the Hub "
                f"arguments {list(_HUB_KWARGS)}."
            )
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if video_overrides:
            current = {key: getattr(processor.video_processor, key) for key in VIDEO_CONFIG_KEYS}
            processor.video_processor = MambaVLVideoProcessor(**{**current, **video_overrides})
        return processor

    def to_dict(self) -> dict[str, Any]:
        """The ``processor_config.json`` content, with the ``auto_map`` that lets ``AutoProcessor`` load the folder
        without ``import mambavl`` (see :mod:`mambavl.hub`)."""
        output = super().to_dict()
        output["auto_map"] = {**(output.get("auto_map") or {}), **processor_auto_map()}
        return output

    # -- processing ------------------------------------------------------------------------------------------------
    def __call__(
        self,
        videos: Any = None,
        text: str | Sequence[str] | Sequence[tuple[str, str]] | None = None,
        verbs: Sequence[int | str | None] | None = None,
        nouns: Sequence[int | str | None] | None = None,
        questions: Sequence[tuple[str, str]] | None = None,
        *,
        video_features: Any = None,
        training: bool = False,
        keys: Sequence[str] | None = None,
        seed: int | Sequence[int] | None = None,
        padding: bool | str = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        videos_kwargs: Mapping[str, Any] | None = None,
        text_kwargs: Mapping[str, Any] | None = None,
        **video_kwargs: Any,
    ) -> BatchFeature:
        """Prepare a batch.

        Args:
            videos: clips for the video processor: one clip (``(T, H, W, C)`` uint8 array/tensor, a list of
                ``H x W x C`` frames, or channels-first ``(T, C, H, W)``, detected) or a list of clips.
            text: your own question(s) instead of the built ones ("question answering for action recognition"): one
                string for every clip, a list with one string per clip (each used as both the verb and the noun
                question), or a list of ``(verb_question, noun_question)`` pairs. Put the tokenizer's mask token
                where the answer goes (``"What is the person doing with the [MASK]?"``); with known verbs and nouns
                the action words are also masked by the question builder's rules, so no question leaks a label.
            verbs: per clip, a verb class id (int: also returned as ``verb_labels``), a verb name (str: used for
                training questions only), or None.
            nouns: per clip, a noun class id, a noun name, or None.
            questions: per clip, your own ``(verb_question, noun_question)`` (the same as pairs in ``text``).
            video_features: precomputed video tokens instead of ``videos``: a ``(B, F, D)`` array/tensor or a list of
                ``(F, D)`` ones (same ``F``).
            training: training mode: action-aware masked questions and random video augmentation. Otherwise
                label-free questions and deterministic center crops.
            keys: per clip identifiers (e.g. narration ids) for deterministic question choice.
            seed: seeds the random choices of this call (question templates, crops), for reproducible training; a
                list gives each clip its own seed, so that a clip's questions and crop do not depend on which
                clips share its batch (e.g. on how many processes split the batch).
            padding: ``True`` / ``"longest"`` (pad to the longest question of the batch) or ``"max_length"`` (pad to
                ``max_length``); always on the right. ``False`` / ``"do_not_pad"`` needs questions of one length.
            truncation: questions longer than ``max_length`` tokens are truncated (``True``, or ``None``: the
                default, with one log message) without ever cutting a mask token; ``False`` raises instead.
            max_length: token limit of a question (special tokens included); default ``max_question_length``, and
                never more than the tokenizer's ``model_max_length`` (the text encoder's position limit).
            return_tensors: ``"pt"`` (PyTorch tensors) or ``"np"`` (NumPy arrays).
            videos_kwargs: settings for the video processor for this call (``num_frames``, ``crop_size``, ...);
                the same as passing them as keywords.
            text_kwargs: ``padding``, ``truncation``, ``max_length`` as a dict (the ``ProcessorMixin`` convention).
            **video_kwargs: overrides for the video processor (``num_frames``, ``crop_size``, ...).

        Returns:
            A ``BatchFeature`` with ``pixel_values (B, T, C, H, W)`` or ``video_features (B, F, D)``,
            ``verb_input_ids``, ``verb_attention_mask`` ``(B, Lv)``, ``noun_input_ids``, ``noun_attention_mask``
            ``(B, Ln)``, and ``verb_labels``/``noun_labels`` ``(B,)`` when class ids were given.
        """
        if return_tensors is not None and getattr(return_tensors, "value", return_tensors) not in ("pt", "np"):
            raise ValueError(f"`return_tensors` must be 'pt' or 'np', got {return_tensors!r}.")
        return_tensors = getattr(return_tensors, "value", return_tensors) or "pt"
        if (videos is None) == (video_features is None):
            raise ValueError("Pass exactly one of `videos` or `video_features`.")
        if text_kwargs:
            unknown = sorted(set(text_kwargs) - {"padding", "truncation", "max_length", "return_tensors"})
            if unknown:
                raise TypeError(
                    f"`text_kwargs` has unsupported key(s) {unknown}: the questions take padding, truncation and "
                    "max_length."
                )
            padding = text_kwargs.get("padding", padding)
            truncation = text_kwargs.get("truncation", truncation)
            max_length = text_kwargs.get("max_length", max_length)
        video_kwargs = {**dict(videos_kwargs or {}), **video_kwargs}
        video_kwargs.pop("return_tensors", None)
        data: dict[str, Any] = {}
        if videos is not None:
            data["pixel_values"] = self.video_processor(
                videos, do_train_augmentation=training, seed=seed, return_tensors="pt", **video_kwargs
            )["pixel_values"]
            batch = data["pixel_values"].shape[0]
        else:
            if video_kwargs:
                raise TypeError(f"Video processor settings {sorted(video_kwargs)} do not apply to `video_features`.")
            data["video_features"] = _stack_features(video_features)
            batch = data["video_features"].shape[0]

        if text is not None:
            if questions is not None:
                raise ValueError("Pass your questions as `text` or as `questions`, not both.")
            questions = self._questions_from_text(text, batch)
        verb_names, verb_labels = self._labels(verbs, "verbs", self.verb_classes, batch)
        noun_names, noun_labels = self._labels(nouns, "nouns", self.noun_classes, batch)
        verb_questions, noun_questions = self.build_questions(
            verb_names, noun_names, questions, training=training, keys=keys, seed=seed
        )
        limit = self._length_limit(max_length)
        for name, texts in (("verb", verb_questions), ("noun", noun_questions)):
            ids, mask = self._tokenize(texts, name, limit, padding, truncation)
            data[f"{name}_input_ids"] = ids
            data[f"{name}_attention_mask"] = mask
        if verb_labels is not None:
            data["verb_labels"] = verb_labels
        if noun_labels is not None:
            data["noun_labels"] = noun_labels
        if return_tensors == "np":
            data = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
            return BatchFeature(data)
        return BatchFeature(data, tensor_type="pt")

    @staticmethod
    def _questions_from_text(text: Any, batch: int) -> list[tuple[str, str]]:
        """``text`` (one question, one per clip, or pairs) as one ``(verb_question, noun_question)`` pair per clip."""
        if isinstance(text, str):
            return [(text, text)] * batch
        if not isinstance(text, Sequence) or isinstance(text, bytes):
            raise TypeError(f"`text` must be a question (str) or a list of them, got {type(text).__name__}.")
        if len(text) != batch:
            raise ValueError(f"`text` has {len(text)} questions for a batch of {batch} clips.")
        pairs = []
        for i, item in enumerate(text):
            if isinstance(item, str):
                pairs.append((item, item))
            elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(q, str) for q in item):
                pairs.append((item[0], item[1]))
            else:
                raise ValueError(f"`text[{i}]` must be a question (str) or a (verb_question, noun_question) pair.")
        return pairs

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

    def _length_limit(self, max_length: int | None) -> int:
        """Token limit of a question: ``max_length`` (or ``max_question_length``), capped by the text encoder's
        position limit (the tokenizer's ``model_max_length``)."""
        limit = self.max_question_length if max_length is None else max_length
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 3:
            raise ValueError(f"`max_length` must be an integer >= 3, got {max_length!r}.")
        position_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(position_limit, int) and 3 <= position_limit < limit:
            limit = position_limit
        return limit

    def _tokenize(
        self, texts: list[str], name: str, limit: int, padding: bool | str = True, truncation: bool | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` ``(B, L)`` of the questions, right-padded, each at most ``limit`` tokens.

        A longer question loses its last ordinary tokens; special tokens ([CLS], [SEP], ...) and mask tokens are
        always kept, so truncation never removes the place of an answer.
        """
        if padding in (True, "longest"):
            pad_to = None
        elif padding == "max_length":
            pad_to = limit
        elif padding in (False, "do_not_pad"):
            pad_to = False
        else:
            raise ValueError(f"`padding` must be True, 'longest', 'max_length' or False, got {padding!r}.")
        if truncation not in (None, True, False, "longest_first", "only_first", "do_not_truncate"):
            raise ValueError(f"`truncation` must be None, True or False, got {truncation!r}.")
        encoded = self.tokenizer(texts, add_special_tokens=True, padding=False, truncation=False, verbose=False)
        rows = [list(ids) for ids in encoded["input_ids"]]
        too_long = [i for i, ids in enumerate(rows) if len(ids) > limit]
        if too_long:
            if truncation in (False, "do_not_truncate"):
                i = too_long[0]
                raise ValueError(
                    f"{len(too_long)} {name} question(s) are longer than {limit} tokens (e.g. {texts[i]!r}, "
                    f"{len(rows[i])} tokens); shorten them, raise `max_length` (at most the text encoder's limit), "
                    "or pass truncation=True."
                )
            keep = set(self.tokenizer.all_special_ids) - {self.tokenizer.unk_token_id}  # specials, the mask token
            keep.add(self.tokenizer.mask_token_id)
            for i in too_long:
                rows[i] = _truncate_keeping(rows[i], limit, keep, texts[i], name)
            if not getattr(self, "_truncation_logged", False):
                logger.warning(
                    "%d %s question(s) longer than %d tokens were truncated, keeping their mask tokens "
                    "(e.g. %d tokens: %r); said once.",
                    len(too_long), name, limit, len(encoded["input_ids"][too_long[0]]), _shorten(texts[too_long[0]]),
                )  # fmt: skip
                self._truncation_logged = True  # once per processor: a dataset's long questions are alike
        lengths = [len(ids) for ids in rows]
        width = max(lengths)
        if pad_to is False:
            if len(set(lengths)) > 1:
                raise ValueError(
                    f"padding=False needs {name} questions of one length to make a tensor, got lengths {lengths}."
                )
        elif pad_to is not None:
            width = max(width, pad_to)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask

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


_HUB_KWARGS = (
    "cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies",
    "trust_remote_code", "code_revision",
)  # fmt: skip
_MODEL_LOADING_KWARGS = ("dtype", "torch_dtype", "device_map", "attn_implementation", "low_cpu_mem_usage")
_INIT_KWARGS = ("question_config", "verb_classes", "noun_classes", "max_question_length")


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _truncate_keeping(ids: list[int], limit: int, keep: set[int], text: str, name: str) -> list[int]:
    """The first ``limit`` tokens of ``ids``, except that every token in ``keep`` (special and mask tokens) stays:
    the ordinary tokens dropped are the last ones."""
    required = sum(1 for i in ids if i in keep)
    if required > limit:
        raise ValueError(
            f"The {name} question {text!r} has {required} special and mask tokens, more than the limit of {limit} "
            "tokens: it cannot be truncated without cutting a mask token; shorten it."
        )
    budget = limit - required
    out = []
    for token in ids:
        if token in keep:
            out.append(token)
        elif budget > 0:
            out.append(token)
            budget -= 1
    return out


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
