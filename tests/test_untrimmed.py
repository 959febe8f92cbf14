"""Per-time ground truth of untrimmed videos and the synthetic long videos."""

from __future__ import annotations

import numpy as np
import pytest

from mambavl.data import (
    BACKGROUND,
    ActionSegment,
    UntrimmedVideoLabels,
    generate_long_videos,
    load_annotations,
    read_video_info,
    untrimmed_labels,
)


def _row(nid, vid, start, stop, verb, noun, start_frame=1, stop_frame=2):
    return {
        "narration_id": nid, "video_id": vid, "start_timestamp": start, "stop_timestamp": stop,
        "start_frame": start_frame, "stop_frame": stop_frame, "verb_class": verb, "noun_class": noun,
        "narration": f"n{nid}",
    }  # fmt: skip


def test_background_and_half_open_segments():
    labels = UntrimmedVideoLabels("v", [ActionSegment(1.0, 2.0, 3, 4)], duration=5.0)
    verbs, nouns = labels.at([0.0, 0.999, 1.0, 1.5, 2.0, 4.9])
    assert verbs.tolist() == [BACKGROUND, BACKGROUND, 3, 3, BACKGROUND, BACKGROUND]
    assert nouns.tolist() == [BACKGROUND, BACKGROUND, 4, 4, BACKGROUND, BACKGROUND]
    assert labels.background_fraction(fps=10) == pytest.approx(0.8)


def test_overlap_latest_start_wins_and_ties_by_file_order():
    segments = [
        ActionSegment(0.0, 10.0, 0, 0),  # long background action
        ActionSegment(2.0, 4.0, 1, 1),  # starts later: wins over the first while it runs
        ActionSegment(3.0, 5.0, 2, 2),  # starts later still
        ActionSegment(3.0, 3.5, 4, 4),  # same start as the previous one, listed later: wins the tie
    ]
    labels = UntrimmedVideoLabels("v", segments)
    verbs, _ = labels.at([1.0, 2.5, 3.2, 3.7, 4.5, 6.0, 10.0])
    assert verbs.tolist() == [0, 1, 4, 2, 2, 0, BACKGROUND]
    assert labels.segment_index_at([3.2]).tolist() == [3]
    assert labels.overlap_fraction(fps=10) == pytest.approx(0.3)  # [2, 5) is overlapped


def test_from_annotation_rows_timestamps_and_frames():
    rows = [
        _row("a", "v1", "00:00:01.00", "00:00:02.00", 1, 2, start_frame=61, stop_frame=120),
        _row("b", "v2", "00:00:00.50", "00:00:01.00", 0, 0, start_frame=31, stop_frame=60),
    ]
    by_time = untrimmed_labels(rows)
    assert list(by_time) == ["v1", "v2"]
    assert by_time["v1"].segments[0].start == 1.0 and by_time["v1"].segments[0].narration_id == "a"
    by_frame = untrimmed_labels(rows, annotation_fps=60, durations={"v1": 3.0}, video_ids=["v1"])
    assert list(by_frame) == ["v1"] and by_frame["v1"].duration == 3.0
    # frames 61..120 (1-based) at 60 fps are the 0-based frames 60..119
    verbs, _ = by_frame["v1"].frame_labels(180, 60)
    assert np.flatnonzero(verbs == 1).tolist() == list(range(60, 120))
    assert (verbs[:60] == BACKGROUND).all() and (verbs[120:] == BACKGROUND).all()


def test_anticipation_targets_look_ahead():
    labels = UntrimmedVideoLabels("v", [ActionSegment(2.0, 3.0, 1, 5)])
    verbs, nouns = labels.anticipation_targets([0.5, 1.0, 1.5, 2.5], anticipation_time=1.0)
    assert verbs.tolist() == [BACKGROUND, 1, 1, BACKGROUND] and nouns.tolist() == [BACKGROUND, 5, 5, BACKGROUND]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="start < stop"):
        UntrimmedVideoLabels("v", [ActionSegment(2.0, 2.0, 0, 0)])
    with pytest.raises(ValueError, match="verb_class"):
        untrimmed_labels([{"video_id": "v", "start_timestamp": "00:00:00.00", "stop_timestamp": "00:00:01.00"}])
    with pytest.raises(ValueError, match="no annotated segment"):
        untrimmed_labels([_row("a", "v1", "00:00:01.00", "00:00:02.00", 1, 2)], video_ids=["v9"])
    with pytest.raises(ValueError, match="annotation_fps"):
        untrimmed_labels([_row("a", "v1", "00:00:01.00", "00:00:02.00", 1, 2)], annotation_fps={"other": 30.0})
    with pytest.raises(TypeError, match="annotations"):
        untrimmed_labels(42)


def test_ek100_validation_annotations(ek100_dir):
    rows = load_annotations(ek100_dir / "EPIC_100_validation.csv").select(range(400)).to_list()
    labels = untrimmed_labels(rows)
    video = next(iter(labels.values()))
    assert len(video) >= 1
    # at the midpoint of every segment, the label is that segment's or that of one started later (overlap rule)
    for i, seg in enumerate(video.segments):
        j = int(video.segment_index_at([(seg.start + seg.stop) / 2])[0])
        assert j == i or video.segments[j].start >= seg.start


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    return generate_long_videos(
        root, num_videos=2, segments_per_video=4, size=32, fps=8, verbs=["take", "put"], nouns=["cup", "plate"],
        idle_duration=(1.0, 2.0),
    )  # fmt: skip


def test_long_videos_layout_and_labels(long_videos):
    info = long_videos
    assert info.video_ids == ["P01_L01", "P02_L02"]
    annotations = info.load_annotations()
    assert len(annotations) == 8
    labels = info.labels()
    for vid in info.video_ids:
        meta = read_video_info(info.video_path(vid))
        assert meta.num_frames == info.num_frames[vid]
        verbs, nouns = labels[vid].frame_labels(info.num_frames[vid], info.fps)
        rows = [r for r in annotations if r["video_id"] == vid]
        for row in rows:  # every annotated frame carries its label, and no other frame
            span = verbs[row["start_frame"] - 1 : row["stop_frame"]]
            assert (span == row["verb_class"]).all()
        action_frames = sum(r["stop_frame"] - r["start_frame"] + 1 for r in rows)
        assert int((verbs != BACKGROUND).sum()) == action_frames
        assert ((verbs == BACKGROUND) == (nouns == BACKGROUND)).all()
        # idle gaps of 1-2 s before each action: at least 4 s of the video is background
        assert int((verbs == BACKGROUND).sum()) >= 4 * info.fps
        assert verbs[0] == BACKGROUND
        assert sorted({r["verb_class"] for r in rows}) == [0, 1]  # balanced: both verbs in 4 segments


def test_long_videos_deterministic_and_reused(long_videos, tmp_path):
    again = generate_long_videos(
        tmp_path, num_videos=2, segments_per_video=4, size=32, fps=8, verbs=["take", "put"], nouns=["cup", "plate"],
        idle_duration=(1.0, 2.0),
    )  # fmt: skip
    with open(long_videos.annotations_path) as a, open(again.annotations_path) as b:
        assert a.read() == b.read()
    reused = generate_long_videos(
        tmp_path, num_videos=2, segments_per_video=4, size=32, fps=8, verbs=["take", "put"], nouns=["cup", "plate"],
        idle_duration=(1.0, 2.0),
    )  # fmt: skip
    assert reused.num_frames == again.num_frames
    with pytest.raises(ValueError, match="num_videos"):
        generate_long_videos(tmp_path / "x", num_videos=0)
    with pytest.raises(ValueError, match="idle_duration"):
        generate_long_videos(tmp_path / "x", idle_duration=(2.0, 1.0))
