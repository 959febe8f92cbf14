"""MambaVL: video-language action recognition with Mamba fusion and masked questions."""

from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification, AutoProcessor

from .cache import MambaVLCache
from .configuration_mambavl import MambaVLConfig
from .conv3d_video_encoder import Conv3dVideoConfig, Conv3dVideoModel
from .modeling_mambavl import (
    MambaVLActionRecognitionOutput,
    MambaVLForActionAnticipation,
    MambaVLForActionRecognition,
    MambaVLModel,
    MambaVLModelOutput,
    MambaVLPreTrainedModel,
)
from .ops import selective_scan
from .processing_mambavl import MambaVLProcessor
from .streaming import MambaVLStreamer
from .video_processing_mambavl import MambaVLVideoProcessor

__version__ = "0.1.0"

AutoConfig.register("mambavl", MambaVLConfig, exist_ok=True)
AutoConfig.register("mambavl_conv3d", Conv3dVideoConfig, exist_ok=True)
AutoModel.register(Conv3dVideoConfig, Conv3dVideoModel, exist_ok=True)
AutoModel.register(MambaVLConfig, MambaVLModel, exist_ok=True)
AutoModelForVideoClassification.register(MambaVLConfig, MambaVLForActionRecognition, exist_ok=True)
AutoProcessor.register(MambaVLConfig, MambaVLProcessor, exist_ok=True)

__all__ = [
    "Conv3dVideoConfig",
    "Conv3dVideoModel",
    "MambaVLActionRecognitionOutput",
    "MambaVLCache",
    "MambaVLConfig",
    "MambaVLForActionAnticipation",
    "MambaVLForActionRecognition",
    "MambaVLModel",
    "MambaVLModelOutput",
    "MambaVLPreTrainedModel",
    "MambaVLProcessor",
    "MambaVLStreamer",
    "MambaVLVideoProcessor",
    "selective_scan",
]
