"""MambaVLCache: the model-level streaming API (cache_params / use_cache) and the cache object itself."""

from __future__ import annotations

import itertools

import pytest
import torch

from mambavl import MambaVLCache, MambaVLForActionAnticipation, MambaVLForActionRecognition, MambaVLModel
from tiny import tiny_config, tiny_inputs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def questions(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in inputs.items() if k != "video_features"}


def stream(model, inputs, cuts, cache=None, **kwargs):
    """Feed ``inputs["video_features"]`` in chunks cut at ``cuts``; the questions go with the first chunk only."""
    video = inputs["video_features"]
    bounds = (0, *cuts, video.shape[1])
    out = None
    for i, (t0, t1) in enumerate(itertools.pairwise(bounds)):
        q = questions(inputs) if i == 0 and (cache is None or not cache.has_questions) else {}
        out = model(video_features=video[:, t0:t1], **q, cache_params=cache, use_cache=True, **kwargs)
        cache = out.cache_params
    return out, cache


def tiny_model(cls=MambaVLForActionRecognition, dtype=torch.float64, seed=0, **overrides):
    torch.manual_seed(seed)
    return cls(tiny_config(**overrides)).to(dtype).eval()


def tiny_video_inputs(frames=11, dtype=torch.float64, **kwargs):
    inputs = tiny_inputs(frames=frames, **kwargs)
    inputs["video_features"] = inputs["video_features"].to(dtype)
    return inputs


@pytest.mark.parametrize("cuts", [(), (1, 2, 5, 6), tuple(range(1, 11)), (7,)])
def test_recognition_stream_equals_one_forward(cuts):
    model, inputs = tiny_model(), tiny_video_inputs()
    full = model(**inputs)
    out, cache = stream(model, inputs, cuts)
    assert isinstance(cache, MambaVLCache) and cache.seen_tokens == 11
    assert out.cache is cache and out.cache_params is cache
    for name in ("verb_logits", "noun_logits", "verb_features", "noun_features"):
        assert rel_err(getattr(out, name), getattr(full, name)) < 1e-10, name
    # the last call returns the fused tokens of its own chunk
    last = cuts[-1] if cuts else 0
    assert rel_err(out.video_hidden_states, full.video_hidden_states[:, last:]) < 1e-10


def test_stream_float32():
    model, inputs = tiny_model(dtype=torch.float32), tiny_video_inputs(dtype=torch.float32)
    full = model(**inputs)
    out, _ = stream(model, inputs, (3, 4, 9))
    assert rel_err(out.verb_logits, full.verb_logits) < 1e-5
    assert rel_err(out.noun_logits, full.noun_logits) < 1e-5


def test_anticipation_and_base_model_stream():
    for cls in (MambaVLForActionAnticipation, MambaVLModel):
        model, inputs = tiny_model(cls), tiny_video_inputs()
        full = model(**inputs)
        out, cache = stream(model, inputs, (2, 3))
        assert rel_err(out.verb_features, full.verb_features) < 1e-10
        assert rel_err(out.noun_features, full.noun_features) < 1e-10
        assert out.cache_params is cache


def test_cache_is_not_used_without_use_cache_or_cache_params():
    model, inputs = tiny_model(), tiny_video_inputs()
    assert model(**inputs).cache is None
    assert model(**inputs, return_dict=False)[-1].shape == (2, 11, 32)  # no cache entry in the tuple


def test_questions_are_encoded_once_per_stream(monkeypatch):
    model, inputs = tiny_model(), tiny_video_inputs()
    calls = []
    encode = model.mambavl.text_encoder.forward
    monkeypatch.setattr(model.mambavl.text_encoder, "forward", lambda *a, **k: calls.append(1) or encode(*a, **k))
    _, cache = stream(model, inputs, (1, 2, 3))
    assert len(calls) == 2  # verb and noun, at the first call only
    # the same ids may be passed again; other ids are refused
    model(video_features=inputs["video_features"][:, :1], **questions(inputs), cache_params=cache)
    assert len(calls) == 2
    other = dict(questions(inputs), verb_input_ids=inputs["verb_input_ids"] % 7 + 1)
    with pytest.raises(ValueError, match="verb_input_ids` differ from the questions this stream"):
        model(video_features=inputs["video_features"][:, :1], **other, cache_params=cache)
    cache.reset()
    out = model(video_features=inputs["video_features"][:, :1], **other, cache_params=cache)
    assert len(calls) == 4 and cache.seen_tokens == 1 and out.cache is cache


def test_first_call_needs_questions_and_batch_must_match():
    model, inputs = tiny_model(), tiny_video_inputs()
    with pytest.raises(ValueError, match="verb_input_ids` is required"):
        model(video_features=inputs["video_features"], use_cache=True)
    _, cache = stream(model, inputs, ())
    # the message used to read "must be (b=2, l >= 1, D), got shape (1, 11, 32)": a shape at the fusion width,
    # not the video_features the caller passed, and no word of the cache's batch size being the rule
    with pytest.raises(ValueError, match=r"batch size 1, but `cache_params` holds 2 stream\(s\)"):
        model(video_features=inputs["video_features"][:1], cache_params=cache)
    with pytest.raises(ValueError, match=r"at least one new video token, got an empty chunk"):
        model(video_features=inputs["video_features"][:, :0], cache_params=cache)


def test_cache_needs_mamba_fusion():
    model = MambaVLForActionRecognition(tiny_config(fusion_type="transformer", fusion_transformer_heads=2))
    with pytest.raises(ValueError, match="MambaVLCache needs fusion_type='mamba'"):
        model(**tiny_inputs(), use_cache=True)


# ---- the cache object ---------------------------------------------------------------------------------------


def test_cache_shapes_nbytes_and_reset():
    config = tiny_config(num_fusion_layers=2)
    cache = MambaVLCache(config, batch_size=3)
    assert [tuple(t.shape) for t in cache.conv_states] == [(3, 64, 3)] * 2
    assert [tuple(t.shape) for t in cache.ssm_states] == [(3, 64, 4)] * 2
    assert tuple(cache.pool_state.shape) == (3, 32) and cache.seen_tokens == 0 and not cache.has_questions
    empty = cache.nbytes
    assert empty == 4 * (2 * 3 * 64 * 3 + 2 * 3 * 64 * 4 + 3 * 32) + 8
    model = MambaVLForActionRecognition(config).eval()
    out = model(**tiny_inputs(batch=3), cache_params=cache)
    assert out.cache is cache and cache.has_questions and cache.seen_tokens == 6
    assert cache.nbytes > empty
    assert cache.ssm_states[0].abs().sum() > 0
    cache.reset()
    assert cache.nbytes == empty and cache.seen_tokens == 0 and not cache.has_questions
    assert all(t.abs().sum() == 0 for t in (*cache.conv_states, *cache.ssm_states, cache.pool_state))


def test_cache_low_precision_keeps_float32_states_and_to_moves_casts():
    cache = MambaVLCache(tiny_config(), batch_size=1, dtype=torch.bfloat16)
    assert cache.conv_states[0].dtype == torch.bfloat16 and cache.ssm_states[0].dtype == torch.float32
    assert cache.to(dtype=torch.float64) is cache
    assert cache.conv_states[0].dtype == torch.float64 and cache.ssm_states[0].dtype == torch.float64
    assert cache.pool_state.dtype == torch.float64 and cache._seen.dtype == torch.long
    cache.to("meta")
    assert cache.ssm_states[0].device.type == "meta" and cache.device.type == "meta"


def test_detach_cuts_the_graph_between_chunks():
    model, inputs = tiny_model(dtype=torch.float32), tiny_video_inputs(dtype=torch.float32)
    model.train()
    out, cache = stream(model, inputs, (3,))
    assert cache.ssm_states[0].requires_grad
    out.verb_logits.sum().backward()  # through both chunks
    assert cache.detach() is cache and not cache.ssm_states[0].requires_grad and not cache.pool_state.requires_grad
    out = model(video_features=inputs["video_features"][:, :2], cache_params=cache)
    out.verb_logits.sum().backward()


def test_to_tensors_round_trip_continues_the_stream():
    model, inputs = tiny_model(), tiny_video_inputs()
    full = model(**inputs)
    with pytest.raises(ValueError, match="no questions yet"):
        MambaVLCache(model.config, 2).to_tensors()
    _, cache = stream(model, dict(inputs, video_features=inputs["video_features"][:, :6]), (4,))
    tensors = cache.to_tensors()
    assert len(tensors) == len(MambaVLCache.TENSOR_NAMES) == 8
    assert all(isinstance(t, torch.Tensor) for t in tensors)
    assert tuple(tensors[0].shape) == (1, 2, 64, 3) and tuple(tensors[1].shape) == (1, 2, 64, 4)
    # a cache rebuilt from the tensors continues the stream (as an exported step would) ...
    rebuilt = MambaVLCache.from_tensors(model.config, tensors)
    assert rebuilt.nbytes <= cache.nbytes and rebuilt.seen_tokens == 6
    model(video_features=inputs["video_features"][:, 6:8], cache_params=rebuilt)
    # ... and update_from_tensors sets a cache from another's tensors
    again = MambaVLCache(model.config, 2, dtype=torch.float64).update_from_tensors(rebuilt.to_tensors())
    out = model(video_features=inputs["video_features"][:, 8:], cache_params=again)
    assert rel_err(out.verb_logits, full.verb_logits) < 1e-10
    with pytest.raises(ValueError, match=r"`ssm_states` must have shape \(1, 2, 64, 4\)"):
        MambaVLCache(model.config, 2).update_from_tensors((tensors[0], tensors[1][:, :, :3], *tensors[2:]))
    with pytest.raises(ValueError, match="expected 8 tensors"):
        MambaVLCache.from_tensors(model.config, tensors[:3])


def test_cache_argument_errors():
    with pytest.raises(ValueError, match="batch_size` must be a positive integer"):
        MambaVLCache(tiny_config(), batch_size=0)


def test_pixel_values_clips_stream_like_their_concatenated_tokens():
    from tiny import tiny_video_config

    torch.manual_seed(0)
    config = tiny_config(video_config=tiny_video_config(), video_feature_size=None)
    model = MambaVLForActionRecognition(config).double().eval()
    clips = [torch.randn(2, 4, 3, 16, 16, dtype=torch.float64) for _ in range(3)]
    q = questions(tiny_inputs())
    cache = None
    for i, clip in enumerate(clips):  # each clip's 8 tokens are the next chunk
        out = model(pixel_values=clip, **(q if i == 0 else {}), cache_params=cache, use_cache=True)
        cache = out.cache
    tokens = torch.cat([model.mambavl.video_encoder(pixel_values=c).last_hidden_state for c in clips], dim=1)
    full = model(video_features=tokens, **q)
    assert cache.seen_tokens == 24
    assert rel_err(out.verb_logits, full.verb_logits) < 1e-10
    assert rel_err(out.noun_logits, full.noun_logits) < 1e-10


def test_one_streaming_step_exports_through_the_flat_tensor_view():
    """New video tokens + cache tensors in, logits + cache tensors out: the shape of an exported streaming step.
    (The reference scan is used here; the torch scan's export is another issue's.)"""
    model = tiny_model(dtype=torch.float32, ssm_backend="reference", num_fusion_layers=2)
    inputs = tiny_video_inputs(frames=3, dtype=torch.float32)
    cache = model(**inputs, use_cache=True).cache

    class Step(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, video_features, *tensors):
            cache = MambaVLCache.from_tensors(self.model.config, tensors)
            out = self.model(video_features=video_features, cache_params=cache)
            return (out.verb_logits, out.noun_logits, *cache.to_tensors())

    args = (torch.randn(2, 2, 12), *cache.to_tensors())
    program = torch.export.export(Step(model), args, strict=False)
    expected = Step(model)(*args)
    got = program.module()(*args)
    assert len(got) == 2 + len(MambaVLCache.TENSOR_NAMES)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    assert int(got[2 + MambaVLCache.TENSOR_NAMES.index("seen_tokens")]) == 5
