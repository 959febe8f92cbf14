"""MambaVL: video-language action recognition with Mamba fusion and masked questions."""

from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification

from .configuration_mambavl import MambaVLConfig
from .modeling_mambavl import (
    MambaVLActionRecognitionOutput,
    MambaVLForActionRecognition,
    MambaVLModel,
    MambaVLModelOutput,
    MambaVLPreTrainedModel,
)
from .ops import selective_scan

__version__ = "0.1.0"

AutoConfig.register("mambavl", MambaVLConfig, exist_ok=True)
AutoModel.register(MambaVLConfig, MambaVLModel, exist_ok=True)
AutoModelForVideoClassification.register(MambaVLConfig, MambaVLForActionRecognition, exist_ok=True)

__all__ = [
    "MambaVLActionRecognitionOutput",
    "MambaVLConfig",
    "MambaVLForActionRecognition",
    "MambaVLModel",
    "MambaVLModelOutput",
    "MambaVLPreTrainedModel",
    "selective_scan",
]
