"""Fusion baselines (transformer, MLP) beside the Mamba fusion: same inputs, heads and losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambavl import MambaVLForActionRecognition, MambaVLModel
from mambavl.fusion import FusionOutput, build_fusion, masked_mean
from mambavl.fusion.baselines import MLPFusion, TransformerFusion, TransformerFusionLayer
from tiny import enable_activation_checkpointing, parameter_grads, tiny_config, tiny_inputs, tiny_labels

FUSION_TYPES = ["mamba", "transformer", "mlp"]
FUSION_CLASSES = {"transformer": TransformerFusion, "mlp": MLPFusion}


def config_for(fusion_type: str, **overrides):
    if fusion_type == "transformer":
        overrides = {"fusion_transformer_depth": 2, "fusion_transformer_heads": 4, **overrides}
    return tiny_config(fusion_type=fusion_type, **overrides)


def with_extra_padding(inputs: dict[str, torch.Tensor], extra: int = 3) -> dict[str, torch.Tensor]:
    """The same questions with ``extra`` more right-padding columns (random ids under a zero mask)."""
    padded = dict(inputs)
    for name in ("verb", "noun"):
        ids, mask = inputs[f"{name}_input_ids"], inputs[f"{name}_attention_mask"]
        padded[f"{name}_input_ids"] = torch.cat([ids, torch.randint(1, 100, (ids.shape[0], extra))], dim=1)
        padded[f"{name}_attention_mask"] = F.pad(mask, (0, extra))
    return padded


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_forward_backward_shapes_and_loss(fusion_type):
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(config_for(fusion_type))
    if fusion_type in FUSION_CLASSES:
        assert isinstance(model.mambavl.fusion, FUSION_CLASSES[fusion_type])
    out = model(**tiny_inputs(), **tiny_labels())
    assert out.verb_logits.shape == (2, 5) and out.noun_logits.shape == (2, 7)
    assert out.verb_features.shape == (2, 32) and out.noun_features.shape == (2, 32)
    if fusion_type == "mlp":
        assert out.video_hidden_states is None
    else:
        assert out.video_hidden_states.shape == (2, 6, 32)
    # Same heads and loss for every fusion: logits = Linear(features), loss = CE(verb) + CE(noun).
    torch.testing.assert_close(out.verb_logits, model.verb_head(out.verb_features))
    torch.testing.assert_close(out.noun_logits, model.noun_head(out.noun_features))
    expected = F.cross_entropy(out.verb_logits, tiny_labels()["verb_labels"]) + F.cross_entropy(
        out.noun_logits, tiny_labels()["noun_labels"]
    )
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"
    fusion_grads = [p.grad.abs().sum() for p in model.mambavl.fusion.parameters()]
    assert fusion_grads and all(g > 0 for g in fusion_grads)


@pytest.mark.parametrize("fusion_type", ["transformer", "mlp"])
def test_extra_right_padding_changes_nothing(fusion_type):
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(config_for(fusion_type)).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        a, b = model(**inputs), model(**with_extra_padding(inputs, extra=4))
    for name in ("verb_features", "noun_features", "verb_logits", "noun_logits"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-5, msg=name)
    if fusion_type == "transformer":
        torch.testing.assert_close(b.video_hidden_states, a.video_hidden_states, rtol=1e-5, atol=1e-5)


def test_transformer_pools_like_mamba_and_keeps_questions_apart():
    torch.manual_seed(0)
    config = config_for("transformer", fusion_transformer_depth=3)
    fusion = build_fusion(config).eval()
    video, verb, noun = torch.randn(2, 6, 32), torch.randn(2, 7, 32), torch.randn(2, 4, 32)
    verb_mask = torch.ones(2, 7, dtype=torch.long)
    verb_mask[1, 5:] = 0
    with torch.no_grad():
        out = fusion(video, verb, noun, verb_mask, None, output_hidden_states=True)
        assert isinstance(out, FusionOutput)
        assert out.verb_question_hidden_states.shape == (2, 7, 32) and out.noun_question_hidden_states.shape == (
            2, 4, 32,
        )  # fmt: skip
        # x_verb = pool(y^V of the verb sequence) + masked pool(y^T_verb)
        pooled_verb = masked_mean(out.verb_question_hidden_states, verb_mask)
        torch.testing.assert_close(out.pooled_verb_question, pooled_verb)
        torch.testing.assert_close(out.pooled_video, out.video_hidden_states.mean(1))
        torch.testing.assert_close(out.verb_features, out.pooled_video + pooled_verb)
        assert len(out.hidden_states) == 3 + 1 and out.hidden_states[0].shape == (2, 6, 32)
        torch.testing.assert_close(out.hidden_states[0], video + fusion.type_embeddings.weight[0])
        # The two questions run in separate sequences: the noun question never reaches the verb features,
        # while the verb question changes the fused video tokens (cross-modal attention).
        other = fusion(video, verb, torch.randn(2, 4, 32), verb_mask, None)
        torch.testing.assert_close(other.verb_features, out.verb_features, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(other.noun_features, out.noun_features)
        changed = fusion(video, torch.randn(2, 7, 32), noun, verb_mask, None)
        assert not torch.allclose(changed.video_hidden_states, out.video_hidden_states)


def test_mlp_fusion_is_an_mlp_of_pooled_features():
    torch.manual_seed(0)
    fusion = build_fusion(config_for("mlp", fusion_mlp_hidden_size=48))
    assert fusion.mlp[0].in_features == 64 and fusion.mlp[0].out_features == 48 and fusion.mlp[2].out_features == 32
    video, verb, noun = torch.randn(2, 6, 32), torch.randn(2, 7, 32), torch.randn(2, 4, 32)
    noun_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = fusion(video, verb, noun, None, noun_mask)
    pooled_noun = noun[:, :2].mean(1)
    pooled_noun[1] = noun[1].mean(0)
    expected = fusion.mlp(fusion.norm(torch.cat([video.mean(1), pooled_noun], dim=-1)))
    torch.testing.assert_close(out.noun_features, expected)
    torch.testing.assert_close(out.pooled_noun_question, pooled_noun)
    assert out.verb_question_hidden_states is None and out.hidden_states is None


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_save_and_load_give_identical_logits(fusion_type, tmp_path):
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(config_for(fusion_type)).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        expected = model(**inputs)
    model.save_pretrained(tmp_path)
    reloaded = MambaVLForActionRecognition.from_pretrained(tmp_path).eval()
    assert reloaded.config.fusion_type == fusion_type
    assert type(reloaded.mambavl.fusion) is type(model.mambavl.fusion)
    with torch.no_grad():
        out = reloaded(**inputs)
    assert torch.equal(out.verb_logits, expected.verb_logits)
    assert torch.equal(out.noun_logits, expected.noun_logits)


def test_transformer_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(config_for("transformer"))
    inputs = tiny_inputs()

    plain = parameter_grads(model, inputs)
    enable_activation_checkpointing(model)
    layers = [m for m in model.modules() if isinstance(m, TransformerFusionLayer)]
    assert len(layers) == 2 and all(layer.gradient_checkpointing for layer in layers)
    calls = []  # the layer checkpoints `forward`, not `__call__`: a submodule's hook sees the recomputation
    hooks = [layer.attention.register_forward_hook(lambda *args: calls.append(1)) for layer in layers]
    checkpointed = parameter_grads(model, inputs)
    for hook in hooks:
        hook.remove()
    assert len(calls) == 4, "each checkpointed layer runs again in the backward pass"
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_baseline_weights_get_the_models_initialisation():
    torch.manual_seed(0)
    fusion = MambaVLModel(config_for("transformer", initializer_range=0.02)).fusion
    assert 0.01 < fusion.type_embeddings.weight.std().item() < 0.03  # normal(0.02), not nn.Embedding's N(0, 1)
    assert torch.equal(fusion.norm.weight, torch.ones(32)) and torch.equal(fusion.norm.bias, torch.zeros(32))
    qkv = fusion.layers[0].attention.qkv
    assert 0.01 < qkv.weight.std().item() < 0.03 and torch.equal(qkv.bias, torch.zeros(96))


@pytest.mark.parametrize("fusion_type", ["transformer", "mlp"])
def test_bad_fusion_inputs_name_the_argument(fusion_type):
    fusion = build_fusion(config_for(fusion_type))
    video, verb, noun = torch.randn(2, 6, 32), torch.randn(2, 7, 32), torch.randn(2, 4, 32)
    with pytest.raises(ValueError, match="`video`"):
        fusion(torch.randn(2, 6, 16), verb, noun)
    with pytest.raises(ValueError, match="`noun_question`"):
        fusion(video, verb, torch.randn(3, 4, 32))
    with pytest.raises(ValueError, match="`verb_attention_mask`"):
        fusion(video, verb, noun, torch.ones(2, 5))
