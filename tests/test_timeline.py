"""The PNG timeline of a stream."""

from __future__ import annotations

import numpy as np
import pytest

from mambavl.data import ActionSegment, UntrimmedVideoLabels, read_image
from mambavl.timeline import plot_timeline

pytest.importorskip("matplotlib")


def test_ten_minute_timeline(tmp_path):
    rng = np.random.default_rng(0)
    segments, t = [], 0.0
    while t < 590:
        start = t + rng.uniform(0.5, 3.0)
        segments.append(ActionSegment(start, start + rng.uniform(1, 2), int(rng.integers(8)), int(rng.integers(8))))
        t = segments[-1].stop
    labels = UntrimmedVideoLabels("v", segments, duration=600.0)
    times = np.arange(0, 600, 0.5)
    verbs, nouns = labels.at(times)
    scores = rng.uniform(0.2, 1.0, times.size)
    path = plot_timeline(
        tmp_path / "sub" / "timeline.png", times, verbs, nouns, scores, labels=labels,
        verb_names=[f"v{i}" for i in range(8)], noun_names=[f"n{i}" for i in range(8)], title="ten minutes",
    )  # fmt: skip
    image = read_image(path)
    # ten rows of one minute, each with a truth and a prediction band: a tall, wide picture
    assert image.shape[1] >= 1400 and image.shape[0] >= 600
    # predictions equal to the truth: the same colours appear in both bands (not only white and grey)
    colours = {tuple(c) for c in image.reshape(-1, 3)[::37]}
    assert len(colours) > 15


def test_predictions_only_and_background(tmp_path):
    path = plot_timeline(tmp_path / "t.png", [0.0, 1.0, 2.0], [0, -1, 1], [2, -1, 0])
    assert read_image(path).shape[2] == 3


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="one entry per step"):
        plot_timeline(tmp_path / "t.png", [0.0, 1.0], [0], [0, 1])
    with pytest.raises(ValueError, match="increasing"):
        plot_timeline(tmp_path / "t.png", [1.0, 0.0], [0, 0], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        plot_timeline(tmp_path / "t.png", [], [], [])
