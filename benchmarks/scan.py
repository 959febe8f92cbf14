"""CPU benchmark of the selective scan: mambavl's pure-PyTorch ``torch`` backend against its peers.

Compares, at one ViT-B clip of tokens (b=2, d=1536, n=16, l=1568, float32, softplus(delta + delta_bias), D and z):
``torch`` (``selective_scan(..., backend="torch")``), ``reference`` (the plain loop, autograd), ``transformers``
(``mamba_selective_scan``, the sequential fallback transformers runs without mamba-ssm, autograd) and ``mambapy``
(mamba.py's parallel scan ``pscan`` as its ``MambaBlock`` uses it; a row where mamba.py is installed): forward
(``no_grad``) and forward+backward (the gradients of all eight inputs) times, peak extra memory, the forward's
difference to ``torch``. Also the floor of any forward made of PyTorch ops (forming ``exp(delta * A)`` alone for all
b*d*l*n elements, with ``exp2`` as ``torch`` does and with ``exp``), and torch.profiler's split of a ``torch`` forward.

Target: ``torch`` ahead of its peers, transformers' fallback and mamba.py's parallel scan, in forward and
forward+backward, and close to the ``exp2`` floor. Not against ``reference``: a hand-fused compiled kernel just reaches
10x it, and pure PyTorch is capped far below that by the floor (see docs/benchmarks.md).

Each case runs in fresh processes (``harness.py``). transformers' forward+backward takes minutes at l=1568: it is
timed at l/8 and extrapolated linearly in l (time and memory).

    python benchmarks/scan.py --threads 2,1 --repeats 7 --processes 3 --wait-quiet 300 --retries 3 --case-budget 30
    python benchmarks/scan.py --quick --output-dir /tmp/scan   # b=1, d=256, n=16, l=256
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

IMPLS = ("torch", "reference", "transformers", "mambapy")
FLOORS = {"exp2-floor": "exp2", "exp-floor": "exp"}  # not scans: exp(delta * A) alone, see floor_fn
PROFILE = "torch-profile"  # not a timing: the profiler's split of one torch forward
MODES = ("fwd", "fwdbwd")


def make_inputs(b: int, d: int, L: int, n: int, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    shapes = {"u": (b, d, L), "delta": (b, d, L), "A": (d, n), "B": (b, n, L), "C": (b, n, L), "D": (d,),
              "z": (b, d, L), "delta_bias": (d,)}  # fmt: skip
    x = {k: torch.randn(*s, generator=g) for k, s in shapes.items()}
    x["delta"], x["A"], x["delta_bias"] = x["delta"] * 0.5 - 1.0, -torch.exp(x["A"] * 0.5), x["delta_bias"] * 0.5
    return x


def scan_fn(impl: str):
    """``fn(u, delta, A, B, C, D, z, delta_bias) -> out`` of one implementation (or floor)."""
    if impl in FLOORS:
        return floor_fn(FLOORS[impl])
    if impl == "mambapy":
        return mambapy_scan
    if impl == "transformers":
        import transformers
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan

        transformers.logging.set_verbosity_error()  # it logs that mamba-ssm is missing
        return lambda *x: mamba_selective_scan(*x, delta_softplus=True)
    from mambavl.ops import selective_scan

    return lambda *x: selective_scan(*x, delta_softplus=True, backend=impl)


def mambapy_scan(u, delta, A, B, C, D, z, delta_bias):
    """mamba.py's selective scan (``MambaBlock.selective_scan`` and its gate) in mambavl's layouts: ``(b, d, l)``."""
    import torch
    import torch.nn.functional as F
    from mambapy.pscan import pscan

    dt, x = F.softplus(delta + delta_bias[:, None]).transpose(1, 2), u.transpose(1, 2)  # (b, l, d)
    hs = pscan(torch.exp(dt.unsqueeze(-1) * A), dt.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2) * x.unsqueeze(-1))
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3) + D * x  # (b, l, d, n) @ (b, l, n, 1)
    return (y * F.silu(z.transpose(1, 2))).transpose(1, 2)


def floor_fn(exp_name: str):
    """exp(delta_t * A) for every (b, d, l, n) element and nothing else, in the ``torch`` backend's chunks."""
    import torch

    from mambavl.ops.selective_scan import _chunk_size, _exp2_exponent

    def fn(u, delta, A, *rest):
        dt = delta.permute(2, 0, 1).contiguous()  # (l, b, d)
        (L, b, d), n = dt.shape, A.shape[1]
        At = _exp2_exponent(A) if exp_name == "exp2" else A.t().contiguous()  # (n, d)
        buf = dt.new_empty(_chunk_size(b, d, n, dt.element_size()), b, n, d)
        for t0 in range(0, L, len(buf)):
            block = torch.mul(dt[t0 : t0 + len(buf), :, None, :], At, out=buf[: min(len(buf), L - t0)])
            block.exp2_() if exp_name == "exp2" else block.exp_()
        return u

    return fn


def profile_forward(x: dict, top: int = 7) -> list[dict]:
    """torch.profiler's split of one ``torch`` forward: the ``top`` ops by self CPU time, then ``(other)``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn = scan_fn("torch")
    with torch.no_grad():
        fn(*x.values())
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(*x.values())
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in events]
    other = ops[top:]
    rest = {"op": "(other)", "self_ms": sum(o["self_ms"] for o in other), "calls": sum(o["calls"] for o in other)}
    return ops[:top] + ([rest] if other else [])


def measure(case: dict) -> dict:
    """One (implementation, mode) case in this process (a fresh one): timing, peak memory, difference to torch."""
    import torch

    if case["threads"]:
        torch.set_num_threads(case["threads"])
    x = make_inputs(case["b"], case["d"], case["l"], case["n"])
    if case["impl"] == PROFILE:
        return {"ops": profile_forward(x)}
    fn = scan_fn(case["impl"])

    def make_call(x):
        if case["mode"] == "fwd":
            return lambda: torch.no_grad()(fn)(*x.values())
        leaves = [t.clone().requires_grad_() for t in x.values()]
        gout = torch.randn(x["u"].shape, generator=torch.Generator().manual_seed(1))
        return lambda: torch.autograd.grad(fn(*leaves), leaves, gout)

    make_call(make_inputs(1, 8, 8, 4, seed=1))()  # thread pools, lazy imports, dispatch caches: not in the peak
    with harness.PeakMemory() as peak:
        t = harness.time_call(make_call(x), repeats=case["repeats"], budget_s=case["budget_s"])
    rel_diff = None
    if case["mode"] == "fwd" and case["impl"] in IMPLS[1:]:
        with torch.no_grad():
            out, ref = fn(*x.values()).double(), scan_fn("torch")(*x.values()).double()
        rel_diff = ((out - ref).norm() / ref.norm()).item()
    return {
        "impl": case["impl"], "mode": case["mode"], "shape": {k: case[k] for k in "bdln"},
        "threads": torch.get_num_threads(), "first_call_s": t["first_call_ms"] / 1e3,
        "times_s": [ms / 1e3 for ms in t["times_ms"]], "median_s": t["median_ms"] / 1e3, "min_s": t["min_ms"] / 1e3,
        "repeats": t["samples"], "peak_extra_rss_bytes": peak.mib() * 2**20, "rel_diff_vs_torch": rel_diff,
        "cpu_per_wall": t["cpu_per_wall"], "contended": harness.contended(t, torch.get_num_threads()),
    }  # fmt: skip


def run_threads(args, threads: int) -> dict:
    """Every case at one thread count, in fresh processes -> one ``run`` of the JSON (rows, floors, profile, cases)."""
    load_start, hf_l = os.getloadavg(), max(1, args.L // 8)
    cases = [(i, m, hf_l if (i, m) == ("transformers", "fwdbwd") else args.L) for i in args.impls for m in MODES]
    cases += [(floor, "fwd", args.L) for floor in FLOORS] if "torch" in args.impls else []
    common = dict(b=args.b, d=args.d, n=args.n, threads=threads, repeats=args.repeats, budget_s=args.case_budget)
    runs = harness.in_rounds(
        cases, lambda c: harness.run_worker(__file__, {**common, "impl": c[0], "mode": c[1], "l": c[2]}),
        processes=args.processes, wait_quiet_s=args.wait_quiet, retries=args.retries,
        is_contended=lambda r: r["contended"],
    )  # fmt: skip
    merged = {}
    for (impl, mode, L), case_runs in runs.items():
        r = merged[(impl, mode)] = harness.merge_runs(case_runs, key="median_s")
        r["process_medians_s"], scale = r.pop("process_medians"), args.L / L
        r.update(extrapolated_from_l=L if L != args.L else None, median_s_full=r["median_s"] * scale,
                 min_s_full=r["min_s"] * scale, peak_full_bytes=r["peak_extra_rss_bytes"] * scale)  # fmt: skip
    floors = {exp: {k: merged[(f, "fwd")][k] for k in ("median_s", "min_s", "contended")}
              for f, exp in FLOORS.items() if (f, "fwd") in merged}  # fmt: skip
    profile_case = {**common, "impl": PROFILE, "mode": "fwd", "l": args.L}
    return {
        "threads": merged[(args.impls[0], "fwd")]["threads"], "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()], "rows": [row(args, merged, i) for i in args.impls],
        "exp_floors": floors or None, "cases": [r for (impl, _), r in merged.items() if impl not in FLOORS],
        "torch_forward_profile": harness.run_worker(__file__, profile_case)["ops"] if "torch" in args.impls else None,
    }  # fmt: skip


def row(args, cases: dict, impl: str) -> dict:
    """The table row of one implementation, with its notes (extrapolation, spread, short or contended cases)."""
    f, fb = cases[(impl, "fwd")], cases[(impl, "fwdbwd")]
    base = {m: cases[("torch", m)]["median_s_full"] for m in MODES} if ("torch", "fwd") in cases else None
    notes = []
    if fb["extrapolated_from_l"]:
        notes.append(
            f"fwd+bwd timed at l={fb['extrapolated_from_l']} and extrapolated linearly to l={args.L} (time and "
            f"memory; measured {fb['median_s'] * 1e3:,.0f} ms, {fb['peak_extra_rss_bytes'] / 2**20:,.0f} MiB)"
        )
    for c in (f, fb):
        medians = [t * 1e3 * c["median_s_full"] / c["median_s"] for t in c["process_medians_s"]]
        notes += [f"{c['mode']}: {note}" for note, applies in [
            (f"per-process medians {' / '.join(f'{m:,.1f}' for m in medians)} ms", max(medians) > 1.2 * min(medians)),
            (f"{c['repeats']} timed call(s) (slow case)", c["repeats"] < args.repeats),
            (f"attempt {c['attempts']} (earlier ones contended, discarded)", c["attempts"] > 1),
            (f"contended (other processes took CPU time; {c['cpu_per_wall']:.2f} CPU/wall)", c["contended"]),
        ] if applies]  # fmt: skip
    return {
        "impl": impl, "fwd_s": f["median_s_full"], "fwdbwd_s": fb["median_s_full"], "fwd_min_s": f["min_s_full"],
        "fwdbwd_min_s": fb["min_s_full"], "fwdbwd_over_fwd": fb["median_s_full"] / f["median_s_full"],
        "torch_speedup_fwd": f["median_s_full"] / base["fwd"] if base else None,
        "torch_speedup_fwdbwd": fb["median_s_full"] / base["fwdbwd"] if base else None,
        "peak_fwd_bytes": f["peak_full_bytes"], "peak_fwdbwd_bytes": fb["peak_full_bytes"],
        "rel_diff_vs_torch": f["rel_diff_vs_torch"], "notes": notes,
    }  # fmt: skip


def markdown(result: dict) -> str:
    """The report: per thread count, the table, the floor paragraph and the profile."""
    s, runs, p = result["shape"], result["runs"], result["processes"]
    ms, mib = (lambda v: harness.fmt(v and v * 1e3)), (lambda v: harness.fmt(v and v / 2**20, "{:,.0f}"))
    speedup = functools.partial(harness.fmt, spec="{:.1f}x")
    machine = harness.describe({**result["machine"], "torch_threads": " / ".join(str(r["threads"]) for r in runs)})
    lines = [
        f"# Selective scan on CPU: b={s['b']}, d={s['d']}, n={s['n']}, l={s['l']}, float32", "",
        f"softplus(delta + delta_bias), D and z. {machine}. Times: median (min) in ms of the timed calls after one "
        "warm-up call" + (f", each case in {p} fresh processes (median of their medians, min of their mins)" if p > 1
        else "") + "; speed-ups and ratios use medians. `torch speed-up` = that row's time / the `torch` backend's "
        "time.", "",
    ]  # fmt: skip
    header = ["implementation", "forward (ms)", "fwd+bwd (ms)", "fwd+bwd / own fwd", "torch speed-up fwd",
              "torch speed-up fwd+bwd", "peak extra RSS fwd (MiB)", "peak extra RSS fwd+bwd (MiB)",
              "notes"]  # fmt: skip
    for run in runs:
        table = []
        for r in run["rows"]:
            diff = r["rel_diff_vs_torch"]
            notes = r["notes"] + ([] if diff is None else [f"forward rel. diff vs torch {diff:.1e}"])
            table.append([f"`{r['impl']}`", f"{ms(r['fwd_s'])} ({ms(r['fwd_min_s'])})",
                          f"{ms(r['fwdbwd_s'])} ({ms(r['fwdbwd_min_s'])})", f"{r['fwdbwd_over_fwd']:.2f}",
                          speedup(r["torch_speedup_fwd"]), speedup(r["torch_speedup_fwdbwd"]),
                          mib(r["peak_fwd_bytes"]), mib(r["peak_fwdbwd_bytes"]), "; ".join(notes)])  # fmt: skip
        lines += [f"## {run['threads']} torch thread{'s' if run['threads'] != 1 else ''}", "",
                  f"Load average at start / end: {run['loadavg_start']} / {run['loadavg_end']}.", "",
                  harness.markdown_table(header, table), ""]  # fmt: skip
        if run["exp_floors"]:
            fwd = {r["impl"]: r["fwd_s"] for r in run["rows"]}
            low, high = run["exp_floors"]["exp2"], run["exp_floors"]["exp"]
            caps = ", ".join(f"`{i}` {t / low['median_s']:.1f}x" for i, t in fwd.items() if i != "torch")
            took = [f"{ms(f['median_s'])} ms" + (" (contended)" if f["contended"] else "") for f in (low, high)]
            lines += [
                f"Floor: forming `exp(delta * A)` alone over all b*d*l*n = {s['b'] * s['d'] * s['l'] * s['n']:,} "
                f"elements, in cache-sized chunks, takes {took[0]} with `torch.exp2` (as the `torch` backend does: "
                f"`exp2(delta * A log2 e)`) and {took[1]} with `torch.exp` (as `reference` and transformers do). "
                "Every scan forms these values, so no forward made of PyTorch ops can beat the `exp2` floor: the "
                f"`torch` forward is {fwd['torch'] / low['median_s']:.1f}x it, and the largest forward speed-up over "
                f"the others that such a scan could reach here is {caps}.", "",
            ]  # fmt: skip
        if run["torch_forward_profile"]:
            ops = run["torch_forward_profile"]
            total = sum(o["self_ms"] for o in ops)
            shares = [[f"`{o['op']}`", f"{100 * o['self_ms'] / total:.0f}%", f"{o['calls']:,}"] for o in ops]
            lines += [
                "Where the `torch` forward's time goes (torch.profiler, one call after a warm-up; self CPU time per "
                "op, profiling overhead included; `_SelectiveScanFn` is the Python between the ops):", "",
                harness.markdown_table(["op", "share", "calls"], shares), "",
            ]  # fmt: skip
    return "\n".join([*lines, f"Peak extra RSS: {result['memory_method']}; it counts temporaries, outputs, saved "
                      "tensors and gradients, but not the inputs.", "", f"Quiet check: {result['contention_probe']}.",
                      "", f"Command: `{result['command']}`", ""])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    installed = [i for i in IMPLS if i != "mambapy" or importlib.util.find_spec("mambapy")]
    p = harness.parser(__doc__, "small size: b=1, d=256, n=16, l=256", repeats=7, case_budget=60.0, wait_quiet=0.0,
                       processes=1, retries=0)  # fmt: skip
    p.add_argument("--threads", type=harness.int_list, default="0",
                   help="comma-separated torch thread counts, one table each (0: torch's default)")  # fmt: skip
    p.add_argument("--impls", type=lambda text: text.split(","), default=installed,
                   help=f"comma-separated, of {','.join(installed)} (those installed; default: all)")  # fmt: skip
    args = p.parse_args(argv)
    if args.worker:
        return harness.print_result(measure(json.loads(args.worker)))
    args.b, args.d, args.L, args.n = (1, 256, 256, 16) if args.quick else (2, 1536, 1568, 16)
    result = {
        "benchmark": "selective_scan_cpu", "command": harness.command_line(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": harness.machine_info(),
        "shape": {"b": args.b, "d": args.d, "l": args.L, "n": args.n, "dtype": "float32",
                  "options": "delta_softplus=True, delta_bias, D, z"},
        "repeats": args.repeats, "processes": args.processes, "transformers_backward_l": max(1, args.L // 8),
        "memory_method": "the rise of the resident-set high-water mark (VmHWM) over the RSS just before the timed "
        "calls, in a fresh process per case",
        "contention_probe": "a case that got under 85% of its threads' CPU time is re-run (`--retries`) or flagged",
        "runs": [run_threads(args, threads) for threads in args.threads],
    }  # fmt: skip
    md = markdown(result)
    print(md)
    harness.write_results(args.output_dir, "scan_cpu", payload=result, markdown=md)


if __name__ == "__main__":
    main()
