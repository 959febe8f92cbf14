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
