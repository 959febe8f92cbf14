"""A small synthetic egocentric kitchen dataset in EPIC-KITCHENS-100 format.

:func:`generate_synthetic_dataset` renders short MP4 clips of a hand acting on kitchen objects,
seen from above a counter, and writes EK100-format annotations and class lists next to them::

    <root>/videos/<video_id>.mp4                (H.264, constant frame rate)
    <root>/annotations/train.csv                EK100 columns, 1-based inclusive frames
    <root>/annotations/validation.csv
    <root>/annotations/verb_classes.csv         EK100 class-list format, ids 0..K-1
    <root>/annotations/noun_classes.csv
    <root>/annotations/metadata.json            generator parameters, counts

What is in a clip
-----------------
* A kitchen: a tiled wall and a textured counter (wood grain, blotches), different per
  participant, with a slight camera shake and sensor noise in every frame.
* **Nouns differ in appearance**: each object has its own colour and shape (white plate with a
  rim, red cup with a handle, silver knife with a brown handle, amber jar with a label, green
  bottle, dark pan with a long handle, purple spoon, blue bowl), with small random jitter of
  position, size and colour.
* **Verbs differ in motion**: *take* lifts the object from the counter towards the camera (down
  and out of the bottom edge, growing), *put* is exactly its time reversal; *open* slides a lid off
  the object, *close* is its time reversal; *shake* oscillates the object horizontally; *turn*
  rotates it half a turn with the hand going around; *wash* pours a water stream with droplets
  while the hand rubs; *cut* sweeps a knife across it, the other hand holding it. A model has
  to use the temporal order to tell take from put and open from close.

Each video holds ``segments_per_video`` actions of 1-2 s one after another, separated by short
idle gaps. With ``preparation_time > 0`` each action is preceded by a preparatory motion of that
length (the hand approaching the object from a direction specific to the upcoming verb) and then
``anticipation_gap`` seconds of stillness, so an observed clip that ends ``anticipation_gap``
seconds before the action start is informative of it (action anticipation).

Long videos
-----------
:func:`generate_long_videos` renders *untrimmed* videos in the same kitchens, with the same objects and motions:
many actions in a row (``segments_per_video``, 30 by default, about 80 s) separated by idle gaps of
``idle_duration`` seconds (0.5-2 s by default) in which nothing happens, so that close to half of the time is
background. They are the held-out streams of online action detection (``mambavl demo --task streaming``); their
annotations are an EK100-format CSV that :func:`mambavl.data.untrimmed_labels` turns into per-time labels.

Everything is deterministic in ``seed``: the CSV files are byte-identical and the decoded frames
identical across runs. Rendering is vectorised numpy; no OpenCV or Pillow is needed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .epic_kitchens import ANNOTATION_COLUMNS, VideoFileSource, load_annotations, seconds_to_timestamp
from .video import write_video

logger = logging.getLogger(__name__)

__all__ = [
    "NOUN_SPECS",
    "VERB_SPECS",
    "LongVideoInfo",
    "NounSpec",
    "SyntheticDatasetInfo",
    "VerbSpec",
    "generate_long_videos",
    "generate_synthetic_dataset",
    "render_clip",
]

_GENERATOR_VERSION = 2


@dataclass(frozen=True)
class VerbSpec:
    """A synthetic verb: EK100 key, the narration words used for it, category, preparation direction.

    ``approach_deg`` is the direction (degrees, image axes, 90 = from below) from which the hand
    approaches the object during the preparation phase that precedes the action.
    """

    key: str
    instances: tuple[str, ...]
    category: str
    approach_deg: float


@dataclass(frozen=True)
class NounSpec:
    """A synthetic noun: EK100 key, narration words, category, base RGB colour, size and lid height."""

    key: str
    instances: tuple[str, ...]
    category: str
    color: tuple[int, int, int]
    scale: float
    lid_y: float  # local y of the top of the object, where a lid sits (negative is up)


#: Verbs (names, instances and categories from the EK100 verb classes).
VERB_SPECS: dict[str, VerbSpec] = {
    v.key: v
    for v in (
        VerbSpec("take", ("take", "pick-up", "grab"), "retrieve", 90.0),
        VerbSpec("put", ("put", "put-down", "place"), "leave", 30.0),
        VerbSpec("open", ("open", "open-up"), "access", 150.0),
        VerbSpec("close", ("close", "shut"), "block", 0.0),
        VerbSpec("wash", ("wash", "rinse", "clean"), "clean", -90.0),
        VerbSpec("cut", ("cut", "slice", "chop"), "split", 180.0),
        VerbSpec("shake", ("shake", "jiggle"), "manipulate", -30.0),
        VerbSpec("turn", ("turn", "rotate", "spin"), "manipulate", -150.0),
    )
}

#: Nouns (names, instances and categories from the EK100 noun classes).
NOUN_SPECS: dict[str, NounSpec] = {
    n.key: n
    for n in (
        NounSpec("plate", ("plate", "dish", "saucer"), "crockery", (236, 236, 228), 0.165, -0.35),
        NounSpec("cup", ("cup", "mug"), "crockery", (205, 45, 40), 0.150, -0.78),
        NounSpec("knife", ("knife", "blade"), "cutlery", (165, 180, 208), 0.145, -0.30),
        NounSpec("jar", ("jar", "jar:coffee", "jar:honey"), "containers", (235, 165, 35), 0.150, -0.75),
        NounSpec("bottle", ("bottle", "bottle:water", "bottle:oil"), "containers", (40, 150, 65), 0.150, -0.95),
        NounSpec("pan", ("pan", "saucepan", "wok"), "cookware", (48, 48, 54), 0.155, -0.55),
        NounSpec("spoon", ("spoon", "teaspoon"), "cutlery", (150, 70, 200), 0.145, -0.35),
        NounSpec("bowl", ("bowl", "bowl:salad"), "crockery", (45, 85, 215), 0.160, -0.25),
    )
}

_COUNTERS = ((176, 130, 86), (160, 118, 80), (150, 142, 128), (188, 150, 108), (138, 128, 118))
_WALLS = ((232, 226, 212), (204, 216, 226), (226, 212, 200), (214, 226, 210), (236, 236, 236))
_SKINS = ((224, 172, 140), (198, 140, 105), (150, 100, 70), (236, 190, 160), (175, 120, 88))
_SLEEVES = ((40, 50, 90), (90, 90, 95), (60, 90, 60), (110, 40, 50), (30, 30, 35))


@dataclass
class SyntheticDatasetInfo:
    """What :func:`generate_synthetic_dataset` wrote (paths, class names, counts, parameters)."""

    root: str
    videos_dir: str
    train_annotations: str
    validation_annotations: str
    verb_classes_path: str
    noun_classes_path: str
    metadata_path: str
    verb_names: list[str]
    noun_names: list[str]
    train_video_ids: list[str]
    validation_video_ids: list[str]
    num_train_segments: int
    num_validation_segments: int
    fps: float
    size: int
    preparation_time: float
    anticipation_gap: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def num_verbs(self) -> int:
        return len(self.verb_names)

    @property
    def num_nouns(self) -> int:
        return len(self.noun_names)

    def annotations_path(self, split: str) -> str:
        if split == "train":
            return self.train_annotations
        if split in ("validation", "val"):
            return self.validation_annotations
        raise ValueError(f"`split` must be 'train' or 'validation', got {split!r}")

    def load_annotations(self, split: str):
        """The split's annotations as a ``datasets.Dataset`` (validated against the class lists)."""
        return load_annotations(self.annotations_path(split), self.verb_classes_path, self.noun_classes_path)

    def video_source(self, cache_size: int = 0):
        """A :class:`~mambavl.data.epic_kitchens.VideoFileSource` over the generated videos."""
        return VideoFileSource(self.videos_dir, layout="flat", extension=".mp4", cache_size=cache_size)


# --------------------------------------------------------------------------------------------
# Drawing primitives (signed distances in frame units; the frame spans [0, 1] x [0, 1])
# --------------------------------------------------------------------------------------------


def _smooth(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _col(a):
    """(T,) -> (T, 1, 1) for broadcasting against (T, H, W) grids."""
    return np.asarray(a, dtype=np.float32)[:, None, None]


def _sd_circle(x, y, r):
    return np.sqrt(x * x + y * y) - r


def _sd_box(x, y, hx, hy, radius=0.0):
    qx = np.abs(x) - (hx - radius)
    qy = np.abs(y) - (hy - radius)
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - radius


def _sd_capsule(x, y, ax, ay, bx, by, r):
    px, py = x - ax, y - ay
    dx, dy = bx - ax, by - ay
    denom = np.maximum(dx * dx + dy * dy, 1e-9)
    h = np.clip((px * dx + py * dy) / denom, 0.0, 1.0)
    return np.sqrt((px - h * dx) ** 2 + (py - h * dy) ** 2) - r


def _sd_ellipse(x, y, rx, ry):
    return (np.sqrt((x / rx) ** 2 + (y / ry) ** 2) - 1.0) * min(rx, ry)


class _Canvas:
    """A batch of frames (T, H, W, 3) float32 with world-coordinate grids.

    ``shift_x``/``shift_y`` (T,) are the integer camera-shake offsets in pixels; world coordinates
    are ``(pixel + 0.5 + shift) / size``.
    """

    def __init__(self, size: int, shift_x: np.ndarray, shift_y: np.ndarray):
        self.size = size
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x = grid[None, None, :] + _col(shift_x) / size
        self.y = grid[None, :, None] + _col(shift_y) / size
        self.x, self.y = np.broadcast_arrays(self.x, self.y)
        self.img = np.zeros((*self.x.shape, 3), dtype=np.float32)

    def alpha(self, sdf, opacity=1.0):
        a = np.clip(0.5 - sdf * self.size, 0.0, 1.0)
        return a * opacity if opacity != 1.0 else a

    def paint(self, sdf, color, opacity=1.0):
        a = self.alpha(sdf, opacity)
        if a.ndim < 3:
            a = np.broadcast_to(a, self.x.shape)
        rows = np.flatnonzero(a.any(axis=(0, 2)))
        if rows.size == 0:
            return
        cols = np.flatnonzero(a.any(axis=(0, 1)))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        color = np.asarray(color, dtype=np.float32)
        if color.ndim == 2:  # (T, 3)
            color = color[:, None, None, :]
        block = self.img[:, r0:r1, c0:c1]
        block += a[:, r0:r1, c0:c1, None] * (color - block)


# --------------------------------------------------------------------------------------------
# Scene elements
# --------------------------------------------------------------------------------------------


def _kitchen_style(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "counter": np.array(_COUNTERS[rng.integers(len(_COUNTERS))], np.float32) * rng.uniform(0.94, 1.04, 3),
        "wall": np.array(_WALLS[rng.integers(len(_WALLS))], np.float32) * rng.uniform(0.95, 1.03, 3),
        "horizon": float(rng.uniform(0.2, 0.3)),
        "tile": float(rng.uniform(0.09, 0.14)),
        "grain_freq": float(rng.uniform(5.0, 11.0)),
        "grain_angle": float(rng.uniform(-0.5, 0.5)),
        "grain_phase": rng.uniform(0, 2 * np.pi, 3).astype(np.float32),
        "blotch": rng.uniform(1.0, 3.5, 4).astype(np.float32),
        "skin": np.array(_SKINS[rng.integers(len(_SKINS))], np.float32),
        "sleeve": np.array(_SLEEVES[rng.integers(len(_SLEEVES))], np.float32),
    }


def _background(style: dict[str, Any], size: int, pad: int) -> np.ndarray:
    """The kitchen (wall and counter) on a ``(size + 2 pad)`` square grid, float32 RGB."""
    grid = (np.arange(-pad, size + pad, dtype=np.float32) + 0.5) / size
    x, y = grid[None, :], grid[:, None]
    ca, sa = math.cos(style["grain_angle"]), math.sin(style["grain_angle"])
    ph = style["grain_phase"]
    along = y * ca + x * sa
    grain = np.sin(2 * np.pi * style["grain_freq"] * along + 1.7 * np.sin(5.0 * x + ph[0]) + ph[1])
    b = style["blotch"]
    blotch = np.sin(b[0] * 2 * np.pi * x + ph[2]) * np.sin(b[1] * 2 * np.pi * y + ph[0]) + 0.5 * np.sin(
        b[2] * 2 * np.pi * (x + y) + ph[1]
    )
    counter_shade = (1.0 + 0.05 * grain + 0.035 * blotch) * (1.06 - 0.12 * y)
    t = style["tile"]
    tx = np.abs(((x / t) % 1.0) - 0.5)
    ty = np.abs((((y + 0.37 * t) / t) % 1.0) - 0.5)
    grout = np.clip((np.maximum(tx, ty) - 0.44) * 25.0, 0.0, 1.0)
    wall_shade = (1.0 - 0.16 * grout) * (1.0 - 0.04 * blotch)
    horizon = style["horizon"]
    is_wall = np.clip((horizon - y) * size + 0.5, 0.0, 1.0)
    edge = np.clip(1.0 - np.abs(y - horizon - 0.018) * size / 1.5, 0.0, 1.0)
    shade = is_wall * wall_shade + (1 - is_wall) * counter_shade * (1.0 - 0.3 * edge)
    base = is_wall[..., None] * style["wall"] + (1 - is_wall[..., None]) * style["counter"]
    return (base * shade[..., None]).astype(np.float32)


def _draw_background(c: _Canvas, background: np.ndarray, pad: int, shift_x, shift_y, brightness: float) -> None:
    size = c.size
    for t, (sx, sy) in enumerate(zip(shift_x, shift_y, strict=True)):
        r, q = pad + int(sy), pad + int(sx)
        c.img[t] = background[r : r + size, q : q + size]
    if brightness != 1.0:
        c.img *= brightness


def _noun_parts(key: str, lx, ly, color: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """Parts of an object as (signed distance in local units, RGB), painted in order."""
    dark, light = color * 0.62, np.minimum(color * 1.15 + 20, 255)
    if key == "plate":
        return [
            (_sd_circle(lx, ly, 1.0), color),
            (np.abs(_sd_circle(lx, ly, 0.7)) - 0.06, color * 0.8),
            (_sd_circle(lx - 0.45, ly + 0.2, 0.13), np.array([120, 120, 118], np.float32)),
        ]
    if key == "cup":
        handle = np.abs(_sd_circle(lx - 0.55, ly, 0.33)) - 0.1
        return [
            (np.minimum(handle, _sd_box(lx + 0.1, ly, 0.55, 0.72, 0.1)), color),
            (_sd_box(lx + 0.1, ly + 0.62, 0.55, 0.1), dark),
        ]
    if key == "knife":
        blade = np.maximum(_sd_box(lx - 0.25, ly, 1.0, 0.24, 0.05), (ly - 0.24) + 0.35 * (lx - 0.8))
        return [
            (blade, color),
            (_sd_box(lx + 1.05, ly, 0.42, 0.17, 0.08), np.array([35, 32, 30], np.float32)),
        ]
    if key == "jar":
        return [
            (_sd_box(lx, ly + 0.05, 0.62, 0.75, 0.18), color),
            (_sd_box(lx, ly + 0.7, 0.55, 0.1, 0.05), dark),
            (_sd_box(lx, ly - 0.12, 0.45, 0.25), np.array([246, 232, 196], np.float32)),
        ]
    if key == "bottle":
        body = _sd_box(lx, ly - 0.3, 0.42, 0.62, 0.16)
        neck = _sd_box(lx, ly + 0.52, 0.17, 0.33)
        return [
            (np.minimum(body, neck), color),
            (_sd_box(lx, ly + 0.88, 0.21, 0.09), dark * 0.8),
            (_sd_box(lx + 0.18, ly - 0.25, 0.07, 0.42), light),
        ]
    if key == "pan":
        return [
            (_sd_capsule(lx, ly, 0.4, 0.0, 1.4, 0.0, 0.12), np.array([28, 28, 30], np.float32)),
            (_sd_circle(lx + 0.3, ly, 0.85), color),
            (_sd_circle(lx + 0.3, ly, 0.68), color * 1.3),
        ]
    if key == "spoon":
        return [
            (_sd_capsule(lx, ly, -1.2, 0.0, 0.4, 0.0, 0.1), color),
            (_sd_ellipse(lx - 0.72, ly, 0.48, 0.34), color),
            (_sd_ellipse(lx - 0.74, ly, 0.3, 0.2), light),
        ]
    if key == "bowl":
        body = np.maximum(_sd_circle(lx, ly + 0.2, 0.98), -(ly + 0.2))
        return [
            (np.minimum(body, _sd_ellipse(lx, ly + 0.2, 0.98, 0.22)), color),
            (_sd_ellipse(lx, ly + 0.2, 0.82, 0.14), dark),
        ]
    raise KeyError(f"No appearance defined for noun {key!r}")


def _draw_object(c: _Canvas, noun: NounSpec, color, cx, cy, s, theta) -> None:
    cx, cy, s, theta = _col(cx), _col(cy), _col(s), _col(theta)
    dx, dy = c.x - cx, c.y - cy
    cos, sin = np.cos(theta), np.sin(theta)
    lx = (cos * dx + sin * dy) / s
    ly = (-sin * dx + cos * dy) / s
    # soft shadow: the object's silhouette, offset down-right and blurred by widening its edge
    shadow = np.min([sdf for sdf, _ in _noun_parts(noun.key, lx - 0.12, ly - 0.28, color)], axis=0)
    c.paint(shadow * s * 0.5 - 0.01, np.zeros(3, np.float32), opacity=0.2)
    for sdf, rgb in _noun_parts(noun.key, lx, ly, color):
        c.paint(sdf * s, rgb)


def _draw_lid(c: _Canvas, color, lx, ly, s) -> None:
    lx, ly, s = _col(lx), _col(ly), _col(s)
    c.paint(_sd_box(c.x - lx, c.y - ly, 0.8 * s, 0.2 * s, 0.06 * s), color)
    c.paint(_sd_box(c.x - lx, c.y - ly + 0.22 * s, 0.25 * s, 0.1 * s), color * 0.7)


def _draw_hand(c: _Canvas, style, hx, hy, ax, ay) -> None:
    hx, hy, ax, ay = _col(hx), _col(hy), _col(ax), _col(ay)
    skin = style["skin"]
    mx, my = hx + 0.55 * (ax - hx), hy + 0.55 * (ay - hy)
    c.paint(_sd_capsule(c.x, c.y, hx, hy, ax, ay, 0.04), skin * 0.9)
    c.paint(_sd_capsule(c.x, c.y, mx, my, ax, ay, 0.052), style["sleeve"])
    c.paint(_sd_ellipse(c.x - hx, c.y - hy, 0.066, 0.056), skin)
    c.paint(_sd_ellipse(c.x - hx + 0.015, c.y - hy + 0.02, 0.04, 0.025), skin * 1.06)


# --------------------------------------------------------------------------------------------
# Motions: per-frame scene state as a function of normalized time u in [0, 1]
# --------------------------------------------------------------------------------------------


def _rest_state(u, rest) -> dict[str, Any]:
    n = len(u)
    return {
        "obj": [np.full(n, rest["cx"]), np.full(n, rest["cy"]), np.full(n, rest["s"]), np.zeros(n)],
        "hands": [],
        "lid": None,
        "water": False,
        "knife": None,
    }


def _action_state(verb: str, u: np.ndarray, rest: dict[str, Any]) -> dict[str, Any]:
    """Scene state for ``verb`` at times ``u`` (arrays of shape (T,))."""
    cx, cy, s = rest["cx"], rest["cy"], rest["s"]
    st = _rest_state(u, rest)
    ax = cx + rest["anchor_dx"]
    entry = (ax, 1.12)
    anchor = (ax + 0.05, 1.4)
    amp = rest["amp"]

    if verb in ("take", "put"):
        u = u if verb == "take" else 1.0 - u
        a, b = _smooth(u / 0.35), _smooth((u - 0.35) / 0.65)
        end_x, end_y = 0.7 * cx + 0.15 + 0.05, 0.97
        ox, oy = cx + b * (end_x - cx), cy + b * (end_y - cy)
        os_ = s * (1.0 + 0.6 * b)
        gx, gy = cx + 0.05, cy + 0.7 * s
        hx = np.where(u < 0.35, entry[0] + a * (gx - entry[0]), ox + 0.05)
        hy = np.where(u < 0.35, entry[1] + a * (gy - entry[1]), oy + 0.7 * os_)
        st["obj"] = [ox, oy, os_, np.zeros_like(u)]
        st["hands"] = [(hx, hy, np.full_like(u, anchor[0]), np.full_like(u, anchor[1]))]
    elif verb in ("open", "close"):
        u = u if verb == "open" else 1.0 - u
        a, b = _smooth(u / 0.3), _smooth((u - 0.3) / 0.7)
        lid_x, lid_y = cx, cy + rest["lid_y"] * s
        lx = lid_x + b * 0.3 * amp
        ly = lid_y - b * 0.2 * amp
        gx, gy = lid_x + 0.6 * s, lid_y + 0.03
        hx = np.where(u < 0.3, entry[0] + a * (gx - entry[0]), lx + 0.6 * s)
        hy = np.where(u < 0.3, entry[1] + a * (gy - entry[1]), ly + 0.03)
        st["lid"] = (lx, ly)
        st["hands"] = [(hx, hy, np.full_like(u, anchor[0]), np.full_like(u, anchor[1]))]
    elif verb == "shake":
        ramp = _smooth(u / 0.15)
        ox = cx + ramp * 0.16 * amp * np.sin(2 * np.pi * (rest["cycles"] - 0.5) * u + rest["phase"])
        oy = cy - 0.1 * ramp
        st["obj"] = [ox, oy, np.full_like(u, s), np.zeros_like(u)]
        st["hands"] = [(ox + 0.02, oy + 0.8 * s, ox * 0.3 + 0.7 * anchor[0], np.full_like(u, anchor[1]))]
    elif verb == "turn":
        theta = np.pi * u * amp
        r = 1.05 * s
        hx = cx + r * np.cos(theta + 0.4)
        hy = cy + r * np.sin(theta + 0.4)
        st["obj"][3] = theta
        st["hands"] = [(hx, hy, np.full_like(u, anchor[0] + 0.1), np.full_like(u, anchor[1]))]
    elif verb == "wash":
        jitter = rest["jitter"]
        st["obj"][0] = cx + 0.012 * jitter[0][: len(u)]
        st["obj"][1] = cy + 0.012 * jitter[1][: len(u)]
        w = 2 * np.pi * rest["cycles"] * u
        hx = cx + 0.55 * s + 0.06 * np.sin(w)
        hy = cy + 0.35 * s + 0.04 * np.cos(w)
        st["hands"] = [(hx, hy, np.full_like(u, anchor[0]), np.full_like(u, anchor[1]))]
        st["water"] = True
    elif verb == "cut":
        kx = cx + s * (1.0 - 2.0 * u) * amp
        ky = cy + 0.035 * np.sin(2 * np.pi * rest["cycles"] * u)
        st["knife"] = (kx, ky)
        left = (np.full_like(u, cx - 0.8 * s), np.full_like(u, cy + 0.15 * s))
        st["hands"] = [
            (*left, np.full_like(u, cx - 0.3), np.full_like(u, 1.4)),
            (kx + 0.02, ky - 1.0 * s - 0.04, kx * 0.3 + 0.7 * (cx + 0.35), np.full_like(u, 1.4)),
        ]
    else:
        raise KeyError(f"No motion defined for verb {verb!r}")
    return st


def _prep_state(u, rest, hold: bool) -> dict[str, Any]:
    """Preparation: the hand approaches the object from the verb's direction (``hold``: stays still)."""
    st = _rest_state(u, rest)
    ang = math.radians(rest["approach_deg"])
    dx, dy = math.cos(ang), math.sin(ang)
    # Inside the frame from the start (so its direction is visible throughout) to beside the object.
    dist = np.full_like(u, 0.24) if hold else 0.38 - 0.14 * _smooth(u)
    cx, cy = rest["cx"], rest["cy"]
    hx, hy = cx + dist * dx, cy + dist * dy
    st["hands"] = [(hx, hy, np.full_like(u, cx + 1.5 * dx), np.full_like(u, cy + 1.5 * dy))]
    return st


def _render_state(c: _Canvas, st, style, noun: NounSpec, rest, rng_frames: np.random.Generator) -> None:
    color = rest["color"]
    ox, oy, os_, oth = st["obj"]
    _draw_object(c, noun, color, ox, oy, os_, oth)
    if st["lid"] is not None:
        lx, ly = st["lid"]
        _draw_lid(c, color * 0.5 + 25.0, lx, ly, os_)
    if st["water"]:
        cx, cy, s = rest["cx"], rest["cy"], rest["s"]
        t = c.x.shape[0]
        wx = cx - 0.1 * s
        c.paint(
            _sd_capsule(c.x, c.y, wx, -0.1, wx, cy - 0.3 * s, 0.028),
            np.array([150, 205, 250], np.float32),
            opacity=0.8,
        )
        drops = rng_frames.uniform(-1.0, 1.0, (t, 10, 2)).astype(np.float32)
        for k in range(drops.shape[1]):
            dxk = _col(cx + 1.1 * s * drops[:, k, 0])
            dyk = _col(cy + 0.9 * s * drops[:, k, 1])
            c.paint(_sd_circle(c.x - dxk, c.y - dyk, 0.026), np.array([160, 215, 255], np.float32))
    if st["knife"] is not None:
        kx, ky = st["knife"]
        s = rest["s"]
        kx, ky = _col(kx), _col(ky)
        blade = _sd_capsule(c.x, c.y, kx, ky - 1.1 * s, kx + 0.03, ky + 0.8 * s, 0.016)
        c.paint(blade - 0.012, np.array([20, 20, 24], np.float32))
        c.paint(blade, np.array([235, 238, 245], np.float32))
    for hx, hy, ax, ay in st["hands"]:
        _draw_hand(c, style, hx, hy, ax, ay)


def _rest_params(rng: np.random.Generator, verb: VerbSpec, noun: NounSpec, max_frames: int) -> dict[str, Any]:
    color = np.array(noun.color, np.float32) * rng.uniform(0.92, 1.08, 3) * rng.uniform(0.93, 1.07)
    return {
        "cx": float(rng.uniform(0.4, 0.6)),
        "cy": float(rng.uniform(0.52, 0.64)),
        "s": float(noun.scale * rng.uniform(0.88, 1.12)),
        "color": np.clip(color, 0, 255).astype(np.float32),
        "lid_y": noun.lid_y,
        "anchor_dx": float(rng.uniform(0.05, 0.25)),
        "amp": float(rng.uniform(0.85, 1.15)),
        "cycles": float(rng.uniform(2.0, 3.0)),
        "phase": float(rng.uniform(-0.3, 0.3)),
        "approach_deg": verb.approach_deg + float(rng.uniform(-12.0, 12.0)),
        "jitter": rng.uniform(-1.0, 1.0, (2, max_frames)),
    }


def _camera_shake(rng: np.random.Generator, n: int, size: int, amount: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel offsets (a slow random walk within about 2% of the frame), no drift."""
    steps = rng.normal(0.0, 0.0025, (2, n)) * amount
    walk = np.cumsum(steps, axis=1)
    walk -= np.linspace(0, 1, n)[None, :] * walk[:, -1:]
    walk = np.clip(np.rint(walk * size), -_shake_pad(size), _shake_pad(size)).astype(np.int64)
    return walk[0], walk[1]


def _shake_pad(size: int) -> int:
    return max(1, math.ceil(0.02 * size))


def _finish(c: _Canvas, rng: np.random.Generator, noise_std: float) -> np.ndarray:
    img = c.img
    if noise_std > 0:
        # sensor noise (luminance) and a slight per-frame colour flicker
        luma = rng.standard_normal((*img.shape[:-1], 1), dtype=np.float32) * np.float32(noise_std)
        chroma = rng.standard_normal((*img.shape[:-3], 1, 1, 3), dtype=np.float32) * np.float32(noise_std * 0.3)
        img = img + luma + chroma
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_clip(
    verb: str,
    noun: str,
    num_frames: int = 16,
    size: int = 64,
    seed: int = 0,
    noise: bool = True,
    shake: bool = True,
) -> np.ndarray:
    """Render one action clip ``(num_frames, size, size, 3)`` uint8, frames spanning the whole action.

    The kitchen, object placement and jitter depend only on ``seed`` (not on ``verb``), so
    ``render_clip("put", n, seed=s, noise=False, shake=False)`` is exactly the time reversal of
    ``render_clip("take", n, seed=s, noise=False, shake=False)``. For inspection and tests.
    """
    if verb not in VERB_SPECS:
        raise ValueError(f"Unknown verb {verb!r}; choose from {sorted(VERB_SPECS)}")
    if noun not in NOUN_SPECS:
        raise ValueError(f"Unknown noun {noun!r}; choose from {sorted(NOUN_SPECS)}")
    rng = np.random.default_rng([seed, 7])
    style = _kitchen_style(rng)
    rest = _rest_params(rng, VERB_SPECS[verb], NOUN_SPECS[noun], num_frames)
    u = np.linspace(0.0, 1.0, num_frames)
    pad = _shake_pad(size)
    sx, sy = _camera_shake(rng, num_frames, size)
    if not shake:
        sx, sy = np.zeros_like(sx), np.zeros_like(sy)
    c = _Canvas(size, sx, sy)
    _draw_background(c, _background(style, size, pad), pad, sx, sy, 1.0)
    _render_state(c, _action_state(verb, u, rest), style, NOUN_SPECS[noun], rest, rng)
    return _finish(c, rng, 3.5 if noise else 0.0)


# --------------------------------------------------------------------------------------------
# Dataset generation
# --------------------------------------------------------------------------------------------


def _balanced(rng: np.random.Generator, num_classes: int, count: int) -> list[int]:
    """``count`` labels cycling through shuffled permutations of all classes (balanced)."""
    out: list[int] = []
    while len(out) < count:
        out.extend(int(i) for i in rng.permutation(num_classes))
    return out[:count]


def _choose_instance(rng: np.random.Generator, instances: Sequence[str]) -> str:
    if len(instances) == 1 or rng.random() < 0.6:
        return instances[0]
    return instances[1 + int(rng.integers(len(instances) - 1))]


def _narration(verb_word: str, noun_word: str) -> str:
    noun_text = " ".join(reversed(noun_word.split(":")))  # EK100 "jar:coffee" is said "coffee jar"
    return f"{verb_word.replace('-', ' ')} {noun_text}"


def _render_video(
    video_index: int,
    labels: list[tuple[int, int]],
    verbs: list[VerbSpec],
    nouns: list[NounSpec],
    style: dict[str, Any],
    cfg: dict[str, Any],
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render one video; returns frames and per-segment (0-based inclusive) frame ranges and words."""
    rng = np.random.default_rng([cfg["seed"], 1, video_index])
    fps = cfg["fps"]

    def seconds(low_high: tuple[float, float]) -> float:
        return float(rng.uniform(*low_high))

    plan: list[tuple[str, int, int]] = []  # (phase, n_frames, segment)
    segments = []
    for k in range(len(labels)):
        plan.append(("idle", max(1, round(seconds(cfg["idle_duration"]) * fps)), k))
        if cfg["preparation_time"] > 0:
            plan.append(("prep", max(1, round(cfg["preparation_time"] * fps)), k))
            plan.append(("hold", max(0, round(cfg["anticipation_gap"] * fps)), k))
        plan.append(("action", max(2, round(seconds(cfg["segment_duration"]) * fps)), k))
    plan.append(("idle", max(1, round(cfg["idle_duration"][0] * fps)), len(labels) - 1))  # the last scene stays
    total = sum(n for _, n, _ in plan)
    shake_x, shake_y = _camera_shake(rng, total, cfg["size"], cfg["camera_shake"])
    pad = _shake_pad(cfg["size"])
    background = _background(style, cfg["size"], pad)
    brightness = float(rng.uniform(0.9, 1.08))
    noise_std = float(rng.uniform(*cfg["noise_std"]))
    max_frames = max(n for _, n, _ in plan)
    rests = [_rest_params(rng, verbs[v], nouns[n], max_frames) for v, n in labels]
    words = [(_choose_instance(rng, verbs[v].instances), _choose_instance(rng, nouns[n].instances)) for v, n in labels]
    frames = np.empty((total, cfg["size"], cfg["size"], 3), np.uint8)
    pos = 0
    for phase, n, seg in plan:
        if n == 0:
            continue
        verb, noun, rest = verbs[labels[seg][0]], nouns[labels[seg][1]], rests[seg]
        u = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
        if phase == "action":
            st = _action_state(verb.key, u, rest)
            segments.append({"segment": seg, "start": pos, "stop": pos + n - 1, "words": words[seg]})
        elif phase == "prep":
            st = _prep_state(u, rest, hold=False)
        elif phase == "hold":
            st = _prep_state(u, rest, hold=True)
        else:
            st = _rest_state(u, rest)
        sx, sy = shake_x[pos : pos + n], shake_y[pos : pos + n]
        c = _Canvas(cfg["size"], sx, sy)
        _draw_background(c, background, pad, sx, sy, brightness)
        _render_state(c, st, style, noun, rest, rng)
        frames[pos : pos + n] = _finish(c, rng, noise_std)
        pos += n
    return frames, segments


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def _render_params(
    *,
    num_videos: int,
    segments_per_video: int,
    seed: int,
    size: int,
    fps: float,
    verbs: Sequence[str] | None,
    nouns: Sequence[str] | None,
    segment_duration: tuple[float, float],
    idle_duration: tuple[float, float],
    preparation_time: float,
    anticipation_gap: float,
    noise_std: tuple[float, float],
    camera_shake: float,
    num_participants: int,
    crf: int,
) -> dict[str, Any]:
    """Check the arguments both generators share and return them as the JSON ``params`` of ``metadata.json``
    (``verbs`` / ``nouns``: the class keys, defaults filled in); the caller checks ``num_videos``."""
    verb_keys = list(verbs) if verbs is not None else list(VERB_SPECS)
    noun_keys = list(nouns) if nouns is not None else list(NOUN_SPECS)
    for name, keys, table in (("verbs", verb_keys, VERB_SPECS), ("nouns", noun_keys, NOUN_SPECS)):
        unknown = [k for k in keys if k not in table]
        if unknown:
            raise ValueError(f"Unknown {name} {unknown}; available: {sorted(table)}")
        if len(set(keys)) != len(keys) or len(keys) < 2:
            raise ValueError(f"`{name}` must list at least two distinct names, got {keys}")
    if segments_per_video < 1:
        raise ValueError(f"`segments_per_video` must be >= 1, got {segments_per_video}")
    if size < 16 or size % 2:
        raise ValueError(f"`size` must be an even number >= 16, got {size}")
    if not fps > 0:
        raise ValueError(f"`fps` must be positive, got {fps}")
    for name, (lo, hi) in (("segment_duration", segment_duration), ("idle_duration", idle_duration)):
        if not 0 < lo <= hi:
            raise ValueError(f"`{name}` must be (low, high) with 0 < low <= high, got {(lo, hi)}")
    if preparation_time < 0 or anticipation_gap < 0:
        raise ValueError(
            f"`preparation_time` and `anticipation_gap` must be >= 0, got {preparation_time}, {anticipation_gap}"
        )
    if not 0 <= noise_std[0] <= noise_std[1]:
        raise ValueError(f"`noise_std` must be (low, high) with 0 <= low <= high, got {tuple(noise_std)}")
    if camera_shake < 0:
        raise ValueError(f"`camera_shake` must be >= 0, got {camera_shake}")
    return {
        "generator_version": _GENERATOR_VERSION,
        "num_videos": num_videos,
        "segments_per_video": segments_per_video,
        "seed": seed,
        "size": size,
        "fps": float(fps),
        "verbs": verb_keys,
        "nouns": noun_keys,
        "segment_duration": [float(x) for x in segment_duration],
        "idle_duration": [float(x) for x in idle_duration],
        "preparation_time": float(preparation_time),
        "anticipation_gap": float(anticipation_gap),
        "noise_std": [float(x) for x in noise_std],
        "camera_shake": float(camera_shake),
        "num_participants": num_participants,
        "crf": crf,
    }


def _annotation_row(
    vid: str, participant: int, seg: dict[str, Any], verb_id: int, noun_id: int, fps: float, decimals: int
) -> list[Any]:
    """One EK100 annotation row (:data:`ANNOTATION_COLUMNS`) of a segment that :func:`_render_video` returned;
    ``decimals``: digits of the start/stop timestamps."""
    verb_word, noun_word = seg["words"]
    start_frame, stop_frame = seg["start"] + 1, seg["stop"] + 1
    start_s, stop_s = (start_frame - 1) / fps, stop_frame / fps
    return [
        f"{vid}_{seg['segment']}", f"P{participant:02d}", vid,
        seconds_to_timestamp(start_s + 0.1 * (stop_s - start_s), decimals=3),
        seconds_to_timestamp(start_s, decimals=decimals), seconds_to_timestamp(stop_s, decimals=decimals),
        start_frame, stop_frame, _narration(verb_word, noun_word), verb_word, verb_id,
        noun_word, noun_id, repr([noun_word]), repr([noun_id]),
    ]  # fmt: skip


def _write_class_lists(paths: dict[str, str], verb_specs: Sequence[VerbSpec], noun_specs: Sequence[NounSpec]) -> None:
    """``verb_classes.csv`` and ``noun_classes.csv`` (``id, key, instances, category``) at ``paths["verbs"]`` /
    ``paths["nouns"]``."""
    class_header = ("id", "key", "instances", "category")
    for key, specs in (("verbs", verb_specs), ("nouns", noun_specs)):
        rows = [[i, spec.key, repr(list(spec.instances)), spec.category] for i, spec in enumerate(specs)]
        _write_text(paths[key], _csv_text(class_header, rows))


def generate_synthetic_dataset(
    root: str | os.PathLike,
    *,
    num_videos: int = 64,
    segments_per_video: int = 6,
    seed: int = 0,
    size: int = 64,
    fps: float = 12,
    val_fraction: float = 0.25,
    verbs: Sequence[str] | None = None,
    nouns: Sequence[str] | None = None,
    segment_duration: tuple[float, float] = (1.0, 2.0),
    idle_duration: tuple[float, float] = (0.25, 0.75),
    preparation_time: float = 0.0,
    anticipation_gap: float = 1.0,
    noise_std: tuple[float, float] = (2.0, 5.0),
    camera_shake: float = 1.0,
    num_participants: int = 4,
    crf: int = 18,
    overwrite: bool = False,
) -> SyntheticDatasetInfo:
    """Render the synthetic egocentric dataset under ``root`` (see the module docstring for the layout).

    Args:
        num_videos: number of videos; each has ``segments_per_video`` annotated actions.
        seed: everything (kitchens, labels, jitter, noise, split) derives from it.
        size: frame height and width in pixels (even).
        fps: frame rate of the videos and of the annotation frame numbers.
        val_fraction: fraction of videos (not segments) in the validation split; no video is in both.
        verbs / nouns: subsets (and order, which fixes the class ids) of :data:`VERB_SPECS` /
            :data:`NOUN_SPECS`; default all eight of each.
        segment_duration / idle_duration: ranges in seconds for actions and the gaps before them.
        preparation_time: seconds of verb-specific preparatory hand motion before each action,
            followed by ``anticipation_gap`` seconds of stillness (0 disables both).
        noise_std: range of the per-video sensor noise standard deviation (grey levels).
        camera_shake: scale of the head-motion jitter (a slow walk of up to ~2% of the frame);
            0 keeps the camera still.
        num_participants: number of kitchens (participants ``P01``...); videos cycle through them.
        crf: H.264 quality (lower is better).
        overwrite: regenerate even if ``root`` already holds a dataset made with the same parameters
            (otherwise that one is reused as is).

    Returns:
        :class:`SyntheticDatasetInfo` with paths, class names and counts.
    """
    if num_videos < 2:
        raise ValueError(f"`num_videos` must be >= 2 (train and validation), got {num_videos}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}")
    params = _render_params(
        num_videos=num_videos, segments_per_video=segments_per_video, seed=seed, size=size, fps=fps, verbs=verbs,
        nouns=nouns, segment_duration=segment_duration, idle_duration=idle_duration,
        preparation_time=preparation_time, anticipation_gap=anticipation_gap, noise_std=noise_std,
        camera_shake=camera_shake, num_participants=num_participants, crf=crf,
    )  # fmt: skip
    verb_keys, noun_keys = params["verbs"], params["nouns"]
    num_val = min(num_videos - 1, max(1, round(num_videos * val_fraction)))
    num_train_segments = (num_videos - num_val) * segments_per_video
    if num_train_segments < max(len(verb_keys), len(noun_keys)):
        raise ValueError(
            f"Too few training segments ({num_train_segments}) for every verb and noun to appear in "
            "train: increase num_videos or segments_per_video"
        )

    params["val_fraction"] = float(val_fraction)
    root = os.fspath(root)
    videos_dir = os.path.join(root, "videos")
    ann_dir = os.path.join(root, "annotations")
    paths = {
        "train": os.path.join(ann_dir, "train.csv"),
        "validation": os.path.join(ann_dir, "validation.csv"),
        "verbs": os.path.join(ann_dir, "verb_classes.csv"),
        "nouns": os.path.join(ann_dir, "noun_classes.csv"),
        "meta": os.path.join(ann_dir, "metadata.json"),
    }

    previous = None
    if os.path.exists(paths["meta"]):
        with open(paths["meta"], encoding="utf-8") as handle:
            previous = json.load(handle)
    if previous is not None and previous.get("params") == params and not overwrite:
        expected = [
            os.path.join(videos_dir, v + ".mp4")
            for v in previous["train_video_ids"] + previous["validation_video_ids"]
        ]
        if all(os.path.exists(p) for p in [*paths.values(), *expected]):
            logger.info("Reusing the synthetic dataset in %s (same parameters)", root)
            return _info_from_metadata(root, paths, videos_dir, previous)

    os.makedirs(videos_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    if previous is not None:  # remove videos of an older generation that would otherwise linger
        for vid in previous.get("train_video_ids", []) + previous.get("validation_video_ids", []):
            stale = os.path.join(videos_dir, vid + ".mp4")
            if os.path.exists(stale):
                os.remove(stale)

    verb_specs = [VERB_SPECS[k] for k in verb_keys]
    noun_specs = [NOUN_SPECS[k] for k in noun_keys]
    split_rng = np.random.default_rng([seed, 0])
    per_participant: dict[int, int] = {}
    video_ids = []
    for i in range(num_videos):
        p = i % num_participants + 1
        per_participant[p] = per_participant.get(p, 0) + 1
        video_ids.append(f"P{p:02d}_{per_participant[p]:02d}")
    order = split_rng.permutation(num_videos)
    val_set = {int(i) for i in order[:num_val]}
    train_idx = [i for i in range(num_videos) if i not in val_set]
    val_idx = [i for i in range(num_videos) if i in val_set]
    labels: dict[int, list[tuple[int, int]]] = {}
    for split_videos in (train_idx, val_idx):
        count = len(split_videos) * segments_per_video
        vs = _balanced(split_rng, len(verb_specs), count)
        ns = _balanced(split_rng, len(noun_specs), count)
        for j, vi in enumerate(split_videos):
            sl = slice(j * segments_per_video, (j + 1) * segments_per_video)
            labels[vi] = list(zip(vs[sl], ns[sl], strict=True))

    styles = {p: _kitchen_style(np.random.default_rng([seed, 2, p])) for p in range(1, num_participants + 1)}
    rows: dict[str, list[list[Any]]] = {"train": [], "validation": []}
    for i, vid in enumerate(video_ids):
        participant = i % num_participants + 1
        frames, segments = _render_video(i, labels[i], verb_specs, noun_specs, styles[participant], params)
        write_video(os.path.join(videos_dir, vid + ".mp4"), frames, fps, crf=crf, gop_size=max(1, round(fps)))
        split = "validation" if i in val_set else "train"
        for seg in segments:
            verb_id, noun_id = labels[i][seg["segment"]]
            rows[split].append(_annotation_row(vid, participant, seg, verb_id, noun_id, fps, decimals=2))

    _write_text(paths["train"], _csv_text(ANNOTATION_COLUMNS, rows["train"]))
    _write_text(paths["validation"], _csv_text(ANNOTATION_COLUMNS, rows["validation"]))
    _write_class_lists(paths, verb_specs, noun_specs)
    metadata = {
        "params": params,
        "verb_names": verb_keys,
        "noun_names": noun_keys,
        "train_video_ids": [video_ids[i] for i in train_idx],
        "validation_video_ids": [video_ids[i] for i in val_idx],
        "num_train_segments": len(rows["train"]),
        "num_validation_segments": len(rows["validation"]),
    }
    _write_text(paths["meta"], json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    logger.info(
        "Wrote %d videos (%d train / %d validation segments) to %s",
        num_videos,
        len(rows["train"]),
        len(rows["validation"]),
        root,
    )
    return _info_from_metadata(root, paths, videos_dir, metadata)


def _info_from_metadata(
    root: str, paths: dict[str, str], videos_dir: str, meta: dict[str, Any]
) -> SyntheticDatasetInfo:
    params = meta["params"]
    return SyntheticDatasetInfo(
        root=root,
        videos_dir=videos_dir,
        train_annotations=paths["train"],
        validation_annotations=paths["validation"],
        verb_classes_path=paths["verbs"],
        noun_classes_path=paths["nouns"],
        metadata_path=paths["meta"],
        verb_names=list(meta["verb_names"]),
        noun_names=list(meta["noun_names"]),
        train_video_ids=list(meta["train_video_ids"]),
        validation_video_ids=list(meta["validation_video_ids"]),
        num_train_segments=int(meta["num_train_segments"]),
        num_validation_segments=int(meta["num_validation_segments"]),
        fps=float(params["fps"]),
        size=int(params["size"]),
        preparation_time=float(params["preparation_time"]),
        anticipation_gap=float(params["anticipation_gap"]),
        params=dict(params),
    )


# --------------------------------------------------------------------------------------------
# Long (untrimmed) videos
# --------------------------------------------------------------------------------------------

_LONG_VIDEO_OFFSET = 1_000_000  # video indices of long videos: their random streams differ from the clips'


@dataclass
class LongVideoInfo:
    """What :func:`generate_long_videos` wrote: the videos, their EK100-format annotations and class lists."""

    root: str
    videos_dir: str
    annotations_path: str
    verb_classes_path: str
    noun_classes_path: str
    metadata_path: str
    verb_names: list[str]
    noun_names: list[str]
    video_ids: list[str]
    num_frames: dict[str, int]
    fps: float
    size: int
    params: dict[str, Any] = field(default_factory=dict)

    def video_path(self, video_id: str) -> str:
        """The MP4 file of ``video_id``."""
        if video_id not in self.num_frames:
            raise ValueError(f"Unknown long video {video_id!r}; available: {self.video_ids}")
        return os.path.join(self.videos_dir, video_id + ".mp4")

    def durations(self) -> dict[str, float]:
        """``{video_id: seconds}``."""
        return {vid: n / self.fps for vid, n in self.num_frames.items()}

    def load_annotations(self):
        """The annotations as a ``datasets.Dataset`` (validated against the class lists)."""
        return load_annotations(self.annotations_path, self.verb_classes_path, self.noun_classes_path)

    def labels(self) -> dict[str, Any]:
        """``{video_id: UntrimmedVideoLabels}``: the action (or background) at every time of every video, from the
        frame columns at the videos' frame rate."""
        from .untrimmed import untrimmed_labels

        return untrimmed_labels(
            self.load_annotations(), annotation_fps=self.fps, durations=self.durations(), video_ids=self.video_ids
        )


def generate_long_videos(
    root: str | os.PathLike,
    *,
    num_videos: int = 2,
    segments_per_video: int = 30,
    seed: int = 0,
    size: int = 64,
    fps: float = 12,
    verbs: Sequence[str] | None = None,
    nouns: Sequence[str] | None = None,
    segment_duration: tuple[float, float] = (1.0, 2.0),
    idle_duration: tuple[float, float] = (0.5, 2.0),
    preparation_time: float = 0.0,
    anticipation_gap: float = 1.0,
    noise_std: tuple[float, float] = (2.0, 5.0),
    camera_shake: float = 1.0,
    num_participants: int = 4,
    crf: int = 18,
    overwrite: bool = False,
) -> LongVideoInfo:
    """Render untrimmed synthetic videos: many actions in a row with idle (background) gaps.

    The kitchens are those of :func:`generate_synthetic_dataset` with the same ``seed`` and ``num_participants``
    (video ``i`` is filmed in kitchen ``i % num_participants + 1``); the actions' placement, timing, noise and
    labels are drawn independently of that dataset's clips, so a model trained on its clips meets new videos.
    Layout::

        <root>/videos/<video_id>.mp4          ids P01_L01, P02_L02, ...
        <root>/annotations/long.csv           EK100 columns (1-based inclusive frames at ``fps``)
        <root>/annotations/verb_classes.csv   and noun_classes.csv, as in generate_synthetic_dataset
        <root>/annotations/metadata.json

    The other arguments are those of :func:`generate_synthetic_dataset`.

    Args:
        num_videos: number of videos.
        segments_per_video: actions per video; the labels cycle through shuffled permutations of all verbs and of
            all nouns, so every class appears when ``segments_per_video`` is at least the number of classes.
        idle_duration: range in seconds of the idle gap before each action (background).

    Returns:
        :class:`LongVideoInfo` (``info.labels()`` gives the per-time ground truth).
    """
    if num_videos < 1:
        raise ValueError(f"`num_videos` must be >= 1, got {num_videos}")
    params = _render_params(
        num_videos=num_videos, segments_per_video=segments_per_video, seed=seed, size=size, fps=fps, verbs=verbs,
        nouns=nouns, segment_duration=segment_duration, idle_duration=idle_duration,
        preparation_time=preparation_time, anticipation_gap=anticipation_gap, noise_std=noise_std,
        camera_shake=camera_shake, num_participants=num_participants, crf=crf,
    )  # fmt: skip
    verb_keys, noun_keys = params["verbs"], params["nouns"]
    params["kind"] = "long"
    root = os.fspath(root)
    videos_dir = os.path.join(root, "videos")
    ann_dir = os.path.join(root, "annotations")
    paths = {
        "annotations": os.path.join(ann_dir, "long.csv"),
        "verbs": os.path.join(ann_dir, "verb_classes.csv"),
        "nouns": os.path.join(ann_dir, "noun_classes.csv"),
        "meta": os.path.join(ann_dir, "metadata.json"),
    }
    if os.path.exists(paths["meta"]) and not overwrite:
        with open(paths["meta"], encoding="utf-8") as handle:
            previous = json.load(handle)
        expected = [os.path.join(videos_dir, v + ".mp4") for v in previous.get("video_ids", [])]
        if previous.get("params") == params and all(os.path.exists(p) for p in [*paths.values(), *expected]):
            logger.info("Reusing the long synthetic videos in %s (same parameters)", root)
            return _long_info(root, paths, videos_dir, previous)
    os.makedirs(videos_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)

    verb_specs = [VERB_SPECS[k] for k in verb_keys]
    noun_specs = [NOUN_SPECS[k] for k in noun_keys]
    styles = {p: _kitchen_style(np.random.default_rng([seed, 2, p])) for p in range(1, num_participants + 1)}
    rows: list[list[Any]] = []
    video_ids, num_frames = [], {}
    for i in range(num_videos):
        participant = i % num_participants + 1
        vid = f"P{participant:02d}_L{i + 1:02d}"
        label_rng = np.random.default_rng([seed, 3, i])
        vs = _balanced(label_rng, len(verb_specs), segments_per_video)
        ns = _balanced(label_rng, len(noun_specs), segments_per_video)
        labels = list(zip(vs, ns, strict=True))
        frames, segments = _render_video(
            _LONG_VIDEO_OFFSET + i, labels, verb_specs, noun_specs, styles[participant], params
        )
        write_video(os.path.join(videos_dir, vid + ".mp4"), frames, fps, crf=crf, gop_size=max(1, round(fps)))
        video_ids.append(vid)
        num_frames[vid] = int(frames.shape[0])
        for seg in segments:
            verb_id, noun_id = labels[seg["segment"]]
            rows.append(_annotation_row(vid, participant, seg, verb_id, noun_id, fps, decimals=3))
    _write_text(paths["annotations"], _csv_text(ANNOTATION_COLUMNS, rows))
    _write_class_lists(paths, verb_specs, noun_specs)
    metadata = {
        "params": params,
        "verb_names": verb_keys,
        "noun_names": noun_keys,
        "video_ids": video_ids,
        "num_frames": num_frames,
    }
    _write_text(paths["meta"], json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    logger.info("Wrote %d long videos (%d segments) to %s", num_videos, len(rows), root)
    return _long_info(root, paths, videos_dir, metadata)


def _long_info(root: str, paths: dict[str, str], videos_dir: str, meta: dict[str, Any]) -> LongVideoInfo:
    params = meta["params"]
    return LongVideoInfo(
        root=root,
        videos_dir=videos_dir,
        annotations_path=paths["annotations"],
        verb_classes_path=paths["verbs"],
        noun_classes_path=paths["nouns"],
        metadata_path=paths["meta"],
        verb_names=list(meta["verb_names"]),
        noun_names=list(meta["noun_names"]),
        video_ids=list(meta["video_ids"]),
        num_frames={k: int(v) for k, v in meta["num_frames"].items()},
        fps=float(params["fps"]),
        size=int(params["size"]),
        params=dict(params),
    )
