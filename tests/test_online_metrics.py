"""Online detection / anticipation metrics on hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mambavl.data import ActionSegment, UntrimmedVideoLabels
from mambavl.online_metrics import (
    BACKGROUND,
    average_precision,
    majority_action_baseline,
    online_anticipation_metrics,
    online_detection_metrics,
    per_frame_action_average_precision,
    per_frame_average_precision,
)

# 5 steps, 3 classes; class 2 never occurs (excluded from the mean); steps 1 and 4 are background
SCORES = [[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.8, 0.0], [0.1, 0.2, 0.7]]
LABELS = [0, BACKGROUND, 1, 0, BACKGROUND]


def test_average_precision_by_hand():
    # ranked T F T F: P@1 = 1 at R = 1/2, P@3 = 2/3 at R = 1
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # tied scores are one threshold: {0.5, 0.5} gives P = 1/2 at R = 1/2, then P = 2/3 at R = 1
    assert average_precision([0.5, 0.5, 0.2], [1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([0.5, 0.5, 0.2], [0, 1, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)  # order-free
    assert np.isnan(average_precision([0.1, 0.2], [0, 0]))


def test_per_frame_map_by_hand():
    mean, per_class = per_frame_average_precision(SCORES, LABELS)
    # class 0: scores 0.9(T) 0.6 0.5(T) 0.2 0.1 -> (1 + 2/3) / 2; class 1: 0.8(F) 0.7(T) -> 1/2
    assert per_class == pytest.approx({0: 5 / 6, 1: 0.5})
    assert mean == pytest.approx((5 / 6 + 0.5) / 2)
    # an ignored step (-100) is left out: dropping step 3 makes class 1 perfect and class 0 too
    mean2, per_class2 = per_frame_average_precision(SCORES, [0, BACKGROUND, 1, -100, BACKGROUND])
    assert per_class2 == pytest.approx({0: 1.0, 1: 1.0}) and mean2 == pytest.approx(1.0)


def test_action_map_by_hand():
    pv = [[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]]
    pn = [[0.7, 0.3], [0.1, 0.9], [0.1, 0.9]]
    mean, per_class = per_frame_action_average_precision(
        pv, pn, [0, BACKGROUND, 1], [0, BACKGROUND, 1], scores_are="probs"
    )
    # (0, 0): 0.63(T) 0.02 0.01 -> 1; (1, 1): 0.81(F, background) 0.72(T) -> 1/2
    assert per_class == pytest.approx({(0, 0): 1.0, (1, 1): 0.5})
    assert mean == pytest.approx(0.75)


def test_detection_summary_by_hand():
    noun_scores = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0], [0.0, 1.0], [1.0, 0.0]])
    noun_labels = [1, BACKGROUND, 1, 0, BACKGROUND]
    out = online_detection_metrics(torch.tensor(SCORES).log(), noun_scores, LABELS, noun_labels)
    assert out["num_steps"] == 5 and out["num_action_steps"] == 3
    assert out["background_rate"] == pytest.approx(40.0)
    assert out["verb_top1"] == pytest.approx(100 * 2 / 3)  # argmax 0, 1, 1 against 0, 1, 0
    assert out["noun_top1"] == pytest.approx(100 * 1 / 3)  # argmax 0, 1, 1 against 1, 1, 0
    assert out["action_top1"] == pytest.approx(100 * 1 / 3)  # only step 2 gets both right: (1, 1)
    assert out["verb_mAP"] == pytest.approx(100 * (5 / 6 + 0.5) / 2)
    # actions (0, 1) at step 0 and (1, 1) at step 2, (0, 0) at step 3: the most frequent is (0, 0) by tie order
    assert out["majority_action_top1"] == pytest.approx(100 / 3)


def test_majority_baseline():
    assert majority_action_baseline([0, 0, 1, BACKGROUND, 0], [1, 1, 2, BACKGROUND, 0]) == ((0, 1), 0.5)
    with pytest.raises(ValueError, match="no step"):
        majority_action_baseline([BACKGROUND], [BACKGROUND])


def test_online_anticipation_by_hand():
    labels = UntrimmedVideoLabels("v", [ActionSegment(1.0, 2.0, 0, 1), ActionSegment(3.0, 4.0, 1, 0)])
    times = np.array([0.0, 1.0, 2.0, 3.0])
    fv, fn = labels.anticipation_targets(times, 1.0)  # targets at 1, 2, 3, 4 s
    assert fv.tolist() == [0, BACKGROUND, 1, BACKGROUND]
    verb = torch.tensor([[0.1, 0.9, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).log()
    noun = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1], [0.5, 0.5]]).log()
    out = online_anticipation_metrics(verb, noun, fv, fn, k=1)
    assert out["num_action_steps"] == 2
    assert out["verb_recall1"] == pytest.approx(50.0)  # class 0 missed, class 1 hit
    assert out["noun_recall1"] == pytest.approx(100.0)
    assert out["action_recall1"] == pytest.approx(50.0)
    assert online_anticipation_metrics(verb, noun, fv, fn, k=2)["verb_recall2"] == pytest.approx(100.0)


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        per_frame_average_precision(SCORES, [0, 1])
    with pytest.raises(ValueError, match="found 7"):
        per_frame_average_precision(SCORES, [0, 7, 1, 0, 0])
    with pytest.raises(ValueError, match="no step has an action"):
        per_frame_average_precision(SCORES, [BACKGROUND] * 5)
    with pytest.raises(ValueError, match="same steps"):
        online_detection_metrics(SCORES, SCORES, [0, 1, 1, 0, 0], [0, BACKGROUND, 1, 0, 0])
    with pytest.raises(TypeError, match="integer"):
        per_frame_average_precision(SCORES, [0.0, 1.0, 1.0, 0.0, 0.0])
