"""PEFT / LoRA on the fusion's linear layers: every adapter trains, and merged adapters give the same logits."""

from __future__ import annotations

import peft
import pytest
import torch
from torch import nn

from mambavl import MambaVLForActionRecognition
from mambavl.fusion.ssm_fusion import _channels_first_linear
from tiny import tiny_config, tiny_inputs, tiny_labels

# The fusion mixers' four linear layers, the video projection and the text MLP's first layer.
TARGETS = ["in_proj", "x_proj", "dt_proj", "out_proj", "video_projection", "projection.0"]


def lora_model(target: str, **config_overrides) -> nn.Module:
    torch.manual_seed(0)
    # Steps Δ of about 1 (not Mamba's initial 0.001-0.1) so that the scan, and with it x_proj and dt_proj, moves the
    # logits measurably.
    config_overrides = {"time_step_min": 0.5, "time_step_max": 2.0, **config_overrides}
    model = MambaVLForActionRecognition(tiny_config(**config_overrides))
    # init_lora_weights=False: B is random too (not zero), so that A gets a non-zero gradient and merging matters.
    lora = peft.LoraConfig(r=2, lora_alpha=32, target_modules=[target], init_lora_weights=False)
    return peft.get_peft_model(model, lora)


@pytest.mark.parametrize("fusion_scan", ["separate", "joint"])
@pytest.mark.parametrize("target", TARGETS)
def test_every_lora_weight_trains(target: str, fusion_scan: str) -> None:
    model = lora_model(target, fusion_scan=fusion_scan)
    lora_params = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert lora_params, f"no LoRA weights for {target}"
    assert all(p.requires_grad for p in lora_params.values())
    inputs = tiny_inputs()
    model.train()
    loss = model(**inputs, **tiny_labels()).loss
    loss.backward()
    missing = [name for name, p in lora_params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"LoRA weights without a gradient: {missing}"

    model.eval()
    with torch.no_grad():
        before = model(**inputs).verb_logits.clone()
    # Adam moves every weight by about lr whatever its gradient's scale
    torch.optim.Adam(lora_params.values(), lr=0.05).step()
    with torch.no_grad():
        after = model(**inputs).verb_logits
    assert (after - before).abs().max() > 1e-5  # the forward is deterministic: without a change it is 0


@pytest.mark.parametrize("target", ["in_proj", "dt_proj", "x_proj", "out_proj"])
def test_merged_adapters_give_the_same_logits(target: str) -> None:
    model = lora_model(target).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        unmerged = model(**inputs)
        base_without_adapter = None
        with model.disable_adapter():
            base_without_adapter = model(**inputs).verb_logits
        merged_model = model.merge_and_unload()
        assert not any("lora_" in name for name, _ in merged_model.named_parameters())
        merged = merged_model(**inputs)
    # the adapter matters (so equal logits are not trivially the base model's) ...
    assert (unmerged.verb_logits - base_without_adapter).abs().max() > 1e-4
    # ... and merging it into the weights gives what the wrapped modules computed
    torch.testing.assert_close(merged.verb_logits, unmerged.verb_logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(merged.noun_logits, unmerged.noun_logits, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("add_bias", [True, False])
def test_channels_first_linear_uses_the_module_forward_when_hooked(add_bias: bool) -> None:
    torch.manual_seed(0)
    linear, x = nn.Linear(6, 5), torch.randn(2, 4, 6)
    expected = (x @ linear.weight.T + (linear.bias if add_bias else 0)).transpose(1, 2)
    plain = _channels_first_linear(linear, x, add_bias=add_bias)
    torch.testing.assert_close(plain, expected)
    assert plain.is_contiguous() and plain.shape == (2, 5, 4)
    # a forward hook (as wrappers and instrumentation use) is seen: the module's own forward runs
    handle = linear.register_forward_hook(lambda module, args, output: output * 2)
    try:
        hooked = _channels_first_linear(linear, x, add_bias=add_bias)
    finally:
        handle.remove()
    bias_term = 0 if add_bias else linear.bias[:, None]
    torch.testing.assert_close(hooked, 2 * (x @ linear.weight.T + linear.bias).transpose(1, 2) - bias_term)
    assert hooked.is_contiguous()


def test_channels_first_linear_uses_a_forward_replaced_on_the_instance() -> None:
    """accelerate's hooks (device placement, offloading) replace ``module.forward`` on the instance."""
    torch.manual_seed(0)
    linear, x = nn.Linear(6, 5), torch.randn(2, 4, 6)
    original = linear.forward
    linear.forward = lambda inputs: original(inputs) + 1.0
    expected = (x @ linear.weight.T + linear.bias + 1.0).transpose(1, 2)
    torch.testing.assert_close(_channels_first_linear(linear, x), expected)
