"""Parameter and FLOP reports of MambaVL models (the paper's "GFLOPs / Params" comparison).

* :func:`count_parameters` splits a model's parameters into video encoder, video projection, text encoder, text
  projection, fusion and heads.
* :func:`count_flops` counts the forward FLOPs of one call with PyTorch's
  :class:`~torch.utils.flop_counter.FlopCounterMode`, in total, per module and per operator.

FLOP conventions
----------------
PyTorch's counter counts a multiply-add as **2 FLOPs** (a ``(m, k) @ (k, n)`` matmul is ``2·m·k·n``) and counts only
matrix products, convolutions and attention; elementwise work (norms, activations, softmax, ...) is not counted.
Papers that use fvcore (and the MambaVL paper's "GFLOPs", e.g. ViT-B/16 video transformers at ~180 "GFLOPs" for
16x224x224) count a multiply-add as **1**: divide :attr:`FlopReport.total` by 2 (:attr:`FlopReport.macs`) to compare.

Two additions make the count complete for MambaVL:

* **Selective scan.** The scan is a recurrence of elementwise products that the counter cannot see (and the
  ``"torch"`` backend's internal ``y = H @ C`` batched matmul would be counted by accident). While counting,
  every ``mambavl.ops.selective_scan`` call is routed through one custom operator,
  ``torch.ops.mambavl.counted_selective_scan`` (:func:`count_selective_scans`), that runs the real scan (or, on the
  ``meta`` device, only computes shapes) and is counted analytically by :func:`selective_scan_flops`::

      flops = 9·b·d·l·n  (+ b·d·l with the skip D)  (+ b·d·l with the gate z)

  ``9·b·d·l·n`` is the estimate of mamba-ssm's authors (state-spaces/mamba issue #110; also used by VMamba) for
  ``exp(Δ·A)``, ``Δ·B·u``, the state update ``h = Ā·h + B̄·u`` and the readout ``y = C·h``, per element of the
  ``(b, d, l, n)`` state history; the ``D`` and ``z`` terms count one operation per output element. The step's bias
  and softplus are not counted (as in that estimate). The scan's FLOPs are reported on their own line
  (:attr:`FlopReport.selective_scan`) and are included in the total and in the modules that call it.
* **Flash attention on CPU.** PyTorch's counter (2.13) has no formula for the CPU flash-attention kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``) that SDPA runs on CPU, so attention would count as 0 there;
  :func:`count_flops` adds PyTorch's own SDPA formula (``4·b·h·L_q·L_k·e``) for it.

Counting on the ``meta`` device
-------------------------------
Nothing needs real values: build the model under ``with torch.device("meta"):`` and pass ``meta`` tensors to count a
paper-sized model in about a second without allocating memory. Leave the attention masks out (``None``) on ``meta``:
the model checks mask values (a row with no token, left padding), which ``meta`` tensors do not have.

Example:

>>> import torch
>>> from mambavl.utils import count_flops
>>> report = count_flops(torch.nn.Linear(8, 4, bias=False), {"input": torch.randn(3, 8)})
>>> report.total  # 2 * 8 * 4 * 3
192
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

from .ops import selective_scan as _selective_scan
from .ops.selective_scan import _compute_dtype

__all__ = [
    "FlopReport",
    "ParameterCount",
    "count_flops",
    "count_parameters",
    "count_selective_scans",
    "selective_scan_flops",
]

# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------


def _unique_parameters(module: nn.Module | None) -> dict[int, nn.Parameter]:
    return {} if module is None else {id(p): p for p in module.parameters()}


def _numel(params: Mapping[int, nn.Parameter]) -> int:
    return sum(p.numel() for p in params.values())


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of a MambaVL model, each parameter counted once (shared tensors are not counted twice).

    Args:
        total: all parameters.
        trainable: parameters with ``requires_grad`` (the frozen text encoder is not trainable by default).
        fusion: what the fusion adds to the backbones: :attr:`fusion_module` + :attr:`text_projection` (the
            paper's "148M -> 157M" step; the text MLP exists only to feed the fusion).
        fusion_module: ``model.base_model.fusion`` alone.
        text_projection: the three-layer MLP after the text encoder.
        video_encoder: the video backbone (0 when the model takes precomputed features).
        video_projection: the linear map from the video tokens' width to the fusion width.
        text_encoder: the text backbone (RoBERTa's embedding layer by default).
        heads: everything outside ``model.base_model`` (the verb and noun classifiers).
    """

    total: int
    trainable: int
    fusion: int
    fusion_module: int
    text_projection: int
    video_encoder: int
    video_projection: int
    text_encoder: int
    heads: int

    @property
    def frozen(self) -> int:
        """Parameters without ``requires_grad``."""
        return self.total - self.trainable

    @property
    def backbone(self) -> int:
        """Everything but the fusion: ``total - fusion`` (encoders, video projection and heads)."""
        return self.total - self.fusion

    def to_dict(self) -> dict[str, int]:
        """The counts as a plain dict, with ``frozen`` and ``backbone``."""
        return {**asdict(self), "frozen": self.frozen, "backbone": self.backbone}


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count a MambaVL model's parameters, in total and per part.

    Args:
        model: a :class:`~mambavl.MambaVLModel` or a model with heads (``MambaVLForActionRecognition``); parts that
            a model lacks count 0. Works on any device, ``meta`` included.

    Returns:
        :class:`ParameterCount`.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    base = getattr(model, "base_model", model)
    text_encoder = getattr(base, "text_encoder", None)
    text_projection = getattr(text_encoder, "projection", None)
    everything = _unique_parameters(model)
    text_projection_params = _unique_parameters(text_projection)
    text_params = {k: v for k, v in _unique_parameters(text_encoder).items() if k not in text_projection_params}
    fusion_params = _unique_parameters(getattr(base, "fusion", None))
    base_params = _unique_parameters(base)
    return ParameterCount(
        total=_numel(everything),
        trainable=sum(p.numel() for p in everything.values() if p.requires_grad),
        fusion=_numel({**fusion_params, **text_projection_params}),
        fusion_module=_numel(fusion_params),
        text_projection=_numel(text_projection_params),
        video_encoder=_numel(_unique_parameters(getattr(base, "video_encoder", None))),
        video_projection=_numel(_unique_parameters(getattr(base, "video_projection", None))),
        text_encoder=_numel(text_params),
        heads=_numel({k: v for k, v in everything.items() if k not in base_params}),
    )


# --------------------------------------------------------------------------------------------
# selective-scan FLOPs
# --------------------------------------------------------------------------------------------


def selective_scan_flops(
    batch: int, dim: int, length: int, state_size: int, with_D: bool = True, with_z: bool = True
) -> int:
    """Analytic FLOPs of one selective scan (forward): ``9·b·d·l·n + b·d·l·[D] + b·d·l·[z]``.

    Args:
        batch: ``b``.
        dim: ``d``, channels scanned (``d_inner`` of a Mamba mixer).
        length: ``l``, time steps.
        state_size: ``n``.
        with_D: the skip ``D·u`` is applied (one operation per output element).
        with_z: the gate ``silu(z)`` is applied (one operation per output element).

    Returns:
        FLOPs, multiply and add counted separately (the convention of PyTorch's FLOP counter).

    Example:

    >>> selective_scan_flops(1, 1536, 1568, 16)
    351633408
    """
    for name, value in (("batch", batch), ("dim", dim), ("length", length), ("state_size", state_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
    elementwise = batch * dim * length
    return 9 * elementwise * state_size + elementwise * (int(with_D) + int(with_z))


@functools.cache
def _counted_scan_op() -> Any:
    """Define (once per process) ``torch.ops.mambavl.counted_selective_scan``: the real scan, as one operator."""
    original = _selective_scan  # captured before any patching

    @torch.library.custom_op("mambavl::counted_selective_scan", mutates_args=())
    def counted_selective_scan(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        delta_softplus: bool,
        backend: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, last_state = original(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
            return_last_state=True, backend=backend,
        )  # fmt: skip
        return out, last_state

    @counted_selective_scan.register_fake
    def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend):
        state_dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        return torch.empty_like(u), u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=state_dtype)

    return torch.ops.mambavl.counted_selective_scan


def _counted_selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, backend="auto",
    initial_state=None,
):  # fmt: skip
    """Drop-in for :func:`mambavl.ops.selective_scan` that runs as one counted operator (forward only)."""
    if initial_state is not None:
        raise ValueError(
            "count_flops counts whole-clip forwards: a scan continued from `initial_state` (a streaming step with a "
            "cache) is not supported; count the model without `cache_params`."
        )
    out, last_state = _counted_scan_op()(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), backend)
    return (out, last_state) if return_last_state else out


def _scan_flop_formula(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, *args, **kwargs) -> int:
    batch, dim, length = u_shape
    return selective_scan_flops(batch, dim, length, A_shape[1], with_D=D_shape is not None, with_z=z_shape is not None)


def _cpu_flash_attention_flop_formula(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@contextlib.contextmanager
def count_selective_scans() -> Iterator[None]:
    """Route every ``mambavl.ops.selective_scan`` call through ``torch.ops.mambavl.counted_selective_scan``.

    Inside the context, the name ``selective_scan`` in every loaded ``mambavl`` module that imported the function
    (``mambavl.fusion.ssm_fusion``, ``mambavl.ops``, ...) points to a drop-in that computes the same result as one
    custom operator, which :class:`~torch.utils.flop_counter.FlopCounterMode` counts with :func:`selective_scan_flops`
    (see :func:`count_flops`) and which runs on ``meta`` tensors. Everything is restored on exit. Forward only: the
    operator has no autograd formula, so use it under ``torch.no_grad()``.
    """
    _counted_scan_op()
    patched = []
    for name, module in list(sys.modules.items()):
        if (name == "mambavl" or name.startswith("mambavl.")) and getattr(module, "selective_scan", None) is (
            _selective_scan
        ):
            module.selective_scan = _counted_selective_scan
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            module.selective_scan = _selective_scan


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopReport:
    """Forward FLOPs of one model call (multiply and add counted separately; see the module docstring).

    Args:
        total: all counted FLOPs, the selective scan's analytic count included.
        selective_scan: the analytic FLOPs of the selective-scan calls (part of ``total``).
        by_module: FLOPs of each module that ran (the model is ``""``, children by their qualified names, e.g.
            ``"mambavl.fusion"``), up to the depth asked for.
        by_operator: FLOPs per operator (``"aten.mm"``, ``"aten.bmm"``, ``"mambavl.counted_selective_scan"``, ...).
        fusion: FLOPs added by the fusion: :attr:`fusion_module` + :attr:`text_projection` (as in
            :class:`ParameterCount`).
        fusion_module: ``model.base_model.fusion``.
        text_projection: the text MLP.
        video_encoder: the video backbone.
        video_projection: the video projection.
        text_encoder: the text backbone.
        heads: everything outside ``model.base_model``.
    """

    total: int
    selective_scan: int
    by_module: dict[str, int] = field(default_factory=dict)
    by_operator: dict[str, int] = field(default_factory=dict)
    fusion: int = 0
    fusion_module: int = 0
    text_projection: int = 0
    video_encoder: int = 0
    video_projection: int = 0
    text_encoder: int = 0
    heads: int = 0

    @property
    def macs(self) -> float:
        """``total / 2``: multiply-adds, the fvcore convention of most papers' "FLOPs"."""
        return self.total / 2

    @property
    def backbone(self) -> int:
        """Everything but the fusion: ``total - fusion``."""
        return self.total - self.fusion

    def to_dict(self) -> dict[str, Any]:
        """The report as a plain dict, with ``macs`` and ``backbone``."""
        return {**asdict(self), "macs": self.macs, "backbone": self.backbone}


def count_flops(model: nn.Module, inputs: Mapping[str, Any], depth: int = 3) -> FlopReport:
    """Count the forward FLOPs of ``model(**inputs)`` with PyTorch's FLOP counter, plus the selective scan.

    The call runs under ``torch.no_grad()`` with :func:`count_selective_scans` active. Use ``meta`` tensors (model
    built under ``torch.device("meta")``, masks left out) to count a full-size model without computing anything,
    or small real inputs.

    Args:
        model: any ``nn.Module``; for MambaVL models the report also splits the FLOPs into parts.
        inputs: keyword arguments of ``model.forward`` (e.g. ``pixel_values (B, T, C, H, W)``,
            ``verb_input_ids (B, Lv)``, ``noun_input_ids (B, Ln)``).
        depth: keep modules at most this deep in :attr:`FlopReport.by_module` (``1``: the model's children).

    Returns:
        :class:`FlopReport`.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``inputs`` not a mapping.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(inputs, Mapping):
        raise TypeError(f"`inputs` must be a mapping of keyword arguments, got {type(inputs).__name__}.")
    scan_op = _counted_scan_op()
    custom = {scan_op: _scan_flop_formula}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None and cpu_flash not in flop_registry:
        custom[cpu_flash] = _cpu_flash_attention_flop_formula
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with torch.no_grad(), count_selective_scans(), counter:
        model(**inputs)
    counts = counter.get_flop_counts()

    # The module tracker names modules "<RootClass>.<child>..."; use names relative to the model.
    root = type(model).__name__
    by_module: dict[str, int] = {}
    for name, ops in counts.items():
        if name == "Global" or not (name == root or name.startswith(root + ".")):
            continue
        relative = name[len(root) + 1 :]
        if relative.count(".") < depth:
            by_module[relative] = sum(ops.values())
    global_counts = counts.get("Global", {})
    total = sum(global_counts.values())
    by_operator = {str(op): flops for op, flops in global_counts.items()}

    base = getattr(model, "base_model", model)
    prefix = ""
    if base is not model:
        prefix = next((n + "." for n, m in model.named_children() if m is base), "")

    def module_flops(relative: str) -> int:
        return sum(counts.get(f"{root}.{prefix}{relative}", {}).values())

    base_flops = sum(counts.get(f"{root}.{prefix[:-1]}" if prefix else root, {}).values())
    fusion_module, text_projection = module_flops("fusion"), module_flops("text_encoder.projection")
    return FlopReport(
        total=total,
        selective_scan=global_counts.get(scan_op, 0),
        by_module=dict(sorted(by_module.items())),
        by_operator=by_operator,
        fusion=fusion_module + text_projection,
        fusion_module=fusion_module,
        text_projection=text_projection,
        video_encoder=module_flops("video_encoder"),
        video_projection=module_flops("video_projection"),
        text_encoder=module_flops("text_encoder.encoder"),
        heads=total - base_flops if base is not model else 0,
    )
