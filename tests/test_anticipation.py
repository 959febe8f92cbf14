"""Action anticipation: observed windows (EK100 protocol), segments near the video start, the model class."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mambavl import MambaVLForActionAnticipation, MambaVLForActionRecognition
from mambavl.data import EK100AnticipationDataset, generate_synthetic_dataset, observed_window
from tiny import tiny_config, tiny_inputs


@pytest.mark.parametrize(
    ("start_frame", "fps", "tau_a", "tau_o", "expected"),
    [
        (241, 60, 1.0, 2.0, (62, 181, False)),  # t_s = 4 s: observe [1 s, 3 s]
        (181, 60, 1.0, 2.0, (2, 121, False)),  # exactly enough room: 120 frames ending at t = 2 s
        (121, 60, 1.0, 2.0, (1, 61, True)),  # t_s = 2 s: the window would start at -1 s
        (61, 60, 1.0, 2.0, (1, 1, True)),  # t_s = 1 s: only the first frame
        (10, 60, 1.0, 2.0, (1, 1, True)),  # starts within τ_a of the video start
        (25, 12, 1.0, 1.5, (1, 13, True)),
        (49, 12, 0.5, 1.0, (32, 43, False)),
    ],
)
def test_observed_window_is_clamped_to_the_video_start(start_frame, fps, tau_a, tau_o, expected):
    assert observed_window(start_frame, fps, tau_a, tau_o) == expected


@pytest.fixture(scope="module")
def anticipation_data(tmp_path_factory):
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("anticipation"), num_videos=4, segments_per_video=3, size=32, preparation_time=1.5
    )


def test_anticipation_dataset_samples_the_window_before_each_action(anticipation_data, caplog):
    info = anticipation_data
    annotations = info.load_annotations("train")
    source = info.video_source()
    dataset = EK100AnticipationDataset(
        annotations, source, anticipation_time=1.0, observation_time=1.5, num_frames=4, sampling="center"
    )
    fps = info.fps
    for i in range(len(dataset)):
        row = annotations[i]
        item = dataset[i]
        last_allowed = row["start_frame"] - round(1.0 * fps)
        assert item["frame_indices"].max() <= last_allowed < row["start_frame"]  # never sees the action itself
        assert item["frame_indices"].min() >= max(1, last_allowed - round(1.5 * fps) + 1)
        assert item["verb_class"] == row["verb_class"] and item["noun_class"] == row["noun_class"]
    # The first action of each video follows idle + 1.5 s preparation + 1 s gap: an observation of 2.5 s does not fit.
    with caplog.at_level(logging.INFO, logger="mambavl.data.anticipation"):
        long = EK100AnticipationDataset(annotations, source, anticipation_time=1.0, observation_time=2.5, num_frames=4)
    firsts = [i for i in range(len(annotations)) if annotations[i]["narration_id"].endswith("_0")]
    assert 1 <= long.num_clamped <= len(firsts)
    assert any(f"{long.num_clamped} of {len(annotations)} segments start less" in r.message for r in caplog.records)
    skipping = EK100AnticipationDataset(
        annotations, source, anticipation_time=1.0, observation_time=2.5, num_frames=4, too_early="skip"
    )
    assert len(skipping) == len(annotations) - long.num_clamped and len(skipping.skipped) == long.num_clamped


def test_segments_near_the_video_start_repeat_the_first_frame(anticipation_data):
    info = anticipation_data
    annotations = info.load_annotations("train")
    # An action 0.5 s into its video (within τ_a): the observed window is the first frame only.
    early = annotations.select([0]).map(lambda row: {"start_frame": 7, "start_timestamp": "00:00:00.50"})
    dataset = EK100AnticipationDataset(early, info.video_source(), num_frames=4, sampling="center")
    assert dataset.num_clamped == 1
    item = dataset[0]
    assert item["frame_indices"].tolist() == [1, 1, 1, 1]
    first = info.video_source().get_frames(annotations[0]["video_id"], [0])[0]
    assert all(np.array_equal(frame.numpy(), first) for frame in item["frames"])
    with pytest.raises(ValueError, match="too_early"):
        EK100AnticipationDataset(early, info.video_source(), too_early="drop")


def test_anticipation_model_is_the_recognition_model_with_its_own_name(tmp_path):
    torch.manual_seed(0)
    model = MambaVLForActionAnticipation(tiny_config()).eval()
    assert isinstance(model, MambaVLForActionRecognition)
    out = model(**tiny_inputs(), verb_labels=torch.tensor([1, 2]), noun_labels=torch.tensor([0, 3]))
    assert out.verb_logits.shape == (2, 5) and torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    reloaded = MambaVLForActionAnticipation.from_pretrained(tmp_path)
    assert reloaded.config.architectures == ["MambaVLForActionAnticipation"]
    torch.testing.assert_close(reloaded(**tiny_inputs()).noun_logits, model(**tiny_inputs()).noun_logits)


def test_the_guide_names_the_metrics_anticipation_reports():
    # docs/guides/anticipation.md said "Top-1 accuracies are reported too", but training and `mambavl evaluate
    # --task anticipation` report the three class-mean recalls only
    import re
    from pathlib import Path

    from mambavl.metrics import MetricAccumulator

    acc = MetricAccumulator(task="anticipation")
    acc.update(torch.randn(6, 8), torch.randn(6, 8), torch.arange(6), torch.arange(6))
    reported = set(acc.compute())
    assert reported == {"verb_recall5", "noun_recall5", "action_recall5"}
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "anticipation.md").read_text()
    metrics = guide.split("**Metrics.**", 1)[1].split("\n\n", 1)[0]
    assert "Top-1 accuracies are reported" not in metrics
    assert set(re.findall(r"`(\w+_recall5)`", metrics)) == reported


BAD_TIMES = [dict(anticipation_time=-1.0), dict(anticipation_time=float("nan")), dict(observation_time=0.0),
             dict(observation_time=float("inf"))]  # fmt: skip


@pytest.mark.parametrize("times", BAD_TIMES)
def test_observed_window_refuses_times_that_give_no_window_before_the_action(times):
    # observed_window(241, fps=60, anticipation_time=-1) gave (182, 301): frames inside the action, with no error;
    # a NaN failed with "cannot convert float NaN to integer" (also as `mambavl evaluate --anticipation-time nan`)
    with pytest.raises(ValueError, match="`anticipation_time` must be >= 0 and `observation_time` > 0"):
        observed_window(241, fps=60, **times)
    with pytest.raises(ValueError, match="`anticipation_time` must be >= 0 and `observation_time` > 0"):
        EK100AnticipationDataset([], None, **times)


def test_evaluating_a_model_for_the_other_task_is_named():
    # `mambavl evaluate` without --task anticipation scored an anticipation model on the actions' own frames, without
    # a word; the reverse scored a recognition model on the seconds before each action
    from types import SimpleNamespace

    from mambavl.cli import _task_mismatch

    anticipation = SimpleNamespace(architectures=["MambaVLForActionAnticipation"])
    assert "saved as a anticipation model" not in (_task_mismatch(anticipation, "recognition") or "")
    assert "--task anticipation to evaluate it as it was trained" in _task_mismatch(anticipation, "recognition")
    recognition = SimpleNamespace(architectures=["MambaVLForActionRecognition"])
    assert "--task recognition" in _task_mismatch(recognition, "anticipation")
    assert _task_mismatch(anticipation, "anticipation") is None and _task_mismatch(recognition, "recognition") is None
    assert _task_mismatch(SimpleNamespace(architectures=None), "recognition") is None
