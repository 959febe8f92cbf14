"""Smoke runs of the benchmark scripts (tiny sizes, results written to a temporary folder)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_fusion_ablation_quick(tmp_path):
    proc = run(
        "fusion_ablation.py", "--quick", "--seeds", "0,1", "--work-dir", str(tmp_path / "work"),
        "--output-dir", str(tmp_path),
    )  # fmt: skip
    report = json.loads((tmp_path / "fusion_ablation.json").read_text())
    results, runs = report["results"], report["runs"]
    assert [r["fusion"] for r in results] == ["mamba", "transformer 6x4", "mlp"]
    assert sorted((r["fusion"], r["seed"]) for r in runs) == sorted((f, s) for f in ("mamba", "transformer 6x4", "mlp")
                                                                   for s in (0, 1))  # fmt: skip
    assert all(0 <= r["action_top1"] <= 100 and r["steps"] > 0 for r in runs)
    for row in results:  # the table's mean is the mean of the seeds' runs
        seeds = [r["action_top1"] for r in runs if r["fusion"] == row["fusion"]]
        assert row["action_top1"] == pytest.approx(sum(seeds) / 2, abs=0.01)
    assert "| mamba | " in (tmp_path / "fusion_ablation.md").read_text() and " ± " in proc.stdout


@pytest.mark.slow
def test_scan_benchmark_quick(tmp_path):
    proc = run(
        "scan.py", "--quick", "--repeats", "1", "--processes", "2", "--threads", "1", "--impls", "torch,reference",
        "--output-dir", str(tmp_path),
    )  # fmt: skip
    report = json.loads((tmp_path / "scan_cpu.json").read_text())
    (run_,) = report["runs"]
    for case in run_["cases"]:  # each case ran in two processes; the reported median is the median of theirs
        assert len(case["process_medians_s"]) == 2
        assert case["median_s"] == statistics.median(case["process_medians_s"])
    assert [r["impl"] for r in run_["rows"]] == ["torch", "reference"]
    assert all(r["fwd_s"] > 0 and r["fwdbwd_s"] > 0 for r in run_["rows"])
    assert run_["rows"][1]["rel_diff_vs_torch"] < 1e-5
    assert set(run_["exp_floors"]) == {"exp", "exp2"} and all(f["median_s"] > 0 for f in run_["exp_floors"].values())
    ops = {o["op"]: o for o in run_["torch_forward_profile"]}
    assert ops["aten::addcmul_"]["calls"] >= 256  # one in-place step per time step (l=256)
    md = (tmp_path / "scan_cpu.md").read_text()
    assert "| `torch` |" in proc.stdout and "Floor: forming `exp(delta * A)`" in md and "| `aten::addcmul_` |" in md
    assert "native_forward" not in run_ and "fused" not in md  # the C++ kernel's question is answered (issue 18)


@pytest.mark.parametrize("L", [1, 37, 64])  # pscan pads lengths that are no power of two
def test_scan_benchmark_mambapy_row_computes_the_benchmarks_scan(L):
    """The mamba.py row (its parallel scan, as its MambaBlock uses it) computes the same function as the others."""
    pytest.importorskip("mambapy", reason="mamba.py is in the dev extra (pip install -e .[dev])")
    from mambavl.ops import selective_scan

    scan = _load("scan")
    x = scan.make_inputs(2, 24, L, 5, seed=L)
    out = scan.scan_fn("mambapy")(*x.values())
    ref = selective_scan(*(t.double() for t in x.values()), delta_softplus=True, backend="reference")
    assert out.shape == ref.shape and ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_allocator_worker_env_replaces_every_malloc_variable(monkeypatch):
    module = _load("cpu_allocator")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1")
    default, retain = module.worker_env("default"), module.worker_env("retain")
    assert not [key for key in default if key.startswith("MALLOC_")]
    assert {k: v for k, v in retain.items() if k.startswith("MALLOC_")} == module.SETTINGS["retain"]
    assert default["PATH"] == retain["PATH"]  # the rest of the environment is kept


@pytest.mark.slow
def test_cpu_allocator_quick(tmp_path):
    run("cpu_allocator.py", "--quick", "--output-dir", str(tmp_path))
    payload = json.loads((tmp_path / "cpu_allocator.json").read_text())
    rows = {(r["video_tokens"], r["setting"]): r for r in payload["rows"]}
    assert set(rows) == {(n, s) for n in (32, 64) for s in ("default", "retain")}
    # each worker saw its own setting (the script also refuses to report a comparison where it did not)
    assert rows[(64, "default")]["malloc_env"] == ""
    assert rows[(64, "retain")]["malloc_env"] == "MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296"
    assert all(r["fwd_bwd_ms"] > 0 and r["fwd_bwd_faults"] >= 0 for r in rows.values())
    ratio = payload["checks"]["default_over_retain_fwd_bwd"]["64"]
    assert ratio == pytest.approx(rows[(64, "default")]["fwd_bwd_ms"] / rows[(64, "retain")]["fwd_bwd_ms"])
    growth = rows[(64, "default")]["fwd_bwd_ms"] / rows[(32, "default")]["fwd_bwd_ms"]
    assert payload["checks"]["default_max_growth_per_doubling"] == pytest.approx(growth)
    assert "| 64 |" in (tmp_path / "cpu_allocator.md").read_text()


def test_cpu_allocator_report_compares_settings_per_size():
    module = _load("cpu_allocator")

    def row(tokens, setting, ms):
        return {"video_tokens": tokens, "setting": setting, "fwd_ms": ms / 2, "fwd_bwd_ms": ms, "fwd_bwd_faults": 0,
                "fwd_bwd_peak_mib": 1.0}  # fmt: skip

    rows = [row(1024, "default", 100), row(1024, "retain", 100), row(2048, "default", 250), row(2048, "retain", 200),
            row(3000, "default", 400), row(3000, "retain", 300)]  # fmt: skip
    table, checks = module.report(rows)
    assert checks["default_over_retain_fwd_bwd"] == {"1024": 1.0, "2048": 1.25, "3000": pytest.approx(4 / 3)}
    # growth only between sizes that double: 1,024 -> 2,048, not 2,048 -> 3,000
    assert checks["default_max_growth_per_doubling"] == 2.5 and checks["default_growth_at_most_2.3x"] is False
    assert checks["retain_max_growth_per_doubling"] == 2.0 and checks["retain_growth_at_most_2.3x"] is True
    assert "| 2,048 | 125.0 | 250.0 | 0 | 1 | 100.0 | 200.0 | 0 | 1 | 1.25x | 2.50x | 2.00x |" in table
    assert "| 3,000 |" in table and table.splitlines()[-1].endswith("| - | - |")


def test_harness_times_counts_memory_and_writes_tables(tmp_path):
    import time

    import torch

    harness = _load("harness")
    calls = []
    timing = harness.time_call(lambda: calls.append(time.sleep(0.002)), repeats=3, budget_s=10)
    assert timing["samples"] == 3 and len(calls) == 4  # one warm-up, then three samples of one call
    assert timing["median_ms"] >= 2 and timing["min_ms"] <= timing["median_ms"]
    assert timing["cpu_per_wall"] < 0.85 and harness.contended(timing, 1)  # sleeping is not running
    long = harness.time_call(lambda: calls.append(time.sleep(0.05)), repeats=5, budget_s=0.1)
    assert long["samples"] == 1  # a warm-up longer than a quarter of the budget is the one sample
    slow_first = iter([0.05])  # one-time costs in the first call must not size the samples
    sized = harness.time_call(lambda: time.sleep(next(slow_first, 0.001)), repeats=2, budget_s=10, min_sample_ms=10)
    assert sized["calls_per_sample"] > 1 and sized["median_ms"] < 25  # the old rule: 1 call of 50 ms per sample
    with harness.PeakMemory() as peak:
        block = torch.ones(16 * 2**20)  # 64 MiB, touched
    assert 60 < peak.mib() < 200 and block.sum() > 0
    merged = harness.merge_runs([{"median_ms": 3.0, "min_ms": 2.0}, {"median_ms": 1.0, "min_ms": 0.5},
                                 {"median_ms": 2.0, "min_ms": 1.0, "contended": True}])  # fmt: skip
    assert merged["median_ms"] == 2.0 and merged["min_ms"] == 0.5 and merged["contended"]
    assert merged["process_medians"] == [3.0, 1.0, 2.0]
    table = harness.markdown_table(["a", "b"], [[1, "x|y"]])
    assert table.splitlines() == ["| a | b |", "|---|---:|", "| 1 | x/y |"]
    rows = [{"n": 1, "ms": 2.5, "name": "a", "empty": None}]
    paths = harness.write_results(tmp_path, "r", payload={"x": float("inf")}, markdown="# t", csv_rows=rows)
    assert [p.name for p in paths] == ["r.json", "r.md", "r.csv"]
    assert harness.read_csv(tmp_path / "r.csv") == [{"n": 1, "ms": 2.5, "name": "a", "empty": None}]
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": "inf"}
    with pytest.raises(RuntimeError, match="failed"):
        harness.run_worker(BENCHMARKS / "harness.py", {"no": "worker here"})  # prints no JSON line
