"""The ``mambavl`` console command: runs :func:`mambavl.cli.main` without importing the ``mambavl`` package first.

``import mambavl`` imports torch and transformers (the package's ``__init__`` registers the MambaVL classes with
transformers' Auto classes), several seconds on a small machine. ``mambavl --help`` and every subcommand's
``--help`` need none of it: this launcher loads ``mambavl/cli.py``, which imports only the standard library at its
top, as the module ``mambavl.cli``; the package is imported when a command runs (``from . import ...`` in the
command's function). ``python -m mambavl.cli`` (for ``torchrun`` / ``accelerate launch``) runs the same code after a
normal import.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


#: The package's modules that ``mambavl/cli.py`` imports at its top (and ``locking``, which ``mambavl train`` uses to
#: refuse a busy output folder at once), then ``cli`` itself, in load order. Each imports only the standard library at
#: its top; a relative import of one that is not loaded here runs the package's ``__init__`` (torch, transformers),
#: so a module that ``cli.py`` imports at its top must be listed.
_LIGHT_MODULES = ("streaming_cli", "locking", "cli")


def _load_cli():
    if "mambavl.cli" in sys.modules:
        return sys.modules["mambavl.cli"]
    package = importlib.util.find_spec("mambavl")  # finds the package without running its __init__
    locations = list(package.submodule_search_locations or []) if package is not None else []
    files = [Path(locations[0]) / f"{name}.py" for name in _LIGHT_MODULES] if locations else []
    if "mambavl" in sys.modules or not files or not all(file.is_file() for file in files):
        import mambavl.cli

        return mambavl.cli
    loaded = []
    try:
        for name, file in zip(_LIGHT_MODULES, files, strict=True):
            if f"mambavl.{name}" in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(f"mambavl.{name}", file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            loaded.append(spec.name)
            spec.loader.exec_module(module)
    except BaseException:
        for name in loaded:
            del sys.modules[name]
        raise
    return sys.modules["mambavl.cli"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mambavl`` console script (see :func:`mambavl.cli.main`)."""
    return _load_cli().main(argv)


if __name__ == "__main__":
    sys.exit(main())
