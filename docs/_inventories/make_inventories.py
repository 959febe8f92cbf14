"""Write the small intersphinx inventories the documentation builds with, offline.

Intersphinx normally downloads each project's ``objects.inv``; the documentation build must not use the network,
and Hugging Face's documentation (built with doc-builder, not Sphinx) publishes no inventory at all. So this script
writes one inventory per project, listing only the names our pages and docstrings refer to, each with its real URL.
``conf.py`` points ``intersphinx_mapping`` at these files.

Run it after adding a reference to a name that is not listed yet (the docs build with ``-W`` says which one):

    python docs/_inventories/make_inventories.py

Each entry is ``(name, role, relative URL)``; the URL is joined to the project's base URL in ``conf.py``. Names are
listed under every module path Python reports for them (``torch.nn.modules.module.Module`` as well as
``torch.nn.Module``), since autodoc writes type hints with the defining module.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Base URLs (must match conf.py's intersphinx_mapping).
BASES = {
    "python": "https://docs.python.org/3/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "transformers": "https://huggingface.co/docs/transformers/",
    "datasets": "https://huggingface.co/docs/datasets/",
    "accelerate": "https://huggingface.co/docs/accelerate/",
    "numpy": "https://numpy.org/doc/stable/",
}

PYTHON = [
    ("collections.abc.Callable", "class", "library/collections.abc.html#collections.abc.Callable"),
    ("collections.abc.Iterable", "class", "library/collections.abc.html#collections.abc.Iterable"),
    ("collections.abc.Iterator", "class", "library/collections.abc.html#collections.abc.Iterator"),
    ("collections.abc.Mapping", "class", "library/collections.abc.html#collections.abc.Mapping"),
    ("collections.abc.Sequence", "class", "library/collections.abc.html#collections.abc.Sequence"),
    ("os.PathLike", "class", "library/os.html#os.PathLike"),
    ("pathlib.Path", "class", "library/pathlib.html#pathlib.Path"),
    ("random.Random", "class", "library/random.html#random.Random"),
    ("ast.literal_eval", "function", "library/ast.html#ast.literal_eval"),
    ("fractions.Fraction", "class", "library/fractions.html#fractions.Fraction"),
    ("logging", "module", "library/logging.html#module-logging"),
    ("argparse", "module", "library/argparse.html#module-argparse"),
    ("dataclasses.dataclass", "function", "library/dataclasses.html#dataclasses.dataclass"),
]

_TORCH_DATA = "data.html#"
TORCH = [
    ("torch.Tensor", "class", "tensors.html#torch.Tensor"),
    ("torch.Generator", "class", "generated/torch.Generator.html#torch.Generator"),
    ("torch.device", "class", "tensor_attributes.html#torch.device"),
    ("torch.dtype", "class", "tensor_attributes.html#torch.dtype"),
    ("torch.nn.Module", "class", "generated/torch.nn.Module.html#torch.nn.Module"),
    ("torch.nn.modules.module.Module", "class", "generated/torch.nn.Module.html#torch.nn.Module"),
    ("torch.nn.CrossEntropyLoss", "class", "generated/torch.nn.CrossEntropyLoss.html#torch.nn.CrossEntropyLoss"),
    (
        "torch.nn.functional.scaled_dot_product_attention",
        "function",
        "generated/torch.nn.functional.scaled_dot_product_attention.html"
        "#torch.nn.functional.scaled_dot_product_attention",
    ),
    (
        "torch.nn.functional.interpolate",
        "function",
        "generated/torch.nn.functional.interpolate.html#torch.nn.functional.interpolate",
    ),
    ("torch.utils.data.Dataset", "class", _TORCH_DATA + "torch.utils.data.Dataset"),
    ("torch.utils.data.dataset.Dataset", "class", _TORCH_DATA + "torch.utils.data.Dataset"),
    ("torch.utils.data.DataLoader", "class", _TORCH_DATA + "torch.utils.data.DataLoader"),
    ("torch.utils.data.dataloader.DataLoader", "class", _TORCH_DATA + "torch.utils.data.DataLoader"),
    ("torch.utils.data.Sampler", "class", _TORCH_DATA + "torch.utils.data.Sampler"),
    ("torch.utils.data.sampler.Sampler", "class", _TORCH_DATA + "torch.utils.data.Sampler"),
    (
        "torch.utils.flop_counter.FlopCounterMode",
        "class",
        "generated/torch.utils.flop_counter.FlopCounterMode.html#torch.utils.flop_counter.FlopCounterMode",
    ),
    ("torch.distributed.run", "module", "elastic/run.html#module-torch.distributed.run"),
]

_CONFIG = "main_classes/configuration#transformers.PreTrainedConfig"
_MODEL = "main_classes/model#transformers.PreTrainedModel"
_OUTPUT = "main_classes/output#transformers.utils.ModelOutput"
_BATCH_FEATURE = "main_classes/image_processor#transformers.BatchFeature"
TRANSFORMERS = [
    ("transformers.AutoConfig", "class", "model_doc/auto#transformers.AutoConfig"),
    ("transformers.AutoModel", "class", "model_doc/auto#transformers.AutoModel"),
    (
        "transformers.AutoModelForVideoClassification",
        "class",
        "model_doc/auto#transformers.AutoModelForVideoClassification",
    ),
    ("transformers.AutoProcessor", "class", "model_doc/auto#transformers.AutoProcessor"),
    ("transformers.AutoTokenizer", "class", "model_doc/auto#transformers.AutoTokenizer"),
    ("transformers.PreTrainedConfig", "class", _CONFIG),
    ("transformers.PretrainedConfig", "class", _CONFIG),
    ("transformers.configuration_utils.PreTrainedConfig", "class", _CONFIG),
    ("transformers.configuration_utils.PretrainedConfig", "class", _CONFIG),
    ("transformers.PreTrainedModel", "class", _MODEL),
    ("transformers.modeling_utils.PreTrainedModel", "class", _MODEL),
    (
        "transformers.PreTrainedModel.from_pretrained",
        "method",
        "main_classes/model#transformers.PreTrainedModel.from_pretrained",
    ),
    (
        "transformers.PreTrainedModel.save_pretrained",
        "method",
        "main_classes/model#transformers.PreTrainedModel.save_pretrained",
    ),
    ("transformers.ProcessorMixin", "class", "main_classes/processors#transformers.ProcessorMixin"),
    ("transformers.processing_utils.ProcessorMixin", "class", "main_classes/processors#transformers.ProcessorMixin"),
    ("transformers.BatchFeature", "class", _BATCH_FEATURE),
    ("transformers.image_processing_base.BatchFeature", "class", _BATCH_FEATURE),
    ("transformers.feature_extraction_utils.BatchFeature", "class", _BATCH_FEATURE),
    ("transformers.utils.ModelOutput", "class", _OUTPUT),
    ("transformers.utils.generic.ModelOutput", "class", _OUTPUT),
    (
        "transformers.modeling_outputs.BaseModelOutput",
        "class",
        "main_classes/output#transformers.modeling_outputs.BaseModelOutput",
    ),
    ("transformers.PreTrainedTokenizerBase", "class", "main_classes/tokenizer#transformers.PreTrainedTokenizerBase"),
    ("transformers.Trainer", "class", "main_classes/trainer#transformers.Trainer"),
    ("transformers.TrainingArguments", "class", "main_classes/trainer#transformers.TrainingArguments"),
    ("transformers.BertConfig", "class", "model_doc/bert#transformers.BertConfig"),
    ("transformers.BertTokenizer", "class", "model_doc/bert#transformers.BertTokenizer"),
    ("transformers.RobertaConfig", "class", "model_doc/roberta#transformers.RobertaConfig"),
    ("transformers.RobertaModel", "class", "model_doc/roberta#transformers.RobertaModel"),
    ("transformers.VideoMAEConfig", "class", "model_doc/videomae#transformers.VideoMAEConfig"),
    ("transformers.VideoMAEModel", "class", "model_doc/videomae#transformers.VideoMAEModel"),
    ("transformers.MambaConfig", "class", "model_doc/mamba#transformers.MambaConfig"),
]

DATASETS = [
    ("datasets.Dataset", "class", "package_reference/main_classes#datasets.Dataset"),
    ("datasets.arrow_dataset.Dataset", "class", "package_reference/main_classes#datasets.Dataset"),
]

ACCELERATE = [
    ("accelerate.Accelerator", "class", "package_reference/accelerator#accelerate.Accelerator"),
    ("accelerate.accelerator.Accelerator", "class", "package_reference/accelerator#accelerate.Accelerator"),
]

_GENERATOR = "reference/random/generator.html#numpy.random.Generator"
NUMPY = [
    ("numpy.ndarray", "class", "reference/generated/numpy.ndarray.html#numpy.ndarray"),
    ("numpy.random.Generator", "class", _GENERATOR),
    ("numpy.random._generator.Generator", "class", _GENERATOR),
]

PROJECTS = {
    "python": ("Python", "3", PYTHON),
    "torch": ("PyTorch", "stable", TORCH),
    "transformers": ("transformers", "5", TRANSFORMERS),
    "datasets": ("datasets", "latest", DATASETS),
    "accelerate": ("accelerate", "latest", ACCELERATE),
    "numpy": ("NumPy", "stable", NUMPY),
}


def inventory_bytes(project: str, version: str, entries: list[tuple[str, str, str]]) -> bytes:
    """An intersphinx inventory (format version 2): a text header, then zlib-compressed entry lines."""
    names = [name for name, _, _ in entries]
    if len(names) != len(set(names)):
        raise ValueError(f"{project}: duplicate names")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    # "name domain:role priority uri dispname"; "-" as dispname means the name itself.
    lines = "".join(f"{name} py:{role} 1 {uri} -\n" for name, role, uri in sorted(entries))
    return header + zlib.compress(lines.encode(), 9)


def main() -> None:
    for stem, (project, version, entries) in PROJECTS.items():
        path = HERE / f"{stem}.inv"
        path.write_bytes(inventory_bytes(project, version, entries))
        print(f"{path.relative_to(HERE.parent.parent)}: {len(entries)} names")


if __name__ == "__main__":
    main()
