"""The documentation: the API reference covers the public API, the intersphinx inventories are current, and the
Sphinx builds (HTML, and the doctests of the pages and docstrings) pass with warnings as errors, offline."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def load_script(path: Path):
    """Import a file of docs/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Namespaces whose `__all__` the API reference must cover: the public namespaces the docs build resolves names to.
NAMESPACES = load_script(DOCS / "conf.py").PUBLIC_NAMESPACES
# `.. autoclass:: mambavl.X` (reST) or "```{autoclass} mambavl.X" (MyST), and the plain `py:` directives.
DIRECTIVE = re.compile(r"^\s*(?:\.\. |```\{)(?:auto\w+|py:\w+)(?:::|\})\s+([\w.]+)", re.MULTILINE)


def documented_names() -> set[str]:
    names: set[str] = set()
    for path in sorted((DOCS / "api").glob("*")):
        if path.suffix in (".rst", ".md"):
            names.update(DIRECTIVE.findall(path.read_text(encoding="utf-8")))
    return {name for name in names if name.startswith("mambavl")}  # (`py:attribute:: skipped` inside a class)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_public_name_is_in_the_api_reference(namespace):
    module = importlib.import_module(namespace)
    documented = documented_names()
    missing = [name for name in module.__all__ if f"{namespace}.{name}" not in documented]
    assert not missing, (
        f"{namespace}.__all__ names missing from docs/api/ (add an autodoc directive for each): {missing}"
    )


def test_api_reference_documents_only_existing_objects():
    for qualified in documented_names():
        module_name = qualified.rpartition(".")[0]
        try:  # a module itself, or an attribute (possibly of a class) of the longest importable prefix
            importlib.import_module(qualified)
            continue
        except ImportError:
            pass
        parts = qualified.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for part in parts[cut:]:
                assert hasattr(obj, part), f"docs/api/ documents {qualified}, which does not exist"
                obj = getattr(obj, part)
            break
        else:
            pytest.fail(f"docs/api/ documents {qualified}: no importable module in {module_name!r}")


def test_committed_intersphinx_inventories_match_their_script():
    script = load_script(DOCS / "_inventories" / "make_inventories.py")
    from sphinx.util.inventory import InventoryFile

    for stem, (project, version, entries) in script.PROJECTS.items():
        path = DOCS / "_inventories" / f"{stem}.inv"
        assert path.read_bytes() == script.inventory_bytes(project, version, entries), (
            f"{path} is stale: run python docs/_inventories/make_inventories.py"
        )
        inventory = InventoryFile.loads(path.read_bytes(), uri=script.BASES[stem])
        assert sum(len(objects) for objects in inventory.data.values()) == len(entries)  # every entry parses back
    # The base URLs the script joins relative URIs to are the ones conf.py gives intersphinx.
    conf = (DOCS / "conf.py").read_text()
    for stem, base in script.BASES.items():
        assert f'"{stem}": ("{base}", "_inventories/{stem}.inv")' in conf


def test_pages_and_guide_files_exist():
    for page in ("index", "installation", "quickstart", "benchmarks"):
        assert (DOCS / f"{page}.md").is_file(), page
    for page in ("concepts/ssm_fusion", "concepts/questions", "guides/finetuning", "guides/trainer",
                 "guides/epic_kitchens"):  # fmt: skip
        assert (DOCS / f"{page}.md").is_file(), page
    for image in ("ssm_fusion.png", "scan_modes.png"):
        assert (DOCS / "_static" / image).stat().st_size > 10_000, image
    for result in ("scan_cpu.md", "efficiency.md", "fusion_scaling_cpu.md", "fusion_scaling_cpu.png",
                   "cpu_allocator.md", "fusion_ablation.md"):  # fmt: skip
        assert (REPO / "benchmarks" / "results" / result).is_file(), f"docs/benchmarks.md includes {result}"


def sphinx(builder: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder,
        "-d", str(out / "doctrees"), str(DOCS), str(out / builder),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


@pytest.mark.slow
def test_sphinx_html_and_doctest_builds_pass_with_warnings_as_errors(tmp_path):
    html = sphinx("html", tmp_path)
    assert html.returncode == 0, html.stdout[-3000:] + html.stderr[-5000:]
    index = (tmp_path / "html" / "index.html").read_text()
    assert "MambaVL" in index and "ssm_fusion.png" in index
    api = (tmp_path / "html" / "api" / "models.html").read_text()
    assert 'id="mambavl.MambaVLForActionRecognition.predict_actions"' in api
    benchmarks = (tmp_path / "html" / "benchmarks.html").read_text()
    assert "Selective scan on CPU" in benchmarks and "fusion_scaling_cpu.png" in benchmarks

    doctest = sphinx("doctest", tmp_path)  # reuses the doctrees of the HTML build
    assert doctest.returncode == 0, doctest.stdout[-5000:] + doctest.stderr[-3000:]
    report = (tmp_path / "doctest" / "output.txt").read_text()
    summary = re.search(r"(\d+) tests\s+(\d+) failures? in tests", report)
    assert summary and int(summary.group(1)) > 50 and int(summary.group(2)) == 0, report[-3000:]


def test_lora_share_of_trainable_weights_in_the_fine_tuning_guide():
    # the guide said LoRA on the fusion trains "a few percent of the weights"; its configuration trains 0.34% of the
    # ViT-B model (built on the meta device: shapes only)
    import torch

    peft = pytest.importorskip("peft")
    from transformers import RobertaConfig, VideoMAEConfig

    from mambavl import MambaVLConfig, MambaVLForActionRecognition

    section = (DOCS / "guides" / "finetuning.md").read_text().split("## 9. LoRA fine-tuning", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    targets = ast.literal_eval(re.search(r"target_modules=(\[[^]]*\])", code).group(1))
    config = MambaVLConfig(
        video_config=VideoMAEConfig(num_frames=16, image_size=224), text_config=RobertaConfig(), hidden_size=768,
        num_verb_classes=97, num_noun_classes=300,
    )  # fmt: skip
    with torch.device("meta"):
        model = MambaVLForActionRecognition(config)
    lora = peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets, modules_to_save=["verb_head", "noun_head"])
    trainable, total = peft.get_peft_model(model, lora).get_nb_trainable_parameters()
    words = " ".join(section.split("```python", 1)[0].split())
    assert f"{trainable:,} of the {total / 1e6:.1f}M parameters ({100 * trainable / total:.2f}%)" in words, words


def _imported_and_used(source: str) -> tuple[set[str], set[str]]:
    imported, used = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imported.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            used.add(node.id)
    return imported, used


@pytest.mark.parametrize("page", ["guides/huggingface.md"])
def test_doctest_blocks_import_what_they_use(page):
    """A reader copies the visible ``{doctest}`` blocks, not the hidden ``{testsetup}``: a module the setup imports
    and the blocks use must be imported in the blocks too (``os.listdir`` was a NameError when copied)."""
    import doctest

    text = (DOCS / page).read_text(encoding="utf-8")
    setup = "\n".join(re.findall(r"^```\{testsetup\}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL))
    blocks = "\n".join(re.findall(r"^```\{doctest\}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL))
    visible = "\n".join(example.source for example in doctest.DocTestParser().get_examples(blocks))
    setup_imports, _ = _imported_and_used(setup)
    visible_imports, used = _imported_and_used(visible)
    assert not (setup_imports & used) - visible_imports, f"{page}: used but imported only in the testsetup"
