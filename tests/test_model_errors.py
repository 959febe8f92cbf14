"""Clear errors for the mistakes users make first: input dtypes, token ids, question length, loading a folder that is
not a saved MambaVL, and config values out of range or unknown."""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil

import pytest
import torch
from transformers import BertModel, RobertaConfig

from mambavl import MambaVLConfig, MambaVLForActionRecognition, MambaVLModel
from mambavl._model_checks import question_length_limit
from tiny import tiny_config, tiny_inputs, tiny_text_config, tiny_video_config

# ----------------------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.float64])
def test_pixel_values_of_a_wrong_dtype_name_it_and_what_is_expected(dtype):
    model = MambaVLModel(tiny_config(video_config=tiny_video_config(), video_feature_size=None))
    inputs = tiny_inputs()
    del inputs["video_features"]
    pixels = (torch.rand(2, 4, 3, 16, 16) * 255).to(dtype)
    with pytest.raises(TypeError, match=r"`pixel_values`") as info:
        model(pixel_values=pixels, **inputs)
    assert str(dtype) in str(info.value) and "torch.float32" in str(info.value)  # the dtype given and expected
    if dtype == torch.uint8:
        assert "MambaVLVideoProcessor" in str(info.value)
    model(pixel_values=pixels.float(), **inputs)  # float32 is what the model takes
    model.double()(pixel_values=pixels.double(), **inputs)  # and float64 when the model is float64


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_video_features_of_a_wrong_dtype_are_a_clear_error(dtype):
    model = MambaVLForActionRecognition(tiny_config())
    inputs = tiny_inputs()
    inputs["video_features"] = inputs["video_features"].to(dtype)
    with pytest.raises(TypeError, match=rf"`video_features` .*{str(dtype).split('.')[1]}"):
        model(**inputs)


def test_token_ids_outside_the_vocabulary_name_the_argument_and_the_vocabulary():
    model = MambaVLForActionRecognition(tiny_config())  # a 100-token vocabulary
    inputs = tiny_inputs()
    inputs["noun_input_ids"] = inputs["noun_input_ids"].clone()
    inputs["noun_input_ids"][1, 2] = 100
    with pytest.raises(ValueError, match=r"`noun_input_ids` holds the token id 100, outside .* vocabulary of 100"):
        model(**inputs)
    inputs["noun_input_ids"][1, 2] = -3
    with pytest.raises(ValueError, match=r"`noun_input_ids` holds the token id -3"):
        model(**inputs)
    inputs["noun_input_ids"] = inputs["noun_input_ids"].abs().float()
    with pytest.raises(TypeError, match=r"`noun_input_ids` must hold integer token ids"):
        model(**inputs)


def test_questions_longer_than_the_position_limit_name_the_limit():
    # BERT-style: every position counts, padding included
    model = MambaVLForActionRecognition(tiny_config(text_config=tiny_text_config(max_position_embeddings=9)))
    assert question_length_limit(model.base_model.text_encoder) == (9, None)
    inputs = tiny_inputs()
    model(**inputs)  # 7 and 5 tokens: fine
    inputs["verb_input_ids"] = torch.randint(1, 100, (2, 10))
    inputs["verb_attention_mask"] = torch.ones(2, 10, dtype=torch.long)
    with pytest.raises(ValueError, match=r"`verb_input_ids` has questions of 10 tokens, .*at most 9 tokens"):
        model(**inputs)


def test_roberta_style_position_limit_counts_only_real_tokens():
    # RoBERTa numbers positions from padding_idx + 1 and skips padding: 10 positions, pad 1 -> 8 real tokens
    text = RobertaConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=10, pad_token_id=1,
    )  # fmt: skip
    model = MambaVLForActionRecognition(tiny_config(text_config=text))
    assert question_length_limit(model.base_model.text_encoder) == (8, 1)
    inputs = tiny_inputs()
    ids = torch.full((2, 12), 1)  # padded to 12, but at most 8 real tokens: fine
    ids[:, :8] = torch.randint(2, 100, (2, 8))
    mask = (ids != 1).long()
    model(**{**inputs, "verb_input_ids": ids, "verb_attention_mask": mask})
    ids[0, 8] = 5
    mask = (ids != 1).long()
    with pytest.raises(ValueError, match=r"questions of 9 tokens, .*at most 8 tokens"):
        model(**{**inputs, "verb_input_ids": ids, "verb_attention_mask": mask})


# ----------------------------------------------------------------------------------------------------- from_pretrained


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    MambaVLForActionRecognition(tiny_config()).save_pretrained(folder / "model")
    BertModel(tiny_text_config()).save_pretrained(folder / "bert")
    return folder


def test_from_pretrained_a_folder_of_another_model_type(saved):
    with pytest.raises(ValueError, match=r"bert/config\.json' describes a model of type 'bert', not a MambaVL model"):
        MambaVLForActionRecognition.from_pretrained(saved / "bert")
    with pytest.raises(ValueError, match=r"configuration of a 'bert' model, not of a MambaVL model"):
        MambaVLConfig.from_pretrained(saved / "bert")


def test_from_pretrained_a_folder_without_config(saved, tmp_path):
    shutil.copytree(saved / "model", tmp_path / "weights")
    (tmp_path / "weights" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"weights' has no config\.json.*model\.safetensors"):
        MambaVLForActionRecognition.from_pretrained(tmp_path / "weights")
    # with a config given, bare weights load
    model = MambaVLForActionRecognition.from_pretrained(tmp_path / "weights", config=tiny_config())
    assert isinstance(model, MambaVLForActionRecognition)
    with pytest.raises(FileNotFoundError, match=r"nowhere' does not exist"):
        MambaVLForActionRecognition.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_from_pretrained_a_corrupt_safetensors_names_the_file(saved, tmp_path, damage):
    shutil.copytree(saved / "model", tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(OSError, match=rf"{weights.name}' is not a readable safetensors file .*corrupt or truncated"):
        MambaVLForActionRecognition.from_pretrained(tmp_path / "model")


def test_from_pretrained_of_a_good_folder_still_loads(saved):
    model = MambaVLForActionRecognition.from_pretrained(saved / "model")
    assert model.config.num_verb_classes == 5


# ----------------------------------------------------------------------------------------------------------- config

# Every numeric field of MambaVLConfig with values outside its range (or of the wrong type).
_BAD_VALUES = {
    "hidden_size": [0, -4, 2.5, True],
    "state_size": [0, "16"],
    "expand": [0, 1.5],
    "conv_kernel": [0],
    "time_step_rank": [0, "big"],
    "time_step_min": [0.0, -1e-3, math.nan, "0.001"],
    "time_step_max": [0.0, math.inf, 1e-5],
    "time_step_floor": [0.0, -1.0, math.nan],
    "time_step_scale": [0.0, -1.0, math.inf, "1"],
    "fusion_transformer_depth": [0],
    "fusion_transformer_heads": [0],
    "fusion_mlp_hidden_size": [0],
    "num_fusion_layers": [0],
    "layer_norm_epsilon": [0.0, -1e-5, math.nan],
    "num_verb_classes": [0, True],
    "num_noun_classes": [-1],
    "head_dropout": [1.0, -0.1, math.nan],
    "initializer_range": [0.0, -0.02, math.inf, None],
    "video_feature_size": [0],
    "text_projection_hidden_size": [0],
}


def _numeric_fields() -> set[str]:
    numeric = set()
    for field in dataclasses.fields(MambaVLConfig):
        if field.name in _BAD_VALUES or field.name.startswith("_"):
            numeric.add(field.name)
            continue
        default = getattr(MambaVLConfig, field.name, None)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            numeric.add(field.name)
    return numeric


def test_every_numeric_field_has_bad_values_tested():
    from transformers import PretrainedConfig

    own = {f.name for f in dataclasses.fields(PretrainedConfig)}
    assert _numeric_fields() - own - set(_BAD_VALUES) == set()


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, values in _BAD_VALUES.items() for v in values])
def test_config_values_out_of_range_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        MambaVLConfig(**{field: value})


def test_config_values_at_the_edges_of_their_range_are_accepted():
    MambaVLConfig(head_dropout=0.0, time_step_min=0.01, time_step_max=0.01, time_step_scale=1e-3, initializer_range=1)


def test_unknown_config_kwargs_are_warned_with_a_suggestion(caplog):
    with caplog.at_level(logging.WARNING, logger="mambavl"):
        config = MambaVLConfig(hidden_size=32, hiden_size=64)
    assert "unknown keyword argument 'hiden_size'" in caplog.text and "did you mean 'hidden_size'" in caplog.text
    assert config.hidden_size == 32 and config.hiden_size == 64  # kept as an attribute, as transformers does


def test_transformers_kwargs_and_save_load_round_trips_are_silent(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mambavl"):
        MambaVLConfig(output_attentions=True, torch_dtype="float32", use_cache=False, _commit_hash="x")
        model = MambaVLForActionRecognition(tiny_config())
        model.save_pretrained(tmp_path)
        MambaVLConfig.from_pretrained(tmp_path)
        MambaVLForActionRecognition.from_pretrained(tmp_path)
        MambaVLForActionRecognition.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager")
        MambaVLConfig.from_dict(model.config.to_dict())
    assert "unknown keyword" not in caplog.text, caplog.text
