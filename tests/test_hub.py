"""Sharing through the Hub: model cards, loading a saved folder without `import mambavl`, push_to_hub uploads, and
the Trainer's card (mambavl.hub)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import EntryNotFoundError
from transformers import BertTokenizer

from mambavl import (
    MambaVLConfig,
    MambaVLForActionAnticipation,
    MambaVLForActionRecognition,
    MambaVLProcessor,
    MambaVLVideoProcessor,
)
from mambavl.hub import AUTO_MODULE, known_metrics, model_card
from tiny import tiny_config, tiny_inputs

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "person", "doing", "?"]
REPO = Path(__file__).resolve().parents[1]


def tiny_processor() -> MambaVLProcessor:
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    return MambaVLProcessor(
        MambaVLVideoProcessor(num_frames=4, size=16, crop_size=16),
        tokenizer,
        verb_classes=["take", "put", "open", "close", "cut"],
        noun_classes=["cup", "plate", "door", "jar", "knife", "board", "pan"],
    )


def save_tiny(folder: Path, model_class=MambaVLForActionRecognition, **config) -> MambaVLForActionRecognition:
    torch.manual_seed(0)
    model = model_class(tiny_config(**config)).eval()
    model.save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return model


def run_python(code: str, tmp_path: Path, hide_mambavl: bool = False) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (mambavl never imported by it; with `hide_mambavl`, not importable)."""
    prelude = ""
    if hide_mambavl:
        prelude = textwrap.dedent(
            """
            import sys

            class _HideMambaVL:  # as if mambavl were not installed
                def find_spec(self, name, path=None, target=None):
                    if name == "mambavl" or name.startswith("mambavl."):
                        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                    return None

            sys.meta_path.insert(0, _HideMambaVL())
            """
        )
    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(tmp_path / "modules"),  # where transformers copies remote code
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO / "tests"),
    }
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )


def test_save_pretrained_writes_a_model_card_the_auto_module_and_the_auto_map(tmp_path):
    model = MambaVLForActionRecognition(tiny_config())
    model.config.text_config._name_or_path = "sentence-transformers/all-MiniLM-L6-v2"  # loaded from the Hub
    (tmp_path / "eval_results.json").write_text(json.dumps({"eval_action_top1": 0.25, "eval_samples": 8, "epoch": 1}))
    model.save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": f"{AUTO_MODULE}.MambaVLConfig",
        "AutoModel": f"{AUTO_MODULE}.MambaVLModel",
        "AutoModelForVideoClassification": f"{AUTO_MODULE}.MambaVLForActionRecognition",
    }
    assert "auto_map" not in model.config.__dict__  # the in-memory config is unchanged
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": f"{AUTO_MODULE}.MambaVLProcessor"}
    stub = (tmp_path / f"{AUTO_MODULE}.py").read_text()
    assert "from mambavl import" in stub and "pip install mambavl" in stub and "class " not in stub

    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "mambavl" and card.data.pipeline_tag == "video-classification"
    assert "mambavl" in card.data.tags and card.data.base_model == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert "| verb classes | 5 |" in card.text and "| noun classes | 7 |" in card.text
    assert "| eval_action_top1 | 0.25 |" in card.text and "eval_samples" not in card.text  # numbers, not counts
    assert "AutoModelForVideoClassification.from_pretrained" in card.text and "trust_remote_code=True" in card.text
    assert "MambaVLForActionRecognition.from_pretrained" in card.text
    assert "| text encoder | bert (sentence-transformers/all-MiniLM-L6-v2)" in card.text

    model.config.text_config._name_or_path = str(tmp_path / "home" / "me" / "minilm")  # a local folder
    model.save_pretrained(tmp_path / "local")
    text = (tmp_path / "local" / "README.md").read_text()
    assert "| text encoder | bert (local folder minilm)" in text and str(tmp_path) not in text  # no local paths


def test_a_card_written_by_hand_keeps_its_text_and_gets_the_metadata(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# My kitchen model\n\nTrained on my own videos.\n")
    MambaVLForActionAnticipation(tiny_config()).save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.text.strip() == "# My kitchen model\n\nTrained on my own videos."
    assert card.data.license == "mit" and card.data.library_name == "mambavl" and "mambavl" in card.data.tags
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForVideoClassification"] == f"{AUTO_MODULE}.MambaVLForActionAnticipation"


def test_model_card_metrics_come_from_a_mambavl_training_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    log = [{"event": "train", "loss": 3.0}, {"event": "eval", "epoch": 0, "verb_top1": 0.1, "num_samples": 4},
           {"event": "eval", "epoch": 1, "verb_top1": 0.5, "action_top5": 0.75, "num_samples": 4}]  # fmt: skip
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    MambaVLForActionRecognition(tiny_config()).save_pretrained(run / "model")
    text = (run / "model" / "README.md").read_text()
    assert "| verb_top1 | 0.5 |" in text and "| action_top5 | 0.75 |" in text and "0.1 |" not in text
    card = model_card(config=tiny_config(), metrics={"verb_top1": 0.5, "predictions": [1, 2]})
    assert card.data.metrics == ["accuracy"] and "predictions" not in card.text


def test_a_saved_folder_loads_with_auto_classes_without_importing_mambavl(tmp_path):
    folder = tmp_path / "model"
    model = save_tiny(folder)
    inputs = tiny_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs).verb_logits
    torch.save(expected, tmp_path / "expected.pt")
    result = run_python(
        f"""
        import sys, torch
        from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification, AutoProcessor

        folder = {str(folder)!r}
        assert "mambavl" not in sys.modules
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        base = AutoModel.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForVideoClassification.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        print(type(config).__name__, type(base).__name__, type(model).__name__, type(processor).__name__)
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            assert torch.allclose(model(**inputs).verb_logits, torch.load({str(tmp_path / "expected.pt")!r}))
        # Loading through the auto_map registers the classes for their Auto class: saving again must still work.
        again = {str(tmp_path / "again")!r}
        model.save_pretrained(again)
        processor.save_pretrained(again)
        config.save_pretrained({str(tmp_path / "config_only")!r})
        print(__import__("json").dumps(sorted(__import__("os").listdir(again))))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "MambaVLConfig MambaVLModel MambaVLForActionRecognition MambaVLProcessor"
    files = json.loads(lines[1])
    assert f"{AUTO_MODULE}.py" in files and "README.md" in files
    assert not any(name.startswith(("configuration_", "modeling_", "processing_")) for name in files)


def test_without_mambavl_installed_the_error_says_pip_install_mambavl(tmp_path):
    folder = tmp_path / "model"
    save_tiny(folder)
    result = run_python(
        f"""
        from transformers import AutoModelForVideoClassification

        try:
            AutoModelForVideoClassification.from_pretrained({str(folder)!r}, trust_remote_code=True)
        except ImportError as error:
            print("ERROR:", error)
        """,
        tmp_path,
        hide_mambavl=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERROR:" in result.stdout and "pip install mambavl" in result.stdout, result.stdout


def test_register_for_auto_class_then_save_pretrained_works(tmp_path):
    MambaVLConfig.register_for_auto_class()
    MambaVLForActionRecognition.register_for_auto_class("AutoModelForVideoClassification")
    MambaVLProcessor.register_for_auto_class()
    model = MambaVLForActionRecognition(tiny_config())
    model.save_pretrained(tmp_path / "model")  # copied the package's modules and crashed on `.fusion` before
    tiny_processor().save_pretrained(tmp_path / "model")
    model.config.save_pretrained(tmp_path / "config")
    files = sorted(os.listdir(tmp_path / "model"))
    assert f"{AUTO_MODULE}.py" in files and not any(f.startswith(("modeling_", "configuration_")) for f in files)
    assert MambaVLForActionRecognition.from_pretrained(tmp_path / "model").config.num_verb_classes == 5
    with pytest.raises(ValueError, match="not a transformers Auto class"):
        MambaVLForActionRecognition.register_for_auto_class("AutoNothing")


class _NoRemoteCard(ModelCard):
    """`ModelCard` as transformers' push_to_hub sees it: no card in the (fake) Hub repo; local files load."""

    remote_text: str | None = None

    @classmethod
    def load(cls, repo_id_or_path, *args, **kwargs):
        if Path(repo_id_or_path).exists():
            return super().load(repo_id_or_path, *args, **kwargs)
        if cls.remote_text is None:
            raise EntryNotFoundError(f"no README.md in {repo_id_or_path}")
        return ModelCard(cls.remote_text)


@pytest.fixture
def fake_hub(monkeypatch):
    """Patch the Hub API: creating a repo returns its id; a commit records its files and their content."""
    import transformers.utils.hub
    from huggingface_hub import HfApi

    commits = []

    class Repo(str):
        repo_id = property(lambda self: str(self))

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for op in operations:
            source = op.path_or_fileobj
            files[op.path_in_repo] = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
        commits.append({"repo_id": repo_id, "files": files, **kwargs})
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: Repo(repo_id))
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(transformers.utils.hub, "ModelCard", _NoRemoteCard)
    monkeypatch.setattr(_NoRemoteCard, "remote_text", None)
    return commits


def test_push_to_hub_uploads_the_mambavl_card_the_auto_module_and_the_weights(fake_hub, tmp_path):
    model = MambaVLForActionRecognition(tiny_config())
    assert model.push_to_hub("me/kitchen-model", tags=["my-tag"]) == "commit-info"
    (commit,) = fake_hub
    files = commit["files"]
    assert commit["repo_id"] == "me/kitchen-model"
    assert {"README.md", "config.json", "model.safetensors", f"{AUTO_MODULE}.py"} <= set(files)
    assert json.loads(files["config.json"])["auto_map"]["AutoModel"] == f"{AUTO_MODULE}.MambaVLModel"
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "mambavl" and "my-tag" in card.data.tags and "mambavl" in card.data.tags
    assert 'from_pretrained("me/kitchen-model")' in card.text and "transformers model" not in card.text

    processor = tiny_processor()
    processor.push_to_hub("me/kitchen-model")
    files = fake_hub[1]["files"]
    assert {"processor_config.json", "tokenizer_config.json", f"{AUTO_MODULE}.py"} <= set(files)
    assert json.loads(files["processor_config.json"])["auto_map"] == {
        "AutoProcessor": f"{AUTO_MODULE}.MambaVLProcessor"
    }


def test_push_to_hub_keeps_a_card_already_on_the_hub(fake_hub, monkeypatch):
    monkeypatch.setattr(_NoRemoteCard, "remote_text", "---\nlicense: apache-2.0\n---\n# Our model\n\nHand-written.\n")
    MambaVLForActionRecognition(tiny_config()).push_to_hub("me/kitchen-model")
    card = ModelCard(fake_hub[0]["files"]["README.md"].decode())
    assert card.text.strip() == "# Our model\n\nHand-written."
    assert card.data.library_name == "mambavl" and card.data.license == "apache-2.0"


def test_model_card_metrics_from_trainer_save_metrics_leave_out_timings(tmp_path):
    """`Trainer.evaluate` also returns timings (`eval_runtime`, and `eval_model_preparation_time` when the model was
    not prepared before): the card listed the latter as an evaluation result."""
    results = {"eval_loss": 4.17, "eval_verb_top1": 25.0, "eval_runtime": 0.09, "eval_samples_per_second": 41.0,
               "eval_model_preparation_time": 0.0007, "epoch": 1.0}  # fmt: skip
    (tmp_path / "eval_results.json").write_text(json.dumps(results))
    assert known_metrics(tmp_path) == {"eval_loss": 4.17, "eval_verb_top1": 25.0}


def test_save_pretrained_with_push_to_hub_uploads_the_card(fake_hub, tmp_path):
    MambaVLForActionRecognition(tiny_config()).save_pretrained(tmp_path / "kitchen", push_to_hub=True)
    files = fake_hub[0]["files"]
    assert fake_hub[0]["repo_id"] == "kitchen"
    assert ModelCard(files["README.md"].decode()).data.library_name == "mambavl" and f"{AUTO_MODULE}.py" in files


def test_the_trainer_model_card_says_library_name_mambavl(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = MambaVLForActionRecognition(tiny_config())
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args)
    trainer.create_model_card(model_name="kitchen")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "mambavl" and "generated_from_trainer" in card.data.tags
    assert "mambavl" in card.data.tags and card.data.pipeline_tag == "video-classification"
    assert "This model card has been generated automatically" in card.text  # the Trainer's summary is kept
    assert "## How to use" in card.text

    # Another model's card is left to transformers.
    from transformers import BertModel

    from tiny import tiny_text_config

    other_args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True)
    other = Trainer(model=BertModel(tiny_text_config()), args=other_args)
    other.create_model_card(model_name="linear")
    assert ModelCard.load(tmp_path / "o" / "README.md").data.library_name == "transformers"
