"""Streams are exact and constant-memory: separate and joint scans, 1 and 3 fusion layers, any chunking, pooling
over everything seen or over a window; the cached states equal those of one forward over the whole video."""

from __future__ import annotations

import itertools

import pytest
import torch

from mambavl import MambaVLForActionRecognition
from mambavl.ops import selective_scan_reference
from tiny import tiny_config, tiny_inputs

FRAMES = 11
CHUNKINGS = {
    "one_chunk": (),
    "one_token_steps": tuple(range(1, FRAMES)),
    "uneven": (1, 4, 5, 9),
    "two_halves": (6,),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make(dtype=torch.float64, seed=0, frames=FRAMES, **overrides):
    torch.manual_seed(seed)
    model = MambaVLForActionRecognition(tiny_config(**overrides)).to(dtype).eval()
    inputs = tiny_inputs(frames=frames, seed=seed)
    inputs["video_features"] = inputs["video_features"].to(dtype)
    return model, inputs


def stream(model, inputs, cuts):
    video = inputs["video_features"]
    q = {k: v for k, v in inputs.items() if k != "video_features"}
    out = cache = None
    for i, (t0, t1) in enumerate(itertools.pairwise((0, *cuts, video.shape[1]))):
        out = model(video_features=video[:, t0:t1], **(q if i == 0 else {}), cache_params=cache, use_cache=True)
        cache = out.cache
    return out, cache


def full_states(model, inputs):
    """Each fusion layer's video conv and SSM states after the whole video, recomputed from one clip forward's
    hidden states with the reference scan (independently of the cache code)."""
    out = model(**inputs, output_hidden_states=True)
    convs, ssms = [], []
    for layer, hidden in zip(model.mambavl.fusion.layers, out.hidden_states, strict=False):
        mixer = layer.fusion.video_mixer
        normed = layer.video_norm(hidden)
        x = (normed @ mixer.in_proj.weight.T)[..., : mixer.d_inner].transpose(1, 2)  # pre-conv inputs (b, d, l)
        convs.append(x[..., -(model.config.conv_kernel - 1) :])
        s = mixer.scan_inputs(normed)
        _, last = selective_scan_reference(
            s.u, s.delta, layer.fusion.A, s.B, s.C, delta_bias=mixer.dt_proj.bias, delta_softplus=True,
            return_last_state=True,
        )  # fmt: skip
        ssms.append(last)
    return out, convs, ssms


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("scan", ["separate", "joint"])
def test_stream_equals_one_forward_float64(scan, layers, chunking):
    model, inputs = make(fusion_scan=scan, num_fusion_layers=layers)
    full, convs, ssms = full_states(model, inputs)
    out, cache = stream(model, inputs, CHUNKINGS[chunking])
    for name in ("verb_logits", "noun_logits"):
        assert rel_err(getattr(out, name), getattr(full, name)) < 1e-10, name
    assert len(cache.ssm_states) == layers
    for i in range(layers):
        assert rel_err(cache.ssm_states[i], ssms[i]) < 1e-10, f"ssm state of layer {i}"
        assert rel_err(cache.conv_states[i], convs[i]) < 1e-10, f"conv state of layer {i}"


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("scan", ["separate", "joint"])
def test_stream_equals_one_forward_float32(scan, layers):
    model, inputs = make(torch.float32, fusion_scan=scan, num_fusion_layers=layers)
    full, _, ssms = full_states(model, inputs)
    out, cache = stream(model, inputs, CHUNKINGS["uneven"])
    for name in ("verb_logits", "noun_logits"):
        assert rel_err(getattr(out, name), getattr(full, name)) < 1e-5, name
    for i in range(layers):
        assert rel_err(cache.ssm_states[i], ssms[i]) < 1e-5


def test_joint_questions_read_the_video_state_without_changing_it():
    model, inputs = make(fusion_scan="joint", num_fusion_layers=2)
    _, cache_a = stream(model, inputs, (3, 7))
    other = dict(inputs, verb_input_ids=inputs["verb_input_ids"] % 13 + 1, noun_input_ids=inputs["noun_input_ids"] + 1)
    out_b, cache_b = stream(model, other, (2,))
    # what the stream remembers does not depend on the questions asked ...
    for a, b in zip(cache_a.ssm_states + cache_a.conv_states, cache_b.ssm_states + cache_b.conv_states, strict=True):
        assert rel_err(a, b) < 1e-12
    assert rel_err(cache_a.pool_state, cache_b.pool_state) < 1e-12
    # ... but the answers do (they read that state), and asking again at the next step reads the new state
    step = torch.randn(2, 1, 12, dtype=torch.float64)
    out_a, out_b = model(video_features=step, cache_params=cache_a), model(video_features=step, cache_params=cache_b)
    assert rel_err(out_a.video_hidden_states, out_b.video_hidden_states) < 1e-12
    assert rel_err(out_a.verb_logits, out_b.verb_logits) > 1e-3


def test_separate_questions_do_not_change_along_the_stream():
    model, inputs = make(fusion_scan="separate")
    questions = {k: v for k, v in inputs.items() if k != "video_features"}
    first = model(video_features=inputs["video_features"][:, :2], **questions, use_cache=True)
    pooled_verb = first.verb_features - first.cache.pool_state / 2
    later = model(video_features=inputs["video_features"][:, 2:5], cache_params=first.cache)
    assert rel_err(later.verb_features - later.cache.pool_state / 5, pooled_verb) < 1e-12


@pytest.mark.parametrize("window", [1, 4, 11, 30])
@pytest.mark.parametrize("scan", ["separate", "joint"])
def test_pool_window_pools_the_last_fused_tokens(scan, window):
    model, inputs = make(fusion_scan=scan, num_fusion_layers=2, pool_window=window)
    reference, _ = make(fusion_scan=scan, num_fusion_layers=2)  # same weights (same seed), pools everything
    full = reference(**inputs, output_hidden_states=True)
    expected_pool = full.video_hidden_states[:, -window:].mean(dim=1)
    pooled_verb = full.verb_features - full.video_hidden_states.mean(dim=1)
    expected_verb = expected_pool + pooled_verb
    clip = model(**inputs)  # the clip model pools the last `window` tokens too
    assert rel_err(clip.verb_features, expected_verb) < 1e-10
    for cuts in (CHUNKINGS["one_token_steps"], CHUNKINGS["uneven"]):
        out, cache = stream(model, inputs, cuts)
        assert rel_err(out.verb_features, expected_verb) < 1e-10
        assert rel_err(out.verb_logits, model.verb_head(expected_verb)) < 1e-10
        assert tuple(cache.pool_state.shape) == (2, window, 32)


def test_pool_window_set_on_a_built_model_applies_to_clips_and_streams():
    """`mambavl stream` sets config.pool_window on the loaded model: the clip forward and a new stream both follow."""
    model, inputs = make(num_fusion_layers=2)
    windowed, _ = make(num_fusion_layers=2, pool_window=4)  # same weights, built with the window
    model.config.pool_window = 4
    assert rel_err(model(**inputs).verb_features, windowed(**inputs).verb_features) < 1e-12
    out, cache = stream(model, inputs, CHUNKINGS["uneven"])
    assert rel_err(out.verb_features, windowed(**inputs).verb_features) < 1e-10
    assert tuple(cache.pool_state.shape) == (2, 4, 32)


@pytest.mark.parametrize("pool_window", [None, 3])
def test_constant_memory_over_10000_one_token_steps(pool_window):
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(tiny_config(hidden_size=8, state_size=2, pool_window=pool_window)).eval()
    inputs = tiny_inputs(batch=1, frames=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        cache = model(**inputs, use_cache=True).cache
        size, shapes = cache.nbytes, [tuple(t.shape) for t in cache.to_tensors()]
        for _ in range(10_000):
            model(video_features=torch.randn(1, 1, 12, generator=g), cache_params=cache)
            assert cache.nbytes == size
    assert cache.seen_tokens == 10_001
    assert [tuple(t.shape) for t in cache.to_tensors()] == shapes
    if pool_window is not None:  # the pooling memory is bounded by the window: W tokens of width D
        assert cache.pool_state.numel() == 1 * pool_window * 8
    assert all(torch.isfinite(t.float()).all() for t in cache.to_tensors())


def test_streaming_benchmark_smoke(tmp_path):
    """benchmarks/streaming.py at toy sizes: one row per history, ratios from the same run, CSV + table + plot."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "streaming.py"
    spec = importlib.util.spec_from_file_location("streaming_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--histories", "32,64", "--hidden-size", "16", "--window", "48", "--repeats", "1",
                "--output-dir", str(tmp_path)])  # fmt: skip
    rows = bench.harness.read_csv(tmp_path / "streaming_cpu.csv")
    assert [r["history"] for r in rows] == [32, 64]
    for r in rows:
        assert r["a_ms"] > 0 and r["b_ms"] > 0 and r["c_ms"] > 0
        assert r["b_over_a"] == pytest.approx(r["b_ms"] / r["a_ms"], rel=1e-2, abs=2e-3)
    assert rows[0]["c_window_ms"] is None and rows[1]["c_window_ms"] > 0  # 64 + 8 tokens > the 48-token window
    assert (tmp_path / "streaming_cpu.png").stat().st_size > 0
    assert "(a) cached step ms" in (tmp_path / "streaming_cpu.md").read_text()
