"""The ``mambavl`` console command: runs :func:`mambavl.cli.main` without importing the ``mambavl`` package first.

``import mambavl`` imports torch and transformers (the package's ``__init__`` registers the MambaVL classes with
transformers' Auto classes), several seconds on a small machine. ``mambavl --help`` and every subcommand's
``--help`` need none of it: this launcher loads ``mambavl/cli.py``, which imports only the standard library at its
top, as the module ``mambavl.cli``; the package is imported when a command runs (``from . import ...`` in the
command's function). ``python -m mambavl.cli`` (for ``torchrun`` / ``accelerate launch``) runs the same code after a
normal import.

It also holds what those standard-library-only modules share: the argparse number types (:func:`positive_int`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["checked_number", "light_module", "main", "positive_int"]


def checked_number(text: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Any:
    """``convert(text)`` when it parses and passes ``ok``, else argparse's error "expected <expected>, got <text>"
    (argparse names the option in its error)."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``mambavl``'s and ``mambavl stream``'s counts)."""
    return checked_number(text, int, lambda value: value >= 1, "a positive integer")


def light_module(name: str) -> ModuleType:
    """The module ``mambavl.<name>``, loaded from its file without running the package's ``__init__`` while the package
    is not imported yet (a plain import otherwise).

    Such a module imports only the standard library at its top; its functions' relative imports import the package
    (and torch) when a command runs. ``mambavl/cli.py`` loads its light siblings (``streaming_cli``, ``locking``) the
    same way.
    """
    full_name = f"mambavl.{name}"
    if full_name in sys.modules:
        return sys.modules[full_name]
    package = importlib.util.find_spec("mambavl")  # finds the package without running its __init__
    locations = list(package.submodule_search_locations or []) if package is not None else []
    file = Path(locations[0]) / f"{name}.py" if locations else None
    if "mambavl" in sys.modules or file is None or not file.is_file():
        return importlib.import_module(full_name)
    spec = importlib.util.spec_from_file_location(full_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[full_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[full_name]
        raise
    return module


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mambavl`` console script (see :func:`mambavl.cli.main`)."""
    return light_module("cli").main(argv)


if __name__ == "__main__":
    sys.exit(main())
