"""Tiny configurations and inputs shared by the tests."""

from __future__ import annotations

import torch
from transformers import BertConfig, VideoMAEConfig

from mambavl import MambaVLConfig


def tiny_text_config(**overrides) -> BertConfig:
    """A 1-layer BERT of width 16 over a 100-token vocabulary."""
    kwargs = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    return BertConfig(**{**kwargs, **overrides})


def tiny_video_config(**overrides) -> VideoMAEConfig:
    """A 1-layer VideoMAE of width 24 over 4 frames of 16x16 pixels: 2 x 2 x 2 = 8 tokens."""
    kwargs = dict(
        hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48, image_size=16,
        patch_size=8, num_frames=4, tubelet_size=2,
    )  # fmt: skip
    return VideoMAEConfig(**{**kwargs, **overrides})


def tiny_config(**overrides) -> MambaVLConfig:
    """A MambaVL config small enough to run forward and backward in milliseconds."""
    kwargs = dict(
        hidden_size=32, state_size=4, text_config=tiny_text_config(), video_feature_size=12,
        num_verb_classes=5, num_noun_classes=7,
    )  # fmt: skip
    return MambaVLConfig(**{**kwargs, **overrides})


def tiny_inputs(batch: int = 2, frames: int = 6, feature_size: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random model inputs with right-padded questions of different lengths."""
    g = torch.Generator().manual_seed(seed)
    verb_mask = torch.ones(batch, 7, dtype=torch.long)
    verb_mask[-1, 5:] = 0
    noun_mask = torch.ones(batch, 5, dtype=torch.long)
    noun_mask[0, 4:] = 0
    return {
        "video_features": torch.randn(batch, frames, feature_size, generator=g),
        "verb_input_ids": torch.randint(1, 100, (batch, 7), generator=g) * verb_mask,
        "verb_attention_mask": verb_mask,
        "noun_input_ids": torch.randint(1, 100, (batch, 5), generator=g) * noun_mask,
        "noun_attention_mask": noun_mask,
    }


def tiny_labels(batch: int = 2) -> dict[str, torch.Tensor]:
    """Verb and noun labels for :func:`tiny_config`'s 5 verbs and 7 nouns."""
    return {"verb_labels": torch.arange(batch) % 5, "noun_labels": torch.arange(batch) % 7}


def parameter_grads(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The gradient of every parameter that gets one, after one labelled forward and backward pass."""
    model.zero_grad()
    model(**inputs, **tiny_labels(next(iter(inputs.values())).shape[0])).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def enable_activation_checkpointing(model) -> None:
    """transformers >= 5.2x names it activation checkpointing; older 5.x releases gradient checkpointing."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
