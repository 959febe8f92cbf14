"""MambaVL models: video encoder + question encoder + SSM-Fusion, with verb and noun heads."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ._model_checks import check_pretrained_folder, check_question_ids, check_video_dtype
from .cache import MambaVLCache
from .configuration_mambavl import MambaVLConfig
from .fusion import build_fusion
from .fusion.common import masked_mean
from .fusion.ssm_fusion import SelectiveMixer, SSMFusion, init_fusion_weights, init_mixer_weights
from .hub import MambaVLHubMixin
from .metrics import IGNORE_INDEX

__all__ = [
    "MambaVLActionRecognitionOutput",
    "MambaVLForActionAnticipation",
    "MambaVLForActionRecognition",
    "MambaVLModel",
    "MambaVLModelOutput",
    "MambaVLPreTrainedModel",
    "masked_mean",
]


@dataclass
class MambaVLModelOutput(ModelOutput):
    """Output of :class:`MambaVLModel`.

    Args:
        video_hidden_states: ``(B, F, D)`` fused video tokens after the last fusion layer (and final norm).
        verb_question_hidden_states: ``(B, Lv, D)`` fused verb-question tokens.
        noun_question_hidden_states: ``(B, Ln, D)`` fused noun-question tokens.
        pooled_video: ``(B, D)`` mean of the video tokens, ``pool(y^V)``.
        pooled_verb_question: ``(B, D)`` masked mean of the verb-question tokens, ``pool(y^T_verb)``.
        pooled_noun_question: ``(B, D)`` masked mean of the noun-question tokens, ``pool(y^T_noun)``.
        verb_features: ``(B, D)`` ``x_verb = pool(y^V) + pool(y^T_verb)``, the verb head's input.
        noun_features: ``(B, D)`` ``x_noun = pool(y^V) + pool(y^T_noun)``, the noun head's input.
        hidden_states: with ``output_hidden_states=True``, the video tokens ``(B, F, D)`` entering each fusion
            layer, then after the last one (``num_fusion_layers + 1`` tensors).
        video_attentions: with ``output_attentions=True``, the video encoder's attention weights (one
            ``(B, heads, F', F')`` tensor a layer), ``None`` without a video encoder (precomputed features).
        verb_question_attentions: with ``output_attentions=True`` and ``text_encoder_mode="full"``, the text
            encoder's attention weights on the verb question (one ``(B, heads, Lv, Lv)`` tensor a layer); ``None``
            in ``"embeddings"`` mode, which has no attention. The fusion itself has no attention weights.
        noun_question_attentions: likewise for the noun question.
        cache: when streaming, the :class:`~mambavl.MambaVLCache` of the stream (updated in place); also readable as
            ``cache_params`` (the name transformers' Mamba used before 5.x's ``cache``).
    """

    video_hidden_states: torch.Tensor | None = None
    verb_question_hidden_states: torch.Tensor | None = None
    noun_question_hidden_states: torch.Tensor | None = None
    pooled_video: torch.Tensor | None = None
    pooled_verb_question: torch.Tensor | None = None
    pooled_noun_question: torch.Tensor | None = None
    verb_features: torch.Tensor | None = None
    noun_features: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    video_attentions: tuple[torch.Tensor, ...] | None = None
    verb_question_attentions: tuple[torch.Tensor, ...] | None = None
    noun_question_attentions: tuple[torch.Tensor, ...] | None = None
    cache: MambaVLCache | None = None

    @property
    def cache_params(self) -> MambaVLCache | None:
        """The stream's cache, ``cache`` (``ModelOutput`` maps the old name ``cache_params`` to it)."""
        return self.cache


@dataclass
class MambaVLActionRecognitionOutput(ModelOutput):
    """Output of :class:`MambaVLForActionRecognition`.

    Args:
        loss: scalar, ``verb_loss + noun_loss`` (the terms whose labels were given), when labels are given.
        verb_loss: scalar cross-entropy of the verb head (mean over the labels that are not ``-100``; 0 when all
            are), when ``verb_labels`` are given.
        noun_loss: scalar cross-entropy of the noun head (likewise), when ``noun_labels`` are given.
        verb_logits: ``(B, num_verb_classes)`` (with ``num_views = V``: each clip's views' mean, float32).
        noun_logits: ``(B, num_noun_classes)`` (likewise).
        verb_features: ``(B, D)`` input of the verb head (``(B * V, D)``, per view, with ``num_views = V``).
        noun_features: ``(B, D)`` input of the noun head (likewise).
        video_hidden_states: ``(B, F, D)`` fused video tokens (``(B * V, F, D)`` with ``num_views = V``).
        hidden_states: see :class:`MambaVLModelOutput`.
        video_attentions, verb_question_attentions, noun_question_attentions: see :class:`MambaVLModelOutput`.
        cache: see :class:`MambaVLModelOutput` (also ``cache_params``).
    """

    loss: torch.Tensor | None = None
    verb_loss: torch.Tensor | None = None
    noun_loss: torch.Tensor | None = None
    verb_logits: torch.Tensor | None = None
    noun_logits: torch.Tensor | None = None
    verb_features: torch.Tensor | None = None
    noun_features: torch.Tensor | None = None
    video_hidden_states: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    video_attentions: tuple[torch.Tensor, ...] | None = None
    verb_question_attentions: tuple[torch.Tensor, ...] | None = None
    noun_question_attentions: tuple[torch.Tensor, ...] | None = None
    cache: MambaVLCache | None = None

    @property
    def cache_params(self) -> MambaVLCache | None:
        """The stream's cache, ``cache`` (``ModelOutput`` maps the old name ``cache_params`` to it)."""
        return self.cache


def _set_frozen(module: nn.Module, frozen: bool) -> None:
    """Freeze (or not) a backbone: a frozen one has no trainable weights and always runs in eval mode."""
    module.requires_grad_(not frozen)
    module._mambavl_frozen = frozen
    if frozen:
        module.eval()


def _split(result: Any, with_attentions: bool) -> tuple[torch.Tensor, Any]:
    """``(tokens, attentions)`` from an ``encode_*`` result, with ``attentions=None`` when they were not asked for."""
    return result if with_attentions else (result, None)


def _is_frozen(module: nn.Module | None) -> bool:
    return module is not None and getattr(module, "_mambavl_frozen", False)


def _grad_mode_for(module: nn.Module | None) -> contextlib.AbstractContextManager:
    """No gradients through a frozen encoder. Not while ``torch.export`` traces: there the switch becomes a
    ``wrap_with_set_grad_enabled`` node that ``torch.export.load`` refuses, and the frozen weights need none anyway."""
    if torch.compiler.is_exporting():
        return contextlib.nullcontext()
    return torch.set_grad_enabled(torch.is_grad_enabled() and not _is_frozen(module))


class MambaVLTextEncoder(nn.Module):
    """Question encoder: a `transformers` text model (its embedding layer only, or all of it) and the paper's
    three-layer MLP projection to the fusion width.

    Args:
        config: a :class:`~mambavl.MambaVLConfig` (``text_config``, ``text_encoder_mode``, ``freeze_text_encoder``,
            ``text_projection_hidden_size``, ``hidden_size``).
    """

    def __init__(self, config: MambaVLConfig):
        super().__init__()
        self.mode = config.text_encoder_mode
        model = AutoModel.from_config(config.text_config)
        # "embeddings": keep only the embedding layer (word + position (+ type) embeddings and their norm for
        # BERT-like models; the input embedding table otherwise), so the unused transformer layers cost nothing.
        embeddings = getattr(model, "embeddings", None)
        has_embeddings_module = isinstance(embeddings, nn.Module) and not isinstance(embeddings, nn.Embedding)
        self.embeddings_take_ids = self.mode == "embeddings" and has_embeddings_module
        self.encoder = self._encoder_part(model)
        if self.mode == "embeddings":
            # Detached from its PreTrainedModel, the embedding layer's non-persistent buffers (BERT-family
            # `position_ids`, `token_type_ids`) are (re)initialised by MambaVLPreTrainedModel._init_weights.
            self.encoder._mambavl_text_embeddings = True
        _set_frozen(self.encoder, config.freeze_text_encoder)
        width, hidden = config.text_config.hidden_size, config.text_projection_hidden_size
        self.projection = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, config.hidden_size),
        )  # fmt: skip

    def _encoder_part(self, model: PreTrainedModel) -> nn.Module:
        """The part of a text model this encoder keeps: all of it, its embeddings module, or its input embeddings."""
        if self.mode == "full":
            return model
        return model.embeddings if self.embeddings_take_ids else model.get_input_embeddings()

    def get_input_embeddings(self) -> nn.Module:
        """The text model's word (token) embeddings, an ``nn.Embedding (vocab_size, text width)``."""
        if self.mode == "full":
            return self.encoder.get_input_embeddings()
        if not self.embeddings_take_ids:
            return self.encoder
        for name in ("word_embeddings", "embed_tokens", "token_embedding", "word_embedding"):
            if isinstance(module := getattr(self.encoder, name, None), nn.Embedding):
                return module
        raise NotImplementedError(
            f"Cannot find the word embeddings in {type(self.encoder).__name__} (looked for `word_embeddings`, "
            "`embed_tokens`, `token_embedding`, `word_embedding`)."
        )

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the word embeddings (e.g. resized); they stay frozen when the text encoder is."""
        frozen = _is_frozen(self.encoder)
        if self.mode == "full":
            self.encoder.set_input_embeddings(value)
        elif not self.embeddings_take_ids:
            self.encoder = value
            _set_frozen(self.encoder, frozen)
            return
        else:
            old = self.get_input_embeddings()
            name = next(n for n, module in self.encoder.named_children() if module is old)
            setattr(self.encoder, name, value)
        value.requires_grad_(not frozen)
        if frozen:
            value.eval()

    def load_backbone(self, model: PreTrainedModel) -> None:
        """Copy the weights of a pretrained text model (of ``config.text_config``'s architecture) into the encoder."""
        self.encoder.load_state_dict(self._encoder_part(model).state_dict())

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Encode ``input_ids (B, L)`` to ``(B, L, hidden_size)``; with ``output_attentions``, also return the text
        model's attention weights (``"full"`` mode; ``None`` in ``"embeddings"`` mode, which has no attention)."""
        attentions = None
        with _grad_mode_for(self.encoder):
            if self.mode == "full":
                extra = {"output_attentions": True} if output_attentions else {}
                out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra)
                hidden, attentions = out.last_hidden_state, getattr(out, "attentions", None)
            elif self.embeddings_take_ids:
                hidden = self.encoder(input_ids=input_ids)
            else:
                hidden = self.encoder(input_ids)
        hidden = self.projection(hidden)
        return (hidden, attentions) if output_attentions else hidden


class MambaVLPreTrainedModel(MambaVLHubMixin, PreTrainedModel):
    """Base class of MambaVL models: weight initialisation, loading and saving (safetensors; ``save_pretrained`` also
    writes a model card and the ``auto_map`` of :mod:`mambavl.hub`), and :meth:`from_pretrained_backbones`."""

    config: MambaVLConfig
    config_class = MambaVLConfig
    base_model_prefix = "mambavl"
    main_input_name = "pixel_values"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    # The attention implementation (`attn_implementation=` at `from_pretrained`) is passed on to the video and text
    # encoders (the sub-configs); each checks that it supports it. The fusion has no attention.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # `loss` is a plain mean over the batch: `transformers.Trainer` must not pass `num_items_in_batch`.
    accepts_loss_kwargs = False
    _no_split_modules = ["MambaFusionLayer", "TransformerFusionLayer"]

    def train(self, mode: bool = True) -> MambaVLPreTrainedModel:
        """Set training mode, except for frozen backbones, which always run in eval mode (no dropout)."""
        super().train(mode)
        for module in self.modules():
            if _is_frozen(module):
                module.eval()
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``, with two additions.

        A local folder is checked first: a folder without ``config.json``, of another model type, or with a corrupt
        ``.safetensors`` file fails with an error naming the file. After loading, the frozen backbones are frozen
        again: loading replaces every parameter with a new trainable one, which would silently fine-tune a frozen
        encoder (and make DDP wait for gradients that never come).
        """
        check_pretrained_folder(pretrained_model_name_or_path, cls.config_class.model_type, kwargs)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        for module in model.modules():
            if _is_frozen(module):
                _set_frozen(module, True)
        return loaded

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SelectiveMixer):
            init_mixer_weights(module, self.config)
        elif isinstance(module, SSMFusion):
            init_fusion_weights(module)
        if getattr(module, "_mambavl_text_embeddings", False):
            if isinstance(position_ids := getattr(module, "position_ids", None), torch.Tensor):
                init.copy_(position_ids, torch.arange(position_ids.shape[-1]).expand_as(position_ids))
            if isinstance(token_type_ids := getattr(module, "token_type_ids", None), torch.Tensor):
                init.zeros_(token_type_ids)

    @classmethod
    def from_pretrained_backbones(
        cls,
        video: str | os.PathLike | PreTrainedModel | None = None,
        text: str | os.PathLike | PreTrainedModel | None = None,
        *,
        backbone_kwargs: dict[str, Any] | None = None,
        **config_kwargs: Any,
    ) -> MambaVLPreTrainedModel:
        """Build a MambaVL model around pretrained video and text backbones.

        Args:
            video: a local folder or Hub id of a `transformers` video model (loaded with ``AutoModel``), a loaded
                model, or ``None`` for precomputed features (then pass ``video_feature_size``).
            text: a local folder or Hub id of a `transformers` text model, or a loaded model. The paper uses
                RoBERTa; any model with an embedding layer works.
            backbone_kwargs: keyword arguments for both ``AutoModel.from_pretrained`` calls (e.g.
                ``local_files_only=True``).
            **config_kwargs: the other :class:`~mambavl.MambaVLConfig` fields (``hidden_size``, ...).

        Returns:
            The model, with the backbones' pretrained weights and freshly initialised fusion and heads.

        Example::

            model = MambaVLForActionRecognition.from_pretrained_backbones(
                video="MCG-NJU/videomae-base", text="FacebookAI/roberta-base", num_verb_classes=97
            )
        """

        def load(argument: str, source: str | os.PathLike | PreTrainedModel | None) -> PreTrainedModel | None:
            if source is None or isinstance(source, PreTrainedModel):
                return source
            try:
                return AutoModel.from_pretrained(source, **(backbone_kwargs or {}))
            except (OSError, ValueError) as error:  # transformers' message does not say which backbone it was
                where = "a local folder without a usable model" if os.path.isdir(source) else "not a local folder"
                raise (OSError if isinstance(error, OSError) else ValueError)(
                    f"from_pretrained_backbones({argument}={os.fspath(source)!r}), {where}: cannot load a "
                    f"transformers model from it (a local folder with a config.json, or a Hub model id): {error}"
                ) from error

        video_model, text_model = load("video", video), load("text", text)
        if text_model is None and "text_config" not in config_kwargs:
            raise ValueError(
                "from_pretrained_backbones needs `text` (a text model path/id or model) or `text_config`."
            )
        for name, model in (("video_config", video_model), ("text_config", text_model)):
            if model is not None:
                if name in config_kwargs:
                    raise ValueError(f"Pass either the pretrained backbone or `{name}`, not both.")
                config_kwargs[name] = model.config
        model = cls(MambaVLConfig(**config_kwargs))
        base = model.base_model
        if video_model is not None:
            base.video_encoder.load_state_dict(video_model.state_dict())
        if text_model is not None:
            base.text_encoder.load_backbone(text_model)
        return model


class MambaVLModel(MambaVLPreTrainedModel):
    """The MambaVL trunk: video encoder (or precomputed features) + video projection, question encoder + MLP,
    and ``num_fusion_layers`` SSM-Fusion layers. Returns fused states and pooled features, no heads.

    Args:
        config: a :class:`~mambavl.MambaVLConfig`.

    Example:

    >>> import torch
    >>> from transformers import BertConfig
    >>> from mambavl import MambaVLConfig, MambaVLModel
    >>> text_config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...                          intermediate_size=32)
    >>> model = MambaVLModel(MambaVLConfig(hidden_size=32, video_feature_size=24, text_config=text_config))
    >>> out = model(video_features=torch.randn(2, 8, 24), verb_input_ids=torch.randint(0, 100, (2, 5)),
    ...             noun_input_ids=torch.randint(0, 100, (2, 4)))
    >>> tuple(out.video_hidden_states.shape), tuple(out.verb_features.shape)
    ((2, 8, 32), (2, 32))
    """

    def __init__(self, config: MambaVLConfig):
        super().__init__(config)
        self.video_encoder = AutoModel.from_config(config.video_config) if config.video_config is not None else None
        if self.video_encoder is not None:
            _set_frozen(self.video_encoder, config.freeze_video_encoder)
        self.video_projection = nn.Linear(config.video_feature_size, config.hidden_size)
        self.text_encoder = MambaVLTextEncoder(config)
        self.fusion = build_fusion(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The question encoder's word embeddings (``nn.Embedding (text vocab_size, text width)``)."""
        return self.text_encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the question encoder's word embeddings (``resize_token_embeddings`` uses it)."""
        self.text_encoder.set_input_embeddings(value)

    def encode_video(
        self,
        pixel_values: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Video tokens at fusion width.

        Args:
            pixel_values: ``(B, T, C, H, W)`` frames for the video encoder.
            video_features: ``(B, F, video_feature_size)`` precomputed tokens (skips the video encoder).
            output_attentions: also return the video encoder's attention weights (``None`` for precomputed
                features).

        Returns:
            ``(B, F, hidden_size)``, or ``(tokens, attentions)`` with ``output_attentions``.
        """
        attentions = None
        if (pixel_values is None) == (video_features is None):
            raise ValueError("Pass exactly one of `pixel_values` (B, T, C, H, W) or `video_features` (B, F, Dv).")
        if pixel_values is not None:
            if self.video_encoder is None:
                raise ValueError(
                    "This model has no video encoder (config.video_config is None): pass precomputed "
                    f"`video_features` of shape (B, F, {self.config.video_feature_size}) instead of `pixel_values`."
                )
            if pixel_values.dim() != 5:
                raise ValueError(f"`pixel_values` must be (B, T, C, H, W), got shape {tuple(pixel_values.shape)}.")
            check_video_dtype("pixel_values", pixel_values, self.video_encoder.dtype)
            with _grad_mode_for(self.video_encoder):
                extra = {"output_attentions": True} if output_attentions else {}
                out = self.video_encoder(pixel_values=pixel_values, **extra)
                video_features, attentions = out.last_hidden_state, getattr(out, "attentions", None)
        elif video_features.dim() != 3 or video_features.shape[-1] != self.config.video_feature_size:
            raise ValueError(
                f"`video_features` must be (B, F, {self.config.video_feature_size}), got shape "
                f"{tuple(video_features.shape)}."
            )
        else:
            check_video_dtype("video_features", video_features, self.video_projection.weight.dtype)
        tokens = self.video_projection(video_features)
        return (tokens, attentions) if output_attentions else tokens

    def encode_question(
        self,
        name: str,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        batch_size: int,
        output_attentions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Question tokens at fusion width, ``(B, L, hidden_size)``, after checking ids and mask; with
        ``output_attentions``, ``(tokens, the text encoder's attentions or None)``."""
        if input_ids is None:
            raise ValueError(
                f"`{name}_input_ids` is required: MambaVL fuses the video with a verb and a noun question "
                "(use MambaVLProcessor, which adds label-free questions when no labels are given)."
            )
        if input_ids.dim() != 2 or input_ids.shape[0] != batch_size:
            raise ValueError(f"`{name}_input_ids` must be (B={batch_size}, L), got shape {tuple(input_ids.shape)}.")
        check_question_ids(name, input_ids, self.text_encoder)  # vocabulary and position limit
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"`{name}_attention_mask` must have the shape of `{name}_input_ids` {tuple(input_ids.shape)}, "
                    f"got {tuple(attention_mask.shape)}."
                )
            empty = attention_mask.sum(dim=1) == 0
            left_padded = (attention_mask[:, 1:] > attention_mask[:, :-1]).any(dim=1)
            if torch.compiler.is_compiling():  # torch.export / compile: a runtime assertion, no data-dependent branch
                torch._assert_async(
                    ~(empty | left_padded).any(),
                    f"`{name}_attention_mask` has a row with no valid token or is left-padded (needs right padding).",
                )
            elif (empty | left_padded).any():  # one host sync when the mask is fine
                if empty.any():
                    raise ValueError(f"`{name}_attention_mask` has a row with no valid token.")
                raise ValueError(
                    f"`{name}_attention_mask` is left-padded; the causal scan needs right padding "
                    "(tokenizer.padding_side = 'right')."
                )
        return self.text_encoder(input_ids, attention_mask, output_attentions=output_attentions)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        verb_input_ids: torch.Tensor | None = None,
        verb_attention_mask: torch.Tensor | None = None,
        noun_input_ids: torch.Tensor | None = None,
        noun_attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        cache_params: MambaVLCache | None = None,
        use_cache: bool | None = None,
    ) -> MambaVLModelOutput | tuple[torch.Tensor, ...]:
        """Fuse a video with its verb and noun questions.

        Args:
            pixel_values: ``(B, T, C, H, W)`` frames (needs ``config.video_config``).
            video_features: ``(B, F, video_feature_size)`` precomputed video tokens, instead of ``pixel_values``.
            verb_input_ids: ``(B, Lv)`` token ids of the verb question.
            verb_attention_mask: ``(B, Lv)``, 1 for tokens and 0 for (right) padding.
            noun_input_ids: ``(B, Ln)`` token ids of the noun question.
            noun_attention_mask: ``(B, Ln)``.
            output_hidden_states: also return the video tokens entering each fusion layer (default:
                ``config.output_hidden_states``).
            return_dict: return a :class:`MambaVLModelOutput` rather than a tuple (default: ``config.return_dict``).
            output_attentions: also return the video and text encoders' attention weights (default:
                ``config.output_attentions``; the weights need ``attn_implementation="eager"``).
            cache_params: a :class:`~mambavl.MambaVLCache` holding a stream's state: the video tokens (features,
                or the tokens of ``pixel_values``' clip) are its next chunk, of any length >= 1. Updated in place
                (and used whenever given, whatever ``use_cache``).
            use_cache: stream: create a cache when ``cache_params`` is ``None`` and return it. A stream's first call
                needs the questions; later calls may omit them (they are encoded once per stream). After the last
                chunk the outputs equal one forward over the concatenated video tokens (``fusion_type="mamba"``).

        Returns:
            :class:`MambaVLModelOutput` (with the stream's ``cache`` when streaming).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        attend = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        video, video_attentions = _split(self.encode_video(pixel_values, video_features, attend), attend)
        batch = video.shape[0]
        if use_cache or cache_params is not None:
            if cache_params is None:
                cache_params = MambaVLCache(self.config, batch, dtype=video.dtype, device=video.device)
            encode = cache_params.needs_questions(verb_input_ids, noun_input_ids)
        else:
            encode = True
        verb, verb_attentions = (
            _split(self.encode_question("verb", verb_input_ids, verb_attention_mask, batch, attend), attend)
            if encode
            else (None, None)
        )
        noun, noun_attentions = (
            _split(self.encode_question("noun", noun_input_ids, noun_attention_mask, batch, attend), attend)
            if encode
            else (None, None)
        )

        fused = self.fusion(
            video,
            verb,
            noun,
            verb_attention_mask,
            noun_attention_mask,
            output_hidden_states=bool(output_hidden_states),
            **({"cache_params": cache_params} if cache_params is not None else {}),
        )
        output = MambaVLModelOutput(**fused, cache=cache_params)
        if attend:
            output.video_attentions = video_attentions
            output.verb_question_attentions, output.noun_question_attentions = verb_attentions, noun_attentions
        return output if return_dict else output.to_tuple()


def _labels_from_kwargs(
    model_name: str, kwargs: dict[str, Any], verb_labels: torch.Tensor | None, noun_labels: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(verb_labels, noun_labels)``, taken from the conventional ``labels`` ``(B, 2)`` when it is passed.

    ``labels`` is not a named argument of the forward: `transformers.Trainer` takes every argument whose name contains
    "label" for a label it must find in each batch, and the batches carry ``verb_labels`` and ``noun_labels``.
    """
    labels = kwargs.pop("labels", None)
    if kwargs:
        raise TypeError(f"{model_name}.forward() got unexpected keyword arguments: {', '.join(sorted(kwargs))}.")
    if labels is None:
        return verb_labels, noun_labels
    if verb_labels is not None or noun_labels is not None:
        raise ValueError("Pass either `labels` (B, 2) or `verb_labels` and `noun_labels` (B,), not both.")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.shape[1] != 2:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"`labels` must be a (B, 2) tensor of [verb, noun] class ids (the model has a verb head and a noun head), "
            f"got {shape}; or pass `verb_labels` (B,) and `noun_labels` (B,)."
        )
    return labels[:, 0], labels[:, 1]


def _check_labels(name: str, labels: torch.Tensor, num_classes: int, batch_size: int) -> None:
    if labels.shape != (batch_size,):
        raise ValueError(f"`{name}` must have shape (B={batch_size},), got {tuple(labels.shape)}.")
    invalid = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))
    if invalid.any():
        raise ValueError(
            f"`{name}` has values outside [0, {num_classes}) (and not the ignore index {IGNORE_INDEX}): "
            f"{labels[invalid][:10].tolist()}."
        )


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits (B, C)`` over the rows whose ``labels (B,)`` are not ignored (``-100``); 0 (with
    zero gradient) when all are, where ``F.cross_entropy``'s mean would be 0 / 0 = NaN."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def _check_num_views(num_views: int | torch.Tensor, rows: int | None, streaming: bool) -> int:
    """The number of views per clip as an int, checked against the ``rows`` of the video input (``None``: unknown).

    ``num_views`` may be a 0-d integer tensor (what a data loader that moves the whole batch to tensors makes of the
    collator's int).
    """
    views = num_views
    if isinstance(views, torch.Tensor) and views.dim() == 0 and not (views.is_floating_point() or views.is_complex()):
        views = views.item()
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ValueError(
            f"`num_views` must be a positive int (views per clip) or a 0-d integer tensor, got {num_views!r}."
        )
    if views > 1 and streaming:
        raise ValueError(
            f"`num_views` = {views} cannot be combined with `use_cache` / `cache_params`: a stream feeds one clip's "
            "video in chunks, views are whole clips sampled at shifted positions. Stream with num_views=None (or 1)."
        )
    if rows is not None and rows % views:
        raise ValueError(
            f"The video input has {rows} rows, not a multiple of `num_views` = {views}: with views the inputs hold "
            "B * num_views rows, each clip's views adjacent (as MambaVLCollator builds them)."
        )
    return views


def _mean_over_views(logits: torch.Tensor, views: int) -> torch.Tensor:
    """``(B * V, C)`` logits, each clip's ``V`` views adjacent -> their mean ``(B, C)``, computed in float32."""
    return logits.float().view(-1, views, logits.shape[-1]).mean(dim=1)


class MambaVLForActionRecognition(MambaVLPreTrainedModel):
    """MambaVL with verb and noun classification heads (EPIC-KITCHENS-100 action recognition).

    ``verb_logits = Linear(dropout(pool(y^V) + pool(y^T_verb)))`` and
    ``noun_logits = Linear(dropout(pool(y^V) + pool(y^T_noun)))``; an action is a (verb, noun) pair scored by
    the product of their probabilities (:meth:`predict_actions`).

    Args:
        config: a :class:`~mambavl.MambaVLConfig`.
    """

    def __init__(self, config: MambaVLConfig):
        super().__init__(config)
        self.mambavl = MambaVLModel(config)
        self.dropout = nn.Dropout(config.head_dropout)
        self.verb_head = nn.Linear(config.hidden_size, config.num_verb_classes)
        self.noun_head = nn.Linear(config.hidden_size, config.num_noun_classes)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        verb_input_ids: torch.Tensor | None = None,
        verb_attention_mask: torch.Tensor | None = None,
        noun_input_ids: torch.Tensor | None = None,
        noun_attention_mask: torch.Tensor | None = None,
        verb_labels: torch.Tensor | None = None,
        noun_labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        cache_params: MambaVLCache | None = None,
        use_cache: bool | None = None,
        num_views: int | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MambaVLActionRecognitionOutput | tuple[torch.Tensor, ...]:
        """Classify the verb and the noun of each clip.

        Args:
            pixel_values, video_features, verb_input_ids, verb_attention_mask: as in :meth:`MambaVLModel.forward`.
            noun_input_ids, noun_attention_mask, output_hidden_states: as in :meth:`MambaVLModel.forward`.
            verb_labels: ``(B,)`` verb class ids (``-100`` ignored), for the loss.
            noun_labels: ``(B,)`` noun class ids (``-100`` ignored), for the loss.
            return_dict: return a :class:`MambaVLActionRecognitionOutput` rather than a tuple (default:
                ``config.return_dict``).
            output_attentions: as in :meth:`MambaVLModel.forward`.
            **kwargs: only ``labels``, the conventional name: a ``(B, 2)`` integer tensor of ``[verb, noun]`` class
                ids, instead of ``verb_labels`` and ``noun_labels``.
            cache_params, use_cache: stream the video in chunks, see :meth:`MambaVLModel.forward`; the logits are
                those of the whole stream so far.
            num_views: ``V`` temporal views per clip (the ``num_views`` of a :class:`~mambavl.data.MambaVLCollator`
                batch; an int, or a 0-d integer tensor). The video and question inputs then hold ``B * V`` rows, the
                ``V`` views of each clip adjacent (rows ``b * V`` to ``b * V + V - 1`` are clip ``b``), and the labels
                ``B`` rows: ``verb_logits``/``noun_logits`` are the mean of each clip's views' logits (computed, and
                returned, in float32) and the loss is taken on that mean. ``None`` or 1: one row per clip. Not with
                ``use_cache``/``cache_params``.

        Returns:
            :class:`MambaVLActionRecognitionOutput` with ``verb_logits (B, num_verb_classes)``,
            ``noun_logits (B, num_noun_classes)`` and, with labels, ``loss = verb_loss + noun_loss``. With
            ``num_views = V > 1`` only the logits and losses are per clip: ``verb_features``/``noun_features``
            ``(B * V, D)``, ``video_hidden_states``, ``hidden_states`` and the attentions stay per view (what the
            heads saw; each view is a different sampling of the clip, so they have no meaningful mean).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        verb_labels, noun_labels = _labels_from_kwargs(type(self).__name__, kwargs, verb_labels, noun_labels)
        views = 1  # (num_views=None, the default, adds nothing to a traced or exported graph)
        if num_views is not None:
            video = pixel_values if pixel_values is not None else video_features
            rows = video.shape[0] if isinstance(video, torch.Tensor) and video.dim() > 0 else None
            views = _check_num_views(num_views, rows, streaming=bool(use_cache) or cache_params is not None)
        out = self.mambavl(
            pixel_values=pixel_values,
            video_features=video_features,
            verb_input_ids=verb_input_ids,
            verb_attention_mask=verb_attention_mask,
            noun_input_ids=noun_input_ids,
            noun_attention_mask=noun_attention_mask,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            output_attentions=output_attentions,
            cache_params=cache_params,
            use_cache=use_cache,
        )
        verb_logits = self.verb_head(self.dropout(out.verb_features))
        noun_logits = self.noun_head(self.dropout(out.noun_features))
        if views > 1:
            verb_logits, noun_logits = _mean_over_views(verb_logits, views), _mean_over_views(noun_logits, views)
        verb_loss = noun_loss = loss = None
        batch = verb_logits.shape[0]
        if verb_labels is not None:
            _check_labels("verb_labels", verb_labels, self.config.num_verb_classes, batch)
            verb_loss = _cross_entropy(verb_logits, verb_labels)
        if noun_labels is not None:
            _check_labels("noun_labels", noun_labels, self.config.num_noun_classes, batch)
            noun_loss = _cross_entropy(noun_logits, noun_labels)
        terms = [t for t in (verb_loss, noun_loss) if t is not None]
        if terms:
            loss = sum(terms[1:], terms[0])
        output = MambaVLActionRecognitionOutput(
            loss=loss,
            verb_loss=verb_loss,
            noun_loss=noun_loss,
            verb_logits=verb_logits,
            noun_logits=noun_logits,
            verb_features=out.verb_features,
            noun_features=out.noun_features,
            video_hidden_states=out.video_hidden_states,
            hidden_states=out.hidden_states,
            video_attentions=out.video_attentions,
            verb_question_attentions=out.verb_question_attentions,
            noun_question_attentions=out.noun_question_attentions,
            cache=out.cache,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def predict_actions(self, k: int = 5, **inputs: torch.Tensor) -> list[list[dict[str, Any]]]:
        """Rank the top-``k`` actions of each clip by ``p(verb) * p(noun)``.

        Args:
            k: number of (verb, noun) pairs per clip.
            **inputs: the model inputs (``pixel_values`` or ``video_features`` and the question ids/masks),
                e.g. the output of :class:`~mambavl.MambaVLProcessor`. Labels are ignored. A multi-view batch of
                :class:`~mambavl.data.MambaVLCollator` (``B * V`` rows and ``num_views = V``) is ranked per clip on
                its views' mean logits.

        Returns:
            For each of the ``B`` clips, ``k`` dicts ``{"verb_id", "noun_id", "verb", "noun", "score"}`` (names from
            ``config.verb_id2label`` / ``noun_id2label`` when set, else ``None``), best first.
        """
        from .metrics import rank_actions

        inputs = {key: value for key, value in inputs.items() if key not in ("verb_labels", "noun_labels", "labels")}
        out = self(**inputs, return_dict=True)
        verb_ids, noun_ids, scores = rank_actions(out.verb_logits.float(), out.noun_logits.float(), k=k)
        verbs, nouns = self.config.verb_id2label or {}, self.config.noun_id2label or {}
        return [
            [
                {"verb_id": v, "noun_id": n, "verb": verbs.get(v), "noun": nouns.get(n), "score": s}
                for v, n, s in zip(vs, ns, ss, strict=True)
            ]
            for vs, ns, ss in zip(verb_ids.tolist(), noun_ids.tolist(), scores.tolist(), strict=True)
        ]


class MambaVLForActionAnticipation(MambaVLForActionRecognition):
    """MambaVL for action anticipation (EPIC-KITCHENS-100 protocol): the same model, fed the ``observation_time``
    seconds that end ``anticipation_time`` (1 s) before an action, predicts that upcoming action's verb and noun.

    Inputs, outputs and heads are those of :class:`MambaVLForActionRecognition`; use
    :class:`~mambavl.data.EK100AnticipationDataset` to sample the observed windows and evaluate with class-mean top-5
    recall (``mambavl.metrics.anticipation_metrics``, ``task="anticipation"`` in :mod:`mambavl.training`).

    Args:
        config: a :class:`~mambavl.MambaVLConfig`.
    """
