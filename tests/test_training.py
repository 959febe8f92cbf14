"""Training with Accelerate: exact resumption, multi-process equivalence, transformers.Trainer, evaluation."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizer

from mambavl import (
    Conv3dVideoConfig,
    MambaVLConfig,
    MambaVLForActionRecognition,
    MambaVLProcessor,
    MambaVLVideoProcessor,
)
from mambavl.data import EK100SegmentDataset, MambaVLCollator, generate_synthetic_dataset
from mambavl.training import EpochSampler, TrainingConfig, evaluate, find_last_checkpoint, train
from tiny import tiny_text_config

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "person", "doing", "to", "?", "object"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), num_videos=4, segments_per_video=4, size=32
    )


def make_processor(info) -> MambaVLProcessor:
    return MambaVLProcessor(
        MambaVLVideoProcessor(num_frames=4, size=18, crop_size=16, train_crop_mode="random_crop"),
        BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}),
        verb_classes=info.verb_names,
        noun_classes=info.noun_names,
    )


def make_model(info, seed: int = 0, head_dropout: float = 0.1) -> MambaVLForActionRecognition:
    torch.manual_seed(seed)
    config = MambaVLConfig(
        video_config=Conv3dVideoConfig(channels=[4, 8], hidden_size=16), hidden_size=16, state_size=4,
        text_config=tiny_text_config(), num_verb_classes=info.num_verbs, num_noun_classes=info.num_nouns,
        head_dropout=head_dropout,
    )  # fmt: skip
    return MambaVLForActionRecognition(config)


def datasets(info):
    source = info.video_source(cache_size=8)
    train_set = EK100SegmentDataset(info.load_annotations("train"), source, num_frames=4, seed=0)
    val_set = EK100SegmentDataset(info.load_annotations("validation"), source, num_frames=4, sampling="center")
    return train_set, val_set


def run(info, output_dir, callbacks=(), head_dropout=0.1, model=None, **overrides):
    processor = make_processor(info)
    train_set, val_set = datasets(info)
    config = TrainingConfig(
        **{
            "output_dir": output_dir, "num_epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "save_steps": 2,
            "progress_bar": False, "save_total_limit": None, **overrides,
        }
    )  # fmt: skip
    model = model if model is not None else make_model(info, head_dropout=head_dropout)
    result = train(
        model, train_set, MambaVLCollator(processor, training=True), config, eval_dataset=val_set,
        eval_collate_fn=MambaVLCollator(processor), processor=processor, callbacks=callbacks,
    )  # fmt: skip
    return model, result


def test_training_logs_checkpoints_and_saves_a_loadable_model(synthetic, tmp_path):
    model, result = run(synthetic, tmp_path)
    assert result.global_step == 2 * (12 // 4) and result.epochs_completed == 2
    assert {"verb_top1", "noun_top1", "action_top1", "action_top5"} <= set(result.eval_metrics)
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log if r["event"] == "eval"] == ["eval", "eval"]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log if r["event"] == "train")
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-2", "step-3", "step-4", "step-6"]  # every 2 steps and at each epoch end
    assert not any(name.endswith(".tmp") for name in checkpoints)
    reloaded = MambaVLForActionRecognition.from_pretrained(result.model_dir)
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert MambaVLProcessor.from_pretrained(result.model_dir).verb_classes == synthetic.verb_names
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run(synthetic, tmp_path)


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(synthetic, tmp_path):
    reference, _ = run(synthetic, tmp_path / "uninterrupted")

    class KilledError(Exception):
        pass

    def kill_after_step_5(record):  # the last checkpoint is step 4: step 5 is lost, as in a real crash
        if record["global_step"] == 5:
            raise KilledError

    with pytest.raises(KilledError):
        run(synthetic, tmp_path / "killed", callbacks=[kill_after_step_5])
    assert find_last_checkpoint(tmp_path / "killed").name == "step-4"  # mid-epoch: epoch 1 has steps 4..6
    resumed, result = run(synthetic, tmp_path / "killed", resume_from_checkpoint="auto")
    assert result.global_step == 6
    for name, tensor in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_resume_auto_without_a_checkpoint_says_it_starts_a_fresh_run(synthetic, tmp_path, caplog):
    # `mambavl train --resume` into a folder with no checkpoint (a typo in --output-dir, or a first run) trained
    # from scratch without a word, so a user who meant to continue a run could not tell
    with caplog.at_level(logging.WARNING, logger="mambavl.training"):
        _, result = run(synthetic, tmp_path / "typo", resume_from_checkpoint="auto", max_steps=1, num_epochs=1)
    assert result.global_step == 1
    assert any(
        "no checkpoint to resume from in" in r.getMessage() and "typo" in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_resume_at_or_past_the_limit_says_there_is_nothing_to_train(synthetic, tmp_path, caplog):
    # `mambavl train --resume --max-steps 30` on a run at step 45 printed the checkpoint's last evaluation and
    # "model saved" without training or saying why
    run(synthetic, tmp_path, max_steps=2, num_epochs=1)
    with caplog.at_level(logging.WARNING, logger="mambavl.training"):
        _, result = run(synthetic, tmp_path, resume_from_checkpoint="auto", max_steps=1, num_epochs=1)
    assert result.global_step == 2
    assert any("nothing to train" in r.getMessage() and "1 steps" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change once set: a test that sets another
    one starts from a fresh state and leaves one behind for the tests after it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_mixed_precision_the_device_cannot_run_is_named(synthetic, tmp_path, caplog, fresh_accelerate_state):
    # `mambavl train --mixed-precision fp16` on a CPU trained in float32 without a word (its help said "GPU only",
    # though bf16 does run on the CPU)
    with caplog.at_level(logging.WARNING, logger="mambavl.training"):
        run(synthetic, tmp_path, max_steps=1, num_epochs=1, mixed_precision="fp16", use_cpu=True)
    assert any("mixed_precision='fp16' is not available on cpu" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    b.set_epoch(2)
    assert list(a) != list(b)
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_multi_view_evaluation_averages_views(synthetic):
    processor = make_processor(synthetic)
    model = make_model(synthetic).eval()
    source = synthetic.video_source()
    annotations = synthetic.load_annotations("validation")
    one = EK100SegmentDataset(annotations, source, num_frames=4, sampling="center")
    three = EK100SegmentDataset(annotations, source, num_frames=4, sampling="center", num_views=3)
    batch = MambaVLCollator(processor)([three[0], three[1]])
    assert batch["num_views"] == 3 and batch["pixel_values"].shape[0] == 6 and batch["verb_labels"].shape == (2,)
    single = evaluate(
        model, one, MambaVLCollator(processor), batch_size=4, progress_bar=False, return_predictions=True
    )
    multi = evaluate(
        model, three, MambaVLCollator(processor), batch_size=4, progress_bar=False, return_predictions=True
    )
    assert single["num_samples"] == multi["num_samples"] == len(annotations)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k not in ("num_views", "verb_labels", "noun_labels")})
        averaged = model(**{k: v for k, v in batch.items() if not k.endswith("_labels")})  # with num_views=3
    expected = logits.verb_logits.view(2, 3, -1).mean(1)  # the per-view logits, averaged by hand
    torch.testing.assert_close(multi["predictions"]["verb_scores"][:2], expected)
    torch.testing.assert_close(averaged.verb_logits, expected)
    torch.testing.assert_close(multi["predictions"]["noun_scores"][:2], logits.noun_logits.view(2, 3, -1).mean(1))
    # the views' mean differs from the single centre view: the views were really averaged
    assert not torch.allclose(multi["predictions"]["verb_scores"], single["predictions"]["verb_scores"])


def test_training_takes_the_loss_on_view_averaged_logits_of_multi_view_batches(synthetic, tmp_path):
    processor, model = make_processor(synthetic), make_model(synthetic, head_dropout=0.0)
    annotations = synthetic.load_annotations("train")
    views = EK100SegmentDataset(annotations, synthetic.video_source(), num_frames=4, seed=0, num_views=2)
    config = TrainingConfig(tmp_path, max_steps=1, batch_size=4, progress_bar=False, save_steps=None)
    logged = []
    train(model, views, MambaVLCollator(processor, training=True), config, callbacks=[logged.append])
    assert len(logged) == 1 and torch.isfinite(torch.tensor(logged[0]["loss"]))


def test_collator_refuses_items_with_different_numbers_of_views(synthetic):
    collate = MambaVLCollator(make_processor(synthetic))
    frames = lambda views: {"frames": torch.zeros(views, 4, 8, 8, 3, dtype=torch.uint8)}  # noqa: E731
    # 3 + 1 + 2 = 6 clips is also 2 views x 3 items: the counts themselves must agree
    with pytest.raises(ValueError, match=r"same number of views; got \[1, 2, 3\]"):
        collate([frames(3), frames(1), frames(2)])
    with pytest.raises(ValueError, match="same number of views"):
        collate([frames(2), frames(3)])


def test_training_config_validation(tmp_path):
    bad = [("batch_size", 0), ("mixed_precision", "fp8"), ("task", "captioning"), ("warmup_ratio", 1),
           ("weight_decay", -0.05), ("weight_decay", float("nan")), ("max_grad_norm", 0.0)]  # fmt: skip
    for field, value in bad:
        with pytest.raises(ValueError, match=field):
            TrainingConfig(output_dir=tmp_path, **{field: value})
    with pytest.raises(ValueError, match="not a checkpoint"):
        train(torch.nn.Linear(1, 1), [0] * 4, list, TrainingConfig(tmp_path, resume_from_checkpoint=tmp_path))


def test_trains_with_transformers_trainer(synthetic, tmp_path):
    from transformers import Trainer, TrainingArguments

    processor = make_processor(synthetic)
    model = make_model(synthetic)
    train_set, val_set = datasets(synthetic)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2,
        remove_unused_columns=False, label_names=["verb_labels", "noun_labels"], report_to=[], use_cpu=True,
        logging_steps=1, save_strategy="no", eval_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=MambaVLCollator(processor, True))
    output = trainer.train()
    assert output.global_step == 4 and torch.isfinite(torch.tensor(output.training_loss))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)
    metrics = trainer.evaluate(val_set)  # label_names make Trainer report the eval loss
    assert "eval_loss" in metrics


LAUNCH_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_training import run
from mambavl.data import generate_synthetic_dataset
info = generate_synthetic_dataset({data!r}, num_videos=4, segments_per_video=4, size=32)
# no dropout: each process would draw its own masks for its half of the batch
model, result = run(info, {out!r}, head_dropout=0.0, save_steps=None, num_epochs=2, eval_each_epoch=False)
"""


ONE_PROCESS = [sys.executable]
TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run_command(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``argv`` (e.g. ``[*TWO_PROCESSES, "-m", "mambavl.cli", "train", ...]``) with this checkout's sources."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _launch(command: list[str], script: Path, cwd: Path) -> None:
    run_command([*command, str(script)], cwd)


@pytest.mark.slow
def test_two_process_training_matches_one_process_with_the_same_global_batch(synthetic, tmp_path):
    from safetensors.torch import load_file

    weights = {}
    for name, command in {
        "one": ONE_PROCESS,
        "two": TWO_PROCESSES,
        # accelerate's own launcher: "--multi_gpu" makes it start one process per rank (through torch's elastic
        # launcher); on a CPU-only machine train() then joins them over gloo. ("--cpu --num_processes 2" would start
        # a single process.)
        "accelerate": [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29534",
        ],
    }.items():  # fmt: skip
        script = tmp_path / f"launch_{name}.py"
        out = tmp_path / name
        script.write_text(LAUNCH_SCRIPT.format(tests=str(REPO / "tests"), data=synthetic.root, out=str(out)))
        _launch(command, script, tmp_path)
        weights[name] = load_file(out / "model" / "model.safetensors")
        start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert start["event"] == "start" and start["num_processes"] == (1 if name == "one" else 2), name
    for name in ("two", "accelerate"):
        assert weights[name].keys() == weights["one"].keys()
        for key, tensor in weights["one"].items():
            torch.testing.assert_close(weights[name][key], tensor, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
