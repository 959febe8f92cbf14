"""Verify and measure MambaVL's CUDA path (mamba-ssm's selective scan, causal-conv1d, bf16 training) on one GPU.

Compares ``selective_scan(..., backend="cuda")`` with the ``torch`` backend and a float64 ``reference``, causal-conv1d
with a float64 oracle, and the full model's cuda and torch scan backends; then times the scan against the copy
bandwidth floor, the Mamba fusion against a 6x4 transformer fusion, and the full model. Targets (issue 17): cuda
matches reference (fp32 < 1e-5 outputs, < 1e-4 gradients); the scan reaches at least half the copy bandwidth at
l >= 16k; the Mamba fusion's fwd+bwd beats the transformer fusion's from some token count on.

Sections run in order, correctness first, each in its own ``try`` (a failure is recorded with its traceback):

* correctness (``pass`` / ``fail`` / ``error``; they decide the exit status): ``scan_correctness`` (outputs, last
  state and every gradient, fp32 and bf16, contiguous and mixer-strided inputs, lengths 1 to past the kernel's
  2048-step chunk; on CUDA the kernel must run), ``auto_dispatch`` (``"auto"`` runs the kernel, bitwise equal to
  ``"cuda"``, silently), ``conv_correctness``, ``model_step`` (paper width under bf16 autocast: cuda vs torch loss and
  gradients next to the cuda backend's run-to-run noise, both extensions called, an AdamW step; then float32 on
  precomputed features with tighter bounds);
* probes (a ``fail`` is a limitation of the CUDA path worth knowing): ``scan_edge_cases``, ``conv_edge_cases``,
  ``model_step_joint``;
* measurements (``ok`` / ``partial`` / ``skipped`` / ``error``; cut to ``--time-budget``): ``copy_bandwidth``,
  ``scan_timing`` (GB/s from the bytes the scan must move, ``s`` bytes per element of the input dtype: forward
  ``s*(4bdl + 2bnl) + 4(dn + 2d)``; forward+backward adds ``s*(7bdl + 4bnl) + 8(dn + 2d)``), ``fusion_timing``,
  ``model_timing``.

Timing and memory: ``benchmarks/harness.py`` (CUDA events after a synchronize, samples of at least
``min_sample_ms``, the median; peak ``max_memory_allocated`` over what was allocated before one call). Results:
``gpu_<device>.json`` / ``.md`` in ``--output-dir`` (default on a full CUDA run: ``benchmarks/results``), rewritten
after every section; a summary table is printed last; the exit status is 1 when a correctness section failed.

Usage::

    python benchmarks/gpu/check_cuda.py --device cuda                       # full run (about 5 minutes on an H100)
    python benchmarks/gpu/check_cuda.py --device cpu --smoke --output-dir /tmp/gpu_smoke   # logic check on CPU
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # cuda_checks.py, cuda_timings.py
import cuda_checks as checks
import cuda_timings as timings
import harness

logger = logging.getLogger("check_cuda")
CORRECTNESS_SECTIONS = ("scan_correctness", "auto_dispatch", "conv_correctness", "model_step")
PROBE_SECTIONS = ("scan_edge_cases", "conv_edge_cases", "model_step_joint")
MEASUREMENT_SECTIONS = ("copy_bandwidth", "scan_timing", "fusion_timing", "model_timing")
SECTIONS = ("environment", "scan_correctness", "auto_dispatch", "scan_edge_cases", "conv_correctness",
            "conv_edge_cases", "model_step", "model_step_joint", *MEASUREMENT_SECTIONS)  # fmt: skip
cases = checks.make_cases
FULL = checks.Plan(  # the sizes of a run on a GPU
    scan_cases=cases("b d n l layout", (2, 96, 16, 1, "contiguous"), (2, 96, 16, 37, "contiguous"),
                     (2, 128, 16, 512, "mixer"), (1, 64, 16, 2100, "contiguous"), (2, 96, 4, 300, "mixer")),
    conv_cases=cases("b d l k layout activation", (2, 128, 300, 4, "contiguous", "silu"),
                     (2, 128, 300, 4, "channel_last", "silu"), (2, 64, 77, 3, "contiguous", None),
                     (1, 64, 77, 2, "channel_last", "silu")),
    edge_shape=(2, 64, 16, 200), paper_model=True, step_batch=2, feature_tokens=1568, copy_mib=2048,
    scan_shape={"b": 2, "d": 1536, "n": 16}, scan_lengths=[1568, 4096, 16384, 65536, 262144], scan_torch_max_l=16384,
    fusion_tokens=[1024 * 2**i for i in range(7)], fusion_width=768, fusion_depth=6, question_tokens=16,
    model_timing_batch=8, repeats=10, min_sample_ms=5.0, case_budget_s=4.0,
)  # fmt: skip
SMOKE = checks.Plan(  # tiny sizes: the script's logic, in seconds (also on CPU)
    scan_cases=cases("b d n l layout", (2, 8, 4, 1, "contiguous"), (2, 8, 4, 9, "mixer"), (1, 6, 3, 33, "contiguous")),
    conv_cases=cases("b d l k layout activation", (2, 16, 20, 4, "contiguous", "silu"),
                     (2, 16, 20, 4, "channel_last", "silu"), (1, 8, 9, 3, "contiguous", None)),
    edge_shape=(1, 8, 4, 16), paper_model=False, step_batch=2, feature_tokens=12, copy_mib=8,
    scan_shape={"b": 1, "d": 16, "n": 4}, scan_lengths=[32, 64], scan_torch_max_l=64, fusion_tokens=[16, 32],
    fusion_width=32, fusion_depth=1, question_tokens=5, model_timing_batch=2, repeats=1, min_sample_ms=0.0,
    case_budget_s=1.0,
)  # fmt: skip


def slugify(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


SECTION_FUNCS: dict[str, Callable[[checks.Context], dict[str, Any]]] = {
    name: getattr(timings if name in MEASUREMENT_SECTIONS else checks, f"section_{name}") for name in SECTIONS
}


def run_section(name: str, ctx: checks.Context, all_warnings: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = SECTION_FUNCS[name](ctx)
        except Exception as exc:
            result = {"status": "error", "error": checks.error_text(exc), "traceback": traceback.format_exc()}
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    mine = [m for m in messages if "selective_scan" in m or "causal" in m or "mamba" in m.lower()]
    if mine:
        result["warnings"] = mine
    all_warnings.extend(m for m in messages if m not in all_warnings)
    checks.free(ctx.device)
    return {**result, "wall_s": time.monotonic() - started}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    s = results["sections"]
    failed = [n for n in CORRECTNESS_SECTIONS if n in s and s[n]["status"] != "pass"]
    return {
        "correctness_passed": not failed and all(n in s for n in CORRECTNESS_SECTIONS if n in results["requested"]),
        "failed_correctness_sections": failed,
        "failed_probe_sections": [n for n in PROBE_SECTIONS if n in s and s[n]["status"] != "pass"],
        "measurement_status": {n: s[n]["status"] for n in MEASUREMENT_SECTIONS if n in s},
    }  # fmt: skip


def key_numbers(name: str, sec: dict[str, Any]) -> str:
    """The summary table's "key numbers" of one section."""
    if sec.get("status") == "error":
        return sec.get("error", "")[:150]
    if name == "environment":
        return (f"{sec.get('device_name')}, torch {sec.get('torch')} (CUDA {sec.get('torch_cuda')}), mamba-ssm "
                f"{sec.get('mamba_ssm_version')}, causal-conv1d {sec.get('causal_conv1d_version')}")  # fmt: skip
    return (checks if name in CORRECTNESS_SECTIONS + PROBE_SECTIONS else timings).key_numbers(name, sec)


def markdown_report(results: dict[str, Any]) -> str:
    s, env = results["sections"], results["sections"].get("environment", {})
    lines = [
        f"# MambaVL CUDA path on {env.get('device_name')}", "",
        f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}), transformers "
        f"{env.get('transformers')}, mamba-ssm {env.get('mamba_ssm_version')}, causal-conv1d "
        f"{env.get('causal_conv1d_version')}, Python {env.get('python')}. Seed {results['seed']}"
        f"{' (smoke sizes)' if results['smoke'] else ''}. Started {results['started_at']}, {results['wall_s']:.0f} s.",
        "", f"Command: `{results['command']}`", "", "## Summary", "",
        harness.markdown_table(["section", "status", "key numbers"],
                               [[n, s[n].get("status"), key_numbers(n, s[n])] for n in s]),
    ]  # fmt: skip
    lines += checks.markdown_sections(s) + timings.markdown_sections(s)
    lines += ["", "## Warnings", "", *(f"- {w}" for w in results["warnings"])] if results["warnings"] else []
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to run (default: cuda)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script's logic in seconds")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="folder for gpu_<device>.json/.md (default: benchmarks/results on a full CUDA run)",
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset (environment always)")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds for the run; timing cases predicted to pass it are skipped (420; smoke 120)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock; recorded)")
    args = parser.parse_args(argv)  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    requested = [s.strip() for s in args.sections.split(",") if s.strip()]
    if set(requested) - set(SECTIONS):
        parser.error(f"unknown --sections {sorted(set(requested) - set(SECTIONS))}; choose from {SECTIONS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"check_cuda.py: --device cuda but no GPU (torch {torch.__version__}, CUDA {torch.version.cuda})",
              file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % 2**31
    torch.manual_seed(seed)
    budget = args.time_budget if args.time_budget is not None else (120.0 if args.smoke else 420.0)
    plan = SMOKE if args.smoke else FULL
    ctx = checks.Context(device=device, plan=plan, seed=seed, deadline=time.monotonic() + budget)
    full_cuda_run = device.type == "cuda" and not args.smoke
    out_dir = args.output_dir or (checks.REPO / "benchmarks" / "results" if full_cuda_run else None)
    started, stem = time.monotonic(), "gpu_cpu"
    results: dict[str, Any] = {
        "script": "benchmarks/gpu/check_cuda.py", "command": harness.command_line(), "device": args.device,
        "smoke": args.smoke, "seed": seed, "time_budget_s": budget, "requested": requested,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sections": {}, "warnings": [], "wall_s": 0.0,
    }  # fmt: skip
    for name in (n for n in SECTIONS if n == "environment" or n in requested):
        logger.info("section %s ...", name)
        section = results["sections"][name] = run_section(name, ctx, results["warnings"])
        if name == "environment" and device.type == "cuda":
            stem = f"gpu_{slugify(section.get('device_name', 'cuda'))}"
        logger.info("section %s: %s (%.1f s)", name, section["status"], section["wall_s"])
        if section["status"] == "error":
            logger.error("%s", section.get("traceback", section.get("error")))
        results["wall_s"], results["summary"] = time.monotonic() - started, summarize(results)
        if out_dir is not None:
            harness.write_results(out_dir, stem, payload=results, markdown=markdown_report(results))
    width = max(map(len, results["sections"]))
    print("\n" + "=" * 100 + f"\n{'section'.ljust(width)}  {'status':8}  key numbers")
    for name, sec in results["sections"].items():
        print(f"{name.ljust(width)}  {sec['status']:8}  {key_numbers(name, sec)}")
    summary = results["summary"]
    verdict = "PASS" if summary["correctness_passed"] else f"FAIL {summary['failed_correctness_sections']}"
    print(
        f"correctness: {verdict}; probes failing: {summary['failed_probe_sections'] or 'none'}; "
        f"{results['wall_s']:.0f} s; results: {out_dir / stem if out_dir else '(not written)'}.json/.md"
    )
    return 0 if summary["correctness_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
