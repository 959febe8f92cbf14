"""The measurement sections of ``check_cuda.py``: copy bandwidth, scan, fusion crossover, full model.

Each times the ``fwd`` and ``fwd_bwd`` of its cases with ``benchmarks/harness.py`` (CUDA events, the median of samples
of at least ``min_sample_ms``) and their peak memory, skips the cases predicted to pass the run's time budget, and
reports ``ok`` / ``partial`` / ``skipped`` / ``error``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import cuda_checks as cc
import cuda_model
import harness
import torch

BACKENDS = ("cuda", "torch")  # the scan backends compared
#: The SDPA kernels: their ``SDPBackend`` name and the operator the profiler shows when they run.
SDPA = {
    "flash": ("FLASH_ATTENTION", "_scaled_dot_product_flash_attention"),
    "efficient": ("EFFICIENT_ATTENTION", "_scaled_dot_product_efficient_attention"),
    "cudnn": ("CUDNN_ATTENTION", "_scaled_dot_product_cudnn_attention"),
    "math": ("MATH", "_scaled_dot_product_attention_math"),
}


def time_call(ctx: cc.Context, fn: Callable, **options: Any) -> dict[str, Any]:
    """``harness.time_call`` with the plan's repeats, budget and sample length unless ``options`` say otherwise."""
    plan = ctx.plan
    options = {"repeats": plan.repeats, "budget_s": plan.case_budget_s, "min_sample_ms": plan.min_sample_ms, **options}
    return harness.time_call(fn, device=ctx.device, **options)


def time_modes(ctx: cc.Context, row: dict, fwd: Callable, fwd_bwd: Callable, prepare: Callable) -> dict[str, Any]:
    """``row`` with the timing (``fwd``, ``fwd_bwd``) and peak memory (``*_peak_mib``) of both, or the error.

    ``prepare`` runs before each peak measurement (dropping earlier gradients, so that only this call's count).
    """
    try:
        for mode, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
            row[mode] = time_call(ctx, fn)
            prepare()
            row[f"{mode}_peak_mib"] = harness.peak_mib(fn, ctx.device)
    except Exception as exc:
        row["error"] = cc.error_text(exc)
    cc.free(ctx.device)
    return row


def time_cases(ctx: cc.Context, cases: list[dict], family: tuple, size: str, build: Callable, exponent: Callable):
    """``time_modes(ctx, *build(case))`` for each case, or a skip when its time, predicted from the last measured
    case of its ``family`` as ``(size ratio) ** exponent(case)``, would pass the run's time budget (warm-ups,
    samples and the memory runs: 5 calls of each mode)."""
    rows, skipped, last = [], [], {}
    for case in cases:
        key = tuple(case[k] for k in family)
        if key in last:
            predicted = last[key][1] * (case[size] / last[key][0]) ** exponent(case) * 5 / 1e3
            if predicted > ctx.remaining() - 5:
                skipped.append({**case, "reason": f"time budget (predicted {predicted:.0f} s)"})
                continue
        rows.append(time_modes(ctx, *build(case)))
        if "error" not in rows[-1]:
            last[key] = (case[size], rows[-1]["fwd"]["median_ms"] + rows[-1]["fwd_bwd"]["median_ms"])
    return rows, skipped


def drop_grads(module: torch.nn.Module | None, tensors: Any = ()) -> None:
    """Set the gradients of ``module``'s parameters and of ``tensors`` to ``None``."""
    if module is not None:
        module.zero_grad(set_to_none=True)
    for t in tensors:
        t.grad = None


def status(rows: list[dict], skipped: list) -> str:
    if not rows:
        return "skipped"
    errors = [r for r in rows if "error" in r]
    return "error" if len(errors) == len(rows) else ("partial" if errors or skipped else "ok")


def section_copy_bandwidth(ctx: cc.Context) -> dict[str, Any]:
    src = torch.randn(ctx.plan.copy_mib * 2**20 // 4, device=ctx.device)
    dst = torch.empty_like(src)
    timing = time_call(ctx, lambda: dst.copy_(src), repeats=max(ctx.plan.repeats, 3), budget_s=10)
    nbytes = 2 * src.numel() * src.element_size()  # read + write
    ctx.copy_gbps = nbytes / (timing["median_ms"] * 1e-3) / 1e9
    result = {"status": "ok", "bytes_read_plus_written": nbytes, "timing": timing, "gb_per_s": ctx.copy_gbps}
    return {**result, "method": "dst.copy_(src), float32, bytes read + bytes written over the median time"}


#: The fewest bytes the scan must move (each input read once, each output written once): ``s`` bytes an element of
#: u, delta, z, B, C and their gradients, float32 A, D, delta_bias.
BYTES_FORMULA = {"fwd": "s*(4*b*d*l + 2*b*n*l) + 4*(d*n + 2*d)"}
BYTES_FORMULA["fwd_bwd"] = "fwd + s*(7*b*d*l + 4*b*n*l) + 8*(d*n + 2*d)"


def scan_bytes(b: int, d: int, n: int, L: int, s: int) -> dict[str, int]:
    """``BYTES_FORMULA``."""
    params = 4 * (d * n + 2 * d)
    fwd = s * (4 * b * d * L + 2 * b * n * L) + params
    return {"fwd": fwd, "fwd_bwd": fwd + s * (7 * b * d * L + 4 * b * n * L) + 2 * params}


def section_scan_timing(ctx: cc.Context) -> dict[str, Any]:
    from mambavl.ops import selective_scan

    plan, device = ctx.plan, ctx.device
    b, d, n = plan.scan_shape["b"], plan.scan_shape["d"], plan.scan_shape["n"]
    cases = cc.make_cases("l dtype backend", *itertools.product(plan.scan_lengths, ("bfloat16", "float32"), BACKENDS))

    def skip(c: dict) -> bool:  # the torch backend: up to scan_torch_max_l, float32 at the first length only
        repeated = c["dtype"] == "float32" and c["l"] != plan.scan_lengths[0]
        return c["backend"] == "torch" and (c["l"] > plan.scan_torch_max_l or repeated)

    reason = "torch: l > scan_torch_max_l, float32 at the first l only"
    by_design = [{**c, "reason": reason} for c in cases if skip(c)]
    cases = [c for c in cases if not skip(c)]

    def build(case: dict) -> tuple:
        L, dtype, backend = case["l"], getattr(torch, case["dtype"]), case["backend"]
        x = cc.make_scan_inputs(b, d, n, L, dtype, device)
        leaves = {k: v.detach().requires_grad_(True) for k, v in x.items()}
        dout = torch.randn(b, d, L, device=device, dtype=dtype)

        def fwd() -> None:
            with torch.no_grad():
                selective_scan(**x, delta_softplus=True, backend=backend)

        def fwd_bwd() -> None:
            drop_grads(None, leaves.values())
            selective_scan(**leaves, delta_softplus=True, backend=backend).backward(dout)

        row = {"b": b, "d": d, "n": n, **case, "effective": cc.effective_scan_backend(backend, x["u"], x["A"])}
        row["bytes"] = scan_bytes(b, d, n, L, dtype.itemsize)
        return row, fwd, fwd_bwd, lambda: drop_grads(None, leaves.values())

    rows, skipped = time_cases(ctx, cases, ("backend", "dtype"), "l", build, lambda case: 1.0)
    for row in (r for r in rows if "error" not in r):
        for mode in ("fwd", "fwd_bwd"):
            row[f"{mode}_gb_per_s"] = row["bytes"][mode] / (row[mode]["median_ms"] * 1e-3) / 1e9
            row[f"{mode}_fraction_of_copy"] = ctx.copy_gbps and row[f"{mode}_gb_per_s"] / ctx.copy_gbps
            row[f"{mode}_floor_ms"] = ctx.copy_gbps and row["bytes"][mode] / (ctx.copy_gbps * 1e9) * 1e3
    for row in rows:  # speed-up of the kernel over the torch backend at the same size
        twin = [r for r in rows if r["backend"] == "torch" and (r["l"], r["dtype"]) == (row["l"], row["dtype"])]
        if row["backend"] == "cuda" and "fwd" in row and twin and "fwd" in twin[0]:
            row["speedup_vs_torch"] = {m: twin[0][m]["median_ms"] / row[m]["median_ms"] for m in ("fwd", "fwd_bwd")}
    result = {"status": status(rows, skipped), "rows": rows, "skipped": skipped, "not_run_by_design": by_design}
    result.update(copy_gb_per_s=ctx.copy_gbps, options="delta_softplus=True, D, z, delta_bias (float32 A, D, bias)")
    return {**result, "bytes_formula": BYTES_FORMULA}


def build_fusion(kind: str, tokens: int, plan: Any, device: torch.device):
    from mambavl import MambaVLConfig
    from mambavl.fusion import build_fusion

    width, transformer = (
        plan.fusion_width,
        {"fusion_transformer_depth": plan.fusion_depth, "fusion_transformer_heads": 4},
    )
    config = MambaVLConfig(hidden_size=width, video_feature_size=width, fusion_type=kind, **transformer)
    sizes = (tokens, plan.question_tokens, plan.question_tokens)
    inputs = [torch.randn(1, s, width, device=device) for s in sizes]
    return build_fusion(config).to(device), inputs, [x.detach().requires_grad_(True) for x in inputs]


def fusion_step(fusion, inputs: list, device: torch.device, grad: bool) -> None:
    """One forward (``grad=False``: under ``no_grad``) or forward+backward of a fusion under bf16 autocast."""
    drop_grads(fusion, inputs)
    with torch.set_grad_enabled(grad), cc.autocast(device):
        out = fusion(*inputs)
    if grad:
        (out.verb_features.float().sum() + out.noun_features.float().sum()).backward()


def sdpa_report(plan: Any, device: torch.device) -> dict[str, Any]:
    """The SDPA kernel the transformer fusion picks (profiler), and which kernels can run it at all."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fusion, _, leaves = build_fusion("transformer", plan.fusion_tokens[0], plan, device)
    names = cc.profiled_names(lambda: fusion_step(fusion, leaves, device, True), device)
    available = {}
    for label, (backend, _) in SDPA.items():
        try:
            with sdpa_kernel([getattr(SDPBackend, backend)]):
                fusion_step(fusion, leaves, device, True)
            available[label] = "runs"
        except Exception as exc:
            available[label] = cc.error_text(exc)[:160]
    picked = [k for k, (_, op) in SDPA.items() if any(op in n for n in names)]
    ops_seen = sorted(n for n in names if "scaled_dot_product" in n)
    return {"picked_by_default": picked or ["unknown"], "available": available, "ops_seen": ops_seen}


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
    note = "the Mamba fusion is ahead at every size compared"
    if first > 0:
        note = f"transformer ahead at {both[first - 1]} tokens, Mamba ahead from {both[first]} tokens on"
    ratios = {t: by_tokens[t]["transformer"] / by_tokens[t]["mamba"] for t in both if by_tokens[t]["mamba"] > 0}
    return {"tokens": both[first], "at_or_below_smallest": first == 0, "note": note, "transformer_over_mamba": ratios}


def section_fusion_timing(ctx: cc.Context) -> dict[str, Any]:
    plan, device = ctx.plan, ctx.device
    result: dict[str, Any] = {"width": plan.fusion_width, "batch": 1, "question_tokens": plan.question_tokens}
    result.update(transformer=f"{plan.fusion_depth} layers x 4 heads", autocast="bf16")
    try:
        result["sdpa"] = sdpa_report(plan, device)
    except Exception as exc:
        result["sdpa"] = {"error": cc.error_text(exc)}

    def build(case: dict) -> tuple:
        fusion, inputs, leaves = build_fusion(case["fusion"], case["tokens"], plan, device)
        return (
            dict(case),
            lambda: fusion_step(fusion, inputs, device, False),
            lambda: fusion_step(fusion, leaves, device, True),
            lambda: drop_grads(fusion, leaves),
        )

    cases = cc.make_cases("tokens fusion", *itertools.product(plan.fusion_tokens, ("mamba", "transformer")))
    quadratic = lambda case: 1.0 if case["fusion"] == "mamba" else 2.0  # noqa: E731  (attention's cost)
    rows, skipped = time_cases(ctx, cases, ("fusion",), "tokens", build, quadratic)
    for row in (r for r in rows if "error" not in r):
        row["fwd_ms"], row["fwd_bwd_ms"] = row["fwd"]["median_ms"], row["fwd_bwd"]["median_ms"]
    metrics = {"time_fwd": "fwd_ms", "time_fwd_bwd": "fwd_bwd_ms"}
    metrics.update(memory_fwd="fwd_peak_mib", memory_fwd_bwd="fwd_bwd_peak_mib")
    crossovers = {k: crossover(rows, metric) for k, metric in metrics.items()}
    return {**result, "status": status(rows, skipped), "rows": rows, "skipped": skipped, "crossover": crossovers}


def section_model_timing(ctx: cc.Context) -> dict[str, Any]:
    batch = ctx.plan.model_timing_batch
    model, inputs = cuda_model.build_model(ctx.plan, ctx.device, ctx.seed + 3, batch)
    rows, skipped = [], []
    for backend in BACKENDS:
        if ctx.remaining() < 4 * ctx.plan.case_budget_s + 10:  # two timings of about two budgets each
            skipped.append({"backend": backend, "reason": "time budget"})
            continue
        cuda_model.set_scan_backend(model, backend)

        def fwd() -> None:
            with torch.no_grad(), cc.autocast(ctx.device):
                model(**inputs)

        def fwd_bwd() -> None:
            model.zero_grad(set_to_none=True)
            with cc.autocast(ctx.device):
                loss = model(**inputs).loss
            loss.backward()

        one = torch.empty(1, device=ctx.device)
        row = {"backend": backend, "effective": cc.effective_scan_backend(backend, one, one)}
        rows.append(time_modes(ctx, row, fwd, fwd_bwd, lambda: drop_grads(model)))
        if "error" not in row:
            row["clips_per_s_fwd_bwd"] = batch / (row["fwd_bwd"]["median_ms"] * 1e-3)
    v, text = model.config.video_config, model.config.text_config
    described = {"batch": batch, "clip": f"{v.num_frames}x{v.image_size}x{v.image_size}"}
    described.update(hidden_size=model.config.hidden_size, autocast="bf16", weights="float32")
    described["video_encoder"] = f"VideoMAE {v.hidden_size}x{v.num_hidden_layers} layers (random weights)"
    described["text"] = f"{type(text).__name__} embeddings ({text.vocab_size} x {text.hidden_size}), frozen"
    return {"status": status(rows, skipped), "rows": rows, "skipped": skipped, "model": described}
