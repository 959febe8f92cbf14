"""Reliability of training (issue 13): frozen backbones stay frozen, a step limit resumes exactly, --seed fixes the
weights, a non-finite loss stops the run, a batch without labels adds no NaN."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel, BertModel, BertTokenizer

from mambavl import (
    Conv3dVideoConfig,
    Conv3dVideoModel,
    MambaVLForActionRecognition,
    MambaVLModel,
    MambaVLProcessor,
    MambaVLVideoProcessor,
)
from mambavl import training as training_module
from mambavl.cli import main as cli_main
from mambavl.data import MambaVLCollator, generate_synthetic_dataset
from mambavl.training import EpochSampler, NonFiniteLossError, TrainingConfig, train
from test_training import (
    ONE_PROCESS,
    TWO_PROCESSES,
    VOCAB,
    datasets,
    make_model,
    make_processor,
    run,
    run_command,
)
from tiny import tiny_config, tiny_inputs, tiny_text_config


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """16 clips of 32x32 pixels in 4 videos: 12 for training (3 batches of 4), 4 for validation."""
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), num_videos=4, segments_per_video=4, size=32
    )


def frozen_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters of the backbones the config freezes."""
    base = model.base_model
    frozen = []
    if model.config.freeze_text_encoder:
        frozen.append(base.text_encoder.encoder)
    if model.config.freeze_video_encoder and base.video_encoder is not None:
        frozen.append(base.video_encoder)
    return {f"{i}.{n}": p for i, module in enumerate(frozen) for n, p in module.named_parameters()}


# ------------------------------------------------------------------------------------------- 1. frozen stays frozen
def test_frozen_backbones_stay_frozen_after_from_pretrained(tmp_path):
    config = tiny_config(
        video_config=Conv3dVideoConfig(channels=[4, 8], hidden_size=16), video_feature_size=16,
        freeze_video_encoder=True, head_dropout=0.1,
    )  # fmt: skip
    MambaVLForActionRecognition(config).save_pretrained(tmp_path)
    loaded = [
        MambaVLForActionRecognition.from_pretrained(tmp_path),
        MambaVLForActionRecognition.from_pretrained(tmp_path, output_loading_info=True)[0],
        AutoModel.from_pretrained(tmp_path),  # MambaVLModel through the Auto class
    ]
    for model in loaded:
        frozen = frozen_parameters(model)
        assert len(frozen) > 8, sorted(frozen)  # the text embeddings (word, position, ...) and the 3-D CNN
        assert not [n for n, p in frozen.items() if p.requires_grad], type(model).__name__
        model.train()
        base = model.mambavl if isinstance(model, MambaVLForActionRecognition) else model
        assert model.training and not base.text_encoder.encoder.training and not base.video_encoder.training
        assert base.text_encoder.projection.training and base.fusion.training
    assert isinstance(loaded[2], MambaVLModel)


def test_a_resumed_fine_tuning_of_a_saved_model_keeps_its_backbones_frozen(synthetic, tmp_path):
    saved = tmp_path / "saved"
    make_model(synthetic).save_pretrained(saved)
    reference = {n: p.detach().clone() for n, p in frozen_parameters(make_model(synthetic)).items()}
    outputs = {}
    for name, resume in (("first", None), ("resumed", "auto")):
        model = MambaVLForActionRecognition.from_pretrained(saved)
        processor = make_processor(synthetic)
        train_set, _ = datasets(synthetic)
        config = TrainingConfig(
            tmp_path / "run", batch_size=4, max_steps=2 if name == "first" else 4, learning_rate=1e-2,
            progress_bar=False, resume_from_checkpoint=resume, eval_each_epoch=False,
        )  # fmt: skip
        train(model, train_set, MambaVLCollator(processor, training=True), config)
        outputs[name] = model
    for model in outputs.values():
        frozen = frozen_parameters(model)
        assert frozen and not any(p.requires_grad for p in frozen.values())
        for n, p in frozen.items():  # never trained: the pretrained (here: saved) values, bit for bit
            assert torch.equal(p, reference[n]), n


@pytest.mark.slow
def test_two_process_cli_fine_tuning_of_a_saved_model_matches_one_process(synthetic, tmp_path):
    saved = tmp_path / "saved"
    make_model(synthetic, head_dropout=0.0).save_pretrained(saved)
    make_processor(synthetic).save_pretrained(saved)
    train_args = [
        "-m", "mambavl.cli", "train", "--model", str(saved), "--train-annotations", synthetic.train_annotations,
        "--verb-classes", synthetic.verb_classes_path, "--noun-classes", synthetic.noun_classes_path,
        "--video-root", synthetic.videos_dir, "--batch-size", "4", "--max-steps", "4", "--learning-rate", "1e-2",
        "--seed", "0",
    ]  # fmt: skip
    weights, losses = {}, {}
    for name, launcher in (("one", ONE_PROCESS), ("two", TWO_PROCESSES)):
        out = tmp_path / name
        proc = run_command([*launcher, *train_args, "--output-dir", str(out)], tmp_path)
        assert proc.stdout.count("model saved to") == 1, proc.stdout  # the summary once, not once per process
        weights[name] = load_file(out / "model" / "model.safetensors")
        log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert log[0]["num_processes"] == (1 if name == "one" else 2)
        losses[name] = [r["loss"] for r in log if r["event"] == "train"]
    assert weights["two"].keys() == weights["one"].keys()
    for key, tensor in weights["one"].items():
        torch.testing.assert_close(weights["two"][key], tensor, rtol=1e-4, atol=1e-5, msg=key)
    # the logged loss is the whole batch's on both (not the main process's half)
    torch.testing.assert_close(torch.tensor(losses["two"]), torch.tensor(losses["one"]), rtol=1e-4, atol=1e-5)
    saved_weights = load_file(saved / "model.safetensors")
    for key in ("mambavl.text_encoder.encoder.word_embeddings.weight", "mambavl.video_encoder.stages.0.weight"):
        if key.startswith("mambavl.text_encoder"):
            assert torch.equal(weights["two"][key], saved_weights[key]), key  # frozen: unchanged
        else:
            assert not torch.equal(weights["two"][key], saved_weights[key]), key  # trainable: trained


# ---------------------------------------------------------------------------------- 2. --max-steps, then --resume
def step_limited(synthetic, tmp_path, **overrides):
    """An uninterrupted 18-step run, and one stopped at 8 and resumed with a limit of 18 (3 steps an epoch)."""
    common = {"save_steps": None, "eval_each_epoch": True, **overrides}
    records = {"uninterrupted": [], "stopped": [], "resumed": []}
    seen = {name: [] for name in records}

    def runner(name, out, **kwargs):
        def hook(module, args, inputs):
            if module.training:  # the training batches (not the evaluation's), in order
                seen[name].append((inputs["verb_labels"].tolist(), inputs["pixel_values"].sum((1, 2, 3, 4))))

        model = make_model(synthetic)
        model.register_forward_pre_hook(hook, with_kwargs=True)
        return run(synthetic, out, callbacks=[records[name].append], model=model, **common, **kwargs)

    reference, ref_result = runner("uninterrupted", tmp_path / "a", max_steps=18)
    _, stopped = runner("stopped", tmp_path / "b", max_steps=8)
    resumed, result = runner("resumed", tmp_path / "b", max_steps=18, resume_from_checkpoint="auto")
    return records, seen, (reference, ref_result), (stopped, resumed, result)


def test_max_steps_then_resume_with_a_higher_limit_continues_the_data_order(synthetic, tmp_path):
    records, seen, (_, ref_result), (stopped, _, result) = step_limited(synthetic, tmp_path)
    assert stopped.global_step == 8 and stopped.epochs_completed == 2  # epoch 2 has had 2 of its 3 steps
    state = json.loads((tmp_path / "b" / "checkpoints" / "step-8" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (2, 2)  # the run the resume started from
    assert state["history"][-1]["epoch_complete"] is False  # the evaluation at the limit says so
    assert result.global_step == ref_result.global_step == 18 and result.epochs_completed == 6
    assert [r["global_step"] for r in records["resumed"]] == list(range(9, 19))
    assert [r["epoch"] for r in records["resumed"]] == [2] + [3] * 3 + [4] * 3 + [5] * 3
    # the batches the two halves trained on are those of the uninterrupted run, in its order
    both = seen["stopped"] + seen["resumed"]
    assert len(both) == len(seen["uninterrupted"]) == 18
    for (labels, pixels), (ref_labels, ref_pixels) in zip(both, seen["uninterrupted"], strict=True):
        assert labels == ref_labels and torch.equal(pixels, ref_pixels)
    # the learning rate is planned for the limit: after the resume, that of an 18-step plan at the same steps
    lrs = {r["global_step"]: r["lr"] for r in records["uninterrupted"]}
    assert [r["lr"] for r in records["resumed"]] == [lrs[step] for step in range(9, 19)]
    assert records["stopped"][-1]["lr"] < lrs[8]  # (the 8-step plan had nearly decayed to 0)


def test_max_steps_then_resume_equals_an_uninterrupted_run_with_a_constant_schedule(synthetic, tmp_path):
    _, _, (reference, _), (_, resumed, result) = step_limited(
        synthetic, tmp_path, lr_scheduler="constant", warmup_ratio=0.0, eval_each_epoch=False
    )
    assert result.global_step == 18
    for name, tensor in reference.state_dict().items():  # same batches, dropout and learning rates: same weights
        assert torch.equal(resumed.state_dict()[name], tensor), name


# ------------------------------------------------------------------------------------------------------ 3. --seed
def test_seed_draws_every_randomly_initialised_weight_from_pretrained_backbones(synthetic, tmp_path, monkeypatch):
    text, video = tmp_path / "text", tmp_path / "video"
    BertModel(tiny_text_config()).save_pretrained(text)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(text)
    Conv3dVideoModel(Conv3dVideoConfig(channels=[4, 8], hidden_size=16)).save_pretrained(video)
    initial = {}
    real_train = training_module.train

    def train_and_keep_initial_weights(model, *args, **kwargs):
        initial[run_name] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(training_module, "train", train_and_keep_initial_weights)
    final = {}
    for run_name, seed, ambient in (("a", 3, 1), ("b", 3, 2), ("c", 4, 1)):
        torch.manual_seed(ambient)  # whatever the process's random state before, --seed decides
        out = tmp_path / run_name
        code = cli_main([
            "train", "--train-annotations", synthetic.train_annotations, "--verb-classes", synthetic.verb_classes_path,
            "--noun-classes", synthetic.noun_classes_path, "--video-root", synthetic.videos_dir,
            "--text-backbone", str(text), "--video-backbone", str(video), "--hidden-size", "16", "--num-frames", "4",
            "--image-size", "16", "--batch-size", "4", "--max-steps", "2", "--learning-rate", "1e-2",
            "--seed", str(seed), "--output-dir", str(out),
        ])  # fmt: skip
        assert code == 0
        final[run_name] = load_file(out / "model" / "model.safetensors")
    for name in initial["a"]:  # one seed: the same weights, before and after training, bit for bit
        assert torch.equal(initial["a"][name], initial["b"][name]), name
    for name in final["a"]:
        assert torch.equal(final["a"][name], final["b"][name]), name
    backbone = ("mambavl.video_encoder.", "mambavl.text_encoder.encoder.")
    differs = {n for n in initial["a"] if not torch.equal(initial["a"][n], initial["c"][n])}
    assert not {n for n in differs if n.startswith(backbone)}  # pretrained: loaded, not drawn
    for name in ("verb_head.weight", "noun_head.weight", "mambavl.video_projection.weight",
                 "mambavl.text_encoder.projection.0.weight", "mambavl.text_encoder.projection.4.weight"):  # fmt: skip
        assert name in differs, name  # drawn from the seed
    assert any(n.startswith("mambavl.fusion.") for n in differs)


# ------------------------------------------------------------------------------------------- 7. non-finite losses
def test_a_batch_whose_labels_are_all_ignored_has_a_zero_loss_not_nan():
    model = MambaVLForActionRecognition(tiny_config())
    inputs = tiny_inputs(batch=3)
    ignored = torch.full((3,), -100)
    out = model(**inputs, verb_labels=ignored, noun_labels=ignored)
    assert out.loss.item() == 0 and out.verb_loss.item() == 0 and out.noun_loss.item() == 0
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    labels = torch.tensor([1, -100, 3])  # partly ignored: the mean over the labelled rows, as before
    out = model(**inputs, verb_labels=labels, noun_labels=torch.tensor([-100, 2, 6]))
    expected = F.cross_entropy(out.verb_logits[[0, 2]], labels[[0, 2]])
    torch.testing.assert_close(out.verb_loss, expected)
    torch.testing.assert_close(out.loss, expected + F.cross_entropy(out.noun_logits[[1, 2]], torch.tensor([2, 6])))


def feature_items(num: int = 8, nan_at: int | None = None, unlabelled: tuple[int, ...] = ()) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(num):
        features = torch.randn(6, 12, generator=g)
        if i == nan_at:
            features[2, 5] = float("nan")
        label = i not in unlabelled
        items.append({"video_features": features, "verb_class": i % 5 if label else -100,
                      "noun_class": i % 7 if label else -100, "narration_id": f"P01_01_{i}"})  # fmt: skip
    return items


def feature_training(items, tmp_path, callbacks=(), ignored_labels=False, **overrides):
    processor = MambaVLProcessor(
        MambaVLVideoProcessor(num_frames=4), BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}),
        verb_classes=["take", "put", "open", "wash", "cut"], noun_classes=[f"n{i}" for i in range(7)],
    )  # fmt: skip
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(tiny_config())
    config = TrainingConfig(
        **{"output_dir": tmp_path, "num_epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "save_steps": 1,
           "progress_bar": False, "save_total_limit": None, "logging_steps": 1, **overrides}
    )  # fmt: skip
    collate = MambaVLCollator(processor, training=True)

    def collate_with_ignored_labels(items):  # labels of -100 rather than none, as other collators give
        batch = collate(items)
        for name in ("verb_labels", "noun_labels"):
            batch.setdefault(name, torch.full((len(items),), -100))
        return batch

    collate_fn = collate_with_ignored_labels if ignored_labels else collate
    return model, lambda: train(model, items, collate_fn, config, callbacks=callbacks)


def test_a_non_finite_loss_stops_training_naming_the_step_and_the_clips(tmp_path):
    order = list(EpochSampler(8, seed=0))  # epoch 0's order: batches of 4
    step = order.index(5) // 4 + 1
    batch_ids = [f"P01_01_{i}" for i in order[(step - 1) * 4 : step * 4]]
    snapshots = []
    model, start = feature_training(
        feature_items(nan_at=5), tmp_path,
        callbacks=[lambda record: snapshots.append({k: v.clone() for k, v in model.state_dict().items()})],
    )  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match=rf"step {step} \(epoch 0\)") as caught:
        start()
    error = caught.value
    assert (error.step, error.epoch) == (step, 0) and error.narration_ids == batch_ids
    assert all(i in str(error) for i in batch_ids) and "nan" in str(error)
    assert all(math.isnan(v) for v in error.losses.values()) and "loss" in error.losses
    last = snapshots[-1] if snapshots else before  # the weights of the last good step: the NaN never reached them
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, last[name]), name
    assert sorted(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").glob("step-*")) == list(range(1, step))
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log if r["event"] == "train")


@pytest.mark.parametrize("ignored_labels", [False, True], ids=["no-labels", "labels-all-ignored"])
def test_a_batch_without_labels_adds_nothing_to_the_logged_loss(tmp_path, ignored_labels):
    order = list(EpochSampler(8, seed=0))
    unlabelled = tuple(order[:4])  # the first batch has no label at all
    records = {1: [], 2: []}
    for every in (1, 2):
        model, start = feature_training(
            feature_items(unlabelled=unlabelled), tmp_path / str(every), callbacks=[records[every].append],
            logging_steps=every, num_epochs=1, ignored_labels=ignored_labels,
        )  # fmt: skip
        start()
        assert all(torch.isfinite(p).all() for p in model.parameters())
    first, second = records[1]
    assert "loss" not in first and "verb_loss" not in first  # nothing to average at step 1
    assert math.isfinite(second["loss"]) and second["loss"] > 0
    # logged over steps 1 and 2 together, the loss is step 2's alone (not halved by step 1's zero)
    assert records[2][1]["loss"] == second["loss"] and records[2][1]["noun_loss"] == second["noun_loss"]


NAN_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from mambavl.training import NonFiniteLossError
from test_reliability_training import feature_items, feature_training
model, start = feature_training(feature_items(nan_at=5), Path({out!r}))
try:
    start()
except NonFiniteLossError as error:
    Path({out!r}, "error-" + os.environ["RANK"] + ".json").write_text(json.dumps([error.step, error.narration_ids]))
"""


@pytest.mark.slow
def test_a_non_finite_loss_on_one_of_two_processes_stops_both(tmp_path):
    from test_training import REPO

    order = list(EpochSampler(8, seed=0))
    step = order.index(5) // 4 + 1
    script = tmp_path / "nan.py"
    script.write_text(NAN_SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path / "run")))
    run_command([*TWO_PROCESSES, str(script)], tmp_path)  # both processes end (no hang), cleanly
    batch = order[(step - 1) * 4 : step * 4]  # process 0 takes the first half of each batch, process 1 the second
    for rank in ("0", "1"):  # the clip with NaN features is in one half, and both processes stop, naming all four
        error_step, ids = json.loads((tmp_path / "run" / f"error-{rank}.json").read_text())
        assert error_step == step and ids == [f"P01_01_{i}" for i in batch], rank
