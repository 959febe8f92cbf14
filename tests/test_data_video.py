"""Video decoding, writing, frame folders and TSN sampling (mambavl.data.video)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from mambavl.data.video import (
    FrameIndexError,
    VideoDecodingError,
    decode_frames,
    read_frame_folder,
    read_image,
    read_video_info,
    sample_frame_indices,
    write_image,
    write_video,
)

NUM = 48
STEP = 5  # gray level of frame i is i * STEP


def _gray_frames(num=NUM, size=32):
    levels = (np.arange(num) * STEP).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (num, size, size, 3)).copy()
    frames[:, :4, :4] = 255 - frames[:, :4, :4]  # a corner patch so frames are not flat
    return frames


def _level_to_index(frames):
    """Recover each frame's index from its gray level (centre pixel)."""
    return [round(float(f[16:, 16:].mean()) / STEP) for f in frames]


@pytest.fixture(scope="module")
def gray_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "gray.mp4"
    write_video(path, _gray_frames(), fps=10, gop_size=8)  # several GOPs: seeking is exercised
    return str(path)


def test_read_video_info(gray_video):
    info = read_video_info(gray_video)
    assert info.num_frames == NUM
    assert info.fps == pytest.approx(10.0)
    assert (info.width, info.height) == (32, 32)
    assert info.duration == pytest.approx(NUM / 10, abs=0.15)


def test_decode_is_frame_accurate(gray_video):
    indices = [0, 1, 7, 8, 9, 30, 47]
    frames = decode_frames(gray_video, indices)
    assert frames.shape == (len(indices), 32, 32, 3) and frames.dtype == np.uint8
    assert _level_to_index(frames) == indices


def test_decode_unsorted_and_repeated(gray_video):
    indices = [40, 3, 3, 25, 0, 40, 12]
    assert _level_to_index(decode_frames(gray_video, indices)) == indices


def test_decode_all_frames(gray_video):
    assert _level_to_index(decode_frames(gray_video, range(NUM))) == list(range(NUM))


def test_decode_numpy_indices(gray_video):
    assert _level_to_index(decode_frames(gray_video, np.array([5, 44]))) == [5, 44]


def test_out_of_range_index_names_file_and_index(gray_video):
    with pytest.raises(FrameIndexError) as info:
        decode_frames(gray_video, [2, NUM])
    assert "gray.mp4" in str(info.value) and str(NUM) in str(info.value)
    assert isinstance(info.value, IndexError) and isinstance(info.value, VideoDecodingError)


def test_bad_indices_rejected(gray_video):
    with pytest.raises(ValueError, match="indices"):
        decode_frames(gray_video, [])
    with pytest.raises(ValueError, match=">= 0"):
        decode_frames(gray_video, [-1])
    with pytest.raises(TypeError):
        decode_frames(gray_video, [1.5])


def test_truncated_video_raises_naming_file(gray_video, tmp_path):
    data = Path(gray_video).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodingError, match="cut"):
        decode_frames(cut, [0, 1])
    with pytest.raises(VideoDecodingError, match="cut"):
        read_video_info(cut)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 50)
    with pytest.raises(VideoDecodingError, match="junk"):
        decode_frames(junk, [0])
    with pytest.raises(VideoDecodingError, match="missing") as info:
        decode_frames(tmp_path / "missing.mp4", [0])
    assert info.value.path.endswith("missing.mp4")


def test_write_video_validates(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 31, 32, 3), np.uint8), fps=5)
    with pytest.raises(TypeError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 32, 32, 3), np.float32), fps=5)
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "x.mp4", np.zeros((32, 32, 3), np.uint8), fps=5)


def test_write_video_is_deterministic(tmp_path):
    # Decoding between encodes used to change the encoder's output (uninitialised memory read by
    # x264's weighted prediction on tiny frames, threaded colour conversion): write, decode, repeat.
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    files, decoded = set(), []
    for k in range(6):
        path = tmp_path / f"{k}.mp4"
        write_video(path, frames, fps=8, preset="medium" if k % 2 else "veryfast")
        decoded.append(decode_frames(path, range(8)))
        if k % 2:
            files.add(path.read_bytes())
    assert len(files) == 1
    for other in decoded[2::2]:
        np.testing.assert_array_equal(other, decoded[0])


def test_frame_folder(tmp_path):
    folder = tmp_path / "P01_01"
    folder.mkdir()
    frames = _gray_frames(num=5)
    for k, frame in enumerate(frames, start=1):
        write_image(folder / f"frame_{k:010d}.jpg", frame)
    image = read_image(folder / "frame_0000000003.jpg")
    assert image.shape == (32, 32, 3)
    out = read_frame_folder(folder, [4, 0, 2, 2])
    assert out.shape == (4, 32, 32, 3)
    assert _level_to_index(out) == [4, 0, 2, 2]  # index i is frame_{i+1}
    with pytest.raises(FrameIndexError, match="frame_0000000006"):
        read_frame_folder(folder, [5])
    with pytest.raises(VideoDecodingError, match="nowhere"):
        read_frame_folder(tmp_path / "nowhere", [0])
    (folder / "frame_0000000009.jpg").write_bytes(b"broken")
    with pytest.raises(VideoDecodingError, match="frame_0000000009"):
        read_frame_folder(folder, [8])


# ------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------


def test_center_sampling():
    assert sample_frame_indices(1, 16, 8, "center") == [[2, 4, 6, 8, 10, 12, 14, 16]]
    assert sample_frame_indices(10, 10, 4, "center") == [[10, 10, 10, 10]]


def test_random_sampling_within_subsegments_and_reproducible():
    start, stop, t = 101, 180, 8
    a = sample_frame_indices(start, stop, t, "random", rng=np.random.default_rng(3))
    b = sample_frame_indices(start, stop, t, "random", rng=3)
    c = sample_frame_indices(start, stop, t, "random", rng=4)
    assert a == b and a != c
    (view,) = a
    for i, idx in enumerate(view):  # one index per equal sub-segment of 10 frames
        assert start + 10 * i <= idx < start + 10 * (i + 1)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 9, 13, 100])
@pytest.mark.parametrize("mode", ["random", "center"])
def test_sampling_stays_in_bounds_and_is_sorted(length, mode):
    rng = np.random.default_rng(length)
    for _ in range(20):
        views = sample_frame_indices(7, 7 + length - 1, 8, mode, num_views=3, rng=rng)
        assert len(views) == 3
        for view in views:
            assert len(view) == 8
            assert all(7 <= i <= 7 + length - 1 for i in view)
            assert view == sorted(view)


def test_short_segments_repeat_frames():
    (view,) = sample_frame_indices(5, 7, 8, "center")
    assert sorted(set(view)) == [5, 6, 7]
    assert len(view) == 8


def test_multi_view_evenly_shifted():
    views = sample_frame_indices(0, 29, 3, "center", num_views=3)
    assert views == [[1, 11, 21], [5, 15, 25], [8, 18, 28]]
    assert sample_frame_indices(0, 29, 3, "center", num_views=1) == [[5, 15, 25]]


def test_sampling_argument_errors():
    with pytest.raises(ValueError, match="stop_frame"):
        sample_frame_indices(10, 9, 4)
    with pytest.raises(ValueError, match="mode"):
        sample_frame_indices(1, 9, 4, "uniform")
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(1, 9, 0)
    with pytest.raises(TypeError, match="start_frame"):
        sample_frame_indices(1.0, 9, 4)


def test_env_has_no_leftover_files(tmp_path):
    # write_video must not leave temporary files next to the output
    write_video(tmp_path / "one.mp4", _gray_frames(num=3), fps=5)
    assert os.listdir(tmp_path) == ["one.mp4"]
