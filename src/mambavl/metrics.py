"""Action recognition and anticipation metrics (EPIC-KITCHENS-100 conventions).

Pure PyTorch; every function takes ``torch.Tensor`` or anything ``torch.as_tensor`` accepts (NumPy
arrays, lists), on any device.

Shapes and conventions
----------------------
- ``verb_scores``: ``(B, V)``, ``noun_scores``: ``(B, N)``, any ``scores``: ``(B, K)``. Scores are
  logits by default (``scores_are="logits"``: a softmax turns them into probabilities); pass
  ``scores_are="probs"`` for scores that already are non-negative probabilities.
- Labels are integer class ids of shape ``(B,)``; the label ``-100`` (:data:`IGNORE_INDEX`, the
  ``ignore_index`` of ``torch.nn.CrossEntropyLoss``) marks a sample without that label. Such samples are
  left out of that metric (an action needs both labels). Any other label outside ``[0, K)`` is an
  error.
- Rankings are deterministic: classes are ordered by descending score, equal scores by ascending
  class id (a stable sort). For actions see :func:`rank_actions`.
- The low-level functions (:func:`topk_accuracy`, :func:`action_accuracy`,
  :func:`class_mean_recall_at_k`, ...) return **fractions in [0, 1]**; the summaries
  (:func:`recognition_metrics`, :func:`anticipation_metrics`, :func:`per_class_table`,
  :class:`MetricAccumulator`) report **percentages in [0, 100]**, like the EPIC-KITCHENS tables.

Action scores
-------------
The score of the action ``(v, n)`` is ``p(v) * p(n)``, as in the official EPIC-KITCHENS-100
evaluation (``compute_action_scores`` of ``epic-kitchens/C1-Action-Recognition``, which multiplies the
softmaxed top-100 verb and noun scores). Its renormalisation over the top 100 nouns scales every
product of a sample by the same constant, so the ranking of action pairs is the one computed here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "IGNORE_INDEX",
    "MetricAccumulator",
    "action_accuracy",
    "action_class_mean_recall_at_k",
    "anticipation_metrics",
    "class_mean_recall_at_k",
    "format_table",
    "per_class_table",
    "rank_actions",
    "recognition_metrics",
    "topk_accuracy",
]

IGNORE_INDEX = -100
"""Label value that marks a sample as unlabelled for a task (``CrossEntropyLoss``'s default)."""

ScoresKind = Literal["logits", "probs"]


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def _to_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"`{name}` must be a tensor or array-like, got {type(x).__name__}") from err


def _check_scores(x: Any, name: str) -> torch.Tensor:
    t = _to_tensor(x, name)
    if t.ndim != 2:
        raise ValueError(f"`{name}` must have shape (batch, num_classes), got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"`{name}` has no classes (shape {tuple(t.shape)})")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"`{name}` must be real-valued scores, got dtype {t.dtype}")
    if not t.is_floating_point() or t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if torch.isnan(t).any():
        raise ValueError(f"`{name}` contains NaN")
    return t


def _check_labels(x: Any, name: str, batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    t = _to_tensor(x, name)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"`{name}` must hold integer class ids, got dtype {t.dtype}")
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"`{name}` must have shape ({batch},) to match the scores, got shape {tuple(t.shape)}")
    t = t.long().to(device)
    bad = (t != IGNORE_INDEX) & ((t < 0) | (t >= num_classes))
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"`{name}` must be in [0, {num_classes}) or {IGNORE_INDEX} (ignored); found {int(t[i])} at position {i}"
        )
    return t


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    if isinstance(ks, int):
        ks = (ks,)
    out = tuple(ks)
    if not out or not all(isinstance(k, int | np.integer) and not isinstance(k, bool) and k >= 1 for k in out):
        raise ValueError(f"`ks` must be a non-empty sequence of positive integers, got {ks!r}")
    return tuple(int(k) for k in out)


def _check_k(k: int, name: str = "k") -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {k!r}")
    return int(k)


def _probabilities(scores: torch.Tensor, scores_are: str, name: str) -> torch.Tensor:
    if scores_are == "logits":
        return torch.softmax(scores, dim=1)
    if scores_are == "probs":
        if (scores < 0).any():
            raise ValueError(f"`{name}` has negative values but scores_are='probs'")
        return scores
    raise ValueError(f"`scores_are` must be 'logits' or 'probs', got {scores_are!r}")


def _check_pair(verb_scores: Any, noun_scores: Any) -> tuple[torch.Tensor, torch.Tensor]:
    v = _check_scores(verb_scores, "verb_scores")
    n = _check_scores(noun_scores, "noun_scores")
    if v.shape[0] != n.shape[0]:
        raise ValueError(
            f"`verb_scores` and `noun_scores` must have the same batch size, got shapes "
            f"{tuple(v.shape)} and {tuple(n.shape)}"
        )
    n = n.to(v.device)
    return v, n


def _topk_stable(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of the ``min(k, K)`` largest entries per row, largest first, ties by ascending index."""
    vals, idx = torch.sort(scores, dim=1, descending=True, stable=True)
    return vals[:, :k], idx[:, :k]


def _ranked(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Class ids of the ``min(k, K)`` best classes per row, best first, ties by ascending id."""
    return _topk_stable(scores, k)[1]


def _require_samples(mask: torch.Tensor, what: str) -> None:
    if not bool(mask.any()):
        raise ValueError(f"no labelled samples for {what}: every label is {IGNORE_INDEX} or the batch is empty")


# --------------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------------


def rank_actions(
    verb_scores: Any,
    noun_scores: Any,
    k: int = 5,
    *,
    scores_are: ScoresKind = "logits",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` best (verb, noun) pairs of each sample by ``p(verb) * p(noun)``.

    Args:
        verb_scores: ``(B, V)`` verb logits (or probabilities with ``scores_are="probs"``).
        noun_scores: ``(B, N)`` noun logits (or probabilities).
        k: number of pairs to return, ``1 <= k <= V * N``.
        scores_are: ``"logits"`` (softmax is applied per row) or ``"probs"`` (used as given; must be
            non-negative).

    Returns:
        ``(verb_ids, noun_ids, action_scores)``, each ``(B, k)``, best pair first: ``verb_ids`` and
        ``noun_ids`` are ``torch.long``; ``action_scores`` are the products ``p(verb) * p(noun)``.

    Ties are broken deterministically. Verbs are ranked by descending probability, equal
    probabilities by ascending id (``rank_v``); nouns likewise (``rank_n``). Pairs are ordered by the
    key ``(-p(v) * p(n), rank_v(v), rank_n(n))``.

    Only the top-``k`` verbs and top-``k`` nouns are combined (a ``(B, k, k)`` product instead of
    ``(B, V, N)``), which is exact. Proof: take a pair ``(v, n)`` whose verb is not among the ``k``
    best verbs. Each of those ``k`` verbs ``v_i`` has ``p(v_i) >= p(v)`` and ``rank_v(v_i) < rank_v(v)``.
    Probabilities are non-negative and floating-point rounding is monotone, so
    ``fl(p(v_i) * p(n)) >= fl(p(v) * p(n))``. When the two products are equal, the tie-break on
    ``rank_v`` puts ``(v_i, n)`` first. That gives ``k`` pairs ranked strictly before ``(v, n)``, so
    ``(v, n)`` is not in the top ``k``. The same holds for nouns. Every top-``k`` pair therefore has
    its verb among the top-``k`` verbs and its noun among the top-``k`` nouns. Within that ``k x k``
    grid, a stable sort of the row-major flattened products (``rank_v`` major, ``rank_n`` minor)
    applies the same tie-break.
    """
    v, n = _check_pair(verb_scores, noun_scores)
    k = _check_k(k)
    V, N = v.shape[1], n.shape[1]
    if k > V * N:
        raise ValueError(f"`k`={k} exceeds the number of (verb, noun) pairs {V} x {N} = {V * N}")
    pv = _probabilities(v, scores_are, "verb_scores")
    pn = _probabilities(n, scores_are, "noun_scores")
    dtype = torch.promote_types(pv.dtype, pn.dtype)
    pv, pn = pv.to(dtype), pn.to(dtype)

    kv, kn = min(k, V), min(k, N)  # kv * kn >= k because k <= V * N
    sv, iv = _topk_stable(pv, kv)
    sn, in_ = _topk_stable(pn, kn)

    prod = (sv[:, :, None] * sn[:, None, :]).reshape(v.shape[0], kv * kn)
    top, flat = torch.sort(prod, dim=1, descending=True, stable=True)
    flat = flat[:, :k]
    verb_ids = torch.gather(iv, 1, torch.div(flat, kn, rounding_mode="floor"))
    noun_ids = torch.gather(in_, 1, flat % kn)
    return verb_ids, noun_ids, top[:, :k]


# --------------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------------


def topk_accuracy(scores: Any, labels: Any, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy of class scores, as fractions in [0, 1].

    Args:
        scores: ``(B, K)`` scores (logits or probabilities: only the order matters).
        labels: ``(B,)`` integer labels; samples labelled ``-100`` are left out.
        ks: the values of ``k``. A ``k >= K`` counts every labelled sample as correct.

    Returns:
        ``{k: accuracy}``. A sample is correct at ``k`` when its label is among the ``k`` classes of
        highest score, with equal scores ranked by ascending class id.

    Raises:
        ValueError: on bad shapes or labels, or when no sample is labelled.
    """
    s = _check_scores(scores, "scores")
    y = _check_labels(labels, "labels", s.shape[0], s.shape[1], s.device)
    ks = _check_ks(ks)
    mask = y != IGNORE_INDEX
    _require_samples(mask, "topk_accuracy")
    ranked = _ranked(s[mask], max(ks))
    hits = ranked == y[mask, None]
    return {k: float(hits[:, :k].any(dim=1).double().mean()) for k in ks}


def _action_hits(
    verb_scores: Any,
    noun_scores: Any,
    verb_labels: Any,
    noun_labels: Any,
    k: int,
    scores_are: ScoresKind,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(hits (B', k), verb_labels (B',), noun_labels (B',), N)`` over samples with both labels."""
    v, n = _check_pair(verb_scores, noun_scores)
    yv = _check_labels(verb_labels, "verb_labels", v.shape[0], v.shape[1], v.device)
    yn = _check_labels(noun_labels, "noun_labels", n.shape[0], n.shape[1], v.device)
    mask = (yv != IGNORE_INDEX) & (yn != IGNORE_INDEX)
    _require_samples(mask, "actions (both a verb and a noun label are needed)")
    v, n, yv, yn = v[mask], n[mask], yv[mask], yn[mask]
    k = min(k, v.shape[1] * n.shape[1])
    verb_ids, noun_ids, _ = rank_actions(v, n, k, scores_are=scores_are)
    hits = (verb_ids == yv[:, None]) & (noun_ids == yn[:, None])
    return hits, yv, yn, n.shape[1]


def action_accuracy(
    verb_scores: Any,
    noun_scores: Any,
    verb_labels: Any,
    noun_labels: Any,
    ks: Iterable[int] = (1, 5),
    *,
    scores_are: ScoresKind = "logits",
) -> dict[int, float]:
    """Top-k action accuracy (EPIC-KITCHENS-100 convention), as fractions in [0, 1].

    A sample is correct at ``k`` when its label pair ``(verb, noun)`` is among the ``k`` best
    *action pairs* of :func:`rank_actions` (ranked by ``p(verb) * p(noun)``), which is what the
    official evaluation does with the action scores it derives. At ``k = 1`` this means the top pair
    equals the label pair. It is *not* "verb in top-k and noun in top-k". Samples missing either
    label (``-100``) are left out.
    """
    ks = _check_ks(ks)
    hits, _, _, _ = _action_hits(verb_scores, noun_scores, verb_labels, noun_labels, max(ks), scores_are)
    return {k: float(hits[:, :k].any(dim=1).double().mean()) for k in ks}


# --------------------------------------------------------------------------------------------------
# Class-mean recall (anticipation)
# --------------------------------------------------------------------------------------------------


def _class_mean(hit: torch.Tensor, class_ids: torch.Tensor, keep: torch.Tensor | None) -> float:
    """Mean over the distinct ``class_ids`` (restricted to ``keep`` if given) of the mean ``hit``."""
    if keep is not None:
        sel = torch.isin(class_ids, keep)
        hit, class_ids = hit[sel], class_ids[sel]
    if class_ids.numel() == 0:
        raise ValueError("no class to average over: none of the requested classes occurs in the labels")
    uniq, inverse = torch.unique(class_ids, return_inverse=True)
    counts = torch.bincount(inverse, minlength=uniq.numel()).double()
    tp = torch.bincount(inverse, weights=hit.double(), minlength=uniq.numel())
    return float((tp / counts).mean())


def _check_classes(classes: Any, num_classes: int, device: torch.device) -> torch.Tensor | None:
    if classes is None:
        return None
    c = _to_tensor(list(classes) if not isinstance(classes, torch.Tensor | np.ndarray) else classes, "classes")
    c = c.reshape(-1)
    if c.is_floating_point() or c.dtype == torch.bool:
        raise TypeError(f"`classes` must hold integer class ids, got dtype {c.dtype}")
    c = c.long().to(device)
    if ((c < 0) | (c >= num_classes)).any():
        raise ValueError(f"`classes` must be in [0, {num_classes}), got {c.tolist()}")
    return c


def class_mean_recall_at_k(scores: Any, labels: Any, k: int = 5, classes: Iterable[int] | None = None) -> float:
    """Class-mean recall@k (the EPIC-KITCHENS-100 anticipation metric), as a fraction in [0, 1].

    For each class ``c``, recall@k is the fraction of samples labelled ``c`` whose ``k`` best classes
    contain ``c``; the result is the unweighted mean over classes.

    Only classes **present in** ``labels`` are averaged: a class with no labelled sample has no
    defined recall and is excluded (it does not count as 0). This is the convention of the official
    anticipation evaluation (RULSTM's ``topk_recall``: ``classes = intersect(classes, unique(labels))``).

    Args:
        scores: ``(B, K)`` scores.
        labels: ``(B,)`` labels; ``-100`` is ignored.
        k: the recall cut-off.
        classes: optional subset of class ids (e.g. the tail classes) to average over. The subset's
            classes absent from ``labels`` are excluded as above.

    Raises:
        ValueError: on bad input, or when no class is left to average over.
    """
    s = _check_scores(scores, "scores")
    y = _check_labels(labels, "labels", s.shape[0], s.shape[1], s.device)
    k = _check_k(k)
    keep = _check_classes(classes, s.shape[1], s.device)
    mask = y != IGNORE_INDEX
    _require_samples(mask, "class_mean_recall_at_k")
    hit = (_ranked(s[mask], k) == y[mask, None]).any(dim=1)
    return _class_mean(hit, y[mask], keep)


def action_class_mean_recall_at_k(
    verb_scores: Any,
    noun_scores: Any,
    verb_labels: Any,
    noun_labels: Any,
    k: int = 5,
    *,
    classes: Iterable[tuple[int, int]] | None = None,
    scores_are: ScoresKind = "logits",
) -> float:
    """Class-mean recall@k of actions, as a fraction in [0, 1].

    An action class is a ``(verb, noun)`` pair. A sample is recalled when its label pair is among
    the ``k`` best pairs of :func:`rank_actions`. Recall is averaged over the action classes present
    in the labels (see :func:`class_mean_recall_at_k`). ``classes`` optionally restricts the mean to
    the given ``(verb, noun)`` pairs. Samples missing either label are left out.
    """
    k = _check_k(k)
    hits, yv, yn, N = _action_hits(verb_scores, noun_scores, verb_labels, noun_labels, k, scores_are)
    keep = None
    if classes is not None:
        pairs = [tuple(int(c) for c in pair) for pair in classes]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("`classes` must be (verb, noun) pairs")
        keep = torch.tensor([v * N + n for v, n in pairs], dtype=torch.long, device=yv.device)
    return _class_mean(hits.any(dim=1), yv * N + yn, keep)


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------


def recognition_metrics(
    verb_scores: Any,
    noun_scores: Any,
    verb_labels: Any,
    noun_labels: Any,
    *,
    scores_are: ScoresKind = "logits",
) -> dict[str, float]:
    """EPIC-KITCHENS-100 action recognition metrics, in percent (0-100).

    Returns:
        ``{"verb_top1", "verb_top5", "noun_top1", "noun_top5", "action_top1", "action_top5"}``:
        top-k accuracies of verbs, nouns and actions (see :func:`action_accuracy`).
    """
    verb = topk_accuracy(verb_scores, verb_labels, (1, 5))
    noun = topk_accuracy(noun_scores, noun_labels, (1, 5))
    action = action_accuracy(verb_scores, noun_scores, verb_labels, noun_labels, (1, 5), scores_are=scores_are)
    out: dict[str, float] = {}
    for task, acc in (("verb", verb), ("noun", noun), ("action", action)):
        for k in (1, 5):
            out[f"{task}_top{k}"] = 100.0 * acc[k]
    return out


def anticipation_metrics(
    verb_scores: Any,
    noun_scores: Any,
    verb_labels: Any,
    noun_labels: Any,
    *,
    k: int = 5,
    scores_are: ScoresKind = "logits",
) -> dict[str, float]:
    """EPIC-KITCHENS-100 action anticipation metrics ("Overall" class-mean top-5 recall), in percent.

    Returns:
        ``{"verb_recall5", "noun_recall5", "action_recall5"}`` (the suffix is ``k``): class-mean
        recall@k over the classes present in the labels (:func:`class_mean_recall_at_k`,
        :func:`action_class_mean_recall_at_k`).
    """
    return {
        f"verb_recall{k}": 100.0 * class_mean_recall_at_k(verb_scores, verb_labels, k),
        f"noun_recall{k}": 100.0 * class_mean_recall_at_k(noun_scores, noun_labels, k),
        f"action_recall{k}": 100.0
        * action_class_mean_recall_at_k(verb_scores, noun_scores, verb_labels, noun_labels, k, scores_are=scores_are),
    }


def per_class_table(
    scores: Any,
    labels: Any,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    *,
    ks: Iterable[int] = (1, 5),
    include_absent: bool = False,
) -> list[dict[str, Any]]:
    """Per-class recall table, one row per class in ascending class id.

    Each row is ``{"class_id", "name", "support", "top1_recall", "top5_recall"}`` (one
    ``top{k}_recall`` per ``k`` in ``ks``, in percent). ``support`` is the number of samples with that
    label (``-100`` ignored). ``top1_recall`` is the class's top-1 accuracy. Classes without samples
    are left out unless ``include_absent=True``; their recalls are then ``None``. ``name`` comes
    from ``class_names`` (a sequence of ``K`` names, or a mapping from id to name), else ``str(id)``.
    """
    s = _check_scores(scores, "scores")
    K = s.shape[1]
    y = _check_labels(labels, "labels", s.shape[0], K, s.device)
    ks = _check_ks(ks)
    if class_names is not None and not isinstance(class_names, Mapping) and len(class_names) != K:
        raise ValueError(f"`class_names` has {len(class_names)} names but the scores have {K} classes")
    mask = y != IGNORE_INDEX
    y = y[mask]
    ranked = _ranked(s[mask], max(ks))
    hits = ranked == y[:, None]
    support = torch.bincount(y, minlength=K)
    recalled = {k: torch.bincount(y, weights=hits[:, :k].any(dim=1).double(), minlength=K) for k in ks}
    rows = []
    for c in range(K):
        n = int(support[c])
        if n == 0 and not include_absent:
            continue
        if class_names is None:
            name = str(c)
        elif isinstance(class_names, Mapping):
            name = str(class_names.get(c, c))
        else:
            name = str(class_names[c])
        row: dict[str, Any] = {"class_id": c, "name": name, "support": n}
        for k in ks:
            row[f"top{k}_recall"] = 100.0 * float(recalled[k][c]) / n if n else None
        rows.append(row)
    return rows


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str | tuple[str, str]] | None = None,
    *,
    float_format: str = "{:.2f}",
) -> str:
    """Format rows as a Markdown table.

    Args:
        rows: dictionaries, one per row.
        columns: the keys to show, in order; an item may be ``(key, header)`` to rename the column.
            Defaults to the keys of the first row.
        float_format: format of float cells. ``None`` cells print as an empty cell. ``|`` in text is
            escaped.

    Returns:
        The table, one line per row, ending with a newline.
    """
    if columns is None:
        if not rows:
            raise ValueError("`columns` is required when `rows` is empty")
        columns = list(rows[0].keys())
    keys, headers = [], []
    for col in columns:
        key, header = (col, col) if isinstance(col, str) else (col[0], col[1])
        keys.append(key)
        headers.append(str(header))

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float | np.floating):
            return float_format.format(float(value))
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"row {i} has no column(s) {missing}")
        lines.append("| " + " | ".join(cell(row[k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Streaming accumulator
# --------------------------------------------------------------------------------------------------


class MetricAccumulator:
    """Collects verb/noun scores and labels batch by batch, then computes the metrics once.

    Example::

        acc = MetricAccumulator(task="recognition")
        for batch in loader:
            out = model(**batch)
            acc.update(out.verb_logits, out.noun_logits, batch["verb_labels"], batch["noun_labels"])
        metrics = acc.compute()   # {"verb_top1": ..., ..., "action_top5": ...}

    Inputs may live on any device. They are detached and copied to the CPU as they arrive (scores as
    float32), so the accelerator holds no state. In distributed evaluation, gather each batch first
    (``accelerator.gather_for_metrics``).

    Args:
        task: ``"recognition"`` (:func:`recognition_metrics`), ``"anticipation"``
            (:func:`anticipation_metrics`) or ``"all"`` (both, merged into one dict).
        scores_are: ``"logits"`` or ``"probs"``, passed on to the metric functions.
    """

    TASKS = ("recognition", "anticipation", "all")

    def __init__(self, task: str = "recognition", *, scores_are: ScoresKind = "logits"):
        if task not in self.TASKS:
            raise ValueError(f"`task` must be one of {self.TASKS}, got {task!r}")
        if scores_are not in ("logits", "probs"):
            raise ValueError(f"`scores_are` must be 'logits' or 'probs', got {scores_are!r}")
        self.task = task
        self.scores_are = scores_are
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._verb_scores: list[torch.Tensor] = []
        self._noun_scores: list[torch.Tensor] = []
        self._verb_labels: list[torch.Tensor] = []
        self._noun_labels: list[torch.Tensor] = []
        self._num_classes: tuple[int, int] | None = None

    @property
    def num_samples(self) -> int:
        """Number of samples added so far."""
        return sum(t.shape[0] for t in self._verb_labels)

    def __len__(self) -> int:
        return self.num_samples

    def update(self, verb_scores: Any, noun_scores: Any, verb_labels: Any, noun_labels: Any) -> None:
        """Add a batch: ``verb_scores (B, V)``, ``noun_scores (B, N)``, labels ``(B,)`` (``-100`` ignored)."""
        v, n = _check_pair(verb_scores, noun_scores)
        V, N = v.shape[1], n.shape[1]
        if self._num_classes is not None and self._num_classes != (V, N):
            raise ValueError(
                f"inconsistent number of classes: earlier batches had (V, N) = {self._num_classes}, "
                f"this batch has {(V, N)}"
            )
        yv = _check_labels(verb_labels, "verb_labels", v.shape[0], V, v.device)
        yn = _check_labels(noun_labels, "noun_labels", n.shape[0], N, v.device)
        self._num_classes = (V, N)
        self._verb_scores.append(v.float().cpu())
        self._noun_scores.append(n.float().cpu())
        self._verb_labels.append(yv.cpu())
        self._noun_labels.append(yn.cpu())

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything added so far, concatenated: ``verb_scores, noun_scores, verb_labels, noun_labels``."""
        if not self._verb_labels or self.num_samples == 0:
            raise ValueError("MetricAccumulator is empty: call update() with at least one non-empty batch")
        return {
            "verb_scores": torch.cat(self._verb_scores),
            "noun_scores": torch.cat(self._noun_scores),
            "verb_labels": torch.cat(self._verb_labels),
            "noun_labels": torch.cat(self._noun_labels),
        }

    def compute(self) -> dict[str, float]:
        """The metrics of everything added so far, in percent (see ``task``)."""
        t = self.tensors()
        args = (t["verb_scores"], t["noun_scores"], t["verb_labels"], t["noun_labels"])
        out: dict[str, float] = {}
        if self.task in ("recognition", "all"):
            out.update(recognition_metrics(*args, scores_are=self.scores_are))
        if self.task in ("anticipation", "all"):
            out.update(anticipation_metrics(*args, scores_are=self.scores_are))
        return out
