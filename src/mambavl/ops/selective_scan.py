"""The selective scan of Mamba (S6), with interchangeable backends.

One signature everywhere, with the tensor layouts of mamba-ssm's
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``::

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto") -> out | (out, last_state)

    u, delta, z : (b, d, l)      A : (d, n)      B, C : (b, n, l)      D, delta_bias : (d,)
    out : (b, d, l) in u.dtype   last_state : (b, d, n) in the compute dtype
    B, C may also be constant (d, n) or grouped (b, G, n, l), as in mamba-ssm (complex A: not supported)
    initial_state=None : optional (b, d, n) state h_0 to continue from (keyword, after ``backend``)

Semantics (exactly mamba-ssm's)::

    delta  = delta + delta_bias[:, None]            (if delta_bias is given)
    delta  = softplus(delta)                         (if delta_softplus)
    h_t    = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t          h_0 = initial_state or 0,  h_t: (b, d, n)
    y_t    = sum_n C_t * h_t + D * u_t
    out    = y * silu(z)                             (if z is given)

The compute dtype is the promotion of the floating inputs, with float16 / bfloat16 raised to
float32 (so bf16 inputs are scanned in float32 and ``last_state`` is float32, as in mamba-ssm).

Backends
--------
``"reference"``
    The recurrence above written as a plain Python loop over time. It is the oracle of the
    tests; gradients come from autograd through the loop (which keeps every step's
    intermediates, so its backward memory is O(b*d*l*n)).
``"torch"``
    Fast pure PyTorch (any device), with a hand-written backward; see "Algorithm" below.
``"cuda"``
    mamba-ssm's fused kernel, imported lazily. If mamba-ssm (or its ``selective_scan_cuda``
    extension) cannot be imported, or the tensors are not on a CUDA device, it warns once
    (naming the reason) and runs ``"torch"``; so does a float64 input, which the kernel lacks.
    Inputs are cast to the dtypes the kernel checks (``A``, ``D``, ``delta_bias`` float32; the
    rest in one input dtype). mamba-ssm ignores the gradient of ``last_state``.
``"auto"``
    ``"cuda"`` when the tensors are on CUDA and mamba-ssm imports, otherwise ``"torch"`` (on CUDA
    without mamba-ssm it logs that once, at warning level, and raises no Python warning).

Algorithm of the ``"torch"`` backend
------------------------------------
The sequential recurrence is cheap if every time step is *one* in-place op on a contiguous
state, and the expensive elementwise work (``exp``, products with ``B``/``C``) is done in
vectorized passes over cache-sized blocks. So:

Layouts. The ``(b, k, l)`` inputs are copied once to time-major ``(l, b, k)`` (2-D transposes
of row blocks, O(b*d*l), like the inputs). Chunk tensors are ``(T, b, n, d)``: ``d`` innermost so
every broadcast is a long vectorized loop, and the state of one step, ``H[i]: (b, n, d)``, is a
contiguous slice. ``x = T*b`` below.

Forward. Time is cut into chunks of ``T`` steps (``T`` such that one chunk buffer is about
3 MiB, clamped to [4, 64]: 16 steps at b=2, d=1536, n=16). For each chunk, into two buffers
allocated once per call and reused:

1. ``dA = exp2(dt[:, :, None, :] * (A^T log2 e)) = exp(dt * A^T)``   (T, b, n, d), in place
   (``torch.exp2`` is 4x faster than ``torch.exp`` here on the benchmark's CPU; see ``_exp2_exponent``)
2. ``H[1:] = (dt*u)[:, :, None, :] * B[..., None]``; ``H[0]`` = state entering the chunk
3. the recurrence, ``H[i+1] += dA[i] * H[i]``: one ``addcmul_`` per time step;
4. ``y = C^T H`` as one batched matmul ``(x, 1, n) @ (x, n, d)``;
5. ``H[T]`` is the state leaving the chunk: kept in ``states[k]`` and moved to ``H[0]``.

Then ``(y + D*u) * silu(z)`` runs once on whole ``(b, d, l)`` tensors. No ``(b, d, l, n)``
tensor is ever allocated.

Saved for backward: ``u``, the time-major ``dt`` (after bias and softplus), ``B``, ``C``,
``A``, ``D``, ``z``, the chunk-boundary states ``(ceil(l/T), b, n, d)`` (``1/T`` of the state
history) and, only when ``z`` needs a gradient, the pre-gate output ``(b, d, l)``. Without any
input needing a gradient nothing is saved and only the last state is kept.

Backward. A reverse scan over the chunks, last to first. Each chunk's forward is recomputed
from its saved entering state (steps 1-3: ``dA`` and all states ``H`` of the chunk); with
``dy`` the gradient reaching the scan output (through the gate; ``D`` and ``z`` get theirs
from the epilogue):

* the adjoint states ``G_t = dL/dh_t = C_t dy_t + dA_{t+1} G_{t+1}``: ``G = C[..., None] *
  dy[:, :, None, :]``, then one ``addcmul_`` per step backwards; the carry ``dA_{t0} G_{t0}``
  goes to the previous chunk (it starts as the gradient of ``last_state``);
* ``dC_t = H_t dy_t``, ``dB_t = G_t (dt u)_t``, ``s_t = B_t^T G_t``: batched matmuls;
* ``P = G * H_prev * dA`` (in place in the ``dA`` buffer): the gradient of ``dt * A``; then
  ``d(dt) = s*u + sum_n P*A``, ``du = s*dt + D*dy``, ``dA += sum_{t,b} P*dt``.

An ``initial_state`` is ``H[0]`` of the first chunk (forward and recomputation), and the carry left
after the first chunk, ``dA_0 G_0``, is its gradient.

Finally ``d(delta) = d(dt) * sigmoid(delta + delta_bias)`` for softplus, computed as
``1 - exp(-dt)`` from the saved ``dt``, and ``d(delta_bias)`` sums it over ``(b, l)``.

Cost: about five passes over ``b*d*l*n`` elements forward and fourteen
backward (the forward recomputed, ``G``, ``P`` and its two reductions), all on chunks that stay
in cache, plus O(b*d*l) transposes; so forward+backward is about 3.5x the forward.

Memory: O(b*d*l) tensors the size of the inputs, two chunk buffers ``2*T*b*d*n`` and the
boundary states ``(l/T)*b*d*n`` in the forward; five chunk buffers in the backward. For
comparison the autograd of a naive scan keeps several ``b*d*l*n`` tensors.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings

import torch
import torch.nn.functional as F

__all__ = [
    "BACKENDS",
    "initial_state_contribution",
    "is_mamba_ssm_available",
    "mamba_ssm_import_error",
    "resolve_backend",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_torch",
]

#: Names accepted by ``selective_scan(..., backend=...)``.
BACKENDS: tuple[str, ...] = ("auto", "cuda", "torch", "reference")

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what mamba-ssm's kernel takes
_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
_TARGET_CHUNK_BYTES = 3 << 20  # ~3 MiB per (T, b, n, d) chunk buffer
_MIN_CHUNK, _MAX_CHUNK = 4, 64
_LOG2_E = 1.0 / math.log(2.0)
_TRANSPOSE_ROWS = 256  # rows per block of the (b, k, l) -> (l, b, k) copies


# --------------------------------------------------------------------------------------------
# mamba-ssm availability
# --------------------------------------------------------------------------------------------


@functools.cache
def _import_mamba_ssm():
    """Return ``(selective_scan_fn, None)`` or ``(None, reason)``; tried once per process."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, or OSError / RuntimeError from a broken extension
        return None, f"{type(exc).__name__}: {exc}"
    return selective_scan_fn, None


def is_mamba_ssm_available() -> bool:
    """Whether mamba-ssm's fused selective scan (and its CUDA extension) can be imported (cached)."""
    return _import_mamba_ssm()[0] is not None


def mamba_ssm_import_error() -> str | None:
    """Why mamba-ssm could not be imported, or ``None`` if it can."""
    return _import_mamba_ssm()[1]


logger = logging.getLogger(__name__)

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_tensor(name, t, shape, expected, optional=False):
    if t is None:
        if optional:
            return
        raise TypeError(f"selective_scan: {name} is required, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"selective_scan: {name} must have a real floating dtype, got {t.dtype} (shape {tuple(t.shape)})"
        )
    if tuple(t.shape) != shape:
        raise ValueError(f"selective_scan: {name} has shape {tuple(t.shape)}, expected {expected} = {shape}")


def _check_bc(name, t, b, d, n, L):
    """``B`` / ``C``: variable ``(b, n, l)``, constant ``(d, n)``, or grouped ``(b, G, n, l)`` with ``G | d``."""
    _check_tensor(name, t, tuple(t.shape) if isinstance(t, torch.Tensor) else None, "")
    shape = tuple(t.shape)
    if t.dim() == 3 and shape == (b, n, L):
        return
    if t.dim() == 2 and shape == (d, n):
        return
    if t.dim() == 4 and shape[0] == b and shape[2:] == (n, L) and shape[1] >= 1 and d % shape[1] == 0:
        return
    raise ValueError(
        f"selective_scan: {name} has shape {shape}, expected (b, n, l) = {(b, n, L)}, constant (d, n) = {(d, n)} "
        f"or grouped (b, G, n, l) = {(b, 'G', n, L)} with G dividing d={d} (b, l from u and n from A)"
    )


def _validate(u, delta, A, B, C, D, z, delta_bias, initial_state=None):
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z)):
        if isinstance(t, torch.Tensor) and t.is_complex():
            raise TypeError(
                f"selective_scan: complex {name} ({t.dtype}) is not supported; mambavl's scans are real-valued "
                "(mamba-ssm's complex A variant is not implemented)"
            )
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"selective_scan: u must be a torch.Tensor, got {type(u).__name__}")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be 3-D (b, d, l), got shape {tuple(u.shape)}")
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"selective_scan: A must be a torch.Tensor, got {type(A).__name__}")
    if A.dim() != 2:
        raise ValueError(f"selective_scan: A must be 2-D (d, n), got shape {tuple(A.shape)}")
    b, d, L = u.shape
    n = A.shape[1]
    _check_tensor("u", u, (b, d, L), "(b, d, l)")
    _check_tensor("delta", delta, (b, d, L), "(b, d, l) like u")
    _check_tensor("A", A, (d, n), "(d, n) with d from u")
    _check_bc("B", B, b, d, n, L)
    _check_bc("C", C, b, d, n, L)
    _check_tensor("D", D, (d,), "(d,)", optional=True)
    _check_tensor("z", z, (b, d, L), "(b, d, l) like u", optional=True)
    _check_tensor("delta_bias", delta_bias, (d,), "(d,)", optional=True)
    _check_tensor("initial_state", initial_state, (b, d, n), "(b, d, n)", optional=True)
    device = u.device
    others = (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("delta_bias", delta_bias))
    for name, t in (*others, ("initial_state", initial_state)):
        if t is not None and t.device != device:
            raise ValueError(
                f"selective_scan: {name} is on {t.device} but u is on {device}; all tensors must be on one device"
            )


def _promoted_dtype(*tensors) -> torch.dtype:
    """The type promotion of the given tensors' dtypes (``None`` entries skipped)."""
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors if t is not None))


def _compute_dtype(*tensors) -> torch.dtype:
    """The dtype the scan computes in: the promotion of its inputs, with float16 / bfloat16 raised to float32."""
    dtype = _promoted_dtype(*tensors)
    return torch.float32 if dtype in _LOW_PRECISION else dtype


# --------------------------------------------------------------------------------------------
# reference backend
# --------------------------------------------------------------------------------------------


def _bc_4d(X, d):
    """``B`` / ``C`` as a 4-D tensor broadcastable to ``(b, d, n, l)``: ``(b, 1, n, l)`` for variable, ``(1, d, n, 1)``
    for constant, ``(b, d, n, l)`` for grouped (each group's rows repeated over its ``d / G`` channels)."""
    if X.dim() == 3:
        return X[:, None]
    if X.dim() == 2:
        return X[None, :, :, None]
    return X.repeat_interleave(d // X.shape[1], dim=1)


def _bc_step(X4, t):
    """Step ``t`` of a :func:`_bc_4d` tensor: ``(b|1, d|1, n)``."""
    return X4[..., t if X4.shape[-1] > 1 else 0]


def _scan_delta(delta, delta_bias, delta_softplus, dtype):
    """``delta (b, d, l)`` in ``dtype`` as the recurrence uses it: ``delta_bias`` added, softplus applied."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def selective_scan_reference(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    initial_state=None,
):
    """The recurrence written out step by step (the oracle of the tests). No validation.

    Takes every ``B`` / ``C`` layout of :func:`selective_scan` and an optional ``initial_state (b, d, n)``
    (``h_0``; zeros when ``None``), which gets its gradient from autograd.
    """
    dtype, out_dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state), u.dtype
    u, A, B, C = (t.to(dtype) for t in (u, A, B, C))
    delta = _scan_delta(delta, delta_bias, delta_softplus, dtype)
    batch, dim, length = u.shape
    B4, C4 = _bc_4d(B, dim), _bc_4d(C, dim)
    h = u.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.to(dtype)  # (b, d, n)
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]  # (b, d, 1)
        h = torch.exp(dt * A) * h + dt * _bc_step(B4, t) * u[:, :, t, None]
        ys.append((h * _bc_step(C4, t)).sum(-1))  # (b, d)
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(out_dtype)
    return (y, h) if return_last_state else y


def initial_state_contribution(delta, A, C, initial_state, block_elements=1 << 24):
    """What a non-zero ``h_0`` adds to a scan that started from zero: the scan is linear in ``h_0``, so

    ``h_t = h_t|_{h_0=0} + exp(A * cumsum(Δ)_t) * h_0``  and
    ``y_t = y_t|_{h_0=0} + sum_n C_t * exp(A * cumsum(Δ)_t) * h_0``

    (``cumsum`` inclusive over time). Computed in blocks of time steps (about ``block_elements`` elements of
    ``(b, d, n, l)`` at a time), differentiable by autograd in ``delta``, ``A``, ``C`` and ``initial_state``.

    Args:
        delta: ``(b, d, l)`` step sizes **after** ``delta_bias`` and softplus.
        A: ``(d, n)``.
        C: ``(b, n, l)``, ``(d, n)`` or ``(b, G, n, l)`` (as in :func:`selective_scan`).
        initial_state: ``(b, d, n)``.

    Returns:
        ``(y0, h0_last)``: ``y0 (b, d, l)`` to add to the scan's ``y`` (before ``D`` and the gate), and
        ``h0_last (b, d, n)`` = ``exp(A * sum(Δ)) * h_0`` to add to its last state. In ``initial_state``'s dtype
        promoted with the others'.
    """
    dtype = _promoted_dtype(delta, A, C, initial_state)
    delta, A, h0 = delta.to(dtype), A.to(dtype), initial_state.to(dtype)
    b, d, L = delta.shape
    n = A.shape[1]
    C4 = _bc_4d(C.to(dtype), d)
    cum = delta.cumsum(dim=-1)  # (b, d, l)
    step = max(1, block_elements // max(b * d * n, 1))
    ys = []
    for t0 in range(0, L, step):
        t1 = min(t0 + step, L)
        decay = torch.exp(A[None, :, :, None] * cum[:, :, None, t0:t1])  # (b, d, n, m)
        c = C4 if C4.shape[-1] == 1 else C4[..., t0:t1]
        ys.append((c * decay * h0[..., None]).sum(dim=2))  # (b, d, m)
    y0 = torch.cat(ys, dim=-1) if ys else delta.new_zeros(b, d, 0)
    total = cum[:, :, -1:] if L else delta.new_zeros(b, d, 1)
    return y0, torch.exp(A * total) * h0


def _scan_from_initial_state(scan_zero, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                             initial_state):  # fmt: skip
    """Any zero-state scan ``scan_zero(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True)`` continued from
    ``initial_state``: the zero-state result plus :func:`initial_state_contribution` (gated by ``silu(z)``).

    This is how the ``"cuda"`` backend is exact with an initial state (mamba-ssm's ``selective_scan_fn`` has
    none); the CPU tests run it with the ``"torch"`` backend as ``scan_zero``.
    """
    out, last = scan_zero(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True)
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    y0, h0_last = initial_state_contribution(
        _scan_delta(delta, delta_bias, delta_softplus, dtype), A, C, initial_state
    )
    if z is not None:
        y0 = y0 * F.silu(z.to(dtype))
    out = (out.to(dtype) + y0).to(u.dtype)
    last = last + h0_last.to(last.dtype)
    return (out, last) if return_last_state else out


# --------------------------------------------------------------------------------------------
# torch backend
# --------------------------------------------------------------------------------------------


def _chunk_size(b: int, d: int, n: int, itemsize: int) -> int:
    per_step = max(b * d * n * itemsize, 1)
    return int(min(_MAX_CHUNK, max(_MIN_CHUNK, _TARGET_CHUNK_BYTES // per_step)))


def _time_major_dt(delta, delta_bias, delta_softplus):
    """``softplus(delta + delta_bias)`` (as requested) in time-major ``(l, b, d)`` layout."""
    dt = _time_major(delta)  # transposing copies are kept apart from arithmetic (faster)
    if delta_bias is not None:
        dt.add_(delta_bias)
    if delta_softplus:
        if torch.compiler.is_compiling():  # torch.export / compile cannot trace an `out=` that aliases its input
            dt = F.softplus(dt)
        else:  # in place (F.softplus has no in-place form): one fresh (l, b, d) block fewer
            torch.ops.aten.softplus.out(dt, 1, 20, out=dt)
    return dt


def _time_major(t):
    """(b, k, l) -> a new contiguous (l, b, k) (always a copy: callers may modify it in place).

    Done as 2-D transposes ``(rows, l) -> (l, rows)`` of blocks of ``_TRANSPOSE_ROWS`` rows of
    ``(b*k, l)``. On CPU, one whole 2-D transposing copy runs on one thread; the blocks are 2x
    faster on two threads, and also faster than a 3-D permuted copy (measured at the size of
    ``benchmarks/scan.py``).
    """
    b, k, L = t.shape
    out = t.new_empty(L, b, k)
    src, dst = t.reshape(b * k, L), out.view(L, b * k)
    for r in range(0, b * k, _TRANSPOSE_ROWS):
        dst[:, r : r + _TRANSPOSE_ROWS].copy_(src[r : r + _TRANSPOSE_ROWS].t())
    return out


def _batch_major(t, out=None):
    """(l, b, k) -> contiguous (b, k, l), new or into ``out``.

    One whole 2-D transpose: in this direction, blocks of either dimension and a 3-D permuted
    copy were all slower on one thread (the permuted copy 4-9x).
    """
    L, b, k = t.shape
    out = t.new_empty(b, k, L) if out is None else out.view(b, k, L)
    out.view(b * k, L).copy_(t.reshape(L, b * k).t())
    return out


def _exp2_exponent(A):
    """``A^T * log2(e)`` as a contiguous ``(n, d)``: ``exp(dt * A) = exp2(dt * A log2(e))``.

    ``torch.exp2`` can be several times faster than ``torch.exp`` on CPU (4x in this scan on the
    AMD machine of ``benchmarks/scan.py``), with the same accuracy up to the rounding of the
    product (relative ``|dt A| * eps``).
    """
    return A.mul(_LOG2_E).t().contiguous()


def _chunk_forward(dt_tm, dtu_tm, B_tm, At2, t0, t1, dA_buf, H_buf, dA_steps, H_steps):
    """Fill ``dA_buf[:m]`` and the states ``H_buf[1:m+1]`` of steps ``t0:t1``, from ``H_buf[0]``.

    ``At2`` is :func:`_exp2_exponent` of ``A``, so ``dA = exp2(dt * At2) = exp(dt * A^T)``.

    Chunk tensors are ``(m, b, n, d)`` (d innermost, so every broadcast is a vectorized loop over
    d and every step's state ``H[i]`` is a contiguous ``(b, n, d)`` slice). ``dA_steps`` /
    ``H_steps`` are the buffers' per-step views, made once per call (indexing in the loop costs).
    """
    m = t1 - t0
    dA = dA_buf[:m]
    torch.mul(dt_tm[t0:t1, :, None, :], At2, out=dA)
    dA.exp2_()
    H = H_buf[: m + 1]
    torch.mul(dtu_tm[t0:t1, :, None, :], B_tm[t0:t1, :, :, None], out=H[1:])
    for i in range(m):
        H_steps[i + 1].addcmul_(dA_steps[i], H_steps[i])
    return dA, H


def _load_h0(H0, h0):
    """Set the ``(b, n, d)`` state entering the scan, ``H0``, to ``h0 (b, d, n)`` (zeros when ``None``)."""
    if h0 is None:
        H0.zero_()
    else:
        H0.copy_(h0.transpose(1, 2))


class _SelectiveScanFn(torch.autograd.Function):
    """The ``"torch"`` backend: chunked forward, reverse-scan backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, chunk):
        b, d, L = u.shape
        n = A.shape[1]
        nchunks = -(-L // chunk)
        At2 = _exp2_exponent(A)  # (n, d)
        dt_tm = _time_major_dt(delta, delta_bias, delta_softplus)  # (l, b, d)
        dtu_tm = _time_major(u).mul_(dt_tm)
        B_tm, C_tm = _time_major(B), _time_major(C)  # (l, b, n)
        y_tm = u.new_empty(L, b, d)
        # the state leaving each chunk (only the last one when no backward can follow)
        need_backward = any(ctx.needs_input_grad)
        states = u.new_empty(nchunks if need_backward else min(nchunks, 1), b, n, d)
        T = min(chunk, L)
        dA_buf = u.new_empty(T, b, n, d)
        H_buf = u.new_empty(T + 1, b, n, d)
        _load_h0(H_buf[0], h0)
        steps = dA_buf.unbind(0), H_buf.unbind(0)
        for k in range(nchunks):
            t0, t1 = k * chunk, min((k + 1) * chunk, L)
            m = t1 - t0
            _, H = _chunk_forward(dt_tm, dtu_tm, B_tm, At2, t0, t1, dA_buf, H_buf, *steps)
            # y_t = C_t^T h_t : (x, 1, n) @ (x, n, d)
            torch.bmm(C_tm[t0:t1].view(m * b, 1, n), H[1:].view(m * b, n, d), out=y_tm[t0:t1].view(m * b, 1, d))
            states[k if need_backward else 0].copy_(H[m])
            H_buf[0].copy_(H[m])
        del dA_buf, H_buf, steps
        if not need_backward:
            del dt_tm, B_tm, C_tm  # lower the peak of inference calls
        # Fresh (l, b, d)-sized blocks cost page faults on every call (the allocator hands large
        # blocks back to the OS), so the epilogue reuses the two blocks the loop is done with.
        y = _batch_major(y_tm, out=dtu_tm)
        del dtu_tm
        if D is not None:
            y.addcmul_(u, D[:, None])
        save_y = z is not None and ctx.needs_input_grad[6]
        if z is None:
            out = y
        else:
            gate = torch.ops.aten.silu.out(z, out=y_tm.view(b, d, L))
            out = y * gate if save_y else y.mul_(gate)
            del gate
        del y_tm
        if nchunks:
            last_state = states[-1].transpose(1, 2).contiguous()
        else:
            last_state = u.new_zeros(b, d, n) if h0 is None else h0.clone()
        if need_backward:
            ctx.save_for_backward(u, dt_tm, A, B_tm, C_tm, D, z, states, y if save_y else None, h0)
        ctx.delta_softplus = delta_softplus
        ctx.chunk = chunk
        ctx.set_materialize_grads(False)
        return out, last_state

    @staticmethod
    def backward(ctx, dout, dlast):
        u, dt_tm, A, B_tm, C_tm, D, z, states, y, h0 = ctx.saved_tensors
        need = ctx.needs_input_grad
        b, d, L = u.shape
        n = A.shape[1]
        chunk = ctx.chunk
        nchunks = states.shape[0]
        du = ddelta = dA = dB = dC = dD = dz = ddelta_bias = dh0 = None

        # ---- epilogue: out = (y_ssm + D*u) * silu(z); everything time-major (l, b, d) ------
        u_tm = _time_major(u)
        if dout is None:
            dy_tm = u.new_zeros(L, b, d)
        elif z is not None:
            sz = torch.sigmoid(z)
            if need[6]:  # dz = dout * y * silu'(z),  silu'(z) = sz * (1 + z * (1 - sz))
                dz = torch.sub(1, sz).mul_(z).add_(1).mul_(sz).mul_(y).mul_(dout)
            dy_tm = _time_major(sz.mul_(z).mul_(dout))  # dout * silu(z)
            del sz
        else:
            dy_tm = _time_major(dout)
        if D is not None and need[5]:
            dD = (dy_tm * u_tm).sum((0, 1))

        # ---- reverse scan over chunks -----------------------------------------------------
        At, At2 = A.t().contiguous(), _exp2_exponent(A)
        dtu_tm = dt_tm * u_tm
        ddt_tm = u.new_empty(L, b, d)
        du_tm = u.new_empty(L, b, d)
        dB_tm = u.new_empty(L, b, n)
        dC_tm = u.new_empty(L, b, n)
        carry = u.new_zeros(b, n, d)  # gradient flowing into the state leaving the current chunk
        if dlast is not None:
            carry.copy_(dlast.transpose(1, 2))
        T = min(chunk, L)
        dA_buf = u.new_empty(T, b, n, d)
        H_buf = u.new_empty(T + 1, b, n, d)
        G_buf = u.new_empty(T, b, n, d)
        tmp = u.new_empty(T, b, n, d)
        s_buf = u.new_empty(T, b, d)
        dA_acc = u.new_zeros(T, b, n, d) if need[2] else None
        steps = dA_buf.unbind(0), H_buf.unbind(0)
        G_steps = G_buf.unbind(0)
        dA_steps = steps[0]
        for k in reversed(range(nchunks)):
            t0, t1 = k * chunk, min((k + 1) * chunk, L)
            m = t1 - t0
            x = m * b
            if k == 0:
                _load_h0(H_buf[0], h0)
            else:
                H_buf[0].copy_(states[k - 1])
            dA_k, H = _chunk_forward(dt_tm, dtu_tm, B_tm, At2, t0, t1, dA_buf, H_buf, *steps)
            # adjoint states G_t = dL/dh_t = C_t dy_t + dA_{t+1} G_{t+1}
            G = G_buf[:m]
            torch.mul(C_tm[t0:t1, :, :, None], dy_tm[t0:t1, :, None, :], out=G)
            G_steps[m - 1].add_(carry)
            for i in range(m - 2, -1, -1):
                G_steps[i].addcmul_(dA_steps[i + 1], G_steps[i + 1])
            torch.mul(dA_steps[0], G_steps[0], out=carry)
            Gv = G.view(x, n, d)
            # dC_t = H_t dy_t ; dB_t = G_t (dt u)_t ; s_t = B_t^T G_t      (batched matmuls)
            # (written as row-vector @ transposed matrix: several times faster on CPU than (n,d)@(d,1))
            torch.bmm(dy_tm[t0:t1].view(x, 1, d), H[1:].view(x, n, d).mT, out=dC_tm[t0:t1].view(x, 1, n))
            torch.bmm(dtu_tm[t0:t1].view(x, 1, d), Gv.mT, out=dB_tm[t0:t1].view(x, 1, n))
            s = torch.bmm(B_tm[t0:t1].view(x, 1, n), Gv, out=s_buf[:m].view(x, 1, d)).view(m, b, d)
            # P = G * H_prev * dA = dL/d(dt * A), in place in the dA buffer
            P = dA_k.mul_(G).mul_(H[:-1])
            torch.sum(torch.mul(P, At, out=tmp[:m]), dim=2, out=ddt_tm[t0:t1])
            ddt_tm[t0:t1].addcmul_(s, u_tm[t0:t1])
            torch.mul(s, dt_tm[t0:t1], out=du_tm[t0:t1])
            if dA_acc is not None:
                dA_acc[:m].addcmul_(P, dt_tm[t0:t1, :, None, :])
        del dA_buf, H_buf, G_buf, tmp, s_buf, steps, G_steps, dA_steps
        if need[8]:  # after the first chunk, `carry` is the gradient of the state entering the scan, h_0
            dh0 = carry.transpose(1, 2).contiguous()

        # (l, b, d)-sized results go into blocks the loop is done with (fresh ones cost page faults)
        if need[0]:
            if D is not None:
                du_tm.addcmul_(dy_tm, D)
            du = _batch_major(du_tm, out=u_tm)
        del du_tm, u_tm
        if need[1] or need[7]:
            if ctx.delta_softplus:  # d softplus(p)/dp = sigmoid(p) = 1 - exp(-softplus(p))
                ddt_tm.mul_(torch.neg(dt_tm, out=dy_tm).expm1_().neg_())
            if need[7]:
                ddelta_bias = ddt_tm.sum((0, 1))
            if need[1]:
                ddelta = _batch_major(ddt_tm, out=dtu_tm)
        del ddt_tm, dy_tm, dtu_tm
        if dA_acc is not None:
            dA = dA_acc.sum((0, 1)).t().contiguous()
        if need[3]:
            dB = _batch_major(dB_tm)
        if need[4]:
            dC = _batch_major(dC_tm)
        return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0, None, None


def selective_scan_torch(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    chunk_size=None,
    initial_state=None,
):
    """The ``"torch"`` backend (no validation; use :func:`selective_scan`).

    Same arguments and results as :func:`selective_scan`. ``chunk_size`` overrides the number of
    time steps per chunk (default on CPU: about 3 MiB of ``(b, n, d)`` states per chunk buffer,
    clamped to [4, 64]; on CUDA: 64).

    Variable ``B``/``C`` ``(b, n, l)`` take the chunked scan with its hand-written backward (including the
    gradient of ``initial_state``). Grouped ``(b, G, n, l)`` ones run that scan once per group of ``d / G``
    channels; constant ``(d, n)`` ones (mamba-ssm compatibility, not a fast path) run the step-by-step
    recurrence of :func:`selective_scan_reference`.
    """
    if B.dim() == 2 or C.dim() == 2:
        return selective_scan_reference(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state
        )
    if B.dim() == 4 or C.dim() == 4:
        return _grouped_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size,
                             initial_state)  # fmt: skip
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    out_dtype = u.dtype
    args = [t if t is None else t.to(dtype) for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)]
    b, d, _ = u.shape
    if chunk_size is None:
        # CPU: cache-sized chunks. CUDA: long chunks (fewer kernel launches; memory is not the limit).
        chunk_size = _MAX_CHUNK if u.is_cuda else _chunk_size(b, d, A.shape[1], torch.finfo(dtype).bits // 8)
    if int(chunk_size) < 1:
        raise ValueError(f"selective_scan: chunk_size must be >= 1, got {chunk_size}")
    out, last_state = _SelectiveScanFn.apply(*args, bool(delta_softplus), int(chunk_size))
    out = out.to(out_dtype)
    return (out, last_state) if return_last_state else out


def _grouped_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size, initial_state):
    """Grouped ``B``/``C`` ``(b, G, n, l)``: one variable-``B``/``C`` scan per group of channels (autograd joins
    them). ``B`` and ``C`` may have different ``G``; the channels are split into ``lcm(G_B, G_C)`` groups."""
    d = u.shape[1]
    gb, gc = (X.shape[1] if X.dim() == 4 else 1 for X in (B, C))
    groups = math.lcm(gb, gc)
    width = d // groups

    def part(t, g, dim):
        return None if t is None else t.narrow(dim, g * width, width)

    def bc(X, g, gx):
        return X if X.dim() == 3 else X[:, g * gx // groups]

    outs, lasts = [], []
    for g in range(groups):
        res = selective_scan_torch(
            part(u, g, 1), part(delta, g, 1), part(A, g, 0), bc(B, g, gb), bc(C, g, gc), part(D, g, 0),
            part(z, g, 1), part(delta_bias, g, 0), delta_softplus, True, chunk_size, part(initial_state, g, 1),
        )  # fmt: skip
        outs.append(res[0])
        lasts.append(res[1])
    out = torch.cat(outs, dim=1)
    return (out, torch.cat(lasts, dim=1)) if return_last_state else out


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


def _kernel_blockers(*tensors: torch.Tensor | None) -> list[str]:
    """Why mamba-ssm's kernel cannot run on these scan inputs (``u`` first), in the order the ``"cuda"`` backend
    reports them: ``"import"``, ``"device"``, ``"dtype"``; empty when it can run. Cheap: no message is built."""
    blockers = []
    if not is_mamba_ssm_available():
        blockers.append("import")
    if not tensors[0].is_cuda:
        blockers.append("device")
    if not all(t.dtype in _KERNEL_DTYPES for t in tensors if t is not None):
        blockers.append("dtype")
    return blockers


def _fallback_message(blocker: str, *tensors: torch.Tensor | None) -> str:
    """The warning of the ``"cuda"`` backend falling back to ``"torch"`` because of ``blocker``."""
    if blocker == "import":
        problem = (
            "backend 'cuda' needs mamba-ssm's selective_scan_fn, which could not be imported "
            f"({mamba_ssm_import_error()})"
        )
    elif blocker == "device":
        problem = f"backend 'cuda' needs CUDA tensors, got tensors on {tensors[0].device}"
    else:
        dtypes = ", ".join(f"{name} {t.dtype}" for name, t in zip(_NAMES, tensors, strict=False) if t is not None)
        problem = f"mamba-ssm's kernel supports float32/float16/bfloat16, got {dtypes}"
    return f"selective_scan: {problem}; falling back to the 'torch' backend."


def resolve_backend(backend: str, *tensors: torch.Tensor | None) -> str:
    """The implementation :func:`selective_scan` runs for ``backend`` on these inputs.

    Args:
        backend: one of :data:`BACKENDS`.
        *tensors: the scan's inputs in :func:`selective_scan`'s order (``u`` first; ``None`` for absent ones).
            Their device and dtypes decide whether mamba-ssm's kernel can run.

    Returns:
        ``"cuda"``, ``"torch"`` or ``"reference"``: ``"auto"`` and ``"cuda"`` resolve to ``"cuda"`` when the
        kernel imports, the tensors are on CUDA and every dtype is one the kernel takes, else to ``"torch"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"resolve_backend: unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend in ("auto", "cuda"):
        return "torch" if _kernel_blockers(*tensors) else "cuda"
    return backend


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    backend="auto",
    initial_state=None,
):
    """Selective scan with mamba-ssm's ``selective_scan_fn`` layouts and semantics.

    Args:
        u: ``(b, d, l)`` input sequence.
        delta: ``(b, d, l)`` step sizes (before ``delta_bias`` and softplus).
        A: ``(d, n)`` state matrix (diagonal per channel; negative in practice). Complex ``A`` is not supported.
        B: ``(b, n, l)`` input projections; also, as in mamba-ssm, constant ``(d, n)`` or grouped
            ``(b, G, n, l)`` (channel ``c`` uses group ``c // (d / G)``).
        C: ``(b, n, l)`` output projections, or constant / grouped like ``B``.
        D: optional ``(d,)`` skip connection.
        z: optional ``(b, d, l)`` gate; the output is multiplied by ``silu(z)``.
        delta_bias: optional ``(d,)`` added to ``delta``.
        delta_softplus: apply softplus to ``delta`` (after adding ``delta_bias``).
        return_last_state: also return the final state ``(b, d, n)``.
        backend: one of ``BACKENDS``: ``"auto"`` (default), ``"cuda"``, ``"torch"``, ``"reference"``.
        initial_state: optional ``(b, d, n)`` state ``h_0`` the scan continues from (zeros when ``None``), e.g. the
            ``last_state`` of the scan of the preceding tokens: scanning a sequence in pieces, each from the
            previous piece's ``last_state``, gives the scan of the whole. Differentiable in every backend
            (``"torch"``: in its hand-written backward). mamba-ssm's kernel has no initial state, so ``"cuda"``
            runs it from zero and adds ``h_0``'s contribution computed in PyTorch
            (:func:`initial_state_contribution`; exact, since the scan is linear in ``h_0``).

    Returns:
        ``out`` of shape ``(b, d, l)`` and dtype ``u.dtype``, or ``(out, last_state)`` where
        ``last_state`` is ``(b, d, n)`` in the compute dtype (float32 for fp16/bf16 inputs).
    """
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {backend!r}; expected one of {BACKENDS}")
    _validate(u, delta, A, B, C, D, z, delta_bias, initial_state)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    if backend in ("auto", "cuda"):
        blockers = _kernel_blockers(u, delta, A, B, C, D, z, delta_bias)
        if backend == "cuda" and blockers:
            _warn_once(blockers[0], _fallback_message(blockers[0], u, delta, A, B, C, D, z, delta_bias))
        elif backend == "auto" and blockers == ["import"] and "auto" not in _warned:
            # CUDA tensors of kernel dtypes, only the kernel is missing: a performance note, not a problem, so
            # logged once and never raised as a Python warning.
            _warned.add("auto")
            logger.warning(
                "selective_scan: CUDA tensors, but mamba-ssm's kernel could not be imported (%s); using the "
                "pure-PyTorch 'torch' scan (same results, slower). Install mambavl[cuda] for the fused kernel.",
                mamba_ssm_import_error(),
            )
        backend = "torch" if blockers else "cuda"

    if backend == "torch":
        return selective_scan_torch(*args, initial_state=initial_state)
    if backend == "reference":
        return selective_scan_reference(*args, initial_state=initial_state)
    if initial_state is not None:
        return _scan_from_initial_state(_selective_scan_cuda, *args, initial_state)
    return _selective_scan_cuda(*args)


def _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """mamba-ssm's kernel, with the inputs cast to the dtypes its C++ checks demand.

    The kernel requires ``delta``, ``B``, ``C`` and ``z`` in the dtype of ``u`` (its "input
    type"), and ``A``, ``D`` and ``delta_bias`` in float32. Mixed inputs are therefore run in
    the promoted input dtype (so a float32 ``delta`` with a bfloat16 ``u`` is not rounded down),
    and ``out`` is returned in ``u.dtype`` as with the other backends. The casts are
    differentiable, so gradients reach every input in its own dtype. mamba-ssm does not
    back-propagate through ``last_state`` (its backward ignores that gradient).
    """
    io = _promoted_dtype(u, delta, *(X for X in (B, C) if X.dim() > 2), z)

    def cast(t, dtype):
        return None if t is None else t.to(dtype)

    selective_scan_fn = _import_mamba_ssm()[0]
    result = selective_scan_fn(
        u.to(io),
        delta.to(io),
        A.to(torch.float32),
        B.to(torch.float32 if B.dim() == 2 else io),  # constant B/C are "weights" to the kernel: float32
        C.to(torch.float32 if C.dim() == 2 else io),
        D=cast(D, torch.float32),
        z=cast(z, io),
        delta_bias=cast(delta_bias, torch.float32),
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )
    if return_last_state:
        out, last_state = result
        return out.to(u.dtype), last_state
    return result.to(u.dtype)
