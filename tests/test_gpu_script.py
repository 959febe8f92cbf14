"""The GPU verification script (benchmarks/gpu/check_cuda.py) and its shell drivers, checked on CPU.

The script's CUDA numbers need a GPU; here its logic runs end to end at smoke sizes on CPU, where ``backend="cuda"``
falls back to the torch backend with one warning, which the script must record.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GPU_DIR = REPO / "benchmarks" / "gpu"
SCRIPT = GPU_DIR / "check_cuda.py"
CORRECTNESS = ("scan_correctness", "auto_dispatch", "conv_correctness", "model_step")
ALL_SECTIONS = (
    "environment", "scan_correctness", "auto_dispatch", "scan_edge_cases", "conv_correctness", "conv_edge_cases",
    "model_step", "model_step_joint", "copy_bandwidth", "scan_timing", "fusion_timing", "model_timing",
)  # fmt: skip


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    out = tmp_path_factory.mktemp("gpu_smoke")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--output-dir", str(out), "--seed", "7"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    path = out / "gpu_cpu.json"
    assert path.is_file(), f"no results written; exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, json.loads(path.read_text()), out


def test_smoke_run_exits_cleanly_and_prints_the_summary_last(smoke_run):
    proc, _, _ = smoke_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last_lines = proc.stdout.strip().splitlines()[-16:]
    assert any(line.startswith("| section | status") for line in last_lines)
    assert last_lines[-1].startswith("correctness: PASS")


def test_json_structure(smoke_run):
    _, results, out = smoke_run
    assert results["device"] == "cpu" and results["smoke"] is True and results["seed"] == 7
    assert "check_cuda.py" in results["command"] and "--smoke" in results["command"]
    assert list(results["sections"]) == list(ALL_SECTIONS)
    for name, section in results["sections"].items():
        assert section["status"] in ("ok", "pass", "fail", "error", "partial", "skipped"), (name, section["status"])
        assert section["wall_s"] >= 0
    env = results["sections"]["environment"]
    for key in ("torch", "transformers", "mamba_ssm_available", "mamba_ssm_import_error", "device_name"):
        assert key in env
    md = (out / "gpu_cpu.md").read_text()
    assert md.startswith("# MambaVL CUDA path on CPU")
    # every detail table, with cells filled from the rows (a wrong key path would show "-")
    for title in (
        "Scan correctness",
        "scan_edge_cases",
        "conv_edge_cases",
        "Scan timing",
        "Fusion scaling",
        "Full model",
    ):
        assert f"\n## {title}" in md, title
    assert "| 32 | bfloat16 | cuda (torch (fallback)) | " in md and "| cuda (torch (fallback)) | - |" not in md
    assert results["summary"]["correctness_passed"] is True
    assert results["summary"]["failed_correctness_sections"] == []


def test_correctness_sections_passed_with_real_comparisons(smoke_run):
    _, results, _ = smoke_run
    sections = results["sections"]
    for name in CORRECTNESS:
        assert sections[name]["status"] == "pass", (name, sections[name].get("reasons") or sections[name])
    scan = sections["scan_correctness"]
    # both backends, both dtypes, every case compared, with finite errors inside the bounds
    assert {(c["backend"], c["dtype"]) for c in scan["cases"]} == {
        (b, d) for b in ("cuda", "torch") for d in ("float32", "bfloat16")
    }
    for case in scan["cases"]:
        assert case["ok"] and isinstance(case["errors"]["out"], float) and math.isfinite(case["errors"]["out"])
        assert set(case["grad_errors"]) >= {"u", "delta", "A", "B", "C"}
        tol = scan["tolerances"]["grad"][case["dtype"]]
        assert all(0 <= v < tol for v in case["grad_errors"].values())
    assert scan["max_cuda_float32"]["out"] < 1e-5
    assert 0 < scan["max_cuda_bfloat16"]["out"] < 1e-2  # bf16 rounding is seen, and bounded
    step = sections["model_step"]
    assert step["bf16_autocast"]["ok"] and math.isfinite(step["bf16_autocast"]["loss_cuda"])
    assert step["adamw"]["tensors_changed"] > 0 and step["adamw"]["params_finite"]
    assert step["float32_features"]["ok"]


def test_cuda_fallback_on_cpu_is_recorded(smoke_run):
    _, results, _ = smoke_run
    scan = results["sections"]["scan_correctness"]
    assert {c["effective"] for c in scan["cases"] if c["backend"] == "cuda"} == {"torch (fallback)"}
    # the library warns once per process; the script records that warning in the section where it happened
    assert any("falling back to the 'torch' backend" in w for w in scan.get("warnings", []))
    assert any("falling back to the 'torch' backend" in w for w in results["warnings"])
    auto = results["sections"]["auto_dispatch"]
    assert all(c["expected_backend"] == "torch" and c["bitwise_equal_to_expected"] for c in auto["checks"])


def test_measurement_sections_ran(smoke_run):
    _, results, _ = smoke_run
    sections = results["sections"]
    assert sections["copy_bandwidth"]["gb_per_s"] > 0
    timing = sections["scan_timing"]
    measured = [r for r in timing["rows"] if "fwd" in r]
    assert measured and all(r["fwd"]["median_ms"] > 0 and r["fwd_bwd_gb_per_s"] > 0 for r in measured)
    # the byte count of the formula in the JSON: s*(4bdl + 2bnl) + 4(dn + 2d)
    r = measured[0]
    s = 2 if r["dtype"] == "bfloat16" else 4
    b, d, n, L = r["b"], r["d"], r["n"], r["l"]
    assert r["bytes"]["fwd"] == s * (4 * b * d * L + 2 * b * n * L) + 4 * (d * n + 2 * d)
    fusion = sections["fusion_timing"]
    assert {row["fusion"] for row in fusion["rows"] if "fwd_ms" in row} == {"mamba", "transformer"}
    assert set(fusion["crossover"]) == {"time_fwd", "time_fwd_bwd", "memory_fwd", "memory_fwd_bwd"}
    assert fusion["sdpa"]["picked_by_default"]
    assert {row["backend"] for row in sections["model_timing"]["rows"] if "fwd" in row} == {"cuda", "torch"}


def _load_script():
    spec = importlib.util.spec_from_file_location("check_cuda", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_cuda"] = module  # dataclasses look their module up while the class body is built
    spec.loader.exec_module(module)
    return module


def test_helpers():
    check_cuda = _load_script()
    rows = [
        {"tokens": 1, "fusion": "mamba", "t": 5.0}, {"tokens": 1, "fusion": "transformer", "t": 1.0},
        {"tokens": 2, "fusion": "mamba", "t": 5.0}, {"tokens": 2, "fusion": "transformer", "t": 6.0},
        {"tokens": 4, "fusion": "mamba", "t": 5.0}, {"tokens": 4, "fusion": "transformer", "t": 20.0},
    ]  # fmt: skip
    crossover = check_cuda.timings.crossover
    assert crossover(rows, "t")["tokens"] == 2
    assert crossover(rows[:2], "t")["tokens"] is None
    assert crossover(rows[2:], "t")["at_or_below_smallest"] is True
    bad = torch.tensor([1.0, float("nan")])
    assert check_cuda.checks.rel_err(bad, bad) == math.inf  # NaN never passes
    assert check_cuda.checks.rel_err(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert check_cuda.slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    view = torch.randn(2, 9, 16)[..., :8].transpose(1, 2)  # a gapped view, like the mixers' inputs
    copy = check_cuda.checks.copy_strided(view)
    assert copy.stride() == view.stride() and torch.equal(copy, view) and copy.is_leaf


@pytest.mark.parametrize("script", ["build_mamba_ssm.sh", "run_on_device.sh"])
def test_shell_scripts_parse(script):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found")
    proc = subprocess.run([bash, "-n", str(GPU_DIR / script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_build_script_fails_clearly_without_sdists(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found")
    proc = subprocess.run(
        [bash, str(GPU_DIR / "build_mamba_ssm.sh"), str(tmp_path / "missing"), str(tmp_path / "site")],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "ERROR" in proc.stderr and "sdists" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which("bash") is None, reason="a GPU would run the full check")
def test_device_driver_without_gpu_fails_the_build_clearly_then_runs_the_check(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    script = ["bash", str(GPU_DIR / "run_on_device.sh")]
    proc = subprocess.run(script, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # check_cuda.py: --device cuda but no GPU
    assert "BUILD FAILED" in proc.stdout and "build_mamba_ssm.sh: ERROR" in (tmp_path / "build.log").read_text()
    assert "--device cuda but no GPU" in (tmp_path / "check_cuda.log").read_text()
