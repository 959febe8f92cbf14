"""MambaVL models: forward/backward, shared A, save/load, Auto classes, errors, paper-width size."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification, BertModel, VideoMAEModel

import mambavl.fusion.ssm_fusion as ssm_fusion_module
from mambavl import MambaVLConfig, MambaVLForActionRecognition, MambaVLModel
from mambavl.fusion import SSMFusion
from tiny import (
    enable_activation_checkpointing,
    parameter_grads,
    tiny_config,
    tiny_inputs,
    tiny_labels,
    tiny_text_config,
    tiny_video_config,
)


@pytest.mark.parametrize("fusion_scan", ["separate", "joint"])
def test_forward_backward_with_video_features(fusion_scan):
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(tiny_config(fusion_scan=fusion_scan, num_fusion_layers=2))
    out = model(**tiny_inputs(), **tiny_labels())
    assert out.verb_logits.shape == (2, 5) and out.noun_logits.shape == (2, 7)
    assert out.video_hidden_states.shape == (2, 6, 32)
    assert torch.allclose(out.loss, out.verb_loss + out.noun_loss)
    out.loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable.values())
    assert not any("text_encoder.encoder" in n for n in trainable), "the text encoder is frozen by default"


def test_forward_backward_with_pixel_values():
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(tiny_config(video_config=tiny_video_config(), video_feature_size=None))
    inputs = tiny_inputs()
    del inputs["video_features"]
    pixel_values = torch.randn(2, 4, 3, 16, 16)
    out = model(pixel_values=pixel_values, **inputs, **tiny_labels())
    assert out.video_hidden_states.shape == (2, 8, 32)  # 2 tubelets x 2 x 2 patches
    out.loss.backward()
    assert model.mambavl.video_encoder.embeddings.patch_embeddings.projection.weight.grad is not None
    # Precomputed tokens of the same encoder skip it and give the same logits.
    with torch.no_grad():
        tokens = model.mambavl.video_encoder(pixel_values=pixel_values).last_hidden_state
        a = model(pixel_values=pixel_values, **inputs).verb_logits
        b = model(video_features=tokens, **inputs).verb_logits
    torch.testing.assert_close(a, b)


def test_outputs_and_pooling_ignore_padding():
    torch.manual_seed(0)
    model = MambaVLModel(tiny_config()).eval()
    inputs = tiny_inputs()
    out = model(**inputs)
    # pooled features are masked means of the fused tokens; x_verb = pool(y^V) + pool(y^T_verb)
    mask = inputs["verb_attention_mask"][..., None].float()
    expected = (out.verb_question_hidden_states * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(out.pooled_verb_question, expected)
    torch.testing.assert_close(out.pooled_video, out.video_hidden_states.mean(1))
    torch.testing.assert_close(out.verb_features, out.pooled_video + out.pooled_verb_question)
    torch.testing.assert_close(out.noun_features, out.pooled_video + out.pooled_noun_question)
    # More right padding, with arbitrary ids under it, changes nothing.
    padded = dict(inputs)
    padded["verb_input_ids"] = torch.cat([inputs["verb_input_ids"], torch.randint(1, 100, (2, 3))], 1)
    padded["verb_attention_mask"] = torch.cat([inputs["verb_attention_mask"], torch.zeros(2, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(model(**padded).verb_features, out.verb_features)
    assert isinstance(model(**inputs, return_dict=False), tuple)


@pytest.mark.parametrize("fusion_scan", ["separate", "joint"])
def test_fusion_scan_couples_modalities_as_documented(fusion_scan):
    torch.manual_seed(0)
    fusion = SSMFusion(tiny_config(fusion_scan=fusion_scan))
    video, question = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    y_video, (y_question,) = fusion(video, [question])
    _, (y_question2,) = fusion(video + 1.0, [question])
    _, (y_question3,) = fusion(video, [question + 1.0])
    y_video3, _ = fusion(video, [question + 1.0])
    torch.testing.assert_close(y_video3, y_video)  # video never reads the question (it comes first / apart)
    assert not torch.allclose(y_question3, y_question)
    if fusion_scan == "separate":
        torch.testing.assert_close(y_question2, y_question)  # coupled only through the shared A
    else:
        assert not torch.allclose(y_question2, y_question)  # question tokens read the video state


def test_joint_scan_batches_questions_of_different_lengths_exactly():
    torch.manual_seed(0)
    fusion = SSMFusion(tiny_config(fusion_scan="joint")).double()
    video, q1, q2 = torch.randn(2, 6, 32).double(), torch.randn(2, 3, 32).double(), torch.randn(2, 7, 32).double()
    y_video, (y1, y2) = fusion(video, [q1, q2])
    _, (y1_alone,) = fusion(video, [q1])
    y_video_alone, (y2_alone,) = fusion(video, [q2])
    torch.testing.assert_close(y_video, y_video_alone)
    torch.testing.assert_close(y1, y1_alone)
    torch.testing.assert_close(y2, y2_alone)
    assert y1.shape == (2, 3, 32) and y2.shape == (2, 7, 32)


def test_joint_scan_equals_one_scan_over_the_concatenation():
    """The joint scan with the reference backend, written out by hand from the two mixers."""
    torch.manual_seed(0)
    config = tiny_config(fusion_scan="joint", ssm_backend="reference")
    fusion = SSMFusion(config).double()
    video, question = torch.randn(1, 6, 32).double(), torch.randn(1, 4, 32).double()
    y_video, (y_question,) = fusion(video, [question])
    state = torch.zeros(1, config.intermediate_size, config.state_size, dtype=torch.float64)
    outputs = []
    for mixer, tokens in ((fusion.video_mixer, video), (fusion.text_mixer, question)):
        s = mixer.scan_inputs(tokens)
        delta = torch.nn.functional.softplus(s.delta + mixer.dt_proj.bias[:, None])
        ys = []
        for t in range(tokens.shape[1]):
            state = (
                torch.exp(delta[..., t, None] * fusion.A) * state
                + (delta[..., t] * s.u[..., t])[..., None] * s.B[:, None, :, t]
            )
            ys.append((state * s.C[:, None, :, t]).sum(-1) + mixer.D * s.u[..., t])
        y = torch.stack(ys, -1) * torch.nn.functional.silu(s.z)
        outputs.append(mixer.out_proj(y.transpose(1, 2)))
    torch.testing.assert_close(y_video, outputs[0])
    torch.testing.assert_close(y_question, outputs[1])


def test_shared_A_is_one_parameter_used_by_both_mixers(monkeypatch):
    fusion = SSMFusion(tiny_config())
    a_logs = [name for name, _ in fusion.named_parameters() if "A_log" in name]
    assert a_logs == ["A_log"], "exactly one A_log, owned by the fusion, none per mixer"
    seen = []
    real_scan = ssm_fusion_module.selective_scan

    def recording_scan(u, delta, A, *args, **kwargs):
        seen.append(A)
        return real_scan(u, delta, A, *args, **kwargs)

    monkeypatch.setattr(ssm_fusion_module, "selective_scan", recording_scan)
    fusion(torch.randn(2, 6, 32), [torch.randn(2, 5, 32)])
    assert len(seen) == 2 and seen[0] is seen[1], "both mixers scan with the very same A tensor"
    (grad,) = torch.autograd.grad(seen[0].sum(), fusion.A_log)
    torch.testing.assert_close(grad, -torch.exp(fusion.A_log.detach()))  # A = -exp(A_log)


@pytest.mark.parametrize("fusion_scan", ["separate", "joint"])
def test_each_modality_alone_sends_gradient_into_the_shared_A(fusion_scan):
    torch.manual_seed(0)
    fusion = SSMFusion(tiny_config(fusion_scan=fusion_scan))
    video, question = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    for pick in (0, 1):  # 0: only the video output's loss, 1: only the question output's loss
        fusion.zero_grad()
        y_video, (y_question,) = fusion(video, [question])
        (y_video, y_question)[pick].square().mean().backward()
        assert fusion.A_log.grad is not None and fusion.A_log.grad.abs().sum() > 0, pick
        mixer = (fusion.video_mixer, fusion.text_mixer)[pick]
        assert mixer.x_proj.weight.grad.abs().sum() > 0


def test_verb_or_noun_loss_alone_reaches_A_log_of_the_model():
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(tiny_config())
    a_log = model.mambavl.fusion.layers[0].fusion.A_log
    for kwargs in ({"verb_labels": torch.tensor([1, 2])}, {"noun_labels": torch.tensor([3, 4])}):
        model.zero_grad()
        out = model(**tiny_inputs(), **kwargs)
        assert (out.verb_loss is None) != (out.noun_loss is None)
        out.loss.backward()
        assert a_log.grad is not None and a_log.grad.abs().sum() > 0


def test_save_and_load_give_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(
        tiny_config(
            video_config=tiny_video_config(), video_feature_size=None, verb_id2label={i: f"v{i}" for i in range(5)}
        )
    ).eval()
    inputs = tiny_inputs()
    del inputs["video_features"]
    inputs["pixel_values"] = torch.randn(2, 4, 3, 16, 16)
    expected = model(**inputs)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mambavl"

    reloaded = MambaVLForActionRecognition.from_pretrained(tmp_path).eval()
    assert reloaded.config.verb_id2label[3] == "v3"
    auto = AutoModelForVideoClassification.from_pretrained(tmp_path).eval()
    assert isinstance(auto, MambaVLForActionRecognition)
    for m in (reloaded, auto):
        out = m(**inputs)
        assert torch.equal(out.verb_logits, expected.verb_logits)
        assert torch.equal(out.noun_logits, expected.noun_logits)

    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, MambaVLModel)
    torch.testing.assert_close(base(**inputs).verb_features, model.mambavl(**inputs).verb_features, rtol=0, atol=0)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MambaVLConfig)


def test_from_pretrained_backbones_copies_the_backbones(tmp_path):
    torch.manual_seed(0)
    video = VideoMAEModel(tiny_video_config())
    text = BertModel(tiny_text_config())
    video.save_pretrained(tmp_path / "video")
    text.save_pretrained(tmp_path / "text")
    model = MambaVLForActionRecognition.from_pretrained_backbones(
        video=tmp_path / "video", text=tmp_path / "text", hidden_size=32, state_size=4,
        num_verb_classes=5, num_noun_classes=7,
    )  # fmt: skip
    for name, tensor in video.state_dict().items():
        assert torch.equal(model.mambavl.video_encoder.state_dict()[name], tensor), name
    embeddings = model.mambavl.text_encoder.encoder
    for name, tensor in text.embeddings.state_dict().items():
        assert torch.equal(embeddings.state_dict()[name], tensor), name
    assert model.config.video_config.hidden_size == 24 and model.config.text_config.hidden_size == 16
    full = MambaVLModel.from_pretrained_backbones(text=text, video_feature_size=12, hidden_size=32,
                                                  text_encoder_mode="full")  # fmt: skip
    assert torch.equal(full.text_encoder.encoder.encoder.layer[0].output.dense.weight,
                       text.encoder.layer[0].output.dense.weight)  # fmt: skip
    with pytest.raises(ValueError, match="text"):
        MambaVLModel.from_pretrained_backbones(video=video)
    # a mistyped folder: the error names the backbone argument and says the folder does not exist
    with pytest.raises(OSError, match=r"from_pretrained_backbones\(text='.*/txet'\), not a local folder: "):
        MambaVLModel.from_pretrained_backbones(video=video, text=tmp_path / "txet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"\(video='.*/empty'\), a local folder without a usable model: cannot load"):
        MambaVLModel.from_pretrained_backbones(video=tmp_path / "empty", text=text)


def test_frozen_video_encoder_stays_in_eval_mode_and_has_no_gradient():
    config = tiny_config(video_config=tiny_video_config(), video_feature_size=None, freeze_video_encoder=True)
    model = MambaVLForActionRecognition(config).train()
    video_encoder = model.mambavl.video_encoder
    assert not video_encoder.training and not any(m.training for m in video_encoder.modules())
    assert model.mambavl.video_projection.training and model.mambavl.fusion.training
    assert not any(p.requires_grad for p in video_encoder.parameters())
    assert (
        MambaVLForActionRecognition(tiny_config(video_config=tiny_video_config(), video_feature_size=None))
        .train()
        .mambavl.video_encoder.training
    )


def test_frozen_text_encoder_stays_in_eval_mode_and_has_no_gradient():
    model = MambaVLForActionRecognition(tiny_config(text_config=tiny_text_config(hidden_dropout_prob=0.5)))
    model.train()
    encoder = model.mambavl.text_encoder.encoder
    assert not encoder.training and model.mambavl.text_encoder.projection.training
    assert not any(p.requires_grad for p in encoder.parameters())
    model.eval()
    unfrozen = MambaVLForActionRecognition(tiny_config(freeze_text_encoder=False)).train()
    assert unfrozen.mambavl.text_encoder.encoder.training
    out = unfrozen(**tiny_inputs(), **tiny_labels())
    out.loss.backward()
    assert unfrozen.mambavl.text_encoder.encoder.word_embeddings.weight.grad is not None


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = tiny_config(video_config=tiny_video_config(), video_feature_size=None, num_fusion_layers=2)
    model = MambaVLForActionRecognition(config)
    inputs = {k: v for k, v in tiny_inputs().items() if k != "video_features"}
    inputs["pixel_values"] = torch.randn(2, 4, 3, 16, 16)

    plain = parameter_grads(model, inputs)
    enable_activation_checkpointing(model)
    assert (
        model.mambavl.fusion.layers[0].gradient_checkpointing
        and model.mambavl.video_encoder.encoder.layer[0].gradient_checkpointing
    )
    checkpointed = parameter_grads(model, inputs)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_reference_and_torch_backends_agree_in_the_model():
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(tiny_config(fusion_scan="joint")).double().eval()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in tiny_inputs().items()}
    results = {}
    for backend in ("reference", "torch"):
        model.config.ssm_backend = backend
        results[backend] = model(**inputs).verb_logits
    torch.testing.assert_close(results["torch"], results["reference"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"video_features": torch.randn(2, 6, 11)}, r"video_features.*\(B, F, 12\)"),
        ({"pixel_values": torch.randn(2, 4, 3, 16, 16)}, "exactly one of"),
        ({"verb_input_ids": None}, "verb_input_ids` is required"),
        ({"noun_attention_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}, "left-padded"),
        ({"verb_attention_mask": torch.tensor([[0] * 7, [1] * 6 + [0]])}, "verb_attention_mask` has a row"),
        ({"verb_attention_mask": torch.tensor([[0] * 7, [0] + [1] * 6])}, "verb_attention_mask` has a row"),
        ({"noun_attention_mask": torch.ones(2, 4, dtype=torch.long)}, "noun_attention_mask` must have the shape"),
        ({"verb_labels": torch.tensor([0, 5])}, r"verb_labels.*outside \[0, 5\)"),
        ({"noun_labels": torch.tensor([0, 1, 2])}, r"noun_labels` must have shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    model = MambaVLForActionRecognition(tiny_config())
    inputs = {**tiny_inputs(), **change}
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_pixel_values_without_video_encoder_is_a_clear_error():
    model = MambaVLModel(tiny_config())
    inputs = tiny_inputs()
    del inputs["video_features"]
    with pytest.raises(ValueError, match="no video encoder"):
        model(pixel_values=torch.randn(2, 4, 3, 16, 16), **inputs)


def test_ignore_index_labels_are_allowed():
    model = MambaVLForActionRecognition(tiny_config())
    out = model(**tiny_inputs(), verb_labels=torch.tensor([-100, 2]), noun_labels=torch.tensor([1, -100]))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_size", 0),
        ("state_size", -1),
        ("expand", 1.5),
        ("conv_kernel", 0),
        ("time_step_rank", "big"),
        ("time_step_min", 0.0),
        ("time_step_max", 1e-5),
        ("time_step_floor", 0),
        ("num_fusion_layers", 0),
        ("fusion_scan", "parallel"),
        ("ssm_backend", "triton"),
        ("text_encoder_mode", "pooled"),
        ("num_verb_classes", 0),
        ("num_noun_classes", True),
        ("head_dropout", 1.0),
        ("freeze_text_encoder", "yes"),
        ("video_feature_size", 0),
        ("verb_id2label", {0: "take"}),
    ],
)
def test_invalid_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MambaVLConfig(**{field: value})


def test_video_feature_size_must_match_the_video_encoder():
    with pytest.raises(ValueError, match="video_feature_size"):
        MambaVLConfig(video_config=tiny_video_config(), video_feature_size=99)


def test_paper_width_fusion_has_about_nine_million_parameters():
    """hidden_size=768, state_size=16, expand=2, conv 4, text MLP from 768: the paper's 148M -> 157M step."""
    with torch.device("meta"):
        model = MambaVLModel(MambaVLConfig())
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    fusion = count(model.fusion) + count(model.text_encoder.projection)
    # per mixer: in_proj 768*3072 + conv 1536*4+1536 + x_proj 1536*80 + dt_proj 48*1536+1536 + D 1536
    # + out_proj 1536*768 = 3,746,304; two mixers + shared A (1536*16) + four RMSNorms (the layer's two, the final
    # two: 4*768) + text MLP 3*(768*768+768)
    assert fusion == 2 * 3_746_304 + 24_576 + 3_072 + 1_771_776 == 9_292_032
