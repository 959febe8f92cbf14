"""Ground truth over whole (untrimmed) videos: the action running at every time, or background.

EPIC-KITCHENS-format annotations list the narrated segments of a video; online action detection needs the label of
*every* moment of the stream instead. :func:`untrimmed_labels` turns the segment rows into one
:class:`UntrimmedVideoLabels` per video, whose :meth:`~UntrimmedVideoLabels.at` gives the verb and noun class running
at any times (``BACKGROUND = -1`` where no segment runs).

Time convention
---------------
A segment runs over the half-open interval ``[start, stop)`` in seconds. With ``annotation_fps`` (e.g. 60 for
EPIC-KITCHENS-100 frame numbers) the interval comes from the 1-based inclusive frame columns,
``start = (start_frame - 1) / fps`` and ``stop = stop_frame / fps``, so that frame ``i`` (0-based, at time ``i / fps``)
is inside exactly when ``start_frame <= i + 1 <= stop_frame``. Without it, from ``start_timestamp`` /
``stop_timestamp``. :meth:`UntrimmedVideoLabels.frame_labels` labels video frame ``i`` with the time ``i / fps``.

Overlapping segments
--------------------
EPIC-KITCHENS narrations overlap (a person washes a cup while turning off the tap). Where several segments run at the
same time, **the most recently started segment wins** (on equal starts, the one listed later in the file): it is the
action the person has just begun, which is what an online detector is asked to report. The number of overlapping
moments is available as :meth:`UntrimmedVideoLabels.overlap_fraction`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .epic_kitchens import timestamp_to_seconds

__all__ = ["BACKGROUND", "ActionSegment", "UntrimmedVideoLabels", "untrimmed_labels"]

BACKGROUND = -1
"""Class id of "no action is running" in untrimmed labels (not a model class)."""


@dataclass(frozen=True)
class ActionSegment:
    """One annotated action of an untrimmed video.

    Args:
        start: start time in seconds (inclusive).
        stop: end time in seconds (exclusive); ``stop > start``.
        verb: verb class id.
        noun: noun class id.
        narration: the narration text, when known.
        narration_id: the annotation's id, when known.
    """

    start: float
    stop: float
    verb: int
    noun: int
    narration: str = ""
    narration_id: str = ""


class UntrimmedVideoLabels:
    """The ground-truth action of one video at every time.

    Args:
        video_id: the video's id.
        segments: its annotated actions, in file order (the order breaks ties between segments that start together).
        duration: the video's length in seconds, when known (defaults to the end of the last segment).

    Example:

    >>> from mambavl.data import ActionSegment, UntrimmedVideoLabels
    >>> labels = UntrimmedVideoLabels("P01_01", [ActionSegment(1.0, 3.0, verb=2, noun=5),
    ...                                           ActionSegment(2.0, 4.0, verb=0, noun=1)])
    >>> verbs, nouns = labels.at([0.5, 1.0, 2.5, 3.5, 4.0])
    >>> verbs.tolist(), nouns.tolist()
    ([-1, 2, 0, 0, -1], [-1, 5, 1, 1, -1])
    """

    def __init__(self, video_id: str, segments: Sequence[ActionSegment], duration: float | None = None):
        segments = list(segments)
        for i, seg in enumerate(segments):
            if not isinstance(seg, ActionSegment):
                raise TypeError(f"`segments[{i}]` must be an ActionSegment, got {type(seg).__name__}.")
            if not (np.isfinite(seg.start) and np.isfinite(seg.stop)) or seg.stop <= seg.start or seg.start < 0:
                raise ValueError(
                    f"`segments[{i}]` of video {video_id!r} must have 0 <= start < stop, got start={seg.start}, "
                    f"stop={seg.stop}."
                )
            if seg.verb < 0 or seg.noun < 0:
                raise ValueError(f"`segments[{i}]` of video {video_id!r} has a negative class id ({seg}).")
        end = max((s.stop for s in segments), default=0.0)
        if duration is not None and duration < 0:
            raise ValueError(f"`duration` must be >= 0 seconds, got {duration}.")
        self.video_id = video_id
        self.segments = segments
        self.duration = float(duration) if duration is not None else float(end)
        # stable sort by start: a later index started later (or together but listed later) and wins overlaps
        self._order = sorted(range(len(segments)), key=lambda i: segments[i].start)

    def __len__(self) -> int:
        return len(self.segments)

    def __repr__(self) -> str:
        return f"UntrimmedVideoLabels({self.video_id!r}, {len(self.segments)} segments, {self.duration:.1f} s)"

    def segment_index_at(self, times: Any) -> np.ndarray:
        """Index into ``segments`` of the segment running at each time, ``-1`` for background.

        Args:
            times: ``(S,)`` times in seconds.

        Returns:
            ``(S,)`` int64; overlaps resolved by the latest start (see the module docstring).
        """
        t = np.asarray(times, dtype=np.float64)
        if t.ndim != 1:
            raise ValueError(f"`times` must be a 1-D sequence of seconds, got shape {t.shape}.")
        out = np.full(t.shape, -1, dtype=np.int64)
        for i in self._order:  # later starts overwrite earlier ones
            seg = self.segments[i]
            out[(t >= seg.start) & (t < seg.stop)] = i
        return out

    def at(self, times: Any) -> tuple[np.ndarray, np.ndarray]:
        """The ``(verb, noun)`` class ids running at ``times`` (seconds), :data:`BACKGROUND` where none runs.

        Returns:
            Two ``(S,)`` int64 arrays.
        """
        index = self.segment_index_at(times)
        verbs = np.array([s.verb for s in self.segments] + [BACKGROUND], dtype=np.int64)
        nouns = np.array([s.noun for s in self.segments] + [BACKGROUND], dtype=np.int64)
        return verbs[index], nouns[index]  # index -1 picks the trailing BACKGROUND

    def frame_labels(self, num_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
        """Labels of frames ``0 .. num_frames - 1`` of a video at ``fps`` (frame ``i`` is the time ``i / fps``).

        Returns:
            Two ``(num_frames,)`` int64 arrays (verb, noun), :data:`BACKGROUND` between segments.
        """
        if not isinstance(num_frames, int | np.integer) or num_frames < 0:
            raise ValueError(f"`num_frames` must be a non-negative integer, got {num_frames!r}.")
        if not fps > 0:
            raise ValueError(f"`fps` must be positive, got {fps!r}.")
        return self.at(np.arange(int(num_frames)) / float(fps))

    def anticipation_targets(self, times: Any, anticipation_time: float) -> tuple[np.ndarray, np.ndarray]:
        """The action that will be running ``anticipation_time`` seconds after each of ``times``: the target of
        online anticipation at those steps (:data:`BACKGROUND` where none will)."""
        if not anticipation_time >= 0:
            raise ValueError(f"`anticipation_time` must be >= 0 seconds, got {anticipation_time!r}.")
        return self.at(np.asarray(times, dtype=np.float64) + float(anticipation_time))

    def background_fraction(self, fps: float = 10.0) -> float:
        """Fraction of ``[0, duration)`` (sampled at ``fps``) where no action runs."""
        verbs, _ = self.frame_labels(max(1, int(np.ceil(self.duration * fps))), fps)
        return float(np.mean(verbs == BACKGROUND))

    def overlap_fraction(self, fps: float = 10.0) -> float:
        """Fraction of ``[0, duration)`` (sampled at ``fps``) where two or more segments run."""
        t = np.arange(max(1, int(np.ceil(self.duration * fps)))) / fps
        count = np.zeros(t.shape, dtype=np.int64)
        for seg in self.segments:
            count += (t >= seg.start) & (t < seg.stop)
        return float(np.mean(count >= 2))


def _rows(annotations: Any) -> list[Mapping[str, Any]]:
    """Annotation rows as dicts, from a path, a ``datasets.Dataset``, a pandas DataFrame or a list of dicts."""
    if isinstance(annotations, str | os.PathLike):
        from .epic_kitchens import load_annotations

        annotations = load_annotations(annotations)
    if hasattr(annotations, "to_dict") and hasattr(annotations, "columns"):  # pandas
        return annotations.to_dict("records")
    if hasattr(annotations, "column_names") and hasattr(annotations, "to_list"):  # datasets.Dataset
        return annotations.to_list()
    if isinstance(annotations, Iterable):
        rows = list(annotations)
        if all(isinstance(r, Mapping) for r in rows):
            return rows
    raise TypeError(
        "`annotations` must be an annotation file path, a datasets.Dataset, a pandas DataFrame or a list of row "
        f"dicts, got {type(annotations).__name__}."
    )


def untrimmed_labels(
    annotations: Any,
    *,
    annotation_fps: float | Mapping[str, float] | None = None,
    durations: Mapping[str, float] | None = None,
    video_ids: Sequence[str] | None = None,
) -> dict[str, UntrimmedVideoLabels]:
    """Per-video ground truth of EPIC-KITCHENS-format annotations.

    Args:
        annotations: an annotation CSV path (loaded with :func:`~mambavl.data.load_annotations`), a
            ``datasets.Dataset``, a pandas DataFrame, or a list of row dicts with ``video_id``, ``verb_class``,
            ``noun_class`` and either ``start_timestamp``/``stop_timestamp`` or ``start_frame``/``stop_frame``.
        annotation_fps: frame rate of ``start_frame``/``stop_frame`` (one number, or ``{video_id: fps}``); when
            given, times come from the frame columns, otherwise from the timestamps.
        durations: ``{video_id: seconds}`` lengths of the videos (the end of a video past its last segment is
            background); default: each video ends with its last segment.
        video_ids: keep these videos (in this order; a video without any segment gets an all-background
            timeline, which needs its duration). Default: every video of the file, in order of first appearance.

    Returns:
        ``{video_id: UntrimmedVideoLabels}``.

    Raises:
        ValueError: a row without labels or times, or an inverted segment (named by its narration id).
    """
    rows = _rows(annotations)
    per_video: dict[str, list[ActionSegment]] = {}
    for position, row in enumerate(rows):
        name = row.get("narration_id") or f"row {position}"
        for column in ("video_id", "verb_class", "noun_class"):
            if row.get(column) is None:
                raise ValueError(f"Annotation {name} has no {column!r}: untrimmed labels need labelled segments.")
        vid = str(row["video_id"])
        if annotation_fps is not None:
            fps = annotation_fps.get(vid) if isinstance(annotation_fps, Mapping) else annotation_fps
            if fps is None or not fps > 0:
                raise ValueError(f"`annotation_fps` gives no positive frame rate for video {vid!r}.")
            start, stop = (int(row["start_frame"]) - 1) / fps, int(row["stop_frame"]) / fps
        else:
            start = timestamp_to_seconds(row["start_timestamp"])
            stop = timestamp_to_seconds(row["stop_timestamp"])
        if stop <= start:
            raise ValueError(f"Annotation {name} of video {vid!r} has stop ({stop} s) <= start ({start} s).")
        per_video.setdefault(vid, []).append(
            ActionSegment(
                start=float(start),
                stop=float(stop),
                verb=int(row["verb_class"]),
                noun=int(row["noun_class"]),
                narration=str(row.get("narration") or ""),
                narration_id=str(row.get("narration_id") or ""),
            )
        )
    durations = dict(durations or {})
    ids = list(video_ids) if video_ids is not None else list(per_video)
    out = {}
    for vid in ids:
        segments = per_video.get(vid, [])
        if not segments and vid not in durations:
            raise ValueError(f"Video {vid!r} has no annotated segment and no entry in `durations`.")
        end = max((s.stop for s in segments), default=0.0)
        out[vid] = UntrimmedVideoLabels(vid, segments, max(end, durations.get(vid, end)))
    return out
