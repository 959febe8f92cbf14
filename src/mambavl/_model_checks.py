"""Input and checkpoint checks of the MambaVL models, with errors that name the argument or file and what was expected.

Kept apart from :mod:`mambavl.modeling_mambavl` so that the model code only calls them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

__all__ = [
    "check_pretrained_folder",
    "check_question_ids",
    "check_video_dtype",
    "question_length_limit",
    "question_vocab_size",
]


# ------------------------------------------------------------------------------------------------------------ inputs
def check_video_dtype(name: str, tensor: torch.Tensor, model_dtype: torch.dtype) -> None:
    """``pixel_values`` / ``video_features`` must be floating point, and float64 only for a float64 model.

    Raises:
        TypeError: naming ``name``, its dtype and the dtype expected (``model_dtype``).
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__}.")
    if not tensor.is_floating_point():
        hint = (
            " Frames as read from a video (uint8) must first go through MambaVLVideoProcessor, which resizes, "
            "scales and normalises them."
            if name == "pixel_values"
            else ""
        )
        raise TypeError(f"`{name}` must be a floating-point tensor of dtype {model_dtype}, got {tensor.dtype}.{hint}")
    if tensor.dtype == torch.float64 and model_dtype != torch.float64:
        raise TypeError(
            f"`{name}` has dtype torch.float64, but the model runs in {model_dtype}: pass "
            f"`{name}.to({model_dtype})` (numpy arrays are float64 by default)."
        )


def question_vocab_size(text_encoder: nn.Module) -> int | None:
    """Rows of the question encoder's word-embedding table (the ids it accepts), or None if not found."""
    encoder = getattr(text_encoder, "encoder", text_encoder)
    if isinstance(encoder, nn.Embedding):
        return encoder.num_embeddings
    get = getattr(encoder, "get_input_embeddings", None)
    table = get() if callable(get) else getattr(encoder, "word_embeddings", None)
    return table.num_embeddings if isinstance(table, nn.Embedding) else None


def question_length_limit(text_encoder: nn.Module) -> tuple[int | None, int | None]:
    """``(limit, padding_idx)``: the most tokens a question may have for the encoder's position embeddings.

    ``limit`` is None when the encoder has no absolute position table (nothing to exceed). RoBERTa-style
    embeddings number positions from ``padding_idx + 1`` and skip padding tokens, so their limit is
    ``max_position_embeddings - padding_idx - 1`` *non-padding* tokens and ``padding_idx`` is returned to count
    them; BERT-style embeddings take ``max_position_embeddings`` positions, padding included (``padding_idx`` None).
    """
    encoder = getattr(text_encoder, "encoder", text_encoder)
    embeddings = (
        encoder if getattr(text_encoder, "embeddings_take_ids", False) else getattr(encoder, "embeddings", None)
    )
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        return None, None
    padding_idx = getattr(embeddings, "padding_idx", None)
    if hasattr(embeddings, "create_position_ids_from_input_ids") and isinstance(padding_idx, int):
        return table.num_embeddings - padding_idx - 1, padding_idx
    return table.num_embeddings, None


def _values_readable(tensor: torch.Tensor) -> bool:
    """Whether a check may look at values: not on ``meta`` tensors (FLOP counting), nor while tracing or compiling
    (export), where data-dependent branches are not allowed."""
    if tensor.device.type == "meta" or torch.jit.is_tracing():
        return False
    compiler = getattr(torch, "compiler", None)
    return not (compiler is not None and compiler.is_compiling())


def check_question_ids(name: str, input_ids: torch.Tensor, text_encoder: nn.Module) -> None:
    """Token ids inside the question encoder's vocabulary, and no more tokens than its position limit.

    Raises:
        TypeError: ``{name}_input_ids`` is not an integer tensor.
        ValueError: an id outside ``0..vocab_size-1`` (a tokenizer of another model?), or a question longer
            than the limit of :func:`question_length_limit` (the message names the limit).

    Checks of values are skipped where values cannot be read (``meta`` tensors, tracing, compiling).
    """
    arg = f"`{name}_input_ids`"
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"{arg} must hold integer token ids (torch.long), got dtype {input_ids.dtype}.")
    readable = _values_readable(input_ids)
    vocab = question_vocab_size(text_encoder)
    if vocab is not None and input_ids.numel() and readable:
        bad = (input_ids < 0) | (input_ids >= vocab)
        if bad.any():  # one host sync
            value = int(input_ids[bad][0])
            raise ValueError(
                f"{arg} holds the token id {value}, outside the question encoder's vocabulary of {vocab} ids "
                f"(0..{vocab - 1}): tokenize the questions with the tokenizer of the model's text encoder (the "
                "processor saved with the model)."
            )
    limit, padding_idx = question_length_limit(text_encoder)
    length = input_ids.shape[-1]
    if limit is not None and length > limit and (padding_idx is None or readable):
        tokens = length if padding_idx is None else int((input_ids != padding_idx).sum(dim=-1).max())
        if tokens > limit:
            raise ValueError(
                f"{arg} has questions of {tokens} tokens, more than the question encoder takes: at most {limit} "
                "tokens (its position embeddings). Shorten the questions, or let the processor truncate them."
            )


# ------------------------------------------------------------------------------------------------------- checkpoints
def check_pretrained_folder(path: Any, model_type: str, kwargs: dict[str, Any]) -> None:
    """Before ``from_pretrained`` loads a local folder: it exists, has a ``config.json`` of ``model_type``, and its
    ``.safetensors`` files are readable. Hub ids (no such local folder) are left to transformers.

    Raises:
        FileNotFoundError: a local path that does not exist, or a folder without ``config.json`` (unless a
            ``config`` is passed).
        ValueError: ``config.json`` is not JSON, or describes another model type.
        OSError: a ``.safetensors`` file is corrupt or truncated (the message names the file).
    """
    if not isinstance(path, (str, os.PathLike)):
        return
    folder = os.fspath(path)
    if kwargs.get("subfolder"):
        folder = os.path.join(folder, kwargs["subfolder"])
    if not os.path.isdir(folder):
        if os.path.isabs(folder) or folder.startswith((".", "~")) or os.path.exists(folder):
            what = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
            raise FileNotFoundError(
                f"{folder!r} {what}: from_pretrained needs a folder written by save_pretrained (or a Hub id)."
            )
        return  # a Hub id
    config_file = os.path.join(folder, "config.json")
    if kwargs.get("config") is None:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(
                f"{folder!r} has no config.json, so it is not a saved model: save one with save_pretrained(), or "
                f"pass config=MambaVLConfig(...) to load bare weights (it holds {sorted(os.listdir(folder))[:10]})."
            )
        try:
            with open(config_file, encoding="utf-8") as handle:
                found = json.load(handle).get("model_type")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{config_file!r} is not a readable JSON config: {exc}") from exc
        if found != model_type:
            raise ValueError(
                f"{config_file!r} describes a model of type {found!r}, not a MambaVL model (model_type "
                f"{model_type!r}). To build MambaVL around a pretrained text or video model, use "
                "from_pretrained_backbones(text=..., video=...)."
            )
    from safetensors import safe_open

    for name in sorted(os.listdir(folder)):
        if not name.endswith(".safetensors"):
            continue
        file = os.path.join(folder, name)
        try:
            with safe_open(file, framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) for corrupt files
            raise OSError(
                f"{file!r} is not a readable safetensors file ({exc}): it is corrupt or truncated. Save the model "
                "again, or copy the file anew."
            ) from exc
