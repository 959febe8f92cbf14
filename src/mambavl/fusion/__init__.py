"""Fusion modules that mix video tokens and question tokens, selected by ``config.fusion_type``."""

from __future__ import annotations

from torch import nn

from ..configuration_mambavl import MambaVLConfig
from .common import FusionOutput, fusion_output_from_tokens, masked_mean
from .ssm_fusion import MambaFusion, MambaFusionLayer, SelectiveMixer, SSMFusion

__all__ = [
    "FusionOutput",
    "MambaFusion",
    "MambaFusionLayer",
    "SSMFusion",
    "SelectiveMixer",
    "build_fusion",
    "fusion_output_from_tokens",
    "masked_mean",
]


def build_fusion(config: MambaVLConfig) -> nn.Module:
    """The fusion module named by ``config.fusion_type``: ``"mamba"`` (the paper's SSM-Fusion), ``"transformer"``
    or ``"mlp"`` (the ablation baselines). Each is called as ``fusion(video, verb_question, noun_question,
    verb_attention_mask, noun_attention_mask, output_hidden_states=False)`` and returns a :class:`FusionOutput`."""
    if config.fusion_type == "mamba":
        return MambaFusion(config)
    from .baselines import MLPFusion, TransformerFusion

    return {"transformer": TransformerFusion, "mlp": MLPFusion}[config.fusion_type](config)
