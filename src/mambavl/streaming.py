"""Online action understanding: a streamer that reads an unbounded video with MambaVL's recurrent state.

:class:`MambaVLStreamer` is fed decoded frames (any number at a time) or precomputed feature steps. Every ``stride``
frames it runs the video encoder on the last ``window`` frames, hands the window's tokens to the model together with
the carried :class:`~mambavl.MambaVLCache`, and reports the top-``k`` actions: the action happening *now* for a
:class:`~mambavl.MambaVLForActionRecognition`, the action coming *next* for a
:class:`~mambavl.MambaVLForActionAnticipation`. The cache has a fixed size (Mamba's conv and SSM states, plus the last
``pool_window`` fused video tokens that the heads pool), and the frame buffer holds at most ``window`` frames, so
memory does not grow with the stream.

Exactness: the scores at step ``k`` equal those of one forward pass of the model over the tokens of windows
``1..k`` concatenated, pooled over the last ``pool_window`` tokens (the ``pool_window`` semantics of the cache).
"""

from __future__ import annotations

import logging
import numbers
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .video_processing_mambavl import _normalize_crop_size, _positive_int

__all__ = ["MambaVLStreamer", "StreamStep", "iter_video_frames", "tokens_per_window"]

logger = logging.getLogger(__name__)


@dataclass
class StreamStep:
    """What the streamer reports after one step.

    Attributes:
        index: 0-based step number since the last :meth:`MambaVLStreamer.reset`.
        frame: 0-based index (in the fed stream) of the last frame (or feature step) the step has read.
        time: ``frame / fps`` in seconds (``None`` without ``fps``); for anticipation, the action is predicted
            for a time after this one.
        actions: the top-``k`` actions, best first: dicts ``{"verb_id", "noun_id", "verb", "noun", "score",
            "verb_score", "noun_score"}`` (``verb_score = p(verb)``, ``noun_score = p(noun)``, the action's
            ``score = p(verb) * p(noun)``; names from the model's ``id2label`` maps, else ``None``).
        verb_logits: ``(num_verb_classes,)`` float32 logits of this step (for metrics).
        noun_logits: ``(num_noun_classes,)`` float32 logits.
        seconds: wall-clock time the step took (encoder + fusion + heads).
        task: ``"recognition"`` (actions now) or ``"anticipation"`` (actions next).
    """

    index: int
    frame: int
    time: float | None
    actions: list[dict[str, Any]]
    verb_logits: torch.Tensor = field(repr=False)
    noun_logits: torch.Tensor = field(repr=False)
    seconds: float = 0.0
    task: str = "recognition"

    @property
    def top(self) -> dict[str, Any]:
        """The best action (``actions[0]``)."""
        return self.actions[0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (no logits)."""
        return {
            "step": self.index, "frame": self.frame, "time": self.time, "task": self.task,
            "seconds": round(self.seconds, 6), "actions": self.actions,
        }  # fmt: skip


def _task_of(model: Any) -> str:
    from .modeling_mambavl import MambaVLForActionAnticipation, MambaVLForActionRecognition

    if isinstance(model, MambaVLForActionAnticipation):
        return "anticipation"
    if isinstance(model, MambaVLForActionRecognition):
        return "recognition"
    raise TypeError(
        f"`model` must be a MambaVLForActionRecognition or MambaVLForActionAnticipation, got {type(model).__name__}."
    )


class MambaVLStreamer:
    """Run a MambaVL action model over a stream of frames or feature steps, in constant memory.

    Args:
        model: a :class:`~mambavl.MambaVLForActionRecognition` (reports the action now) or
            :class:`~mambavl.MambaVLForActionAnticipation` (the action next). Put it in ``eval()`` mode; the
            streamer does not change it.
        processor: a :class:`~mambavl.MambaVLProcessor`: turns each window of frames into ``pixel_values`` and
            builds the questions. Optional with ``question_inputs`` and features.
        window: ``T``, the frames the video encoder reads at each step (default: the processor's ``num_frames``;
            the processor samples its ``num_frames`` evenly from the window, as from a training clip). Feature
            streams have no window: each step reads the ``stride`` new feature steps.
        stride: frames (or feature steps) between two steps (default: ``window`` for frames, 1 for features).
        questions: your own ``(verb_question, noun_question)`` pair, asked at every step (masked like any
            question). Default: the processor's fixed label-free questions.
        question_inputs: ready ``verb_input_ids``, ``verb_attention_mask``, ``noun_input_ids``,
            ``noun_attention_mask`` (each ``(1, L)``) instead of building questions with the processor.
        top_k: actions reported per step.
        fps: frame (or feature step) rate of the fed stream, to report step times in seconds.
        carry_state: ``True`` (default) carries the recurrent state across steps. ``False`` re-reads each window
            from a zero state (the sliding-window baseline that streaming is compared with).

    Pooling follows the model's ``config.pool_window``: the heads pool the last ``pool_window`` fused video tokens
    (the cache keeps exactly these), while the SSM states carry the whole history. For online detection set it to
    the tokens of one window (:func:`~mambavl.streaming.tokens_per_window`), so that each step is classified like a
    training clip: ``from_pretrained(path, pool_window=tokens_per_window(model, processor))``. With
    ``pool_window=None`` the heads pool over every token seen (exact clip semantics, still constant memory, but the
    answer then describes the whole stream rather than the present); the streamer logs a warning.

    Example (features; frames work the same with :meth:`push_frames`):

    >>> streamer = MambaVLStreamer(model, processor, stride=4, fps=2.0)            # doctest: +SKIP
    >>> for step in streamer.push_features(features):                              # doctest: +SKIP
    ...     print(step.time, step.top["verb"], step.top["noun"], step.top["score"])
    """

    def __init__(
        self,
        model: Any,
        processor: Any = None,
        *,
        window: int | None = None,
        stride: int | None = None,
        questions: tuple[str, str] | None = None,
        question_inputs: dict[str, torch.Tensor] | None = None,
        top_k: int = 5,
        fps: float | None = None,
        carry_state: bool = True,
    ):
        self.task = _task_of(model)
        self.model = model
        self.processor = processor
        if window is None and processor is not None:
            window = processor.video_processor.num_frames
        self.window = _positive_int(window, "window") if window is not None else None
        self.stride = _positive_int(stride, "stride") if stride is not None else None
        self.top_k = _positive_int(top_k, "top_k")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not fps > 0):
            raise ValueError(f"`fps` must be a positive number, got {fps!r}.")
        self.fps = float(fps) if fps is not None else None
        if getattr(model.config, "fusion_type", "mamba") != "mamba":
            raise ValueError(
                f"Streaming needs the recurrent Mamba fusion (fusion_type='mamba'), got {model.config.fusion_type!r}."
            )
        if getattr(model.config, "pool_window", None) is None:
            logger.warning(
                "config.pool_window is None: the heads pool over every token of the stream. For online detection "
                "load the model with pool_window=tokens_per_window(model, processor)."
            )
        self.carry_state = bool(carry_state)
        self._questions = self._question_inputs(questions, question_inputs)
        self._verbs = model.config.verb_id2label or {}
        self._nouns = model.config.noun_id2label or {}
        self.reset()

    # -- set-up -----------------------------------------------------------------------------------------------------
    def _question_inputs(self, questions: tuple[str, str] | None, given: dict[str, torch.Tensor] | None) -> dict:
        keys = ("verb_input_ids", "verb_attention_mask", "noun_input_ids", "noun_attention_mask")
        if given is not None:
            if questions is not None:
                raise ValueError("Pass `questions` or `question_inputs`, not both.")
            missing = [k for k in keys if k not in given]
            if missing:
                raise ValueError(f"`question_inputs` lacks {missing}.")
            out = {k: torch.as_tensor(given[k]) for k in keys}
            for k, v in out.items():
                if v.dim() != 2 or v.shape[0] != 1:
                    raise ValueError(f"`question_inputs[{k!r}]` must be (1, L), got {tuple(v.shape)}.")
            return out
        if self.processor is None:
            raise ValueError("Pass a `processor` (it builds the questions and processes frames) or `question_inputs`.")
        pairs = None if questions is None else [tuple(questions)]
        if pairs is not None and not (len(pairs[0]) == 2 and all(isinstance(q, str) for q in pairs[0])):
            raise ValueError(
                f"`questions` must be a (verb_question, noun_question) pair of strings, got {questions!r}."
            )
        dummy = np.zeros((1, 1, 1), dtype=np.float32)  # only the questions of this batch are used
        batch = self.processor(video_features=dummy, questions=pairs)
        return {k: batch[k] for k in keys}

    def reset(self) -> None:
        """Start a new stream: empty the cache, the frame buffer and the counters."""
        self.cache = None
        self._frames: deque[np.ndarray] = deque(maxlen=self.window or 1)
        self._pending: list[torch.Tensor] = []
        self._pending_len = 0
        self._fed: str | None = None  # "frames" or "features": one stream is fed one kind
        self.frames_seen = 0
        self.steps = 0

    @property
    def memory_bytes(self) -> int:
        """Bytes held for the stream: the cache's tensors plus the buffered frames / feature steps."""
        cache = int(self.cache.nbytes) if self.cache is not None else 0
        frames = sum(f.nbytes for f in self._frames)
        pending = sum(t.numel() * t.element_size() for t in self._pending)
        return cache + frames + pending

    # -- feeding ------------------------------------------------------------------------------------------------------
    def push_frames(self, frames: Any) -> list[StreamStep]:
        """Feed decoded frames; returns the steps they completed (possibly none).

        Args:
            frames: ``(n, H, W, 3)`` uint8 frames (array or tensor), one ``(H, W, 3)`` frame, or a list of frames,
                all of one size. The streamer keeps a copy of the frames of its window, so the caller may reuse its
                buffer (e.g. a camera writing every frame into one array).
        """
        if self.processor is None:
            raise ValueError("Streaming frames needs a `processor` (MambaVLProcessor) to turn them into pixel_values.")
        if self.window is None:
            raise ValueError("Streaming frames needs a `window` (frames per step).")
        self._feed("frames")
        if isinstance(frames, torch.Tensor):
            frames = frames.cpu().numpy()
        if isinstance(frames, np.ndarray):
            if frames.ndim == 3:
                frames = frames[None]
            if frames.ndim != 4:
                raise ValueError(f"`frames` must be (n, H, W, C) or (H, W, C), got shape {frames.shape}.")
            frames = list(frames)
        stride = self.stride or self.window
        out = []
        for frame in frames:
            frame = np.array(frame.cpu() if isinstance(frame, torch.Tensor) else frame)  # a copy: buffers get reused
            if frame.ndim == 4:  # e.g. iter_video_frames' (frames, fps) pairs given to stream() as they come
                raise ValueError(
                    f"`frames` holds a batch of frames {frame.shape} as one of its items: pass the (n, H, W, 3) array "
                    "itself (iter_video_frames yields (frames, fps) pairs: `for frames, fps in ...`)."
                )
            if frame.ndim != 3 or 3 not in (frame.shape[-1], frame.shape[0]):
                raise ValueError(
                    f"Each frame must be (H, W, 3) RGB, got shape {frame.shape} (frame {self.frames_seen} of the "
                    "stream); convert grayscale/RGBA frames to RGB, and pass a batch of frames as (n, H, W, 3)."
                )
            if self._frames and frame.shape != self._frames[-1].shape:
                raise ValueError(
                    f"Frame {self.frames_seen} of the stream has shape {frame.shape}, the previous one "
                    f"{self._frames[-1].shape}: a stream's frames must have one size (resize them, or reset())."
                )
            self._frames.append(frame)
            self.frames_seen += 1
            if self.frames_seen >= self.window and (self.frames_seen - self.window) % stride == 0:
                pixel_values = self.processor.video_processor([np.stack(self._frames)], return_tensors="pt")[
                    "pixel_values"
                ]
                out.append(self._step({"pixel_values": pixel_values}))
        return out

    def push_features(self, features: Any) -> list[StreamStep]:
        """Feed precomputed feature steps (tokens before the video projection); returns the steps completed.

        Args:
            features: ``(n, video_feature_size)`` (or ``(1, n, video_feature_size)``) array or tensor.
        """
        x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
        if x.dim() == 3 and x.shape[0] == 1:
            x = x[0]
        size = self.model.config.video_feature_size
        if x.dim() != 2 or x.shape[-1] != size:
            raise ValueError(f"`features` must be (n, {size}), got shape {tuple(x.shape)}.")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            rows = (~torch.isfinite(x)).any(dim=1).nonzero()[:, 0]
            raise ValueError(
                f"`features` has NaN or infinite values in {len(rows)} of its {x.shape[0]} rows (first: row "
                f"{int(rows[0])}, feature step {self.frames_seen + int(rows[0])} of the stream)."
            )
        self._feed("features")
        stride = self.stride or 1
        out = []
        start = 0
        while start < x.shape[0]:
            take = min(stride - self._pending_len, x.shape[0] - start)
            self._pending.append(x[start : start + take].clone())  # a copy: the caller may reuse its buffer
            self._pending_len += take
            self.frames_seen += take
            start += take
            if self._pending_len == stride:
                chunk = torch.cat(self._pending)[None]
                self._pending, self._pending_len = [], 0
                out.append(self._step({"video_features": chunk}))
        return out

    def _feed(self, kind: str) -> None:
        if self._fed is not None and self._fed != kind:
            raise ValueError(
                f"This stream was fed {self._fed}, now {kind}: a stream reads one kind of input; call reset() (or "
                f"use another streamer) to start a stream of {kind}."
            )
        self._fed = kind

    def stream(self, chunks: Iterable[Any], *, features: bool = False) -> Iterator[StreamStep]:
        """Yield the steps of a whole stream of frame (or feature) chunks, after a :meth:`reset`.

        Args:
            chunks: an iterable of ``(n, H, W, 3)`` uint8 frame chunks (what :meth:`push_frames` takes; unpack
                :func:`~mambavl.streaming.iter_video_frames`' ``(frames, fps)`` pairs), or with ``features=True`` of
                ``(n, video_feature_size)`` feature chunks (what :meth:`push_features` takes).
            features: the chunks are feature steps, not frames.

        Yields:
            :class:`~mambavl.streaming.StreamStep`, in order.
        """
        self.reset()
        push = self.push_features if features else self.push_frames
        for chunk in chunks:
            yield from push(chunk)

    # -- one step ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _step(self, video: dict[str, torch.Tensor]) -> StreamStep:
        from .metrics import rank_actions

        start = time.perf_counter()
        model = self.model
        parameter = next(model.parameters())
        video = {k: v.to(parameter.device, parameter.dtype) for k, v in video.items()}
        questions = {k: v.to(parameter.device) for k, v in self._questions.items()}
        if "pixel_values" in video:  # encoder tokens of the window, so that their number is known
            video = {
                "video_features": model.mambavl.video_encoder(pixel_values=video["pixel_values"]).last_hidden_state
            }
        cache = self.cache if self.carry_state else None
        out = model(**video, **questions, cache_params=cache, use_cache=True, return_dict=True)
        self.cache = out.cache_params
        verb_logits, noun_logits = out.verb_logits[0].float().cpu(), out.noun_logits[0].float().cpu()
        k = min(self.top_k, verb_logits.numel() * noun_logits.numel())
        verb_ids, noun_ids, scores = rank_actions(verb_logits[None], noun_logits[None], k=k)
        p_verb, p_noun = torch.softmax(verb_logits, dim=0).tolist(), torch.softmax(noun_logits, dim=0).tolist()
        actions = [
            {"verb_id": v, "noun_id": n, "verb": self._verbs.get(v), "noun": self._nouns.get(n), "score": s,
             "verb_score": p_verb[v], "noun_score": p_noun[n]}
            for v, n, s in zip(verb_ids[0].tolist(), noun_ids[0].tolist(), scores[0].tolist(), strict=True)
        ]  # fmt: skip
        frame = self.frames_seen - 1
        step = StreamStep(
            index=self.steps, frame=frame, time=frame / self.fps if self.fps else None, actions=actions,
            verb_logits=verb_logits, noun_logits=noun_logits, seconds=time.perf_counter() - start, task=self.task,
        )  # fmt: skip
        self.steps += 1
        return step


@torch.no_grad()
def tokens_per_window(model: Any, processor: Any) -> int:
    """Video tokens the model's encoder makes of one processed window (``processor.video_processor`` output), e.g.
    64 for the demo's 3-D CNN on 8 frames of 32x32: the ``pool_window`` that classifies each step like a clip."""
    encoder = getattr(model.mambavl, "video_encoder", None) if hasattr(model, "mambavl") else None
    if encoder is None:
        raise ValueError("The model has no video encoder (it reads precomputed features): pass the pool window.")
    vp = processor.video_processor
    num_frames = vp.num_frames or 1
    crop = _normalize_crop_size(vp.crop_size) if vp.crop_size is not None else {"height": 224, "width": 224}
    side = 2 * max(crop["height"], crop["width"])  # larger than the crop whatever the resize does
    frames = np.zeros((num_frames, side, side, 3), dtype=np.uint8)
    pixel_values = vp([frames], return_tensors="pt")["pixel_values"].to(next(model.parameters()).device)
    return int(encoder(pixel_values=pixel_values).last_hidden_state.shape[1])


def iter_video_frames(
    path: str | os.PathLike, *, sample_fps: float | None = None, chunk_size: int = 32
) -> Iterator[tuple[np.ndarray, float]]:
    """Decode a video file sequentially, in chunks, in constant memory.

    Args:
        path: a video file PyAV decodes.
        sample_fps: keep frames at this rate (the first decoded frame at or after each ``i / sample_fps``, to half a
            frame); default (or above the video's rate) every frame.
        chunk_size: frames per yielded chunk.

    Yields:
        ``(frames, fps)``: ``(n, H, W, 3)`` uint8 RGB frames and the rate of the yielded frames.
    """
    from .data.video import VideoDecodingError, _av_errors, _import_av, _open_input, _stream_fps, _video_stream

    av = _import_av()
    path = os.fspath(path)
    chunk_size = _positive_int(chunk_size, "chunk_size")
    if sample_fps is not None and not sample_fps > 0:
        raise ValueError(f"`sample_fps` must be positive, got {sample_fps!r}.")
    container = _open_input(av, path)
    with container:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream, path)
        rate = float(sample_fps) if sample_fps is not None else fps
        if rate > fps:
            logger.warning("%s has %.3g fps, fewer than sample_fps=%.3g: every frame is kept", path, fps, rate)
            rate = fps
        keep_every = fps / rate
        buffer: list[np.ndarray] = []
        next_keep = 0.0
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i + 0.5 < next_keep:
                    continue
                next_keep += keep_every
                buffer.append(frame.to_ndarray(format="rgb24"))
                if len(buffer) == chunk_size:
                    yield np.stack(buffer), rate
                    buffer = []
        except _av_errors(av) as error:  # truncated or corrupt data
            raise VideoDecodingError(
                f"Decoding {path!r} failed (corrupt or truncated?): {error}", path=path
            ) from error
        if buffer:
            yield np.stack(buffer), rate
