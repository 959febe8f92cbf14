"""causal_conv1d: causality, equivalence with a plain convolution, dtypes; the mixers' kernel-ready layouts."""

from __future__ import annotations

import pytest
import torch

from mambavl.fusion import SelectiveMixer
from mambavl.ops.causal_conv1d import causal_conv1d
from tiny import tiny_config


def test_output_t_sees_only_inputs_up_to_t():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 3, 10), torch.randn(3, 4), torch.randn(3)
    out = causal_conv1d(x, weight, bias, activation=None)
    x2 = x.clone()
    x2[..., 6:] += 5.0
    torch.testing.assert_close(causal_conv1d(x2, weight, bias, activation=None)[..., :6], out[..., :6])
    # position t = sum_k weight[:, k] * x[t - (K - 1) + k] + bias
    t = 5
    expected = (weight * x[..., t - 3 : t + 1]).sum(-1) + bias
    torch.testing.assert_close(out[..., t], expected)
    torch.testing.assert_close(causal_conv1d(x, weight, bias), torch.nn.functional.silu(out))


def test_low_precision_input_with_float32_filter_runs_in_the_input_dtype():
    # mamba-ssm's CUDA kernel takes a bf16 input with a float32 filter; the fallback used to fail on that mix.
    x = torch.randn(1, 4, 6, dtype=torch.bfloat16)
    out = causal_conv1d(x, torch.randn(4, 4), torch.randn(4))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 4, 6)


def test_bad_shapes_and_activation_are_rejected():
    with pytest.raises(ValueError, match="causal_conv1d expects"):
        causal_conv1d(torch.randn(2, 3, 5), torch.randn(4, 4))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(torch.randn(2, 3, 5), torch.randn(3, 4), activation="relu")


def test_mixer_scan_inputs_are_time_contiguous():
    """u, delta, z, B, C reach the scan with a contiguous time axis: mamba-ssm's kernel copies anything else."""
    mixer = SelectiveMixer(tiny_config())
    s = mixer.scan_inputs(torch.randn(2, 7, 32))
    for name in ("u", "delta", "z", "B", "C"):
        assert getattr(s, name).stride(-1) == 1, name
    assert s.u.shape == s.delta.shape == s.z.shape == (2, 64, 7) and s.B.shape == s.C.shape == (2, 4, 7)
    # The same projections as the nn.Linear layers they hold.
    hidden = torch.randn(2, 7, 32)
    _, z = mixer.in_proj(hidden).chunk(2, dim=-1)
    torch.testing.assert_close(mixer.scan_inputs(hidden).z, z.transpose(1, 2))


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("cuts", [(1,), (2, 3), (1, 2, 3, 4, 5, 6, 7, 8), (5,)])
@pytest.mark.parametrize("activation", ["silu", None])
def test_conv_cut_anywhere_equals_uncut(width, cuts, activation):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
    weight, bias = torch.randn(3, width, generator=g, dtype=torch.float64), torch.randn(3, generator=g).double()
    full, full_state = causal_conv1d(x, weight, bias, activation, return_final_state=True)
    pieces, state = [], None
    for t0, t1 in zip((0, *cuts), (*cuts, 9), strict=True):
        out, state = causal_conv1d(x[..., t0:t1], weight, bias, activation, conv_state=state, return_final_state=True)
        assert state.shape == (2, 3, width - 1)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=-1), full, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(state, full_state)
    torch.testing.assert_close(full_state, x[..., 9 - (width - 1) :])


def test_conv_final_state_of_a_short_sequence_keeps_the_older_state_columns():
    x, weight = torch.arange(1.0, 3.0).view(1, 1, 2), torch.ones(1, 4)
    _, state = causal_conv1d(x, weight, None, None, return_final_state=True)
    assert state.tolist() == [[[0.0, 1.0, 2.0]]]  # zeros before the sequence start
    _, state = causal_conv1d(torch.tensor([[[5.0]]]), weight, None, None, conv_state=state, return_final_state=True)
    assert state.tolist() == [[[1.0, 2.0, 5.0]]]
    with pytest.raises(ValueError, match=r"conv_state.*\(1, 1, 3\)"):
        causal_conv1d(x, weight, conv_state=torch.zeros(1, 1, 2))
