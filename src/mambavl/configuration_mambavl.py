"""Configuration of MambaVL models."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .ops.selective_scan import BACKENDS

__all__ = ["FUSION_SCANS", "FUSION_TYPES", "SSM_BACKENDS", "TEXT_ENCODER_MODES", "MambaVLConfig"]

TEXT_ENCODER_MODES = ("embeddings", "full")
FUSION_TYPES = ("mamba", "transformer", "mlp")
FUSION_SCANS = ("separate", "joint")
SSM_BACKENDS = BACKENDS  # the backends of mambavl.ops.selective_scan

# Width of the video tokens assumed when neither `video_config` nor `video_feature_size` is given:
# a ViT-B video transformer (ORViT, AVION/LaViLa ViT-B), as in the paper.
DEFAULT_VIDEO_FEATURE_SIZE = 768


_SINGLE_HEAD_MESSAGE = (
    "MambaVLConfig does not take `{name}`: the model has two heads, a verb head and a noun head. Use "
    "`num_verb_classes` / `num_noun_classes` and `verb_id2label` / `noun_id2label` (with their inverses "
    "`verb_label2id` / `noun_label2id`), e.g. from `mambavl.data.label_config(verb_classes, noun_classes)`."
)


def _is_default_label_map(mapping: dict[Any, Any], inverse: bool) -> bool:
    """Whether ``mapping`` is the two-label placeholder ``{0: "LABEL_0", 1: "LABEL_1"}`` (or its inverse) that
    `transformers` writes for configs without labels (older MambaVL folders hold it)."""
    default = {str(i): f"LABEL_{i}" for i in range(2)}
    items = {str(k): str(v) for k, v in mapping.items()}
    return items == ({v: k for k, v in default.items()} if inverse else default)


def _reject_single_head_labels(config: PretrainedConfig, kwargs: dict[str, Any]) -> None:
    if kwargs.get("num_labels") is not None:
        raise ValueError(_SINGLE_HEAD_MESSAGE.format(name="num_labels"))
    for name, inverse in (("id2label", False), ("label2id", True)):
        mapping = getattr(config, name)
        if mapping is not None and not _is_default_label_map(mapping, inverse):
            raise ValueError(_SINGLE_HEAD_MESSAGE.format(name=name))


def _set_label_maps(config: PretrainedConfig, kind: str, num: int) -> None:
    """Check ``{kind}_id2label`` (int keys, also after JSON) and fill or check its inverse ``{kind}_label2id``."""
    id2label_name, label2id_name = f"{kind}_id2label", f"{kind}_label2id"
    id2label, label2id = getattr(config, id2label_name), getattr(config, label2id_name)
    if id2label is None:
        if label2id is not None:
            raise ValueError(f"`{label2id_name}` needs `{id2label_name}` (the class names by id).")
        return
    if not isinstance(id2label, dict):
        raise ValueError(f"`{id2label_name}` must be a dict of class id to name, got {type(id2label).__name__}.")
    id2label = {int(k): str(v) for k, v in id2label.items()}  # JSON keys are strings
    if sorted(id2label) != list(range(num)):
        raise ValueError(
            f"`{id2label_name}` must name every class id 0..{num - 1}, got ids {sorted(id2label)[:10]}"
            f"{'...' if len(id2label) > 10 else ''} ({len(id2label)} entries)."
        )
    inverse = {name: i for i, name in sorted(id2label.items())}
    if len(inverse) != len(id2label):
        duplicates = sorted(name for name, count in Counter(id2label.values()).items() if count > 1)
        raise ValueError(
            f"`{id2label_name}` names must be unique (they key `{label2id_name}`), got duplicates {duplicates[:10]}."
        )
    if label2id is not None and {str(k): int(v) for k, v in label2id.items()} != inverse:
        raise ValueError(f"`{label2id_name}` must be the inverse of `{id2label_name}`.")
    setattr(config, id2label_name, id2label)
    setattr(config, label2id_name, inverse)


class MambaVLConfig(PretrainedConfig):
    r"""Configuration of a MambaVL model (:class:`~mambavl.MambaVLModel` and its heads).

    The defaults are the paper's: fusion width 768, one SSM-Fusion layer with state size 16, expansion 2
    and a depthwise causal convolution of width 4; a RoBERTa text encoder of which only the embedding
    layer is used (frozen), followed by a three-layer MLP; precomputed 768-wide video features (a ViT-B
    video transformer); 97 verb and 300 noun classes (EPIC-KITCHENS-100).

    Args:
        video_config (`dict` or `PretrainedConfig`, *optional*):
            Configuration of any `transformers` video model built with ``AutoModel.from_config`` (VideoMAE,
            TimeSformer, ViViT, ...). Its ``last_hidden_state`` ``(B, F, Dv)`` gives the video tokens. Leave
            it ``None`` to feed precomputed ``video_features`` instead.
        video_feature_size (`int`, *optional*):
            Width ``Dv`` of precomputed ``video_features (B, F, Dv)``. Defaults to the video encoder's
            ``hidden_size`` when ``video_config`` is set, else to 768.
        freeze_video_encoder (`bool`, *optional*, defaults to `False`):
            Keep the video encoder's weights fixed (and the encoder in eval mode).
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Configuration of any `transformers` text model (defaults to RoBERTa-base, as in the paper).
        text_encoder_mode (`str`, *optional*, defaults to `"embeddings"`):
            ``"embeddings"``: only the text model's embedding layer is kept and used (the paper);
            ``"full"``: the whole text model's ``last_hidden_state``.
        freeze_text_encoder (`bool`, *optional*, defaults to `True`):
            Keep the text encoder's weights fixed (and the encoder in eval mode); the MLP projection trains.
        text_projection_hidden_size (`int`, *optional*):
            Hidden width of the three-layer text MLP (``Linear-ReLU-Linear-ReLU-Linear``). Defaults to
            ``hidden_size``.
        hidden_size (`int`, *optional*, defaults to 768):
            Fusion width ``D`` of video and question tokens.
        state_size (`int`, *optional*, defaults to 16):
            SSM state size ``N``.
        expand (`int`, *optional*, defaults to 2):
            Expansion of the mixers: the scan runs over ``d_inner = expand * hidden_size`` channels.
        conv_kernel (`int`, *optional*, defaults to 4):
            Width of each mixer's depthwise causal convolution.
        time_step_rank (`int` or `"auto"`, *optional*, defaults to `"auto"`):
            Rank of the Δ projection; ``"auto"`` is ``ceil(hidden_size / 16)``.
        time_step_min (`float`, *optional*, defaults to 0.001):
            Smallest initial step Δ (the ``dt_proj`` bias is initialised so that ``softplus(bias)`` is
            log-uniform in ``[time_step_min, time_step_max]``).
        time_step_max (`float`, *optional*, defaults to 0.1):
            Largest initial step Δ.
        time_step_floor (`float`, *optional*, defaults to 1e-4):
            Lower clamp of the initial step Δ.
        time_step_scale (`float`, *optional*, defaults to 1.0):
            Scale of the ``dt_proj`` weight initialisation.
        time_step_init_scheme (`str`, *optional*, defaults to `"random"`):
            ``"random"`` (uniform) or ``"constant"`` initialisation of the ``dt_proj`` weight.
        use_conv_bias (`bool`, *optional*, defaults to `True`):
            Bias in the causal convolutions.
        use_bias (`bool`, *optional*, defaults to `False`):
            Bias in the mixers' ``in_proj`` and ``out_proj``.
        fusion_type (`str`, *optional*, defaults to `"mamba"`):
            ``"mamba"``: SSM-Fusion (the paper). ``"transformer"`` and ``"mlp"``: the ablation baselines (a pre-norm
            transformer over ``[video; question]`` tokens, or an MLP over concatenated pooled features), with the
            same encoders, heads and losses.
        fusion_transformer_depth (`int`, *optional*, defaults to 6):
            Layers of the transformer fusion (the paper compares 6x4 and 12x12).
        fusion_transformer_heads (`int`, *optional*, defaults to 4):
            Attention heads of the transformer fusion.
        fusion_mlp_hidden_size (`int`, *optional*):
            Hidden width of the MLP fusion (defaults to ``2 * hidden_size``).
        num_fusion_layers (`int`, *optional*, defaults to 1):
            Number of stacked SSM-Fusion layers (pre-norm residual blocks).
        fusion_scan (`str`, *optional*, defaults to `"separate"`):
            ``"separate"``: video and question tokens are scanned separately, coupled only through the shared
            ``A`` (Algorithm 1 of the paper). ``"joint"``: one scan over ``[video; question]`` so that question
            tokens read the video's state (each modality still has its own ``B``, ``C`` and ``Δ``).
        pool_window (`int`, *optional*):
            ``None`` (default): ``pool(y^V)`` is the mean of every fused video token (of the clip, or seen so far by
            a stream). ``W``: the mean of the last ``W`` fused video tokens (their states still carry the whole
            history), so a stream pools in O(W) memory; see :class:`~mambavl.MambaVLCache`. Mamba fusion only.
        ssm_backend (`str`, *optional*, defaults to `"auto"`):
            Selective-scan implementation: ``"auto"`` (mamba-ssm's CUDA kernel on CUDA when installed, else the
            PyTorch scan), ``"cuda"``, ``"torch"`` or ``"reference"`` (see :func:`mambavl.ops.selective_scan`).
        layer_norm_epsilon (`float`, *optional*, defaults to 1e-5):
            Epsilon of the RMS norms of the fusion layers.
        num_verb_classes (`int`, *optional*, defaults to 97):
            Number of verb classes (EPIC-KITCHENS-100 has 97).
        num_noun_classes (`int`, *optional*, defaults to 300):
            Number of noun classes (EPIC-KITCHENS-100 has 300).
        verb_id2label (`dict[int, str]`, *optional*):
            Verb class names by class id (every id ``0..num_verb_classes-1``), used by prediction helpers;
            :func:`mambavl.data.label_config` fills it from a class list.
        noun_id2label (`dict[int, str]`, *optional*):
            Noun class names by class id, likewise.
        verb_label2id (`dict[str, int]`, *optional*):
            Inverse of ``verb_id2label`` (derived from it when not given; names must be unique).
        noun_label2id (`dict[str, int]`, *optional*):
            Inverse of ``noun_id2label``.
        head_dropout (`float`, *optional*, defaults to 0.0):
            Dropout before the verb and noun heads.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of linear layers outside the mixers.

    The model has two classification heads, so the single-head fields of `transformers` (``num_labels``,
    ``id2label``, ``label2id``) are refused with a ``ValueError`` (use the verb and noun fields above) and
    ``config.id2label`` / ``config.num_labels`` are ``None``.

    Example:

    >>> from mambavl import MambaVLConfig
    >>> config = MambaVLConfig(hidden_size=64, video_feature_size=32)
    >>> config.intermediate_size, config.time_step_rank
    (128, 4)
    """

    model_type = "mambavl"
    # Outputs that are not logits: `transformers.Trainer` leaves them out of the predictions it gathers, so that
    # `compute_metrics` receives `(verb_logits, noun_logits)`.
    keys_to_ignore_at_inference = [
        "verb_loss", "noun_loss", "verb_features", "noun_features", "video_hidden_states", "hidden_states",
        "video_attentions", "verb_question_attentions", "noun_question_attentions", "cache",
    ]  # fmt: skip
    sub_configs_defaults = {
        "video_config": SubConfigSpec(config_class=AutoConfig, model_type="videomae", optional=True),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="roberta"),
    }

    video_config: dict | PretrainedConfig | None = None
    video_feature_size: int | None = None
    freeze_video_encoder: bool = False
    text_config: dict | PretrainedConfig | None = None
    text_encoder_mode: str = "embeddings"
    freeze_text_encoder: bool = True
    text_projection_hidden_size: int | None = None
    hidden_size: int = 768
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4
    time_step_rank: int | str = "auto"
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_scale: float = 1.0
    time_step_init_scheme: str = "random"
    use_conv_bias: bool = True
    use_bias: bool = False
    fusion_type: str = "mamba"
    fusion_transformer_depth: int = 6
    fusion_transformer_heads: int = 4
    fusion_mlp_hidden_size: int | None = None
    num_fusion_layers: int = 1
    fusion_scan: str = "separate"
    pool_window: int | None = None
    ssm_backend: str = "auto"
    layer_norm_epsilon: float = 1e-5
    num_verb_classes: int = 97
    num_noun_classes: int = 300
    verb_id2label: dict[int, str] | None = None
    noun_id2label: dict[int, str] | None = None
    verb_label2id: dict[str, int] | None = None
    noun_label2id: dict[str, int] | None = None
    head_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs: Any) -> None:
        found = kwargs.get("model_type", self.model_type)
        if found != self.model_type:  # e.g. the config.json of a BERT folder
            raise ValueError(f"This is the configuration of a {found!r} model, not of a MambaVL model ('mambavl').")
        _reject_single_head_labels(self, kwargs)
        _warn_unknown_kwargs(type(self).__name__, kwargs)
        super().__post_init__(**kwargs)
        # A two-head model has no single label space: `id2label` / `label2id` stay absent (the base class fills a
        # two-label default).
        self.id2label = self.label2id = None
        self._validate()
        if self.time_step_rank == "auto":
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        if self.fusion_mlp_hidden_size is None:
            self.fusion_mlp_hidden_size = 2 * self.hidden_size
        if self.text_projection_hidden_size is None:
            self.text_projection_hidden_size = self.hidden_size
        if self.video_feature_size is None:
            self.video_feature_size = (
                self.video_config.hidden_size if self.video_config is not None else DEFAULT_VIDEO_FEATURE_SIZE
            )
        for kind, num in (("verb", self.num_verb_classes), ("noun", self.num_noun_classes)):
            _set_label_maps(self, kind, num)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in ("id2label", "label2id") and value is not None and getattr(self, "_post_init_done", False):
            raise ValueError(_SINGLE_HEAD_MESSAGE.format(name=key))  # e.g. from_pretrained(folder, id2label=...)
        super().__setattr__(key, value)

    @property
    def num_labels(self) -> None:
        """``None``: MambaVL has a verb head and a noun head, see ``num_verb_classes`` and ``num_noun_classes``."""
        return None

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if getattr(self, "_post_init_done", False):  # the base class sets its default while initialising
            raise ValueError(_SINGLE_HEAD_MESSAGE.format(name="num_labels"))

    @property
    def intermediate_size(self) -> int:
        """Width ``d_inner = expand * hidden_size`` of the selective scan."""
        return self.expand * self.hidden_size

    def _validate(self) -> None:
        def positive_int(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")

        def choice(name: str, options: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in options:
                raise ValueError(f"`{name}` must be one of {options}, got {value!r}.")

        def flag(name: str) -> None:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")

        def number(name: str, low: float, high: float = math.inf, *, low_closed: bool, high_closed: bool = False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
            if not ((low <= value) if low_closed else (low < value)) or not (
                (value <= high) if high_closed else (value < high)
            ):
                interval = f"{'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"
                raise ValueError(f"`{name}` must be in {interval}, got {value!r}.")

        for name in (
            "hidden_size", "state_size", "expand", "conv_kernel", "num_fusion_layers", "fusion_transformer_depth",
            "fusion_transformer_heads",
        ):  # fmt: skip
            positive_int(name)
        for name in ("num_verb_classes", "num_noun_classes"):
            positive_int(name)
        for name in ("video_feature_size", "text_projection_hidden_size", "fusion_mlp_hidden_size", "pool_window"):
            positive_int(name, allow_none=True)
        for name in ("freeze_video_encoder", "freeze_text_encoder", "use_conv_bias", "use_bias"):
            flag(name)
        choice("text_encoder_mode", TEXT_ENCODER_MODES)
        choice("fusion_type", FUSION_TYPES)
        choice("fusion_scan", FUSION_SCANS)
        choice("ssm_backend", SSM_BACKENDS)
        choice("time_step_init_scheme", ("random", "constant"))
        if self.time_step_rank != "auto":
            positive_int("time_step_rank")
        # Every float field: a finite number in its range (Δ's initial range and floor, the init scales, ...).
        number("time_step_min", 0.0, low_closed=False)
        number("time_step_max", 0.0, low_closed=False)
        if not self.time_step_min <= self.time_step_max:
            raise ValueError(
                "`time_step_min` and `time_step_max` must satisfy 0 < time_step_min <= time_step_max, got "
                f"time_step_min={self.time_step_min!r}, time_step_max={self.time_step_max!r}."
            )
        number("time_step_floor", 0.0, low_closed=False)
        number("time_step_scale", 0.0, low_closed=False)  # scale of the dt_proj weight initialisation
        number("initializer_range", 0.0, low_closed=False)  # standard deviation of the normal initialisation
        number("head_dropout", 0.0, 1.0, low_closed=True)
        number("layer_norm_epsilon", 0.0, low_closed=False)
        if self.fusion_type == "transformer" and self.hidden_size % self.fusion_transformer_heads:
            raise ValueError(
                f"`fusion_transformer_heads` ({self.fusion_transformer_heads}) must divide `hidden_size` "
                f"({self.hidden_size})."
            )
        if self.video_config is not None and not hasattr(self.video_config, "hidden_size"):
            raise ValueError(
                f"`video_config` ({type(self.video_config).__name__}) has no `hidden_size`: MambaVL needs a "
                "video model whose `last_hidden_state` is a token sequence (VideoMAE, TimeSformer, ViViT, ...)."
            )
        if (
            self.video_config is not None
            and self.video_feature_size is not None
            and self.video_feature_size != self.video_config.hidden_size
        ):
            raise ValueError(
                f"`video_feature_size` ({self.video_feature_size}) must equal the video encoder's hidden_size "
                f"({self.video_config.hidden_size}) when `video_config` is set: precomputed features then come "
                "from that encoder."
            )


# Keyword arguments that transformers itself passes through (or once wrote into) configs: attributes of
# PretrainedConfig, generation parameters popped by it, keys of older config.json files, and the auto_map that
# every saved MambaVL folder carries (mambavl.hub).
_TRANSFORMERS_KWARGS = frozenset(
    {
        "attn_implementation", "experts_implementation", "rope_theta", "rope_parameters", "torchscript",
        "use_bfloat16", "pruned_heads", "tie_word_embeddings", "is_decoder", "add_cross_attention",
        "cross_attention_hidden_size", "tie_encoder_decoder", "finetuning_task", "tokenizer_class", "prefix",
        "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id",
        "task_specific_params", "tf_legacy_loss", "gradient_checkpointing", "use_cache", "auto_map",
        "custom_pipelines",
    }
)  # fmt: skip
_warned_kwargs: set[tuple[str, str]] = set()


def _is_transformers_kwarg(key: str) -> bool:
    if key.startswith("_") or key in _TRANSFORMERS_KWARGS or hasattr(PretrainedConfig, key):
        return True
    try:
        from transformers import GenerationConfig

        return key in GenerationConfig._get_default_generation_params()
    except (ImportError, AttributeError):
        return False


def _warn_unknown_kwargs(class_name: str, kwargs: dict[str, Any]) -> None:
    """Warn (once per name) about keyword arguments that are neither config fields nor transformers' own.

    They are still kept as attributes, as transformers does, so that a config written by a newer version loads.
    """
    import difflib
    import logging

    fields = set(MambaVLConfig.__dataclass_fields__)
    for key in sorted(kwargs):
        if _is_transformers_kwarg(key) or (class_name, key) in _warned_kwargs:
            continue
        _warned_kwargs.add((class_name, key))
        close = difflib.get_close_matches(key, sorted(fields), n=1)
        logging.getLogger(__name__).warning(
            "%s got the unknown keyword argument %r: MambaVL does not use it (it is kept as an attribute)%s",
            class_name,
            key,
            f"; did you mean {close[0]!r}?" if close else ".",
        )
