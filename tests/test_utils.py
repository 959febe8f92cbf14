"""Parameter and FLOP reports: hand-checkable counts on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import mambavl.fusion.ssm_fusion as ssm_fusion_module
import mambavl.ops
from mambavl import MambaVLForActionRecognition, MambaVLModel
from mambavl.ops import selective_scan
from mambavl.utils import (
    FlopReport,
    ParameterCount,
    count_flops,
    count_parameters,
    count_selective_scans,
    selective_scan_flops,
)
from tiny import tiny_config, tiny_inputs, tiny_video_config


def test_linear_flops_are_two_in_out_tokens():
    report = count_flops(nn.Linear(8, 4, bias=False), {"input": torch.randn(3, 5, 8)})
    assert isinstance(report, FlopReport)
    assert report.total == 2 * 8 * 4 * 15 and report.macs == 8 * 4 * 15
    assert report.selective_scan == 0 and report.by_module == {"": 2 * 8 * 4 * 15}


def test_selective_scan_flops_formula():
    b, d, length, n = 2, 3, 5, 4  # b*d*l = 30 output elements, b*d*l*n = 120 state elements
    assert selective_scan_flops(b, d, length, n) == 9 * 120 + 30 + 30 == 1140
    assert selective_scan_flops(b, d, length, n, with_D=False) == 1110
    assert selective_scan_flops(b, d, length, n, with_D=False, with_z=False) == 1080
    with pytest.raises(ValueError, match="state_size"):
        selective_scan_flops(b, d, length, -1)


@pytest.mark.parametrize("fusion_scan", ["separate", "joint"])
def test_scan_is_counted_analytically_per_call(fusion_scan):
    torch.manual_seed(0)
    config = tiny_config(fusion_scan=fusion_scan)  # d_inner = 64, state_size = 4; 6 frames, questions of 7 and 5
    model = MambaVLForActionRecognition(config).eval()
    report = count_flops(model, tiny_inputs())
    d, n = config.intermediate_size, config.state_size
    if fusion_scan == "separate":  # video, verb and noun scanned on their own, with D and z
        expected = sum(selective_scan_flops(2, d, length, n) for length in (6, 7, 5))
    else:  # one scan over [video; question] for both questions (batch 2 * 2, padded to 6 + 7), D and z applied after
        expected = selective_scan_flops(4, d, 6 + 7, n, with_D=False, with_z=False)
    assert report.selective_scan == expected
    assert report.by_operator["mambavl.counted_selective_scan"] == expected
    assert report.fusion_module > expected  # the scan is counted inside the fusion module, with its linear maps
    # The "torch" backend's inner batched matmul is not counted on top (nothing else in this model uses bmm).
    assert "aten.bmm" not in report.by_operator


def test_counting_gives_the_same_outputs_and_restores_the_scan():
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(tiny_config()).eval()
    with torch.no_grad():
        expected = model(**tiny_inputs()).verb_logits
        with count_selective_scans():
            assert ssm_fusion_module.selective_scan is not selective_scan
            counted = model(**tiny_inputs()).verb_logits
    torch.testing.assert_close(counted, expected, rtol=0, atol=0)
    assert ssm_fusion_module.selective_scan is selective_scan and mambavl.ops.selective_scan is selective_scan


def test_module_split_of_flops_is_hand_checkable():
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(tiny_config(fusion_type="mlp")).eval()
    report = count_flops(model, tiny_inputs())  # batch 2, 6 frames of width 12, fusion width 32
    assert report.video_projection == 2 * 12 * 32 * (2 * 6)
    assert report.heads == 2 * 32 * 5 * 2 + 2 * 32 * 7 * 2  # verb head (5 classes) + noun head (7 classes)
    assert report.by_module["verb_head"] == 2 * 32 * 5 * 2
    # MLP fusion: (2B, 2D) -> 64 -> 32; text MLP over 2 * 7 + 2 * 5 tokens: 16 -> 32 -> 32 -> 32
    assert report.fusion_module == 2 * (2 * 2) * (64 * 64 + 64 * 32)
    assert report.text_projection == 2 * (2 * 7 + 2 * 5) * (16 * 32 + 32 * 32 + 32 * 32)
    assert report.fusion == report.fusion_module + report.text_projection
    assert report.backbone == report.total - report.fusion
    parts = report.video_projection + report.text_encoder + report.text_projection + report.fusion_module
    assert report.total == parts + report.heads + report.video_encoder


def test_meta_device_count_equals_the_real_count():
    torch.manual_seed(0)
    for fusion_type in ("mamba", "transformer"):
        config = tiny_config(fusion_type=fusion_type, video_config=tiny_video_config(), video_feature_size=None)
        inputs = {k: v for k, v in tiny_inputs().items() if k != "video_features" and "mask" not in k}
        inputs["pixel_values"] = torch.randn(2, 4, 3, 16, 16)
        real = count_flops(MambaVLForActionRecognition(config).eval(), inputs)
        with torch.device("meta"):
            meta_model = MambaVLForActionRecognition(config).eval()
        meta = count_flops(meta_model, {k: v.to("meta") for k, v in inputs.items()})
        assert real.total == meta.total > 0, fusion_type
        assert real.fusion_module == meta.fusion_module > 0 and real.video_encoder == meta.video_encoder > 0


def test_cpu_flash_attention_is_counted():
    # SDPA runs the CPU flash kernel, which PyTorch's counter has no formula for: 4 * b * h * L * L * e here.
    q = torch.randn(2, 4, 10, 8)
    report = count_flops(_SDPA(), {"q": q})
    assert report.total == 4 * 2 * 4 * 10 * 10 * 8


class _SDPA(nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return nn.functional.scaled_dot_product_attention(q, q, q)


def test_parameter_counts_add_up():
    torch.manual_seed(0)
    config = tiny_config(fusion_type="mlp", video_config=tiny_video_config(), video_feature_size=None)
    model = MambaVLForActionRecognition(config)
    counts = count_parameters(model)
    assert isinstance(counts, ParameterCount)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts.frozen == counts.text_encoder > 0  # the text encoder is frozen by default
    assert counts.video_encoder == sum(p.numel() for p in model.mambavl.video_encoder.parameters())
    assert counts.fusion_module == 2 * 64 + (64 * 64 + 64) + (64 * 32 + 32)  # LayerNorm(64), 64 -> 64 -> 32
    assert counts.text_projection == (16 * 32 + 32) + 2 * (32 * 32 + 32)
    assert counts.fusion == counts.fusion_module + counts.text_projection
    assert counts.heads == (32 * 5 + 5) + (32 * 7 + 7)
    assert counts.video_projection == 24 * 32 + 32
    parts = counts.video_encoder + counts.video_projection + counts.text_encoder + counts.text_projection
    assert counts.total == parts + counts.fusion_module + counts.heads
    assert counts.to_dict()["backbone"] == counts.total - counts.fusion
    base = count_parameters(MambaVLModel(config))
    assert base.heads == 0 and base.total == counts.total - counts.heads


def test_shared_parameters_are_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = self.a

    assert count_parameters(Tied()).total == 20


def test_bad_arguments_are_type_errors():
    with pytest.raises(TypeError, match="model"):
        count_parameters("not a model")
    with pytest.raises(TypeError, match="inputs"):
        count_flops(nn.Linear(2, 2), [torch.randn(1, 2)])


def _load_benchmark(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_efficiency_benchmark_quick_run(tmp_path):
    results = _load_benchmark("efficiency").main(["--quick", "--output-dir", str(tmp_path)])
    assert [r["label"] for r in results] == ["Mamba (SSM-Fusion)", "Transformer 6x4", "Transformer 12x12", "MLP"]
    assert len({r["params"]["backbone"] for r in results}) == 1  # the same backbone under every fusion
    mamba = results[0]
    assert mamba["flops"]["selective_scan"] > 0 and mamba["params"]["fusion"] > 0
    assert results[2]["params"]["fusion"] > results[1]["params"]["fusion"] > results[3]["params"]["fusion"]
    report = (tmp_path / "efficiency.md").read_text()
    assert "| Mamba (SSM-Fusion) |" in report and "Backbone" in report
    payload = json.loads((tmp_path / "efficiency.json").read_text())
    assert payload["setting"] == "quick" and len(payload["results"]) == 4


@pytest.mark.slow
def test_fusion_scaling_benchmark_quick_run(tmp_path):
    out = _load_benchmark("fusion_scaling").main(["--quick", "--output-dir", str(tmp_path)])
    rows = out["rows"]
    assert {(r["fusion"], r["video_tokens"]) for r in rows} == {
        (f, n) for f in ("mamba", "transformer") for n in (32, 64)
    }
    assert all(r["status"] in ("ok", "contended") and r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in rows)
    assert all(r["fwd_bwd_peak_mib"] >= r["fwd_peak_mib"] for r in rows)  # one high-water mark, forward first
    assert all(r["fwd_bwd_faults"] >= 0 for r in rows)  # minor page faults of one run
    assert out["checks"]["largest_common_tokens"] == 64
    for suffix in (".csv", ".png", ".md"):
        assert (tmp_path / f"fusion_scaling_cpu{suffix}").stat().st_size > 0
    header = (tmp_path / "fusion_scaling_cpu.csv").read_text().splitlines()[0]
    assert header.startswith("device,fusion,video_tokens") and ",fwd_bwd_faults," in header


def test_fusion_scaling_resume_keeps_only_clean_rows(tmp_path):
    module = _load_benchmark("fusion_scaling")
    path = tmp_path / "fusion_scaling_cpu.csv"
    header = "device,fusion,video_tokens,question_tokens,hidden_size,status,fwd_ms,fwd_bwd_ms,threads,cpu_per_wall"
    path.write_text(
        header + "\n"
        "cpu,mamba,256,16,768,ok,1.0,2.0,2,1.98\n"  # clean: kept
        "cpu,transformer,256,16,768,ok,9.0,20.0,2,1.10\n"  # other processes took the cores: measured again
        "cpu,mamba,512,16,768,skipped: too long,,,,\n"  # not measured: measured again
        "cpu,mamba,1024,16,64,ok,1.0,2.0,2,1.98\n"  # another width: not this run's setting
    )
    args = module.parse_args(["--output-dir", str(tmp_path)])
    kept = module.load_clean_rows(path, args)
    assert list(kept) == [("mamba", 256)]
    assert kept[("mamba", 256)]["fwd_bwd_ms"] == 2.0 and kept[("mamba", 256)]["reused"] == "yes"
    assert kept[("mamba", 256)]["measured_at"].endswith("(file time)")
