"""Timeline pictures of a stream: the top predicted action at each step against the ground-truth segments.

:func:`plot_timeline` draws one PNG with matplotlib (``pip install "mambavl[demo]"``). A long video is cut into rows
of ``row_seconds`` (one minute for videos over 4 minutes, so a 10-minute video is ten rows); each row has a
ground-truth band (when labels are given) above a prediction band whose bar height grows with the top action's score.
Each action keeps one colour in both bands; the ``max_legend`` most frequent actions get their own colour and a legend
entry, the rest are drawn grey ("other"). Background (no action, or no prediction) is left white.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_timeline"]


def _action_name(verb: int, noun: int, verb_names: Sequence[str] | None, noun_names: Sequence[str] | None) -> str:
    v = verb_names[verb] if verb_names is not None and 0 <= verb < len(verb_names) else f"verb {verb}"
    n = noun_names[noun] if noun_names is not None and 0 <= noun < len(noun_names) else f"noun {noun}"
    return f"{v} {n}"


def _runs(starts: np.ndarray, stops: np.ndarray, keys: list[Any]) -> list[tuple[float, float, Any]]:
    """Merge consecutive intervals with the same key: ``[(start, stop, key)]``."""
    out: list[tuple[float, float, Any]] = []
    for a, b, k in zip(starts.tolist(), stops.tolist(), keys, strict=True):
        if out and out[-1][2] == k and abs(out[-1][1] - a) < 1e-9:
            out[-1] = (out[-1][0], b, k)
        else:
            out.append((a, b, k))
    return out


def plot_timeline(
    path: str | os.PathLike,
    times: Sequence[float] | np.ndarray,
    verbs: Sequence[int] | np.ndarray,
    nouns: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
    *,
    labels: Any = None,
    verb_names: Sequence[str] | None = None,
    noun_names: Sequence[str] | None = None,
    duration: float | None = None,
    row_seconds: float | None = None,
    max_legend: int = 20,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Write a PNG timeline of a stream's top actions (and of its ground truth).

    Args:
        path: the PNG file to write (its folder is created).
        times: ``(S,)`` time in seconds of each step, increasing; the prediction of step ``i`` is drawn from
            ``times[i]`` to ``times[i + 1]`` (the last one for the median step length).
        verbs: ``(S,)`` top verb id per step (``-1``: no prediction, drawn as background).
        nouns: ``(S,)`` top noun id per step.
        scores: ``(S,)`` the top action's score in [0, 1]: the bar height is ``0.2 + 0.8 * score`` of the band
            (default: full height).
        labels: a :class:`~mambavl.data.UntrimmedVideoLabels` to draw the ground truth from (optional).
        verb_names / noun_names: class names for the legend.
        duration: seconds shown (default: the end of the last step or of the labels).
        row_seconds: seconds per row (default: one row up to 45 s, rows of 30 s up to 4 minutes, then of 60 s).
        max_legend: actions with their own colour and legend entry (the most frequent ones).
        title: the figure title.
        dpi: resolution.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    t = np.asarray(times, dtype=np.float64).reshape(-1)
    v = np.asarray(verbs, dtype=np.int64).reshape(-1)
    n = np.asarray(nouns, dtype=np.int64).reshape(-1)
    if t.size == 0:
        raise ValueError("`times` is empty: there is no step to draw.")
    if v.shape != t.shape or n.shape != t.shape:
        raise ValueError(
            f"`times`, `verbs` and `nouns` must have one entry per step, got {t.size}, {v.size}, {n.size}."
        )
    if (np.diff(t) <= 0).any():
        raise ValueError("`times` must be strictly increasing.")
    s = np.ones_like(t) if scores is None else np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if s.shape != t.shape:
        raise ValueError(f"`scores` must have one entry per step ({t.size}), got {s.size}.")
    step = float(np.median(np.diff(t))) if t.size > 1 else 1.0
    stops = np.r_[t[1:], t[-1] + step]
    end = float(stops[-1]) if duration is None else float(duration)
    if labels is not None:
        end = max(end, float(labels.duration)) if duration is None else end
    if row_seconds is None:
        row_seconds = end if end <= 45 else 30.0 if end <= 240 else 60.0
    if not row_seconds > 0:
        raise ValueError(f"`row_seconds` must be positive, got {row_seconds!r}.")
    num_rows = max(1, int(np.ceil(end / row_seconds - 1e-9)))

    predicted = [(int(a), int(b)) if a >= 0 and b >= 0 else None for a, b in zip(v, n, strict=True)]
    truth = []
    if labels is not None:
        truth = [(seg.start, seg.stop, (seg.verb, seg.noun)) for seg in labels.segments]
    weight = Counter()
    for (a, b), key in zip(zip(t, stops, strict=True), predicted, strict=True):
        if key is not None:
            weight[key] += b - a
    for a, b, key in truth:
        weight[key] += b - a
    palette = [to_rgba(f"C{i}") for i in range(10) if i != 7] + [  # C7 is grey, the colour of "other"
        to_rgba(c)
        for c in ("#7fc97f", "#beaed4", "#fdc086", "#386cb0", "#f0027f", "#bf5b17", "#1b9e77", "#d95f02", "#7570b3",
                  "#e7298a", "#000075")
    ]  # fmt: skip
    legend_keys = [k for k, _ in weight.most_common(max(0, min(max_legend, len(palette))))]
    colour = {k: palette[i] for i, k in enumerate(legend_keys)}
    other = to_rgba("#9a9a9a")

    bands = 2 if labels is not None else 1
    legend_rows = int(np.ceil((len(legend_keys) + (len(weight) > len(legend_keys))) / 5))
    legend_inches = 0.2 * legend_rows + 0.1 if legend_rows else 0.0
    fig = Figure(figsize=(14, 0.6 + (0.42 * bands + 0.3) * num_rows + legend_inches))
    FigureCanvasAgg(fig)
    axes = fig.subplots(num_rows, 1, squeeze=False)[:, 0]
    pred_runs = _runs(t, stops, [(k, round(float(x), 2)) for k, x in zip(predicted, s, strict=True)])
    for r, ax in enumerate(axes):
        lo, hi = r * row_seconds, min(end, (r + 1) * row_seconds)
        ax.set_xlim(lo, lo + row_seconds)
        ax.set_ylim(0, bands)
        ax.set_yticks([b + 0.5 for b in range(bands)])
        ax.set_yticklabels(["predicted", "truth"][:bands], fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        for spine in ("top", "right"):
            ax.spines[spine].set_visible(False)
        ax.axvline(hi, color="black", linewidth=0.6)
        for a, b, (key, score) in pred_runs:
            if key is None or b <= lo or a >= hi:
                continue
            height = 0.9 * (0.2 + 0.8 * score)  # a floor keeps low-confidence answers visible
            ax.broken_barh([(max(a, lo), min(b, hi) - max(a, lo))], (0.05, height), color=colour.get(key, other))
        for a, b, key in truth:
            if b <= lo or a >= hi:
                continue
            ax.broken_barh([(max(a, lo), min(b, hi) - max(a, lo))], (1.05, 0.9), color=colour.get(key, other))
    axes[-1].set_xlabel("time (s)", fontsize=9)
    handles = [Patch(color=colour[k], label=_action_name(*k, verb_names, noun_names)) for k in legend_keys]
    if len(weight) > len(legend_keys):
        handles.append(Patch(color=other, label="other actions"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out
