"""transformers conventions: label maps in the config, the standard forward flags, attention implementations, input
embeddings, Auto classes and the conventional ``labels``."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForVideoClassification

from mambavl import (
    AutoModelForActionAnticipation,
    MambaVLConfig,
    MambaVLForActionAnticipation,
    MambaVLForActionRecognition,
    MambaVLModel,
)
from mambavl.data import ActionClass, label_config
from tiny import tiny_config, tiny_inputs, tiny_labels, tiny_video_config

VERBS = {i: f"verb{i}" for i in range(5)}
NOUNS = {i: f"noun{i}" for i in range(7)}


def pixel_inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    inputs = tiny_inputs(batch)
    inputs.pop("video_features")
    inputs["pixel_values"] = torch.randn(batch, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return inputs


def video_model(**overrides) -> MambaVLForActionRecognition:
    torch.manual_seed(0)
    config = tiny_config(video_config=tiny_video_config(), video_feature_size=None, **overrides)
    return MambaVLForActionRecognition(config).eval()


# ---------------------------------------------------------------------------------------------------------------------
# label maps


def test_label_maps_and_inverses_round_trip_through_json(tmp_path) -> None:
    config = tiny_config(verb_id2label=VERBS, noun_id2label=NOUNS)
    assert config.verb_label2id == {f"verb{i}": i for i in range(5)}
    assert config.noun_label2id == {f"noun{i}": i for i in range(7)}
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["verb_id2label"]["3"] == "verb3" and saved["noun_label2id"]["noun6"] == 6
    loaded = MambaVLConfig.from_pretrained(tmp_path)
    assert loaded.verb_id2label == VERBS and loaded.noun_id2label == NOUNS  # int keys again
    assert all(isinstance(key, int) for key in loaded.verb_id2label)
    assert loaded.verb_label2id == config.verb_label2id and loaded.noun_label2id == config.noun_label2id
    assert loaded.id2label is None and loaded.num_labels is None


def test_label_config_fills_the_maps_of_the_config() -> None:
    verbs = [ActionClass(i, f"v{i}", [f"v{i}"]) for i in range(3)]
    nouns = [ActionClass(i, f"n{i}", [f"n{i}"]) for i in range(4)]
    config = tiny_config(**label_config(verbs, nouns))
    assert (config.num_verb_classes, config.num_noun_classes) == (3, 4)
    assert config.verb_label2id == {"v0": 0, "v1": 1, "v2": 2} and config.noun_id2label[3] == "n3"


def test_model_save_and_load_keeps_the_label_maps(tmp_path) -> None:
    model = MambaVLForActionRecognition(tiny_config(verb_id2label=VERBS, noun_id2label=NOUNS))
    model.save_pretrained(tmp_path)
    loaded = MambaVLForActionRecognition.from_pretrained(tmp_path)
    assert loaded.config.verb_id2label == VERBS and loaded.config.noun_label2id["noun2"] == 2
    top = loaded.eval().predict_actions(k=1, **tiny_inputs())[0][0]
    assert top["verb"] == VERBS[top["verb_id"]] and top["noun"] == NOUNS[top["noun_id"]]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_labels": 9}, "num_labels"),
        ({"id2label": {0: "a", 1: "b", 2: "c"}}, "id2label"),
        ({"label2id": {"a": 0, "b": 1, "c": 2}}, "label2id"),
    ],
)
def test_single_head_label_fields_are_refused(kwargs, name, tmp_path) -> None:
    with pytest.raises(ValueError, match=f"does not take `{name}`.*num_verb_classes"):
        tiny_config(**kwargs)
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"does not take `{name}`"):
        MambaVLConfig.from_pretrained(tmp_path, **kwargs)


def test_num_labels_is_absent_and_cannot_be_set() -> None:
    config = tiny_config(num_verb_classes=97, num_noun_classes=300)
    assert config.num_labels is None and config.id2label is None and config.label2id is None
    with pytest.raises(ValueError, match="num_verb_classes"):
        config.num_labels = 9


def test_folders_with_the_old_two_label_placeholder_still_load(tmp_path) -> None:
    tiny_config().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    saved["id2label"], saved["label2id"] = {"0": "LABEL_0", "1": "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    path.write_text(json.dumps(saved))
    assert MambaVLConfig.from_pretrained(tmp_path).id2label is None


def test_bad_label_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        tiny_config(verb_id2label={i: "same" for i in range(5)})
    with pytest.raises(ValueError, match="inverse"):
        tiny_config(verb_id2label=VERBS, verb_label2id={"verb0": 1})
    with pytest.raises(ValueError, match="needs `noun_id2label`"):
        tiny_config(noun_label2id={"noun0": 0})


# ---------------------------------------------------------------------------------------------------------------------
# forward flags


def test_config_output_hidden_states_is_the_default() -> None:
    model = MambaVLForActionRecognition(tiny_config(num_fusion_layers=2)).eval()
    assert model(**tiny_inputs()).hidden_states is None
    model.config.output_hidden_states = True
    out = model(**tiny_inputs())
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 6, 32)
    assert model(**tiny_inputs(), output_hidden_states=False).hidden_states is None


@pytest.mark.parametrize("model_class", [MambaVLModel, MambaVLForActionRecognition])
def test_config_return_dict_is_the_default(model_class) -> None:
    model = model_class(tiny_config()).eval()
    with torch.no_grad():
        as_dict = model(**tiny_inputs())
        model.config.return_dict = False
        as_tuple = model(**tiny_inputs())
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], as_dict.to_tuple()[0])
        assert not isinstance(model(**tiny_inputs(), return_dict=True), tuple)


def test_output_attentions_returns_the_encoders_attentions() -> None:
    model = video_model(text_encoder_mode="full")
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**pixel_inputs(), output_attentions=True)
    # VideoMAE: 2 x 2 x 2 = 8 tokens, 2 heads, 1 layer; BERT: 2 heads over the 7 and 5 question tokens
    assert [a.shape for a in out.video_attentions] == [(2, 2, 8, 8)]
    assert [a.shape for a in out.verb_question_attentions] == [(2, 2, 7, 7)]
    assert [a.shape for a in out.noun_question_attentions] == [(2, 2, 5, 5)]
    torch.testing.assert_close(out.video_attentions[0].sum(-1), torch.ones(2, 2, 8))
    assert model(**pixel_inputs()).video_attentions is None  # only when asked for ...
    model.config.output_attentions = True  # ... or by the config
    assert [a.shape for a in model(**pixel_inputs()).video_attentions] == [(2, 2, 8, 8)]


def test_output_attentions_is_none_without_attention_layers() -> None:
    model = MambaVLForActionRecognition(tiny_config()).eval()  # precomputed features, embeddings-only text
    out = model(**tiny_inputs(), output_attentions=True)
    assert out.video_attentions is None and out.verb_question_attentions is None
    model.set_attn_implementation("eager")  # transformers allows config.output_attentions with eager attention only
    model.config.output_attentions = True
    assert model(**tiny_inputs()).noun_question_attentions is None


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attn_implementation_reaches_the_encoders(implementation, tmp_path) -> None:
    video_model(text_encoder_mode="full").save_pretrained(tmp_path)
    model = MambaVLForActionRecognition.from_pretrained(tmp_path, attn_implementation=implementation)
    base = model.mambavl
    assert base.video_encoder.config._attn_implementation == implementation
    assert base.text_encoder.encoder.config._attn_implementation == implementation
    with torch.no_grad():
        reference = video_model(text_encoder_mode="full")
        reference.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(**pixel_inputs()).verb_logits, reference(**pixel_inputs()).verb_logits)


# ---------------------------------------------------------------------------------------------------------------------
# input embeddings


@pytest.mark.parametrize("mode", ["embeddings", "full"])
def test_input_embeddings_are_the_question_encoders_word_embeddings(mode) -> None:
    model = MambaVLForActionRecognition(tiny_config(text_encoder_mode=mode))
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding) and embeddings.weight.shape == (100, 16)
    assert embeddings is model.mambavl.get_input_embeddings()
    replacement = torch.nn.Embedding(100, 16)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement
    assert not replacement.weight.requires_grad  # the text encoder is frozen by default


@pytest.mark.parametrize("mode", ["embeddings", "full"])
def test_resize_token_embeddings(mode, tmp_path) -> None:
    model = MambaVLForActionRecognition(tiny_config(text_encoder_mode=mode)).eval()
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(103)
    assert model.get_input_embeddings().weight.shape == (103, 16)
    torch.testing.assert_close(model.get_input_embeddings().weight[:100], old)
    assert model.config.text_config.vocab_size == 103
    inputs = tiny_inputs()
    inputs["verb_input_ids"][0, 0] = 102  # a new token
    logits = model(**inputs).verb_logits
    model.save_pretrained(tmp_path)
    loaded = MambaVLForActionRecognition.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(**inputs).verb_logits, logits)


# ---------------------------------------------------------------------------------------------------------------------
# Auto classes


def test_anticipation_model_has_its_auto_class(tmp_path) -> None:
    config = tiny_config()
    assert type(AutoModelForActionAnticipation.from_config(config)) is MambaVLForActionAnticipation
    MambaVLForActionAnticipation(config).save_pretrained(tmp_path)
    assert type(AutoModelForActionAnticipation.from_pretrained(tmp_path)) is MambaVLForActionAnticipation
    assert type(AutoModelForVideoClassification.from_pretrained(tmp_path)) is MambaVLForActionRecognition


# ---------------------------------------------------------------------------------------------------------------------
# labels


def test_conventional_labels_are_verb_and_noun_columns() -> None:
    model = MambaVLForActionRecognition(tiny_config()).eval()
    separate = model(**tiny_inputs(), **tiny_labels())
    pair = torch.stack([tiny_labels()["verb_labels"], tiny_labels()["noun_labels"]], dim=1)
    joint = model(**tiny_inputs(), labels=pair)
    torch.testing.assert_close(joint.loss, separate.loss)
    torch.testing.assert_close(joint.verb_loss, separate.verb_loss)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"labels": torch.tensor([1, 2])}, ValueError, r"\(B, 2\) tensor of \[verb, noun\]"),
        ({"labels": torch.zeros(2, 2, dtype=torch.long), "verb_labels": torch.zeros(2, dtype=torch.long)}, ValueError,
         "not both"),
        ({"label": torch.tensor([1, 2])}, TypeError, "unexpected keyword arguments: label"),
    ],
)  # fmt: skip
def test_ambiguous_labels_say_what_to_pass(kwargs, error, match) -> None:
    model = MambaVLForActionRecognition(tiny_config())
    with pytest.raises(error, match=match):
        model(**tiny_inputs(), **kwargs)
