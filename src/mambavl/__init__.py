"""MambaVL: video-language action recognition with Mamba fusion and masked questions."""

from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification, AutoProcessor

from .cache import MambaVLCache
from .configuration_mambavl import MambaVLConfig
from .conv3d_video_encoder import Conv3dVideoConfig, Conv3dVideoModel
from .modeling_auto import AutoModelForActionAnticipation
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
AutoModelForActionAnticipation.register(MambaVLConfig, MambaVLForActionAnticipation, exist_ok=True)

from . import hub as _hub  # noqa: E402

_hub.install_config_hooks()  # saved folders load through their auto_map (mambavl_auto.py); see mambavl.hub
# Trainer cards of MambaVL models say library_name: mambavl; pipeline("egocentric-action-recognition", model=...).
# Both are installed when transformers' trainer / pipelines modules get imported, not before.
_hub.after_import("transformers.trainer", lambda _: _hub.install_trainer_model_card_hook())
_hub.after_import("transformers.pipelines", lambda _: _hub.register_pipelines())

__all__ = [
    "AutoModelForActionAnticipation",
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
