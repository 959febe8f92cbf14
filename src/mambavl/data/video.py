"""Video decoding, writing and TSN-style segment sampling.

Decoding uses `PyAV <https://pyav.basswood-io.com>`_ (FFmpeg bindings), installed with
``pip install "mambavl[video]"``. ``av`` is imported lazily, inside the functions that need it,
so the rest of the library imports without it.

Frame indices
-------------
All functions of this module take **0-based decoded frame indices**: index ``i`` is the ``i``-th
frame the decoder produces (presentation order). EPIC-KITCHENS-100 annotations number frames from
1 (``start_frame``/``stop_frame``, file names ``frame_0000000001.jpg``); the EK100 frame number
``k`` is the decoded frame ``k - 1``. :func:`sample_frame_indices` works in whatever unit its
``start_frame``/``stop_frame`` are given in (it never leaves ``[start_frame, stop_frame]``), so
the caller converts once, where it reads the frames (see
:class:`mambavl.data.epic_kitchens.EK100SegmentDataset`).

Decoding is frame-accurate for constant-frame-rate files such as the H.264/MP4 clips written by
:func:`write_video`: a frame's index is computed from its presentation timestamp,
``round((pts - stream_start) * time_base * fps)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "FrameIndexError",
    "VideoDecodingError",
    "VideoInfo",
    "decode_frames",
    "read_frame_folder",
    "read_image",
    "read_video_info",
    "sample_frame_indices",
    "write_image",
    "write_video",
]

_INSTALL_HINT = 'PyAV is required to read and write videos: pip install "mambavl[video]" (or pip install av).'


class VideoDecodingError(RuntimeError):
    """A video (or frame image) is missing, corrupt, truncated or cannot be decoded.

    The message always names the file. Attributes: ``path`` (the file), ``narration_id`` (the
    annotation segment being read when raised through a dataset, else ``None``) and ``index``
    (the frame index concerned, when there is one).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike | None = None,
        narration_id: str | None = None,
        index: int | None = None,
    ):
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)
        self.narration_id = narration_id
        self.index = index


class FrameIndexError(VideoDecodingError, IndexError):
    """A requested frame index lies beyond the end of the video (also an :class:`IndexError`)."""


@dataclass(frozen=True)
class VideoInfo:
    """Basic properties of a video stream.

    ``num_frames`` is the container's frame count when it stores one (MP4 does), otherwise an
    estimate ``round(duration * fps)``. ``duration`` is in seconds.
    """

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float


def _import_av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - exercised only without PyAV
        raise ImportError(_INSTALL_HINT) from exc
    return av


def _av_errors(av) -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError]
    ffmpeg_error = getattr(av, "FFmpegError", None) or getattr(getattr(av, "error", None), "FFmpegError", None)
    if ffmpeg_error is not None:
        errors.append(ffmpeg_error)
    return tuple(errors)


def _open_input(av, path: str):
    if not os.path.exists(path):
        raise VideoDecodingError(f"Video file not found: {path!r}", path=path)
    if os.path.isdir(path):
        raise VideoDecodingError(f"Expected a video file but got a directory: {path!r}", path=path)
    try:
        return av.open(path, mode="r")
    except _av_errors(av) as exc:
        raise VideoDecodingError(
            f"Cannot open video {path!r} (corrupt, truncated or not a video?): {exc}", path=path
        ) from exc


def _video_stream(container, path: str):
    if not container.streams.video:
        raise VideoDecodingError(f"No video stream in {path!r}", path=path)
    return container.streams.video[0]


def _stream_fps(stream, path: str) -> float:
    for rate in (stream.average_rate, stream.base_rate, getattr(stream, "guessed_rate", None)):
        if rate is not None and float(rate) > 0:
            return float(rate)
    raise VideoDecodingError(f"Cannot determine the frame rate of {path!r}", path=path)


def _stream_info(container, stream, path: str) -> VideoInfo:
    fps = _stream_fps(stream, path)
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000.0
    else:
        duration = 0.0
    num_frames = int(stream.frames or 0)
    if num_frames <= 0:
        num_frames = round(duration * fps)
    if duration <= 0 and num_frames > 0:
        duration = num_frames / fps
    ctx = stream.codec_context
    return VideoInfo(num_frames=num_frames, fps=fps, width=int(ctx.width), height=int(ctx.height), duration=duration)


def read_video_info(path: str | os.PathLike) -> VideoInfo:
    """Read frame count, frame rate, size and duration of the first video stream of ``path``.

    When the container stores neither a frame count nor a duration, the frames are counted (without decoding);
    ``num_frames`` is 0 only for a stream without any frame.

    Raises:
        VideoDecodingError: the file is missing or cannot be opened (corrupt, truncated).
    """
    av = _import_av()
    path = os.fspath(path)
    container = _open_input(av, path)
    with container:
        stream = _video_stream(container, path)
        info = _stream_info(container, stream, path)
        if info.num_frames <= 0:  # no frame count nor duration stored (e.g. a raw H.264 stream): count the packets
            try:
                count = sum(1 for packet in container.demux(stream) if packet.size)
            except _av_errors(av) as exc:
                raise VideoDecodingError(f"Cannot read the frames of {path!r} (corrupt?): {exc}", path=path) from exc
            info = VideoInfo(count, info.fps, info.width, info.height, info.duration or count / info.fps)
        return info


def _check_indices(indices: Sequence[int], name: str = "indices") -> list[int]:
    if isinstance(indices, np.ndarray):
        if indices.ndim != 1:
            raise ValueError(f"`{name}` must be one-dimensional, got an array of shape {indices.shape}")
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"`{name}` must hold integers, got dtype {indices.dtype}")
        out = [int(i) for i in indices]
    else:
        out = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise TypeError(f"`{name}` must hold integers, got {type(i).__name__} {i!r}")
            out.append(int(i))
    if not out:
        raise ValueError(f"`{name}` must not be empty")
    negative = [i for i in out if i < 0]
    if negative:
        raise ValueError(f"`{name}` are 0-based decoded frame indices and must be >= 0, got {negative[0]}")
    return out


def decode_frames(path: str | os.PathLike, indices: Sequence[int], *, seek_threshold: int = 64) -> np.ndarray:
    """Decode the frames at ``indices`` (0-based) of the video at ``path``.

    Only what is needed is decoded: the decoder seeks to the key frame at or before the first
    wanted index and decodes forward; it seeks again when the next wanted index lies more than
    ``seek_threshold`` frames ahead. ``indices`` may be unsorted and may repeat; frames are
    returned in the order asked.

    Returns:
        ``np.ndarray`` of shape ``(len(indices), H, W, 3)``, dtype ``uint8``, RGB.

    Raises:
        FrameIndexError: an index is at or beyond the end of the video (message names file and index).
        VideoDecodingError: the file is missing, corrupt or truncated (message names the file).
    """
    av = _import_av()
    path = os.fspath(path)
    wanted_list = _check_indices(indices)
    wanted = sorted(set(wanted_list))
    container = _open_input(av, path)
    with container:
        stream = _video_stream(container, path)
        info = _stream_info(container, stream, path)
        if info.num_frames > 0 and wanted[-1] >= info.num_frames:
            raise FrameIndexError(
                f"Frame index {wanted[-1]} is out of range for {path!r}, which has {info.num_frames} "
                f"frames (valid 0-based indices: 0..{info.num_frames - 1})",
                path=path,
                index=wanted[-1],
            )
        fps = info.fps
        time_base = stream.time_base
        start_pts = stream.start_time or 0
        wanted_set = set(wanted)
        decoded: dict[int, np.ndarray] = {}

        def frame_index(frame, previous: int) -> int:
            if frame.pts is None or time_base is None:
                return previous + 1
            return round(float((frame.pts - start_pts) * time_base) * fps)

        frames_iter = None
        position = -1  # index of the last decoded frame
        try:
            for target in wanted:
                if target in decoded:
                    continue
                if frames_iter is None or target <= position or target - position > seek_threshold:
                    if frames_iter is not None or target > seek_threshold:
                        seek_pts = int(start_pts + round(target / fps / float(time_base)))
                        container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
                    frames_iter = container.decode(stream)
                    position = -1
                reached = False
                for frame in frames_iter:
                    position = frame_index(frame, position)
                    if position in wanted_set and position not in decoded:
                        decoded[position] = frame.to_ndarray(format="rgb24", threads=1)
                    if position >= target:
                        reached = True
                        break
                if not reached and position < 0:
                    raise VideoDecodingError(
                        f"No frame of {path!r} could be decoded (the container claims {info.num_frames} frames; "
                        "empty or damaged file?)",
                        path=path,
                        index=target,
                    )
                if not reached:
                    raise FrameIndexError(
                        f"Video {path!r} ended at frame {position} before frame index {target} "
                        f"(the container claims {info.num_frames} frames; truncated file?)",
                        path=path,
                        index=target,
                    )
                if target not in decoded:
                    raise VideoDecodingError(
                        f"Could not decode frame index {target} of {path!r}: the stream jumped from "
                        f"before it to frame {position} (variable frame rate or damaged file?)",
                        path=path,
                        index=target,
                    )
        except VideoDecodingError:
            raise
        except _av_errors(av) as exc:
            raise VideoDecodingError(
                f"Error while decoding {path!r} (corrupt or truncated file?): {exc}", path=path
            ) from exc
    return np.stack([decoded[i] for i in wanted_list])


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file (JPEG, PNG, ...) with PyAV into an ``(H, W, 3)`` uint8 RGB array.

    Raises:
        VideoDecodingError: the file is missing or cannot be decoded.
    """
    av = _import_av()
    path = os.fspath(path)
    container = _open_input(av, path)
    with container:
        try:
            frame = next(container.decode(video=0))
        except StopIteration as exc:
            raise VideoDecodingError(f"No image could be decoded from {path!r}", path=path) from exc
        except _av_errors(av) as exc:
            raise VideoDecodingError(f"Cannot decode image {path!r}: {exc}", path=path) from exc
        return frame.to_ndarray(format="rgb24", threads=1)


def _encode(av, container, stream, images) -> None:
    """Encode ``(H, W, 3)`` uint8 RGB ``images`` into ``stream`` (in its ``pix_fmt``), mux them, and flush."""
    for image in images:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        # Convert explicitly and single-threaded: the encoder's implicit conversion uses a
        # multi-threaded swscale context whose output varies from run to run.
        frame = frame.reformat(format=stream.pix_fmt, threads=1)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_image(path: str | os.PathLike, image: np.ndarray, *, quality: int = 2) -> None:
    """Write an ``(H, W, 3)`` uint8 RGB image as a JPEG with PyAV.

    ``quality`` is FFmpeg's JPEG quantizer scale, 2 (best) to 31 (smallest file).
    """
    av = _import_av()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"`image` must be a (H, W, 3) uint8 array, got shape {image.shape} dtype {image.dtype}")
    path = os.fspath(path)
    with av.open(path, mode="w", format="image2") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.width, stream.height = image.shape[1], image.shape[0]
        stream.pix_fmt = "yuvj444p"
        stream.codec_context.qmin = stream.codec_context.qmax = int(quality)
        _encode(av, container, stream, [image])


def read_frame_folder(
    folder: str | os.PathLike,
    indices: Sequence[int],
    template: str = "frame_{:010d}.jpg",
    start_index: int = 1,
) -> np.ndarray:
    """Read frames from a folder of images, such as EPIC-KITCHENS ``rgb_frames/<video_id>/``.

    ``indices`` are 0-based; index ``i`` is read from ``template.format(i + start_index)``, so with
    the defaults index 0 is ``frame_0000000001.jpg`` (EK100 frame number 1). Images are decoded with
    PyAV. Returns ``(len(indices), H, W, 3)`` uint8, in the order asked.

    Raises:
        FrameIndexError: the image for an index does not exist (message names file and index).
        VideoDecodingError: an image cannot be decoded.
    """
    folder = os.fspath(folder)
    wanted_list = _check_indices(indices)
    if not os.path.isdir(folder):
        raise VideoDecodingError(f"Frame folder not found: {folder!r}", path=folder)
    cache: dict[int, np.ndarray] = {}
    for i in wanted_list:
        if i in cache:
            continue
        file = os.path.join(folder, template.format(i + start_index))
        if not os.path.exists(file):
            raise FrameIndexError(
                f"Frame index {i} is out of range for frame folder {folder!r}: {file!r} does not exist",
                path=file,
                index=i,
            )
        cache[i] = read_image(file)
    shapes = {img.shape for img in cache.values()}
    if len(shapes) > 1:
        raise VideoDecodingError(f"Frames of {folder!r} have different sizes: {sorted(shapes)}", path=folder)
    return np.stack([cache[i] for i in wanted_list])


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    *,
    crf: int = 18,
    preset: str = "veryfast",
    gop_size: int | None = None,
    codec: str = "libx264",
    faststart: bool = False,
) -> None:
    """Write ``frames`` ``(T, H, W, 3)`` uint8 RGB as a constant-frame-rate H.264 (yuv420p) video.

    ``H`` and ``W`` must be even (yuv420p). Colour conversion and encoding are single-threaded and
    x264's look-ahead analyses are off (no B-frames, no scene-cut detection), so the output is
    deterministic: the same frames give the same file and the same decoded frames. ``gop_size`` sets the maximum
    key-frame interval (``None``: the encoder default). The container follows the file suffix
    (``.mp4``). ``faststart=True`` puts an MP4's index (the ``moov`` atom) before the frames, as streaming
    servers want (FFmpeg's ``-movflags faststart``); by default it comes after them.
    """
    av = _import_av()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"`frames` must have shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise TypeError(f"`frames` must be uint8, got {frames.dtype}")
    num, height, width = frames.shape[:3]
    if num == 0:
        raise ValueError("`frames` must hold at least one frame, got T=0")
    if height % 2 or width % 2:
        raise ValueError(f"`frames` height and width must be even for yuv420p, got H={height}, W={width}")
    if not (isinstance(fps, (int, float, Fraction)) and fps > 0 and math.isfinite(float(fps))):
        raise ValueError(f"`fps` must be a positive number, got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    path = os.fspath(path)
    options: dict[str, Any] = {"crf": str(int(crf)), "preset": preset, "threads": "1"}
    if codec == "libx264":
        # On tiny frames x264's look-ahead analyses (weighted prediction, macroblock tree, adaptive
        # B-frames, scene cuts) make the output vary from run to run (they appear to read
        # uninitialised memory). Without them the encoder is deterministic; key frames then come
        # exactly every `gop_size` frames.
        options["x264-params"] = "weightp=0:mbtree=0:bframes=0:rc-lookahead=0:scenecut=0"
    if gop_size is not None:
        options["g"] = str(int(gop_size))
    with av.open(path, mode="w", options={"movflags": "faststart"} if faststart else None) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = options
        _encode(av, container, stream, frames)


def sample_frame_indices(
    start_frame: int,
    stop_frame: int,
    num_frames: int,
    mode: str = "random",
    num_views: int = 1,
    rng: np.random.Generator | int | None = None,
) -> list[list[int]]:
    """TSN-style sampling of ``num_frames`` frame indices from the inclusive range ``[start_frame, stop_frame]``.

    The segment (``L = stop_frame - start_frame + 1`` frames, both ends inclusive as in EK100) is
    split into ``num_frames`` equal sub-segments ``[start + L*i/T, start + L*(i+1)/T)`` and one
    index is taken from each:

    * ``mode="random"`` (training): a uniformly random position inside each sub-segment
      (TSN sparse sampling, not a random contiguous window). Every view draws independently.
    * ``mode="center"`` (evaluation): with ``num_views=1`` the centre of each sub-segment. With
      ``num_views=V`` view ``v`` takes the position ``(v + 0.5) / V`` inside every sub-segment, so the
      ``V`` views are evenly spaced temporal shifts that all cover the whole segment.

    Indices are non-decreasing within a view and never leave ``[start_frame, stop_frame]``; a
    segment shorter than ``num_frames`` repeats frames. The unit is the caller's (EK100 1-based
    frame numbers, or 0-based decoded indices).

    Args:
        rng: a ``numpy.random.Generator``, a seed, or ``None`` (fresh entropy); used by ``"random"``.

    Returns:
        ``num_views`` lists of ``num_frames`` ints.
    """
    for name, value in (("start_frame", start_frame), ("stop_frame", stop_frame)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    for name, value in (("num_frames", num_frames), ("num_views", num_views)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    start, stop = int(start_frame), int(stop_frame)
    if stop < start:
        raise ValueError(f"`stop_frame` ({stop}) must be >= `start_frame` ({start}); both are inclusive")
    if mode not in ("random", "center"):
        raise ValueError(f"`mode` must be 'random' or 'center', got {mode!r}")
    length = stop - start + 1
    seg = length / num_frames
    bounds = np.arange(num_frames, dtype=np.float64) * seg
    views: list[list[int]] = []
    if mode == "random":
        generator = np.random.default_rng(rng)  # a Generator is returned as is
        offsets = generator.random((num_views, num_frames))
    else:
        offsets = np.broadcast_to(((np.arange(num_views) + 0.5) / num_views)[:, None], (num_views, num_frames))
    positions = np.floor(bounds[None, :] + offsets * seg).astype(np.int64)
    positions = np.clip(positions, 0, length - 1) + start
    for row in positions:
        views.append([int(i) for i in row])
    return views
