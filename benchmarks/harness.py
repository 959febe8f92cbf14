"""The measurement harness of ``benchmarks/``: timing, fresh processes, quiet machines, memory, the machine, results.

Every benchmark script reads as *build the cases, time them with this module, write the table*; none re-implements
what is here. Import it from a script in ``benchmarks/`` (``.parents[1]`` from ``benchmarks/gpu/``) with::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import harness

Timing: :func:`time_call`, :func:`contended`. Fresh processes (allocator state and memory high-water marks do not
leak between cases): :func:`run_worker` / :func:`print_result`, :func:`run_quietly`, :func:`in_rounds`,
:func:`merge_runs`, :func:`wait_for_quiet`. Memory: :class:`PeakMemory`, :func:`peak_mib`. Command line and machine:
:func:`parser`, :func:`machine_info`, :func:`describe`, :func:`command_line`. Results: :func:`markdown_table`,
:func:`fmt`, :func:`write_results`, :func:`read_csv`. Scripts rely on these names and signatures.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

#: The default folder of the result files.
RESULTS = Path(__file__).resolve().parent / "results"
#: A CPU timing that got less than this fraction of its threads' CPU time per wall second was contended.
CONTENDED_FRACTION = 0.85


# --- timing ----------------------------------------------------------------------------------------------------------


def _sample(fn: Callable[[], Any], k: int, cuda: bool) -> tuple[float, float, float, float]:
    """``k`` calls of ``fn`` -> (ms per call, minor faults per call, CPU seconds, wall seconds)."""
    if cuda:
        import torch

        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(k):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / k, 0.0, 0.0, 0.0
    before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(k):
        fn()
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall * 1e3 / k, (after.ru_minflt - before.ru_minflt) / k, cpu, wall


def time_call(
    fn: Callable[[], Any], *, repeats: int = 7, budget_s: float = 60.0, min_sample_ms: float = 0.0, device: Any = "cpu"
) -> dict[str, Any]:
    """Time ``fn``: one warm-up call, then up to ``repeats`` samples within ``budget_s``; returns the figures.

    Each sample averages ``calls_per_sample`` calls so that it lasts at least ``min_sample_ms`` (sized by a second,
    untimed call). A warm-up longer than a quarter of ``budget_s`` is kept as a sample (a long case then costs one or
    two calls). CUDA devices are timed with CUDA events after a synchronize. Returns ``median_ms``, ``min_ms``,
    ``times_ms``, ``samples``, ``calls_per_sample``, ``first_call_ms`` and, on CPU (``None`` on CUDA), the median
    minor page faults of one call ``faults_per_call`` and ``cpu_per_wall``, the CPU seconds the process got per wall
    second (about the thread count on a quiet machine).
    """
    cuda = str(device).startswith("cuda")
    first = _sample(fn, 1, cuda)
    budget_ms = budget_s * 1e3
    samples = [first] if first[0] > budget_ms / 4 else []
    # size the samples by a call without the first one's one-time costs (allocator growth, library set-up)
    one = _sample(fn, 1, cuda) if min_sample_ms > 0 and not samples else first
    k = max(1, math.ceil(min_sample_ms / max(one[0], 1e-3)))
    more = min(repeats - len(samples), int((budget_ms - first[0]) // max(one[0] * k, 1e-3)))
    samples += [_sample(fn, k, cuda) for _ in range(max(more, 0 if samples else 1))]
    times = [s[0] for s in samples]
    wall = sum(s[3] for s in samples)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "times_ms": times,
        "samples": len(samples),
        "calls_per_sample": k if samples[-1] is not first else 1,
        "first_call_ms": first[0],
        "faults_per_call": None if cuda else statistics.median(s[1] for s in samples),
        "cpu_per_wall": None if cuda or wall <= 0 else sum(s[2] for s in samples) / wall,
    }


def contended(timing: dict[str, Any], threads: int) -> bool:
    """Whether a CPU timing of :func:`time_call` got less than ``CONTENDED_FRACTION`` of ``threads`` cores."""
    share = timing.get("cpu_per_wall")
    return share is not None and share < CONTENDED_FRACTION * threads


# --- fresh processes and quiet machines ------------------------------------------------------------------------------


def run_worker(script: str | Path, case: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Measure ``case`` in a fresh ``python script --worker '<case as JSON>'``; returns its JSON result.

    The script answers with ``print_result(measure(json.loads(args.worker)))``; the last ``{``-line of its stdout is
    the result. A failure raises ``RuntimeError`` with the end of its stderr.
    """
    command = [sys.executable, str(script), "--worker", json.dumps(case)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{Path(script).name}: the case {case} failed (exit {proc.returncode}): {proc.stderr.strip()[-3000:]}"
        )
    return json.loads(lines[-1])


def print_result(result: dict[str, Any]) -> None:
    """The worker's answer to :func:`run_worker`: ``result`` as one JSON line on stdout."""
    print(json.dumps(result), flush=True)


def _running_tasks() -> float:
    """Runnable tasks on the machine besides this sampler, averaged over one second (from /proc/loadavg)."""
    samples = []
    for _ in range(5):
        try:
            samples.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return 0.0
        time.sleep(0.2)
    return sum(samples) / len(samples)


def wait_for_quiet(max_wait_s: float) -> float:
    """Wait (at most ``max_wait_s`` seconds) until no other task is running; returns the seconds waited."""
    start = time.monotonic()
    while max_wait_s > 0 and _running_tasks() >= 0.5 and time.monotonic() - start < max_wait_s:
        time.sleep(5)
    return time.monotonic() - start


def run_quietly(
    measure: Callable[[], dict[str, Any]],
    *,
    wait_quiet_s: float = 0.0,
    retries: int = 0,
    is_contended: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """``measure()`` on a quiet machine, again while ``is_contended(result)`` (at most ``retries`` times).

    The last attempt is kept, with ``attempts`` and ``waited_for_quiet_s`` added.
    """
    waited = 0.0
    for attempt in range(1, retries + 2):
        waited += wait_for_quiet(wait_quiet_s)
        result = measure()
        if is_contended is None or not is_contended(result):
            break
        print(f"    contended (attempt {attempt}): {'retrying' if attempt <= retries else 'kept'}", file=sys.stderr)
    return {**result, "attempts": attempt, "waited_for_quiet_s": waited}


def in_rounds(
    cases: Iterable[Hashable], measure: Callable[[Any], dict[str, Any]], *, processes: int = 1, **quiet: Any
) -> dict[Any, list[dict[str, Any]]]:
    """``processes`` rounds over all ``cases`` (each sees the machine in the same states) via :func:`run_quietly`."""
    cases = list(cases)
    runs: dict[Any, list[dict[str, Any]]] = {case: [] for case in cases}
    for round_ in range(processes):
        for case in cases:
            print(f"[round {round_ + 1}/{processes}] {case} ...", file=sys.stderr, flush=True)
            runs[case].append(run_quietly(lambda case=case: measure(case), **quiet))
    return runs


def merge_runs(runs: list[dict[str, Any]], key: str = "median_ms") -> dict[str, Any]:
    """One result from a case's runs in several processes: median of the ``key`` values, min of every ``min_*``.

    Also ``process_medians`` (the runs' ``key``), the median of every ``peak*``, ``contended`` if any run was.
    """
    merged = dict(runs[0])
    merged[key] = statistics.median(r[key] for r in runs)
    merged["process_medians"] = [r[key] for r in runs]
    for name in runs[0]:
        values = [r[name] for r in runs if isinstance(r.get(name), int | float) and not isinstance(r[name], bool)]
        if name.startswith("min_") and values:
            merged[name] = min(values)
        elif name.startswith("peak") and values:
            merged[name] = statistics.median(values)
    merged["contended"] = any(r.get("contended") for r in runs)
    merged["attempts"] = max(r.get("attempts", 1) for r in runs)
    return merged


# --- memory ----------------------------------------------------------------------------------------------------------


def _proc_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), None)
    except OSError:
        return None


class PeakMemory:
    """``with PeakMemory() as peak: ...; peak.mib()``: the peak memory since the block's start, in MiB.

    CPU: the resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``; ``ru_maxrss`` where
    that is not possible) minus the RSS at the start. CUDA: ``max_memory_allocated`` minus the memory allocated at
    the start. :meth:`mib` may be read inside the block.
    """

    def __init__(self, device: Any = "cpu"):
        self.cuda = str(device).startswith("cuda")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.hwm = True
        except OSError:
            self.hwm = False
        if self.hwm and _proc_kib("VmRSS") is not None:
            self.base = _proc_kib("VmRSS") * 1024
        else:
            self.hwm, self.base = False, self._max_rss()
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    @staticmethod
    def _max_rss() -> int:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # KiB on Linux

    def mib(self) -> float:
        """Peak since the start, in MiB."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        peak = (_proc_kib("VmHWM") or 0) * 1024 if self.hwm else self._max_rss()
        return max(peak - self.base, 0) / 2**20


def peak_mib(fn: Callable[[], Any], device: Any = "cpu") -> float:
    """Peak memory of one call of ``fn`` above what was in use before it, in MiB (after a garbage collection)."""
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    with PeakMemory(device) as peak:
        fn()
    return peak.mib()


# --- the machine -----------------------------------------------------------------------------------------------------


def machine_info(device: Any = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: cpu, logical_cpus, platform, python, torch, transformers, torch_threads,
    malloc_env, and on CUDA device_name, torch_cuda, cudnn, gpu_memory_gib."""
    import torch

    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers_version,
        "torch_threads": torch.get_num_threads(),
        "malloc_env": " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")),
    }  # fmt: skip
    if str(device).startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(
            device_name=props.name, torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
        )  # fmt: skip
    return info


def describe(info: dict[str, Any]) -> str:
    """One line from :func:`machine_info`: the CPU or GPU, the versions, the torch threads."""
    where = info.get("device_name") or f"{info['cpu']} ({info['logical_cpus']} logical CPUs)"
    cuda = f" (CUDA {info['torch_cuda']})" if info.get("torch_cuda") else ""
    return (f"{where}, torch {info['torch']}{cuda}, transformers {info['transformers']}, Python {info['python']}, "
            f"{info['torch_threads']} torch thread{'' if info['torch_threads'] == 1 else 's'}")  # fmt: skip


def command_line() -> str:
    """``python <script> <arguments>`` of this process, the script relative to the working folder."""
    script = os.path.relpath(sys.argv[0], Path.cwd()) if sys.argv and sys.argv[0] else "python"
    return "python " + " ".join(shlex.quote(a) for a in [script, *sys.argv[1:]])


# --- command line ----------------------------------------------------------------------------------------------------

#: The options scripts share: name -> (type, help). Their defaults are the script's.
SHARED_OPTIONS: dict[str, tuple[type, str]] = {
    "repeats": (int, "timed samples per case, after one warm-up call"),
    "threads": (int, "torch CPU threads (0: torch's default)"),
    "case_budget": (float, "seconds of timed samples per case"),
    "wait_quiet": (float, "seconds to wait for a quiet machine before a case"),
    "processes": (int, "fresh processes per case"),
    "retries": (int, "times a contended case is measured again"),
}


def int_list(text: str) -> list[int]:
    """An option's comma-separated integers (``"2,1"`` -> ``[2, 1]``), for ``add_argument(type=int_list)``."""
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 2,1; got {text!r}") from None


def parser(doc: str, quick_help: str, **defaults: Any) -> argparse.ArgumentParser:
    """A script's parser: ``--quick``, ``--output-dir``, ``--worker`` and the shared options named in ``defaults``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--output-dir", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    for name, default in defaults.items():
        kind, text = SHARED_OPTIONS[name]
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=kind, default=default, help=f"{text} (default: %(default)s)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # a case as JSON: measure it here (see run_worker)
    return p


# --- results ---------------------------------------------------------------------------------------------------------


def fmt(value: Any, spec: str = "{:,.1f}") -> str:
    """``spec.format(value)``, or ``"-"`` for ``None``; non-finite floats as ``inf`` / ``nan``."""
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return spec.format(value)


def markdown_table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """A Markdown table: ``header``, then one line a row (cells as ``str``, a ``|`` inside a cell becomes ``/``)."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj if obj is None or isinstance(obj, bool | int | str) else str(obj)


def write_results(
    out_dir: str | Path,
    stem: str,
    *,
    payload: Any = None,
    markdown: str | None = None,
    csv_rows: list[dict[str, Any]] | None = None,
    csv_fields: list[str] | None = None,
) -> list[Path]:
    """Write ``stem.json`` / ``stem.md`` / ``stem.csv`` (those given) into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if payload is not None:
        written.append(out / f"{stem}.json")
        written[-1].write_text(json.dumps(_json_safe(payload), indent=2) + "\n")
    if markdown is not None:
        written.append(out / f"{stem}.md")
        written[-1].write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    if csv_rows is not None:
        written.append(out / f"{stem}.csv")
        with open(written[-1], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=csv_fields or list(csv_rows[0]), extrasaction="ignore")
            writer.writeheader()
            for row in csv_rows:
                writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in row.items()})
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return written


def _number(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a CSV (as :func:`write_results` writes them), numbers parsed, empty cells ``None``."""
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
