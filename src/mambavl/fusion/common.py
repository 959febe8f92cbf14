"""What every fusion module returns, and the masked pooling they share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

__all__ = ["FusionOutput", "fusion_output_from_tokens", "masked_mean"]


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the valid tokens of each sequence; padding never counts.

    Args:
        hidden_states: ``(B, L, D)``.
        mask: ``(B, L)`` with 1 for valid tokens and 0 for padding, or ``None`` (all valid).

    Returns:
        ``(B, D)``.
    """
    if mask is None:
        return hidden_states.mean(dim=1)
    mask = mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


@dataclass
class FusionOutput(ModelOutput):
    """Output of a fusion module (``fusion_type`` "mamba", "transformer" or "mlp").

    The heads read ``verb_features`` and ``noun_features``; the token states are ``None`` for fusions that work
    on pooled features only (MLP).

    Args:
        verb_features: ``(B, D)`` input of the verb head, e.g. ``pool(y^V) + pool(y^T_verb)``.
        noun_features: ``(B, D)`` input of the noun head, e.g. ``pool(y^V) + pool(y^T_noun)``.
        video_hidden_states: ``(B, F, D)`` fused video tokens.
        verb_question_hidden_states: ``(B, Lv, D)`` fused verb-question tokens.
        noun_question_hidden_states: ``(B, Ln, D)`` fused noun-question tokens.
        pooled_video: ``(B, D)`` ``pool(y^V)``.
        pooled_verb_question: ``(B, D)`` ``pool(y^T_verb)``.
        pooled_noun_question: ``(B, D)`` ``pool(y^T_noun)``.
        hidden_states: video tokens ``(B, F, D)`` entering each fusion layer and after the last one, when asked for.
    """

    verb_features: torch.Tensor | None = None
    noun_features: torch.Tensor | None = None
    video_hidden_states: torch.Tensor | None = None
    verb_question_hidden_states: torch.Tensor | None = None
    noun_question_hidden_states: torch.Tensor | None = None
    pooled_video: torch.Tensor | None = None
    pooled_verb_question: torch.Tensor | None = None
    pooled_noun_question: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def fusion_output_from_tokens(
    video: torch.Tensor,
    verb_question: torch.Tensor,
    noun_question: torch.Tensor,
    verb_attention_mask: torch.Tensor | None = None,
    noun_attention_mask: torch.Tensor | None = None,
    hidden_states: list[torch.Tensor] | None = None,
    noun_video: torch.Tensor | None = None,
    pool_window: int | None = None,
    pooled_video: torch.Tensor | None = None,
) -> FusionOutput:
    """Pool fused token states into the heads' inputs: ``x_verb = pool(y^V) + pool(y^T_verb)``, likewise nouns.

    Args:
        video: ``(B, F, D)`` fused video tokens.
        verb_question: ``(B, Lv, D)`` fused verb-question tokens (masked mean with ``verb_attention_mask``).
        noun_question: ``(B, Ln, D)`` fused noun-question tokens (masked mean with ``noun_attention_mask``).
        verb_attention_mask, noun_attention_mask: ``(B, Lv)``, ``(B, Ln)`` or ``None`` (all valid).
        hidden_states: video tokens per layer, returned as a tuple, or ``None``.
        noun_video: ``(B, F, D)`` video tokens to pool for the noun features when they differ from ``video``
            (fusions that run the two questions as separate sequences); ``None`` uses ``video``.
        pool_window: pool the video over its last ``pool_window`` tokens only (``None``: all of them).
        pooled_video: ``(B, D)`` ``pool(y^V)`` computed by the caller (a stream's running pool), instead of
            pooling ``video``.
    """

    def pool(tokens: torch.Tensor) -> torch.Tensor:
        return (tokens if pool_window is None else tokens[:, -pool_window:]).mean(dim=1)

    pooled_video = pool(video) if pooled_video is None else pooled_video
    pooled_noun_video = pooled_video if noun_video is None else pool(noun_video)
    pooled_verb = masked_mean(verb_question, verb_attention_mask)
    pooled_noun = masked_mean(noun_question, noun_attention_mask)
    return FusionOutput(
        verb_features=pooled_video + pooled_verb,
        noun_features=pooled_noun_video + pooled_noun,
        video_hidden_states=video,
        verb_question_hidden_states=verb_question,
        noun_question_hidden_states=noun_question,
        pooled_video=pooled_video,
        pooled_verb_question=pooled_verb,
        pooled_noun_question=pooled_noun,
        hidden_states=tuple(hidden_states) if hidden_states is not None else None,
    )
