"""EPIC-KITCHENS-100 annotations, video sources and a segment dataset.

File formats follow the official ``epic-kitchens-100-annotations`` repository:

* class lists ``EPIC_100_verb_classes.csv`` / ``EPIC_100_noun_classes.csv``: ``id,key,instances,category``
  with ``instances`` a Python list literal (parsed with :func:`ast.literal_eval`, never ``eval``);
* annotations ``EPIC_100_{train,validation}.csv`` (or ``.pkl``): one narrated segment per row,
  ``start_frame``/``stop_frame`` 1-based and inclusive at the video's native frame rate,
  timestamps ``HH:MM:SS.ff``; test-set files carry no labels.

Frame numbering
---------------
Annotation frame numbers are 1-based; sources (:class:`VideoFileSource`, :class:`FrameFolderSource`,
:class:`FeatureSource`) take **0-based** frame indices: EK100 frame ``k`` is decoded frame ``k - 1``
and the image ``frame_{k:010d}.jpg``. :class:`EK100SegmentDataset` samples EK100 frame numbers and
subtracts one when it reads.
"""

from __future__ import annotations

import ast
import logging
import math
import os
import re
from collections import OrderedDict, UserDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

import numpy as np
import torch

from ..metrics import IGNORE_INDEX
from .video import (
    FrameIndexError,
    VideoDecodingError,
    decode_frames,
    read_frame_folder,
    read_video_info,
    sample_frame_indices,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ANNOTATION_COLUMNS",
    "IGNORE_INDEX",
    "LABEL_COLUMNS",
    "REQUIRED_COLUMNS",
    "ActionClass",
    "EK100SegmentDataset",
    "FeatureSource",
    "FrameFolderSource",
    "LabelConsistencyReport",
    "SegmentItem",
    "SkippedSegment",
    "VideoFileSource",
    "VideoSource",
    "check_annotations",
    "check_dataset_labels",
    "check_label_consistency",
    "class_names",
    "drop_skipped",
    "instances_by_key",
    "label_config",
    "load_annotations",
    "load_class_list",
    "load_video_fps",
    "seconds_to_timestamp",
    "timestamp_to_seconds",
]


#: Columns of an EK100 train/validation annotation file, in file order.
ANNOTATION_COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
)
#: Columns every annotation file must have (test-set files have exactly these).
REQUIRED_COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
)
#: Label columns: all present (labeled file) or all absent (test-set file).
LABEL_COLUMNS = ("verb", "verb_class", "noun", "noun_class")

_INT_COLUMNS = ("start_frame", "stop_frame", "verb_class", "noun_class")
_STR_COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "narration",
    "verb",
    "noun",
)


# --------------------------------------------------------------------------------------------
# Class lists
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionClass:
    """One verb or noun class of an EK100 class list.

    ``key`` is the class name (``"take"``), ``instances`` the narration words mapped to it
    (``("take", "pick-up", "grab", ...)``), ``category`` its coarse group (``"retrieve"``).
    """

    id: int
    key: str
    instances: tuple[str, ...]
    category: str = ""

    def matches(self, word: str) -> bool:
        """Whether ``word`` is this class's key or one of its instances."""
        return word == self.key or word in self.instances


#: A label space, as the loaders and :class:`EK100SegmentDataset` take it: a class list (``ActionClass``es or names
#: by id), names keyed by id, a path to an EK100 class-list CSV, or a class count.
LabelSpace: TypeAlias = Sequence[ActionClass] | Sequence[str] | Mapping[int, str] | int | str | os.PathLike


def _parse_literal(value: Any, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"Cannot parse {what}: {value!r} is not a Python literal ({exc})") from exc


def load_class_list(path: str | os.PathLike) -> list[ActionClass]:
    """Load an EK100 class list CSV (``id,key,instances,category``), sorted by id.

    Raises:
        ValueError: naming the file and line: a column is missing, an id is not an integer, a class
            name (``key``) is empty or used twice, an ``instances`` cell is not a list of non-empty
            strings, or the ids are not exactly ``0..K-1``.
    """
    import csv

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Class list not found: {path!r}")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [c for c in ("id", "key", "instances") if c not in fields]
        if missing:
            raise ValueError(f"Class list {path!r} lacks required column(s) {missing}; found {fields}")
        classes = []
        key_lines: dict[str, int] = {}
        for row in reader:
            # The row's first line: a quoted cell may span lines, and blank lines are skipped.
            line = reader.line_num - sum(v.count("\n") for v in row.values() if isinstance(v, str))
            try:
                class_id = int(row["id"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path!r} line {line}: id {row['id']!r} is not an integer") from exc
            key = row["key"] or ""
            if not key.strip():
                raise ValueError(f"{path!r} line {line}: class id {class_id} has an empty name (column 'key')")
            if key in key_lines:
                raise ValueError(
                    f"{path!r} line {line}: class name {key!r} (id {class_id}) is already used on line "
                    f"{key_lines[key]}; class names must be unique"
                )
            key_lines[key] = line
            instances = _parse_literal(row["instances"], f"{path!r} line {line} instances")
            if not isinstance(instances, (list, tuple)) or not all(isinstance(x, str) for x in instances):
                raise ValueError(f"{path!r} line {line}: instances must be a list of strings, got {instances!r}")
            if any(not x.strip() for x in instances):
                raise ValueError(
                    f"{path!r} line {line}: class {key!r} (id {class_id}) has an empty instance in {instances!r}"
                )
            classes.append(
                ActionClass(id=class_id, key=key, instances=tuple(instances), category=row.get("category") or "")
            )
    if not classes:
        raise ValueError(f"Class list {path!r} lists no classes (a header and no rows)")
    classes.sort(key=lambda c: c.id)
    ids = [c.id for c in classes]
    if ids != list(range(len(classes))):
        seen = set()
        dupes = sorted({i for i in ids if i in seen or seen.add(i)})
        gaps = sorted(set(range(len(classes))) - set(ids))
        raise ValueError(
            f"Class ids in {path!r} must be contiguous 0..{len(classes) - 1}; "
            f"duplicated: {dupes[:10]}, missing: {gaps[:10]}"
        )
    return classes


def class_names(classes: Sequence[ActionClass]) -> list[str]:
    """Class keys indexed by class id."""
    return [c.key for c in sorted(classes, key=lambda c: c.id)]


def instances_by_key(classes: Sequence[ActionClass]) -> dict[str, list[str]]:
    """``{key: instances}`` for every class."""
    return {c.key: list(c.instances) for c in classes}


def label_config(
    verb_classes: Sequence[ActionClass] | str | os.PathLike, noun_classes: Sequence[ActionClass] | str | os.PathLike
) -> dict[str, Any]:
    """The :class:`~mambavl.MambaVLConfig` fields that describe the label space of two class lists.

    Args:
        verb_classes: verb classes, or the path of a class list (``EPIC_100_verb_classes.csv`` format).
        noun_classes: noun classes, or the path of a class list.

    Returns:
        ``num_verb_classes``, ``num_noun_classes``, ``verb_id2label`` and ``noun_id2label``, to pass on as
        config keyword arguments (e.g. to ``from_pretrained_backbones``).
    """
    verbs, nouns = class_names(_as_class_list(verb_classes)), class_names(_as_class_list(noun_classes))
    return {
        "num_verb_classes": len(verbs),
        "num_noun_classes": len(nouns),
        "verb_id2label": dict(enumerate(verbs)),
        "noun_id2label": dict(enumerate(nouns)),
    }


def _as_class_list(classes: Sequence[ActionClass] | str | os.PathLike | None) -> list[ActionClass] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        return load_class_list(classes)
    return list(classes)


# --------------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------------

_TIMESTAMP_RE = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*$")


def timestamp_to_seconds(timestamp: str) -> float:
    """``"HH:MM:SS.ff"`` (EK100 timestamp) to seconds, e.g. ``"00:01:02.50" -> 62.5``."""
    match = _TIMESTAMP_RE.match(str(timestamp))
    if match is None:
        raise ValueError(f"Invalid timestamp {timestamp!r}: expected 'HH:MM:SS.ff'")
    hours, minutes, seconds = int(match.group(1)), int(match.group(2)), float(match.group(3))
    if minutes >= 60 or seconds >= 60:
        raise ValueError(f"Invalid timestamp {timestamp!r}: minutes and seconds must be < 60")
    return hours * 3600 + minutes * 60 + seconds


def seconds_to_timestamp(seconds: float, decimals: int = 2) -> str:
    """Seconds to an EK100 timestamp ``"HH:MM:SS.ff"`` (``decimals`` digits after the point)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"`seconds` must be a finite non-negative number, got {seconds!r}")
    scale = 10**decimals
    total = round(seconds * scale)
    whole, frac = divmod(total, scale)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return out + (f".{frac:0{decimals}d}" if decimals > 0 else "")


# --------------------------------------------------------------------------------------------
# Annotations
# --------------------------------------------------------------------------------------------


@dataclass
class LabelConsistencyReport:
    """Rows whose verb/noun word is neither the key nor an instance of their class.

    Each mismatch is ``(narration_id, word, class_id)``.
    """

    num_rows: int
    verb_mismatches: list[tuple[str, str, int]] = field(default_factory=list)
    noun_mismatches: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def num_mismatches(self) -> int:
        return len(self.verb_mismatches) + len(self.noun_mismatches)


_SOURCE_PREFIX = "EPIC-KITCHENS-format annotations from "


class _RowNamer:
    """Names a row in error messages: ``"<file>: line 12 (narration_id='P01_11_3')"``.

    CSV rows are named by their line in the file (found only when an error is raised: a quoted cell may
    span lines and blank lines are skipped), other tables by their 0-based row position.
    """

    def __init__(self, df, source: str, csv_path: str | None = None):
        self.df, self.source, self.csv_path = df, source, csv_path
        self._lines: list[int] | None = None

    def _line(self, position: int) -> int | None:
        if self.csv_path is None:
            return None
        if self._lines is None:
            import csv

            self._lines = []
            try:
                with open(self.csv_path, newline="", encoding="utf-8") as handle:
                    reader = csv.reader(handle)
                    next(reader, None)
                    for row in reader:
                        if row:  # pandas skips blank lines
                            self._lines.append(reader.line_num - sum(cell.count("\n") for cell in row))
            except (OSError, UnicodeDecodeError, csv.Error):
                self._lines = []
        return self._lines[position] if position < len(self._lines) else None

    def __call__(self, position: int) -> str:
        nid = self.df["narration_id"].iloc[position] if "narration_id" in self.df.columns else "?"
        line = self._line(position)
        where = f"line {line}" if line is not None else f"row {position}"
        return f"{self.source}: {where} (narration_id={nid!r})"


def _to_int_column(df, column: str, where: _RowNamer):
    import pandas as pd

    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{where(pos)}: column {column!r} must hold an integer, got {df[column].iloc[pos]!r}")
    return values.astype("int64")


def _to_list_column(df, column: str, where: _RowNamer, item_type: type) -> list[list[Any]]:
    out = []
    for pos, value in enumerate(df[column].tolist()):
        parsed = _parse_literal(value, f"{where(pos)} column {column!r}")
        if isinstance(parsed, np.ndarray):
            parsed = parsed.tolist()
        if not isinstance(parsed, (list, tuple)) or not all(
            isinstance(x, item_type) and not isinstance(x, bool) for x in parsed
        ):
            raise ValueError(f"{where(pos)}: column {column!r} must be a list of {item_type.__name__}, got {value!r}")
        out.append([item_type(x) for x in parsed])
    return out


def _read_table(path: str, allow_pickle: bool):
    import pandas as pd

    lower = path.lower()
    if lower.endswith((".pkl", ".pickle", ".pkl.gz", ".pickle.gz")):
        if not allow_pickle:
            raise ValueError(
                f"Refusing to load the pickle file {path!r}: unpickling can execute arbitrary code. "
                "Load the CSV version of the annotations, or pass allow_pickle=True if you trust the file."
            )
        df = pd.read_pickle(path)  # explicit opt-in above
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"{path!r} does not contain a pandas DataFrame (got {type(df).__name__})")
        if "narration_id" not in df.columns and df.index.name == "narration_id":
            df = df.reset_index()
        return df.reset_index(drop=True)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Annotation file not found: {path!r}")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _label_space(classes: Any, argname: str) -> list[ActionClass] | None:
    """``classes`` as a list of :class:`ActionClass` (names ``"0"``, ``"1"``, ... for a bare count)."""
    if classes is None:
        return None
    if isinstance(classes, bool):
        raise TypeError(f"`{argname}` must be a class list, a path, class names or a class count, got {classes!r}")
    if isinstance(classes, int):
        if classes < 1:
            raise ValueError(f"`{argname}` must be a positive class count, got {classes}")
        return [ActionClass(id=i, key=str(i), instances=()) for i in range(classes)]
    if isinstance(classes, (str, os.PathLike)):
        return load_class_list(classes)
    if isinstance(classes, Mapping):
        ids = sorted(int(k) for k in classes)
        if ids != list(range(len(ids))):
            raise ValueError(f"`{argname}` must map every class id 0..{len(ids) - 1} to a name, got ids {ids[:10]}")
        return [ActionClass(id=i, key=str(classes[i] if i in classes else classes[str(i)]), instances=()) for i in ids]
    items = list(classes)
    if all(isinstance(c, ActionClass) for c in items):
        return items
    if all(isinstance(c, str) for c in items):
        return [ActionClass(id=i, key=name, instances=()) for i, name in enumerate(items)]
    raise TypeError(
        f"`{argname}` must be a list of ActionClass (load_class_list), class names, an id2label mapping, a class "
        f"count or a path, got {type(classes).__name__}"
    )


def _annotations_source(annotations) -> str:
    """The file ``annotations`` were loaded from (by :func:`load_annotations`), for error messages."""
    description = getattr(getattr(annotations, "info", None), "description", None) or ""
    if description.startswith(_SOURCE_PREFIX):
        return description[len(_SOURCE_PREFIX) :]
    return "annotations"


def _validate_rows(out, where: _RowNamer, verb_list: list[ActionClass] | None, noun_list: list[ActionClass] | None):
    """The row-level checks shared by :func:`load_annotations` and :func:`check_annotations`."""
    for column in ("narration_id", "video_id"):
        if column in out.columns:
            empty = np.flatnonzero(out[column].astype(str).str.strip().eq("").to_numpy())
            if empty.size:
                raise ValueError(f"{where(int(empty[0]))}: empty {column!r}")
    duplicated = out["narration_id"].duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = int(np.flatnonzero(duplicated)[0])
        nid = out["narration_id"].iloc[first]
        others = np.flatnonzero((out["narration_id"] == nid).to_numpy())
        second = int(others[1])
        raise ValueError(
            f"{where(second)}: duplicate narration_id {nid!r}, already used by {where(first).split(': ', 1)[1]}; "
            "every segment needs its own narration_id"
        )

    start, stop = out["start_frame"].to_numpy(), out["stop_frame"].to_numpy()
    bad = np.flatnonzero((start < 1) | (stop < start))
    if bad.size:
        pos = int(bad[0])
        raise ValueError(
            f"{where(pos)}: start_frame={start[pos]}, stop_frame={stop[pos]}; "
            "expected 1 <= start_frame <= stop_frame (1-based, inclusive)"
        )

    labels_present = all(c in out.columns for c in LABEL_COLUMNS)
    if labels_present:
        for column, classes in (("verb_class", verb_list), ("noun_class", noun_list)):
            ids = out[column].to_numpy()
            limit = len(classes) if classes is not None else None
            bad = np.flatnonzero((ids < 0) | (ids >= limit if limit is not None else False))
            if bad.size:
                pos = int(bad[0])
                allowed = f"0..{limit - 1}" if limit is not None else ">= 0"
                raise ValueError(
                    f"{where(pos)}: {column}={ids[pos]} is outside the {column.split('_')[0]} class list "
                    f"(allowed {allowed})"
                )
    if "all_noun_classes" in out.columns:
        limit = len(noun_list) if noun_list is not None else None
        for pos, ids in enumerate(out["all_noun_classes"]):
            if any(i < 0 or (limit is not None and i >= limit) for i in ids):
                allowed = f"0..{limit - 1}" if limit is not None else ">= 0"
                raise ValueError(f"{where(pos)}: all_noun_classes={list(ids)} has ids outside {allowed}")

    with_instances = [c for c in (verb_list, noun_list) if c is not None and any(x.instances for x in c)]
    if labels_present and with_instances:
        report = check_label_consistency(
            out,
            verb_list if verb_list is not None and any(x.instances for x in verb_list) else None,
            noun_list if noun_list is not None and any(x.instances for x in noun_list) else None,
        )
        if report.num_mismatches:
            examples = (report.verb_mismatches + report.noun_mismatches)[:5]
            logger.warning(
                "%s: %d verb and %d noun words are neither the key nor an instance of their class "
                "(kept as annotated); examples (narration_id, word, class): %s",
                where.source,
                len(report.verb_mismatches),
                len(report.noun_mismatches),
                examples,
            )


def load_annotations(
    path: str | os.PathLike,
    verb_classes: LabelSpace | None = None,
    noun_classes: LabelSpace | None = None,
    *,
    allow_pickle: bool = False,
):
    """Load an EK100 annotation file (CSV, or PKL with ``allow_pickle=True``) as a ``datasets.Dataset``.

    Columns keep their EK100 names and order (see :data:`ANNOTATION_COLUMNS`); extra columns are
    kept after them. Frame and class columns are ``int64``, ``all_nouns`` a list of strings and
    ``all_noun_classes`` a list of ints (parsed with :func:`ast.literal_eval`). Test-set files
    without labels load too: they simply have no ``verb``/``noun``/... columns.

    Validation, all at load time, before any training step; each error is a ``ValueError`` naming the
    file, the line (the row position for pickles) and the ``narration_id``: required columns
    (:data:`REQUIRED_COLUMNS`) must exist (label columns all or none); frame and class columns hold
    integers; ``narration_id`` and ``video_id`` are non-empty and every ``narration_id`` is unique;
    ``1 <= start_frame <= stop_frame``; class ids are ``>= 0`` and, with class lists, inside them
    (``verb_class``, ``noun_class`` and ``all_noun_classes``); a file with no rows is refused.
    Rows whose verb/noun word is neither the key nor an instance of its class are counted and logged
    as a warning, not rejected (EK100 has a few); call :func:`check_label_consistency` for the list.

    Args:
        verb_classes / noun_classes: the label space the class ids must fall in: class lists (from
            :func:`load_class_list`) or paths to them, class names by id (e.g. a model config's
            ``verb_id2label``), or a class count (``config.num_verb_classes``).
        allow_pickle: needed to read ``.pkl`` files, since unpickling can run arbitrary code.

    Returns:
        A ``datasets.Dataset``; its ``info.description`` names the file (error messages of
        :func:`check_annotations` and :class:`EK100SegmentDataset` use it).
    """
    import datasets
    import pandas as pd

    path = os.fspath(path)
    verb_list = _label_space(verb_classes, "verb_classes")
    noun_list = _label_space(noun_classes, "noun_classes")
    df = _read_table(path, allow_pickle)  # a RangeIndex

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing}; found {list(df.columns)}")
    labels_present = [c for c in LABEL_COLUMNS if c in df.columns]
    if labels_present and len(labels_present) != len(LABEL_COLUMNS):
        raise ValueError(
            f"{path}: label columns must be all present or all absent; missing "
            f"{[c for c in LABEL_COLUMNS if c not in df.columns]} while {labels_present} are present"
        )
    if len(df) == 0:
        raise ValueError(f"{path}: no segments (a header and no rows); an annotation file needs at least one row")

    is_csv = not path.lower().endswith((".pkl", ".pickle", ".pkl.gz", ".pickle.gz"))
    where = _RowNamer(df, path, csv_path=path if is_csv else None)
    out = pd.DataFrame(index=range(len(df)))
    for column in [c for c in ANNOTATION_COLUMNS if c in df.columns] + [
        c for c in df.columns if c not in ANNOTATION_COLUMNS
    ]:
        series = df[column]
        if column in _INT_COLUMNS:
            out[column] = _to_int_column(df, column, where).to_numpy()
        elif column == "all_nouns":
            out[column] = _to_list_column(df, column, where, str)
        elif column == "all_noun_classes":
            out[column] = _to_list_column(df, column, where, int)
        elif column in _STR_COLUMNS:
            out[column] = series.astype(str).to_numpy(dtype=object)
        else:
            out[column] = series.to_numpy()

    where.df = out
    _validate_rows(out, where, verb_list, noun_list)

    features = _features_for(out)
    info = datasets.DatasetInfo(description=_SOURCE_PREFIX + path, features=features)
    return datasets.Dataset.from_pandas(out, features=features, info=info, preserve_index=False)


def check_annotations(
    annotations,
    verb_classes: LabelSpace | None = None,
    noun_classes: LabelSpace | None = None,
) -> None:
    """Check loaded annotations (a ``datasets.Dataset`` or pandas ``DataFrame``) as :func:`load_annotations` does.

    For annotations loaded without class lists, or filtered since: unique non-empty ``narration_id``,
    ``1 <= start_frame <= stop_frame``, and class ids inside ``verb_classes`` / ``noun_classes`` (class
    lists, paths, names by id or class counts, as in :func:`load_annotations`). Raises ``ValueError``
    naming the file the annotations came from, the row (0-based position in ``annotations``) and its
    ``narration_id``.
    """
    import pandas as pd

    verb_list = _label_space(verb_classes, "verb_classes")
    noun_list = _label_space(noun_classes, "noun_classes")
    if isinstance(annotations, pd.DataFrame):
        df = annotations.reset_index(drop=True)
    elif hasattr(annotations, "select_columns") and hasattr(annotations, "to_pandas"):
        wanted = ("narration_id", "video_id", "start_frame", "stop_frame", *LABEL_COLUMNS, "all_noun_classes")
        df = annotations.select_columns([c for c in wanted if c in annotations.column_names]).to_pandas()
    else:
        raise TypeError(f"`annotations` must be a datasets.Dataset or a pandas DataFrame, got {type(annotations)}")
    missing = [c for c in ("narration_id", "start_frame", "stop_frame") if c not in df.columns]
    if missing:
        raise ValueError(f"`annotations` lacks the column(s) {missing}")
    _validate_rows(df, _RowNamer(df, _annotations_source(annotations)), verb_list, noun_list)


def check_dataset_labels(dataset: Any, config: Any) -> None:
    """Check that the class ids of ``dataset``'s annotations fit a model's heads, before training on it.

    ``dataset`` is an :class:`EK100SegmentDataset` (anything with labeled ``annotations``; other datasets
    are left alone) and ``config`` a :class:`~mambavl.MambaVLConfig` (``num_verb_classes``,
    ``num_noun_classes``). Raises ``ValueError`` naming the annotations file, the row and the
    ``narration_id`` of the first id outside them (see :func:`check_annotations`), or naming the file
    when it has no label columns at all (a test split).
    """
    annotations = getattr(dataset, "annotations", None)
    columns = getattr(annotations, "column_names", None)
    if columns is None or not all(c in columns for c in ("narration_id", "start_frame", "stop_frame")):
        return
    if not any(c in columns for c in LABEL_COLUMNS):  # every clip unlabelled: training would learn nothing
        raise ValueError(
            f"{_annotations_source(annotations)}: no label columns ({', '.join(LABEL_COLUMNS)}), as in a test "
            "split: training and evaluation need them."
        )
    if not all(c in columns for c in LABEL_COLUMNS):
        return
    num_verbs, num_nouns = getattr(config, "num_verb_classes", None), getattr(config, "num_noun_classes", None)
    if isinstance(num_verbs, int) and isinstance(num_nouns, int):
        check_annotations(annotations, num_verbs, num_nouns)


def _features_for(df):
    import datasets

    string, int64 = datasets.Value("string"), datasets.Value("int64")
    known = {c: string for c in _STR_COLUMNS}
    known.update({c: int64 for c in _INT_COLUMNS})
    known["all_nouns"] = datasets.List(string)
    known["all_noun_classes"] = datasets.List(int64)
    unknown = [c for c in df.columns if c not in known]
    inferred = datasets.Dataset.from_pandas(df[unknown], preserve_index=False).features if unknown else {}
    return datasets.Features({c: known[c] if c in known else inferred[c] for c in df.columns})


def check_label_consistency(
    annotations,
    verb_classes: Sequence[ActionClass] | None = None,
    noun_classes: Sequence[ActionClass] | None = None,
) -> LabelConsistencyReport:
    """Find rows whose ``verb``/``noun`` is neither the key nor an instance of ``verb_class``/``noun_class``.

    ``annotations`` is a ``datasets.Dataset`` or a pandas ``DataFrame`` with label columns.
    """
    columns = annotations.column_names if hasattr(annotations, "column_names") else list(annotations.columns)
    missing = [c for c in ("narration_id", *LABEL_COLUMNS) if c not in columns]
    if missing:
        raise ValueError(f"`annotations` lacks the column(s) {missing} needed to check labels")

    def col(name):
        values = annotations[name]
        return values.tolist() if hasattr(values, "tolist") else list(values)

    nids = col("narration_id")
    report = LabelConsistencyReport(num_rows=len(nids))
    for word_col, id_col, classes, sink in (
        ("verb", "verb_class", verb_classes, report.verb_mismatches),
        ("noun", "noun_class", noun_classes, report.noun_mismatches),
    ):
        if classes is None:
            continue
        table = {c.id: c for c in classes}
        for nid, word, cid in zip(nids, col(word_col), col(id_col), strict=True):
            cls = table.get(int(cid))
            if cls is None or not cls.matches(word):
                sink.append((nid, word, int(cid)))
    return report


def load_video_fps(path: str | os.PathLike) -> dict[str, float]:
    """``{video_id: fps}`` from ``EPIC_100_video_info.csv`` (``video_id,duration,fps,resolution``)."""
    import csv

    with open(os.fspath(path), newline="", encoding="utf-8") as handle:
        return {row["video_id"]: float(row["fps"]) for row in csv.DictReader(handle)}


# --------------------------------------------------------------------------------------------
# Video sources
# --------------------------------------------------------------------------------------------


@runtime_checkable
class VideoSource(Protocol):
    """Where a dataset reads frames from.

    ``indices`` are **0-based** frame indices (EK100 frame number ``k`` is index ``k - 1``).
    ``kind`` is ``"frames"`` (``get_frames`` returns ``(T, H, W, 3)`` uint8) or ``"features"``
    (``(T, D)`` float32). ``fps``/``num_frames`` are in the annotations' frame units.
    """

    kind: str

    def get_frames(self, video_id: str, indices: Sequence[int]) -> np.ndarray: ...

    def fps(self, video_id: str) -> float: ...

    def num_frames(self, video_id: str) -> int: ...

    def location(self, video_id: str) -> str: ...


def _participant(video_id: str) -> str:
    return video_id.split("_")[0]


def _find_case_insensitive(directory: str, name: str, listing_cache: dict[str, dict[str, str]]) -> str | None:
    exact = os.path.join(directory, name)
    if os.path.exists(exact):
        return exact
    if directory not in listing_cache:
        try:
            entries = os.listdir(directory)
        except OSError:
            entries = []
        listing_cache[directory] = {e.lower(): e for e in entries}
    found = listing_cache[directory].get(name.lower())
    return os.path.join(directory, found) if found is not None else None


def _other_layout_hint(source: Any, video_id: str, exists: Callable[[str], bool]) -> str:
    """`` (it exists under layout='flat': ...)`` when ``video_id`` is found under the other layout of ``source``."""
    other = "flat" if source.layout == "ek100" else "ek100"
    there = source._with_layout(other).location(video_id)
    return f"; it exists under layout={other!r}: {there!r} (mambavl CLI: --layout {other})" if exists(there) else ""


def _per_video(value: float | Mapping[str, float] | None, video_id: str, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        if video_id not in value:
            raise KeyError(f"No {what} given for video {video_id!r}")
        return float(value[video_id])
    return float(value)


class VideoFileSource:
    """Decode frames from video files with PyAV.

    Layouts: ``"ek100"`` reads ``<root>/<participant>/videos/<video_id>.MP4`` (participant =
    ``video_id`` up to the first ``_``, e.g. ``P01`` for ``P01_11``); ``"flat"`` reads
    ``<root>/<video_id>.mp4``. The file name is matched case-insensitively (``.MP4``/``.mp4``);
    ``extension`` defaults to ``.MP4`` for ``"ek100"`` and ``.mp4`` for ``"flat"``.

    ``cache_size > 0`` keeps that many fully decoded videos in memory (LRU, per process), which is
    worthwhile for short, small videos such as the synthetic dataset; ``0`` decodes just the
    requested frames on every call.

    ``annotation_fps`` (a number or ``{video_id: fps}``) is the rate at which the annotations count
    frames, when it differs from the file's. ``None`` (default): frame index ``i`` is decoded frame
    ``i`` (the synthetic dataset, and videos whose frames were numbered at their own rate).
    Otherwise index ``i`` is the frame shown at time ``i / annotation_fps``, decoded frame
    ``floor(i * fps_file / annotation_fps)``, and :meth:`fps`/:meth:`num_frames` are in annotation
    units. The official EK100 annotations number frames at 60 per second (``start_frame`` is
    ``60 * start_timestamp`` in ``EPIC_100_validation.csv``, whatever the video's own rate), so
    use ``annotation_fps=60`` with the original EK100 MP4s.
    """

    kind = "frames"

    def __init__(
        self,
        root: str | os.PathLike,
        layout: str = "ek100",
        extension: str | None = None,
        cache_size: int = 0,
        annotation_fps: float | Mapping[str, float] | None = None,
    ):
        if layout not in ("ek100", "flat"):
            raise ValueError(f"`layout` must be 'ek100' or 'flat', got {layout!r}")
        if cache_size < 0:
            raise ValueError(f"`cache_size` must be >= 0, got {cache_size}")
        self.root = os.fspath(root)
        self.layout = layout
        self.extension = extension if extension is not None else (".MP4" if layout == "ek100" else ".mp4")
        if not self.extension.startswith("."):
            self.extension = "." + self.extension
        self.cache_size = cache_size
        self.annotation_fps = annotation_fps
        self._paths: dict[str, str] = {}
        self._listings: dict[str, dict[str, str]] = {}
        self._infos: dict[str, Any] = {}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _directory(self, video_id: str) -> str:
        if self.layout == "ek100":
            return os.path.join(self.root, _participant(video_id), "videos")
        return self.root

    def location(self, video_id: str) -> str:
        """Path of the video file (the expected path when it does not exist)."""
        if video_id in self._paths:
            return self._paths[video_id]
        name = video_id + self.extension
        found = _find_case_insensitive(self._directory(video_id), name, self._listings)
        if found is None:
            return os.path.join(self._directory(video_id), name)
        self._paths[video_id] = found
        return found

    def path(self, video_id: str) -> str:
        """Path of the video file; raises :class:`VideoDecodingError` when it does not exist."""
        path = self.location(video_id)
        if not os.path.exists(path):
            raise VideoDecodingError(
                f"Video file for video_id {video_id!r} not found: {path!r} (layout={self.layout!r}, "
                f"matched case-insensitively){_other_layout_hint(self, video_id, os.path.isfile)}",
                path=path,
            )
        return path

    def _with_layout(self, layout: str) -> VideoFileSource:
        """The same source (root, extension, cache size, annotation rate) reading ``layout``."""
        return VideoFileSource(self.root, layout, self.extension, self.cache_size, self.annotation_fps)

    def info(self, video_id: str):
        if video_id not in self._infos:
            self._infos[video_id] = read_video_info(self.path(video_id))
        return self._infos[video_id]

    def fps(self, video_id: str) -> float:
        """Frame rate of the frame indices (``annotation_fps`` if given, else the file's)."""
        ann = _per_video(self.annotation_fps, video_id, "annotation fps")
        return ann if ann is not None else self.info(video_id).fps

    def num_frames(self, video_id: str) -> int:
        """Number of frame indices (in annotation units when ``annotation_fps`` is given)."""
        info = self.info(video_id)
        ann = _per_video(self.annotation_fps, video_id, "annotation fps")
        if ann is None:
            return info.num_frames
        return math.ceil(info.num_frames * ann / info.fps - 1e-6)

    def _decoded_indices(self, video_id: str, indices: Sequence[int]) -> list[int]:
        ann = _per_video(self.annotation_fps, video_id, "annotation fps")
        if ann is None:
            return list(indices)
        info, total = self.info(video_id), self.num_frames(video_id)
        out = []
        for i in indices:
            if not 0 <= int(i) < total:
                raise FrameIndexError(
                    f"Frame index {int(i)} is out of range for {self.location(video_id)!r}, which has "
                    f"{total} frames at the annotation rate of {ann} fps",
                    path=self.location(video_id),
                    index=int(i),
                )
            out.append(min(math.floor(int(i) * info.fps / ann + 1e-6), info.num_frames - 1))
        return out

    def get_frames(self, video_id: str, indices: Sequence[int]) -> np.ndarray:
        indices = self._decoded_indices(video_id, indices)
        if self.cache_size == 0:
            return decode_frames(self.path(video_id), indices)
        video = self._cache.get(video_id)
        if video is None:
            path = self.path(video_id)
            video = decode_frames(path, range(self.info(video_id).num_frames))
            self._cache[video_id] = video
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(video_id)
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(video)):
            bad = int(idx[(idx < 0) | (idx >= len(video))][0])
            raise FrameIndexError(
                f"Frame index {bad} is out of range for {self.location(video_id)!r}, which has {len(video)} frames",
                path=self.location(video_id),
                index=bad,
            )
        return video[idx]

    def __getstate__(self):  # do not ship decoded videos to DataLoader workers
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        return f"VideoFileSource(root={self.root!r}, layout={self.layout!r}, extension={self.extension!r})"


class FrameFolderSource:
    """Read frames from folders of JPEG images.

    Layouts: ``"ek100"`` reads ``<root>/<participant>/rgb_frames/<video_id>/frame_0000000001.jpg``,
    ``"flat"`` reads ``<root>/<video_id>/frame_0000000001.jpg``. Index ``i`` is the image
    ``template.format(i + start_index)``. Frame folders store no frame rate: pass ``fps`` (one
    number, or ``{video_id: fps}``) when something needs it (e.g. anticipation).
    """

    kind = "frames"

    def __init__(
        self,
        root: str | os.PathLike,
        layout: str = "ek100",
        fps: float | Mapping[str, float] | None = None,
        template: str = "frame_{:010d}.jpg",
        start_index: int = 1,
    ):
        if layout not in ("ek100", "flat"):
            raise ValueError(f"`layout` must be 'ek100' or 'flat', got {layout!r}")
        self.root = os.fspath(root)
        self.layout = layout
        self._fps = fps
        self.template = template
        self.start_index = start_index
        self._counts: dict[str, int] = {}

    def location(self, video_id: str) -> str:
        if self.layout == "ek100":
            return os.path.join(self.root, _participant(video_id), "rgb_frames", video_id)
        return os.path.join(self.root, video_id)

    def fps(self, video_id: str) -> float:
        value = _per_video(self._fps, video_id, "fps")
        if value is None:
            raise ValueError(
                f"FrameFolderSource has no frame rate for {video_id!r}: pass fps=... (frame folders store none; "
                "mambavl CLI: --annotation-fps, the rate the frames were extracted at)"
            )
        return value

    def num_frames(self, video_id: str) -> int:
        """Number of consecutive images from the first one (``frame_0000000001.jpg``) on."""
        if video_id not in self._counts:
            folder = self.location(video_id)
            if not os.path.isdir(folder):
                raise VideoDecodingError(
                    f"Frame folder for video_id {video_id!r} not found: {folder!r} (layout={self.layout!r})"
                    + _other_layout_hint(self, video_id, os.path.isdir),
                    path=folder,
                )
            names = set(os.listdir(folder))
            prefix, suffix = self.template.split("{", 1)[0], self.template.rsplit("}", 1)[-1]
            candidates = sum(1 for n in names if n.startswith(prefix) and n.endswith(suffix))
            count = candidates
            # Trust the listing only if it is contiguous; otherwise count up to the first gap.
            if self.template.format(candidates - 1 + self.start_index) not in names:
                count = 0
                while self.template.format(count + self.start_index) in names:
                    count += 1
            self._counts[video_id] = count
        return self._counts[video_id]

    def get_frames(self, video_id: str, indices: Sequence[int]) -> np.ndarray:
        return read_frame_folder(self.location(video_id), indices, self.template, self.start_index)

    def _with_layout(self, layout: str) -> FrameFolderSource:
        """The same source (root, frame rate, file names) reading ``layout``."""
        return FrameFolderSource(self.root, layout, self._fps, self.template, self.start_index)

    def __repr__(self) -> str:
        return f"FrameFolderSource(root={self.root!r}, layout={self.layout!r})"


class FeatureSource:
    """Precomputed per-video features: ``<root>/<video_id>.safetensors`` or ``<root>/<video_id>.npy``.

    A ``.safetensors`` file holds a tensor ``features`` (``key``) of shape ``(N, D)`` and its rate
    in steps per second, either as a scalar tensor ``fps`` or as the metadata entry ``"fps"``. A
    ``.npy`` file holds the ``(N, D)`` array only (its rate is ``feature_fps``); it is loaded with
    ``allow_pickle=False``.

    Index mapping: when the videos' native frame rate is known (``video_fps``: a number or
    ``{video_id: fps}``, e.g. from :func:`load_video_fps`) and the features' rate too, frame index
    ``i`` (0-based, native rate, as in the annotations) reads feature step
    ``floor(i * feature_fps / video_fps)``. Otherwise the features are taken to be one per frame
    (step ``i``). ``get_frames`` returns ``(T, D)`` float32.
    """

    kind = "features"

    def __init__(
        self,
        root: str | os.PathLike,
        video_fps: float | Mapping[str, float] | None = None,
        feature_fps: float | None = None,
        key: str = "features",
        cache_size: int = 16,
    ):
        self.root = os.fspath(root)
        self.video_fps = video_fps
        self.feature_fps = feature_fps
        self.key = key
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[np.ndarray, float | None]] = OrderedDict()

    def location(self, video_id: str) -> str:
        for ext in (".safetensors", ".npy"):
            path = os.path.join(self.root, video_id + ext)
            if os.path.exists(path):
                return path
        return os.path.join(self.root, video_id + ".safetensors")

    def _load(self, video_id: str) -> tuple[np.ndarray, float | None]:
        if video_id in self._cache:
            self._cache.move_to_end(video_id)
            return self._cache[video_id]
        path = self.location(video_id)
        if not os.path.exists(path):
            raise VideoDecodingError(
                f"Feature file for video_id {video_id!r} not found: {path!r} (or .npy)", path=path
            )
        feature_fps = self.feature_fps
        try:
            if path.endswith(".npy"):
                array = np.load(path, allow_pickle=False)
            else:
                from safetensors import safe_open

                with safe_open(path, framework="pt") as handle:
                    names = set(handle.keys())
                    if self.key not in names:
                        raise VideoDecodingError(
                            f"{path!r} has no tensor {self.key!r} (tensors: {sorted(names)})", path=path
                        )
                    array = handle.get_tensor(self.key).float().numpy()
                    if "fps" in names:
                        feature_fps = float(handle.get_tensor("fps").float().reshape(-1)[0])
                    elif (handle.metadata() or {}).get("fps") is not None:
                        feature_fps = float(handle.metadata()["fps"])
        except VideoDecodingError:
            raise
        except Exception as exc:
            raise VideoDecodingError(f"Cannot read features from {path!r}: {exc}", path=path) from exc
        if array.ndim != 2:
            raise VideoDecodingError(f"Features in {path!r} must have shape (N, D), got {array.shape}", path=path)
        array = np.asarray(array, dtype=np.float32)
        self._cache[video_id] = (array, feature_fps)
        while len(self._cache) > max(self.cache_size, 1):
            self._cache.popitem(last=False)
        return array, feature_fps

    def _video(self, video_id: str) -> tuple[np.ndarray, float | None, float | None]:
        """A video's features ``(N, D)`` with the video's and the features' rates (``None`` when unknown)."""
        array, feature_fps = self._load(video_id)
        return array, _per_video(self.video_fps, video_id, "video fps"), feature_fps

    @staticmethod
    def _frame_count(array: np.ndarray, video_fps: float | None, feature_fps: float | None) -> int:
        if video_fps is None or feature_fps is None:
            return len(array)
        return math.ceil(len(array) * video_fps / feature_fps)

    def _unmapped_rate(self, video_id: str) -> float | None:
        """The features' own rate when they carry one but no video rate maps annotation frames to it, else ``None``."""
        _, video_fps, feature_fps = self._video(video_id)
        return feature_fps if video_fps is None and feature_fps is not None and feature_fps > 0 else None

    def fps(self, video_id: str) -> float:
        """Frame rate of the annotation frame numbers: the video's native rate if given, else the features'."""
        _, video_fps, feature_fps = self._video(video_id)
        value = video_fps if video_fps is not None else feature_fps
        if value is None:
            raise ValueError(f"Unknown frame rate for {video_id!r}: pass video_fps or feature_fps")
        return value

    def num_frames(self, video_id: str) -> int:
        return self._frame_count(*self._video(video_id))

    def get_frames(self, video_id: str, indices: Sequence[int]) -> np.ndarray:
        array, video_fps, feature_fps = self._video(video_id)
        idx = np.asarray(list(indices), dtype=np.int64)
        total = self._frame_count(array, video_fps, feature_fps)
        bad = idx[(idx < 0) | (idx >= total)]
        if bad.size:
            raise FrameIndexError(
                f"Frame index {int(bad[0])} is out of range for {self.location(video_id)!r} ({total} frames)",
                path=self.location(video_id),
                index=int(bad[0]),
            )
        if video_fps is not None and feature_fps is not None:
            idx = np.minimum(np.floor(idx * (feature_fps / video_fps)).astype(np.int64), len(array) - 1)
        return array[idx]

    def feature_size(self, video_id: str | None = None) -> int:
        """Width ``D`` of the features (of ``video_id``, or of the first feature file in ``root``)."""
        if video_id is None:
            names = sorted(n for n in os.listdir(self.root) if n.endswith((".safetensors", ".npy")))
            if not names:
                raise ValueError(f"No .safetensors or .npy feature files in {self.root!r}")
            video_id = os.path.splitext(names[0])[0]
        return int(self._load(video_id)[0].shape[1])

    def __repr__(self) -> str:
        return f"FeatureSource(root={self.root!r})"


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedSegment:
    """A segment left out by :meth:`EK100SegmentDataset.validate` and why."""

    position: int
    narration_id: str
    video_id: str
    reason: str


class SegmentItem(UserDict):
    """A dataset item: a mapping of field names (``frames`` or ``video_features``, ``verb_class``, ...) to values.

    A mapping, not a ``dict``: `transformers.Trainer` (with its default ``remove_unused_columns=True``) drops the
    ``dict`` keys that are not arguments of the model's forward before the collator sees them, and leaves other
    mappings whole, so the collator gets the fields it turns into model inputs.
    """


class EK100SegmentDataset(torch.utils.data.Dataset):
    """Narrated segments of EK100-format annotations, read from a :class:`VideoSource`.

    Each item is a dict:

    * ``frames``: ``uint8`` tensor ``(T, H, W, 3)``, or ``(V, T, H, W, 3)`` when ``num_views > 1``
      (frame sources); ``video_features``: ``float32`` ``(T, D)`` / ``(V, T, D)`` (feature sources);
    * ``frame_indices``: ``int64`` ``(T,)`` / ``(V, T)``, the EK100 (1-based) frame numbers read;
    * ``narration_id``, ``video_id``, ``narration``, ``verb``, ``noun``: ``str`` (``""`` when the file
      has no such column, e.g. test-set files);
    * ``verb_class``, ``noun_class``: ``int``, :data:`IGNORE_INDEX` (``-100``) when unlabeled.

    Sampling: ``sampling="random"`` draws TSN indices (one random frame per equal sub-segment) from
    a generator seeded with ``(seed, epoch, row)``, so an item depends only on the seed, the epoch
    (:meth:`set_epoch`) and its row, never on worker assignment or order; the epoch lives in shared
    memory, so ``set_epoch`` also reaches persistent DataLoader workers. ``sampling="center"`` is
    deterministic. ``num_views > 1`` returns that many evenly shifted views (see
    :func:`~mambavl.data.video.sample_frame_indices`).

    Errors: with ``on_error="raise"`` (default) a segment that cannot be read raises
    :class:`~mambavl.data.video.VideoDecodingError` naming the file and the ``narration_id``.
    With ``on_error="skip"`` every segment is checked at construction (:meth:`validate`: the video
    opens and the segment's frames lie inside it; ``check_videos="decode"`` also decodes them), the
    unreadable ones are left out with a logged count and listed in :attr:`skipped`. A segment that
    passed the check and still fails when it is read (a file that opens but whose frames do not
    decode, e.g. a truncated MP4 with an intact header) is skipped then: ``dataset[i]`` logs a
    warning naming the file and the segment and returns ``None``, which :func:`drop_skipped` (used by
    :func:`mambavl.training.train` and :func:`~mambavl.training.evaluate`) removes from the batch. The
    dataset never substitutes another sample or returns blank frames. :attr:`num_skipped` counts
    every segment skipped either way, by any DataLoader worker. ``check_videos=True`` runs the check
    with ``on_error="raise"`` too, failing fast on the first bad segment.

    Subclasses change which frames a row covers by overriding :meth:`segment_bounds` (e.g. the
    observed window before an action, for anticipation); the bounds must stay inside the video
    (``1 <= start <= stop <= source.num_frames``), so clamp there. Since the up-front check runs in
    ``__init__``, a subclass sets the attributes its ``segment_bounds`` needs before calling
    ``super().__init__``.

    Labels: pass the label space as ``verb_classes`` / ``noun_classes`` (class lists or their paths,
    class names by id, or class counts such as ``config.num_verb_classes``) to have every class id
    checked at construction, with the annotations file, line and ``narration_id`` named on error
    (:func:`load_annotations`, :func:`check_annotations`); without them the other checks still run
    (unique ``narration_id``, frame bounds, ids ``>= 0``).
    """

    def __init__(
        self,
        annotations,
        source: VideoSource,
        num_frames: int = 8,
        sampling: str = "random",
        num_views: int = 1,
        on_error: str = "raise",
        check_videos: bool | str = False,
        seed: int = 0,
        verb_classes: LabelSpace | None = None,
        noun_classes: LabelSpace | None = None,
    ):
        from_file = isinstance(annotations, (str, os.PathLike))
        if from_file:
            annotations = load_annotations(annotations, verb_classes, noun_classes)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"`num_frames` must be a positive int, got {num_frames!r}")
        if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
            raise ValueError(f"`num_views` must be a positive int, got {num_views!r}")
        if sampling not in ("random", "center"):
            raise ValueError(f"`sampling` must be 'random' or 'center', got {sampling!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"`on_error` must be 'raise' or 'skip', got {on_error!r}")
        if check_videos not in (False, True, "decode"):
            raise ValueError(f"`check_videos` must be False, True or 'decode', got {check_videos!r}")
        missing = [
            c for c in ("narration_id", "video_id", "start_frame", "stop_frame") if c not in annotations.column_names
        ]
        if missing:
            raise ValueError(f"`annotations` lacks required column(s) {missing}")
        if not from_file:  # load_annotations checked a file already
            check_annotations(annotations, verb_classes, noun_classes)
        kind = getattr(source, "kind", "frames")
        if kind not in ("frames", "features"):
            raise ValueError(f"`source.kind` must be 'frames' or 'features', got {kind!r}")
        self.annotations = annotations
        self.source = source
        self.kind = kind
        self.num_frames = num_frames
        self.sampling = sampling
        self.num_views = num_views
        self.on_error = on_error
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.labeled = all(c in annotations.column_names for c in LABEL_COLUMNS)
        self.positions: list[int] = list(range(len(annotations)))
        self.skipped: list[SkippedSegment] = []
        # Segments skipped when read (flags in shared memory, so that DataLoader workers' skips count too)
        self._unreadable = torch.zeros(len(annotations), dtype=torch.bool).share_memory_()
        if on_error == "skip" or check_videos:
            problems = self.validate(decode=check_videos == "decode", raise_on_error=on_error == "raise")
            if problems:
                self._exclude(problems)
                logger.warning(
                    "Skipped %d of %d segments that cannot be read (see .skipped); first: %s",
                    len(problems),
                    len(annotations),
                    problems[0],
                )

    # -- sampling -----------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds random sampling (visible to DataLoader workers)."""
        self._epoch[0] = int(epoch)

    def segment_bounds(self, row: Mapping[str, Any]) -> tuple[int, int]:
        """EK100 (1-based, inclusive) ``(start_frame, stop_frame)`` of the frames to sample for ``row``.

        Override to sample another window (e.g. the observed clip before an action).
        """
        return int(row["start_frame"]), int(row["stop_frame"])

    def _exclude(self, problems: Sequence[SkippedSegment]) -> None:
        """Drop the segments of ``problems`` from the dataset and record them in :attr:`skipped`."""
        bad = {p.position for p in problems}
        self.positions = [p for p in self.positions if p not in bad]
        self.skipped = [*self.skipped, *problems]

    def skipped_mask(self) -> torch.Tensor:
        """``bool`` tensor ``(len(annotations),)``: the rows skipped as unreadable, at construction or when read
        (by this process or its DataLoader workers)."""
        mask = self._unreadable.clone()
        mask[[p.position for p in self.skipped]] = True
        return mask

    @property
    def num_skipped(self) -> int:
        """Number of segments skipped as unreadable (see :meth:`skipped_mask`)."""
        return int(self.skipped_mask().sum())

    def _rng(self, position: int) -> np.random.Generator | None:
        if self.sampling != "random":
            return None
        return np.random.default_rng([self.seed, self.epoch, position])

    # -- validation ---------------------------------------------------------------------------

    def validate(self, decode: bool = False, raise_on_error: bool = False) -> list[SkippedSegment]:
        """Check every segment: its video opens and ``1 <= start <= stop <= num_frames``.

        With ``decode=True`` the centre-sampled frames of each segment are decoded too (slow on
        long videos). Returns the problems found; with ``raise_on_error=True`` raises the first
        as a :class:`VideoDecodingError` naming the file and segment instead.
        """
        problems: list[SkippedSegment] = []
        video_errors: dict[str, str] = {}
        counts: dict[str, int] = {}
        for position in range(len(self.annotations)):
            row = self.annotations[position]
            nid, vid = str(row["narration_id"]), str(row["video_id"])
            reason = None
            if vid not in counts and vid not in video_errors:
                try:
                    counts[vid] = int(self.source.num_frames(vid))
                except (VideoDecodingError, OSError, ValueError) as exc:
                    video_errors[vid] = str(exc)
            if vid in video_errors:
                reason = video_errors[vid]
            else:
                start, stop = self.segment_bounds(row)
                reason = self._bounds_problem(vid, start, stop, counts[vid])
                if reason is None and decode:
                    indices = sample_frame_indices(start, stop, self.num_frames, "center", self.num_views)
                    try:
                        self.source.get_frames(vid, sorted({i - 1 for view in indices for i in view}))
                    except (VideoDecodingError, OSError, ValueError) as exc:
                        reason = str(exc)
            if reason is not None:
                if raise_on_error:
                    raise VideoDecodingError(
                        f"Segment narration_id={nid!r} (video {vid!r}) cannot be read: {reason}",
                        path=self._where(vid),
                        narration_id=nid,
                    )
                problems.append(SkippedSegment(position, nid, vid, reason))
        return problems

    def _bounds_problem(self, video_id: str, start: int, stop: int, total: int) -> str | None:
        """Why frames ``start..stop`` (1-based) cannot be read from a video of ``total`` frames, or ``None``."""
        if 1 <= start <= stop <= total:
            return None
        problem = f"frames {start}..{stop} (1-based) are outside {self._where(video_id)!r}, which has {total} frames"
        unmapped = getattr(self.source, "_unmapped_rate", None)
        rate = unmapped(video_id) if unmapped is not None else None
        if rate is not None:
            problem += (
                f" (it stores {rate:g} feature steps per second, read as one step per annotation frame because the "
                "annotations' frame rate was not given: mambavl CLI --annotation-fps, FeatureSource(video_fps=...))"
            )
        return problem

    def _where(self, video_id: str) -> str:
        locate = getattr(self.source, "location", None)
        return locate(video_id) if locate is not None else video_id

    # -- items --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> SegmentItem | None:
        """The item of segment ``index`` (see the class docstring); ``None`` when it cannot be read and
        ``on_error="skip"``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} segments")
        position = self.positions[index]
        row = self.annotations[position]
        nid, vid = str(row["narration_id"]), str(row["video_id"])
        if self.on_error == "skip" and bool(self._unreadable[position]):
            return None  # failed before (logged then): not decoded again every epoch
        start, stop = self.segment_bounds(row)
        views = sample_frame_indices(start, stop, self.num_frames, self.sampling, self.num_views, self._rng(position))
        try:
            data = self._read(nid, vid, start, stop, views)
        except VideoDecodingError as exc:
            if self.on_error != "skip":
                raise
            self._unreadable[position] = True
            logger.warning("Skipping unreadable segment narration_id=%r of %s: %s", nid, exc.path, exc)
            return None
        shape = (self.num_views, self.num_frames) if self.num_views > 1 else (self.num_frames,)
        data = data.reshape(*shape, *data.shape[1:])
        indices = torch.tensor(views if self.num_views > 1 else views[0], dtype=torch.int64)
        item = SegmentItem()
        if self.kind == "features":
            item["video_features"] = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        else:
            item["frames"] = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))
        item["frame_indices"] = indices
        item["narration_id"] = nid
        item["video_id"] = vid
        item["narration"] = str(row.get("narration", "") or "")
        if self.labeled:
            item["verb"], item["noun"] = str(row["verb"]), str(row["noun"])
            item["verb_class"], item["noun_class"] = int(row["verb_class"]), int(row["noun_class"])
        else:
            item["verb"], item["noun"] = "", ""
            item["verb_class"], item["noun_class"] = IGNORE_INDEX, IGNORE_INDEX
        return item

    def _read(self, nid: str, vid: str, start: int, stop: int, views: list[list[int]]) -> np.ndarray:
        """The frames (or features) of ``views`` (EK100 frame numbers), stacked ``(V * T, ...)``; any failure is a
        :class:`VideoDecodingError` naming the file and the segment."""
        flat = [i - 1 for view in views for i in view]  # EK100 frame k -> 0-based index k-1
        try:
            problem = self._bounds_problem(vid, start, stop, self.source.num_frames(vid))
            if problem is not None:  # never read part of a segment that is not there
                raise FrameIndexError(f"Segment {problem}", path=self._where(vid), index=stop - 1)
            data = self.source.get_frames(vid, flat)
        except VideoDecodingError as exc:
            raise type(exc)(
                f"{exc} [segment narration_id={nid!r}, video_id={vid!r}]",
                path=exc.path or self._where(vid),
                narration_id=nid,
                index=exc.index,
            ) from exc
        except (OSError, ValueError) as exc:
            raise VideoDecodingError(
                f"Cannot read segment narration_id={nid!r} from {self._where(vid)!r}: {exc}",
                path=self._where(vid),
                narration_id=nid,
            ) from exc
        data = np.asarray(data)
        if data.shape[0] != len(flat):
            raise VideoDecodingError(
                f"Source returned {data.shape[0]} frames for {len(flat)} indices "
                f"[segment narration_id={nid!r}, video_id={vid!r}]",
                path=self._where(vid),
                narration_id=nid,
            )
        return data

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(segments={len(self)}, skipped={len(self.skipped)}, source={self.source!r}, "
            f"num_frames={self.num_frames}, sampling={self.sampling!r}, num_views={self.num_views})"
        )


def drop_skipped(collate_fn: Any) -> Any:
    """Wrap a collate function so that it ignores the ``None`` items of segments skipped as unreadable.

    With ``on_error="skip"`` an :class:`EK100SegmentDataset` returns ``None`` for a segment whose frames fail to
    decode; the wrapped ``collate_fn`` sees the other items of the batch only, and a batch whose every segment was
    skipped becomes ``None`` (the training and evaluation loops of :mod:`mambavl.training` pass over it). Other
    attributes (``set_epoch``, ...) are those of ``collate_fn``. The wrapper pickles, for DataLoader workers.
    """
    return collate_fn if isinstance(collate_fn, _DropSkipped) else _DropSkipped(collate_fn)


class _DropSkipped:
    def __init__(self, collate_fn: Any):
        self.collate_fn = collate_fn

    def __call__(self, items: Sequence[Any]) -> Any:
        kept = [item for item in items if item is not None]
        return self.collate_fn(kept) if kept else None

    def __getattr__(self, name: str) -> Any:
        if name == "collate_fn":  # not set yet (while unpickling)
            raise AttributeError(name)
        return getattr(self.collate_fn, name)
