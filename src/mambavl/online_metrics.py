"""Online action detection and anticipation metrics over untrimmed streams (as LSTR, TeSTra and MAT score them).

A stream is scored *per step* (per frame): at every step the model gives verb and noun scores, and the ground truth
is the action running at that time (:meth:`mambavl.data.UntrimmedVideoLabels.at`), or :data:`BACKGROUND` (``-1``)
where none runs. The model has no background class, so:

- **per-frame mAP** (:func:`per_frame_average_precision`): for every class with at least one positive step, the
  average precision of that class's score over *all* steps (background steps are negatives), then the mean over those
  classes. Background is not a class of the mean. Action classes are the (verb, noun) pairs that occur in the ground
  truth, scored ``p(verb) * p(noun)``. AP is the step-wise (non-interpolated) precision-recall area of
  ``sklearn.metrics.average_precision_score``, with tied scores handled as one threshold.
- **per-frame top-1 accuracy**: over the steps where an action runs (background steps are left out and their
  fraction is reported as ``background_rate``).
- **online anticipation** (:func:`online_anticipation_metrics`): at every step ``t`` the target is the action that
  runs at ``t + t_a`` (:meth:`~mambavl.data.UntrimmedVideoLabels.anticipation_targets`); class-mean top-5 recall over
  the steps with an action target, as in EPIC-KITCHENS-100 anticipation.

Labels are ``(S,)`` integers: class ids, :data:`BACKGROUND` (``-1``) for "no action", or ``-100``
(:data:`~mambavl.metrics.IGNORE_INDEX`) for a step left out of every metric. Scores are ``(S, K)`` logits (a softmax
is applied) or probabilities (``scores_are="probs"``). Low-level functions return fractions in [0, 1];
:func:`online_detection_metrics` and :func:`online_anticipation_metrics` return percentages like the papers' tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .metrics import (
    IGNORE_INDEX,
    ScoresKind,
    _check_labels,
    _check_pair,
    _check_scores,
    _probabilities,
    action_accuracy,
    anticipation_metrics,
    topk_accuracy,
)

__all__ = [
    "BACKGROUND",
    "average_precision",
    "majority_action_baseline",
    "online_anticipation_metrics",
    "online_detection_metrics",
    "per_frame_action_average_precision",
    "per_frame_average_precision",
]

BACKGROUND = -1
"""Label of a step where no action runs (the same value as :data:`mambavl.data.BACKGROUND`)."""


def _labels(x: Any, name: str, steps: int, num_classes: int) -> np.ndarray:
    """``(S,)`` int64 labels in ``[0, K)``, ``BACKGROUND`` or ``IGNORE_INDEX``."""
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach()
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"`{name}` must hold integer class ids, got dtype {t.dtype}")
    if t.ndim != 1 or t.shape[0] != steps:
        raise ValueError(f"`{name}` must have shape ({steps},) to match the scores, got shape {tuple(t.shape)}")
    y = t.long().cpu().numpy()
    bad = (y != BACKGROUND) & (y != IGNORE_INDEX) & ((y < 0) | (y >= num_classes))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"`{name}` must be in [0, {num_classes}), {BACKGROUND} (background) or {IGNORE_INDEX} (ignored); "
            f"found {int(y[i])} at step {i}"
        )
    return y


def _scores_and_labels(
    verb_scores: Any, noun_scores: Any, verb_labels: Any, noun_labels: Any
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """The checked ``(S, V)`` / ``(S, N)`` scores and ``(S,)`` labels of one stream, background at the same steps."""
    v, n = _check_pair(verb_scores, noun_scores)
    yv = _labels(verb_labels, "verb_labels", v.shape[0], v.shape[1])
    yn = _labels(noun_labels, "noun_labels", n.shape[0], n.shape[1])
    if ((yv == BACKGROUND) != (yn == BACKGROUND)).any():
        raise ValueError("`verb_labels` and `noun_labels` must be background (-1) at the same steps")
    return v, n, yv, yn


def average_precision(scores: Any, targets: Any) -> float:
    """Average precision of one class: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, highest
    first (``sklearn.metrics.average_precision_score``; tied scores form one threshold).

    Args:
        scores: ``(S,)`` scores of the class at each step.
        targets: ``(S,)`` booleans (or 0/1): the class is the ground truth at that step.

    Returns:
        AP in [0, 1], or ``nan`` when no step is positive.

    >>> from mambavl.online_metrics import average_precision
    >>> average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])  # P@1 = 1, P@3 = 2/3: (1 + 2/3) / 2
    0.8333333333333333
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(targets).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"`scores` and `targets` must have the same length, got {s.shape[0]} and {y.shape[0]}")
    if np.isnan(s).any():
        raise ValueError("`scores` contains NaN")
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    last = np.r_[np.flatnonzero(np.diff(s)), s.shape[0] - 1]  # the last index of each run of equal scores
    tp = tp[last].astype(np.float64)
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_frame_average_precision(scores: Any, labels: Any) -> tuple[float, dict[int, float]]:
    """Per-frame mean average precision over the classes that occur in ``labels`` (background excluded).

    Args:
        scores: ``(S, K)`` per-step class scores (only their order within a class matters).
        labels: ``(S,)`` class ids, :data:`BACKGROUND` (a negative for every class) or ``-100`` (step left out).

    Returns:
        ``(mAP, {class_id: AP})`` as fractions.

    Raises:
        ValueError: when no step has an action label.
    """
    s = _check_scores(scores, "scores")
    y = _labels(labels, "labels", s.shape[0], s.shape[1])
    keep = y != IGNORE_INDEX
    s_np, y = s.cpu().double().numpy()[keep], y[keep]
    classes = sorted(int(c) for c in np.unique(y) if c != BACKGROUND)
    if not classes:
        raise ValueError("no step has an action label (every label is background or ignored)")
    per_class = {c: average_precision(s_np[:, c], y == c) for c in classes}
    return float(np.mean(list(per_class.values()))), per_class


def per_frame_action_average_precision(
    verb_scores: Any,
    noun_scores: Any,
    verb_labels: Any,
    noun_labels: Any,
    *,
    scores_are: ScoresKind = "logits",
) -> tuple[float, dict[tuple[int, int], float]]:
    """Per-frame mAP over the (verb, noun) action classes that occur in the ground truth.

    The score of action ``(v, n)`` at a step is ``p(v) * p(n)``; a step is a positive of ``(v, n)`` when both labels
    match, a negative otherwise (background included). Steps with a ``-100`` verb or noun label are left out.

    Returns:
        ``(mAP, {(verb, noun): AP})`` as fractions.
    """
    v, n, yv, yn = _scores_and_labels(verb_scores, noun_scores, verb_labels, noun_labels)
    keep = (yv != IGNORE_INDEX) & (yn != IGNORE_INDEX)
    pv = _probabilities(v, scores_are, "verb_scores").double().cpu().numpy()[keep]
    pn = _probabilities(n, scores_are, "noun_scores").double().cpu().numpy()[keep]
    yv, yn = yv[keep], yn[keep]
    pairs = sorted({(int(a), int(b)) for a, b in zip(yv, yn, strict=True) if a != BACKGROUND})
    if not pairs:
        raise ValueError("no step has an action label (every label is background or ignored)")
    per_class = {(a, b): average_precision(pv[:, a] * pn[:, b], (yv == a) & (yn == b)) for a, b in pairs}
    return float(np.mean(list(per_class.values()))), per_class


def _foreground(labels: np.ndarray) -> np.ndarray:
    """Labels with background turned into ``IGNORE_INDEX`` (for the accuracy and recall functions)."""
    out = labels.copy()
    out[out == BACKGROUND] = IGNORE_INDEX
    return out


def online_detection_metrics(
    verb_scores: Any,
    noun_scores: Any,
    verb_labels: Any,
    noun_labels: Any,
    *,
    scores_are: ScoresKind = "logits",
) -> dict[str, float]:
    """Online action detection metrics of a stream (or of several streams concatenated), in percent.

    Args:
        verb_scores: ``(S, V)`` verb scores at each step.
        noun_scores: ``(S, N)`` noun scores at each step.
        verb_labels / noun_labels: ``(S,)`` ground truth at each step (:data:`BACKGROUND` where no action runs,
            ``-100`` to leave a step out).
        scores_are: ``"logits"`` or ``"probs"``.

    Returns:
        ``verb_mAP``, ``noun_mAP``, ``action_mAP`` (per-frame mAP, background excluded), ``verb_top1``,
        ``noun_top1``, ``action_top1`` (over the action steps), ``background_rate`` (percent of the scored steps
        with no action), ``majority_action_top1`` (always answering the most frequent action of these labels, see
        :func:`majority_action_baseline`), and ``num_steps`` / ``num_action_steps``.
    """
    v, n, yv, yn = _scores_and_labels(verb_scores, noun_scores, verb_labels, noun_labels)
    scored = (yv != IGNORE_INDEX) & (yn != IGNORE_INDEX)
    action = scored & (yv != BACKGROUND)
    if not action.any():
        raise ValueError("no step has an action label (every label is background or ignored)")
    verb_map, _ = per_frame_average_precision(v, np.where(scored, yv, IGNORE_INDEX))
    noun_map, _ = per_frame_average_precision(n, np.where(scored, yn, IGNORE_INDEX))
    action_map, _ = per_frame_action_average_precision(v, n, yv, yn, scores_are=scores_are)
    fv, fn = _foreground(yv), _foreground(yn)
    fv[~scored], fn[~scored] = IGNORE_INDEX, IGNORE_INDEX
    return {
        "verb_mAP": 100 * verb_map,
        "noun_mAP": 100 * noun_map,
        "action_mAP": 100 * action_map,
        "verb_top1": 100 * topk_accuracy(v, fv, ks=(1,))[1],
        "noun_top1": 100 * topk_accuracy(n, fn, ks=(1,))[1],
        "action_top1": 100 * action_accuracy(v, n, fv, fn, ks=(1,), scores_are=scores_are)[1],
        "background_rate": 100 * float(1.0 - action.sum() / scored.sum()),
        "majority_action_top1": 100 * majority_action_baseline(yv[scored], yn[scored])[1],
        "num_steps": int(scored.sum()),
        "num_action_steps": int(action.sum()),
    }


def majority_action_baseline(verb_labels: Any, noun_labels: Any) -> tuple[tuple[int, int], float]:
    """The most frequent action over the action steps, and the top-1 accuracy of always answering it there.

    This is the strongest constant answer for these labels (it is chosen on them), the bar an online detector must
    clearly beat. Ties go to the smallest ``(verb, noun)``.

    Returns:
        ``((verb, noun), accuracy)`` with the accuracy as a fraction.
    """
    yv = np.asarray(verb_labels, dtype=np.int64).reshape(-1)
    yn = np.asarray(noun_labels, dtype=np.int64).reshape(-1)
    if yv.shape != yn.shape:
        raise ValueError(f"`verb_labels` and `noun_labels` must have the same length, got {yv.size} and {yn.size}")
    action = (yv >= 0) & (yn >= 0)
    if not action.any():
        raise ValueError("no step has an action label (every label is background or ignored)")
    pairs, counts = np.unique(np.stack([yv[action], yn[action]], axis=1), axis=0, return_counts=True)
    best = int(np.argmax(counts))  # np.unique sorts the pairs, argmax takes the first maximum
    return (int(pairs[best, 0]), int(pairs[best, 1])), float(counts[best] / action.sum())


def online_anticipation_metrics(
    verb_scores: Any,
    noun_scores: Any,
    future_verb_labels: Any,
    future_noun_labels: Any,
    *,
    k: int = 5,
    scores_are: ScoresKind = "logits",
) -> dict[str, float]:
    """Online anticipation: class-mean top-``k`` recall at every step whose target is an action, in percent.

    Args:
        verb_scores / noun_scores: ``(S, V)`` / ``(S, N)`` scores at each step ``t``.
        future_verb_labels / future_noun_labels: ``(S,)`` the action running at ``t + t_a``
            (:meth:`~mambavl.data.UntrimmedVideoLabels.anticipation_targets`); :data:`BACKGROUND` steps are left out.
        k: the ``k`` of recall@k (5 in EPIC-KITCHENS-100).

    Returns:
        ``verb_recall{k}``, ``noun_recall{k}``, ``action_recall{k}`` (class-mean over the classes present:
        :func:`mambavl.metrics.anticipation_metrics`), ``verb_top1`` / ``noun_top1`` / ``action_top1`` and
        ``num_action_steps``.
    """
    v, n = _check_pair(verb_scores, noun_scores)
    yv = _foreground(_labels(future_verb_labels, "future_verb_labels", v.shape[0], v.shape[1]))
    yn = _foreground(_labels(future_noun_labels, "future_noun_labels", n.shape[0], n.shape[1]))
    if ((yv == IGNORE_INDEX) != (yn == IGNORE_INDEX)).any():
        raise ValueError("`future_verb_labels` and `future_noun_labels` must be background (-1) at the same steps")
    yv_t = _check_labels(yv, "future_verb_labels", v.shape[0], v.shape[1], v.device)
    yn_t = _check_labels(yn, "future_noun_labels", n.shape[0], n.shape[1], v.device)
    return {
        **anticipation_metrics(v, n, yv_t, yn_t, k=k, scores_are=scores_are),
        "verb_top1": 100 * topk_accuracy(v, yv_t, ks=(1,))[1],
        "noun_top1": 100 * topk_accuracy(n, yn_t, ks=(1,))[1],
        "action_top1": 100 * action_accuracy(v, n, yv_t, yn_t, ks=(1,), scores_are=scores_are)[1],
        "num_action_steps": int((yv != IGNORE_INDEX).sum()),
    }
