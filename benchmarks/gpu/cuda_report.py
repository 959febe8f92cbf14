"""The report of ``check_cuda.py``: the summary table's key numbers of each section, and the Markdown report."""

from __future__ import annotations

from typing import Any

import cuda_model
import harness


def versions(env: dict[str, Any]) -> str:
    if "torch" not in env:  # the environment section failed
        return "environment unknown"
    extensions = f"mamba-ssm {env.get('mamba_ssm_version')}, causal-conv1d {env.get('causal_conv1d_version')}"
    return f"{harness.describe(env)}, cuDNN {env.get('cudnn')}, {extensions}"


def show(value: Any) -> str:
    """A table cell: errors as ``1.23e-04``, other numbers with 4 significant digits (whole from 1000 on)."""
    if isinstance(value, float) and value == value:
        return harness.fmt(value, "{:.2e}" if 0 < abs(value) < 0.01 else "{:,.4g}" if abs(value) < 1e3 else "{:,.0f}")
    return harness.fmt(value, "{}")


def cell(row: dict, path: str) -> Any:
    """The value at ``path`` in ``row`` (dots: nested; a name of ``CELLS``: computed), ``None`` where absent."""
    if path in CELLS:
        return CELLS[path](row)
    for key in path.split("."):
        row = row.get(key) if isinstance(row, dict) else None
    return row


CELLS = {  # computed cells
    "ran": lambda r: f"{r['backend']} ({r['effective']})",
    "ok": lambda r: "yes" if r["ok"] else "NO " + r.get("error", ""),
    "note": lambda r: r.get("description", "") + " (informational)" * bool(r.get("informational")),
    "speedup": lambda r: (
        r.get("error", "")[:80] or " / ".join(f"{v:.1f}x" for v in r.get("speedup_vs_torch", {}).values())
    ),
}
#: The report's tables: section -> its columns, "header=path in a row" (``cell``; the header alone: the same path).
PROBE = "case, ran=effective, out err=errors.out, max grad err=max_grad_error, ok, note"
TABLES = {
    "scan_correctness": "b, d, n, l, layout, dtype, options, backend (ran)=ran, out=errors.out, "
    "last state=errors.last_state, max grad=max_grad_error, ok",
    "scan_edge_cases": PROBE,
    "conv_edge_cases": PROBE,
    "scan_timing": "l, dtype, backend (ran)=ran, fwd ms=fwd.median_ms, fwd GB/s=fwd_gb_per_s, "
    "fwd of copy=fwd_fraction_of_copy, fwd+bwd ms=fwd_bwd.median_ms, fwd+bwd GB/s=fwd_bwd_gb_per_s, "
    "fwd+bwd of copy=fwd_bwd_fraction_of_copy, peak fwd+bwd MiB=fwd_bwd_peak_mib, "
    "speed-up vs torch (fwd / fwd+bwd)=speedup",
    "fusion_timing": "video tokens=tokens, fusion, fwd ms=fwd.median_ms, fwd peak MiB=fwd_peak_mib, "
    "fwd+bwd ms=fwd_bwd.median_ms, fwd+bwd peak MiB=fwd_bwd_peak_mib, error",
    "model_timing": "scan backend=backend, fwd ms=fwd.median_ms, fwd peak MiB=fwd_peak_mib, "
    "fwd+bwd ms=fwd_bwd.median_ms, fwd+bwd peak MiB=fwd_bwd_peak_mib, clips/s (train)=clips_per_s_fwd_bwd",
}


def heading(name: str, sec: dict[str, Any]) -> list[str]:
    """The title of a section's table, and the paragraphs before it."""
    if name == "scan_correctness":
        return ["Scan correctness (rel. error against float64 reference)"]
    if name == "scan_timing":
        formula = sec["bytes_formula"]
        return [
            f"Scan timing (copy bandwidth {show(sec['copy_gb_per_s'])} GB/s)",
            f"Bytes: fwd `{formula['fwd']}`, fwd+bwd `{formula['fwd_bwd']}`.",
        ]
    if name == "fusion_timing":
        crossovers = (f"- crossover {k}: {v.get('tokens')} ({v.get('note')})" for k, v in sec["crossover"].items())
        return [
            f"Fusion scaling: SSM fusion vs {sec['transformer']} transformer (width {sec['width']}, batch 1, "
            "bf16 autocast)",
            f"SDPA kernel picked: {sec['sdpa'].get('picked_by_default')}; runnable: {sec['sdpa'].get('available')}.",
            "\n".join(crossovers),
        ]
    if name == "model_timing":
        return [
            "Full model: batch {batch} clips of {clip}, {video_encoder}, {text}, fusion width {hidden_size}, "
            "{autocast} autocast, {weights} weights".format(**sec["model"])
        ]
    return [name]


def key_numbers(name: str, sec: dict[str, Any]) -> str:
    """The summary table's "key numbers" of one section (an error: its message)."""
    e, short = show, cuda_model.short
    ms = lambda row, mode: show(cell(row, f"{mode}.median_ms"))  # noqa: E731
    if sec["status"] == "error":
        return sec.get("error", "")[:150]
    if name == "environment":
        return versions(sec)
    if name == "scan_correctness":
        c32, c16 = sec["max_cuda_float32"], sec["max_cuda_bfloat16"]
        fp32 = f"fp32 out {e(c32['out'])} grad {e(c32['grad'])}"
        bf16 = f"bf16 out {e(c16['out'])} grad {e(c16['grad'])}"
        return "; ".join([f"backend=cuda max rel err {fp32}; {bf16}", *sec["reasons"]])
    if name == "auto_dispatch":
        return ", ".join(
            f"{c['dtype']}: {c['expected_backend']} {'ok' if c['ok'] else 'WRONG'}" for c in sec["checks"]
        )
    if name == "conv_correctness":
        via = ", ".join(sorted({r.get("effective", "?") for r in sec["cases"]}))
        return f"{sum(r['ok'] for r in sec['cases'])}/{len(sec['cases'])} ok via {via}"
    if name == "model_step":
        return "; ".join(
            [f"{k}: {short(sec[k])}" for k in ("bf16_autocast", "float32_features") if k in sec] + sec["reasons"]
        )
    if name == "model_step_joint":
        return "; ".join(f"{k}: {'ok' if sec[k]['ok'] else short(sec[k])}" for k in ("bf16_autocast", "float32"))
    if name == "copy_bandwidth":
        return f"{sec['gb_per_s']:.1f} GB/s (read + write)"
    if name == "scan_timing":
        rows = [r for r in sec["rows"] if r["backend"] == "cuda" and "fwd" in r and r["dtype"] == "bfloat16"]
        return "bf16 cuda " + "; ".join(
            f"l={r['l']}: fwd {ms(r, 'fwd')} ms ({e(r.get('fwd_fraction_of_copy'))} of copy BW), fwd+bwd "
            f"{ms(r, 'fwd_bwd')} ms ({e(r.get('speedup_vs_torch', {}).get('fwd_bwd'))}x torch)"
            for r in rows[:3]
        )
    if name == "fusion_timing":
        cross = {k: v["tokens"] for k, v in sec["crossover"].items()}
        return (
            f"SDPA {','.join(sec['sdpa'].get('picked_by_default', ['?']))}; mamba ahead from (time fwd+bwd) "
            f"{cross['time_fwd_bwd']} tokens, (memory fwd+bwd) {cross['memory_fwd_bwd']} tokens"
        )
    if name == "model_timing":
        return "; ".join(
            f"{r['backend']}: fwd {ms(r, 'fwd')} ms, fwd+bwd {ms(r, 'fwd_bwd')} ms, peak "
            f"{e(r.get('fwd_bwd_peak_mib'))} MiB"
            for r in sec["rows"]
        )
    return "failing: " + (", ".join(sec["failed"]) or "none")  # the edge cases


def markdown_report(results: dict[str, Any]) -> str:
    s, env = results["sections"], results["sections"].get("environment", {})
    smoke = " (smoke sizes)" if results["smoke"] else ""
    run = f"Seed {results['seed']}{smoke}. Started {results['started_at']}, {results['wall_s']:.0f} s."
    lines = [f"# MambaVL CUDA path on {env.get('device_name')}\n\n{versions(env)}. {run}\n"]
    lines += [f"Command: `{results['command']}`\n\n## Summary\n", summary_table(results)]
    for name, spec in TABLES.items():
        if rows := s.get(name, {}).get("cases") or s.get(name, {}).get("rows"):
            title, *notes = heading(name, s[name])
            columns = [(h, p or h) for h, _, p in (c.partition("=") for c in spec.split(", "))]
            cells = [[show(cell(row, path)) for _, path in columns] for row in rows]
            table = harness.markdown_table([h for h, _ in columns], cells)
            lines += ["", f"## {title}", "", *(n + "\n" for n in notes), table]
    lines += ["", "## Warnings", "", *(f"- {w}" for w in results["warnings"])] if results["warnings"] else []
    return "\n".join(lines) + "\n"


def summary_table(results: dict[str, Any]) -> str:
    rows = [[name, sec["status"], key_numbers(name, sec)] for name, sec in results["sections"].items()]
    return harness.markdown_table(["section", "status", "key numbers"], rows)
