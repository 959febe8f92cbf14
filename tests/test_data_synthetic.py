"""The synthetic egocentric dataset (mambavl.data.synthetic)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from mambavl.data import (
    NOUN_SPECS,
    VERB_SPECS,
    EK100SegmentDataset,
    check_label_consistency,
    decode_frames,
    generate_synthetic_dataset,
    load_annotations,
    load_class_list,
    read_video_info,
    render_clip,
    timestamp_to_seconds,
)

SMALL = {"num_videos": 6, "segments_per_video": 4, "seed": 3}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn") / "a", **SMALL)


def _all_rows(info):
    return info.load_annotations("train").to_list() + info.load_annotations("validation").to_list()


def test_layout_and_info(small):
    for path in (
        small.train_annotations,
        small.validation_annotations,
        small.verb_classes_path,
        small.noun_classes_path,
        small.metadata_path,
    ):
        assert os.path.isfile(path)
    videos = sorted(os.listdir(small.videos_dir))
    assert videos == sorted(v + ".mp4" for v in small.train_video_ids + small.validation_video_ids)
    assert len(videos) == 6
    assert small.num_train_segments + small.num_validation_segments == 24
    assert small.verb_names == list(VERB_SPECS) and small.noun_names == list(NOUN_SPECS)
    assert len(small.verb_names) >= 8 and len(small.noun_names) >= 8
    info = read_video_info(os.path.join(small.videos_dir, videos[0]))
    assert (info.width, info.height) == (64, 64) and info.fps == pytest.approx(12)


def test_deterministic(small, tmp_path):
    again = generate_synthetic_dataset(tmp_path / "b", **SMALL)
    for name in ("train.csv", "validation.csv", "verb_classes.csv", "noun_classes.csv"):
        a = Path(small.root, "annotations", name).read_bytes()
        b = Path(again.root, "annotations", name).read_bytes()
        assert a == b, name
    for vid in small.train_video_ids[:2] + small.validation_video_ids[:1]:
        fa = decode_frames(os.path.join(small.videos_dir, vid + ".mp4"), range(0, 40, 3))
        fb = decode_frames(os.path.join(again.videos_dir, vid + ".mp4"), range(0, 40, 3))
        np.testing.assert_array_equal(fa, fb)
    other = generate_synthetic_dataset(tmp_path / "c", **{**SMALL, "seed": 4})
    assert Path(other.train_annotations).read_bytes() != Path(small.train_annotations).read_bytes()


def test_reuse_and_overwrite(small):
    os.utime(small.train_annotations, (1_000_000, 1_000_000))
    same = generate_synthetic_dataset(small.root, **SMALL)  # same parameters: reused as is
    assert same == small and os.path.getmtime(small.train_annotations) == 1_000_000
    again = generate_synthetic_dataset(small.root, **SMALL, overwrite=True)
    assert again == small and os.path.getmtime(small.train_annotations) > 1_000_000


def test_split_by_video_and_coverage(small):
    train, val = small.load_annotations("train"), small.load_annotations("validation")
    assert set(train["video_id"]).isdisjoint(set(val["video_id"]))
    assert set(train["video_id"]) == set(small.train_video_ids)
    assert set(val["video_id"]) == set(small.validation_video_ids)
    assert set(train["verb_class"]) == set(range(8)) and set(train["noun_class"]) == set(range(8))
    combos = set(zip(train["verb_class"], train["noun_class"], strict=True))
    assert len(combos) > 8  # verbs and nouns are not tied together


def test_class_lists_and_labels(small):
    verbs, nouns = load_class_list(small.verb_classes_path), load_class_list(small.noun_classes_path)
    assert [c.key for c in verbs][:4] == ["take", "put", "open", "close"]
    assert [c.id for c in nouns] == list(range(8))
    assert all(c.key in c.instances and c.category for c in verbs + nouns)
    for split in ("train", "validation"):
        ds = load_annotations(small.annotations_path(split), verbs, nouns)
        assert check_label_consistency(ds, verbs, nouns).num_mismatches == 0
        for row in ds:
            assert row["narration"].split()[0] == row["verb"].split("-")[0]
            assert row["all_nouns"] == [row["noun"]] and row["all_noun_classes"] == [row["noun_class"]]


def test_segments_frames_and_timestamps(small):
    rows = _all_rows(small)
    by_video = {}
    for row in rows:
        by_video.setdefault(row["video_id"], []).append(row)
    for vid, segs in by_video.items():
        total = read_video_info(os.path.join(small.videos_dir, vid + ".mp4")).num_frames
        segs.sort(key=lambda r: r["start_frame"])
        assert [r["narration_id"] for r in segs] == [f"{vid}_{k}" for k in range(4)]
        previous_stop = 0
        for r in segs:
            length = r["stop_frame"] - r["start_frame"] + 1
            assert 12 <= length <= 24  # 1.0-2.0 s at 12 fps
            assert r["start_frame"] > previous_stop + 1  # an idle gap before every action
            previous_stop = r["stop_frame"]
            assert timestamp_to_seconds(r["start_timestamp"]) == pytest.approx((r["start_frame"] - 1) / 12, abs=0.006)
            assert timestamp_to_seconds(r["stop_timestamp"]) == pytest.approx(r["stop_frame"] / 12, abs=0.006)
        assert previous_stop < total


def test_dataset_over_synthetic(small):
    ds = EK100SegmentDataset(small.load_annotations("validation"), small.video_source(), num_frames=8)
    item = ds[0]
    assert item["frames"].shape == (8, 64, 64, 3)
    assert 0 <= item["verb_class"] < 8 and 0 <= item["noun_class"] < 8


def test_preparation_phase(tmp_path):
    info = generate_synthetic_dataset(
        tmp_path / "p",
        num_videos=3,
        segments_per_video=4,
        seed=1,
        preparation_time=1.0,
        anticipation_gap=1.0,
        noise_std=(0.0, 0.0),
        camera_shake=0.0,
    )
    meta = json.loads(Path(info.metadata_path).read_text())
    assert meta["params"]["preparation_time"] == 1.0 and info.anticipation_gap == 1.0
    for row in _all_rows(info):
        start = row["start_frame"] - 1  # 0-based
        assert start >= 24 + 3  # idle + 1 s preparation + 1 s still gap at 12 fps
        video = os.path.join(info.videos_dir, row["video_id"] + ".mp4")
        idle, prep_start, prep_end, hold_end = decode_frames(video, [start - 26, start - 23, start - 13, start - 1])
        moving = np.abs(prep_end.astype(float) - prep_start.astype(float)).mean()
        still = np.abs(hold_end.astype(float) - prep_end.astype(float)).mean()
        with_hand = np.abs(prep_end.astype(float) - idle.astype(float)).mean()
        assert moving > still and with_hand > still  # the hand approaches, then holds still


def test_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="verbs"):
        generate_synthetic_dataset(tmp_path, verbs=["take", "fly"])
    with pytest.raises(ValueError, match="size"):
        generate_synthetic_dataset(tmp_path, size=33)
    with pytest.raises(ValueError, match="Too few"):
        generate_synthetic_dataset(tmp_path, num_videos=2, segments_per_video=2)


def test_subset_of_classes(tmp_path):
    info = generate_synthetic_dataset(
        tmp_path / "s", num_videos=3, segments_per_video=2, verbs=["open", "close"], nouns=["jar", "bottle"]
    )
    assert info.verb_names == ["open", "close"] and info.num_nouns == 2
    assert [c.key for c in load_class_list(info.noun_classes_path)] == ["jar", "bottle"]


# ------------------------------------------------------------------------------------------
# The classes are learnable: nouns by appearance, verbs by motion and its direction in time
# ------------------------------------------------------------------------------------------


def _object_colour(frame):
    """Median colour of the pixels that stand out from the counter (below the wall)."""
    counter = frame[22:].astype(float)
    background = np.median(counter.reshape(-1, 3), axis=0)
    foreground = np.abs(counter - background).max(-1) > 50
    return np.median(counter[foreground], axis=0)


def test_nouns_separable_by_colour():
    nouns = list(NOUN_SPECS)
    features = {
        (j, s): _object_colour(render_clip("take", noun, num_frames=2, seed=100 * s + j)[0])
        for j, noun in enumerate(nouns)
        for s in range(8)
    }
    centroids = np.stack([np.mean([features[(j, s)] for s in range(4)], axis=0) for j in range(len(nouns))])
    correct = [
        np.argmin(((centroids - features[(j, s)]) ** 2).sum(1)) == j for j in range(len(nouns)) for s in range(4, 8)
    ]
    assert np.mean(correct) >= 0.9


@pytest.mark.parametrize(("forward", "backward"), [("take", "put"), ("open", "close")])
def test_reversed_pairs_differ_only_in_time_order(forward, backward):
    for noun in ("cup", "plate"):
        a = render_clip(forward, noun, num_frames=9, seed=5, noise=False, shake=False).astype(int)
        b = render_clip(backward, noun, num_frames=9, seed=5, noise=False, shake=False).astype(int)
        assert np.abs(a[::-1] - b).max() <= 1  # the same frames, reversed
        assert np.abs(a - b).mean() > 1.5  # but not a palindrome: order tells them apart
        assert abs(a.mean() - b.mean()) < 0.5  # identical per-frame statistics


def test_verbs_differ_in_motion():
    clips = {
        v: render_clip(v, "jar", num_frames=8, seed=11, noise=False, shake=False).astype(float) for v in VERB_SPECS
    }
    for verb, clip in clips.items():
        assert np.abs(np.diff(clip, axis=0)).mean() > 0.5, verb  # every verb moves something
    # take moves the object down towards the camera: its colour mass goes down over time
    jar = np.array(NOUN_SPECS["jar"].color, float)
    take = clips["take"]
    rows = [np.nonzero((np.abs(f - jar).max(-1) < 40).any(axis=1))[0] for f in (take[0], take[-1])]
    assert rows[1].mean() > rows[0].mean() + 10
