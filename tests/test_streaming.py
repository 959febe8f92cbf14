"""MambaVLStreamer: exact against one forward over the concatenated tokens, constant memory, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import BertTokenizer

from mambavl import (
    MambaVLForActionAnticipation,
    MambaVLForActionRecognition,
    MambaVLProcessor,
    MambaVLVideoProcessor,
)
from mambavl.streaming import MambaVLStreamer
from tiny import tiny_config, tiny_video_config

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "person", "doing", "to", "?", "object"]
VERBS, NOUNS = ["take", "put", "open", "close", "cut"], ["cup", "plate", "door", "jar", "knife", "board", "pan"]


def processor() -> MambaVLProcessor:
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    return MambaVLProcessor(
        MambaVLVideoProcessor(num_frames=4, size=16, crop_size=16), tokenizer, verb_classes=VERBS, noun_classes=NOUNS
    )


def feature_model(cls=MambaVLForActionRecognition, **overrides):
    torch.manual_seed(0)
    labels = {"verb_id2label": dict(enumerate(VERBS)), "noun_id2label": dict(enumerate(NOUNS))}
    return cls(tiny_config(**{**labels, **overrides})).eval()


def frame_model(**overrides):
    torch.manual_seed(0)
    return MambaVLForActionRecognition(
        tiny_config(video_config=tiny_video_config(), video_feature_size=None, **overrides)
    ).eval()


def questions(proc):
    batch = proc(video_features=np.zeros((1, 1, 1), np.float32))
    return {k: batch[k] for k in ("verb_input_ids", "verb_attention_mask", "noun_input_ids", "noun_attention_mask")}


@pytest.mark.parametrize("fusion_scan", ["separate", "joint"])
@pytest.mark.parametrize("num_fusion_layers", [1, 2])
def test_feature_stream_equals_one_forward_over_the_concatenation(fusion_scan, num_fusion_layers):
    torch.set_default_dtype(torch.float64)
    try:
        model = feature_model(fusion_scan=fusion_scan, num_fusion_layers=num_fusion_layers, pool_window=5)
        proc = processor()
        streamer = MambaVLStreamer(model, proc, stride=3, fps=2.0)
        features = torch.randn(22, 12)
        steps = []
        for chunk in torch.split(features, [1, 4, 2, 7, 8]):  # uneven pushes; a step every 3 feature rows
            steps += streamer.push_features(chunk)
        assert [s.frame for s in steps] == [2, 5, 8, 11, 14, 17, 20]
        assert [s.time for s in steps] == [1.0, 2.5, 4.0, 5.5, 7.0, 8.5, 10.0]
        q = questions(proc)
        for step in steps:
            with torch.no_grad():
                full = model(video_features=features[None, : step.frame + 1], **q)
            torch.testing.assert_close(step.verb_logits, full.verb_logits[0].float(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(step.noun_logits, full.noun_logits[0].float(), rtol=1e-5, atol=1e-6)
    finally:
        torch.set_default_dtype(torch.float32)


def test_frame_stream_equals_one_forward_over_the_windows_tokens():
    model = frame_model(pool_window=8)  # one window of 4 frames = 8 VideoMAE tokens
    proc = processor()
    streamer = MambaVLStreamer(model, proc, window=6, stride=2, fps=10.0)
    frames = np.random.default_rng(0).integers(0, 255, (13, 20, 20, 3), dtype=np.uint8)
    steps = streamer.push_frames(frames[:5]) + streamer.push_frames(frames[5:])
    assert [s.frame for s in steps] == [5, 7, 9, 11]
    q = questions(proc)
    tokens = []
    with torch.no_grad():
        for step in steps:
            window = frames[step.frame - 5 : step.frame + 1]
            pixel_values = proc.video_processor([window], return_tensors="pt")["pixel_values"]
            tokens.append(model.mambavl.video_encoder(pixel_values=pixel_values).last_hidden_state)
            full = model(video_features=torch.cat(tokens, dim=1), **q)
            torch.testing.assert_close(step.verb_logits, full.verb_logits[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(step.noun_logits, full.noun_logits[0], rtol=1e-4, atol=1e-5)
    # the re-reading baseline reads each window alone, from a zero state
    reread = MambaVLStreamer(model, proc, window=6, stride=2, carry_state=False)
    last = reread.push_frames(frames)[-1]
    with torch.no_grad():
        alone = model(video_features=tokens[-1], **q)
    torch.testing.assert_close(last.verb_logits, alone.verb_logits[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(last.verb_logits, steps[-1].verb_logits)  # the carried history matters


def test_memory_does_not_grow_with_the_stream():
    model = feature_model(pool_window=4)
    streamer = MambaVLStreamer(model, processor(), stride=4)
    sizes = []
    for _ in range(300):
        assert len(streamer.push_features(torch.randn(4, 12))) == 1
        sizes.append(streamer.memory_bytes)
    assert streamer.cache.seen_tokens == 1200
    assert len(set(sizes)) == 1 and sizes[0] > 0
    streamer.reset()
    assert streamer.cache is None and streamer.steps == 0 and streamer.memory_bytes == 0


def test_actions_questions_and_tasks():
    proc = processor()
    model = feature_model()
    features = torch.randn(8, 12)
    default = MambaVLStreamer(model, proc, stride=8, top_k=3).push_features(features)[0]
    assert len(default.actions) == 3 and default.task == "recognition"
    scores = [a["score"] for a in default.actions]
    assert scores == sorted(scores, reverse=True) and default.top["verb"] in VERBS and default.top["noun"] in NOUNS
    probs = (
        torch.softmax(default.verb_logits, 0)[default.top["verb_id"]]
        * torch.softmax(default.noun_logits, 0)[default.top["noun_id"]]
    )
    assert default.top["score"] == pytest.approx(float(probs))
    assert default.top["score"] == pytest.approx(default.top["verb_score"] * default.top["noun_score"])
    own = MambaVLStreamer(model, proc, stride=8, questions=("what is the person doing ?", "to what object ?"))
    assert not torch.allclose(own.push_features(features)[0].verb_logits, default.verb_logits)
    json.dumps(default.to_dict())
    anticipation = MambaVLStreamer(feature_model(MambaVLForActionAnticipation), proc, stride=8)
    assert anticipation.push_features(features)[0].task == "anticipation"


def test_bad_arguments():
    model, proc = feature_model(), processor()
    with pytest.raises(ValueError, match="stride"):
        MambaVLStreamer(model, proc, stride=0)
    with pytest.raises(ValueError, match="processor"):
        MambaVLStreamer(model)
    with pytest.raises(TypeError, match="MambaVLForActionRecognition"):
        MambaVLStreamer(model.mambavl, proc)
    with pytest.raises(ValueError, match=r"\(n, 12\)"):
        MambaVLStreamer(model, proc).push_features(torch.randn(3, 5))
    with pytest.raises(ValueError, match="questions"):
        MambaVLStreamer(model, proc, questions=("only one",))


def test_iter_video_frames_decodes_in_chunks_and_subsamples(tmp_path):
    from mambavl.data import decode_frames, write_video
    from mambavl.streaming import iter_video_frames

    frames = np.random.default_rng(0).integers(0, 255, (25, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "v.mp4"
    write_video(path, frames, 10)
    chunks = list(iter_video_frames(path, chunk_size=8))
    assert [c.shape[0] for c, _ in chunks] == [8, 8, 8, 1] and chunks[0][1] == 10.0
    np.testing.assert_array_equal(np.concatenate([c for c, _ in chunks]), decode_frames(path, range(25)))
    half = np.concatenate([c for c, _ in iter_video_frames(path, sample_fps=5)])
    np.testing.assert_array_equal(half, decode_frames(path, range(0, 25, 2)))
    every = list(iter_video_frames(path, sample_fps=20))  # above the video's rate: every frame, at its rate
    assert sum(c.shape[0] for c, _ in every) == 25 and every[0][1] == 10.0
    with pytest.raises(ValueError, match="sample_fps"):
        next(iter_video_frames(path, sample_fps=0))


def test_a_reused_input_buffer_does_not_change_the_stream():
    # a camera (or a feature extractor) that writes every frame into one array: the streamer must keep its own
    # copies of the window's frames and of the pending feature steps, or the window silently becomes n copies of
    # the last frame
    proc = processor()
    model = frame_model(pool_window=8)
    frames = np.random.default_rng(0).integers(0, 255, (12, 20, 20, 3), dtype=np.uint8)
    expected = MambaVLStreamer(model, proc, window=6, stride=3).push_frames(frames)
    streamer, buffer, steps = MambaVLStreamer(model, proc, window=6, stride=3), np.empty_like(frames[0]), []
    for frame in frames:
        buffer[:] = frame
        steps += streamer.push_frames(buffer)
    assert len(steps) == len(expected) == 3
    for got, want in zip(steps, expected, strict=True):
        torch.testing.assert_close(got.verb_logits, want.verb_logits)
    model = feature_model(pool_window=4)
    features = torch.randn(12, 12)
    expected = MambaVLStreamer(model, proc, stride=4).push_features(features)
    streamer, buffer, steps = MambaVLStreamer(model, proc, stride=4), torch.empty(1, 12), []
    for row in features:
        buffer[0] = row
        steps += streamer.push_features(buffer)
    for got, want in zip(steps, expected, strict=True):
        torch.testing.assert_close(got.verb_logits, want.verb_logits)


def test_bad_frames_and_mixed_inputs_are_named_when_pushed():
    model, proc = frame_model(pool_window=8), processor()
    streamer = MambaVLStreamer(model, proc, window=6, stride=3)
    # a stack of grayscale frames used to be buffered as one (4, 20, 20) "frame" and fail (or not) windows later
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB, got shape \(4, 20, 20\)"):
        streamer.push_frames(np.zeros((4, 20, 20), np.uint8))
    streamer.reset()
    streamer.push_frames(np.zeros((2, 20, 20, 3), np.uint8))
    with pytest.raises(
        ValueError, match=r"Frame 2 of the stream has shape \(24, 24, 3\), the previous one \(20, 20, 3\)"
    ):
        streamer.push_frames([np.zeros((24, 24, 3), np.uint8)])  # used to fail in np.stack, naming nothing
    with pytest.raises(ValueError, match="fed frames, now features"):
        streamer.push_features(torch.zeros(3, model.config.video_feature_size))
    with pytest.raises(ValueError, match="`fps` must be a positive number, got '10'"):
        MambaVLStreamer(model, proc, fps="10")
    model = feature_model()
    features = torch.randn(6, 12)
    features[4, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 of its 6 rows \(first: row 4"):
        MambaVLStreamer(model, proc, stride=3).push_features(features)  # used to fail in the metrics' ranking
    assert len(MambaVLStreamer(model, proc, stride=3, fps=np.float32(2.0)).push_features(features[:3])) == 1


def test_stream_of_iter_video_frames_pairs_says_to_unpack_them(tmp_path):
    from mambavl.data import write_video
    from mambavl.streaming import iter_video_frames

    path = tmp_path / "v.mp4"
    write_video(path, np.zeros((8, 16, 16, 3), np.uint8), fps=8)
    streamer = MambaVLStreamer(frame_model(pool_window=8), processor(), window=4, stride=4)
    # stream() was given iter_video_frames' (frames, fps) pairs: the message said "pass a batch as (n, H, W, 3)"
    with pytest.raises(ValueError, match=r"iter_video_frames yields \(frames, fps\) pairs"):
        list(streamer.stream(iter_video_frames(path)))
    assert len(list(streamer.stream(frames for frames, _ in iter_video_frames(path)))) == 2


def test_the_streaming_concept_pages_python_block_runs_as_written(tmp_path, monkeypatch, capsys):
    # docs/concepts/streaming.md's example used first_chunk, verb_ids, noun_ids and later_chunks without saying
    # where they come from: NameError for a reader who ran it after `mambavl demo`
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "concepts" / "streaming.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, re.S)
    model_dir = tmp_path / "runs" / "demo" / "run" / "model"
    frame_model().save_pretrained(model_dir)
    processor().save_pretrained(model_dir)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "streaming.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[-1].split()[-2:] == ["100", lines[0].split()[-1]]  # 100 tokens, one size
