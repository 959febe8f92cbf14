"""Action anticipation sampling (EPIC-KITCHENS-100 protocol).

To anticipate an action that starts at time ``t_s``, the model observes the ``observation_time`` seconds that end
``anticipation_time`` seconds (``τ_a``, 1 s in EK100) before it: the window ``[t_s - τ_a - τ_o, t_s - τ_a]``. The label
is the upcoming action's verb and noun.

Actions that start less than ``τ_a + τ_o`` after the beginning of their video have (part of) that window before the
first frame. As in the EK100 anticipation baseline (RULSTM), the window is clamped to the video start: sampled frame
numbers below 1 become frame 1, so the first frame repeats (an action starting within ``τ_a`` of the video start is
observed as its first frame only). How many segments were clamped is logged once; ``too_early="skip"`` leaves them
out instead (also logged).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from .epic_kitchens import EK100SegmentDataset, SkippedSegment

__all__ = ["EK100AnticipationDataset", "observed_window"]

logger = logging.getLogger(__name__)


def _check_times(anticipation_time: float, observation_time: float) -> None:
    """τ_a >= 0 and τ_o > 0, both finite: otherwise the window is not before the action, or is empty or unbounded."""
    if not (0 <= anticipation_time < math.inf and 0 < observation_time < math.inf):
        raise ValueError(
            "`anticipation_time` must be >= 0 and `observation_time` > 0 (finite seconds), got "
            f"{anticipation_time} and {observation_time}."
        )


def observed_window(
    start_frame: int, fps: float, anticipation_time: float = 1.0, observation_time: float = 2.0
) -> tuple[int, int, bool]:
    """EK100 frame numbers (1-based, inclusive) of the observed window before an action: the ``round(τ_o * fps)``
    frames that end with the frame shown at ``t_s - τ_a``.

    Args:
        start_frame: the action's first frame (1-based, at ``fps``).
        fps: the rate of the frame numbers.
        anticipation_time: ``τ_a``, seconds between the end of the observation and the action start.
        observation_time: ``τ_o``, seconds observed.

    Returns:
        ``(first, last, clamped)``: the window, clamped to start at frame 1 or later, and whether it was clamped.

    >>> observed_window(241, fps=60, anticipation_time=1.0, observation_time=2.0)  # t_s = 4 s: observe 1 s .. 3 s
    (62, 181, False)
    >>> observed_window(61, fps=60)  # the action starts 1 s in: only the first frame is observable
    (1, 1, True)
    """
    if fps <= 0:
        raise ValueError(f"`fps` must be positive, got {fps}.")
    _check_times(anticipation_time, observation_time)
    last = start_frame - math.ceil(anticipation_time * fps)
    first = last - max(1, round(observation_time * fps)) + 1
    clamped = first < 1
    return max(first, 1), max(last, 1), clamped


class EK100AnticipationDataset(EK100SegmentDataset):
    """Observed windows before EK100-format action segments, labelled with the upcoming action.

    Items are those of :class:`~mambavl.data.EK100SegmentDataset` (``frames``, ``verb_class``, ...), but the frames
    come from ``[t_s - τ_a - τ_o, t_s - τ_a]`` (see the module docstring for segments near the video start).

    Args:
        annotations: EK100-format annotations (a ``datasets.Dataset`` or a path).
        source: a video source; its ``fps(video_id)`` gives the rate of the annotations' frame numbers.
        anticipation_time: ``τ_a`` in seconds (EK100: 1.0).
        observation_time: ``τ_o`` in seconds observed before ``t_s - τ_a``.
        too_early: ``"clamp"`` (EK100 baseline: repeat the first frame) or ``"skip"`` segments whose window starts
            before the video.
        **kwargs: the other arguments of :class:`~mambavl.data.EK100SegmentDataset` (``num_frames``, ``sampling``,
            ``num_views``, ``on_error``, ``seed``, ...).
    """

    def __init__(
        self,
        annotations: Any,
        source: Any,
        anticipation_time: float = 1.0,
        observation_time: float = 2.0,
        too_early: str = "clamp",
        **kwargs: Any,
    ):
        _check_times(anticipation_time, observation_time)
        if too_early not in ("clamp", "skip"):
            raise ValueError(f"`too_early` must be 'clamp' or 'skip', got {too_early!r}.")
        self.anticipation_time, self.observation_time, self.too_early = anticipation_time, observation_time, too_early
        super().__init__(annotations, source, **kwargs)
        clamped = [p for p in self.positions if self._window(self.annotations[p])[2]]
        if clamped and too_early == "skip":
            self._exclude([
                SkippedSegment(
                    p, str(self.annotations[p]["narration_id"]), str(self.annotations[p]["video_id"]),
                    "observed window starts before the video",
                )
                for p in clamped
            ])  # fmt: skip
        if clamped:
            logger.info(
                "%d of %d segments start less than anticipation_time + observation_time = %.2f s after their video "
                "starts: %s.",
                len(clamped), len(self.annotations), anticipation_time + observation_time,
                "their observed windows begin at the first frame (repeated)" if too_early == "clamp" else "skipped",
            )  # fmt: skip
        self.num_clamped = len(clamped)

    def _window(self, row: Mapping[str, Any]) -> tuple[int, int, bool]:
        return observed_window(
            int(row["start_frame"]), float(self.source.fps(str(row["video_id"]))), self.anticipation_time,
            self.observation_time,
        )  # fmt: skip

    def segment_bounds(self, row: Mapping[str, Any]) -> tuple[int, int]:
        """The observed window ``(first, last)`` (EK100 frame numbers) before the action of ``row``."""
        first, last, _ = self._window(row)
        return first, last
