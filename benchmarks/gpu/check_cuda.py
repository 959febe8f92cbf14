"""Verify and measure MambaVL's CUDA path (mamba-ssm's selective scan, causal-conv1d, bf16 training) on one GPU.

Targets (issue 17): ``selective_scan(..., backend="cuda")`` matches the float64 reference (fp32: outputs < 1e-5,
gradients < 1e-4); the scan reaches at least half the copy bandwidth at l >= 16k; the Mamba fusion's fwd+bwd beats
a 6x4 SDPA transformer fusion's from some token count on. The sections, in order (README.md says what each checks):

* correctness (they decide the exit status): scan_correctness, auto_dispatch, conv_correctness, model_step;
* probes (a ``fail`` is a limitation of the CUDA path worth knowing): scan_edge_cases, conv_edge_cases,
  model_step_joint;
* measurements (cut to ``--time-budget``): copy_bandwidth, scan_timing, fusion_timing, model_timing.

Each runs in its own ``try`` (a failure is recorded with its traceback). ``gpu_<device>.json`` / ``.md`` are rewritten
after every section; a summary table is printed last.

    python benchmarks/gpu/check_cuda.py --device cuda                       # full run (about 5 minutes on an H100)
    python benchmarks/gpu/check_cuda.py --device cpu --smoke --output-dir /tmp/gpu_smoke   # logic check on CPU
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # cuda_*.py
import cuda_checks as checks
import cuda_model
import cuda_report
import cuda_timings as timings
import harness

logger = logging.getLogger("check_cuda")
CORRECTNESS = ("scan_correctness", "auto_dispatch", "conv_correctness", "model_step")
PROBES = ("scan_edge_cases", "conv_edge_cases", "model_step_joint")
MEASUREMENTS = ("copy_bandwidth", "scan_timing", "fusion_timing", "model_timing")
SECTIONS = ("environment", "scan_correctness", "auto_dispatch", "scan_edge_cases", "conv_correctness")
SECTIONS += ("conv_edge_cases", "model_step", "model_step_joint", *MEASUREMENTS)  # the order they run in
cases = checks.make_cases
# The sizes of a run on a GPU. Correctness: l = 2100 passes the kernel's 2048-step chunk, "mixer" gives the inputs the
# strides of the fusion's; edge_shape: b, d, n, l of auto_dispatch and scan_edge_cases; the model steps at paper width.
FULL = {
    "scan_cases": cases(
        "b d n l layout",
        (2, 96, 16, 1, "contiguous"),
        (2, 96, 16, 37, "contiguous"),
        (2, 128, 16, 512, "mixer"),
        (1, 64, 16, 2100, "contiguous"),
        (2, 96, 4, 300, "mixer"),
    ),
    "conv_cases": cases(
        "b d l k layout activation",
        (2, 128, 300, 4, "contiguous", "silu"),
        (2, 128, 300, 4, "channel_last", "silu"),
        (2, 64, 77, 3, "contiguous", None),
        (1, 64, 77, 2, "channel_last", "silu"),
    ),
}
FULL.update(edge_shape=(2, 64, 16, 200), paper_model=True, step_batch=2, feature_tokens=1568)
FULL.update(copy_mib=2048, scan_shape={"b": 2, "d": 1536, "n": 16}, scan_lengths=[1568, 4096, 16384, 65536, 262144])
FULL.update(scan_torch_max_l=16384, fusion_tokens=[1024 * 2**i for i in range(7)], fusion_width=768, fusion_depth=6)
FULL.update(question_tokens=16, model_timing_batch=8, repeats=10, min_sample_ms=5.0, case_budget_s=4.0)
# Tiny sizes: the script's logic in seconds (also on CPU).
SMOKE = {
    **FULL,
    "scan_cases": cases(
        "b d n l layout", (2, 8, 4, 1, "contiguous"), (2, 8, 4, 9, "mixer"), (1, 6, 3, 33, "contiguous")
    ),
    "conv_cases": cases(
        "b d l k layout activation",
        (2, 16, 20, 4, "contiguous", "silu"),
        (2, 16, 20, 4, "channel_last", "silu"),
        (1, 8, 9, 3, "contiguous", None),
    ),
}
SMOKE.update(edge_shape=(1, 8, 4, 16), paper_model=False, feature_tokens=12, copy_mib=8, scan_torch_max_l=64)
SMOKE.update(scan_shape={"b": 1, "d": 16, "n": 4}, scan_lengths=[32, 64], fusion_tokens=[16, 32], fusion_width=32)
SMOKE.update(fusion_depth=1, question_tokens=5, model_timing_batch=2, repeats=1, min_sample_ms=0.0, case_budget_s=1.0)


def slugify(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def section_environment(ctx: checks.Context) -> dict[str, Any]:
    """The machine, the versions, what the library sees of mamba-ssm and causal-conv1d, the commit."""
    import mambavl

    env = {"status": "ok", **harness.machine_info(ctx.device), "mambavl": getattr(mambavl, "__version__", None)}
    env.update(mambavl_file=mambavl.__file__, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    env.update(tf32_cudnn=torch.backends.cudnn.allow_tf32, **checks.mamba_ssm_state())
    commands = {"git_commit": ["git", "-C", str(Path(__file__).resolve().parents[2]), "rev-parse", "HEAD"]}
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        env.update(capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
        query = "--query-gpu=driver_version,clocks.sm,clocks.mem,power.limit"
        commands["nvidia_smi"] = ["nvidia-smi", query, "--format=csv,noheader"]
    else:
        env["device_name"] = f"CPU ({env['cpu']}, {env['logical_cpus']} logical CPUs)"
    for key, command in commands.items():
        try:
            env[key] = subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError) as exc:
            env[key] = f"unavailable: {exc}"
    return env


def run_section(name: str, ctx: checks.Context, all_warnings: list[str]) -> dict[str, Any]:
    """One section, its errors and warnings recorded (those of the scan and conv kernels in the section too)."""
    started = time.monotonic()
    modules = (sys.modules[__name__], checks, cuda_model, timings)  # this one: the environment
    module = next(m for m in modules if hasattr(m, f"section_{name}"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = getattr(module, f"section_{name}")(ctx)
        except Exception as exc:
            result = {"status": "error", "error": checks.error_text(exc), "traceback": traceback.format_exc()}
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    if mine := [m for m in messages if "selective_scan" in m or "causal" in m or "mamba" in m.lower()]:
        result["warnings"] = mine
    all_warnings.extend(m for m in messages if m not in all_warnings)
    checks.free(ctx.device)
    return {**result, "wall_s": time.monotonic() - started}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    s = results["sections"]
    failed = [n for n in CORRECTNESS if n in s and s[n]["status"] != "pass"]
    return {
        "correctness_passed": not failed and all(n in s for n in CORRECTNESS if n in results["requested"]),
        "failed_correctness_sections": failed,
        "failed_probe_sections": [n for n in PROBES if n in s and s[n]["status"] != "pass"],
        "measurement_status": {n: s[n]["status"] for n in MEASUREMENTS if n in s},
    }


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__, "tiny sizes: checks the script's logic in seconds (also on CPU)")
    parser.add_argument("--smoke", dest="quick", action="store_true", help="the same as --quick")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to run (default: cuda)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset (environment always)")
    budget_help = "seconds for the run: timing cases predicted to pass it are skipped (default: 420; smoke: 120)"
    parser.add_argument("--time-budget", type=float, help=budget_help)
    parser.add_argument("--seed", type=int, help="random seed (default: from the clock; recorded)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    requested = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := set(requested) - set(SECTIONS):
        parser.error(f"unknown --sections {sorted(unknown)}; choose from {SECTIONS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
        parser.exit(2, f"check_cuda.py: --device cuda but no GPU ({versions})\n")
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % 2**31
    torch.manual_seed(seed)
    budget = args.time_budget or (120.0 if args.quick else 420.0)
    plan = SimpleNamespace(**(SMOKE if args.quick else FULL))
    ctx = checks.Context(device=device, plan=plan, seed=seed, deadline=time.monotonic() + budget)
    full_run = device.type == "cuda" and not args.quick  # others write their results only to a folder given
    out_dir = args.output_dir if full_run or args.output_dir != harness.RESULTS else None
    started, stem = time.monotonic(), "gpu_cpu"
    results: dict[str, Any] = {"script": "benchmarks/gpu/check_cuda.py", "command": harness.command_line()}
    results.update(device=args.device, smoke=args.quick, seed=seed, time_budget_s=budget, requested=requested)
    results.update(started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), sections={}, warnings=[], wall_s=0.0)
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
            harness.write_results(out_dir, stem, payload=results, markdown=cuda_report.markdown_report(results))
    summary = results["summary"]
    verdict = "PASS" if summary["correctness_passed"] else f"FAIL {summary['failed_correctness_sections']}"
    print(
        f"\n{cuda_report.summary_table(results)}\ncorrectness: {verdict}; probes failing: "
        f"{summary['failed_probe_sections'] or 'none'}; {results['wall_s']:.0f} s; results: "
        f"{out_dir / stem if out_dir else '(not written)'}.json/.md"
    )
    return 0 if summary["correctness_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
