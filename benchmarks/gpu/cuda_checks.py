"""The correctness and probe sections of ``check_cuda.py`` (see there), and the helpers its timings share.

Each section compares the CUDA path with a float64 reference (``rel_err``: ``||a - b|| / ||b||``, ``inf`` for a
non-finite value) and returns ``status`` ``pass`` / ``fail`` with its cases; ``Plan`` holds the sizes of a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import subprocess
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
#: Bounds on ||a - b|| / ||b|| against the float64 reference (inputs rounded to the tested dtype, then upcast).
TOLERANCES = {"out": {"float32": 1e-5, "float16": 5e-3, "bfloat16": 1e-2},
              "grad": {"float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2}}  # fmt: skip
#: Bounds on the cuda-vs-torch scan backend differences in a model step (relative, as above).
MODEL_TOLERANCES = {"bf16_autocast": {"loss": 1e-2, "grad": 5e-2}, "float32": {"loss": 1e-4, "grad": 1e-3}}
#: Entry points of the compiled extensions, looked up on their modules at every call by mamba-ssm's and
#: causal-conv1d's Python wrappers: wrapping them counts the kernels' calls without a profiler.
EXTENSION_ENTRY_POINTS = ("selective_scan_cuda.fwd", "selective_scan_cuda.bwd", "causal_conv1d_cuda.causal_conv1d_fwd",
                          "causal_conv1d_cuda.causal_conv1d_bwd")  # fmt: skip


@dataclasses.dataclass
class Plan:
    """Problem sizes of one run (``FULL`` on a GPU, ``SMOKE`` for a quick logic check)."""

    scan_cases: list[dict[str, Any]]  # correctness: b, d, n, l, layout
    conv_cases: list[dict[str, Any]]  # correctness: b, d, l, k, layout, activation
    edge_shape: tuple[int, int, int, int]  # b, d, n, l of auto_dispatch and scan_edge_cases
    paper_model: bool  # model steps at paper width (else tiny configs)
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


def _cases(keys: str, *rows: tuple) -> list[dict[str, Any]]:
    return [dict(zip(keys.split(), row, strict=True)) for row in rows]


def make_cases(keys: str, *rows: tuple) -> list[dict[str, Any]]:
    """Dicts with the keys of ``keys`` (space-separated), one per row."""
    return [dict(zip(keys.split(), row, strict=True)) for row in rows]


@dataclasses.dataclass
class Context:
    device: torch.device
    plan: Plan
    seed: int
    deadline: float  # time.monotonic() at which the run's --time-budget ends
    copy_gbps: float | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


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
    num, den = (a - b).norm().item(), b.norm().item()
    return num / den if den else (0.0 if num == 0 else math.inf)


def dname(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def error_text(exc: BaseException) -> str:
    oom = "out of memory: " if isinstance(exc, torch.cuda.OutOfMemoryError) else ""
    return f"{oom}{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@contextlib.contextmanager
def count_extension_calls() -> Iterator[dict[str, int]]:
    """Count calls of the compiled kernels' entry points (those that import) while the block runs."""
    counts, patched = dict.fromkeys(EXTENSION_ENTRY_POINTS, 0), []
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


def profiled_names(fn: Callable[[], Any], device: torch.device) -> set[str]:
    """Names of the operators and (on CUDA) GPU kernels that one call of ``fn`` ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")) as prof:
        fn()
        free(device)
    return {event.key for event in prof.key_averages()}


def kernels_run(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Which compiled kernels one call of ``fn`` ran: extension call counts, and GPU kernel names (profiler)."""
    with count_extension_calls() as counts:
        fn()
    seen: dict[str, Any] = {"calls": dict(counts), "selective_scan": counts["selective_scan_cuda.fwd"] > 0,
                            "causal_conv1d": counts["causal_conv1d_cuda.causal_conv1d_fwd"] > 0}  # fmt: skip
    try:  # the profiler is a second opinion only
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

    state: dict[str, Any] = {"mamba_ssm_available": is_mamba_ssm_available(),
                             "mamba_ssm_import_error": mamba_ssm_import_error(),
                             "causal_conv1d_kernel_available": _causal_conv1d_kernel() is not None}  # fmt: skip
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


def section_environment(ctx: Context) -> dict[str, Any]:
    import mambavl

    env = {"status": "ok", **harness.machine_info(ctx.device), "mambavl": getattr(mambavl, "__version__", None),
           "mambavl_file": mambavl.__file__, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
           "tf32_cudnn": torch.backends.cudnn.allow_tf32, **mamba_ssm_state()}  # fmt: skip
    commands = {"git_commit": ["git", "-C", str(REPO), "rev-parse", "HEAD"]}
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        env.update(capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
        commands["nvidia_smi"] = ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem,power.limit",
                                  "--format=csv,noheader"]  # fmt: skip
    else:
        env["device_name"] = f"CPU ({env['cpu']}, {env['logical_cpus']} logical CPUs)"
    for key, command in commands.items():
        try:
            env[key] = subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError) as exc:
            env[key] = f"unavailable: {exc}"
    return env


# --------------------------------------------------------------------------------------------
# correctness: scan, conv, model step
# --------------------------------------------------------------------------------------------


def make_scan_inputs(b: int, d: int, n: int, L: int, dtype: torch.dtype, device: torch.device, *, full: bool = True,
                     layout: str = "contiguous", weight_dtype: torch.dtype = torch.float32,
                     delta_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor | None]:  # fmt: skip
    """Fresh random scan inputs in mamba-ssm's layouts (never zeros); ``full``: with D, z, delta_bias (softplus).

    ``layout="mixer"`` gives ``u, delta, z, B, C`` the strides the fusion's mixers produce (views of ``(b, l, 2k)``
    projections: only ``stride(1) == 1``).
    """

    def seq(k: int, dt: torch.dtype, scale: float = 1.0, shift: float = 0.0, positive: bool = False) -> torch.Tensor:
        t = (torch.randn(b, L, 2 * k, device=device)[..., :k].transpose(1, 2) if layout == "mixer"
             else torch.randn(b, k, L, device=device))  # fmt: skip
        return ((t.abs() if positive else t) * scale + shift).to(dt)

    delta_dtype = dtype if delta_dtype is None else delta_dtype
    optional = {"D": torch.randn(d, device=device).to(weight_dtype), "z": seq(d, dtype),
                "delta_bias": (0.5 * torch.rand(d, device=device)).to(weight_dtype)}  # fmt: skip
    return {
        "u": seq(d, dtype),
        "delta": seq(d, delta_dtype, 0.5, -1.0) if full else seq(d, delta_dtype, 0.3, 0.01, positive=True),
        "A": (-(0.1 + 2 * torch.rand(d, n, device=device))).to(weight_dtype), "B": seq(n, dtype), "C": seq(n, dtype),
        **{k: v if full else None for k, v in optional.items()},
    }  # fmt: skip


def _copy_strided(t: torch.Tensor) -> torch.Tensor:
    """A new leaf tensor with ``t``'s values *and strides* (``clone`` makes gapped views contiguous)."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).copy_(t.detach())


def run_scan(inputs: dict, backend: str, softplus: bool, weight: torch.Tensor, *, float64: bool = False,
             last_state_grad: bool = False) -> dict[str, Any]:  # fmt: skip
    """Forward + backward of ``selective_scan`` on copies of ``inputs`` (``float64``: upcast first).

    The loss is ``sum(out * weight)`` (``weight`` rounded to the output dtype, what reaches the kernel's backward),
    plus ``sum(last_state)`` with ``last_state_grad``. Returns out, last state and every gradient.
    """
    from mambavl.ops import selective_scan

    leaves = {k: None if v is None else (v.detach().double() if float64 else _copy_strided(v)).requires_grad_(True)
              for k, v in inputs.items()}  # fmt: skip
    out, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True, backend=backend)
    loss = (out * weight.to(inputs["u"].dtype).to(out.dtype)).sum() + (last.sum() if last_state_grad else 0)
    loss.backward()
    grads = {k: None if v is None else v.grad for k, v in leaves.items()}
    return {"out": out.detach(), "last_state": last.detach(), "grads": grads}


def scan_errors(inputs: dict, backends: tuple[str, ...], tol: str, *, softplus: bool = True,
                last_grad: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Each backend against one float64 reference: errors, gradient errors, ``ok`` within ``TOLERANCES[tol]``."""
    weight = torch.randn(inputs["u"].shape, device=inputs["u"].device)
    ref = run_scan(inputs, "reference", softplus, weight, float64=True, last_state_grad=last_grad)

    def compare(backend: str) -> dict[str, Any]:
        got = run_scan(inputs, backend, softplus, weight, last_state_grad=last_grad)
        errors = {k: rel_err(got[k], ref[k]) for k in ("out", "last_state")}
        grads = {k: rel_err(g, ref["grads"][k]) for k, g in got["grads"].items() if ref["grads"][k] is not None}
        worst = max(grads.values(), default=0.0)
        ok = max(errors.values()) < TOLERANCES["out"][tol] and worst < TOLERANCES["grad"][tol]
        return {"errors": errors, "grad_errors": grads, "max_grad_error": worst, "ok": ok}

    return [checked({}, lambda b=backend: compare(b)) for backend in backends]


def effective_scan_backend(requested: str, u: torch.Tensor, A: torch.Tensor) -> str:
    """Which implementation ``selective_scan`` runs for ``requested`` (the library's own rule)."""
    from mambavl.ops import resolve_backend

    effective = resolve_backend(requested, u, None, A)
    return effective + (" (fallback)" if requested == "cuda" and effective == "torch" else "")


def checked(row: dict[str, Any], check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``row`` updated with ``check()``, or with ``ok: False`` and the error when it raises."""
    try:
        return {**row, **check()}
    except Exception as exc:
        return {**row, "ok": False, "error": error_text(exc)}


def section_scan_correctness(ctx: Context) -> dict[str, Any]:
    device, rows, state = ctx.device, [], mamba_ssm_state()
    for case in ctx.plan.scan_cases:
        for dtype, full in ((t, f) for t in (torch.float32, torch.bfloat16) for f in (True, False)):
            inputs = make_scan_inputs(case["b"], case["d"], case["n"], case["l"], dtype, device, full=full,
                                      layout=case["layout"])  # fmt: skip
            compared = scan_errors(inputs, ("cuda", "torch"), dname(dtype), softplus=full)
            rows += [{**case, "dtype": dname(dtype), "options": "D, z, delta_bias, softplus" if full else "none",
                      "backend": backend, "effective": effective_scan_backend(backend, inputs["u"], inputs["A"]),
                      **errors} for backend, errors in zip(("cuda", "torch"), compared, strict=True)]  # fmt: skip
    result: dict[str, Any] = {"cases": rows, "tolerances": TOLERANCES, "kernel": state}
    for backend, dtype in ((k, t) for k in ("cuda", "torch") for t in ("float32", "bfloat16")):
        sel = [r for r in rows if r["backend"] == backend and r["dtype"] == dtype and "errors" in r]
        result[f"max_{backend}_{dtype}"] = {k: max((r["errors"][k] for r in sel), default=None)
                                            for k in ("out", "last_state")}  # fmt: skip
        result[f"max_{backend}_{dtype}"]["grad"] = max((r["max_grad_error"] for r in sel), default=None)
    failed = sum(not r["ok"] for r in rows)
    reasons = [f"{failed} of {len(rows)} comparisons out of bounds or raised"] if failed else []
    effective = {r["effective"] for r in rows if r["backend"] == "cuda"}
    if device.type == "cuda" and effective != {"cuda"}:
        reasons.append(f"backend='cuda' did not run mamba-ssm's kernel ({sorted(effective)}): "
                       f"{state['mamba_ssm_import_error']}")  # fmt: skip
    if device.type != "cuda":
        result["note"] = "CPU: backend='cuda' falls back to the torch backend (the warning is recorded)"
    return {**result, "status": "fail" if reasons else "pass", "reasons": reasons}


def section_auto_dispatch(ctx: Context) -> dict[str, Any]:
    from mambavl.ops import selective_scan

    device, checks = ctx.device, []
    for dtype in (torch.float32, torch.bfloat16, torch.float64):  # float64 is no kernel dtype: torch, silently
        x = make_scan_inputs(*ctx.plan.edge_shape, torch.float32 if dtype == torch.float64 else dtype, device)
        x = {k: v.double() if dtype == torch.float64 else v for k, v in x.items()}
        expected = "cuda" if device.type == "cuda" and dtype != torch.float64 else "torch"

        def scan(backend: str, x: dict = x) -> torch.Tensor:
            with torch.no_grad():
                return selective_scan(**x, delta_softplus=True, backend=backend)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            auto = scan("auto")
        ours = [str(w.message) for w in caught if "selective_scan" in str(w.message)]
        check = {"dtype": dname(dtype), "expected_backend": expected, "warnings": ours,
                 "bitwise_equal_to_expected": bool(torch.equal(auto, scan(expected)))}  # fmt: skip
        check["ok"] = check["bitwise_equal_to_expected"] and not ours
        if expected == "cuda":
            check["kernels"] = kernels_run(lambda: scan("auto"), device)
            check["kernel_seen"] = check["kernels"]["selective_scan"]
            check["ok"] = check["ok"] and check["kernel_seen"]
        checks.append(check)
    return {"status": "pass" if all(c["ok"] for c in checks) else "fail", "checks": checks}


def section_scan_edge_cases(ctx: Context) -> dict[str, Any]:
    """Inputs the library hands to the kernel unchanged although the kernel may reject them."""
    bf16, f32 = torch.bfloat16, torch.float32
    cases = [  # name, description, make_scan_inputs arguments, tolerance dtype, last-state gradient
        ("A_bfloat16", "u, delta, B, C, z and A in bf16 (the library's dtype check admits A in bf16)",
         {"dtype": bf16, "weight_dtype": bf16}, "bfloat16", False),
        ("delta_float32_u_bfloat16", "delta float32 with u, B, C, z bf16 (what fusion_scan='joint' makes under "
         "bf16 autocast: softplus autocasts to float32)", {"dtype": bf16, "delta_dtype": f32}, "bfloat16", False),
        ("D_delta_bias_bfloat16", "D and delta_bias in bf16 (a model cast with .to(torch.bfloat16))",
         {"dtype": bf16, "weight_dtype": bf16}, "bfloat16", False),
        ("float16", "float16 inputs, float32 A, D, delta_bias", {"dtype": torch.float16}, "float16", False),
        ("float64_falls_back", "float64 inputs with backend='cuda': must run the torch backend, with one warning",
         {"dtype": torch.float64, "weight_dtype": torch.float64}, "float32", False),
        ("last_state_gradient", "loss uses last_state: mamba-ssm ignores its gradient", {"dtype": f32}, "float32",
         True),
    ]  # fmt: skip
    rows = []
    for name, description, kwargs, tol, last_grad in cases:
        x = make_scan_inputs(*ctx.plan.edge_shape, device=ctx.device, **kwargs)
        if name == "A_bfloat16":  # only A in low precision
            x["D"], x["delta_bias"] = x["D"].float(), x["delta_bias"].float()
        if name == "D_delta_bias_bfloat16":
            x["A"] = x["A"].float()
        row = {"case": name, "description": description, "informational": last_grad,
               "effective": effective_scan_backend("cuda", x["u"], x["A"])}  # fmt: skip
        rows.append(checked(row, lambda: scan_errors(x, ("cuda",), tol, last_grad=last_grad)[0]))  # noqa: B023
    failed = [r["case"] for r in rows if not r["ok"] and not r["informational"]]
    return {"status": "fail" if failed else "pass", "failed": failed, "cases": rows}


def check_conv(case: dict, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """``mambavl.ops.causal_conv1d`` (bf16: under autocast) against an ``unfold`` oracle in float64."""
    from mambavl.ops.causal_conv1d import _causal_conv1d_kernel, causal_conv1d

    b, d, L, k = case["b"], case["d"], case["l"], case["k"]
    x = (
        torch.randn(b, L, 2 * d, device=device).to(dtype).transpose(1, 2)[:, :d]
        if case["layout"] == "channel_last"
        else torch.randn(b, d, L, device=device).to(dtype)
    )  # like the mixer: in_proj(h).transpose(1, 2)[:, :d]
    inputs = {"x": x, "weight": torch.randn(d, k, device=device) * 0.5, "bias": torch.randn(d, device=device)}
    leaves = {n: _copy_strided(v).requires_grad_(True) for n, v in inputs.items()}  # keeps the layout
    ref_leaves = {n: v.detach().double().requires_grad_(True) for n, v in inputs.items()}
    grad_w = torch.randn(b, d, L, device=device)
    with autocast(device, enabled=dtype == torch.bfloat16):  # weights float32, activations bf16, as in the model
        out = causal_conv1d(leaves["x"], leaves["weight"], leaves["bias"], activation=case["activation"])
    (out.float() * grad_w.to(out.dtype).float()).sum().backward()
    windows = F.pad(ref_leaves["x"], (k - 1, 0)).unfold(-1, k, 1)  # (b, d, l, k): inputs t-k+1 .. t
    ref = (windows * ref_leaves["weight"][None, :, None, :]).sum(-1) + ref_leaves["bias"][None, :, None]
    ref = F.silu(ref) if case["activation"] == "silu" else ref
    (ref * grad_w.to(out.dtype).double()).sum().backward()
    grads = {n: rel_err(leaves[n].grad, ref_leaves[n].grad) for n in leaves}
    row = {**case, "dtype": dname(dtype), "out_dtype": dname(out.dtype), "out_error": rel_err(out, ref),
           "grad_errors": grads, "effective": "causal-conv1d kernel"
           if device.type == "cuda" and _causal_conv1d_kernel() is not None else "torch conv1d"}  # fmt: skip
    return {**row, "ok": row["out_error"] < TOLERANCES["out"][dname(dtype)]
            and max(grads.values()) < TOLERANCES["grad"][dname(dtype)]}  # fmt: skip


def section_conv_correctness(ctx: Context) -> dict[str, Any]:
    rows = [checked({**case, "dtype": dname(dtype)}, lambda c=case, t=dtype: check_conv(c, t, ctx.device))
            for case in ctx.plan.conv_cases for dtype in (torch.float32, torch.bfloat16)]  # fmt: skip
    failed = sum(not r["ok"] for r in rows)
    reasons = [f"{failed} of {len(rows)} cases out of bounds or raised"] if failed else []
    state = mamba_ssm_state()
    if ctx.device.type == "cuda" and not state["causal_conv1d_kernel_available"]:
        reasons.append(f"causal-conv1d's kernel is not available: {state.get('causal_conv1d_error')}")
    return {"status": "fail" if reasons else "pass", "reasons": reasons, "cases": rows}


def section_conv_edge_cases(ctx: Context) -> dict[str, Any]:
    cases = make_cases("case b d l k layout activation", ("channels_not_multiple_of_8", 2, 60, 50, 4, "channel_last",
                   "silu"), ("kernel_width_5", 2, 64, 50, 5, "contiguous", "silu"),
                   ("length_1", 2, 64, 1, 4, "contiguous", "silu"))  # fmt: skip
    rows = [checked(case, lambda c=case: check_conv(c, torch.float32, ctx.device)) for case in cases]
    failed = [r["case"] for r in rows if not r["ok"]]
    return {"status": "fail" if failed else "pass", "failed": failed, "cases": rows}


def model_config(plan: Plan, *, video_encoder: bool = True, **overrides: Any):
    """Paper-width MambaVL config (RoBERTa-base embeddings, VideoMAE-base) or, for smoke runs, a tiny one."""
    from transformers import RobertaConfig, VideoMAEConfig

    from mambavl import MambaVLConfig

    if plan.paper_model:
        text, video, kwargs = RobertaConfig(), VideoMAEConfig(), {"hidden_size": 768, "state_size": 16}
    else:
        text = RobertaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=40)  # fmt: skip
        video = VideoMAEConfig(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                               image_size=16, patch_size=8, num_frames=4, tubelet_size=2)  # fmt: skip
        kwargs = {"hidden_size": 32, "state_size": 4, "num_verb_classes": 5, "num_noun_classes": 7}
    kwargs.update({"video_config": video} if video_encoder else {"video_feature_size": video.hidden_size})
    return MambaVLConfig(text_config=text, **{**kwargs, **overrides})


def build_model(plan: Plan, device: torch.device, seed: int, batch: int, *, pixels: bool = True, **overrides: Any):
    """The model and random inputs: clips (or features), right-padded verb/noun questions, labels."""
    from mambavl import MambaVLForActionRecognition

    torch.manual_seed(seed)
    config = model_config(plan, video_encoder=pixels, **overrides)
    pad, inputs = config.text_config.pad_token_id or 0, {}
    if pixels:
        v = config.video_config
        inputs["pixel_values"] = torch.randn(batch, v.num_frames, v.num_channels, v.image_size, v.image_size)
    else:
        inputs["video_features"] = torch.randn(batch, plan.feature_tokens, config.video_feature_size)
    for name, length in (("verb", 12), ("noun", 8)):
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[-1, length - 3 :] = 0  # right padding in the last row
        ids = torch.randint(3, config.text_config.vocab_size, (batch, length))
        inputs[f"{name}_input_ids"], inputs[f"{name}_attention_mask"] = torch.where(mask.bool(), ids, pad), mask
    inputs["verb_labels"] = torch.randint(0, config.num_verb_classes, (batch,))
    inputs["noun_labels"] = torch.randint(0, config.num_noun_classes, (batch,))
    model = MambaVLForActionRecognition(config).to(device).train()
    return model, {k: v.to(device) for k, v in inputs.items()}


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
        loss = model(**inputs).loss
    loss.backward()
    return {
        "loss": loss.detach().float(),
        "grads": {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None},
    }


def grad_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Global and per-module ``||ga - gb|| / ||gb||`` over the gradients of two passes."""
    groups: dict[str, list[float]] = {}
    finite = True
    for name, gb in b.items():
        ga = a.get(name)
        if ga is None or not bool(torch.isfinite(ga).all()) or not bool(torch.isfinite(gb).all()):
            finite = False
            continue
        parts = name.removeprefix("mambavl.").split(".")
        acc = groups.setdefault(".".join(parts[:2]) if parts[0] == "text_encoder" else parts[0], [0.0, 0.0])
        acc[0] += (ga.double() - gb.double()).norm().item() ** 2
        acc[1] += gb.double().norm().item() ** 2
    ratio = lambda n, d: math.sqrt(n / d) if d > 0 else (0.0 if n == 0 else math.inf)  # noqa: E731
    total = [sum(v[i] for v in groups.values()) for i in (0, 1)]
    return {"global": ratio(*total) if finite else math.inf, "finite": finite, "missing": sorted(set(b) ^ set(a)),
            "per_module": {g: ratio(n, d) for g, (n, d) in groups.items()}}  # fmt: skip


def compare_backends(model, inputs, *, amp: bool, device: torch.device, tolerance: dict) -> dict[str, Any]:
    """cuda, torch, then cuda again: backend difference next to the cuda backend's run-to-run noise."""
    first, other, again = (train_pass(model, inputs, b, amp=amp, device=device) for b in ("cuda", "torch", "cuda"))
    result = {
        "loss_cuda": first["loss"].item(), "loss_torch": other["loss"].item(),
        "loss_rel_diff": rel_err(first["loss"], other["loss"]),
        "loss_rel_noise": rel_err(again["loss"], first["loss"]),
        "grad_rel_diff": grad_difference(first["grads"], other["grads"]),
        "grad_rel_noise": grad_difference(again["grads"], first["grads"])["global"],
        "num_grad_tensors": len(first["grads"]), "tolerance": tolerance,
    }  # fmt: skip
    result["ok"] = (math.isfinite(result["loss_cuda"]) and result["grad_rel_diff"]["finite"]
                    and result["loss_rel_diff"] < tolerance["loss"]
                    and result["grad_rel_diff"]["global"] < tolerance["grad"])  # fmt: skip
    return result


def short(cmp: dict) -> str:
    if "error" in cmp:
        return cmp["error"]
    e = [harness.fmt(v, "{:.2e}") for v in (cmp["loss_rel_diff"], cmp["loss_rel_noise"],
                                              cmp["grad_rel_diff"]["global"], cmp["grad_rel_noise"])]  # fmt: skip
    return f"loss diff {e[0]} (noise {e[1]}), grad diff {e[2]} (noise {e[3]})"


def _model_step_paper(ctx: Context, result: dict[str, Any], reasons: list[str]) -> None:
    """Paper width with the video encoder under bf16 autocast: backends, kernels seen, an AdamW step."""
    device = ctx.device
    model, inputs = build_model(ctx.plan, device, ctx.seed, ctx.plan.step_batch)
    config = model.config
    with torch.no_grad():
        tokens = model.mambavl.encode_video(inputs["pixel_values"]).shape[1]
    result["model"] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "batch": ctx.plan.step_batch,
        "pixel_values": list(inputs["pixel_values"].shape), "video_tokens": tokens,
        "hidden_size": config.hidden_size, "state_size": config.state_size,
        "text": f"{type(config.text_config).__name__} embeddings {config.text_config.vocab_size} x "
        f"{config.text_config.hidden_size}",
        "video": f"{type(config.video_config).__name__} {config.video_config.hidden_size} x "
        f"{config.video_config.num_hidden_layers} layers",
    }  # fmt: skip
    bf16 = result["bf16_autocast"] = compare_backends(model, inputs, amp=True, device=device,
                                                      tolerance=MODEL_TOLERANCES["bf16_autocast"])  # fmt: skip
    if not bf16["ok"]:
        reasons.append(f"bf16 autocast: cuda vs torch backend out of bounds or non-finite ({short(bf16)})")
    if device.type == "cuda":  # which kernels ran in a training step
        seen = result["kernels_seen"] = kernels_run(lambda: train_pass(model, inputs, "cuda", amp=True,
                                                                        device=device), device)  # fmt: skip
        if not seen["selective_scan"] or not seen["calls"]["selective_scan_cuda.bwd"]:
            reasons.append(f"mamba-ssm's selective_scan kernels did not run in the model's step ({seen['calls']})")
        if not seen["causal_conv1d"]:
            reasons.append(f"causal-conv1d's kernel did not run in the model's step ({seen['calls']})")
    train_pass(model, inputs, "cuda", amp=True, device=device)  # an AdamW step on the cuda backend's gradients
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01).step()
    changed = sum(int(not torch.equal(p0, p.detach())) for p0, p in zip(before, trainable, strict=True))
    finite = all(bool(torch.isfinite(p).all()) for p in trainable)
    with torch.no_grad(), autocast(device):
        loss_after = model(**inputs).loss.float().item()
    result["adamw"] = {"tensors_changed": changed, "tensors": len(trainable), "params_finite": finite,
                       "loss_before": bf16["loss_cuda"], "loss_after": loss_after}  # fmt: skip
    if not (finite and changed > 0 and math.isfinite(loss_after)):
        reasons.append(f"AdamW step: changed {changed}/{len(trainable)} tensors, finite={finite}, loss {loss_after}")


def _model_step_float32(ctx: Context, result: dict[str, Any], reasons: list[str]) -> None:
    """float32 without autocast on precomputed features: cuda vs torch backends with tight bounds."""
    model, inputs = build_model(ctx.plan, ctx.device, ctx.seed + 1, ctx.plan.step_batch, pixels=False)
    fp32 = result["float32_features"] = compare_backends(model, inputs, amp=False, device=ctx.device,
                                                         tolerance=MODEL_TOLERANCES["float32"])  # fmt: skip
    if not fp32["ok"]:
        reasons.append(f"float32: cuda vs torch backend out of bounds or non-finite ({short(fp32)})")


def section_model_step(ctx: Context) -> dict[str, Any]:
    result: dict[str, Any] = {"kernel": mamba_ssm_state()}
    reasons: list[str] = []
    for label, phase in (("paper_bf16", _model_step_paper), ("float32_features", _model_step_float32)):
        try:
            phase(ctx, result, reasons)
        except Exception as exc:
            reasons.append(f"{label} raised {error_text(exc)}")
            result[f"{label}_traceback"] = traceback.format_exc()
        free(ctx.device)
    return {**result, "status": "fail" if reasons else "pass", "reasons": reasons}


def section_model_step_joint(ctx: Context) -> dict[str, Any]:
    model, inputs = build_model(ctx.plan, ctx.device, ctx.seed + 2, ctx.plan.step_batch, pixels=False,
                                fusion_scan="joint")  # fmt: skip
    result = {label: checked({}, lambda a=amp, t=MODEL_TOLERANCES[label]: compare_backends(
        model, inputs, amp=a, device=ctx.device, tolerance=t)) for label, amp in (("bf16_autocast", True),
                                                                                  ("float32", False))}  # fmt: skip
    failed = [k for k, v in result.items() if not v["ok"]]
    return {"status": "fail" if failed else "pass", "failed": failed, **result}


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def key_numbers(name: str, sec: dict[str, Any]) -> str:
    """The summary table's "key numbers" of one correctness or probe section."""
    e = lambda v: harness.fmt(v, "{:.2e}")  # noqa: E731
    if name == "scan_correctness":
        c32, c16 = sec["max_cuda_float32"], sec["max_cuda_bfloat16"]
        return (f"backend=cuda max rel err fp32 out {e(c32['out'])} grad {e(c32['grad'])}; bf16 out {e(c16['out'])} "
                f"grad {e(c16['grad'])}") + "".join(f"; {r}" for r in sec["reasons"])  # fmt: skip
    if name == "auto_dispatch":
        verdicts = {True: "ok", False: "WRONG"}
        return ", ".join(f"{c['dtype']}: {c['expected_backend']} {verdicts[c['ok']]}" for c in sec["checks"])
    if name in ("scan_edge_cases", "conv_edge_cases"):
        return "failing: " + (", ".join(sec["failed"]) or "none")
    if name == "conv_correctness":
        ran = ", ".join(sorted({r.get("effective", "?") for r in sec["cases"]}))
        return f"{sum(r['ok'] for r in sec['cases'])}/{len(sec['cases'])} ok via {ran}"
    if name == "model_step":
        parts = [f"{k}: {short(sec[k])}" for k in ("bf16_autocast", "float32_features") if k in sec]
        return "; ".join(parts + sec["reasons"])
    if name == "model_step_joint":
        return "; ".join(f"{k}: {'ok' if sec[k]['ok'] else short(sec[k])}" for k in ("bf16_autocast", "float32"))
    return ""


def markdown_sections(s: dict[str, Any]) -> list[str]:
    """The report's tables of the correctness and probe sections present in ``s`` (the results' sections)."""
    lines: list[str] = []
    e = lambda v: harness.fmt(v, "{:.2e}")  # noqa: E731
    tables = {  # section: (title, header, cells of one case)
        "scan_correctness": ("Scan correctness (rel. error against float64 reference)",
                             ["b", "d", "n", "l", "layout", "dtype", "options", "backend (ran)", "out", "last state",
                              "max grad", "ok"],
                             lambda r: [r["b"], r["d"], r["n"], r["l"], r["layout"], r["dtype"], r["options"],
                                        f"{r['backend']} ({r['effective']})", e(r.get("errors", {}).get("out")),
                                        e(r.get("errors", {}).get("last_state")), e(r.get("max_grad_error")),
                                        "yes" if r["ok"] else "NO " + r.get("error", "")]),
        **{probe: (probe, ["case", "ran", "out err", "max grad err", "ok", "note"],
                   lambda r: [r["case"], r.get("effective", ""), e(r.get("errors", {}).get("out", r.get("out_error"))),
                              e(r.get("max_grad_error", max(r.get("grad_errors", {}).values(), default=None))),
                              "yes" if r["ok"] else "NO", r.get("error") or r.get("description", "")
                              + " (informational)" * bool(r.get("informational"))])
           for probe in ("scan_edge_cases", "conv_edge_cases")},
    }  # fmt: skip
    for name, (title, header, cells) in tables.items():
        if s.get(name, {}).get("cases"):
            lines += ["", f"## {title}", "", harness.markdown_table(header, map(cells, s[name]["cases"]))]
    return lines
