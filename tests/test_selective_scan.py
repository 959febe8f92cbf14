"""Tests of ``mambavl.ops.selective_scan``: the ``torch`` backend against the ``reference`` oracle."""

from __future__ import annotations

import importlib
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mambavl.ops import (
    BACKENDS,
    is_mamba_ssm_available,
    selective_scan,
    selective_scan_reference,
    selective_scan_torch,
)

# the submodule (the package attribute of the same name is the function)
ss_mod = importlib.import_module("mambavl.ops.selective_scan")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(b, d, L, n, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return {
        "u": r(b, d, L),
        "delta": r(b, d, L, scale=0.5),
        "A": (-torch.rand(d, n, generator=g, dtype=torch.float64) * 2 - 0.05).to(dtype),
        "B": r(b, n, L),
        "C": r(b, n, L),
        "D": r(d),
        "z": r(b, d, L),
        "delta_bias": r(d, scale=0.5),
    }


def rel_err(a, b):
    a, b = a.double(), b.double()
    den = b.norm()
    return ((a - b).norm() / den).item() if den > 0 else (a - b).norm().item()


def run_case(scan, inputs, use, delta_softplus, return_last_state, seed=1, requires_grad=NAMES):
    """Forward + backward of a random linear loss; returns the outputs and the input gradients."""
    leaves = {k: v.clone().requires_grad_(k in requires_grad) for k, v in inputs.items()}
    kwargs = {k: leaves[k] for k in ("D", "z", "delta_bias") if k in use}
    res = scan(
        leaves["u"],
        leaves["delta"],
        leaves["A"],
        leaves["B"],
        leaves["C"],
        **kwargs,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )
    outs = list(res) if return_last_state else [res]
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    used = [leaves[k] for k in NAMES if (k in use or k in ("u", "delta", "A", "B", "C")) and k in requires_grad]
    grads = torch.autograd.grad(loss, used, allow_unused=True)
    names = [k for k in NAMES if (k in use or k in ("u", "delta", "A", "B", "C")) and k in requires_grad]
    return outs, dict(zip(names, grads, strict=True))


def assert_match(scan_a, scan_b, inputs, use, sp, rls, tol, **kw):
    outs_a, grads_a = run_case(scan_a, inputs, use, sp, rls, **kw)
    outs_b, grads_b = run_case(scan_b, inputs, use, sp, rls, **kw)
    for i, (a, b) in enumerate(zip(outs_a, outs_b, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert rel_err(a, b) < tol, f"output {i}: rel err {rel_err(a, b):.3g}"
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        assert grads_a[k] is not None and grads_b[k] is not None, k
        assert grads_a[k].shape == grads_b[k].shape, k
        assert rel_err(grads_a[k], grads_b[k]) < tol, f"grad {k}: rel err {rel_err(grads_a[k], grads_b[k]):.3g}"


def torch_scan(chunk_size=None):
    def scan(*args, **kwargs):
        return selective_scan_torch(*args, **kwargs, chunk_size=chunk_size)

    return scan


def reference_scan(*args, **kwargs):
    return selective_scan(*args, **kwargs, backend="reference")


OPTIONS = list(itertools.product([False, True], repeat=5))  # D, z, delta_bias, softplus, last_state


def _use(flags):
    return {k for k, f in zip(("D", "z", "delta_bias"), flags[:3], strict=True) if f}


@pytest.mark.parametrize("flags", OPTIONS, ids=lambda f: "".join("DZBSL"[i] if x else "-" for i, x in enumerate(f)))
@pytest.mark.parametrize(
    ("shape", "chunk"),
    [((2, 3, 37, 4), 8), ((1, 1, 1, 1), None), ((1, 4, 9, 1), 4), ((2, 5, 16, 3), None)],
    ids=["b2d3l37n4-c8", "b1d1l1n1", "b1d4l9n1-c4", "b2d5l16n3"],
)
def test_torch_matches_reference_float64(shape, chunk, flags):
    inputs = make_inputs(*shape)
    assert_match(torch_scan(chunk), reference_scan, inputs, _use(flags), flags[3], flags[4], 1e-10)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    d=st.integers(1, 6),
    L=st.integers(1, 40),
    n=st.integers(1, 5),
    chunk=st.one_of(st.none(), st.integers(1, 17)),
    flags=st.sampled_from(OPTIONS),
    seed=st.integers(0, 10**6),
)
def test_torch_matches_reference_random_shapes(b, d, L, n, chunk, flags, seed):
    inputs = make_inputs(b, d, L, n, seed=seed)
    assert_match(torch_scan(chunk), reference_scan, inputs, _use(flags), flags[3], flags[4], 1e-10)


@pytest.mark.parametrize(
    "flags", [(True, True, True, True, True), (False, False, False, False, False), (True, False, True, True, False)]
)
def test_torch_matches_reference_float32(flags):
    inputs = make_inputs(2, 8, 50, 6, dtype=torch.float32, seed=3)
    assert_match(torch_scan(16), reference_scan, inputs, _use(flags), flags[3], flags[4], 1e-5)


def test_torch_matches_reference_wide_channels():
    # b*d = 600 rows: the layout copies run in blocks of 256 rows, the last one partial
    inputs = make_inputs(2, 300, 20, 3, seed=31)
    assert_match(torch_scan(8), reference_scan, inputs, {"D", "z", "delta_bias"}, True, True, 1e-10)


def test_dispatch_torch_backend_default_chunking_long_sequence():
    # Default chunk size (64 here), l not a multiple of it, through the public entry point.
    inputs = make_inputs(1, 3, 150, 2, seed=5)

    def scan(*args, **kwargs):
        return selective_scan(*args, **kwargs, backend="torch")

    assert_match(scan, reference_scan, inputs, {"D", "z", "delta_bias"}, True, True, 1e-10)


@pytest.mark.parametrize("subset", [("u",), ("A",), ("delta_bias",), ("B", "C"), ("z", "D"), ("delta",)])
def test_partial_requires_grad(subset):
    inputs = make_inputs(2, 3, 20, 4, seed=7)
    use = {"D", "z", "delta_bias"}
    assert_match(torch_scan(6), reference_scan, inputs, use, True, False, 1e-10, requires_grad=subset)


def test_gradient_through_last_state_only():
    inputs = make_inputs(2, 3, 19, 4, seed=11)
    grads = []
    for scan in (torch_scan(5), reference_scan):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        _, last = scan(
            *(leaves[k] for k in NAMES[:5]),
            D=leaves["D"],
            delta_bias=leaves["delta_bias"],
            delta_softplus=True,
            return_last_state=True,
        )
        (last**2).sum().backward()
        grads.append({k: leaves[k].grad for k in ("u", "delta", "A", "B", "delta_bias")})
        # C and D do not reach the state
        for k in ("C", "D"):
            assert leaves[k].grad is None or leaves[k].grad.abs().max() == 0
    for k in grads[0]:
        assert rel_err(grads[0][k], grads[1][k]) < 1e-10, k


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 6, 2), (2, 3, 7, 2)])
def test_inputs_are_not_modified(shape):
    # (b = d = 1 makes permuted views contiguous, so a careless .contiguous() would alias inputs)
    x = make_inputs(*shape, seed=41)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    out, last = selective_scan_torch(
        *(leaves[k] for k in NAMES), delta_softplus=True, return_last_state=True, chunk_size=4
    )
    (out.sum() + last.sum()).backward()
    for k in NAMES:
        assert torch.equal(leaves[k].detach(), x[k]), k


def test_backward_twice_with_retain_graph():
    x = make_inputs(2, 3, 11, 2, seed=43)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    out = selective_scan_torch(*(leaves[k] for k in NAMES), delta_softplus=True, chunk_size=4)
    out.sum().backward(retain_graph=True)
    first = {k: leaves[k].grad.clone() for k in NAMES}
    out.sum().backward()
    for k in NAMES:
        torch.testing.assert_close(leaves[k].grad, 2 * first[k])


def test_no_grad_forward_matches():
    x = make_inputs(2, 3, 30, 2, seed=47)
    with torch.no_grad():
        out, last = selective_scan_torch(
            *(x[k] for k in NAMES), delta_softplus=True, return_last_state=True, chunk_size=7
        )
    ref, ref_last = selective_scan_reference(*(x[k] for k in NAMES), delta_softplus=True, return_last_state=True)
    assert rel_err(out, ref) < 1e-12 and rel_err(last, ref_last) < 1e-12
    assert not out.requires_grad


def test_gradcheck_tiny():
    inputs = make_inputs(2, 2, 5, 3, seed=13)
    leaves = [inputs[k].clone().requires_grad_() for k in NAMES]

    def f(u, delta, A, B, C, D, z, delta_bias):
        out, last = selective_scan_torch(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, return_last_state=True, chunk_size=2
        )
        return out, last

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_reference_matches_closed_form_l1():
    # One step: h = delta * B * u ; y = sum_n C h + D u ; out = y * silu(z).
    x = make_inputs(2, 3, 1, 4, seed=17)
    dt = F.softplus(x["delta"] + x["delta_bias"][:, None])  # (b, d, 1)
    h = dt[..., 0, None] * x["B"][:, None, :, 0] * x["u"][..., 0, None]  # (b, d, n)
    y = (h * x["C"][:, None, :, 0]).sum(-1, keepdim=True) + x["D"][:, None] * x["u"]
    expected = y * F.silu(x["z"])
    out, last = selective_scan_reference(*(x[k] for k in NAMES), delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(last, h)


def test_empty_sequence():
    x = make_inputs(2, 3, 0, 4)
    for backend in ("torch", "reference"):
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        out, last = selective_scan(
            *(leaves[k] for k in NAMES), delta_softplus=True, return_last_state=True, backend=backend
        )
        assert out.shape == (2, 3, 0) and last.shape == (2, 3, 4)
        assert last.abs().max() == 0
        (out.sum() + last.sum()).backward()
        for k in ("A", "D", "delta_bias"):
            assert leaves[k].grad is None or leaves[k].grad.abs().max() == 0


def test_non_contiguous_inputs():
    x = make_inputs(2, 4, 23, 3, seed=19)
    # the same values behind transposed / sliced storage
    u = x["u"].transpose(1, 2).contiguous().transpose(1, 2)
    B = torch.cat([x["B"], x["B"]], dim=1)[:, :3]
    out = selective_scan(
        u, x["delta"], x["A"].t().contiguous().t(), B, x["C"], x["D"], x["z"], x["delta_bias"], True, backend="torch"
    )
    ref = selective_scan(*(x[k] for k in NAMES), True, backend="reference")
    assert rel_err(out, ref) < 1e-12


def test_bfloat16_inputs():
    x = make_inputs(2, 8, 40, 4, dtype=torch.float32, seed=23)
    xb = {k: v.bfloat16() for k, v in x.items()}
    out32 = selective_scan(*(xb[k].float() for k in NAMES), True, backend="reference")
    for backend in ("torch", "reference"):
        out, last = selective_scan(*(xb[k] for k in NAMES), True, True, backend=backend)
        assert out.dtype == torch.bfloat16
        assert last.dtype == torch.float32
        torch.testing.assert_close(out.float(), out32, rtol=2e-2, atol=2e-2)
    # gradients flow back in bf16
    leaves = {k: v.clone().requires_grad_() for k, v in xb.items()}
    selective_scan(*(leaves[k] for k in NAMES), True, backend="torch").float().sum().backward()
    assert all(leaves[k].grad.dtype == torch.bfloat16 for k in NAMES)


def test_mixed_precision_float32_A_with_bf16_activations():
    x = make_inputs(1, 4, 12, 3, dtype=torch.float32, seed=29)
    args = [x[k].bfloat16() if k in ("u", "delta", "B", "C", "z") else x[k] for k in NAMES]
    out, last = selective_scan(*args, True, True, backend="torch")
    _, ref_last = selective_scan(*args, True, True, backend="reference")
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert rel_err(last, ref_last) < 1e-5


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------


def _args(**overrides):
    x = make_inputs(2, 3, 5, 4, dtype=torch.float32)
    x.update(overrides)
    return x


@pytest.mark.parametrize(
    ("override", "exc", "pattern"),
    [
        ({"u": torch.zeros(2, 3)}, ValueError, r"u must be 3-D \(b, d, l\), got shape \(2, 3\)"),
        ({"delta": torch.zeros(2, 3, 6)}, ValueError, r"delta has shape \(2, 3, 6\), expected .*\(2, 3, 5\)"),
        ({"A": torch.zeros(3)}, ValueError, r"A must be 2-D \(d, n\), got shape \(3,\)"),
        ({"A": torch.zeros(4, 4)}, ValueError, r"A has shape \(4, 4\), expected \(d, n\).* = \(3, 4\)"),
        ({"B": torch.zeros(2, 4, 6)}, ValueError, r"B has shape \(2, 4, 6\), expected \(b, n, l\).*\(2, 4, 5\)"),
        ({"B": torch.zeros(2, 5, 4)}, ValueError, r"B has shape \(2, 5, 4\)"),
        ({"C": torch.zeros(1, 4, 5)}, ValueError, r"C has shape \(1, 4, 5\)"),
        ({"D": torch.zeros(3, 1)}, ValueError, r"D has shape \(3, 1\), expected \(d,\) = \(3,\)"),
        ({"z": torch.zeros(2, 3, 4)}, ValueError, r"z has shape \(2, 3, 4\)"),
        ({"delta_bias": torch.zeros(4)}, ValueError, r"delta_bias has shape \(4,\), expected \(d,\) = \(3,\)"),
        ({"u": torch.zeros(2, 3, 5, dtype=torch.int64)}, TypeError, r"u must have a real floating dtype"),
        ({"B": torch.zeros(2, 4, 5, dtype=torch.int32)}, TypeError, r"B must have a real floating dtype"),
        ({"A": torch.zeros(3, 4, dtype=torch.complex64)}, TypeError, r"complex A .*is not supported"),
        ({"B": torch.zeros(2, 2, 4, 5)}, ValueError, r"B has shape \(2, 2, 4, 5\), .*grouped \(b, G, n, l\)"),
        ({"C": torch.zeros(4, 4)}, ValueError, r"C has shape \(4, 4\), .*constant \(d, n\) = \(3, 4\)"),
        ({"u": [[1.0]]}, TypeError, r"u must be a torch.Tensor"),
        ({"C": None}, TypeError, r"C is required"),
        ({"B": torch.zeros(2, 4, 5, device="meta")}, ValueError, r"B is on meta but u is on cpu"),
    ],
)
def test_validation_errors(override, exc, pattern):
    x = _args(**override)
    with pytest.raises(exc, match=pattern):
        selective_scan(*(x[k] for k in NAMES), backend="torch")


def test_unknown_backend():
    x = _args()
    with pytest.raises(ValueError, match=r"unknown backend 'triton'.*'auto', 'cuda', 'torch', 'reference'"):
        selective_scan(*(x[k] for k in NAMES), backend="triton")
    assert set(BACKENDS) == {"auto", "cuda", "torch", "reference"}


# ------------------------------------------------------------------------------------------
# cuda backend fallback
# ------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(ss_mod, "_warned", set())


@pytest.mark.skipif(is_mamba_ssm_available(), reason="mamba-ssm is installed")
def test_cuda_backend_without_mamba_ssm_warns_once_and_falls_back(fresh_warnings):
    x = _args()
    args = [x[k] for k in NAMES]
    expected = selective_scan(*args, True, backend="torch")
    with pytest.warns(RuntimeWarning, match=r"backend 'cuda' needs mamba-ssm.*could not be imported \(.*Error"):
        out = selective_scan(*args, True, backend="cuda")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out2 = selective_scan(*args, True, backend="cuda")  # second call: silent
    torch.testing.assert_close(out2, expected, rtol=0, atol=0)
    assert ss_mod.mamba_ssm_import_error() is not None


def test_cuda_backend_with_cpu_tensors_warns_once(fresh_warnings, monkeypatch):
    calls = []

    def fake_selective_scan_fn(*args, **kwargs):
        calls.append(1)
        raise AssertionError("must not be called with CPU tensors")

    monkeypatch.setattr(ss_mod, "_import_mamba_ssm", lambda: (fake_selective_scan_fn, None))
    x = _args()
    args = [x[k] for k in NAMES]
    expected = selective_scan(*args, backend="torch")
    with pytest.warns(RuntimeWarning, match=r"needs CUDA tensors, got tensors on cpu"):
        out = selective_scan(*args, backend="cuda")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selective_scan(*args, backend="cuda")
        selective_scan(*args, backend="auto")  # auto on CPU: torch, silently
    assert not calls


def test_cuda_backend_float64_falls_back(fresh_warnings, monkeypatch):
    # pretend mamba-ssm imports and the tensors are on CUDA: float64 must still go to torch
    def fake_selective_scan_fn(*args, **kwargs):
        raise AssertionError("mamba-ssm's kernel has no float64")

    monkeypatch.setattr(ss_mod, "_import_mamba_ssm", lambda: (fake_selective_scan_fn, None))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    x = make_inputs(1, 2, 3, 2)
    args = [x[k] for k in NAMES]
    with pytest.warns(RuntimeWarning, match=r"supports float32/float16/bfloat16, got u torch.float64"):
        selective_scan(*args, backend="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selective_scan(*args, backend="auto")


def test_cuda_backend_casts_to_the_kernel_dtypes(fresh_warnings, monkeypatch):
    # A model cast to bfloat16 hands bf16 A, D and delta_bias to the scan; mamba-ssm's C++ checks
    # demand them in float32 and delta/B/C/z in u's dtype. A fake kernel enforces those checks.
    seen = {}

    def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, **kwargs):
        for name, t in (("delta", delta), ("B", B), ("C", C), ("z", z)):
            assert t.dtype == u.dtype, f"{name} {t.dtype} != u {u.dtype}"
        for name, t in (("A", A), ("D", D), ("delta_bias", delta_bias)):
            assert t.dtype == torch.float32, f"{name} must be float32, got {t.dtype}"
        seen["io"] = u.dtype
        return reference_scan(u, delta, A, B, C, D, z, delta_bias, **kwargs)

    monkeypatch.setattr(ss_mod, "_import_mamba_ssm", lambda: (fake_selective_scan_fn, None))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    x = make_inputs(2, 4, 9, 3, dtype=torch.float32, seed=41)
    leaves = {k: v.to(torch.bfloat16).requires_grad_() for k, v in x.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, last = selective_scan(*(leaves[k] for k in NAMES), True, True, backend="auto")
    assert seen["io"] == torch.bfloat16 and out.dtype == torch.bfloat16 and last.shape == (2, 4, 3)
    out.float().sum().backward()
    for k in NAMES:
        assert leaves[k].grad is not None and leaves[k].grad.dtype == torch.bfloat16, k

    # mixed: float32 delta with a bf16 u runs in float32 (delta is not rounded) and returns bf16
    mixed = dict(leaves, delta=x["delta"])
    out = selective_scan(*(mixed[k] for k in NAMES), True, backend="cuda")
    assert seen["io"] == torch.float32 and out.dtype == torch.bfloat16


def test_auto_on_cuda_without_mamba_ssm_logs_once(fresh_warnings, monkeypatch, caplog):
    monkeypatch.setattr(ss_mod, "_import_mamba_ssm", lambda: (None, "ImportError: no selective_scan_cuda"))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    x = _args()
    args = [x[k] for k in NAMES]
    with warnings.catch_warnings(), caplog.at_level("WARNING", logger="mambavl.ops.selective_scan"):
        warnings.simplefilter("error")
        out = selective_scan(*args, True, backend="auto")
        selective_scan(*args, True, backend="auto")
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and "no selective_scan_cuda" in logged[0] and "'torch' scan" in logged[0]
    torch.testing.assert_close(out, selective_scan(*args, True, backend="torch"), rtol=0, atol=0)


def test_resolve_backend_follows_the_dispatch(monkeypatch):
    x = make_inputs(1, 2, 3, 2, dtype=torch.float32)
    args = [x[k] for k in NAMES]
    for backend, expected in (("auto", "torch"), ("cuda", "torch"), ("torch", "torch"), ("reference", "reference")):
        assert ss_mod.resolve_backend(backend, *args) == expected  # CPU tensors
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ss_mod.resolve_backend("fast", *args)
    monkeypatch.setattr(ss_mod, "_import_mamba_ssm", lambda: (lambda *a, **k: None, None))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert ss_mod.resolve_backend("auto", *args) == ss_mod.resolve_backend("cuda", *args) == "cuda"
    assert ss_mod.resolve_backend("auto", *[t.double() for t in args]) == "torch"  # the kernel has no float64
    assert ss_mod.resolve_backend("torch", *args) == "torch"


def test_auto_on_cpu_is_torch_and_silent():
    x = _args()
    args = [x[k] for k in NAMES]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = selective_scan(*args, True, backend="auto")
    torch.testing.assert_close(out, selective_scan(*args, True, backend="torch"), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_torch_backend_matches_reference():
    x = {k: v.cuda() for k, v in make_inputs(2, 8, 70, 4, seed=31).items()}

    def scan(*args, **kwargs):
        return selective_scan(*args, **kwargs, backend="torch")

    assert_match(scan, reference_scan, x, {"D", "z", "delta_bias"}, True, True, 1e-10)


@pytest.mark.skipif(not (torch.cuda.is_available() and is_mamba_ssm_available()), reason="needs mamba-ssm")
def test_cuda_backend_matches_torch():
    x = {k: v.cuda() for k, v in make_inputs(2, 8, 70, 4, dtype=torch.float32, seed=37).items()}

    def scan(*args, **kwargs):
        return selective_scan(*args, **kwargs, backend="cuda")

    def tscan(*args, **kwargs):
        return selective_scan(*args, **kwargs, backend="torch")

    assert_match(scan, tscan, x, {"D", "z", "delta_bias"}, True, True, 1e-4)


# ------------------------------------------------------------------------------------------
# initial state, constant and grouped B / C
# ------------------------------------------------------------------------------------------


def _h0(b, d, n, dtype=torch.float64, seed=7):
    return torch.randn(b, d, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _scan_grads(scan, x, h0, delta_softplus=True, seed=3):
    """Outputs (out, last_state) and the gradients of every input and of ``h0`` under a random linear loss."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    h = h0.clone().requires_grad_(True)
    out, last = scan(
        *(leaves[k] for k in NAMES), delta_softplus=delta_softplus, return_last_state=True, initial_state=h
    )
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in (out, last))
    inputs = [*leaves.values(), h]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)  # (an empty sequence uses no delta)
    grads = [torch.zeros_like(t) if gr is None else gr for gr, t in zip(grads, inputs, strict=True)]
    return (out, last), dict(zip([*leaves, "initial_state"], grads, strict=True))


@pytest.mark.parametrize(("L", "chunk"), [(1, None), (9, 4), (16, 16), (23, 5), (0, None)])
def test_initial_state_torch_matches_reference_with_gradients(L, chunk):
    x = make_inputs(2, 5, L, 3)
    h0 = _h0(2, 5, 3)
    outs_t, grads_t = _scan_grads(lambda *a, **k: selective_scan_torch(*a, **k, chunk_size=chunk), x, h0)
    outs_r, grads_r = _scan_grads(selective_scan_reference, x, h0)
    for a, b in zip(outs_t, outs_r, strict=True):
        assert rel_err(a, b) < 1e-12
    for name in grads_r:
        assert rel_err(grads_t[name], grads_r[name]) < 1e-10, name
    assert grads_r["initial_state"].abs().sum() > 0
    if L == 0:  # nothing scanned: the state passes through
        torch.testing.assert_close(outs_t[1], h0)


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("cuts", [(1,), (5,), (1, 2, 3, 11), (4, 9)])
def test_scan_cut_anywhere_equals_uncut(backend, cuts):
    x = make_inputs(2, 4, 13, 3)
    full, full_last = selective_scan(*(x[k] for k in NAMES), delta_softplus=True, return_last_state=True,
                                     backend=backend)  # fmt: skip
    pieces, state = [], None
    for t0, t1 in zip((0, *cuts), (*cuts, 13), strict=True):
        part = {k: v[..., t0:t1] if v.dim() == 3 else v for k, v in x.items()}
        out, state = selective_scan(*(part[k] for k in NAMES), delta_softplus=True, return_last_state=True,
                                    backend=backend, initial_state=state)  # fmt: skip
        pieces.append(out)
    assert rel_err(torch.cat(pieces, dim=-1), full) < 1e-12
    assert rel_err(state, full_last) < 1e-12


def test_initial_state_gradcheck_float64():
    x = make_inputs(1, 3, 6, 2)
    h0 = _h0(1, 3, 2)

    def f(u, delta, A, B, C, D, z, delta_bias, h):
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, True, True, 4, h)

    args = [x[k].clone().requires_grad_(True) for k in NAMES] + [h0.clone().requires_grad_(True)]
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


def test_initial_state_contribution_path_matches_reference():
    """The "cuda" backend's composition (zero-state scan + h_0's contribution), run here with the torch scan."""
    x = make_inputs(2, 4, 11, 3)
    h0 = _h0(2, 4, 3)

    def composed(*args, delta_softplus, return_last_state, initial_state):
        return ss_mod._scan_from_initial_state(
            selective_scan_torch, *args, delta_softplus, return_last_state, initial_state
        )

    outs_c, grads_c = _scan_grads(composed, x, h0)
    outs_r, grads_r = _scan_grads(selective_scan_reference, x, h0)
    for a, b in zip(outs_c, outs_r, strict=True):
        assert rel_err(a, b) < 1e-12
    for name in grads_r:
        assert rel_err(grads_c[name], grads_r[name]) < 1e-10, name
    # the contribution alone is exp(A * cumsum(dt)) h_0 read out by C; blocks of time give the same result
    dt = F.softplus(x["delta"] + x["delta_bias"][:, None])
    y_a, h_a = ss_mod.initial_state_contribution(dt, x["A"], x["C"], h0)
    y_b, h_b = ss_mod.initial_state_contribution(dt, x["A"], x["C"], h0, block_elements=1)
    torch.testing.assert_close(y_a, y_b)
    torch.testing.assert_close(h_a, h_b)
    zero = dict(x, u=torch.zeros_like(x["u"]), D=None, z=None)
    y_ref = selective_scan_reference(*(zero[k] for k in NAMES), delta_softplus=True, initial_state=h0)
    assert rel_err(y_a, y_ref) < 1e-12


def test_initial_state_on_cuda_backend_falls_back_exactly(fresh_warnings):
    x = make_inputs(2, 4, 7, 3)
    h0 = _h0(2, 4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = selective_scan(*(x[k] for k in NAMES), delta_softplus=True, backend="cuda", initial_state=h0)
    ref = selective_scan_reference(*(x[k] for k in NAMES), delta_softplus=True, initial_state=h0)
    assert rel_err(out, ref) < 1e-12


def _explicit_scan(u, delta, A, B_full, C_full, D, z, delta_bias):
    """mamba-ssm's selective_scan_ref with per-channel B, C given as (b, d, n, l)."""
    dt = F.softplus(delta + delta_bias[:, None])
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(dt[..., t, None] * A) * h + dt[..., t, None] * B_full[..., t] * u[..., t, None]
        ys.append((h * C_full[..., t]).sum(-1))
    return (torch.stack(ys, -1) + D[:, None] * u) * F.silu(z)


@pytest.mark.parametrize("layout", ["constant", "grouped1", "grouped2", "grouped4", "mixed"])
def test_constant_and_grouped_B_C(layout):
    b, d, L, n = 2, 4, 9, 3
    x = make_inputs(b, d, L, n)
    g = torch.Generator().manual_seed(5)
    if layout == "constant":
        x["B"], x["C"] = torch.randn(d, n, generator=g, dtype=torch.float64), torch.randn(d, n, generator=g).double()
        full = [X[None, :, :, None].expand(b, d, n, L) for X in (x["B"], x["C"])]
    elif layout == "mixed":  # grouped B (G=2), constant C
        x["B"] = torch.randn(b, 2, n, L, generator=g, dtype=torch.float64)
        x["C"] = torch.randn(d, n, generator=g, dtype=torch.float64)
        full = [x["B"].repeat_interleave(2, dim=1), x["C"][None, :, :, None].expand(b, d, n, L)]
    else:
        G = int(layout[-1])
        x["B"], x["C"] = (torch.randn(b, G, n, L, generator=g, dtype=torch.float64) for _ in range(2))
        full = [X.repeat_interleave(d // G, dim=1) for X in (x["B"], x["C"])]
    expected = _explicit_scan(x["u"], x["delta"], x["A"], *full, x["D"], x["z"], x["delta_bias"])
    h0 = _h0(b, d, n)
    outs_t, grads_t = _scan_grads(lambda *a, **k: selective_scan(*a, **k, backend="torch"), x, h0)
    outs_r, grads_r = _scan_grads(selective_scan_reference, x, h0)
    zero_state = selective_scan(*(x[k] for k in NAMES), delta_softplus=True, backend="torch")
    assert rel_err(zero_state, expected) < 1e-12
    # the "cuda" backend's composition (zero-state scan + h_0's contribution) handles these layouts too
    composed = ss_mod._scan_from_initial_state(selective_scan_torch, *(x[k] for k in NAMES), True, True, h0)
    for a, r in zip(composed, outs_r, strict=True):
        assert rel_err(a, r) < 1e-12
    for a, r in zip(outs_t, outs_r, strict=True):
        assert rel_err(a, r) < 1e-12
    for name in grads_r:
        assert grads_t[name].shape == x.get(name, h0).shape
        assert rel_err(grads_t[name], grads_r[name]) < 1e-10, name
