"""The causal-conv1d and model-step sections of ``check_cuda.py``: the kernel against a float64 oracle, and the
model's training step with the cuda scan backend against the torch one (next to the cuda backend's run-to-run noise).
"""

from __future__ import annotations

import itertools
import math
import traceback
from typing import Any

import harness
import torch
import torch.nn.functional as F
from cuda_checks import (
    Context,
    autocast,
    checked,
    copy_strided,
    dname,
    error_text,
    free,
    judge,
    kernels_run,
    make_cases,
    mamba_ssm_state,
    rel_err,
    verdict,
)

#: Bounds on the cuda-vs-torch scan backend differences in a model step (relative, as ``rel_err``).
MODEL_TOLERANCES = {"bf16_autocast": {"loss": 1e-2, "grad": 5e-2}, "float32": {"loss": 1e-4, "grad": 1e-3}}


def check_conv(case: dict, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """``mambavl.ops.causal_conv1d`` (bf16: under autocast) against an ``unfold`` oracle in float64."""
    from mambavl.ops.causal_conv1d import _causal_conv1d_kernel, causal_conv1d

    b, d, L, k = case["b"], case["d"], case["l"], case["k"]
    if case["layout"] == "channel_last":  # like the mixer: in_proj(h).transpose(1, 2)[:, :d]
        x = torch.randn(b, L, 2 * d, device=device).to(dtype).transpose(1, 2)[:, :d]
    else:
        x = torch.randn(b, d, L, device=device).to(dtype)
    inputs = {"x": x, "weight": torch.randn(d, k, device=device) * 0.5, "bias": torch.randn(d, device=device)}
    leaves = {n: copy_strided(v).requires_grad_(True) for n, v in inputs.items()}  # keeps the layout
    ref = {n: v.detach().double().requires_grad_(True) for n, v in inputs.items()}
    grad_w = torch.randn(b, d, L, device=device)
    with autocast(device, enabled=dtype == torch.bfloat16):  # weights float32, activations bf16, as in the model
        out = causal_conv1d(leaves["x"], leaves["weight"], leaves["bias"], activation=case["activation"])
    (out.float() * grad_w.to(out.dtype).float()).sum().backward()
    windows = F.pad(ref["x"], (k - 1, 0)).unfold(-1, k, 1)  # (b, d, l, k): inputs t-k+1 .. t
    ref_out = (windows * ref["weight"][None, :, None, :]).sum(-1) + ref["bias"][None, :, None]
    ref_out = F.silu(ref_out) if case["activation"] == "silu" else ref_out
    (ref_out * grad_w.to(out.dtype).double()).sum().backward()
    kernel = device.type == "cuda" and _causal_conv1d_kernel() is not None
    got = {"out": out, "grads": {n: v.grad for n, v in leaves.items()}}
    judged = judge(got, {"out": ref_out, "grads": {n: v.grad for n, v in ref.items()}}, dname(dtype))
    row = {**case, "dtype": dname(dtype), "out_dtype": dname(out.dtype)}
    return {**row, "effective": "causal-conv1d kernel" if kernel else "torch conv1d", **judged}


def section_conv_correctness(ctx: Context) -> dict[str, Any]:
    cases = itertools.product(ctx.plan.conv_cases, (torch.float32, torch.bfloat16))
    rows = [checked({**c, "dtype": dname(t)}, lambda c=c, t=t: check_conv(c, t, ctx.device)) for c, t in cases]
    failed = sum(not r["ok"] for r in rows)
    reasons = [f"{failed} of {len(rows)} cases out of bounds or raised"] if failed else []
    state = mamba_ssm_state()
    if ctx.device.type == "cuda" and not state["causal_conv1d_kernel_available"]:
        reasons.append(f"causal-conv1d's kernel is not available: {state.get('causal_conv1d_error')}")
    return {"status": verdict(reasons), "reasons": reasons, "cases": rows}


def section_conv_edge_cases(ctx: Context) -> dict[str, Any]:
    cases = make_cases(
        "case b d l k layout activation",
        ("channels_not_multiple_of_8", 2, 60, 50, 4, "channel_last", "silu"),
        ("kernel_width_5", 2, 64, 50, 5, "contiguous", "silu"),
        ("length_1", 2, 64, 1, 4, "contiguous", "silu"),
    )
    rows = [checked(case, lambda c=case: check_conv(c, torch.float32, ctx.device)) for case in cases]
    failed = [r["case"] for r in rows if not r["ok"]]
    return {"status": verdict(failed), "failed": failed, "cases": rows}


def build_model(plan: Any, device: torch.device, seed: int, batch: int, pixels: bool = True, **overrides: Any):
    """The model at paper width (RoBERTa-base embeddings, VideoMAE-base; tiny for smoke runs) and random inputs:
    clips (or precomputed features), right-padded verb/noun questions, labels."""
    from transformers import RobertaConfig, VideoMAEConfig

    from mambavl import MambaVLConfig, MambaVLForActionRecognition

    torch.manual_seed(seed)
    if plan.paper_model:
        text, video, kwargs = RobertaConfig(), VideoMAEConfig(), {"hidden_size": 768, "state_size": 16}
    else:
        small = {"num_hidden_layers": 1, "num_attention_heads": 2}
        text = RobertaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, max_position_embeddings=40, **small)
        clip = {"image_size": 16, "patch_size": 8, "num_frames": 4, "tubelet_size": 2}
        video = VideoMAEConfig(hidden_size=24, intermediate_size=48, **clip, **small)
        kwargs = {"hidden_size": 32, "state_size": 4, "num_verb_classes": 5, "num_noun_classes": 7}
    kwargs.update({"video_config": video} if pixels else {"video_feature_size": video.hidden_size})
    config = MambaVLConfig(text_config=text, **{**kwargs, **overrides})
    if pixels:
        inputs = {"pixel_values": torch.randn(batch, video.num_frames, 3, video.image_size, video.image_size)}
    else:
        inputs = {"video_features": torch.randn(batch, plan.feature_tokens, config.video_feature_size)}
    for name, length in (("verb", 12), ("noun", 8)):
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[-1, length - 3 :] = 0  # right padding in the last row
        ids = torch.randint(3, text.vocab_size, (batch, length))
        inputs[f"{name}_input_ids"] = torch.where(mask.bool(), ids, text.pad_token_id or 0)
        inputs[f"{name}_attention_mask"] = mask
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


def train_pass(model, inputs: dict, backend: str, amp: bool, device: torch.device) -> dict[str, Any]:
    """One forward + backward with the given scan backend: the loss and a copy of every gradient."""
    set_scan_backend(model, backend)
    model.zero_grad(set_to_none=True)
    with autocast(device, enabled=amp):
        loss = model(**inputs).loss
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.detach().float(), "grads": grads}


def grad_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Global and per-module ``||ga - gb|| / ||gb||`` over the gradients of two passes."""
    groups: dict[str, list[float]] = {}
    finite = True
    for name, gb in b.items():
        ga = a.get(name)
        if ga is None or not (bool(torch.isfinite(ga).all()) and bool(torch.isfinite(gb).all())):
            finite = False
            continue
        parts = name.removeprefix("mambavl.").split(".")
        acc = groups.setdefault(".".join(parts[:2]) if parts[0] == "text_encoder" else parts[0], [0.0, 0.0])
        acc[0] += (ga.double() - gb.double()).norm().item() ** 2
        acc[1] += gb.double().norm().item() ** 2
    ratio = lambda n, d: math.sqrt(n / d) if d > 0 else (0.0 if n == 0 else math.inf)  # noqa: E731
    total = ratio(*(sum(v[i] for v in groups.values()) for i in (0, 1))) if finite else math.inf
    per_module = {g: ratio(n, d) for g, (n, d) in groups.items()}
    return {"global": total, "finite": finite, "missing": sorted(set(b) ^ set(a)), "per_module": per_module}


def compare_backends(model, inputs: dict, label: str, device: torch.device) -> dict[str, Any]:
    """cuda, torch, then cuda again: the backends' difference next to the cuda backend's run-to-run noise."""
    amp, tolerance = label == "bf16_autocast", MODEL_TOLERANCES[label]
    first, other, again = (train_pass(model, inputs, b, amp, device) for b in ("cuda", "torch", "cuda"))
    diff = grad_difference(first["grads"], other["grads"])
    result = {"loss_cuda": first["loss"].item(), "loss_torch": other["loss"].item()}
    result["loss_rel_diff"] = rel_err(first["loss"], other["loss"])
    result["loss_rel_noise"] = rel_err(again["loss"], first["loss"])
    result.update(grad_rel_diff=diff, grad_rel_noise=grad_difference(again["grads"], first["grads"])["global"])
    result.update(num_grad_tensors=len(first["grads"]), tolerance=tolerance)
    in_bounds = result["loss_rel_diff"] < tolerance["loss"] and diff["global"] < tolerance["grad"]
    return {**result, "ok": math.isfinite(result["loss_cuda"]) and diff["finite"] and in_bounds}


def short(cmp: dict) -> str:
    if "error" in cmp:
        return cmp["error"]
    e = [harness.fmt(cmp[k], "{:.2e}") for k in ("loss_rel_diff", "loss_rel_noise", "grad_rel_noise")]
    diff = harness.fmt(cmp["grad_rel_diff"]["global"], "{:.2e}")
    return f"loss diff {e[0]} (noise {e[1]}), grad diff {diff} (noise {e[2]})"


def model_step_paper(ctx: Context, result: dict[str, Any], reasons: list[str]) -> None:
    """Paper width with the video encoder under bf16 autocast: backends, kernels seen, an AdamW step."""
    device, batch = ctx.device, ctx.plan.step_batch
    model, inputs = build_model(ctx.plan, device, ctx.seed, batch)
    c, params = model.config, list(model.parameters())
    with torch.no_grad():
        tokens = model.mambavl.encode_video(inputs["pixel_values"]).shape[1]
    text, video = c.text_config, c.video_config
    info = result["model"] = {"parameters": sum(p.numel() for p in params), "batch": batch, "video_tokens": tokens}
    info.update(trainable=sum(p.numel() for p in params if p.requires_grad), hidden_size=c.hidden_size)
    info.update(pixel_values=list(inputs["pixel_values"].shape), state_size=c.state_size)
    info["text"] = f"{type(text).__name__} embeddings {text.vocab_size} x {text.hidden_size}"
    info["video"] = f"{type(video).__name__} {video.hidden_size} x {video.num_hidden_layers} layers"
    bf16 = result["bf16_autocast"] = compare_backends(model, inputs, "bf16_autocast", device)
    if not bf16["ok"]:
        reasons.append(f"bf16 autocast: cuda vs torch backend out of bounds or non-finite ({short(bf16)})")
    if device.type == "cuda":  # which kernels ran in a training step
        seen = result["kernels_seen"] = kernels_run(lambda: train_pass(model, inputs, "cuda", True, device), device)
        if not seen["selective_scan"] or not seen["calls"]["selective_scan_cuda.bwd"]:
            reasons.append(f"mamba-ssm's selective_scan kernels did not run in the model's step ({seen['calls']})")
        if not seen["causal_conv1d"]:
            reasons.append(f"causal-conv1d's kernel did not run in the model's step ({seen['calls']})")
    train_pass(model, inputs, "cuda", True, device)  # an AdamW step on the cuda backend's gradients
    trainable = [p for p in params if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01).step()
    changed = sum(int(not torch.equal(p0, p.detach())) for p0, p in zip(before, trainable, strict=True))
    finite = all(bool(torch.isfinite(p).all()) for p in trainable)
    with torch.no_grad(), autocast(device):
        after = model(**inputs).loss.float().item()
    result["adamw"] = {"tensors_changed": changed, "tensors": len(trainable), "params_finite": finite}
    result["adamw"].update(loss_before=bf16["loss_cuda"], loss_after=after)
    if not (finite and changed > 0 and math.isfinite(after)):
        reasons.append(f"AdamW step: changed {changed}/{len(trainable)} tensors, finite={finite}, loss {after}")


def model_step_float32(ctx: Context, result: dict[str, Any], reasons: list[str]) -> None:
    """float32 without autocast on precomputed features: cuda vs torch backends with tight bounds."""
    model, inputs = build_model(ctx.plan, ctx.device, ctx.seed + 1, ctx.plan.step_batch, pixels=False)
    fp32 = result["float32_features"] = compare_backends(model, inputs, "float32", ctx.device)
    if not fp32["ok"]:
        reasons.append(f"float32: cuda vs torch backend out of bounds or non-finite ({short(fp32)})")


def section_model_step(ctx: Context) -> dict[str, Any]:
    result: dict[str, Any] = {"kernel": mamba_ssm_state()}
    reasons: list[str] = []
    for label, phase in (("paper_bf16", model_step_paper), ("float32_features", model_step_float32)):
        try:
            phase(ctx, result, reasons)
        except Exception as exc:
            reasons.append(f"{label} raised {error_text(exc)}")
            result[f"{label}_traceback"] = traceback.format_exc()
        free(ctx.device)
    return {**result, "status": verdict(reasons), "reasons": reasons}


def section_model_step_joint(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    model, inputs = build_model(plan, ctx.device, ctx.seed + 2, plan.step_batch, pixels=False, fusion_scan="joint")
    labels = ("bf16_autocast", "float32")
    result = {k: checked({}, lambda k=k: compare_backends(model, inputs, k, ctx.device)) for k in labels}
    failed = [k for k, v in result.items() if not v["ok"]]
    return {"status": verdict(failed), "failed": failed, **result}
