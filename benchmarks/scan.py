"""CPU benchmark of the selective scan: mambavl's ``torch`` backend vs ``reference`` vs transformers.

Compares, at one ViT-B clip of tokens (b=2, d=1536, n=16, l=1568, float32, softplus(delta +
delta_bias), D and z):

* ``torch``        -- ``mambavl.ops.selective_scan(..., backend="torch")`` (chunked scan, custom backward)
* ``reference``    -- ``mambavl.ops.selective_scan(..., backend="reference")`` (plain loop, autograd)
* ``transformers`` -- ``transformers.models.mamba.modeling_mamba.mamba_selective_scan``, the
  sequential PyTorch fallback transformers uses when mamba-ssm is missing (autograd backward)

Measured per implementation: forward time (under ``torch.no_grad()``), forward+backward time
(all eight inputs require grad; ``out.backward(random)``) and peak memory. Also measured: the
floor of any forward (forming ``exp(delta * A)`` for all b*d*l*n elements, with ``torch.exp2``
as the ``torch`` backend does and with ``torch.exp``), torch.profiler's split of one ``torch``
forward by op, and a **fused compiled forward** (``fused-c++``): ``benchmarks/native/scan_fwd.cc``,
one pass with the state kept on the core as mamba-ssm's CUDA kernel does on a GPU, built at run time
with the system C++ compiler and loaded with ctypes. It is not part of mambavl (whose CPU scan is
pure PyTorch); it shows how far a compiled CPU kernel would go on this machine. Without a C++
compiler (or with ``--no-native``) it is left out and the report says why.

Method
------
Every (implementation, mode) case runs in its own fresh Python subprocess, so allocator state
and memory high-water marks do not leak between cases. In the subprocess: inputs are built,
a tiny-shape call warms up the libraries, then the resident-set high-water mark is reset
(``echo 5 > /proc/self/clear_refs``) and the first full-size call runs; **peak memory** is
``VmHWM - RSS before the call``: the extra resident memory that one call needed (temporaries,
outputs, saved tensors, gradients), measured by the kernel, whatever allocated it. That first
call doubles as the warm-up; then ``--repeats`` timed calls follow (fewer when one call is slow,
see ``--case-budget``) and the median is reported.

transformers' forward+backward goes through autograd over a Python loop with full
``(b, d, l, n)`` intermediates; at l=1568 it takes many minutes on 2 cores, so by default it is
timed at a shorter ``--hf-backward-l`` and **extrapolated linearly in l** (time and memory; the
loop is linear in l). The table says so.

Shared machines: each case records a contention probe (the latency of a tiny multi-threaded
op, before and after the case) and rows measured while another process held the cores are
flagged. ``--threads 1,2`` measures each thread count in the same run (one table each);
single-threaded timings are far less sensitive to other processes. ``--wait-quiet S`` waits up
to S seconds before each case for the probe to settle, ``--retries R`` re-runs a contended case.
On the project's shared VM the same code also runs at different speeds in different processes
(up to 1.5x apart, with no contention visible to the probe), so ``--processes P`` runs every case
in P fresh processes, in P rounds over all cases, and reports the median of their medians.

Usage::

    python benchmarks/scan.py                 # full size, writes benchmarks/results/scan_cpu.{json,md}
    python benchmarks/scan.py --quick         # small size, prints only (unless --out is given)
    python benchmarks/scan.py --threads 2,1 --repeats 7 --processes 3 --wait-quiet 300 --retries 3
    python benchmarks/scan.py --no-native     # without the fused compiled forward (no C++ compiler needed)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPLS = ("torch", "reference", "transformers")
#: Not scans: exp(delta * A) over every (b, d, l, n) element with ``torch.exp2`` (as the ``torch`` backend forms
#: it; the floor of any forward) and with ``torch.exp`` (as ``reference`` and transformers form it); see _floor_fn.
FLOORS = {"exp2-floor": "exp2", "exp-floor": "exp"}
#: Not a timing: torch.profiler's per-op split of one ``torch`` forward (see _profile_forward).
PROFILE = "torch-profile"
#: Not part of mambavl: the fused C++ forward of NATIVE_SOURCE, compiled at run time (forward only; see build_native).
NATIVE = "fused-c++"
NATIVE_SOURCE = Path(__file__).resolve().parent / "native" / "scan_fwd.cc"
NATIVE_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")
MODES = ("fwd", "fwdbwd")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: A probe above this many microseconds means another process holds the cores (see _probe_us).
CONTENDED_US = 6.0


def _probe_us(calls: int = 200) -> float:
    """Median time (us) of ``torch.exp`` on 8192 floats with all cores: a tiny parallel region.

    About 4 us on an idle 2-core machine; when another process holds a core, every parallel
    region waits for a scheduler slice and this jumps to milliseconds. Every multi-threaded
    op of every implementation pays that, so it tells whether a case was measured in quiet.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.randn(8192)
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        torch.exp(x)
        ts.append(time.perf_counter() - t0)
    torch.set_num_threads(previous)
    ts.sort()
    return ts[len(ts) // 2] * 1e6


# ------------------------------------------------------------------------------------------
# worker (one case per process)
# ------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _make_inputs(b, d, L, n, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(b, d, L, generator=g),
        "delta": torch.randn(b, d, L, generator=g) * 0.5 - 1.0,
        "A": -torch.exp(torch.randn(d, n, generator=g) * 0.5),
        "B": torch.randn(b, n, L, generator=g),
        "C": torch.randn(b, n, L, generator=g),
        "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, L, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.5,
    }


def _scan_fn(impl):
    if impl in ("torch", "reference"):
        from mambavl.ops import selective_scan

        def fn(u, delta, A, B, C, D, z, delta_bias):
            return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, backend=impl)

        return fn
    if impl == "transformers":
        # transformers logs (not warns) that mamba_ssm is missing and it falls back: silence that.
        import transformers

        transformers.logging.set_verbosity_error()
        logging.getLogger("transformers").setLevel(logging.ERROR)
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan

        def fn(u, delta, A, B, C, D, z, delta_bias):
            return mamba_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

        return fn
    if impl in FLOORS:
        return _floor_fn(FLOORS[impl])
    raise ValueError(impl)


def native_compiler() -> str | None:
    """The C++ compiler :func:`build_native` uses by default: ``$CXX``, else the first of ``c++``, ``g++``,
    ``clang++`` on the PATH, else ``None``."""
    return os.environ.get("CXX") or next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)


def build_native(out_dir: str | Path, compiler: str | None = None) -> tuple[Path | None, str]:
    """Compile :data:`NATIVE_SOURCE` into ``out_dir`` -> ``(shared library or None, what happened)``.

    The compiler is ``compiler``, else :func:`native_compiler`. On failure the path is ``None`` and the message
    says why (no compiler, or the compiler's last output lines).
    """
    cxx = compiler or native_compiler()
    if not cxx:
        return None, "no C++ compiler found (set CXX, or install g++ / clang++)"
    lib = Path(out_dir) / "scan_fwd.so"
    cmd = [cxx, *NATIVE_FLAGS, str(NATIVE_SOURCE), "-o", str(lib)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        return None, f"{cxx} could not run: {exc}"
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return None, f"{' '.join(cmd)} failed (exit {proc.returncode}): {tail}"
    return lib, " ".join([os.path.basename(cxx), *NATIVE_FLAGS])


def native_scan_fn(lib_path: str | Path):
    """The compiled forward of :func:`build_native` as ``fn(u, delta, A, B, C, D, z, delta_bias) -> out``.

    Same arguments and layouts as :func:`mambavl.ops.selective_scan` (float32, ``delta_softplus=True``, the
    benchmark's case), ``D``, ``z`` and ``delta_bias`` optional, checked by the library's own input validation
    before any pointer reaches the kernel; runs on ``torch.get_num_threads()`` threads. No autograd: forward only.
    """
    import ctypes

    import torch

    from mambavl.ops.selective_scan import _validate

    kernel = ctypes.CDLL(str(lib_path)).mambavl_scan_fwd
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    kernel.argtypes = [ptr] * 8 + [ctypes.c_int, ptr, ptr, i64, i64, i64, i64, ctypes.c_int]
    kernel.restype = ctypes.c_int

    def fn(u, delta, A, B, C, D=None, z=None, delta_bias=None):
        _validate(u, delta, A, B, C, D, z, delta_bias)  # shapes and devices, as selective_scan checks them
        tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
        for name, t in tensors.items():
            if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
                raise TypeError(f"{NATIVE}: {name} must be a float32 CPU tensor, got {t.dtype} on {t.device}")
        args = [None if t is None else t.contiguous() for t in tensors.values()]
        b, d, L = u.shape
        n = A.shape[1]
        out, last = u.new_empty(b, d, L), u.new_empty(b, d, n)
        pointers = [None if t is None else t.data_ptr() for t in args]
        if kernel(*pointers, 1, out.data_ptr(), last.data_ptr(), b, d, L, n, torch.get_num_threads()):
            raise ValueError(f"{NATIVE}: state size n={n} is above the kernel's limit (NMAX in {NATIVE_SOURCE.name})")
        return out

    return fn


def _floor_fn(exp_name):
    """exp(delta_t * A) for every (b, d, l, n) element, and nothing else, in cache-sized chunks.

    The one elementwise pass every scan forming the discretized A needs, so (with the faster of
    ``torch.exp2`` / ``torch.exp``) a lower bound on a forward. ``"exp2"`` forms it as the ``torch``
    backend does, ``exp2(delta * A log2(e))``; ``"exp"`` as ``reference`` and transformers do.
    """
    import torch

    # the backend's own chunk rule and exponent, so this stays "as the torch backend does"
    from mambavl.ops.selective_scan import _chunk_size, _exp2_exponent

    exp_ = torch.Tensor.exp2_ if exp_name == "exp2" else torch.Tensor.exp_

    def fn(u, delta, A, B, C, D, z, delta_bias):
        dt = delta.permute(2, 0, 1).contiguous()  # (l, b, d)
        L, b, d = dt.shape
        n = A.shape[1]
        At = _exp2_exponent(A) if exp_name == "exp2" else A.t().contiguous()  # (n, d)
        chunk = _chunk_size(b, d, n, dt.element_size())
        buf = dt.new_empty(chunk, b, n, d)
        for t0 in range(0, L, chunk):
            m = min(chunk, L - t0)
            exp_(torch.mul(dt[t0 : t0 + m, :, None, :], At, out=buf[:m]))
        return u  # nothing to compare

    return fn


def _profile_forward(x, names, top=7) -> list[dict]:
    """torch.profiler's split of one ``torch``-backend forward by op: ``[{op, self_ms, calls}, ...]``.

    The ``top`` ops by self CPU time, then one ``"(other)"`` row. Profiling adds a little per
    op, so the shares matter, not the sum.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn = _scan_fn("torch")
    with torch.no_grad():
        fn(*(x[k] for k in names))  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(*(x[k] for k in names))
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in events]
    other = rows[top:]
    rows = rows[:top]
    if other:
        rows.append(
            {"op": "(other)", "self_ms": sum(r["self_ms"] for r in other), "calls": sum(r["calls"] for r in other)}
        )
    return rows


def worker(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    if args.impl == PROFILE:
        ops = _profile_forward(_make_inputs(args.b, args.d, args.L, args.n), names)
        return {"impl": PROFILE, "threads": torch.get_num_threads(), "ops": ops}
    fn = native_scan_fn(args.native_lib) if args.impl == NATIVE else _scan_fn(args.impl)

    def make_call(x):
        if args.mode == "fwd":

            def call():
                with torch.no_grad():
                    return fn(*(x[k] for k in names))

            return call, None
        leaves = [x[k].clone().requires_grad_() for k in names]
        gout = torch.randn(x["u"].shape, generator=torch.Generator().manual_seed(1))

        def call():
            out = fn(*leaves)
            out.backward(gout)
            for t in leaves:
                t.grad = None
            return out.detach()

        return call, leaves

    probe_before = _probe_us()
    # warm up the libraries on a tiny shape (thread pools, lazy imports, dispatch caches)
    tiny_call, _ = make_call(_make_inputs(1, 8, 8, 4, seed=1))
    tiny_call()
    del tiny_call

    x = _make_inputs(args.b, args.d, args.L, args.n)
    call, _leaves = make_call(x)
    rss0 = _rss_bytes()
    hwm_reset = _reset_hwm()
    t0 = time.perf_counter()
    out = call()
    first_s = time.perf_counter() - t0
    peak = _hwm_bytes() - rss0 if hwm_reset else None

    # correctness cross-check of the forward against the torch backend
    rel_diff = None
    if args.mode == "fwd" and args.impl != "torch" and args.impl not in FLOORS:
        from mambavl.ops import selective_scan

        ref = selective_scan(*(x[k] for k in names), delta_softplus=True, backend="torch")
        rel_diff = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    del out

    repeats = args.repeats
    if first_s * repeats > args.case_budget:
        repeats = max(1, int(args.case_budget // max(first_s, 1e-9)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    probe_after = _probe_us()
    return {
        "impl": args.impl,
        "mode": args.mode,
        "shape": {"b": args.b, "d": args.d, "l": args.L, "n": args.n},
        "threads": torch.get_num_threads(),
        "first_call_s": first_s,
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "repeats": repeats,
        "peak_extra_rss_bytes": peak,
        "rel_diff_vs_torch": rel_diff,
        "probe_us_before": probe_before,
        "probe_us_after": probe_after,
        "contended": max(probe_before, probe_after) > CONTENDED_US,
    }


# ------------------------------------------------------------------------------------------
# orchestrator
# ------------------------------------------------------------------------------------------


def _run_case(args, impl, mode, L) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--impl",
        impl,
        "--mode",
        mode,
        "--b",
        str(args.b),
        "--d",
        str(args.d),
        "--l",
        str(L),
        "--n",
        str(args.n),
        "--repeats",
        str(args.repeats),
        "--case-budget",
        str(args.case_budget),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if impl == NATIVE:
        cmd += ["--native-lib", str(args.native_lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"case {impl}/{mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _wait_quiet(args) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.wait_quiet:
        if _probe_us() < CONTENDED_US:
            break
        time.sleep(5)
    return time.perf_counter() - t0


def _machine_info() -> dict:
    import torch
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "torch_parallel_info": torch.__config__.parallel_info().splitlines()[:6],
    }


def _fmt_ms(s):
    return "—" if s is None else f"{s * 1e3:,.1f}"


def _fmt_mib(b):
    return "—" if b is None else f"{b / 2**20:,.0f}"


def _spread_note(process_medians_s: list[float]) -> str | None:
    """``"per-process medians a / b / c ms"`` when the processes of a case were more than 1.2x apart, else None."""
    if max(process_medians_s) > 1.2 * min(process_medians_s):
        return f"per-process medians {' / '.join(_fmt_ms(t) for t in process_medians_s)} ms"
    return None


def _quiet_case(args, impl, mode, L) -> dict:
    """One subprocess run of a case, waiting for quiet and re-running it while contended (``--retries``)."""
    waited, attempt = 0.0, 0
    while True:
        attempt += 1
        waited += _wait_quiet(args) if args.wait_quiet > 0 else 0.0
        r = _run_case(args, impl, mode, L)
        if not r["contended"] or attempt > args.retries:
            break
        print(
            f"    contended (probe {r['probe_us_before']:.0f}/{r['probe_us_after']:.0f} us): retrying",
            file=sys.stderr,
            flush=True,
        )
    r["waited_for_quiet_s"] = waited
    r["attempts"] = attempt
    return r


def _merge_processes(runs: list[dict]) -> dict:
    """One case from its runs in ``--processes`` fresh processes: the median of their medians, the min of their
    mins, the median peak; flagged contended / retried / shortened if any run was."""
    r = dict(runs[0])
    peaks = [x["peak_extra_rss_bytes"] for x in runs if x["peak_extra_rss_bytes"] is not None]
    r.update(
        process_medians_s=[x["median_s"] for x in runs],
        median_s=statistics.median(x["median_s"] for x in runs),
        min_s=min(x["min_s"] for x in runs),
        repeats=min(x["repeats"] for x in runs),
        peak_extra_rss_bytes=statistics.median(peaks) if peaks else None,
        contended=any(x["contended"] for x in runs),
        probe_us_before=max(x["probe_us_before"] for x in runs),
        probe_us_after=max(x["probe_us_after"] for x in runs),
        attempts=max(x["attempts"] for x in runs),
        waited_for_quiet_s=sum(x["waited_for_quiet_s"] for x in runs),
    )
    return r


def _run_all(args, impls, threads, hf_l) -> dict:
    """All cases at one thread count -> {"threads", "loadavg_*", "rows", "exp_floors", ...}.

    With ``--processes P`` every case runs in P fresh processes, taken in P rounds over all cases
    (so each implementation sees the machine in the same states), and reports the median of the
    per-process medians.
    """
    args.threads = threads
    load_start = os.getloadavg()
    tag = f"[threads={threads or 'default'}]"
    todo = [
        (impl, mode, hf_l if (impl == "transformers" and mode == "fwdbwd") else args.L)
        for impl in impls
        for mode in MODES
    ]
    if "torch" in impls:
        todo += [(name, "fwd", args.L) for name in FLOORS]
        if args.native_lib:
            todo.append((NATIVE, "fwd", args.L))
    runs = {case: [] for case in todo}
    for p in range(args.processes):
        for impl, mode, L in todo:
            print(
                f"{tag} {impl:>12} {mode:<6} (l={L}) process {p + 1}/{args.processes} ...", file=sys.stderr, flush=True
            )
            r = _quiet_case(args, impl, mode, L)
            runs[(impl, mode, L)].append(r)
            print(
                f"    median {r['median_s'] * 1e3:,.1f} ms (min {r['min_s'] * 1e3:,.1f}) over {r['repeats']} "
                f"repeats, probe {r['probe_us_before']:.0f}/{r['probe_us_after']:.0f} us",
                file=sys.stderr,
                flush=True,
            )
    cases, floors = {}, {}
    native = {"built": False, "reason": args.native_status} if "torch" in impls else None
    for (impl, mode, L), case_runs in runs.items():
        r = _merge_processes(case_runs)
        if impl in FLOORS:
            floors[FLOORS[impl]] = {"median_s": r["median_s"], "min_s": r["min_s"], "contended": r["contended"]}
            continue
        if impl == NATIVE:
            native = {
                "built": True,
                "compile": args.native_status,
                "source": os.path.relpath(NATIVE_SOURCE, Path(__file__).resolve().parent.parent),
                "median_s": r["median_s"],
                "min_s": r["min_s"],
                "process_medians_s": r["process_medians_s"],
                "contended": r["contended"],
                "rel_diff_vs_torch": r["rel_diff_vs_torch"],
            }
            continue
        scale = args.L / L
        r["extrapolated_from_l"] = L if L != args.L else None
        r["median_s_full"] = r["median_s"] * scale
        r["min_s_full"] = r["min_s"] * scale
        r["peak_full_bytes"] = None if r["peak_extra_rss_bytes"] is None else r["peak_extra_rss_bytes"] * scale
        cases[(impl, mode)] = r
    profile_ops = None
    if "torch" in impls:
        print(f"{tag} {PROFILE:>12}", file=sys.stderr, flush=True)
        profile_ops = _run_case(args, PROFILE, "fwd", args.L)["ops"]
    load_end = os.getloadavg()

    rows = []
    base = {m: cases[("torch", m)]["median_s_full"] for m in MODES} if "torch" in impls else None
    for impl in impls:
        f, fb = cases[(impl, "fwd")], cases[(impl, "fwdbwd")]
        notes = []
        if fb["extrapolated_from_l"]:
            notes.append(
                f"fwd+bwd timed at l={fb['extrapolated_from_l']} and extrapolated linearly to "
                f"l={args.L} (time and memory; measured {fb['median_s'] * 1e3:,.0f} ms, "
                f"{_fmt_mib(fb['peak_extra_rss_bytes'])} MiB)"
            )
        for c in (f, fb):
            spread = _spread_note([t * c["median_s_full"] / c["median_s"] for t in c["process_medians_s"]])
            if spread:
                notes.append(f"{c['mode']}: {spread}")
            if c["repeats"] < args.repeats:
                notes.append(f"{c['mode']}: {c['repeats']} timed call(s) (slow case)")
            if c.get("attempts", 1) > 1:
                notes.append(f"{c['mode']}: attempt {c['attempts']} (earlier ones contended, discarded)")
            if c["contended"]:
                notes.append(
                    f"{c['mode']}: another process held the cores at some point (probe "
                    f"{c['probe_us_before']:.0f} / {c['probe_us_after']:.0f} us before / after)"
                )
        rows.append(
            {
                "impl": impl,
                "fwd_s": f["median_s_full"],
                "fwdbwd_s": fb["median_s_full"],
                "fwd_min_s": f["min_s_full"],
                "fwdbwd_min_s": fb["min_s_full"],
                "fwdbwd_over_fwd": fb["median_s_full"] / f["median_s_full"],
                "torch_speedup_fwd": (f["median_s_full"] / base["fwd"]) if base else None,
                "torch_speedup_fwdbwd": (fb["median_s_full"] / base["fwdbwd"]) if base else None,
                "peak_fwd_bytes": f["peak_full_bytes"],
                "peak_fwdbwd_bytes": fb["peak_full_bytes"],
                "rel_diff_vs_torch": f["rel_diff_vs_torch"],
                "notes": notes,
            }
        )
    return {
        "threads": cases[(impls[0], "fwd")]["threads"],
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in load_end],
        "rows": rows,
        "exp_floors": floors or None,
        "native_forward": native,
        "torch_forward_profile": profile_ops,
        "cases": list(cases.values()),
    }


def _markdown(result) -> str:
    shape = result["shape"]
    m = result["machine"]
    lines = [
        f"# Selective scan on CPU: b={shape['b']}, d={shape['d']}, n={shape['n']}, l={shape['l']}, float32",
        "",
        f"softplus(delta + delta_bias), D and z. {m['cpu']} ({m['logical_cpus']} logical CPUs), "
        f"torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}. "
        "Times: median (min) in ms of the timed calls after one warm-up call"
        + (
            f", each case in {result['processes']} fresh processes (median of their medians, min of their mins)"
            if result.get("processes", 1) > 1
            else ""
        )
        + "; speed-ups and ratios use medians. `torch speed-up` = that row's time / the `torch` backend's time.",
        "",
    ]
    for run in result["runs"]:
        lines += [
            f"## {run['threads']} torch thread{'s' if run['threads'] != 1 else ''}",
            "",
            f"Load average at start / end: {run['loadavg_start']} / {run['loadavg_end']}.",
            "",
            "| implementation | forward (ms) | fwd+bwd (ms) | fwd+bwd / own fwd | torch speed-up fwd | "
            "torch speed-up fwd+bwd | peak extra RSS fwd (MiB) | peak extra RSS fwd+bwd (MiB) | notes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in run["rows"]:
            notes = list(r["notes"])
            if r.get("rel_diff_vs_torch") is not None:
                notes.append(f"forward rel. diff vs torch {r['rel_diff_vs_torch']:.1e}")
            sf = "—" if r["torch_speedup_fwd"] is None else f"{r['torch_speedup_fwd']:.1f}x"
            sfb = "—" if r["torch_speedup_fwdbwd"] is None else f"{r['torch_speedup_fwdbwd']:.1f}x"
            lines.append(
                f"| `{r['impl']}` | {_fmt_ms(r['fwd_s'])} ({_fmt_ms(r['fwd_min_s'])}) | "
                f"{_fmt_ms(r['fwdbwd_s'])} ({_fmt_ms(r['fwdbwd_min_s'])}) | {r['fwdbwd_over_fwd']:.2f} | "
                f"{sf} | {sfb} | {_fmt_mib(r['peak_fwd_bytes'])} | {_fmt_mib(r['peak_fwdbwd_bytes'])} | "
                f"{'; '.join(notes)} |"
            )
        lines.append("")
        lines += _floor_lines(run, shape)
    lines += [
        "Peak extra RSS: rise of the process's resident-set high-water mark (VmHWM, reset through "
        "`/proc/self/clear_refs`) over its RSS just before the first full-size call, in a fresh "
        "subprocess per case; it counts temporaries, outputs, saved tensors and gradients, but "
        "not the inputs.",
        "",
        "Quiet check: each case records the median time of `torch.exp` on 8192 floats (a tiny "
        "multi-threaded op) before and after it: about 4 us on an idle machine; above "
        f"{CONTENDED_US:g} us another process held the cores, every parallel region then waits for a "
        "scheduler slice, and multi-threaded timings are inflated (noted per row). Single-threaded "
        "runs are far less sensitive to this.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


def _floor_lines(run, shape) -> list[str]:
    """The markdown paragraphs on the ``exp`` floors, the fused compiled forward and the profile of the ``torch``
    forward."""
    floors, ops, native = run.get("exp_floors"), run.get("torch_forward_profile"), run.get("native_forward")
    fwd = {r["impl"]: r["fwd_s"] for r in run["rows"]}
    lines = []
    if floors:
        low = floors["exp2"]
        caps = ", ".join(f"`{impl}` {t / low['median_s']:.1f}x" for impl, t in fwd.items() if impl != "torch")
        elements = shape["b"] * shape["d"] * shape["l"] * shape["n"]

        def took(f):
            return f"{_fmt_ms(f['median_s'])} ms" + (" (contended)" if f["contended"] else "")

        lines += [
            f"Floor: forming `exp(delta * A)` alone over all b*d*l*n = {elements:,} elements, in cache-sized "
            f"chunks, takes {took(low)} with `torch.exp2` (as the `torch` backend does: `exp2(delta * A log2 e)`) "
            f"and {took(floors['exp'])} with `torch.exp` (as `reference` and transformers do). Every scan forms "
            f"these values, so no forward made of PyTorch ops can beat the `exp2` floor: the `torch` forward is "
            f"{fwd['torch'] / low['median_s']:.1f}x it, and the largest forward speed-up over the others that such a "
            f"scan could reach here is {caps}.",
            "",
        ]
    if native:
        lines += [_native_line(native, fwd), ""]
    if ops:
        total = sum(o["self_ms"] for o in ops)
        lines += [
            "Where the `torch` forward's time goes (torch.profiler, one call after a warm-up; self CPU time per op, "
            "profiling overhead included; `_SelectiveScanFn` is the Python between the ops):",
            "",
            "| op | share | calls |",
            "|---|---:|---:|",
            *(f"| `{o['op']}` | {100 * o['self_ms'] / total:.0f}% | {o['calls']:,} |" for o in ops),
            "",
        ]
    return lines


def _native_line(native: dict, fwd: dict) -> str:
    """The markdown paragraph on the fused compiled forward (``native_forward`` of a run; ``fwd``: impl -> seconds)."""
    what = (
        f"A fused, compiled forward (`{NATIVE}`: `benchmarks/native/scan_fwd.cc`, one pass per (batch, 16 channels) "
        "with the state kept on the core, as mamba-ssm's CUDA kernel does on a GPU; not part of mambavl, whose CPU "
        "scan is pure PyTorch)"
    )
    if not native["built"]:
        return f"{what} was not measured: {native['reason']}."
    speedups = ", ".join(f"`{impl}` {t / native['median_s']:.1f}x" for impl, t in fwd.items())
    notes = [_spread_note(native["process_medians_s"]), "contended" if native["contended"] else None]
    return (
        f"{what}, built with `{native['compile']}`, takes {_fmt_ms(native['median_s'])} ms "
        f"({_fmt_ms(native['min_s'])})"
        + "".join(f" ({note})" for note in notes if note)
        + f"; forward rel. diff vs torch {native['rel_diff_vs_torch']:.1e}. Speed-up of that kernel over each row: "
        f"{speedups}. This is how far a compiled CPU kernel goes here, against the pure-PyTorch `torch` backend."
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small size (b=1, d=256, n=16, l=256)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per case (after one warm-up call)")
    p.add_argument(
        "--threads",
        default="0",
        help="comma-separated torch thread counts, one table each, e.g. 1,2 (0 = torch's default)",
    )
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    p.add_argument(
        "--hf-backward-l",
        type=int,
        default=None,
        help="sequence length at which transformers' fwd+bwd is timed, then extrapolated "
        "linearly to l (default: l // 8; 0 = time it at full l)",
    )
    p.add_argument(
        "--case-budget",
        type=float,
        default=60.0,
        help="seconds of timed calls per case; slow cases get fewer repeats (at least 1)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="directory for scan_cpu.json / scan_cpu.md (default: benchmarks/results for full runs, none for --quick)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="fresh processes per case, in rounds over all cases; reported: the median of their medians "
        "(the same code can run at different speeds in different processes on a shared machine)",
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument(
        "--no-native",
        action="store_true",
        help=f"leave out the fused compiled forward ({NATIVE}, built from {NATIVE_SOURCE.name} with the C++ compiler)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each case wait up to this many seconds for the machine to be quiet "
        f"(probe below {CONTENDED_US:g} us; useful on shared machines)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help="re-run a case up to this many times when its contention probe says another process "
        "held the cores (the last attempt is kept and flagged if still contended)",
    )
    # worker-only arguments
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--b", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, default=1536, help=argparse.SUPPRESS)
    p.add_argument("--l", dest="L", type=int, default=1568, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--native-lib", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        args.threads = int(args.threads)
        print(json.dumps(worker(args)))
        return

    if args.quick:
        args.b, args.d, args.L, args.n = 1, 256, 256, 16
    impls = [i for i in args.impls.split(",") if i]
    unknown = set(impls) - set(IMPLS)
    if unknown or not impls:
        p.error(f"unknown --impls {sorted(unknown)}; choose from {IMPLS}")
    try:
        thread_counts = [int(t) for t in str(args.threads).split(",") if t.strip()]
    except ValueError:
        p.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if args.processes < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    hf_l = args.L // 8 if args.hf_backward_l is None else (args.hf_backward_l or args.L)
    hf_l = max(1, min(hf_l, args.L))

    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.2f} on {os.cpu_count()} CPUs; timings will be noisy", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="mambavl-scan-native-") as build_dir:
        if args.no_native:
            args.native_lib, args.native_status = None, "left out (--no-native)"
        elif "torch" in impls:
            args.native_lib, args.native_status = build_native(build_dir)
            if args.native_lib is None:
                print(f"warning: {NATIVE} not measured: {args.native_status}", file=sys.stderr)
        runs = [_run_all(args, impls, t, hf_l) for t in thread_counts]

    command = "python " + " ".join([os.path.relpath(__file__, Path.cwd()), *sys.argv[1:]])
    result = {
        "benchmark": "selective_scan_cpu",
        "command": command,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine_info(),
        "shape": {
            "b": args.b,
            "d": args.d,
            "l": args.L,
            "n": args.n,
            "dtype": "float32",
            "options": "delta_softplus=True, delta_bias, D, z",
        },
        "repeats": args.repeats,
        "processes": args.processes,
        "transformers_backward_l": hf_l,
        "memory_method": "VmHWM - RSS before the first full-size call, fresh subprocess per case "
        "(/proc/self/clear_refs reset)",
        "contention_probe": f"median us of torch.exp on 8192 floats; contended above {CONTENDED_US:g} us",
        "runs": runs,
    }
    md = _markdown(result)
    print(md)
    out_dir = args.out or (None if args.quick else str(RESULTS_DIR))
    if out_dir and not args.no_write:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scan_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "scan_cpu.md").write_text(md)
        print(f"wrote {out / 'scan_cpu.json'} and {out / 'scan_cpu.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
