"""torch.export of the recognition model (eval mode, default scan backend, attention masks)."""

from __future__ import annotations

import pytest
import torch

from mambavl import MambaVLForActionRecognition
from tiny import tiny_config, tiny_inputs


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(tiny_config()).eval()
    assert model.config.ssm_backend == "auto"  # the default: the "torch" scan on CPU
    inputs = tiny_inputs()
    assert not bool(inputs["verb_attention_mask"].all()) and not bool(inputs["noun_attention_mask"].all())
    return model, torch.export.export(model, (), kwargs=inputs), inputs


def test_export_matches_eager(exported) -> None:
    model, program, inputs = exported
    with torch.no_grad():
        eager = model(**inputs)
        out = program.module()(**inputs)
    torch.testing.assert_close(out.verb_logits, eager.verb_logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.noun_logits, eager.noun_logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.video_hidden_states, eager.video_hidden_states, atol=1e-6, rtol=1e-5)


def test_exported_program_runs_on_new_inputs_and_keeps_the_mask_check(exported) -> None:
    model, program, _ = exported
    inputs = tiny_inputs(seed=1)  # other values and other padding
    inputs["verb_attention_mask"][0, 3:] = 0
    inputs["verb_input_ids"][0, 3:] = 0
    with torch.no_grad():
        torch.testing.assert_close(program.module()(**inputs).verb_logits, model(**inputs).verb_logits)
        left_padded = dict(inputs, verb_attention_mask=inputs["verb_attention_mask"].flip(1))
        with pytest.raises(RuntimeError, match="left-padded"):
            program.module()(**left_padded)


def test_decomposed_program_matches_eager(exported) -> None:
    """The core-ATen program (functional ops only) also runs with gradients enabled."""
    model, program, inputs = exported
    out = program.run_decompositions().module()(**inputs)
    with torch.no_grad():
        torch.testing.assert_close(out.verb_logits.detach(), model(**inputs).verb_logits, atol=1e-6, rtol=1e-5)


def test_exported_program_saves_and_loads(exported, tmp_path) -> None:
    """``torch.export.save`` / ``load`` round trip: the frozen text encoder's ``set_grad_enabled(False)`` region
    became a ``wrap_with_set_grad_enabled`` node that ``torch.export.load`` refused ("missing val field")."""
    model, program, inputs = exported
    assert model.mambavl.text_encoder.encoder._mambavl_frozen  # the default: a frozen question encoder
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2")
    with torch.no_grad():
        out = loaded.module()(**inputs)
        eager = model(**inputs)
    torch.testing.assert_close(out.verb_logits, eager.verb_logits, atol=1e-6, rtol=1e-5)
