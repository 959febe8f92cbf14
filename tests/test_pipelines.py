"""transformers.pipeline("egocentric-action-recognition", model=...) (mambavl.pipelines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertTokenizer, pipeline

from mambavl import MambaVLForActionRecognition, MambaVLProcessor, MambaVLVideoProcessor
from mambavl.metrics import rank_actions
from mambavl.pipelines import EgocentricActionRecognitionPipeline
from tiny import tiny_config, tiny_video_config

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "person", "doing", "with", "?"]
VERBS = ["take", "put", "open", "close", "cut"]
NOUNS = ["cup", "plate", "door", "jar", "knife", "board", "pan"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    config = tiny_config(video_config=tiny_video_config(), video_feature_size=None)
    MambaVLForActionRecognition(config).save_pretrained(path)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    video_processor = MambaVLVideoProcessor(num_frames=4, size=16, crop_size=16)
    MambaVLProcessor(video_processor, tokenizer, verb_classes=VERBS, noun_classes=NOUNS).save_pretrained(path)
    return path


def clip(seed: int = 0, frames: int = 9) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (frames, 20, 24, 3), dtype=np.uint8)


def expected_top(folder, frames, k, text=None):
    model = MambaVLForActionRecognition.from_pretrained(folder).eval()
    processor = MambaVLProcessor.from_pretrained(folder)
    with torch.no_grad():
        out = model(**processor(videos=[frames], text=text))
    verbs, nouns, scores = rank_actions(out.verb_logits, out.noun_logits, k=k)
    rows = zip(verbs[0].tolist(), nouns[0].tolist(), scores[0].tolist(), strict=True)
    return [(VERBS[v], NOUNS[n], s) for v, n, s in rows]


def test_the_task_returns_the_models_top_k_actions_for_frames(folder):
    recognizer = pipeline("egocentric-action-recognition", model=str(folder))
    assert isinstance(recognizer, EgocentricActionRecognitionPipeline)
    frames = clip()
    result = recognizer(frames, top_k=3)
    assert [set(r) for r in result] == [{"verb", "noun", "label", "score", "verb_id", "noun_id"}] * 3
    got = [(r["verb"], r["noun"], r["score"]) for r in result]
    for (verb, noun, score), (v, n, s) in zip(got, expected_top(folder, frames, 3), strict=True):
        assert (verb, noun) == (v, n) and score == pytest.approx(s, rel=1e-5)
    assert result[0]["label"] == f"{result[0]['verb']} {result[0]['noun']}"
    assert VERBS[result[0]["verb_id"]] == result[0]["verb"]
    assert len(recognizer(frames)) == 5  # default top_k
    # Channels-first frames and a tensor give the same answer.
    as_tensor = recognizer(torch.from_numpy(frames).permute(0, 3, 1, 2), top_k=3)
    assert [(r["verb"], r["noun"]) for r in as_tensor] == [(v, n) for v, n, _ in got]


def test_a_batch_a_video_file_and_the_users_own_question(folder, tmp_path):
    pytest.importorskip("av")
    from mambavl.data import decode_frames, read_video_info, sample_frame_indices, write_video

    recognizer = pipeline("egocentric-action-recognition", model=str(folder))
    batch = recognizer([clip(0), clip(1)], top_k=2)
    assert len(batch) == 2 and all(len(r) == 2 for r in batch)
    assert batch[0] == recognizer(clip(0), top_k=2)

    path = tmp_path / "clip.mp4"
    write_video(path, clip(2, frames=20), fps=10)
    from_file = recognizer(str(path), top_k=2)
    (indices,) = sample_frame_indices(1, read_video_info(path).num_frames, 4, "center")
    decoded = decode_frames(path, [i - 1 for i in indices])
    assert [(r["verb"], r["noun"]) for r in from_file] == [(v, n) for v, n, _ in expected_top(folder, decoded, 2)]

    question = "what is the person doing with the [MASK]?"
    own = recognizer(clip(0), question=question, top_k=2)
    assert [(r["verb"], r["noun"]) for r in own] == [(v, n) for v, n, _ in expected_top(folder, clip(0), 2, question)]
    assert [r["score"] for r in own] != [r["score"] for r in batch[0]]  # the question changes the answer


def test_bad_calls_get_clear_errors(folder):
    recognizer = pipeline("egocentric-action-recognition", model=str(folder))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        recognizer(clip()[0])
    with pytest.raises(TypeError, match="video path"):
        recognizer(3)
    with pytest.raises(ValueError, match="top_k"):
        recognizer(clip(), top_k=0)
    with pytest.raises(TypeError, match="unexpected argument"):
        recognizer(clip(), topk=2)


def test_start_and_end_outside_the_video_are_named(folder, tmp_path, caplog):
    """`end` past the end of the file was cut to the video's length without a word; a negative `start` was
    reported as selecting no frame."""
    pytest.importorskip("av")
    from mambavl.data import write_video

    path = tmp_path / "clip.mp4"
    write_video(path, clip(3, frames=20), fps=10)  # 2 s
    recognizer = pipeline("egocentric-action-recognition", model=str(folder))
    with pytest.raises(ValueError, match=r"start=-1: .*0 or more"):
        recognizer(str(path), start=-1, end=1)
    with caplog.at_level("WARNING", logger="mambavl.pipelines"):
        past = recognizer(str(path), start=0.5, end=60, top_k=2)
    assert "end=60" in caplog.text and "2.0 s" in caplog.text
    assert past == recognizer(str(path), start=0.5, top_k=2)  # read to the end of the video
    caplog.clear()
    with caplog.at_level("WARNING", logger="mambavl.pipelines"):
        recognizer(str(path), start=0.5, end=2.0, top_k=2)  # the video's own end: nothing to say
    assert caplog.text == ""


def test_batch_size_batches_clips_whose_questions_differ_in_length(folder):
    """`pipeline(..., batch_size=2)`, the usual pipeline option, stopped in transformers' collate with a NameError
    (`f_padding_value`): the pipeline has no feature extractor to pad `pixel_values` and its question ids are not
    `input_ids`. Batched results are those of one clip at a time."""
    recognizer = pipeline("egocentric-action-recognition", model=str(folder))
    clips = [clip(0), clip(1), clip(2)]
    for kwargs in ({}, {"question": ("what is the [MASK]?", "what is the person doing with the [MASK]?")}):
        expected = recognizer(clips, top_k=3, **kwargs)
        batched = recognizer(clips, top_k=3, batch_size=2, **kwargs)
        assert len(batched) == 3
        for got, want in zip(batched, expected, strict=True):
            assert [(r["verb"], r["noun"]) for r in got] == [(r["verb"], r["noun"]) for r in want]
            assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], rel=1e-5)
    # questions of different lengths in one batch: padded on the right with the tokenizer's pad id, mask 0
    processor = MambaVLProcessor.from_pretrained(folder)
    items = [dict(processor(videos=[clips[0]], text="what [MASK]?")),
             dict(processor(videos=[clips[1]], text="what is the person doing with the [MASK]?"))]  # fmt: skip
    batch = recognizer._collate(items)
    assert batch["pixel_values"].shape[0] == 2 and batch["verb_input_ids"].shape == batch["verb_attention_mask"].shape
    assert int(batch["verb_attention_mask"][0, -1]) == 0 and int(batch["verb_attention_mask"][1, -1]) == 1
    assert int(batch["verb_input_ids"][0, -1]) == processor.tokenizer.pad_token_id


def test_the_video_classification_pipeline_fails_with_a_message_naming_it(folder):
    with pytest.raises(ValueError, match="video-classification pipeline"):
        pipeline("video-classification", model=str(folder))
