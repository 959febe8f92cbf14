"""On-device streaming: export one streaming step of a MambaVL action model to ONNX and run it with onnxruntime.

A streaming step is a pure function of tensors::

    (video_features (1, f, video_feature_size), *cache tensors)
        ->  (verb_logits (1, V), noun_logits (1, N), *updated cache tensors)

where the cache tensors are :meth:`mambavl.MambaVLCache.to_tensors` (conv and SSM states of every fusion layer,
tokens seen, the pooling state, and the stream's question tokens, encoded once). :func:`export_streaming_step`
traces it with ``torch.onnx.export`` and writes next to the ``.onnx`` file the initial cache (the questions encoded,
nothing seen yet) as ``<name>.state.safetensors``. :class:`OnnxStreamingSession` then runs the stream with
onnxruntime alone: feed each step's new video tokens, it keeps the cache arrays. ``pip install "mambavl[export]"``.

The video encoder is not part of the step (the step reads its tokens, as a feature stream does); export it with the
usual tools of its model family.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxStreamingSession", "StreamingStep", "StreamingStepExport", "export_streaming_step", "initial_cache"]

QUESTION_KEYS = ("verb_input_ids", "verb_attention_mask", "noun_input_ids", "noun_attention_mask")


class StreamingStep(nn.Module):
    """One streaming step of a MambaVL action model as a function of tensors (what is exported).

    Args:
        model: a :class:`~mambavl.MambaVLForActionRecognition` or :class:`~mambavl.MambaVLForActionAnticipation`.

    ``forward(video_features, *cache_tensors)`` returns ``(verb_logits, noun_logits, *new_cache_tensors)``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, video_features: torch.Tensor, *cache_tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from .cache import MambaVLCache

        cache = MambaVLCache.from_tensors(self.model.config, cache_tensors)
        out = self.model(video_features=video_features, cache_params=cache, use_cache=True, return_dict=True)
        return (out.verb_logits, out.noun_logits, *out.cache_params.to_tensors())


class _RMSNorm(nn.Module):
    """``nn.RMSNorm`` written with elementary operations (the ONNX exporter has no ``aten::rms_norm``)."""

    def __init__(self, norm: nn.RMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps if norm.eps is not None else torch.finfo(norm.weight.dtype).eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


def _exportable(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` with the ``reference`` scan and elementary RMS norms."""
    copied = copy.deepcopy(model).float().cpu().eval()
    copied.config.ssm_backend = "reference"
    for module in list(copied.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.RMSNorm) and child.weight is not None:
                setattr(module, name, _RMSNorm(child))
    return copied


@torch.no_grad()
def initial_cache(model: nn.Module, question_inputs: Mapping[str, torch.Tensor]) -> Any:
    """The cache of a new stream: the questions encoded (as the model's first call does), nothing seen.

    Args:
        model: the action model.
        question_inputs: ``verb_input_ids``, ``verb_attention_mask``, ``noun_input_ids``, ``noun_attention_mask``,
            each ``(1, L)`` (e.g. from :class:`~mambavl.MambaVLProcessor`).

    Returns:
        a :class:`~mambavl.MambaVLCache` with the questions set and zero states.
    """
    from .cache import MambaVLCache

    missing = [k for k in QUESTION_KEYS if k not in question_inputs]
    if missing:
        raise ValueError(f"`question_inputs` lacks {missing}.")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    questions = {k: torch.as_tensor(question_inputs[k]).to(device) for k in QUESTION_KEYS}
    probe = torch.zeros(1, 1, model.config.video_feature_size, device=device, dtype=dtype)
    primed = model(video_features=probe, **questions, use_cache=True, return_dict=True).cache_params
    fresh = MambaVLCache(model.config, 1, dtype=dtype, device=device)
    fresh.set_questions(
        primed.verb_question, primed.noun_question, primed.verb_attention_mask, primed.noun_attention_mask
    )
    return fresh


@dataclass
class StreamingStepExport:
    """What :func:`export_streaming_step` wrote.

    Attributes:
        path: the ONNX file.
        state_path: the initial cache (``<name>.state.safetensors``), one array per cache input, by input name.
        input_names: ``["video_features", "conv_states", "ssm_states", "seen_tokens", "pool_state",
            "verb_question", "verb_attention_mask", "noun_question", "noun_attention_mask"]``.
        output_names: ``["verb_logits", "noun_logits", "new_conv_states", ...]`` (the cache outputs in input order).
        tokens_per_step: ``f``, the new video tokens of each step (fixed in the graph).
    """

    path: Path
    state_path: Path
    input_names: list[str]
    output_names: list[str]
    tokens_per_step: int


def export_streaming_step(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    question_inputs: Mapping[str, torch.Tensor],
    tokens_per_step: int,
    opset_version: int = 17,
) -> StreamingStepExport:
    """Export one streaming step of ``model`` to ONNX (new video tokens + cache in, logits + cache out).

    The model is copied and traced on the CPU in float32 with the ``reference`` selective scan (plain tensor
    operations, which ONNX expresses; the ``f`` tokens of a step are unrolled in the graph). Pooling follows
    ``config.pool_window`` as in PyTorch.

    Args:
        model: a :class:`~mambavl.MambaVLForActionRecognition` / ``...ForActionAnticipation`` with
            ``fusion_type="mamba"``.
        path: the ``.onnx`` file to write (its folder is created).
        question_inputs: the stream's questions (``(1, L)`` ids and masks); they are encoded once, into the
            initial cache written beside the model.
        tokens_per_step: ``f``, the video tokens each step reads (e.g. the encoder's tokens of one window).
        opset_version: the ONNX opset.

    Returns:
        :class:`StreamingStepExport`.
    """
    from safetensors.numpy import save_file

    if getattr(model.config, "fusion_type", None) != "mamba":
        raise ValueError(f"Only the Mamba fusion streams (fusion_type='mamba'), got {model.config.fusion_type!r}.")
    if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, int) or tokens_per_step < 1:
        raise ValueError(f"`tokens_per_step` must be a positive integer, got {tokens_per_step!r}.")
    traced = _exportable(model)
    cache = initial_cache(traced, question_inputs)
    state = [t.detach() for t in cache.to_tensors()]
    from .cache import MambaVLCache

    names = list(MambaVLCache.TENSOR_NAMES)
    input_names = ["video_features", *names]
    output_names = ["verb_logits", "noun_logits", *(f"new_{n}" for n in names)]
    example = torch.zeros(1, tokens_per_step, traced.config.video_feature_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    step = StreamingStep(traced).eval()
    # The tracer warns at every Python-level shape check and int() of a shape ("might cause the trace to be
    # incorrect"): here they are the input checks and sizes that are fixed at export by design (f tokens a step,
    # batch 1, the cache's shapes), so the warnings would only alarm the user.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            step, (example, *state), str(path), input_names=input_names, output_names=output_names,
            opset_version=opset_version, dynamo=False,
        )  # fmt: skip
    state_path = path.with_suffix(".state.safetensors")
    save_file({n: t.cpu().numpy() for n, t in zip(names, state, strict=True)}, str(state_path))
    return StreamingStepExport(path, state_path, input_names, output_names, tokens_per_step)


class OnnxStreamingSession:
    """Run an exported streaming step with onnxruntime, carrying the cache arrays from step to step.

    Args:
        path: the ``.onnx`` file of :func:`export_streaming_step` (its ``.state.safetensors`` beside it).
        providers: onnxruntime execution providers (default: the CPU).

    Attributes:
        tokens_per_step: ``f``, the video tokens each :meth:`step` reads (fixed at export).
        feature_size: ``video_feature_size``, the size of each token.
        state: the carried cache arrays, in the order of the model's cache inputs.

    Example:

    >>> session = OnnxStreamingSession("step.onnx")                                  # doctest: +SKIP
    >>> verb_logits, noun_logits = session.step(tokens)  # tokens: (1, f, video_feature_size) float32  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None):
        import onnxruntime
        from safetensors.numpy import load_file

        path = Path(path)
        state_path = path.with_suffix(".state.safetensors")
        if not path.exists() or not state_path.exists():
            raise FileNotFoundError(f"Expected {path} and {state_path} (written by export_streaming_step).")
        self.session = onnxruntime.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokens_per_step = int(self.session.get_inputs()[0].shape[1])
        self.feature_size = int(self.session.get_inputs()[0].shape[2])
        initial = load_file(str(state_path))
        missing = [n for n in self.input_names[1:] if n not in initial]
        if missing:
            raise ValueError(f"{state_path} lacks the cache arrays {missing}.")
        self._initial = [initial[n] for n in self.input_names[1:]]
        self.reset()

    def reset(self) -> None:
        """Start a new stream (the initial cache: questions encoded, nothing seen)."""
        self.state = [a.copy() for a in self._initial]

    @property
    def nbytes(self) -> int:
        """Bytes of the carried cache arrays (constant along the stream)."""
        return int(sum(a.nbytes for a in self.state))

    def step(self, video_features: Any) -> tuple[np.ndarray, np.ndarray]:
        """Read ``(1, f, video_feature_size)`` (or ``(f, video_feature_size)``) new video tokens; return
        ``verb_logits (1, V), noun_logits (1, N)``."""
        x = np.ascontiguousarray(np.asarray(video_features, dtype=np.float32))
        if x.ndim == 2:
            x = x[None]
        expected = (1, self.tokens_per_step, self.feature_size)
        if x.shape != expected:
            raise ValueError(
                f"`video_features` must be {expected} (the tokens per step and video_feature_size fixed at export), "
                f"got {x.shape}."
            )
        if not np.isfinite(x).all():  # it would enter the carried state and every later step
            raise ValueError("`video_features` has NaN or infinite values; the carried state is left as it was.")
        outputs = self.session.run(None, dict(zip(self.input_names, [x, *self.state], strict=True)))
        self.state = list(outputs[2:])
        return outputs[0], outputs[1]
