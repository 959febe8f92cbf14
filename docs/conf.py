"""Sphinx configuration of the MambaVL documentation.

Builds offline: intersphinx reads the small inventories committed in ``_inventories/`` (made by
``_inventories/make_inventories.py``) instead of downloading ``objects.inv`` files.

    sphinx-build -W --keep-going -b html docs docs/_build/html        # the site
    sphinx-build -W --keep-going -b doctest docs docs/_build/doctest  # run the examples of the pages and docstrings
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO / "src"))  # works from a checkout even without `pip install -e .`

# Nothing in the build may reach the network (the doctests load local folders only).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import mambavl  # noqa: E402

# -- project ---------------------------------------------------------------------------------------------------------
project = "MambaVL"
author = "The MambaVL developers"
copyright = "The MambaVL developers, Apache-2.0"
release = mambavl.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]  # _generated/ is included by pages

# -- MyST -------------------------------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# -- HTML -------------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"MambaVL {release}"
html_static_path = ["_static"]

# -- autodoc / napoleon -----------------------------------------------------------------------------------------------
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"
# Annotations that stay strings (``from __future__ import annotations``) in some signatures.
autodoc_type_aliases = {"ScoresKind": "mambavl.metrics.ScoresKind"}
autodoc_inherit_docstrings = False  # transformers' base-class docstrings are not written for Sphinx
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# -- doctest ----------------------------------------------------------------------------------------------------------
# Examples in the package's docstrings use the names of their module without importing them (as under
# `pytest --doctest-modules`); the public names of every namespace are imported for them. The pages import what
# they use.
doctest_global_setup = f"""
from pathlib import Path

import torch
import transformers

DOCS = Path({str(DOCS)!r})  # the documentation's source folder (example files live there)

torch.manual_seed(0)
transformers.utils.logging.disable_progress_bar()

from mambavl import *
from mambavl.data import *
from mambavl.metrics import *
from mambavl.ops import *
from mambavl.questions import *
from mambavl.training import *
from mambavl.utils import *
"""

# -- intersphinx, offline ---------------------------------------------------------------------------------------------
# (base URL the inventory's relative URIs are joined to, local inventory file). The inventories list only the names
# these docs refer to, each with its real URL; rebuild them with `python docs/_inventories/make_inventories.py`.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", "_inventories/python.inv"),
    "torch": ("https://docs.pytorch.org/docs/stable/", "_inventories/torch.inv"),
    "transformers": ("https://huggingface.co/docs/transformers/", "_inventories/transformers.inv"),
    "datasets": ("https://huggingface.co/docs/datasets/", "_inventories/datasets.inv"),
    "accelerate": ("https://huggingface.co/docs/accelerate/", "_inventories/accelerate.inv"),
    "numpy": ("https://numpy.org/doc/stable/", "_inventories/numpy.inv"),
}
intersphinx_timeout = 1

# -- nitpicky ---------------------------------------------------------------------------------------------------------
nitpicky = True
nitpick_ignore = [
    # Base classes that transformers does not document.
    ("py:class", "transformers.modeling_layers.GradientCheckpointingLayer"),
    ("py:class", "transformers.video_processing_utils.VideoProcessorMixin"),
]

# Public namespaces whose names the API reference documents; `resolve_public_alias` maps the module paths Python
# reports (`mambavl.data.video.decode_frames`) to these documented names (`mambavl.data.decode_frames`).
PUBLIC_NAMESPACES = (
    "mambavl",
    "mambavl.data",
    "mambavl.training",
    "mambavl.metrics",
    "mambavl.questions",
    "mambavl.ops",
    "mambavl.fusion",
    "mambavl.utils",
)


def _lookup(path: str):
    """The object at a dotted path (module attributes and class members), or None."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def resolve_public_alias(app, env, node, contnode):
    """Resolve references that name an object the way the package's code sees it.

    - ``mambavl.data.video.decode_frames`` (the defining module, as autodoc writes type hints) resolves to the
      name the API reference documents, ``mambavl.data.decode_frames``;
    - a name relative to the module (and class) of the docstring it is written in (``write_video`` in the docstring
      of ``mambavl.data.video``) resolves the same way;
    - a third-party name as the module imports it (``Path`` in a string annotation of ``mambavl.questions``) is
      looked up as ``pathlib.Path`` in the intersphinx inventories.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~.")
    if target.startswith("mambavl."):
        candidates = [target]
    else:
        module, cls = node.get("py:module") or "", node.get("py:class")
        if not module.startswith("mambavl"):
            return None
        candidates = [f"{module}.{cls}.{target}"] if cls else []
        candidates.append(f"{module}.{target}")
    for target in candidates:
        if (obj := _lookup(target)) is not None:
            break
    else:
        return None
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if inspect.isclass(obj) and module and qualname and not module.startswith("mambavl"):
        from sphinx.ext import intersphinx

        node["reftarget"] = f"{module}.{qualname}"
        return intersphinx.missing_reference(app, env, node, contnode)
    domain = env.domains["py"]
    parts = target.split(".")
    # A module-level object, or a member of a class: find the documented owner and keep the member path.
    for split in range(len(parts), 1, -1):
        owner = _lookup(".".join(parts[:split]))
        if owner is None:
            continue
        if inspect.ismodule(owner):
            break
        for namespace in PUBLIC_NAMESPACES:
            package = importlib.import_module(namespace)
            for name in getattr(package, "__all__", ()):
                if getattr(package, name, None) is owner:
                    candidate = ".".join([namespace, name, *parts[split:]])
                    if candidate != target and candidate in domain.objects:
                        node["reftarget"] = candidate
                        return domain.resolve_xref(
                            env, node.get("refdoc"), app.builder, node.get("reftype"), candidate, node, contnode
                        )
    return None


_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")


def headings_to_rubrics(app, what, name, obj, options, lines):
    """Turn reST section titles in docstrings ("Title" + "-----") into rubrics.

    Module docstrings of the package use section titles; inside an autodoc directive a section title is an error
    ("Unexpected section title"), a rubric renders the same heading without one.
    """
    i = 0
    while i < len(lines) - 1:
        title, underline = lines[i], lines[i + 1]
        if (
            title.strip()
            and not title.startswith(" ")
            and _UNDERLINE.match(underline)
            and len(underline.strip()) >= len(title.strip())
            and (i == 0 or not lines[i - 1].strip())
        ):
            lines[i : i + 2] = [f".. rubric:: {title.strip()}", ""]
        i += 1


def _attribute_comment(namespace: str, attr: str, obj) -> list[str] | None:
    """The ``#:`` documentation comment of ``attr`` in the submodule of ``namespace`` that defines ``obj``."""
    import pkgutil

    from sphinx.pycode import ModuleAnalyzer

    package = importlib.import_module(namespace)
    for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
        module = importlib.import_module(f"{namespace}.{info.name}")
        if getattr(module, attr, None) is not obj:
            continue
        docs = ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
        if ("", attr) in docs:
            return list(docs[("", attr)])
    return None


def prose_attribute_docs(app, what, name, obj, options, lines):
    """Docstrings of constants, attributes and properties are prose in this package.

    Napoleon reads the first line of such a docstring as ``type: description`` ("Prepositions and adverbial
    particles: masked ..." would become a type). A leading empty comment turns that off. A re-exported constant
    (``mambavl.data.ANNOTATION_COLUMNS``) gets the ``#:`` comment of the module that defines it, instead of the
    docstring of its type (``tuple``) that autodoc would show.
    """
    if what not in ("data", "attribute", "property"):
        return
    if what == "data" and type(obj).__doc__ and lines and lines[0] == type(obj).__doc__.strip().splitlines()[0]:
        namespace, _, attr = name.rpartition(".")
        lines[:] = _attribute_comment(namespace, attr, obj) or []
    if lines and ":" in lines[0]:
        lines[:0] = ["..", ""]  # an empty comment: napoleon takes it as the "type: description" line


_SLASHED_ARGS = re.compile(r"^(\s+)([A-Za-z_]\w*(?: / [A-Za-z_]\w*)+):(\s|$)")


def slashed_argument_names(app, what, name, obj, options, lines):
    """Google-style entries documenting several arguments at once as ``a / b: ...`` become ``a, b: ...``.

    Napoleon splits ``a, b`` into two documented parameters; ``a / b`` would reach Sphinx as the field
    ``:param a / b:``, read as a parameter ``b`` of type ``a /``.
    """
    for i, line in enumerate(lines):
        if match := _SLASHED_ARGS.match(line):
            lines[i] = match.group(1) + match.group(2).replace(" / ", ", ") + ":" + line[match.end(2) + 1 :]


def write_cli_help(app):
    """Write the help of `mambavl` and of each of its commands to _generated/cli.md (included by api/cli.md), so the
    page always shows the real options, and new commands appear by themselves."""
    import argparse

    from mambavl.cli import build_parser

    parser = build_parser()
    sections = ["```text", parser.format_help().rstrip(), "```", ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                sections += [f"## `mambavl {command}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    text = "\n".join(sections)
    path = DOCS / "_generated" / "cli.md"
    path.parent.mkdir(exist_ok=True)
    if not path.is_file() or path.read_text() != text:  # an unchanged file keeps Sphinx's incremental build
        path.write_text(text)


def setup(app):
    os.environ["COLUMNS"] = "100"  # argparse wraps --help to the terminal width: fix it for reproducible pages
    app.connect("builder-inited", write_cli_help)
    app.connect("autodoc-process-docstring", headings_to_rubrics, priority=100)
    app.connect("autodoc-process-docstring", prose_attribute_docs, priority=100)
    app.connect("autodoc-process-docstring", slashed_argument_names, priority=100)
    app.connect("missing-reference", resolve_public_alias, priority=100)
