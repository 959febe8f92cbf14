"""The scan's correctness and probe sections of ``check_cuda.py`` (against float64 references), and their helpers.

Each section returns ``status`` ``pass`` / ``fail`` with its cases. Errors are ``rel_err``: ``||a - b|| / ||b||``.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import itertools
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

#: Bounds on ||a - b|| / ||b|| against the float64 reference (inputs rounded to the tested dtype, then upcast).
TOLERANCES = {
    "out": {"float32": 1e-5, "float16": 5e-3, "bfloat16": 1e-2},
    "grad": {"float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2},
}
#: The compiled extensions' entry points, looked up on their modules at every call by mamba-ssm's and causal-conv1d's
#: Python wrappers: wrapping them counts the kernels' calls without a profiler.
ENTRY_POINTS = ("selective_scan_cuda.fwd", "selective_scan_cuda.bwd")
ENTRY_POINTS += ("causal_conv1d_cuda.causal_conv1d_fwd", "causal_conv1d_cuda.causal_conv1d_bwd")


def make_cases(keys: str, *rows: tuple) -> list[dict[str, Any]]:
    """Dicts with the keys of ``keys`` (space-separated), one per row."""
    return [dict(zip(keys.split(), row, strict=True)) for row in rows]


@dataclasses.dataclass
class Context:
    device: torch.device
    plan: Any  # check_cuda.FULL or SMOKE: the sizes of the run
    seed: int
    deadline: float  # time.monotonic() at which the run's --time-budget ends
    copy_gbps: float | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def rel_err(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """``||a - b|| / ||b||`` in float64; ``inf`` when either holds a non-finite value or only one is ``None``."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    a, b = a.detach().double(), b.detach().double().to(a.device)
    if a.shape != b.shape or not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return math.inf
    num, den = (a - b).norm().item(), b.norm().item()
    return num / den if den else (0.0 if num == 0 else math.inf)


def judge(got: dict[str, Any], ref: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The outputs and gradients (``grads``) of ``got`` against the float64 ``ref``, ``ok`` within ``TOLERANCES``."""
    errors = {k: rel_err(v, ref[k]) for k, v in got.items() if k != "grads"}
    grads = {k: rel_err(g, ref["grads"][k]) for k, g in got["grads"].items() if ref["grads"][k] is not None}
    worst = max(grads.values(), default=0.0)
    ok = max(errors.values()) < TOLERANCES["out"][dtype] and worst < TOLERANCES["grad"][dtype]
    return {"errors": errors, "grad_errors": grads, "max_grad_error": worst, "ok": ok}


def checked(row: dict[str, Any], check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``row`` updated with ``check()``, or with ``ok: False`` and the error when it raises."""
    try:
        return {**row, **check()}
    except Exception as exc:
        return {**row, "ok": False, "error": error_text(exc)}


def verdict(failed: list) -> str:
    return "fail" if failed else "pass"


def dname(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def error_text(exc: BaseException) -> str:
    oom = "out of memory: " if isinstance(exc, torch.cuda.OutOfMemoryError) else ""
    return f"{oom}{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def profiled_names(fn: Callable[[], Any], device: torch.device) -> set[str]:
    """Names of the operators and (on CUDA) GPU kernels that one call of ``fn`` ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")) as prof:
        fn()
        free(device)
    return {event.key for event in prof.key_averages()}


def kernels_run(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Which compiled kernels one call of ``fn`` ran: calls of ``ENTRY_POINTS`` (those that import), and the
    profiler's kernel names as a second opinion."""
    calls, patched = dict.fromkeys(ENTRY_POINTS, 0), []
    for name in ENTRY_POINTS:
        module_name, attr = name.split(".")
        try:
            module = importlib.import_module(module_name)
            original = getattr(module, attr)
        except Exception:  # not built: its count stays 0
            continue

        def counting(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(module, attr, counting)
        patched.append((module, attr, original))
    try:
        fn()
    finally:
        for module, attr, original in patched:
            setattr(module, attr, original)
    seen = {"calls": calls, "selective_scan": calls[ENTRY_POINTS[0]] > 0, "causal_conv1d": calls[ENTRY_POINTS[2]] > 0}
    try:
        names = profiled_names(fn, device)
        seen["profiler_kernels"] = sorted(n for n in names if "selective_scan" in n or "causal_conv1d" in n)[:10]
        seen["profiler_saw_scan_kernel"] = any("selective_scan_fwd" in n for n in names)
    except Exception as exc:
        seen["profiler_error"] = error_text(exc)
    return seen


def mamba_ssm_state() -> dict[str, Any]:
    """Whether the library sees mamba-ssm and causal-conv1d, with versions and import errors."""
    from mambavl.ops import is_mamba_ssm_available, mamba_ssm_import_error
    from mambavl.ops.causal_conv1d import _causal_conv1d_kernel

    state: dict[str, Any] = {
        "mamba_ssm_available": is_mamba_ssm_available(),
        "mamba_ssm_import_error": mamba_ssm_import_error(),
        "causal_conv1d_kernel_available": _causal_conv1d_kernel() is not None,
    }
    for name in ("mamba_ssm", "causal_conv1d", "selective_scan_cuda", "causal_conv1d_cuda"):
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            state[f"{name}_error"] = error_text(exc)
            continue
        state[f"{name}_file"] = getattr(module, "__file__", None)
        if "_cuda" not in name:
            state[f"{name}_version"] = getattr(module, "__version__", None)
    return state


def make_scan_inputs(
    b: int, d: int, n: int, L: int, dtype: torch.dtype, device: torch.device, full: bool = True, layout: str = ""
) -> dict[str, torch.Tensor | None]:
    """Random scan inputs in mamba-ssm's layouts, float32 ``A, D, delta_bias``; ``full``: with D, z, delta_bias.

    ``layout="mixer"`` gives ``u, delta, z, B, C`` the strides the fusion's mixers produce (views of ``(b, l, 2k)``
    projections: only ``stride(1) == 1``).
    """

    def seq(k: int, scale: float = 1.0, shift: float = 0.0, positive: bool = False) -> torch.Tensor:
        if layout == "mixer":
            t = torch.randn(b, L, 2 * k, device=device)[..., :k].transpose(1, 2)
        else:
            t = torch.randn(b, k, L, device=device)
        return ((t.abs() if positive else t) * scale + shift).to(dtype)

    delta = seq(d, 0.5, -1.0) if full else seq(d, 0.3, 0.01, positive=True)
    x = {"u": seq(d), "delta": delta, "A": -(0.1 + 2 * torch.rand(d, n, device=device)), "B": seq(n), "C": seq(n)}
    x.update(D=torch.randn(d, device=device), z=seq(d), delta_bias=0.5 * torch.rand(d, device=device))
    return x if full else {**x, "D": None, "z": None, "delta_bias": None}


def copy_strided(t: torch.Tensor) -> torch.Tensor:
    """A new leaf tensor with ``t``'s values *and strides* (``clone`` makes gapped views contiguous)."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).copy_(t.detach())


def run_scan(inputs: dict, backend: str, softplus: bool, weight: torch.Tensor, last_grad: bool) -> dict[str, Any]:
    """Forward + backward of ``selective_scan`` on copies of ``inputs`` (upcast for ``backend="reference"``).

    The loss is ``sum(out * weight)`` (``weight`` rounded to the output dtype, what reaches the kernel's backward),
    plus ``sum(last_state)`` with ``last_grad``.
    """
    from mambavl.ops import selective_scan

    copy = (lambda v: v.detach().double()) if backend == "reference" else copy_strided
    leaves = {k: None if v is None else copy(v).requires_grad_(True) for k, v in inputs.items()}
    out, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True, backend=backend)
    loss = (out * weight.to(inputs["u"].dtype).to(out.dtype)).sum() + (last.sum() if last_grad else 0)
    loss.backward()
    grads = {k: None if v is None else v.grad for k, v in leaves.items()}
    return {"out": out.detach(), "last_state": last.detach(), "grads": grads}


def scan_errors(inputs: dict, backends: tuple, tol: str, softplus: bool = True, last_grad: bool = False) -> list:
    """Each backend against one float64 reference run (``judge``d within ``TOLERANCES[tol]``)."""
    weight = torch.randn(inputs["u"].shape, device=inputs["u"].device)
    ref = run_scan(inputs, "reference", softplus, weight, last_grad)
    run = lambda b: judge(run_scan(inputs, b, softplus, weight, last_grad), ref, tol)  # noqa: E731
    return [checked({}, lambda b=backend: run(b)) for backend in backends]


def effective_scan_backend(requested: str, u: torch.Tensor, A: torch.Tensor) -> str:
    """Which implementation ``selective_scan`` runs for ``requested`` (the library's own rule)."""
    from mambavl.ops import resolve_backend

    effective = resolve_backend(requested, u, None, A)
    return effective + (" (fallback)" if requested == "cuda" and effective == "torch" else "")


def section_scan_correctness(ctx: Context) -> dict[str, Any]:
    rows, state = [], mamba_ssm_state()
    for case, dtype, full in itertools.product(ctx.plan.scan_cases, (torch.float32, torch.bfloat16), (True, False)):
        x = make_scan_inputs(case["b"], case["d"], case["n"], case["l"], dtype, ctx.device, full, case["layout"])
        row = {**case, "dtype": dname(dtype), "options": "D, z, delta_bias, softplus" if full else "none"}
        compared = scan_errors(x, ("cuda", "torch"), row["dtype"], full)
        for backend, errors in zip(("cuda", "torch"), compared, strict=True):
            rows.append({**row, "backend": backend, "effective": effective_scan_backend(backend, x["u"], x["A"])})
            rows[-1].update(errors)
    result: dict[str, Any] = {"cases": rows, "tolerances": TOLERANCES, "kernel": state}
    for backend, dtype in itertools.product(("cuda", "torch"), ("float32", "bfloat16")):
        sel = [r for r in rows if r["backend"] == backend and r["dtype"] == dtype and "errors" in r]
        worst = {k: max((r["errors"][k] for r in sel), default=None) for k in ("out", "last_state")}
        result[f"max_{backend}_{dtype}"] = {**worst, "grad": max((r["max_grad_error"] for r in sel), default=None)}
    failed = sum(not r["ok"] for r in rows)
    reasons = [f"{failed} of {len(rows)} comparisons out of bounds or raised"] if failed else []
    effective = {r["effective"] for r in rows if r["backend"] == "cuda"}
    if ctx.device.type == "cuda" and effective != {"cuda"}:
        why = state["mamba_ssm_import_error"]
        reasons.append(f"backend='cuda' did not run mamba-ssm's kernel ({sorted(effective)}): {why}")
    if ctx.device.type != "cuda":
        result["note"] = "CPU: backend='cuda' falls back to the torch backend (the warning is recorded)"
    return {**result, "status": verdict(reasons), "reasons": reasons}


def section_auto_dispatch(ctx: Context) -> dict[str, Any]:
    from mambavl.ops import selective_scan

    checks = []
    for dtype in (torch.float32, torch.bfloat16, torch.float64):  # float64 is no kernel dtype: torch, silently
        x = make_scan_inputs(*ctx.plan.edge_shape, torch.float32 if dtype == torch.float64 else dtype, ctx.device)
        x = {k: v.double() if dtype == torch.float64 else v for k, v in x.items()}
        expected = "cuda" if ctx.device.type == "cuda" and dtype != torch.float64 else "torch"

        def scan(backend: str, x: dict = x) -> torch.Tensor:
            with torch.no_grad():
                return selective_scan(**x, delta_softplus=True, backend=backend)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            auto = scan("auto")
        ours = [str(w.message) for w in caught if "selective_scan" in str(w.message)]
        equal = bool(torch.equal(auto, scan(expected)))
        check = {"dtype": dname(dtype), "expected_backend": expected, "warnings": ours}
        check.update(bitwise_equal_to_expected=equal, ok=equal and not ours)
        if expected == "cuda":
            check["kernels"] = kernels_run(lambda: scan("auto"), ctx.device)
            check["kernel_seen"] = check["kernels"]["selective_scan"]
            check["ok"] = check["ok"] and check["kernel_seen"]
        checks.append(check)
    return {"status": verdict([c for c in checks if not c["ok"]]), "checks": checks}


def section_scan_edge_cases(ctx: Context) -> dict[str, Any]:
    """Inputs the library hands to the kernel unchanged although the kernel may reject them."""
    bf16, f32, f64 = torch.bfloat16, torch.float32, torch.float64
    cases = {  # name: dtype of u, delta, B, C, z; casts after that; description
        "A_bfloat16": (bf16, {"A": bf16}, "A in bf16 too (the library's dtype check admits it)"),
        "delta_float32_u_bfloat16": (bf16, {"delta": f32}, "what fusion_scan='joint' makes under bf16 autocast"),
        "D_delta_bias_bfloat16": (bf16, {"D": bf16, "delta_bias": bf16}, "a model cast with .to(torch.bfloat16)"),
        "float16": (torch.float16, {}, "float16 inputs, float32 A, D, delta_bias"),
        "float64_falls_back": (f64, {"A": f64, "D": f64, "delta_bias": f64}, "must run the torch backend, warning"),
        "last_state_gradient": (f32, {}, "loss uses last_state: mamba-ssm ignores its gradient"),
    }
    rows = []
    for name, (dtype, casts, description) in cases.items():
        x = make_scan_inputs(*ctx.plan.edge_shape, dtype, ctx.device)
        x.update({k: x[k].to(t) for k, t in casts.items()})
        last_grad = name == "last_state_gradient"  # informational: the kernel's known limitation
        row = {"case": name, "description": description, "informational": last_grad}
        row["effective"] = effective_scan_backend("cuda", x["u"], x["A"])
        tol = "float32" if dtype == f64 else dname(dtype)
        rows.append(checked(row, lambda: scan_errors(x, ("cuda",), tol, last_grad=last_grad)[0]))  # noqa: B023
    failed = [r["case"] for r in rows if not r["ok"] and not r["informational"]]
    return {"status": verdict(failed), "failed": failed, "cases": rows}
