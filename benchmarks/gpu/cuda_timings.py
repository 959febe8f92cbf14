"""The measurement sections of ``check_cuda.py``: copy bandwidth, scan, fusion crossover, full model (see there).

Each section times ``fwd`` and ``fwd_bwd`` of its cases with ``benchmarks/harness.py`` (CUDA events, samples of at
least ``min_sample_ms``, the median) and their peak memory, skips the cases predicted to pass the run's time budget,
and reports ``ok`` / ``partial`` / ``skipped`` / ``error``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cuda_checks as cc
import harness
import torch

SDPA_OPS = {"flash": "_scaled_dot_product_flash_attention", "efficient": "_scaled_dot_product_efficient_attention",
            "cudnn": "_scaled_dot_product_cudnn_attention", "math": "_scaled_dot_product_attention_math"}  # fmt: skip


def time_modes(ctx: cc.Context, row: dict, fwd: Callable[[], Any], fwd_bwd: Callable[[], Any], prepare=None) -> dict:
    """``row`` with the median time (``fwd``, ``fwd_bwd``) and peak memory (``*_peak_mib``) of both, or the error.

    ``prepare`` runs before each peak measurement (e.g. dropping earlier gradients, so that this call's count).
    """
    plan = ctx.plan
    try:
        for mode, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
            row[mode] = harness.time_call(fn, repeats=plan.repeats, budget_s=plan.case_budget_s,
                                          min_sample_ms=plan.min_sample_ms, device=ctx.device)  # fmt: skip
            (prepare or (lambda: None))()
            row[f"{mode}_peak_mib"] = harness.peak_mib(fn, ctx.device)
    except Exception as exc:
        row["error"] = cc.error_text(exc)
    cc.free(ctx.device)
    return row


def drop_grads(module: torch.nn.Module | None, tensors: Any = ()) -> None:
    """Set the gradients of ``module``'s parameters and of ``tensors`` to ``None``."""
    if module is not None:
        module.zero_grad(set_to_none=True)
    for t in tensors:
        t.grad = None


def over_budget(ctx: cc.Context, last: dict, key: Any, size: int, exponent: float = 1.0) -> str | None:
    """Why the case at ``size`` is skipped: its predicted time (from ``last[key]``, the last measured size) would
    pass the run's time budget; ``None`` when it fits (warm-ups, samples and the memory runs: 5 calls of each)."""
    if key not in last:
        return None
    prev_size, prev_ms = last[key]
    predicted = prev_ms * (size / prev_size) ** exponent * 5 / 1e3
    return f"time budget (predicted {predicted:.0f} s)" if predicted > ctx.remaining() - 5 else None


def status(rows: list[dict], skipped: list) -> str:
    errors = [r for r in rows if "error" in r]
    if not rows:
        return "skipped"
    return "error" if len(errors) == len(rows) else ("partial" if errors or skipped else "ok")


def section_copy_bandwidth(ctx: cc.Context) -> dict[str, Any]:
    src = torch.randn(ctx.plan.copy_mib * 2**20 // 4, device=ctx.device)
    dst = torch.empty_like(src)
    timing = harness.time_call(lambda: dst.copy_(src), repeats=max(ctx.plan.repeats, 3), budget_s=10,
                               min_sample_ms=ctx.plan.min_sample_ms, device=ctx.device)  # fmt: skip
    nbytes = 2 * src.numel() * src.element_size()  # read + write
    ctx.copy_gbps = nbytes / (timing["median_ms"] * 1e-3) / 1e9
    return {"status": "ok", "bytes_read_plus_written": nbytes, "timing": timing, "gb_per_s": ctx.copy_gbps,
            "method": "dst.copy_(src), float32, bytes read + bytes written over the median time"}  # fmt: skip


def scan_bytes(b: int, d: int, n: int, L: int, itemsize: int) -> dict[str, int]:
    """Fewest bytes the scan must move (each input read once, each output written once); formula: check_cuda.py."""
    params = 4 * (d * n + 2 * d)  # A, D, delta_bias in float32
    fwd = itemsize * (4 * b * d * L + 2 * b * n * L) + params
    return {"fwd": fwd, "fwd_bwd": fwd + itemsize * (7 * b * d * L + 4 * b * n * L) + 2 * params}


def section_scan_timing(ctx: cc.Context) -> dict[str, Any]:
    from mambavl.ops import selective_scan

    plan, device = ctx.plan, ctx.device
    b, d, n = plan.scan_shape["b"], plan.scan_shape["d"], plan.scan_shape["n"]
    rows, skipped, by_design, last = [], [], [], {}
    for L, dtype, backend in ((L, t, k) for L in plan.scan_lengths for t in (torch.bfloat16, torch.float32)
                              for k in ("cuda", "torch")):  # fmt: skip
        case = {"l": L, "dtype": cc.dname(dtype), "backend": backend}
        long_or_repeated = plan.scan_torch_max_l < L or (dtype == torch.float32 and plan.scan_lengths[0] != L)
        if backend == "torch" and long_or_repeated:
            by_design.append({**case, "reason": "torch: l > scan_torch_max_l, float32 at the first l only"})
            continue
        if reason := over_budget(ctx, last, (backend, dtype), L):
            skipped.append({**case, "reason": reason})
            continue
        x = cc.make_scan_inputs(b, d, n, L, dtype, device)
        leaves = {k: v.detach().requires_grad_(True) for k, v in x.items()}
        dout = torch.randn(b, d, L, device=device, dtype=dtype)

        def fwd(x=x, backend=backend) -> None:
            with torch.no_grad():
                selective_scan(**x, delta_softplus=True, backend=backend)

        def fwd_bwd(leaves=leaves, backend=backend, dout=dout) -> None:
            drop_grads(None, leaves.values())
            selective_scan(**leaves, delta_softplus=True, backend=backend).backward(dout)

        row = {"b": b, "d": d, "n": n, **case, "effective": cc.effective_scan_backend(backend, x["u"], x["A"]),
               "bytes": scan_bytes(b, d, n, L, torch.finfo(dtype).bits // 8)}  # fmt: skip
        rows.append(time_modes(ctx, row, fwd, fwd_bwd, prepare=lambda v=leaves: drop_grads(None, v.values())))
        del x, leaves, dout
        if "error" not in row:
            last[(backend, dtype)] = (L, row["fwd"]["median_ms"] + row["fwd_bwd"]["median_ms"])
            for mode in ("fwd", "fwd_bwd"):
                seconds = row[mode]["median_ms"] * 1e-3
                row[f"{mode}_gb_per_s"] = row["bytes"][mode] / seconds / 1e9
                row[f"{mode}_fraction_of_copy"] = ctx.copy_gbps and row[f"{mode}_gb_per_s"] / ctx.copy_gbps
                row[f"{mode}_floor_ms"] = ctx.copy_gbps and row["bytes"][mode] / (ctx.copy_gbps * 1e9) * 1e3
    for row in rows:  # speed-up of the kernel over the torch backend at the same size
        twin = [r for r in rows if r["backend"] == "torch" and (r["l"], r["dtype"]) == (row["l"], row["dtype"])]
        if row["backend"] == "cuda" and "fwd" in row and twin and "fwd" in twin[0]:
            row["speedup_vs_torch"] = {m: twin[0][m]["median_ms"] / row[m]["median_ms"] for m in ("fwd", "fwd_bwd")}
    return {"status": status(rows, skipped), "rows": rows, "skipped": skipped, "not_run_by_design": by_design,
            "copy_gb_per_s": ctx.copy_gbps, "options": "delta_softplus=True, D, z, delta_bias (float32 A, D, bias)",
            "bytes_formula": {"fwd": "s*(4*b*d*l + 2*b*n*l) + 4*(d*n + 2*d)",
                              "fwd_bwd": "fwd + s*(7*b*d*l + 4*b*n*l) + 8*(d*n + 2*d)"}}  # fmt: skip


def section_model_timing(ctx: cc.Context) -> dict[str, Any]:
    batch = ctx.plan.model_timing_batch
    model, inputs = cc.build_model(ctx.plan, ctx.device, ctx.seed + 3, batch)
    rows, skipped = [], []
    for backend in ("cuda", "torch"):
        if ctx.remaining() < 4 * ctx.plan.case_budget_s + 10:  # two timings of about two budgets each
            skipped.append({"backend": backend, "reason": "time budget"})
            continue
        cc.set_scan_backend(model, backend)

        def fwd() -> None:
            with torch.no_grad(), cc.autocast(ctx.device):
                model(**inputs)

        def fwd_bwd() -> None:
            model.zero_grad(set_to_none=True)
            with cc.autocast(ctx.device):
                loss = model(**inputs).loss
            loss.backward()

        one = torch.empty(1, device=ctx.device)
        row = time_modes(ctx, {"backend": backend, "effective": cc.effective_scan_backend(backend, one, one)}, fwd,
                         fwd_bwd, prepare=lambda: drop_grads(model))  # fmt: skip
        if "error" not in row:
            row["clips_per_s_fwd_bwd"] = batch / (row["fwd_bwd"]["median_ms"] * 1e-3)
        rows.append(row)
    v, config = model.config.video_config, model.config
    return {"status": status(rows, skipped), "rows": rows, "skipped": skipped, "model": {
        "batch": batch, "clip": f"{v.num_frames}x{v.image_size}x{v.image_size}", "hidden_size": config.hidden_size,
        "video_encoder": f"VideoMAE {v.hidden_size}x{v.num_hidden_layers} layers (random weights)",
        "text": f"{type(config.text_config).__name__} embeddings ({config.text_config.vocab_size} x "
        f"{config.text_config.hidden_size}), frozen", "autocast": "bf16", "weights": "float32"}}  # fmt: skip


def build_fusion_case(fusion_type: str, tokens: int, plan: cc.Plan, device: torch.device):
    from mambavl import MambaVLConfig
    from mambavl.fusion import build_fusion

    config = MambaVLConfig(hidden_size=plan.fusion_width, video_feature_size=plan.fusion_width,
                           fusion_type=fusion_type, fusion_transformer_depth=plan.fusion_depth,
                           fusion_transformer_heads=4)  # fmt: skip
    sizes = (tokens, plan.question_tokens, plan.question_tokens)
    return build_fusion(config).to(device), [torch.randn(1, s, plan.fusion_width, device=device) for s in sizes]


def fusion_step(fusion, leaves: list, device: torch.device, grad: bool) -> None:
    """One forward (``grad=False``: under ``no_grad``) or forward+backward of a fusion under bf16 autocast."""
    drop_grads(fusion, leaves)
    with torch.set_grad_enabled(grad), cc.autocast(device):
        out = fusion(*leaves)
    if grad:
        (out.verb_features.float().sum() + out.noun_features.float().sum()).backward()


def sdpa_report(plan: cc.Plan, device: torch.device) -> dict[str, Any]:
    """The SDPA kernel the transformer fusion picks (profiler), and which kernels can run it at all."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fusion, inputs = build_fusion_case("transformer", plan.fusion_tokens[0], plan, device)
    leaves = [x.requires_grad_(True) for x in inputs]
    names = cc.profiled_names(lambda: fusion_step(fusion, leaves, device, True), device)
    available = {}
    for label in SDPA_OPS:
        try:
            with sdpa_kernel([getattr(SDPBackend, {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                                                   "cudnn": "CUDNN_ATTENTION", "math": "MATH"}[label])]):  # fmt: skip
                fusion_step(fusion, leaves, device, True)
            available[label] = "runs"
        except Exception as exc:
            available[label] = cc.error_text(exc)[:160]
    picked = [k for k, op in SDPA_OPS.items() if any(op in n for n in names)]
    return {"picked_by_default": picked or ["unknown"], "available": available,
            "ops_seen": sorted(n for n in names if "scaled_dot_product" in n)}  # fmt: skip


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
    result: dict[str, Any] = {"width": plan.fusion_width, "batch": 1, "question_tokens": plan.question_tokens,
                              "transformer": f"{plan.fusion_depth} layers x 4 heads", "autocast": "bf16"}  # fmt: skip
    try:
        result["sdpa"] = sdpa_report(plan, device)
    except Exception as exc:
        result["sdpa"] = {"error": cc.error_text(exc)}
    rows, skipped, last = [], [], {}
    for tokens, kind in ((t, k) for t in plan.fusion_tokens for k in ("mamba", "transformer")):
        if reason := over_budget(ctx, last, kind, tokens, exponent=1.0 if kind == "mamba" else 2.0):
            skipped.append({"tokens": tokens, "fusion": kind, "reason": reason})
            continue
        fusion, inputs = build_fusion_case(kind, tokens, plan, device)
        leaves = [x.detach().requires_grad_(True) for x in inputs]
        row = time_modes(ctx, {"tokens": tokens, "fusion": kind},
                         lambda f=fusion, x=inputs: fusion_step(f, x, device, False),
                         lambda f=fusion, x=leaves: fusion_step(f, x, device, True),
                         prepare=lambda f=fusion, x=leaves: drop_grads(f, x))  # fmt: skip
        if "error" not in row:
            row["fwd_ms"], row["fwd_bwd_ms"] = row["fwd"]["median_ms"], row["fwd_bwd"]["median_ms"]
            last[kind] = (tokens, row["fwd_ms"] + row["fwd_bwd_ms"])
        rows.append(row)
        del fusion, inputs, leaves
    metrics = {"time_fwd": "fwd_ms", "time_fwd_bwd": "fwd_bwd_ms", "memory_fwd": "fwd_peak_mib",
               "memory_fwd_bwd": "fwd_bwd_peak_mib"}  # fmt: skip
    return {**result, "status": status(rows, skipped), "rows": rows, "skipped": skipped,
            "crossover": {k: crossover(rows, m) for k, m in metrics.items()}}  # fmt: skip


def _ms(row: dict, mode: str) -> str:
    return harness.fmt(row[mode]["median_ms"] if mode in row else None, "{:.3f}")


def key_numbers(name: str, sec: dict[str, Any]) -> str:
    """The summary table's "key numbers" of one measurement section."""
    if name == "copy_bandwidth":
        return f"{sec['gb_per_s']:.1f} GB/s (read + write)"
    if name == "scan_timing":
        parts = [f"l={r['l']}: fwd {_ms(r, 'fwd')} ms ({harness.fmt(r.get('fwd_fraction_of_copy'), '{:.2f}')} of "
                 f"copy BW), fwd+bwd {_ms(r, 'fwd_bwd')} ms" + harness.fmt(r.get("speedup_vs_torch", {}).get(
                     "fwd_bwd"), " ({:.1f}x torch)").replace("-", "") for r in sec["rows"]
                 if r["backend"] == "cuda" and "fwd" in r and r["dtype"] == "bfloat16"]  # fmt: skip
        return "bf16 cuda " + "; ".join(parts[:3]) if parts else "no cuda rows"
    if name == "model_timing":
        return "; ".join(f"{r['backend']}: fwd {_ms(r, 'fwd')} ms, fwd+bwd {_ms(r, 'fwd_bwd')} ms, peak "
                         f"{harness.fmt(r.get('fwd_bwd_peak_mib'))} MiB" for r in sec["rows"])  # fmt: skip
    cross = sec["crossover"]
    return (
        f"SDPA {','.join(sec['sdpa'].get('picked_by_default', ['?']))}; mamba ahead from (time fwd+bwd) "
        f"{cross['time_fwd_bwd']['tokens']} tokens, (memory fwd+bwd) {cross['memory_fwd_bwd']['tokens']} tokens"
    )


def markdown_sections(s: dict[str, Any]) -> list[str]:
    """The report's tables of the measurement sections present in ``s`` (the results' sections)."""
    f = harness.fmt
    lines = []
    if s.get("scan_timing", {}).get("rows"):
        sec = s["scan_timing"]
        lines += ["", f"## Scan timing (copy bandwidth {f(sec['copy_gb_per_s'])} GB/s)", "",
                  f"Bytes: fwd `{sec['bytes_formula']['fwd']}`, fwd+bwd `{sec['bytes_formula']['fwd_bwd']}`.", "",
                  harness.markdown_table(
                      ["l", "dtype", "backend (ran)", "fwd ms", "fwd GB/s", "of copy", "fwd+bwd ms", "fwd+bwd GB/s",
                       "of copy", "peak fwd+bwd MiB", "speed-up vs torch (fwd / fwd+bwd)"],
                      [[r["l"], r["dtype"], f"{r['backend']} ({r['effective']})", _ms(r, "fwd"),
                        f(r.get("fwd_gb_per_s")), f(r.get("fwd_fraction_of_copy"), "{:.2f}"), _ms(r, "fwd_bwd"),
                        f(r.get("fwd_bwd_gb_per_s")), f(r.get("fwd_bwd_fraction_of_copy"), "{:.2f}"),
                        f(r.get("fwd_bwd_peak_mib")), r.get("error", "")[:80] or " / ".join(
                            f"{v:.1f}x" for v in r.get("speedup_vs_torch", {}).values())]
                       for r in sec["rows"]])]  # fmt: skip
    if s.get("fusion_timing", {}).get("rows"):
        sec = s["fusion_timing"]
        lines += ["", f"## Fusion scaling: SSM fusion vs {sec['transformer']} transformer (width {sec['width']}, "
                  "batch 1, bf16 autocast)", "", f"SDPA kernel picked: {sec['sdpa'].get('picked_by_default')}; "
                  f"runnable: {sec['sdpa'].get('available')}.", "",
                  harness.markdown_table(["video tokens", "fusion", "fwd ms", "fwd peak MiB", "fwd+bwd ms",
                                          "fwd+bwd peak MiB"],
                                         [[r["tokens"], r["fusion"], _ms(r, "fwd"), f(r.get("fwd_peak_mib")),
                                           _ms(r, "fwd_bwd"), f(r.get("fwd_bwd_peak_mib")) + " " + r.get("error", "")]
                                          for r in sec["rows"]]), "",
                  *(f"- crossover {k}: {v.get('tokens')} ({v.get('note')})"
                    for k, v in sec["crossover"].items())]  # fmt: skip
    if s.get("model_timing", {}).get("rows"):
        sec, m = s["model_timing"], s["model_timing"]["model"]
        lines += ["", f"## Full model: batch {m['batch']} clips of {m['clip']}, {m['video_encoder']}, {m['text']}, "
                  f"fusion width {m['hidden_size']}, {m['autocast']} autocast, {m['weights']} weights", "",
                  harness.markdown_table(["scan backend", "fwd ms", "fwd peak MiB", "fwd+bwd ms", "fwd+bwd peak MiB",
                                          "clips/s (train)"],
                                         [[r["backend"], _ms(r, "fwd"), f(r.get("fwd_peak_mib")), _ms(r, "fwd_bwd"),
                                           f(r.get("fwd_bwd_peak_mib")), f(r.get("clips_per_s_fwd_bwd"))]
                                          for r in sec["rows"]])]  # fmt: skip
    return lines
