"""One writer per output folder: a lock that a training run holds on its ``output_dir`` while it writes there.

A second run into the same folder (a second ``mambavl train``, or a ``--resume`` started while the first run is
still going) would interleave checkpoints and metrics with the first one's. :func:`output_dir_lock` takes an
operating-system lock (`filelock <https://py-filelock.readthedocs.io>`_: ``fcntl.flock`` on Unix, ``msvcrt`` on
Windows) on ``<output_dir>/.mambavl.lock`` and records the holder (pid, host, start time) next to it in
``.mambavl.lock.json``. The operating system drops the lock when the holding process ends, however it ends (even
``kill -9``), so a killed run never leaves a stale lock behind: ``--resume`` just takes it.

Only the main process of a multi-process run (``RANK`` 0) takes the lock; the others write what the main process
tells them to. (On a filesystem without ``flock``, such as some network mounts, ``filelock`` may fall back to a lock
file whose mere existence is the lock; a killed run then leaves it behind, and the error names the file to delete.)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "OutputDirLockedError", "locks_output_dir", "output_dir_lock"]

LOCK_NAME = ".mambavl.lock"
HOLDER_NAME = ".mambavl.lock.json"
_RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


class OutputDirLockedError(RuntimeError):
    """Another live run is writing into the output folder. Attributes: ``output_dir`` and ``holder`` (a dict with
    ``pid``, ``host`` and ``started``, or ``{}`` when the holder did not say)."""

    def __init__(self, output_dir: Path, holder: dict[str, Any]):
        self.output_dir, self.holder = output_dir, holder
        who = (
            f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}, running since "
            f"{holder.get('started', '?')}"
            if holder
            else "another process"
        )
        super().__init__(
            f"{output_dir} is in use by another training run ({who}). Wait for it to finish or stop it, or choose "
            f"another output directory. (The lock is {output_dir / LOCK_NAME}; it is released when its process "
            "ends, so a run that was killed never blocks --resume.)"
        )


def _is_main_process() -> bool:
    for name in _RANK_VARIABLES:
        if os.environ.get(name, "").strip().lstrip("-").isdigit():
            return int(os.environ[name]) == 0
    return True


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def output_dir_lock(output_dir: str | os.PathLike, *, main_process: bool | None = None) -> Iterator[None]:
    """Hold the lock of ``output_dir`` (created if missing) for the duration of the ``with`` block.

    Args:
        output_dir: the folder a run writes into.
        main_process: whether this process takes the lock; ``None`` (default): only the process of rank 0
            (``RANK``, as set by ``torchrun`` / ``accelerate launch``; a process without a rank is rank 0).

    Raises:
        OutputDirLockedError: another live process holds the lock (it fails at once, without waiting), naming the
            folder and the holder's pid and host.
    """
    from filelock import FileLock, Timeout

    if not (_is_main_process() if main_process is None else main_process):
        yield
        return
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    holder_file = folder / HOLDER_NAME
    lock = FileLock(folder / LOCK_NAME, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise OutputDirLockedError(folder, _read_holder(holder_file)) from None
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        holder_file.write_text(json.dumps(holder))
        yield
    finally:
        with contextlib.suppress(OSError):
            holder_file.unlink()
        lock.release()


def locks_output_dir(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a function that takes a ``config`` argument with an ``output_dir`` (:func:`mambavl.training.train`):
    each call runs holding :func:`output_dir_lock` on that folder."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        config = signature.bind(*args, **kwargs).arguments["config"]
        with output_dir_lock(config.output_dir):
            return func(*args, **kwargs)

    return wrapper
