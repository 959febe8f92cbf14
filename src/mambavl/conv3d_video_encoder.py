"""A tiny 3-D convolutional video encoder, for CPU training from scratch (the ``mambavl demo`` encoder).

Video transformers (VideoMAE, TimeSformer, ViViT) are what MambaVL uses with pretrained weights. Trained from scratch
on a few hundred clips they learn appearance quickly but motion slowly, because comparing frames is something their
attention has to discover. A stack of 3-D convolutions has motion built in: each layer looks at three neighbouring
frames. This encoder turns a clip into a short token sequence (time-major, like a video transformer's) so it plugs into
:class:`~mambavl.MambaVLModel` through ``video_config`` exactly like any `transformers` video model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

__all__ = ["Conv3dVideoConfig", "Conv3dVideoModel"]


class Conv3dVideoConfig(PretrainedConfig):
    """Configuration of :class:`Conv3dVideoModel`.

    Args:
        num_channels (`int`, *optional*, defaults to 3): input channels.
        channels (`list[int]`, *optional*, defaults to `[16, 32, 64]`): widths of the convolution stages before the
            last one; each stage halves the height and width, the last of them also the number of frames.
        hidden_size (`int`, *optional*, defaults to 64): width of the last stage and of the output tokens.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): epsilon of the output LayerNorm.
        initializer_range (`float`, *optional*, defaults to 0.02): unused by the convolutions (Kaiming init).

    A clip of ``T x H x W`` frames gives ``(T / 2) * (H / 2^k) * (W / 2^k)`` tokens, ``k = len(channels)``.
    """

    model_type = "mambavl_conv3d"

    num_channels: int = 3
    channels: list[int] | None = None
    hidden_size: int = 64
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        if self.channels is None:
            self.channels = [16, 32, 64]
        if not self.channels or not all(isinstance(c, int) and c > 0 for c in self.channels):
            raise ValueError(f"`channels` must be a non-empty list of positive integers, got {self.channels!r}.")
        if not isinstance(self.hidden_size, int) or self.hidden_size < 1:
            raise ValueError(f"`hidden_size` must be a positive integer, got {self.hidden_size!r}.")


class Conv3dVideoModel(PreTrainedModel):
    """3-D CNN video encoder: ``pixel_values (B, T, C, H, W)`` -> ``last_hidden_state (B, F, hidden_size)``.

    Stages: a ``1x3x3`` convolution, then ``3x3x3`` convolutions (GELU, 2x2 spatial max-pooling after each stage, and
    a 2x temporal pooling after the last of ``channels``), a final ``3x3x3`` convolution to ``hidden_size`` and a
    LayerNorm. Tokens are ordered time-major (``t, y, x``), as in video transformers.

    Args:
        config: a :class:`Conv3dVideoConfig`.
    """

    config: Conv3dVideoConfig
    config_class = Conv3dVideoConfig
    base_model_prefix = "conv3d"
    main_input_name = "pixel_values"

    def __init__(self, config: Conv3dVideoConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        width = config.num_channels
        for i, out in enumerate(config.channels):
            kernel, padding = ((1, 3, 3), (0, 1, 1)) if i == 0 else (3, 1)
            last = i == len(config.channels) - 1
            layers += [
                nn.Conv3d(width, out, kernel, padding=padding),
                nn.GELU(),
                nn.MaxPool3d((2, 2, 2) if last else (1, 2, 2), ceil_mode=True),
            ]
            width = out
        layers += [nn.Conv3d(width, config.hidden_size, 3, padding=1), nn.GELU()]
        self.stages = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv3d):
            from transformers import initialization as init

            init.kaiming_normal_(module.weight, nonlinearity="relu")
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None
    ) -> BaseModelOutput | tuple[torch.Tensor]:
        """Encode ``pixel_values (B, T, C, H, W)`` into ``last_hidden_state (B, F, hidden_size)``."""
        if pixel_values.dim() != 5 or pixel_values.shape[2] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` must be (B, T, {self.config.num_channels}, H, W), got {tuple(pixel_values.shape)}."
            )
        features = self.stages(pixel_values.transpose(1, 2))  # (B, hidden, T', H', W')
        tokens = self.norm(features.flatten(2).transpose(1, 2))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output = BaseModelOutput(last_hidden_state=tokens)
        return output if return_dict else output.to_tuple()
