"""Verify and measure MambaVL's CUDA path: mamba-ssm's selective-scan kernel and causal-conv1d, on one GPU.

Sections (each runs in its own ``try``; a failure is recorded in the JSON with its traceback, never swallowed):

Correctness (``status`` ``pass`` / ``fail`` / ``error``):

* ``scan_correctness``: ``selective_scan(..., backend="cuda")`` and ``backend="torch"`` against the ``reference``
  backend computed in float64 on the upcast inputs: the output, the last state, and the gradients of ``u, delta, A,
  B, C, D, z, delta_bias``, for float32 and bfloat16 inputs (``A``, ``D``, ``delta_bias`` float32, as the kernel
  wants), contiguous and mixer-like strided layouts, lengths 1 to past the kernel's 2048-step chunk. Error:
  ``||a - b|| / ||b||``; a non-finite value never passes. On CUDA the check fails when mamba-ssm does not import.
* ``auto_dispatch``: ``backend="auto"`` runs mamba-ssm's kernel on CUDA (its extension's entry point is called; the
  profiler's kernel names are recorded too) with a result bitwise equal to ``backend="cuda"``, and the torch backend
  on CPU.
* ``conv_correctness``: ``mambavl.ops.causal_conv1d`` (causal-conv1d's kernel on CUDA when it imports) against a
  float64 oracle, output and gradients, contiguous and channel-last layouts.
* ``model_step``: a training step of ``MambaVLForActionRecognition`` at paper width (hidden 768, state 16,
  RoBERTa-base embeddings, a ViT-B VideoMAE video encoder with random weights) under bf16 autocast: finite loss and
  gradients, the ``cuda`` and ``torch`` scan backends giving close losses and gradients for the same weights (next to
  the run-to-run noise of the ``cuda`` backend), both extensions' kernels called, an AdamW step that changes the
  weights and keeps them finite; and a float32 step on precomputed features, with tighter bounds.

Probes (``status`` as above; a ``fail`` is a limitation of the CUDA path worth knowing, not of the check):

* ``scan_edge_cases``: dtype mixtures the library passes through to the kernel (bf16 ``A``, float32 ``delta`` with
  bf16 ``u``, bf16 ``D`` / ``delta_bias``), float16, float64 (must fall back with a warning), and the gradient of
  ``last_state`` (informational: mamba-ssm ignores it).
* ``conv_edge_cases``: channels not a multiple of 8 in the channel-last layout, kernel width 5, length 1.
* ``model_step_joint``: the ``fusion_scan="joint"`` model under bf16 autocast, cuda against torch.

Measurements (``status`` ``ok`` / ``partial`` / ``skipped`` / ``error``), timed with CUDA events after a
synchronize: one warm-up call, then the median of several samples, each sample averaging enough calls to last at
least ``min_sample_ms``; peak memory is ``torch.cuda.max_memory_allocated()`` minus what was allocated before:

* ``copy_bandwidth``: a large device-to-device copy, bytes read + written, the ceiling of memory-bound code.
* ``scan_timing``: forward and forward+backward of the scan at b=2, d=1536, n=16 (the fusion at paper width), l from
  1568 (a ViT-B clip) up, cuda vs torch backends, float32 and bf16 inputs, with the achieved bandwidth from the bytes
  the scan must move (each input read once, each output written once; ``s`` = bytes per element of the input dtype)::

      forward:          s * (4*b*d*l + 2*b*n*l) + 4 * (d*n + 2*d)
                        (reads u, delta, z, B, C, A, D, delta_bias; writes out)
      forward+backward: forward + s * (7*b*d*l + 4*b*n*l) + 8 * (d*n + 2*d)
                        (reads u, delta, z, B, C, dout and A, D, delta_bias; writes du, ddelta, dz, dB, dC, dA, dD,
                        ddelta_bias)

* ``fusion_timing``: the SSM fusion against the 6x4 transformer fusion (SDPA; which kernel SDPA picks is read from
  the profiler, and which ones run at all is tried with ``torch.nn.attention.sdpa_kernel``) at 1k to 64k video tokens,
  width 768, batch 1, bf16 autocast, with the crossover token counts in time and in memory.
* ``model_timing``: the full model at batch 8 with 16x224x224 clips (VideoMAE-base), forward and forward+backward,
  cuda and torch scan backends.

Results: ``gpu_<device-name-slug>.json`` and ``.md`` in ``--output-dir`` (default on a full CUDA run:
``benchmarks/results``; a ``--device cpu`` or ``--smoke`` run writes only where ``--output-dir`` says). The JSON is
rewritten after every section, so a run cut short still leaves what it measured. A short summary table is printed
last. The exit status is 1 when a correctness section did not pass, else 0.

Usage::

    python benchmarks/gpu/check_cuda.py --device cuda                       # full run (about 5 minutes on an H100)
    python benchmarks/gpu/check_cuda.py --device cpu --smoke --output-dir /tmp/gpu_smoke   # logic check on CPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger("check_cuda")

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "benchmarks" / "results"

CORRECTNESS_SECTIONS = ("scan_correctness", "auto_dispatch", "conv_correctness", "model_step")
PROBE_SECTIONS = ("scan_edge_cases", "conv_edge_cases", "model_step_joint")
MEASUREMENT_SECTIONS = ("copy_bandwidth", "scan_timing", "fusion_timing", "model_timing")
SECTIONS = (
    "environment",
    *CORRECTNESS_SECTIONS[:2],
    "scan_edge_cases",
    "conv_correctness",
    "conv_edge_cases",
    "model_step",
    "model_step_joint",
    *MEASUREMENT_SECTIONS,
)

#: Bounds on ||a - b|| / ||b|| against the float64 reference (inputs rounded to the tested dtype, then upcast).
TOLERANCES: dict[str, dict[str, float]] = {
    "out": {"float32": 1e-5, "float16": 5e-3, "bfloat16": 1e-2},
    "grad": {"float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2},
}
#: Bounds on the cuda-vs-torch scan backend differences in a model step (relative, as above).
MODEL_TOLERANCES: dict[str, dict[str, float]] = {
    "bf16_autocast": {"loss": 1e-2, "grad": 5e-2},
    "float32": {"loss": 1e-4, "grad": 1e-3},
}

SCAN_KERNEL = "selective_scan_fwd"  # substring of mamba-ssm's forward kernel name
CONV_KERNEL = "causal_conv1d"  # substring of causal-conv1d's kernel names


# --------------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """Problem sizes of one run (``FULL`` on a GPU, ``SMOKE`` for a quick logic check)."""

    scan_cases: list[dict[str, Any]]  # correctness: b, d, n, l, layout
    conv_cases: list[dict[str, Any]]  # correctness: b, d, l, k, layout, activation
    edge_shape: tuple[int, int, int, int]  # b, d, n, l of auto_dispatch and scan_edge_cases
    paper_model: bool  # model_step at paper width (else tiny configs)
    step_batch: int
    feature_tokens: int  # video tokens of the precomputed-feature model steps
    copy_mib: int
    scan_shape: dict[str, int]  # timing: b, d, n
    scan_lengths: list[int]
    scan_torch_max_l: int
    fusion_tokens: list[int]
    fusion_width: int
    fusion_depth: int
    question_tokens: int
    model_timing_batch: int
    repeats: int
    min_sample_ms: float
    case_budget_s: float


FULL = Plan(
    scan_cases=[
        {"b": 2, "d": 96, "n": 16, "l": 1, "layout": "contiguous"},
        {"b": 2, "d": 96, "n": 16, "l": 37, "layout": "contiguous"},
        {"b": 2, "d": 128, "n": 16, "l": 512, "layout": "mixer"},
        {"b": 1, "d": 64, "n": 16, "l": 2100, "layout": "contiguous"},
        {"b": 2, "d": 96, "n": 4, "l": 300, "layout": "mixer"},
    ],
    conv_cases=[
        {"b": 2, "d": 128, "l": 300, "k": 4, "layout": "contiguous", "activation": "silu"},
        {"b": 2, "d": 128, "l": 300, "k": 4, "layout": "channel_last", "activation": "silu"},
        {"b": 2, "d": 64, "l": 77, "k": 3, "layout": "contiguous", "activation": None},
        {"b": 1, "d": 64, "l": 77, "k": 2, "layout": "channel_last", "activation": "silu"},
    ],
    edge_shape=(2, 64, 16, 200),
    paper_model=True,
    step_batch=2,
    feature_tokens=1568,
    copy_mib=2048,
    scan_shape={"b": 2, "d": 1536, "n": 16},
    scan_lengths=[1568, 4096, 16384, 65536, 262144],
    scan_torch_max_l=16384,
    fusion_tokens=[1024 * 2**i for i in range(7)],  # 1k .. 64k
    fusion_width=768,
    fusion_depth=6,
    question_tokens=16,
    model_timing_batch=8,
    repeats=10,
    min_sample_ms=5.0,
    case_budget_s=4.0,
)

SMOKE = Plan(
    scan_cases=[
        {"b": 2, "d": 8, "n": 4, "l": 1, "layout": "contiguous"},
        {"b": 2, "d": 8, "n": 4, "l": 9, "layout": "mixer"},
        {"b": 1, "d": 6, "n": 3, "l": 33, "layout": "contiguous"},
    ],
    conv_cases=[
        {"b": 2, "d": 16, "l": 20, "k": 4, "layout": "contiguous", "activation": "silu"},
        {"b": 2, "d": 16, "l": 20, "k": 4, "layout": "channel_last", "activation": "silu"},
        {"b": 1, "d": 8, "l": 9, "k": 3, "layout": "contiguous", "activation": None},
    ],
    edge_shape=(1, 8, 4, 16),
    paper_model=False,
    step_batch=2,
    feature_tokens=12,
    copy_mib=8,
    scan_shape={"b": 1, "d": 16, "n": 4},
    scan_lengths=[32, 64],
    scan_torch_max_l=64,
    fusion_tokens=[16, 32],
    fusion_width=32,
    fusion_depth=1,
    question_tokens=5,
    model_timing_batch=2,
    repeats=1,
    min_sample_ms=0.0,
    case_budget_s=1.0,
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def rel_err(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """``||a - b|| / ||b||`` in float64; ``inf`` when either holds a non-finite value or only one is ``None``."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    a, b = a.detach().double(), b.detach().double().to(a.device)
    if a.shape != b.shape or not bool(torch.isfinite(a).all()) or not bool(torch.isfinite(b).all()):
        return math.inf
    den = b.norm().item()
    num = (a - b).norm().item()
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        return f"{x:.{digits}e}" if (x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e5)) else f"{x:.{digits}f}"
    return str(x)


def _json_safe(obj: Any) -> Any:
    """Non-finite floats as strings ("inf", "nan"), tuples as lists, unknown objects as ``str``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    return str(obj)


def slugify(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


class Deadline:
    """Seconds left of the run's ``--time-budget``."""

    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def remaining(self) -> float:
        return self.end - time.monotonic()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, plan: Plan, budget_s: float | None = None) -> dict:
    """Median time of ``fn`` in ms: one warm-up call, then up to ``plan.repeats`` samples of ``k`` calls each.

    ``k`` makes one sample last at least ``plan.min_sample_ms`` (so event and launch overheads average out); the
    number of samples is cut to fit ``budget_s`` (at least 2). With ``plan.repeats == 1`` (smoke runs) the warm-up
    call is the only one.
    """
    budget_s = plan.case_budget_s if budget_s is None else budget_s

    def sample(k: int) -> float:
        synchronize(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(k):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / k
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        return (time.perf_counter() - t0) * 1e3 / k

    first = sample(1)  # one-time costs (allocator growth, cuBLAS / Triton set-up)
    if plan.repeats <= 1:  # smoke runs: the script's logic, not the numbers
        return {"median_ms": first, "min_ms": first, "samples": 1, "calls_per_sample": 1, "first_call_ms": first}
    one = sample(1) if first < budget_s * 1e3 / 4 else first
    k = max(1, math.ceil(plan.min_sample_ms / max(one, 1e-3)))
    n = int(min(plan.repeats, max(2, budget_s * 1e3 // max(one * k, 1e-3))))
    times = [sample(k) for _ in range(n)]
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "samples": n,
        "calls_per_sample": k,
        "first_call_ms": first,
    }


def peak_memory_mib(
    fn: Callable[[], Any], device: torch.device, prepare: Callable[[], Any] | None = None
) -> float | None:
    """Peak memory of one call of ``fn`` above what was allocated before it (CUDA only; ``None`` on CPU).

    ``prepare`` runs first, outside the measurement (e.g. dropping the gradients of earlier calls, so that the
    gradients this call makes count and the ones it frees do not).
    """
    if device.type != "cuda":
        return None
    if prepare is not None:
        prepare()
    _free(device)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _drop_grads(module: torch.nn.Module | None, tensors: Any = ()) -> None:
    """Set the gradients of ``module``'s parameters and of ``tensors`` to ``None``."""
    if module is not None:
        module.zero_grad(set_to_none=True)
    for t in tensors:
        t.grad = None


def profiled_names(fn: Callable[[], Any], device: torch.device) -> set[str]:
    """Names of the operators and (on CUDA) GPU kernels that one call of ``fn`` ran."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    return {event.key for event in prof.key_averages()}


#: Entry points of the compiled extensions, looked up on their modules at every call by the Python wrappers of
#: mamba-ssm (``SelectiveScanFn``) and causal-conv1d (its ``custom_op`` functions).
EXTENSION_ENTRY_POINTS = (
    "selective_scan_cuda.fwd",
    "selective_scan_cuda.bwd",
    "causal_conv1d_cuda.causal_conv1d_fwd",
    "causal_conv1d_cuda.causal_conv1d_bwd",
)


@contextlib.contextmanager
def count_extension_calls() -> Iterator[dict[str, int]]:
    """Count calls of the compiled kernels' entry points (those that import) while the block runs.

    This sees the kernels without the profiler: each entry point is wrapped on its module and restored afterwards.
    """
    counts = dict.fromkeys(EXTENSION_ENTRY_POINTS, 0)
    patched = []
    for qualname in EXTENSION_ENTRY_POINTS:
        module_name, attr = qualname.split(".")
        try:
            module = importlib.import_module(module_name)
            original = getattr(module, attr)
        except Exception:
            continue

        def wrapper(*args: Any, _original: Any = original, _name: str = qualname, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _original(*args, **kwargs)

        setattr(module, attr, wrapper)
        patched.append((module, attr, original))
    try:
        yield counts
    finally:
        for module, attr, original in patched:
            setattr(module, attr, original)


def kernels_run(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Which compiled kernels one call of ``fn`` ran: extension call counts, and GPU kernel names (profiler)."""
    with count_extension_calls() as counts:
        fn()
        synchronize(device)
    seen: dict[str, Any] = {
        "calls": dict(counts),
        "selective_scan": counts["selective_scan_cuda.fwd"] > 0,
        "causal_conv1d": counts["causal_conv1d_cuda.causal_conv1d_fwd"] > 0,
    }
    try:
        names = profiled_names(fn, device)
        seen["profiler_kernels"] = sorted(n for n in names if "selective_scan" in n or CONV_KERNEL in n)[:10]
        seen["profiler_saw_scan_kernel"] = any(SCAN_KERNEL in n for n in names)
    except Exception as exc:  # the profiler is a second opinion only
        seen["profiler_error"] = f"{type(exc).__name__}: {exc}"
    return seen


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled):
        yield


def mamba_ssm_state() -> dict[str, Any]:
    """Whether the library sees mamba-ssm and causal-conv1d, with versions and import errors."""
    from mambavl.ops import is_mamba_ssm_available, mamba_ssm_import_error
    from mambavl.ops.causal_conv1d import _causal_conv1d_kernel

    state: dict[str, Any] = {
        "mamba_ssm_available": is_mamba_ssm_available(),
        "mamba_ssm_import_error": mamba_ssm_import_error(),
        "causal_conv1d_kernel_available": _causal_conv1d_kernel() is not None,
    }
    for module, key in (
        ("mamba_ssm", "mamba_ssm"),
        ("causal_conv1d", "causal_conv1d"),
        ("selective_scan_cuda", None),
        ("causal_conv1d_cuda", None),
    ):
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            state[f"{module}_error"] = f"{type(exc).__name__}: {exc}"
            continue
        if key:
            state[f"{key}_version"] = getattr(mod, "__version__", None)
        state[f"{module}_file"] = getattr(mod, "__file__", None)
    return state


# --------------------------------------------------------------------------------------------
# scan correctness
# --------------------------------------------------------------------------------------------

SCAN_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_scan_inputs(
    b: int,
    d: int,
    n: int,
    L: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    full: bool = True,
    layout: str = "contiguous",
    weight_dtype: torch.dtype = torch.float32,
    delta_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor | None]:
    """Fresh random scan inputs in mamba-ssm's layouts (never zeros).

    ``full``: with ``D``, ``z`` and ``delta_bias`` (and softplus) as in the model; else none of them. ``layout``
    ``"mixer"`` gives ``u, delta, z, B, C`` the strides the fusion's mixers produce (views of ``(b, l, k)``
    projections, so only ``stride(1) == 1``).
    """

    def seq(k: int, dt: torch.dtype, scale: float = 1.0, shift: float = 0.0, positive: bool = False) -> torch.Tensor:
        if layout == "mixer":
            t = torch.randn(b, L, 2 * k, device=device)[..., :k].transpose(1, 2)  # like in_proj(...).chunk
        else:
            t = torch.randn(b, k, L, device=device)
        t = t.abs() * scale + shift if positive else t * scale + shift
        return t.to(dt)

    delta_dtype = dtype if delta_dtype is None else delta_dtype
    return {
        "u": seq(d, dtype),
        "delta": seq(d, delta_dtype, 0.5, -1.0) if full else seq(d, delta_dtype, 0.3, 0.01, positive=True),
        "A": (-(0.1 + 2 * torch.rand(d, n, device=device))).to(weight_dtype),
        "B": seq(n, dtype),
        "C": seq(n, dtype),
        "D": torch.randn(d, device=device).to(weight_dtype) if full else None,
        "z": seq(d, dtype) if full else None,
        "delta_bias": (0.5 * torch.rand(d, device=device)).to(weight_dtype) if full else None,
    }


def _copy_strided(t: torch.Tensor) -> torch.Tensor:
    """A new leaf tensor with ``t``'s values *and strides* (``clone`` makes gapped views contiguous)."""
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    return out.copy_(t.detach())


def run_scan(
    inputs: dict[str, torch.Tensor | None],
    backend: str,
    softplus: bool,
    weight: torch.Tensor,
    *,
    float64: bool = False,
    last_state_grad: bool = False,
) -> dict[str, Any]:
    """Forward + backward of ``selective_scan`` on copies of ``inputs``; returns out, last state and gradients.

    The loss is ``sum(out * weight)`` (``weight`` rounded to the output dtype, which is what reaches the kernel's
    backward), plus ``sum(last_state)`` with ``last_state_grad``. ``float64``: upcast every input first.
    """
    from mambavl.ops import selective_scan

    leaves = {
        k: None if v is None else (v.detach().double() if float64 else _copy_strided(v)).requires_grad_(True)
        for k, v in inputs.items()
    }
    out, last = selective_scan(
        **{k: leaves[k] for k in SCAN_NAMES}, delta_softplus=softplus, return_last_state=True, backend=backend
    )
    w = weight.to(inputs["u"].dtype).to(out.dtype)
    loss = (out * w).sum()
    if last_state_grad:
        loss = loss + last.sum()
    loss.backward()
    return {
        "out": out.detach(),
        "last_state": last.detach(),
        "out_dtype": str(out.dtype).replace("torch.", ""),
        "grads": {k: None if v is None else v.grad for k, v in leaves.items()},
    }


def compare_to_reference(result: dict, reference: dict) -> dict[str, Any]:
    errors = {
        "out": rel_err(result["out"], reference["out"]),
        "last_state": rel_err(result["last_state"], reference["last_state"]),
    }
    grads = {
        k: rel_err(g, reference["grads"][k]) for k, g in result["grads"].items() if reference["grads"][k] is not None
    }
    return {"errors": errors, "grad_errors": grads, "max_grad_error": max(grads.values(), default=0.0)}


def effective_scan_backend(requested: str, u: torch.Tensor, A: torch.Tensor) -> str:
    """Which implementation ``selective_scan`` runs for ``requested`` (the library's own rule)."""
    from mambavl.ops import resolve_backend

    effective = resolve_backend(requested, u, None, A)
    return effective + (" (fallback)" if requested == "cuda" and effective == "torch" else "")


def section_scan_correctness(ctx: Context) -> dict[str, Any]:
    device, plan = ctx.device, ctx.plan
    rows, failures = [], []
    state = mamba_ssm_state()
    for case in plan.scan_cases:
        for dtype in (torch.float32, torch.bfloat16):
            for full in (True, False):
                b, d, n, L = case["b"], case["d"], case["n"], case["l"]
                inputs = make_scan_inputs(b, d, n, L, dtype, device, full=full, layout=case["layout"])
                weight = torch.randn(b, d, L, device=device)
                reference = run_scan(inputs, "reference", full, weight, float64=True)
                for backend in ("cuda", "torch"):
                    dname = str(dtype).replace("torch.", "")
                    row = {
                        **case,
                        "dtype": dname,
                        "options": "D, z, delta_bias, softplus" if full else "none",
                        "backend": backend,
                        "effective": effective_scan_backend(backend, inputs["u"], inputs["A"]),
                    }
                    try:
                        row.update(compare_to_reference(run_scan(inputs, backend, full, weight), reference))
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {exc}"
                        row["ok"] = False
                        failures.append(row)
                        rows.append(row)
                        continue
                    row["ok"] = (
                        row["errors"]["out"] < TOLERANCES["out"][dname]
                        and row["errors"]["last_state"] < TOLERANCES["out"][dname]
                        and row["max_grad_error"] < TOLERANCES["grad"][dname]
                    )
                    if not row["ok"]:
                        failures.append(row)
                    rows.append(row)
    result: dict[str, Any] = {"cases": rows, "tolerances": TOLERANCES, "kernel": state}
    for backend in ("cuda", "torch"):
        for dname in ("float32", "bfloat16"):
            sel = [r for r in rows if r["backend"] == backend and r["dtype"] == dname and "errors" in r]
            result[f"max_{backend}_{dname}"] = {
                "out": max((r["errors"]["out"] for r in sel), default=None),
                "last_state": max((r["errors"]["last_state"] for r in sel), default=None),
                "grad": max((r["max_grad_error"] for r in sel), default=None),
            }
    reasons = [f"{len(failures)} of {len(rows)} comparisons out of bounds or raised"] if failures else []
    if device.type == "cuda":
        effective = {r["effective"] for r in rows if r["backend"] == "cuda"}
        if effective != {"cuda"}:
            reasons.append(
                f"backend='cuda' did not run mamba-ssm's kernel ({sorted(effective)}): "
                f"{state['mamba_ssm_import_error']}"
            )
    else:
        result["note"] = "CPU: backend='cuda' falls back to the torch backend (the warning is recorded)"
    result["status"] = "fail" if reasons else "pass"
    result["reasons"] = reasons
    return result


def section_auto_dispatch(ctx: Context) -> dict[str, Any]:
    from mambavl.ops import selective_scan

    device = ctx.device
    b, d, n, L = ctx.plan.edge_shape
    checks = []
    for dtype in (torch.float32, torch.bfloat16):
        inputs = make_scan_inputs(b, d, n, L, dtype, device)
        args = {k: inputs[k] for k in SCAN_NAMES}
        with torch.no_grad():
            auto = selective_scan(**args, delta_softplus=True, backend="auto")
            expected_backend = "cuda" if device.type == "cuda" else "torch"
            expected = selective_scan(**args, delta_softplus=True, backend=expected_backend)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                selective_scan(**args, delta_softplus=True, backend="auto")
        check = {
            "dtype": str(dtype).replace("torch.", ""),
            "expected_backend": expected_backend,
            "bitwise_equal_to_expected": bool(torch.equal(auto, expected)),
            "warnings": [str(w.message) for w in caught if "selective_scan" in str(w.message)],
        }
        if device.type == "cuda":
            with torch.no_grad():
                seen = kernels_run(lambda a=args: selective_scan(**a, delta_softplus=True, backend="auto"), device)
            check["kernels"] = seen
            check["kernel_seen"] = seen["selective_scan"]
            check["ok"] = check["kernel_seen"] and check["bitwise_equal_to_expected"] and not check["warnings"]
        else:
            check["ok"] = check["bitwise_equal_to_expected"] and not check["warnings"]
        checks.append(check)
    # float64 is not a kernel dtype: auto must pick the torch backend silently
    inputs64 = {
        k: None if v is None else v.double() for k, v in make_scan_inputs(1, 8, 4, 16, torch.float32, device).items()
    }
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto64 = selective_scan(**inputs64, delta_softplus=True, backend="auto")
    torch64 = selective_scan(**inputs64, delta_softplus=True, backend="torch")
    ours = [str(w.message) for w in caught if "selective_scan" in str(w.message)]
    checks.append(
        {
            "dtype": "float64",
            "expected_backend": "torch",
            "warnings": ours,
            "bitwise_equal_to_expected": bool(torch.equal(auto64, torch64)),
            "ok": bool(torch.equal(auto64, torch64)) and not ours,
        }
    )
    return {"status": "pass" if all(c["ok"] for c in checks) else "fail", "checks": checks}


def section_scan_edge_cases(ctx: Context) -> dict[str, Any]:
    """Inputs the library hands to the kernel unchanged although the kernel may reject them."""
    device = ctx.device
    b, d, n, L = ctx.plan.edge_shape
    bf16, f32 = torch.bfloat16, torch.float32
    cases = [
        (
            "A_bfloat16",
            "u, delta, B, C, z and A in bf16 (the library's dtype check admits A in bf16)",
            {"dtype": bf16, "weight_dtype": bf16},
            "bfloat16",
            False,
        ),
        (
            "delta_float32_u_bfloat16",
            "delta float32 with u, B, C, z bf16 (what fusion_scan='joint' makes under "
            "bf16 autocast: softplus autocasts to float32)",
            {"dtype": bf16, "delta_dtype": f32},
            "bfloat16",
            False,
        ),
        (
            "D_delta_bias_bfloat16",
            "D and delta_bias in bf16 (a model cast with .to(torch.bfloat16))",
            {"dtype": bf16, "weight_dtype": bf16},
            "bfloat16",
            False,
        ),
        ("float16", "float16 inputs, float32 A, D, delta_bias", {"dtype": torch.float16}, "float16", False),
        (
            "float64_falls_back",
            "float64 inputs with backend='cuda': must run the torch backend, with one warning",
            {"dtype": torch.float64, "weight_dtype": torch.float64},
            "float32",
            False,
        ),
        (
            "last_state_gradient",
            "loss uses last_state: mamba-ssm ignores its gradient",
            {"dtype": f32},
            "float32",
            True,
        ),
    ]
    rows = []
    for name, description, kwargs, tol_dtype, last_grad in cases:
        inputs = make_scan_inputs(b, d, n, L, device=device, **kwargs)
        if name == "A_bfloat16":  # only A low precision; D, delta_bias float32
            inputs["D"], inputs["delta_bias"] = inputs["D"].float(), inputs["delta_bias"].float()
        if name == "D_delta_bias_bfloat16":
            inputs["A"] = inputs["A"].float()
        weight = torch.randn(b, d, L, device=device)
        row: dict[str, Any] = {
            "case": name,
            "description": description,
            "informational": last_grad,
            "effective": effective_scan_backend("cuda", inputs["u"], inputs["A"]),
        }
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = run_scan(inputs, "cuda", True, weight, last_state_grad=last_grad)
            reference = run_scan(inputs, "reference", True, weight, float64=True, last_state_grad=last_grad)
            row.update(compare_to_reference(result, reference))
            row["warnings"] = [str(w.message) for w in caught]
            row["ok"] = row["errors"]["out"] < TOLERANCES["out"][tol_dtype] and (
                row["max_grad_error"] < TOLERANCES["grad"][tol_dtype]
            )
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            row["ok"] = False
        rows.append(row)
    failed = [r["case"] for r in rows if not r["ok"] and not r["informational"]]
    return {"status": "fail" if failed else "pass", "failed": failed, "cases": rows}


# --------------------------------------------------------------------------------------------
# causal conv correctness
# --------------------------------------------------------------------------------------------


def conv_oracle(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, activation: str | None) -> torch.Tensor:
    """Depthwise causal convolution written with ``unfold`` (independent of ``F.conv1d``), in x's dtype."""
    k = w.shape[1]
    windows = F.pad(x, (k - 1, 0)).unfold(-1, k, 1)  # (b, d, l, k): inputs t-k+1 .. t
    out = (windows * w[None, :, None, :]).sum(-1)
    if bias is not None:
        out = out + bias[None, :, None]
    return F.silu(out) if activation == "silu" else out


def make_conv_inputs(case: dict, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    b, d, L, k = case["b"], case["d"], case["l"], case["k"]
    if case["layout"] == "channel_last":  # like the mixer: in_proj(h).transpose(1, 2).chunk(2, dim=1)[0]
        x = torch.randn(b, L, 2 * d, device=device).to(dtype).transpose(1, 2)[:, :d]
    else:
        x = torch.randn(b, d, L, device=device).to(dtype)
    return {"x": x, "weight": torch.randn(d, k, device=device) * 0.5, "bias": torch.randn(d, device=device)}


def check_conv(case: dict, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    from mambavl.ops.causal_conv1d import _causal_conv1d_kernel, causal_conv1d

    inputs = make_conv_inputs(case, dtype, device)
    leaves = {k: _copy_strided(v).requires_grad_(True) for k, v in inputs.items()}  # keeps the layout
    ref_leaves = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    grad_w = torch.randn(case["b"], case["d"], case["l"], device=device)
    with autocast(device, enabled=dtype == torch.bfloat16):  # as in the model (weights float32, activations bf16)
        out = causal_conv1d(leaves["x"], leaves["weight"], leaves["bias"], activation=case["activation"])
    (out.float() * grad_w.to(out.dtype).float()).sum().backward()
    ref = conv_oracle(ref_leaves["x"], ref_leaves["weight"], ref_leaves["bias"], case["activation"])
    (ref * grad_w.to(out.dtype).double()).sum().backward()
    dname = str(dtype).replace("torch.", "")
    uses_kernel = device.type == "cuda" and _causal_conv1d_kernel() is not None
    grads = {k: rel_err(leaves[k].grad, ref_leaves[k].grad) for k in leaves}
    row = {
        **case,
        "dtype": dname,
        "effective": "causal-conv1d kernel" if uses_kernel else "torch conv1d",
        "out_dtype": str(out.dtype).replace("torch.", ""),
        "out_error": rel_err(out, ref),
        "grad_errors": grads,
    }
    row["ok"] = row["out_error"] < TOLERANCES["out"][dname] and max(grads.values()) < TOLERANCES["grad"][dname]
    return row


def section_conv_correctness(ctx: Context) -> dict[str, Any]:
    rows = []
    for case in ctx.plan.conv_cases:
        for dtype in (torch.float32, torch.bfloat16):
            try:
                rows.append(check_conv(case, dtype, ctx.device))
            except Exception as exc:
                rows.append({**case, "dtype": str(dtype), "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    state = mamba_ssm_state()
    reasons = (
        [f"{sum(not r['ok'] for r in rows)} of {len(rows)} cases out of bounds or raised"]
        if not all(r["ok"] for r in rows)
        else []
    )
    if ctx.device.type == "cuda" and not state["causal_conv1d_kernel_available"]:
        reasons.append(f"causal-conv1d's kernel is not available: {state.get('causal_conv1d_error')}")
    return {"status": "fail" if reasons else "pass", "reasons": reasons, "cases": rows}


def section_conv_edge_cases(ctx: Context) -> dict[str, Any]:
    cases = [
        (
            "channels_not_multiple_of_8",
            {"b": 2, "d": 60, "l": 50, "k": 4, "layout": "channel_last", "activation": "silu"},
        ),
        ("kernel_width_5", {"b": 2, "d": 64, "l": 50, "k": 5, "layout": "contiguous", "activation": "silu"}),
        ("length_1", {"b": 2, "d": 64, "l": 1, "k": 4, "layout": "contiguous", "activation": "silu"}),
    ]
    rows = []
    for name, case in cases:
        try:
            row = check_conv(case, torch.float32, ctx.device)
        except Exception as exc:
            row = {
                **case,
                "ok": False,
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            }
        rows.append({"case": name, **row})
    failed = [r["case"] for r in rows if not r["ok"]]
    return {"status": "fail" if failed else "pass", "failed": failed, "cases": rows}


# --------------------------------------------------------------------------------------------
# model steps
# --------------------------------------------------------------------------------------------


def model_config(plan: Plan, *, video_encoder: bool = True, **overrides: Any):
    """Paper-width MambaVL config (RoBERTa-base embeddings, VideoMAE-base) or, for smoke runs, a tiny one."""
    from transformers import RobertaConfig, VideoMAEConfig

    from mambavl import MambaVLConfig

    if plan.paper_model:
        text, video = RobertaConfig(), VideoMAEConfig()  # roberta-base: 50265 x 768; ViT-B/16, 16 frames of 224
        kwargs: dict[str, Any] = {"hidden_size": 768, "state_size": 16}
    else:
        text = RobertaConfig(
            vocab_size=100,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=40,
        )
        video = VideoMAEConfig(
            hidden_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=48,
            image_size=16,
            patch_size=8,
            num_frames=4,
            tubelet_size=2,
        )
        kwargs = {"hidden_size": 32, "state_size": 4, "num_verb_classes": 5, "num_noun_classes": 7}
    if video_encoder:
        kwargs["video_config"] = video
    else:
        kwargs["video_feature_size"] = video.hidden_size
    return MambaVLConfig(text_config=text, **{**kwargs, **overrides})


def model_inputs(config, batch: int, device: torch.device, *, pixels: bool, feature_tokens: int) -> dict:
    """Random inputs: clips (or features), right-padded verb/noun questions, labels."""
    vocab, pad = config.text_config.vocab_size, config.text_config.pad_token_id or 0
    inputs: dict[str, torch.Tensor] = {}
    if pixels:
        v = config.video_config
        inputs["pixel_values"] = torch.randn(batch, v.num_frames, v.num_channels, v.image_size, v.image_size)
    else:
        inputs["video_features"] = torch.randn(batch, feature_tokens, config.video_feature_size)
    for name, length in (("verb", 12), ("noun", 8)):
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[-1, length - 3 :] = 0  # right padding in the last row
        ids = torch.randint(3, vocab, (batch, length))
        inputs[f"{name}_input_ids"] = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
        inputs[f"{name}_attention_mask"] = mask
    inputs["verb_labels"] = torch.randint(0, config.num_verb_classes, (batch,))
    inputs["noun_labels"] = torch.randint(0, config.num_noun_classes, (batch,))
    return {k: v.to(device) for k, v in inputs.items()}


def set_scan_backend(model: torch.nn.Module, backend: str) -> None:
    from mambavl.fusion import SSMFusion

    model.config.ssm_backend = backend
    for module in model.modules():
        if isinstance(module, SSMFusion):
            module.config.ssm_backend = backend


def train_pass(model, inputs: dict, backend: str, *, amp: bool, device: torch.device) -> dict[str, Any]:
    """One forward + backward with the given scan backend; returns the loss and a copy of every gradient."""
    set_scan_backend(model, backend)
    model.zero_grad(set_to_none=True)
    with autocast(device, enabled=amp):
        out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": out.loss.detach().float(), "grads": grads}


def grad_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Global and per-module ``||ga - gb|| / ||gb||`` over the gradients of two passes."""
    groups: dict[str, list[float]] = {}
    total_num = total_den = 0.0
    finite = True
    for name, gb in b.items():
        ga = a.get(name)
        if ga is None or not bool(torch.isfinite(ga).all()) or not bool(torch.isfinite(gb).all()):
            finite = False
            continue
        num, den = (ga.double() - gb.double()).norm().item() ** 2, gb.double().norm().item() ** 2
        total_num, total_den = total_num + num, total_den + den
        parts = name.removeprefix("mambavl.").split(".")
        group = ".".join(parts[:2]) if parts[0] == "text_encoder" else parts[0]
        acc = groups.setdefault(group, [0.0, 0.0])
        acc[0], acc[1] = acc[0] + num, acc[1] + den
    per_group = {g: (math.sqrt(n / d) if d > 0 else (0.0 if n == 0 else math.inf)) for g, (n, d) in groups.items()}
    overall = math.sqrt(total_num / total_den) if total_den > 0 else math.inf
    return {
        "global": overall if finite else math.inf,
        "finite": finite,
        "per_module": per_group,
        "missing": sorted(set(b) ^ set(a)),
    }


def compare_backends(model, inputs, *, amp: bool, device: torch.device, tolerance: dict) -> dict[str, Any]:
    """cuda, torch, then cuda again: backend difference next to the cuda backend's run-to-run noise."""
    first = train_pass(model, inputs, "cuda", amp=amp, device=device)
    torch_pass = train_pass(model, inputs, "torch", amp=amp, device=device)
    again = train_pass(model, inputs, "cuda", amp=amp, device=device)
    result = {
        "loss_cuda": first["loss"].item(),
        "loss_torch": torch_pass["loss"].item(),
        "loss_rel_diff": rel_err(first["loss"], torch_pass["loss"]),
        "loss_rel_noise": rel_err(again["loss"], first["loss"]),
        "grad_rel_diff": grad_difference(first["grads"], torch_pass["grads"]),
        "grad_rel_noise": grad_difference(again["grads"], first["grads"])["global"],
        "num_grad_tensors": len(first["grads"]),
        "tolerance": tolerance,
    }
    result["ok"] = (
        math.isfinite(result["loss_cuda"])
        and result["grad_rel_diff"]["finite"]
        and result["loss_rel_diff"] < tolerance["loss"]
        and result["grad_rel_diff"]["global"] < tolerance["grad"]
    )
    del first, torch_pass, again
    return result


def _model_step_paper(ctx: Context, result: dict[str, Any], reasons: list[str]) -> None:
    """Paper width with the video encoder under bf16 autocast: backends, kernels seen, an AdamW step."""
    from mambavl import MambaVLForActionRecognition

    device, plan = ctx.device, ctx.plan
    torch.manual_seed(ctx.seed)
    config = model_config(plan)
    model = MambaVLForActionRecognition(config).to(device).train()
    inputs = model_inputs(config, plan.step_batch, device, pixels=True, feature_tokens=plan.feature_tokens)
    with torch.no_grad():
        video_tokens = model.mambavl.encode_video(inputs["pixel_values"]).shape[1]
    result["model"] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "batch": plan.step_batch,
        "pixel_values": list(inputs["pixel_values"].shape),
        "video_tokens": video_tokens,
        "hidden_size": config.hidden_size,
        "state_size": config.state_size,
        "text": f"{type(config.text_config).__name__} embeddings {config.text_config.vocab_size} x "
        f"{config.text_config.hidden_size}",
        "video": f"{type(config.video_config).__name__} {config.video_config.hidden_size} x "
        f"{config.video_config.num_hidden_layers} layers",
    }
    bf16 = compare_backends(model, inputs, amp=True, device=device, tolerance=MODEL_TOLERANCES["bf16_autocast"])
    result["bf16_autocast"] = bf16
    if not bf16["ok"]:
        reasons.append(f"bf16 autocast: cuda vs torch backend out of bounds or non-finite ({_short(bf16)})")

    if device.type == "cuda":  # which kernels ran in a forward + backward
        set_scan_backend(model, "cuda")

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with autocast(device):
                loss = model(**inputs).loss
            loss.backward()

        seen = kernels_run(step, device)
        result["kernels_seen"] = seen
        if not seen["selective_scan"] or not seen["calls"]["selective_scan_cuda.bwd"]:
            reasons.append(f"mamba-ssm's selective_scan kernels did not run in the model's step ({seen['calls']})")
        if not seen["causal_conv1d"]:
            reasons.append(f"causal-conv1d's kernel did not run in the model's step ({seen['calls']})")

    # AdamW step on the cuda backend's gradients
    train_pass(model, inputs, "cuda", amp=True, device=device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01).step()
    changed = sum(int(not torch.equal(p0, p.detach())) for p0, p in zip(before, trainable, strict=True))
    finite = all(bool(torch.isfinite(p).all()) for p in trainable)
    with torch.no_grad(), autocast(device):
        loss_after = model(**inputs).loss.float().item()
    result["adamw"] = {
        "tensors_changed": changed,
        "tensors": len(trainable),
        "params_finite": finite,
        "loss_before": bf16["loss_cuda"],
        "loss_after": loss_after,
    }
    if not (finite and changed > 0 and math.isfinite(loss_after)):
        reasons.append(f"AdamW step: changed {changed}/{len(trainable)} tensors, finite={finite}, loss {loss_after}")


def _model_step_float32(ctx: Context, result: dict[str, Any], reasons: list[str]) -> None:
    """float32 without autocast on precomputed features: cuda vs torch backends with tight bounds."""
    from mambavl import MambaVLForActionRecognition

    device, plan = ctx.device, ctx.plan
    torch.manual_seed(ctx.seed + 1)
    config = model_config(plan, video_encoder=False)
    model = MambaVLForActionRecognition(config).to(device).train()
    inputs = model_inputs(config, plan.step_batch, device, pixels=False, feature_tokens=plan.feature_tokens)
    fp32 = compare_backends(model, inputs, amp=False, device=device, tolerance=MODEL_TOLERANCES["float32"])
    result["float32_features"] = fp32
    if not fp32["ok"]:
        reasons.append(f"float32: cuda vs torch backend out of bounds or non-finite ({_short(fp32)})")


def section_model_step(ctx: Context) -> dict[str, Any]:
    result: dict[str, Any] = {"kernel": mamba_ssm_state()}
    reasons: list[str] = []
    for label, phase in (("paper_bf16", _model_step_paper), ("float32_features", _model_step_float32)):
        try:
            phase(ctx, result, reasons)
        except Exception as exc:
            reasons.append(f"{label} raised {type(exc).__name__}: {exc}")
            result[f"{label}_traceback"] = traceback.format_exc()
        _free(ctx.device)
    result["status"] = "fail" if reasons else "pass"
    result["reasons"] = reasons
    return result


def _short(cmp: dict) -> str:
    return (
        f"loss diff {_fmt(cmp['loss_rel_diff'])} (noise {_fmt(cmp['loss_rel_noise'])}), grad diff "
        f"{_fmt(cmp['grad_rel_diff']['global'])} (noise {_fmt(cmp['grad_rel_noise'])})"
    )


def section_model_step_joint(ctx: Context) -> dict[str, Any]:
    from mambavl import MambaVLForActionRecognition

    device, plan = ctx.device, ctx.plan
    torch.manual_seed(ctx.seed + 2)
    config = model_config(plan, video_encoder=False, fusion_scan="joint")
    model = MambaVLForActionRecognition(config).to(device).train()
    inputs = model_inputs(config, plan.step_batch, device, pixels=False, feature_tokens=plan.feature_tokens)
    result: dict[str, Any] = {}
    for label, amp, tol in (("bf16_autocast", True, "bf16_autocast"), ("float32", False, "float32")):
        try:
            result[label] = compare_backends(model, inputs, amp=amp, device=device, tolerance=MODEL_TOLERANCES[tol])
        except Exception as exc:
            result[label] = {
                "ok": False,
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            }
    del model
    _free(device)
    failed = [k for k in ("bf16_autocast", "float32") if not result[k]["ok"]]
    return {"status": "fail" if failed else "pass", "failed": failed, **result}


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------


def section_copy_bandwidth(ctx: Context) -> dict[str, Any]:
    device, plan = ctx.device, ctx.plan
    n = plan.copy_mib * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    timing = time_call(lambda: dst.copy_(src), device, plan)
    nbytes = 2 * src.numel() * src.element_size()  # read + write
    gbps = nbytes / (timing["median_ms"] * 1e-3) / 1e9
    ctx.copy_gbps = gbps
    return {
        "status": "ok",
        "bytes_read_plus_written": nbytes,
        "timing": timing,
        "gb_per_s": gbps,
        "method": "dst.copy_(src), float32, bytes read + bytes written over the median time",
    }


def scan_bytes(b: int, d: int, n: int, L: int, itemsize: int) -> dict[str, int]:
    """Fewest bytes the scan must move (each input read once, each output written once); see the module docstring."""
    params = 4 * (d * n + 2 * d)  # A, D, delta_bias in float32
    fwd = itemsize * (4 * b * d * L + 2 * b * n * L) + params
    bwd = itemsize * (7 * b * d * L + 4 * b * n * L) + 2 * params
    return {"fwd": fwd, "fwd_bwd": fwd + bwd}


def section_scan_timing(ctx: Context) -> dict[str, Any]:
    from mambavl.ops import selective_scan

    device, plan = ctx.device, ctx.plan
    b, d, n = plan.scan_shape["b"], plan.scan_shape["d"], plan.scan_shape["n"]
    rows, skipped, by_design = [], [], []  # skipped: for the time budget; by_design: the plan's limits
    last_ms: dict[tuple[str, str], tuple[int, float]] = {}
    for L in plan.scan_lengths:
        for dtype in (torch.bfloat16, torch.float32):
            for backend in ("cuda", "torch"):
                dname = str(dtype).replace("torch.", "")
                key = (backend, dname)
                if backend == "torch" and plan.scan_torch_max_l < L:
                    by_design.append({"l": L, "dtype": dname, "backend": backend, "reason": "l > scan_torch_max_l"})
                    continue
                if backend == "torch" and dtype == torch.float32 and plan.scan_lengths[0] != L:
                    by_design.append(
                        {"l": L, "dtype": dname, "backend": backend, "reason": "torch float32: first l only"}
                    )
                    continue
                if key in last_ms:  # predict from the previous length (linear in l), warm-up + 2 samples of each
                    prev_l, prev_ms = last_ms[key]
                    predicted_s = prev_ms * L / prev_l * 5 / 1e3  # warm-ups, >= 2 samples, the memory run
                    if predicted_s > ctx.deadline.remaining() - 5:
                        skipped.append(
                            {
                                "l": L,
                                "dtype": dname,
                                "backend": backend,
                                "reason": f"time budget (predicted {predicted_s:.0f} s)",
                            }
                        )
                        continue
                row: dict[str, Any] = {"b": b, "d": d, "n": n, "l": L, "dtype": dname, "backend": backend}
                try:
                    inputs = make_scan_inputs(b, d, n, L, dtype, device)
                    row["effective"] = effective_scan_backend(backend, inputs["u"], inputs["A"])
                    args = {k: inputs[k] for k in SCAN_NAMES}
                    leaves = {k: v.detach().requires_grad_(True) for k, v in args.items()}
                    dout = torch.randn(b, d, L, device=device, dtype=dtype)

                    def fwd(args=args, backend=backend) -> None:
                        with torch.no_grad():
                            selective_scan(**args, delta_softplus=True, backend=backend)

                    def fwd_bwd(leaves=leaves, backend=backend, dout=dout) -> None:
                        for v in leaves.values():
                            v.grad = None
                        selective_scan(**leaves, delta_softplus=True, backend=backend).backward(dout)

                    row["fwd"] = time_call(fwd, device, plan)
                    row["fwd_bwd"] = time_call(fwd_bwd, device, plan)
                    row["fwd_peak_mib"] = peak_memory_mib(fwd, device)
                    row["fwd_bwd_peak_mib"] = peak_memory_mib(
                        fwd_bwd, device, prepare=lambda leaves=leaves: _drop_grads(None, leaves.values())
                    )
                    nbytes = scan_bytes(b, d, n, L, torch.finfo(dtype).bits // 8)
                    row["bytes"] = nbytes
                    for mode in ("fwd", "fwd_bwd"):
                        gbps = nbytes[mode] / (row[mode]["median_ms"] * 1e-3) / 1e9
                        row[f"{mode}_gb_per_s"] = gbps
                        row[f"{mode}_fraction_of_copy"] = gbps / ctx.copy_gbps if ctx.copy_gbps else None
                        row[f"{mode}_floor_ms"] = nbytes[mode] / (ctx.copy_gbps * 1e9) * 1e3 if ctx.copy_gbps else None
                    last_ms[key] = (L, row["fwd"]["median_ms"] + row["fwd_bwd"]["median_ms"])
                    del inputs, args, leaves, dout
                except torch.cuda.OutOfMemoryError as exc:
                    row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                _free(device)
    for row in rows:  # speed-up of the kernel over the torch backend at the same size
        if row["backend"] == "cuda" and "fwd" in row:
            twin = next(
                (
                    r
                    for r in rows
                    if r["backend"] == "torch" and r["l"] == row["l"] and r["dtype"] == row["dtype"] and "fwd" in r
                ),
                None,
            )
            if twin:
                row["speedup_vs_torch"] = {m: twin[m]["median_ms"] / row[m]["median_ms"] for m in ("fwd", "fwd_bwd")}
    errors = [r for r in rows if "error" in r]
    status = "error" if errors and len(errors) == len(rows) else ("partial" if errors or skipped else "ok")
    return {
        "status": status,
        "rows": rows,
        "skipped": skipped,
        "not_run_by_design": by_design,
        "copy_gb_per_s": ctx.copy_gbps,
        "bytes_formula": {
            "fwd": "s*(4*b*d*l + 2*b*n*l) + 4*(d*n + 2*d)",
            "fwd_bwd": "fwd + s*(7*b*d*l + 4*b*n*l) + 8*(d*n + 2*d)",
        },
        "options": "delta_softplus=True, D, z, delta_bias (float32 A, D, delta_bias)",
    }


def section_model_timing(ctx: Context) -> dict[str, Any]:
    from mambavl import MambaVLForActionRecognition

    device, plan = ctx.device, ctx.plan
    torch.manual_seed(ctx.seed + 3)
    config = model_config(plan)
    model = MambaVLForActionRecognition(config).to(device)
    batch = plan.model_timing_batch
    inputs = model_inputs(config, batch, device, pixels=True, feature_tokens=plan.feature_tokens)
    rows = []
    for backend in ("cuda", "torch"):
        if ctx.deadline.remaining() < 4 * plan.case_budget_s + 10:  # two timings, each about 2 budgets at most
            rows.append({"backend": backend, "skipped": "time budget"})
            continue
        set_scan_backend(model, backend)
        row: dict[str, Any] = {
            "backend": backend,
            "effective": effective_scan_backend(backend, torch.empty(1, device=device), torch.empty(1, device=device)),
        }

        def fwd() -> None:
            with torch.no_grad(), autocast(device):
                model(**inputs)

        def fwd_bwd() -> None:
            model.zero_grad(set_to_none=True)
            with autocast(device):
                loss = model(**inputs).loss
            loss.backward()

        try:
            model.eval()
            row["fwd"] = time_call(fwd, device, plan)
            row["fwd_peak_mib"] = peak_memory_mib(fwd, device)
            model.train()
            row["fwd_bwd"] = time_call(fwd_bwd, device, plan)
            row["fwd_bwd_peak_mib"] = peak_memory_mib(
                fwd_bwd, device, prepare=lambda: model.zero_grad(set_to_none=True)
            )
            row["clips_per_s_fwd_bwd"] = batch / (row["fwd_bwd"]["median_ms"] * 1e-3)
        except torch.cuda.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        model.zero_grad(set_to_none=True)
        rows.append(row)
        _free(device)
    v = config.video_config
    desc = {
        "batch": batch,
        "clip": f"{v.num_frames}x{v.image_size}x{v.image_size}",
        "video_encoder": f"VideoMAE {v.hidden_size}x{v.num_hidden_layers} layers (random weights)",
        "hidden_size": config.hidden_size,
        "text": f"{type(config.text_config).__name__} embeddings ({config.text_config.vocab_size} x "
        f"{config.text_config.hidden_size}), frozen",
        "autocast": "bf16",
        "weights": "float32",
    }
    errors, skipped = [r for r in rows if "error" in r], [r for r in rows if "skipped" in r]
    if len(skipped) == len(rows):
        status = "skipped"
    elif errors and len(errors) + len(skipped) == len(rows):
        status = "error"
    else:
        status = "partial" if errors or skipped else "ok"
    return {
        "status": status,
        "model": desc,
        "rows": rows,
    }


SDPA_OPS = {
    "flash": "_scaled_dot_product_flash_attention",
    "efficient": "_scaled_dot_product_efficient_attention",
    "cudnn": "_scaled_dot_product_cudnn_attention",
    "math": "_scaled_dot_product_attention_math",
}


def build_fusion_case(fusion_type: str, tokens: int, plan: Plan, device: torch.device):
    from mambavl import MambaVLConfig
    from mambavl.fusion import build_fusion

    config = MambaVLConfig(
        hidden_size=plan.fusion_width,
        video_feature_size=plan.fusion_width,
        fusion_type=fusion_type,
        fusion_transformer_depth=plan.fusion_depth,
        fusion_transformer_heads=4,
    )
    fusion = build_fusion(config).to(device)
    width, q = plan.fusion_width, plan.question_tokens
    inputs = [
        torch.randn(1, tokens, width, device=device),
        torch.randn(1, q, width, device=device),
        torch.randn(1, q, width, device=device),
    ]
    return fusion, inputs


def sdpa_report(plan: Plan, device: torch.device) -> dict[str, Any]:
    """The SDPA kernel the transformer fusion picks (profiler), and which kernels can run it at all."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fusion, inputs = build_fusion_case("transformer", plan.fusion_tokens[0], plan, device)
    leaves = [x.requires_grad_(True) for x in inputs]

    def step() -> None:
        with autocast(device):
            out = fusion(*leaves)
        (out.verb_features.float().sum() + out.noun_features.float().sum()).backward()

    names = profiled_names(step, device)
    picked = [k for k, op in SDPA_OPS.items() if any(op in n for n in names)]
    available = {}
    for label, backend in (
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("math", SDPBackend.MATH),
    ):
        try:
            with sdpa_kernel([backend]):
                step()
            available[label] = "runs"
        except Exception as exc:
            available[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return {
        "picked_by_default": picked or ["unknown"],
        "available": available,
        "ops_seen": sorted(n for n in names if "scaled_dot_product" in n),
    }


def crossover(rows: list[dict], metric: str) -> dict[str, Any]:
    """Smallest measured token count from which the Mamba fusion beats the transformer at every larger size."""
    by_tokens: dict[int, dict[str, float]] = {}
    for r in rows:
        if r.get(metric) is not None:
            by_tokens.setdefault(r["tokens"], {})[r["fusion"]] = r[metric]
    both = sorted(t for t, v in by_tokens.items() if len(v) == 2)
    if not both:
        return {"tokens": None, "note": "no size with both fusions measured"}
    wins = [by_tokens[t]["mamba"] < by_tokens[t]["transformer"] for t in both]
    if not wins[-1]:
        return {"tokens": None, "note": f"the transformer is still ahead at {both[-1]} tokens (largest compared)"}
    first = len(wins)
    while first > 0 and wins[first - 1]:
        first -= 1
    note = (
        "the Mamba fusion is ahead at every size compared"
        if first == 0
        else (f"transformer ahead at {both[first - 1]} tokens, Mamba ahead from {both[first]} tokens on")
    )
    ratios = {t: by_tokens[t]["transformer"] / by_tokens[t]["mamba"] for t in both if by_tokens[t]["mamba"] > 0}
    return {"tokens": both[first], "at_or_below_smallest": first == 0, "note": note, "transformer_over_mamba": ratios}


def section_fusion_timing(ctx: Context) -> dict[str, Any]:
    device, plan = ctx.device, ctx.plan
    result: dict[str, Any] = {
        "width": plan.fusion_width,
        "batch": 1,
        "question_tokens": plan.question_tokens,
        "transformer": f"{plan.fusion_depth} layers x 4 heads",
        "autocast": "bf16",
    }
    try:
        result["sdpa"] = sdpa_report(plan, device)
    except Exception as exc:
        result["sdpa"] = {"error": f"{type(exc).__name__}: {exc}"}
    _free(device)
    rows, skipped = [], []
    last: dict[str, tuple[int, float]] = {}
    growth = {"mamba": 1.0, "transformer": 2.0}  # time ~ tokens^p (attention is quadratic)
    for tokens in plan.fusion_tokens:
        for fusion_type in ("mamba", "transformer"):
            if fusion_type in last:
                prev_t, prev_ms = last[fusion_type]
                predicted_s = prev_ms * (tokens / prev_t) ** growth[fusion_type] * 5 / 1e3
                if predicted_s > ctx.deadline.remaining() - 5:
                    skipped.append(
                        {
                            "tokens": tokens,
                            "fusion": fusion_type,
                            "reason": f"time budget (predicted {predicted_s:.0f} s)",
                        }
                    )
                    continue
            row: dict[str, Any] = {"tokens": tokens, "fusion": fusion_type}
            try:
                fusion, inputs = build_fusion_case(fusion_type, tokens, plan, device)
                leaves = [x.detach().requires_grad_(True) for x in inputs]

                def fwd(fusion=fusion, inputs=inputs) -> None:
                    with torch.no_grad(), autocast(device):
                        fusion(*inputs)

                def fwd_bwd(fusion=fusion, leaves=leaves) -> None:
                    fusion.zero_grad(set_to_none=True)
                    for x in leaves:
                        x.grad = None
                    with autocast(device):
                        out = fusion(*leaves)
                    (out.verb_features.float().sum() + out.noun_features.float().sum()).backward()

                row["fwd"] = time_call(fwd, device, plan)
                row["fwd_peak_mib"] = peak_memory_mib(fwd, device)
                row["fwd_bwd"] = time_call(fwd_bwd, device, plan)
                row["fwd_bwd_peak_mib"] = peak_memory_mib(
                    fwd_bwd, device, prepare=lambda f=fusion, x=leaves: _drop_grads(f, x)
                )
                row["fwd_ms"], row["fwd_bwd_ms"] = row["fwd"]["median_ms"], row["fwd_bwd"]["median_ms"]
                last[fusion_type] = (tokens, row["fwd_ms"] + row["fwd_bwd_ms"])
                del fusion, inputs, leaves
            except torch.cuda.OutOfMemoryError as exc:
                row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            _free(device)
    result["rows"] = rows
    result["skipped"] = skipped
    result["crossover"] = {
        "time_fwd": crossover(rows, "fwd_ms"),
        "time_fwd_bwd": crossover(rows, "fwd_bwd_ms"),
        "memory_fwd": crossover(rows, "fwd_peak_mib"),
        "memory_fwd_bwd": crossover(rows, "fwd_bwd_peak_mib"),
    }
    errors = [r for r in rows if "error" in r]
    result["status"] = "error" if rows and len(errors) == len(rows) else ("partial" if errors or skipped else "ok")
    return result


# --------------------------------------------------------------------------------------------
# environment, driver, report
# --------------------------------------------------------------------------------------------


def section_environment(ctx: Context) -> dict[str, Any]:
    import transformers

    import mambavl

    device = ctx.device
    env: dict[str, Any] = {
        "status": "ok",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "transformers": transformers.__version__,
        "mambavl": getattr(mambavl, "__version__", None),
        "mambavl_file": mambavl.__file__,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        **mamba_ssm_state(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            {
                "device_name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "memory_gib": props.total_memory / 2**30,
                "l2_cache_mib": getattr(props, "L2_cache_size", 0) / 2**20 or None,
            }
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem,power.limit", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            env["nvidia_smi"] = f"unavailable: {exc}"
    else:
        env["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs)"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
        env["git_commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


@dataclasses.dataclass
class Context:
    device: torch.device
    plan: Plan
    seed: int
    deadline: Deadline
    copy_gbps: float | None = None


SECTION_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "environment": section_environment,
    "scan_correctness": section_scan_correctness,
    "auto_dispatch": section_auto_dispatch,
    "scan_edge_cases": section_scan_edge_cases,
    "conv_correctness": section_conv_correctness,
    "conv_edge_cases": section_conv_edge_cases,
    "model_step": section_model_step,
    "model_step_joint": section_model_step_joint,
    "copy_bandwidth": section_copy_bandwidth,
    "scan_timing": section_scan_timing,
    "model_timing": section_model_timing,
    "fusion_timing": section_fusion_timing,
}


def run_section(name: str, ctx: Context, all_warnings: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = SECTION_FUNCS[name](ctx)
        except Exception as exc:
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    mine = [m for m in messages if "selective_scan" in m or "causal" in m or "mamba" in m.lower()]
    if mine:
        result["warnings"] = mine
    all_warnings.extend(m for m in messages if m not in all_warnings)
    result["wall_s"] = time.monotonic() - started
    synchronize(ctx.device)
    _free(ctx.device)
    return result


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    sections = results["sections"]
    failed = [s for s in CORRECTNESS_SECTIONS if s in sections and sections[s]["status"] != "pass"]
    probes = [s for s in PROBE_SECTIONS if s in sections and sections[s]["status"] != "pass"]
    return {
        "correctness_passed": not failed
        and all(s in sections for s in CORRECTNESS_SECTIONS if s in results["requested"]),
        "failed_correctness_sections": failed,
        "failed_probe_sections": probes,
        "measurement_status": {s: sections[s]["status"] for s in MEASUREMENT_SECTIONS if s in sections},
    }


def _ms(row: dict, mode: str) -> str:
    return _fmt(row[mode]["median_ms"], 3) if mode in row else "—"


def summary_lines(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(section, status, key numbers) rows of the final table."""
    s = results["sections"]
    rows: list[tuple[str, str, str]] = []
    env = s.get("environment", {})
    rows.append(
        (
            "environment",
            env.get("status", "—"),
            f"{env.get('device_name')}, torch {env.get('torch')} "
            f"(CUDA {env.get('torch_cuda')}), mamba-ssm {env.get('mamba_ssm_version')}, causal-conv1d "
            f"{env.get('causal_conv1d_version')}",
        )
    )
    for name in SECTIONS[1:]:
        if name not in s:
            continue
        sec, info = s[name], ""
        if sec.get("status") == "error":
            info = sec.get("error", "")[:150]
        elif name == "scan_correctness":
            c32, c16 = sec.get("max_cuda_float32", {}), sec.get("max_cuda_bfloat16", {})
            info = (
                f"backend=cuda max rel err fp32 out {_fmt(c32.get('out'))} grad {_fmt(c32.get('grad'))}; "
                f"bf16 out {_fmt(c16.get('out'))} grad {_fmt(c16.get('grad'))}"
            )
            info += "; " + "; ".join(sec.get("reasons", [])) if sec.get("reasons") else ""
        elif name == "auto_dispatch":
            info = ", ".join(
                f"{c['dtype']}: {c['expected_backend']} {'ok' if c['ok'] else 'WRONG'}" for c in sec["checks"]
            )
        elif name in ("scan_edge_cases", "conv_edge_cases"):
            info = "failing: " + (", ".join(sec["failed"]) or "none")
        elif name == "conv_correctness":
            eff = sorted({r.get("effective", "?") for r in sec.get("cases", [])})
            info = f"{sum(r['ok'] for r in sec['cases'])}/{len(sec['cases'])} ok via {', '.join(eff)}"
        elif name == "model_step":
            b, f = sec.get("bf16_autocast", {}), sec.get("float32_features", {})
            info = f"bf16: {_short(b)}" if "loss_rel_diff" in b else ""
            info += f"; fp32 grad diff {_fmt(f['grad_rel_diff']['global'])}" if "grad_rel_diff" in f else ""
            info += "; " + "; ".join(sec.get("reasons", [])) if sec.get("reasons") else ""
        elif name == "model_step_joint":
            info = "; ".join(
                f"{k}: {sec[k].get('error') or ('ok' if sec[k]['ok'] else _short(sec[k]))}"
                for k in ("bf16_autocast", "float32")
                if k in sec
            )
        elif name == "copy_bandwidth":
            info = f"{_fmt(sec.get('gb_per_s'))} GB/s (read + write)"
        elif name == "scan_timing":
            parts = []
            for r in sec.get("rows", []):
                if r["backend"] == "cuda" and "fwd" in r and r["dtype"] == "bfloat16":
                    sp = r.get("speedup_vs_torch", {}).get("fwd_bwd")
                    frac = r.get("fwd_fraction_of_copy")
                    parts.append(
                        f"l={r['l']}: fwd {_ms(r, 'fwd')} ms ({_fmt(frac)} of copy BW), fwd+bwd "
                        f"{_ms(r, 'fwd_bwd')} ms" + (f" ({sp:.1f}x torch)" if sp else "")
                    )
            info = "bf16 cuda " + "; ".join(parts[:3]) if parts else "no cuda rows"
        elif name == "model_timing":
            info = "; ".join(
                f"{r['backend']}: fwd {_ms(r, 'fwd')} ms, fwd+bwd {_ms(r, 'fwd_bwd')} ms, peak "
                f"{_fmt(r.get('fwd_bwd_peak_mib'))} MiB"
                for r in sec.get("rows", [])
            )
        elif name == "fusion_timing":
            cross = sec.get("crossover", {})
            info = (
                f"SDPA {','.join(sec.get('sdpa', {}).get('picked_by_default', ['?']))}; mamba ahead from "
                f"(time fwd+bwd) {cross.get('time_fwd_bwd', {}).get('tokens')} tokens, (memory fwd+bwd) "
                f"{cross.get('memory_fwd_bwd', {}).get('tokens')} tokens"
            )
        rows.append((name, sec.get("status", "—"), info))
    return rows


def markdown_report(results: dict[str, Any]) -> str:
    env = results["sections"].get("environment", {})
    s = results["sections"]
    lines = [
        f"# MambaVL CUDA path on {env.get('device_name')}",
        "",
        f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}), transformers "
        f"{env.get('transformers')}, mamba-ssm {env.get('mamba_ssm_version')}, causal-conv1d "
        f"{env.get('causal_conv1d_version')}, Python {env.get('python')}. Seed {results['seed']}"
        f"{' (smoke sizes)' if results['smoke'] else ''}. Started {results['started_at']}, {results['wall_s']:.0f} s.",
        "",
        f"Command: `{results['command']}`",
        "",
        "## Summary",
        "",
        "| section | status | key numbers |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c.replace('|', '/')} |" for a, b, c in summary_lines(results)]
    if "scan_correctness" in s and "cases" in s["scan_correctness"]:
        lines += [
            "",
            "## Scan correctness (rel. error against float64 reference)",
            "",
            "| b | d | n | l | layout | dtype | options | backend (ran) | out | last state | max grad | ok |",
            "|---:|---:|---:|---:|---|---|---|---|---:|---:|---:|---|",
        ]
        for r in s["scan_correctness"]["cases"]:
            e = r.get("errors", {})
            lines.append(
                f"| {r['b']} | {r['d']} | {r['n']} | {r['l']} | {r['layout']} | {r['dtype']} | {r['options']} "
                f"| {r['backend']} ({r['effective']}) | {_fmt(e.get('out'))} | {_fmt(e.get('last_state'))} | "
                f"{_fmt(r.get('max_grad_error'))} | {'yes' if r['ok'] else 'NO ' + r.get('error', '')} |"
            )
    for probe in ("scan_edge_cases", "conv_edge_cases"):
        if probe in s and "cases" in s[probe]:
            lines += [
                "",
                f"## {probe}",
                "",
                "| case | ran | out err | max grad err | ok | note |",
                "|---|---|---:|---:|---|---|",
            ]
            for r in s[probe]["cases"]:
                out_err = r.get("errors", {}).get("out", r.get("out_error"))
                grad_err = r.get("max_grad_error", max(r.get("grad_errors", {}).values(), default=None))
                note = r.get("error") or r.get("description", "") + (
                    " (informational)" if r.get("informational") else ""
                )
                lines.append(
                    f"| {r['case']} | {r.get('effective', '')} | {_fmt(out_err)} | {_fmt(grad_err)} | "
                    f"{'yes' if r['ok'] else 'NO'} | {note.replace('|', '/')} |"
                )
    if "scan_timing" in s and s["scan_timing"].get("rows"):
        sec = s["scan_timing"]
        lines += [
            "",
            f"## Scan timing (copy bandwidth {_fmt(sec.get('copy_gb_per_s'))} GB/s)",
            "",
            f"Bytes: fwd `{sec['bytes_formula']['fwd']}`, fwd+bwd `{sec['bytes_formula']['fwd_bwd']}`.",
            "",
            "| l | dtype | backend (ran) | fwd ms | fwd GB/s | of copy | fwd+bwd ms | fwd+bwd GB/s | of copy | "
            "peak fwd+bwd MiB | speed-up vs torch (fwd / fwd+bwd) |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in sec["rows"]:
            if "error" in r:
                lines.append(f"| {r['l']} | {r['dtype']} | {r['backend']} | {r['error'][:80]} |||||||")
                continue
            sp = r.get("speedup_vs_torch")
            speedup = f"{sp['fwd']:.1f}x / {sp['fwd_bwd']:.1f}x" if sp else "—"
            lines.append(
                f"| {r['l']} | {r['dtype']} | {r['backend']} ({r['effective']}) | {_ms(r, 'fwd')} | "
                f"{_fmt(r['fwd_gb_per_s'])} | {_fmt(r['fwd_fraction_of_copy'])} | {_ms(r, 'fwd_bwd')} | "
                f"{_fmt(r['fwd_bwd_gb_per_s'])} | {_fmt(r['fwd_bwd_fraction_of_copy'])} | "
                f"{_fmt(r['fwd_bwd_peak_mib'])} | {speedup} |"
            )
    if "fusion_timing" in s and s["fusion_timing"].get("rows"):
        sec = s["fusion_timing"]
        sdpa = sec.get("sdpa", {})
        lines += [
            "",
            f"## Fusion scaling: SSM fusion vs {sec['transformer']} transformer (width {sec['width']}, batch 1, "
            f"bf16 autocast)",
            "",
            f"SDPA kernel picked: {sdpa.get('picked_by_default')}; runnable: {sdpa.get('available')}.",
            "",
            "| video tokens | fusion | fwd ms | fwd peak MiB | fwd+bwd ms | fwd+bwd peak MiB |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for r in sec["rows"]:
            if "error" in r:
                lines.append(f"| {r['tokens']} | {r['fusion']} | {r['error'][:80]} ||||")
            else:
                lines.append(
                    f"| {r['tokens']} | {r['fusion']} | {_ms(r, 'fwd')} | {_fmt(r['fwd_peak_mib'])} | "
                    f"{_ms(r, 'fwd_bwd')} | {_fmt(r['fwd_bwd_peak_mib'])} |"
                )
        lines += [""] + [f"- crossover {k}: {v.get('tokens')} ({v.get('note')})" for k, v in sec["crossover"].items()]
    if "model_timing" in s and s["model_timing"].get("rows"):
        sec = s["model_timing"]
        m = sec["model"]
        lines += [
            "",
            f"## Full model: batch {m['batch']} clips of {m['clip']}, {m['video_encoder']}, {m['text']}, fusion "
            f"width {m['hidden_size']}, {m['autocast']} autocast, {m['weights']} weights",
            "",
            "| scan backend | fwd ms | fwd peak MiB | fwd+bwd ms | fwd+bwd peak MiB | clips/s (train) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in sec["rows"]:
            lines.append(
                f"| {r['backend']} | {_ms(r, 'fwd')} | {_fmt(r.get('fwd_peak_mib'))} | {_ms(r, 'fwd_bwd')} | "
                f"{_fmt(r.get('fwd_bwd_peak_mib'))} | {_fmt(r.get('clips_per_s_fwd_bwd'))} |"
            )
    if results.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in results["warnings"]]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_dir: Path | None, stem: str) -> None:
    if out_dir is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown_report(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to run (default: cuda)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script's logic in seconds")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="folder for gpu_<device>.json/.md (default: benchmarks/results on a full CUDA run; "
        "nothing is written on CPU or --smoke runs without it)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (environment always runs)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds for the whole run; timing cases predicted to pass it are skipped (default: 420, smoke 120)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock; recorded)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    requested = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(requested) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown --sections {unknown}; choose from {SECTIONS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "check_cuda.py: --device cuda but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda})",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    plan = SMOKE if args.smoke else FULL
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % 2**31
    torch.manual_seed(seed)
    budget = args.time_budget if args.time_budget is not None else (120.0 if args.smoke else 420.0)
    ctx = Context(device=device, plan=plan, seed=seed, deadline=Deadline(budget))
    out_dir = args.output_dir
    if out_dir is None and device.type == "cuda" and not args.smoke:
        out_dir = RESULTS_DIR

    started = time.monotonic()
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, Path.cwd()), *sys.argv[1:]])
    results: dict[str, Any] = {
        "script": "benchmarks/gpu/check_cuda.py",
        "command": command,
        "device": args.device,
        "smoke": args.smoke,
        "seed": seed,
        "time_budget_s": budget,
        "requested": requested,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sections": {},
        "warnings": [],
        "wall_s": 0.0,
    }
    stem = "gpu_cpu"
    for name in SECTIONS:
        if name != "environment" and name not in requested:
            continue
        logger.info("section %s ...", name)
        results["sections"][name] = run_section(name, ctx, results["warnings"])
        if name == "environment" and device.type == "cuda":
            stem = f"gpu_{slugify(results['sections']['environment'].get('device_name', 'cuda'))}"
        status = results["sections"][name]["status"]
        logger.info("section %s: %s (%.1f s)", name, status, results["sections"][name]["wall_s"])
        if status == "error":
            logger.error("%s", results["sections"][name].get("traceback", results["sections"][name].get("error")))
        results["wall_s"] = time.monotonic() - started
        results["summary"] = summarize(results)
        write_results(results, out_dir, stem)

    table = summary_lines(results)
    width = max(len(r[0]) for r in table)
    print("\n" + "=" * 100)
    print(f"{'section'.ljust(width)}  {'status':8}  key numbers")
    for name, status, info in table:
        print(f"{name.ljust(width)}  {status:8}  {info}")
    summary = results["summary"]
    verdict = "PASS" if summary["correctness_passed"] else f"FAIL {summary['failed_correctness_sections']}"
    print(
        f"correctness: {verdict}; probes failing: {summary['failed_probe_sections'] or 'none'}; "
        f"{results['wall_s']:.0f} s; results: {out_dir / stem if out_dir else '(not written)'}.json/.md"
    )
    return 0 if summary["correctness_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
