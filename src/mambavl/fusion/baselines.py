"""The paper's fusion baselines: a transformer over ``[video; question]`` tokens and an MLP over pooled features.

Both take the inputs and give the outputs of :class:`~mambavl.fusion.MambaFusion` (see
:class:`~mambavl.fusion.FusionOutput`), so the encoders, the verb and noun heads and the losses are the same for every
``config.fusion_type``:

* ``"transformer"`` (:class:`TransformerFusion`): ``fusion_transformer_depth`` pre-norm transformer layers with
  ``fusion_transformer_heads`` heads over ``[video tokens; question tokens]``, run once with the verb question and
  once with the noun question (both sequences batched in one call), then ``x_verb = pool(y^V) + pool(y^T_verb)``
  (video tokens of the verb sequence) and ``x_noun`` likewise.
* ``"mlp"`` (:class:`MLPFusion`): ``x_verb = MLP([pool(x^V); pool(x^T_verb)])`` and
  ``x_noun = MLP([pool(x^V); pool(x^T_noun)])`` with one shared MLP ``2D -> fusion_mlp_hidden_size -> D``.

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention` (SDPA), which picks its kernel at run time.
On CPU (PyTorch >= 2.3) it runs the fused flash-attention CPU kernel
(``aten::_scaled_dot_product_flash_attention_for_cpu``) for float32/bfloat16, with or without the key-padding mask;
on CUDA it runs FlashAttention-2 when no mask is needed (all questions of one length, no padding) and the
memory-efficient (or cuDNN) kernel when a key-padding mask is passed. None of them materialises the ``L x L``
attention matrix. Pass masks only when questions are padded to get the flash kernel on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from ..configuration_mambavl import MambaVLConfig
from .common import FusionOutput, fusion_output_from_tokens, masked_mean

__all__ = ["MLPFusion", "TransformerFusion", "TransformerFusionAttention", "TransformerFusionLayer"]

#: Ratio of the hidden width of the transformer layers' MLP to ``hidden_size`` (as in ViT / BERT).
TRANSFORMER_MLP_RATIO = 4


def _check_fusion_inputs(
    video: torch.Tensor,
    verb_question: torch.Tensor,
    noun_question: torch.Tensor,
    verb_attention_mask: torch.Tensor | None,
    noun_attention_mask: torch.Tensor | None,
    hidden_size: int,
) -> None:
    """Check the shapes of a fusion module's inputs (shapes only: nothing here reads tensor values)."""
    if video.dim() != 3 or video.shape[-1] != hidden_size:
        raise ValueError(f"`video` must be (B, F, {hidden_size}), got shape {tuple(video.shape)}.")
    batch = video.shape[0]
    for name, question, mask in (
        ("verb", verb_question, verb_attention_mask),
        ("noun", noun_question, noun_attention_mask),
    ):
        if question.dim() != 3 or question.shape[0] != batch or question.shape[-1] != hidden_size:
            raise ValueError(
                f"`{name}_question` must be (B={batch}, L, {hidden_size}), got shape {tuple(question.shape)}."
            )
        if mask is not None and tuple(mask.shape) != tuple(question.shape[:2]):
            raise ValueError(
                f"`{name}_attention_mask` must be (B, L) = {tuple(question.shape[:2])} like `{name}_question`, "
                f"got shape {tuple(mask.shape)}."
            )


class TransformerFusionAttention(nn.Module):
    """Multi-head self-attention through SDPA, with a fused ``qkv`` projection (biases as in ViT).

    Args:
        config: a :class:`~mambavl.MambaVLConfig` (``hidden_size``, ``fusion_transformer_heads``).
    """

    def __init__(self, config: MambaVLConfig):
        super().__init__()
        if config.hidden_size % config.fusion_transformer_heads:
            raise ValueError(
                f"`fusion_transformer_heads` ({config.fusion_transformer_heads}) must divide `hidden_size` "
                f"({config.hidden_size})."
            )
        self.num_heads = config.fusion_transformer_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over ``hidden_states (N, L, D)``.

        Args:
            hidden_states: ``(N, L, D)``.
            attention_mask: ``(N, 1, 1, L)`` boolean, ``True`` for keys that may be attended to, or ``None``.

        Returns:
            ``(N, L, D)``.
        """
        n, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # (N, heads, L, head_dim) each
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        return self.out_proj(attended.transpose(1, 2).reshape(n, length, width))


class TransformerFusionLayer(GradientCheckpointingLayer):
    """One pre-norm transformer layer: ``x <- x + MHSA(LN(x))``, ``x <- x + MLP(LN(x))`` (GELU, ratio 4).

    Subclasses :class:`~transformers.modeling_layers.GradientCheckpointingLayer`, so
    ``model.gradient_checkpointing_enable()`` recomputes it in the backward pass (the hidden states must be passed
    positionally).

    Args:
        config: a :class:`~mambavl.MambaVLConfig` (``hidden_size``, ``fusion_transformer_heads``,
            ``layer_norm_epsilon``).
    """

    def __init__(self, config: MambaVLConfig):
        super().__init__()
        width = config.hidden_size
        self.attention_norm = nn.LayerNorm(width, eps=config.layer_norm_epsilon)
        self.attention = TransformerFusionAttention(config)
        self.mlp_norm = nn.LayerNorm(width, eps=config.layer_norm_epsilon)
        self.mlp = nn.Sequential(
            nn.Linear(width, TRANSFORMER_MLP_RATIO * width), nn.GELU(), nn.Linear(TRANSFORMER_MLP_RATIO * width, width)
        )

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden_states (N, L, D)``, ``attention_mask (N, 1, 1, L)`` boolean or ``None`` -> ``(N, L, D)``."""
        hidden_states = hidden_states + self.attention(self.attention_norm(hidden_states), attention_mask)
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


class TransformerFusion(nn.Module):
    """Transformer fusion baseline (``fusion_type="transformer"``), a drop-in for
    :class:`~mambavl.fusion.MambaFusion`.

    For each question ``q`` (verb and noun), the sequence ``[x^V + e_video; x^T_q + e_question]`` (``e``: learned
    type embeddings, ``type_embeddings.weight[0]`` for video and ``[1]`` for question tokens) goes through
    ``fusion_transformer_depth`` :class:`TransformerFusionLayer` and a final LayerNorm. The two sequences are padded
    to a common length and run as one batch of ``2B``; question padding is masked out as attention keys (padded
    positions still produce outputs, which pooling ignores). Then::

        x_verb = pool(y^V_verb-sequence) + pool(y^T_verb)
        x_noun = pool(y^V_noun-sequence) + pool(y^T_noun)

    No position embeddings are added: the video tokens and the question tokens come from encoders that already add
    them (VideoMAE-style video transformers, RoBERTa embeddings). No dropout (the config has only ``head_dropout``).

    Args:
        config: a :class:`~mambavl.MambaVLConfig` (``hidden_size``, ``fusion_transformer_depth``,
            ``fusion_transformer_heads``, ``layer_norm_epsilon``).

    Example:

    >>> import torch
    >>> from mambavl import MambaVLConfig
    >>> from mambavl.fusion.baselines import TransformerFusion
    >>> config = MambaVLConfig(hidden_size=32, fusion_type="transformer", fusion_transformer_depth=2,
    ...                        video_feature_size=8)
    >>> fusion = TransformerFusion(config)
    >>> out = fusion(torch.randn(2, 6, 32), torch.randn(2, 5, 32), torch.randn(2, 3, 32))
    >>> tuple(out.verb_features.shape), tuple(out.noun_question_hidden_states.shape)
    ((2, 32), (2, 3, 32))
    """

    def __init__(self, config: MambaVLConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.type_embeddings = nn.Embedding(2, config.hidden_size)  # 0: video token, 1: question token
        self.layers = nn.ModuleList(TransformerFusionLayer(config) for _ in range(config.fusion_transformer_depth))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(
        self,
        video: torch.Tensor,
        verb_question: torch.Tensor,
        noun_question: torch.Tensor,
        verb_attention_mask: torch.Tensor | None = None,
        noun_attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> FusionOutput:
        """Fuse video tokens with the verb and the noun question.

        Args:
            video: ``(B, F, D)`` video tokens (all valid).
            verb_question: ``(B, Lv, D)`` right-padded verb-question tokens.
            noun_question: ``(B, Ln, D)`` right-padded noun-question tokens.
            verb_attention_mask: ``(B, Lv)``, 1 for tokens and 0 for padding, or ``None`` (all valid).
            noun_attention_mask: ``(B, Ln)``, or ``None``.
            output_hidden_states: also return the video tokens (of the verb sequence) entering each layer and
                leaving the last one (``fusion_transformer_depth + 1`` tensors ``(B, F, D)``).

        Returns:
            :class:`~mambavl.fusion.FusionOutput`. ``video_hidden_states`` and ``pooled_video`` are those of the
            verb sequence; ``noun_features`` uses the noun sequence's video tokens.
        """
        _check_fusion_inputs(
            video, verb_question, noun_question, verb_attention_mask, noun_attention_mask, self.hidden_size
        )
        batch, num_frames = video.shape[:2]
        verb_length, noun_length = verb_question.shape[1], noun_question.shape[1]
        length = max(verb_length, noun_length)
        video_type, question_type = self.type_embeddings.weight[0], self.type_embeddings.weight[1]

        def padded(question: torch.Tensor) -> torch.Tensor:
            return F.pad(question + question_type, (0, 0, 0, length - question.shape[1]))

        hidden = torch.cat(
            [(video + video_type).repeat(2, 1, 1), torch.cat([padded(verb_question), padded(noun_question)])], dim=1
        )  # (2B, F + L, D): rows [:B] hold the verb sequence, rows [B:] the noun sequence
        attention_mask = None
        if verb_attention_mask is not None or noun_attention_mask is not None or verb_length != noun_length:

            def valid(mask: torch.Tensor | None, question_length: int) -> torch.Tensor:
                if mask is None:
                    keep = torch.ones(batch, question_length, dtype=torch.bool, device=video.device)
                else:
                    keep = mask.to(device=video.device, dtype=torch.bool)
                return F.pad(keep, (0, length - question_length), value=False)

            questions = torch.cat([valid(verb_attention_mask, verb_length), valid(noun_attention_mask, noun_length)])
            frames = torch.ones(2 * batch, num_frames, dtype=torch.bool, device=video.device)
            attention_mask = torch.cat([frames, questions], dim=1)[:, None, None, :]  # (2B, 1, 1, F + L)

        all_video = [hidden[:batch, :num_frames]] if output_hidden_states else None
        for layer in self.layers:
            hidden = layer(hidden, attention_mask)
            if all_video is not None:
                all_video.append(hidden[:batch, :num_frames])
        hidden = self.norm(hidden)

        video_verb, video_noun = hidden[:batch, :num_frames], hidden[batch:, :num_frames]
        y_verb = hidden[:batch, num_frames : num_frames + verb_length]
        y_noun = hidden[batch:, num_frames : num_frames + noun_length]
        return fusion_output_from_tokens(
            video_verb, y_verb, y_noun, verb_attention_mask, noun_attention_mask, all_video, noun_video=video_noun
        )


class MLPFusion(nn.Module):
    """MLP fusion baseline (``fusion_type="mlp"``): pooled features, concatenated, through one shared MLP.

    ``x_verb = MLP([pool(x^V); pool(x^T_verb)])`` and ``x_noun = MLP([pool(x^V); pool(x^T_noun)])`` with
    ``MLP = LayerNorm(2D) -> Linear(2D, fusion_mlp_hidden_size) -> GELU -> Linear(fusion_mlp_hidden_size, D)``.
    Tokens never interact, so the output has no fused token states (``None``); the pooled fields hold the pooled
    *inputs*.

    Args:
        config: a :class:`~mambavl.MambaVLConfig` (``hidden_size``, ``fusion_mlp_hidden_size``,
            ``layer_norm_epsilon``).

    Example:

    >>> import torch
    >>> from mambavl import MambaVLConfig
    >>> from mambavl.fusion.baselines import MLPFusion
    >>> fusion = MLPFusion(MambaVLConfig(hidden_size=32, fusion_type="mlp", video_feature_size=8))
    >>> out = fusion(torch.randn(2, 6, 32), torch.randn(2, 5, 32), torch.randn(2, 3, 32))
    >>> tuple(out.verb_features.shape), out.video_hidden_states
    ((2, 32), None)
    """

    def __init__(self, config: MambaVLConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        hidden = config.fusion_mlp_hidden_size  # the config defaults it to 2 * hidden_size
        self.norm = nn.LayerNorm(2 * config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = nn.Sequential(
            nn.Linear(2 * config.hidden_size, hidden), nn.GELU(), nn.Linear(hidden, config.hidden_size)
        )

    def forward(
        self,
        video: torch.Tensor,
        verb_question: torch.Tensor,
        noun_question: torch.Tensor,
        verb_attention_mask: torch.Tensor | None = None,
        noun_attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> FusionOutput:
        """Fuse pooled video tokens ``(B, F, D)`` with pooled questions ``(B, Lv, D)``, ``(B, Ln, D)`` (masks
        ``(B, Lv)``, ``(B, Ln)`` or ``None``). With ``output_hidden_states``, ``hidden_states`` is ``(video,)``,
        the only token states this fusion sees. Returns a :class:`~mambavl.fusion.FusionOutput`."""
        _check_fusion_inputs(
            video, verb_question, noun_question, verb_attention_mask, noun_attention_mask, self.hidden_size
        )
        batch = video.shape[0]
        pooled_video = video.mean(dim=1)
        pooled_verb = masked_mean(verb_question, verb_attention_mask)
        pooled_noun = masked_mean(noun_question, noun_attention_mask)
        pairs = torch.cat([pooled_video.repeat(2, 1), torch.cat([pooled_verb, pooled_noun])], dim=-1)  # (2B, 2D)
        fused = self.mlp(self.norm(pairs))
        return FusionOutput(
            verb_features=fused[:batch],
            noun_features=fused[batch:],
            pooled_video=pooled_video,
            pooled_verb_question=pooled_verb,
            pooled_noun_question=pooled_noun,
            hidden_states=(video,) if output_hidden_states else None,
        )
