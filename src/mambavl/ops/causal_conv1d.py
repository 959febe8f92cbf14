"""Depthwise causal 1-D convolution with an optional fused CUDA kernel (the ``causal-conv1d`` package)."""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

__all__ = ["causal_conv1d"]

logger = logging.getLogger(__name__)


@functools.cache
def _causal_conv1d_kernel():
    """The ``causal_conv1d_fn`` CUDA kernel, or ``None`` when the package is not installed or does not load."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as error:  # ImportError, or a missing compiled extension
        logger.info("causal-conv1d unavailable (%s): using torch.nn.functional.conv1d.", error)
        return None
    return causal_conv1d_fn


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    conv_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution along the last axis: output ``t`` sees inputs ``t-k+1 .. t`` only.

    Args:
        x: ``(b, d, l)`` input.
        weight: ``(d, k)`` one filter per channel.
        bias: ``(d,)`` or ``None``.
        activation: ``"silu"`` or ``None``.
        conv_state: optional ``(b, d, k - 1)`` inputs that precede ``x`` (the ``final_state`` of the previous
            piece of the sequence); ``None`` means zeros (the start of a sequence). A sequence cut anywhere and
            convolved piece by piece, each piece with the previous one's final state, gives the uncut result.
        return_final_state: also return the last ``k - 1`` inputs, ``(b, d, k - 1)`` in ``x``'s dtype (the
            ``conv_state`` for the next piece; the state's older columns when ``l < k - 1``).

    Returns:
        ``(b, d, l)`` tensor, ``activation(conv(x) + bias)``; with ``return_final_state``, ``(out, final_state)``.

    On CUDA the fused kernel of the ``causal-conv1d`` package (``pip install "mambavl[cuda]"``) is used when it
    loads and supports the call (filter widths 2 to 4, time axis contiguous, no ``conv_state``); everywhere else
    ``torch.nn.functional.conv1d`` with left padding (or the state prepended), in ``x``'s dtype.
    """
    if activation not in ("silu", None):
        raise ValueError(f"`activation` must be 'silu' or None, got {activation!r}.")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"causal_conv1d expects x (b, d, l) and weight (d, k), got x {tuple(x.shape)} and weight "
            f"{tuple(weight.shape)}."
        )
    width = weight.shape[1]
    if conv_state is not None and tuple(conv_state.shape) != (x.shape[0], x.shape[1], width - 1):
        raise ValueError(
            f"`conv_state` must be (b, d, k - 1) = {(x.shape[0], x.shape[1], width - 1)}, got "
            f"{tuple(conv_state.shape)}."
        )
    # with a state: x with the inputs that precede it, (b, d, k - 1 + l), the state in place of the zero padding
    history = None if conv_state is None else torch.cat([conv_state.to(x.dtype), x], dim=-1)
    out = _conv(x, weight, bias, activation, width, history)
    if not return_final_state:
        return out
    history = x if history is None else history
    if history.shape[-1] < width - 1:
        history = F.pad(history, (width - 1 - history.shape[-1], 0))
    return out, history[..., history.shape[-1] - (width - 1) :]


def _conv(x, weight, bias, activation, width, history=None):
    """The convolution of ``x (b, d, l)`` after zeros (``history=None``) or as the last ``l`` outputs over
    ``history (b, d, k - 1 + l)``."""
    if (
        history is None and x.is_cuda and 2 <= width <= 4 and x.stride(-1) == 1
        and (kernel := _causal_conv1d_kernel()) is not None
    ):  # fmt: skip
        return kernel(x, weight, bias, activation=activation)
    weight = weight.to(x.dtype)  # the kernel takes a float32 filter for bf16 inputs; conv1d needs one dtype
    bias = bias.to(x.dtype) if bias is not None else None
    if history is None:
        out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])[..., : x.shape[-1]]
    else:
        out = F.conv1d(history, weight.unsqueeze(1), bias, groups=x.shape[1])  # no padding needed
    return F.silu(out) if activation == "silu" else out
