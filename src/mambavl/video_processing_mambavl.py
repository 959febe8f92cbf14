"""Video processor of MambaVL: frames -> ``pixel_values (B, T, C, H, W)`` float32.

Pure PyTorch (no torchvision). The class subclasses ``transformers``' ``VideoProcessorMixin``: that is
the base class a ``ProcessorMixin`` requires of its ``video_processor`` attribute, and it provides
``save_pretrained`` / ``from_pretrained`` / ``to_dict`` / ``to_json_string``. ``BaseVideoProcessor``
cannot be used because it needs torchvision.

Pipeline, for each clip:

1. **Temporal sampling** to ``num_frames`` frames at the centres of ``num_frames`` equal segments:
   frame ``i`` is ``floor((2 i + 1) * n / (2 * num_frames))`` of the ``n`` frames
   (:meth:`MambaVLVideoProcessor.sample_frame_indices`). A clip shorter than ``num_frames`` gets
   frames repeated in temporal order (nearest neighbour in time). ``num_frames=None`` (or
   ``do_sample_frames=False``) keeps every frame.
2. **Spatial transform**. Evaluation: resize the shortest side to ``size["shortest_edge"]`` (the
   long side to ``int(shortest_edge * long / short)``; or to exactly ``size["height"] x size["width"]``),
   with antialiased bilinear interpolation (``torch.nn.functional.interpolate(..., antialias=True)``),
   then centre-crop to ``crop_size`` (top-left corner ``((H - h) // 2, (W - w) // 2)``).
   Training (``do_train_augmentation=True``): a random resized crop (``train_crop_mode=
   "random_resized_crop"``: a box of ``scale`` x frame area and aspect ratio in ``ratio``, resized
   to ``crop_size``) or a random crop after the shortest-side resize (``"random_crop"``). Then, if
   ``do_random_flip``, a horizontal flip with probability ``flip_probability``. One box and one flip
   decision per clip, shared by all its frames. The flip is **off by default**: it swaps left and
   right, and egocentric video has a handedness (most actions are done with the right hand), so
   mirroring changes the data distribution and makes any "left"/"right" in a question wrong.
3. **Rescale** by ``rescale_factor`` (1/255) and **normalize** with ``image_mean`` / ``image_std``
   (ImageNet by default).

Inputs (``videos``), channels-last ``(..., H, W, C)`` by default (``input_data_format=
"channels_first"`` for ``(..., C, H, W)``). Frames whose layout contradicts the setting but fits the other one
(``(T, 3, H, W)`` with ``W != 3`` under ``"channels_last"``, and the reverse) are read in the layout they have:

- one clip: a list of ``(H, W, 3)`` uint8 frames (NumPy arrays, torch tensors or RGB PIL images),
  or a ``(T, H, W, 3)`` array / tensor;
- a batch: a list of clips, or a ``(B, T, H, W, 3)`` array / tensor;
- a decoded-video object: anything with a ``frames`` attribute (or a mapping with a ``"frames"``
  key) holding one clip in one of the forms above; a list of them is a batch.

Frames must be uint8 in ``[0, 255]``. Floating-point frames in ``[0, 1]`` are accepted only with
``do_rescale=False``. Clips of a batch may differ in length and frame size; the frames of one clip
may not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import VideosKwargs
from transformers.utils import TensorType
from transformers.video_processing_utils import VideoProcessorMixin

__all__ = ["MambaVLVideoProcessor", "MambaVLVideoProcessorKwargs"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_CROP_MODES = ("random_resized_crop", "random_crop")
INTERPOLATIONS = ("bilinear", "bicubic")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class MambaVLVideoProcessorKwargs(VideosKwargs, total=False):
    """Keyword arguments of :class:`MambaVLVideoProcessor` (``transformers``' ``VideosKwargs`` plus these)."""

    do_train_augmentation: bool
    train_crop_mode: str
    random_resized_crop_scale: list[float] | tuple[float, ...]
    random_resized_crop_ratio: list[float] | tuple[float, ...]
    do_random_flip: bool
    flip_probability: float
    interpolation: str
    seed: int | list[int] | None
    generator: Any


# Saved configuration keys (the instance attributes) and the per-call-only keys.
_CONFIG_KEYS = (
    "num_frames",
    "do_resize",
    "size",
    "interpolation",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "train_crop_mode",
    "random_resized_crop_scale",
    "random_resized_crop_ratio",
    "do_random_flip",
    "flip_probability",
    "input_data_format",
)
# transformers' VideosKwargs that ProcessorMixin may forward; accepted when they are None (unset) or
# have the one value this processor implements.
_TOLERATED_KWARGS = {
    "do_convert_rgb": (None, True, False),
    "default_to_square": (None, True, False),
    "resample": (None,),
    "do_pad": (None, False),
    "data_format": (None, "channels_first"),
    "fps": (None,),
    "video_metadata": (None,),
    "return_metadata": (None, False),
}


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def _normalize_size(size: Any) -> dict[str, int]:
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        return {"shortest_edge": _positive_int(size, "size")}
    if isinstance(size, Mapping):
        keys = set(size)
        if keys == {"shortest_edge"}:
            return {"shortest_edge": _positive_int(size["shortest_edge"], "size['shortest_edge']")}
        if keys == {"height", "width"}:
            return {
                "height": _positive_int(size["height"], "size['height']"),
                "width": _positive_int(size["width"], "size['width']"),
            }
    raise ValueError(
        f"`size` must be an int (shortest edge), {{'shortest_edge': int}} or {{'height': int, 'width': int}}, "
        f"got {size!r}"
    )


def _normalize_crop_size(crop_size: Any) -> dict[str, int]:
    if isinstance(crop_size, int | np.integer) and not isinstance(crop_size, bool):
        c = _positive_int(crop_size, "crop_size")
        return {"height": c, "width": c}
    if isinstance(crop_size, Mapping) and set(crop_size) == {"height", "width"}:
        return {
            "height": _positive_int(crop_size["height"], "crop_size['height']"),
            "width": _positive_int(crop_size["width"], "crop_size['width']"),
        }
    if isinstance(crop_size, Sequence) and not isinstance(crop_size, str) and len(crop_size) == 2:
        return {
            "height": _positive_int(crop_size[0], "crop_size[0]"),
            "width": _positive_int(crop_size[1], "crop_size[1]"),
        }
    raise ValueError(f"`crop_size` must be an int, (height, width) or {{'height', 'width'}}, got {crop_size!r}")


def _float_triple(value: Any, name: str, positive: bool) -> list[float]:
    if isinstance(value, int | float | np.number) and not isinstance(value, bool):
        value = [float(value)] * 3
    try:
        out = [float(v) for v in value]
    except TypeError as err:
        raise ValueError(f"`{name}` must be a float or a sequence of 3 floats, got {value!r}") from err
    if len(out) != 3:
        raise ValueError(f"`{name}` must have 3 values (R, G, B), got {len(out)}: {value!r}")
    if positive and any(not v > 0 for v in out):
        raise ValueError(f"`{name}` must be positive, got {value!r}")
    return out


def _float_range(value: Any, name: str, upper: float | None) -> list[float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be a pair (min, max), got {value!r}") from err
    if not (0 < lo <= hi) or (upper is not None and hi > upper):
        bound = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"`{name}` must satisfy 0 < min <= max{bound}, got {value!r}")
    return [lo, hi]


def _normalize_config(values: dict[str, Any]) -> dict[str, Any]:
    """Validate and canonicalize configuration values (only the keys present in ``values``)."""
    out = dict(values)
    if "num_frames" in out and out["num_frames"] is not None:
        out["num_frames"] = _positive_int(out["num_frames"], "num_frames")
    for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_random_flip"):
        if key in out and not isinstance(out[key], bool):
            raise ValueError(f"`{key}` must be a bool, got {out[key]!r}")
    if "size" in out:
        out["size"] = _normalize_size(out["size"])
    if "crop_size" in out:
        out["crop_size"] = _normalize_crop_size(out["crop_size"])
    if "interpolation" in out and out["interpolation"] not in INTERPOLATIONS:
        raise ValueError(f"`interpolation` must be one of {INTERPOLATIONS}, got {out['interpolation']!r}")
    if "rescale_factor" in out:
        rf = out["rescale_factor"]
        if isinstance(rf, bool) or not isinstance(rf, int | float) or not rf > 0:
            raise ValueError(f"`rescale_factor` must be a positive number, got {rf!r}")
        out["rescale_factor"] = float(rf)
    if "image_mean" in out:
        out["image_mean"] = _float_triple(out["image_mean"], "image_mean", positive=False)
    if "image_std" in out:
        out["image_std"] = _float_triple(out["image_std"], "image_std", positive=True)
    if "train_crop_mode" in out and out["train_crop_mode"] not in TRAIN_CROP_MODES:
        raise ValueError(f"`train_crop_mode` must be one of {TRAIN_CROP_MODES}, got {out['train_crop_mode']!r}")
    if "random_resized_crop_scale" in out:
        out["random_resized_crop_scale"] = _float_range(
            out["random_resized_crop_scale"], "random_resized_crop_scale", upper=1.0
        )
    if "random_resized_crop_ratio" in out:
        out["random_resized_crop_ratio"] = _float_range(
            out["random_resized_crop_ratio"], "random_resized_crop_ratio", upper=None
        )
    if "flip_probability" in out:
        p = out["flip_probability"]
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise ValueError(f"`flip_probability` must be in [0, 1], got {p!r}")
        out["flip_probability"] = float(p)
    if "input_data_format" in out:
        fmt = out["input_data_format"]
        fmt = getattr(fmt, "value", fmt)  # transformers' ChannelDimension enum
        fmt = {"channels_last": "channels_last", "channels_first": "channels_first"}.get(fmt)
        if fmt is None:
            raise ValueError(
                f"`input_data_format` must be 'channels_last' or 'channels_first', got {out['input_data_format']!r}"
            )
        out["input_data_format"] = fmt
    return out


def _is_pil_image(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "getbands")


def _is_frame(x: Any) -> bool:
    return (isinstance(x, np.ndarray | torch.Tensor) and x.ndim == 3) or _is_pil_image(x)


def _unwrap_decoded(x: Any) -> Any:
    if isinstance(x, Mapping):
        if "frames" in x:
            return x["frames"]
        return x
    if not isinstance(x, np.ndarray | torch.Tensor | list | tuple) and hasattr(x, "frames"):
        return x.frames
    return x


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray | torch.Tensor):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


class MambaVLVideoProcessor(VideoProcessorMixin):
    r"""Turns video frames into ``pixel_values`` of shape ``(batch, num_frames, 3, height, width)`` (float32).

    See the module docstring for the pipeline and the accepted inputs.

    Args:
        num_frames (`int` or `None`, defaults to 16): frames sampled per clip (uniformly, at segment
            centres; shorter clips repeat frames). ``None`` keeps all frames.
        do_resize (`bool`, defaults to `True`): resize before cropping (evaluation and
            ``"random_crop"`` training).
        size (`int` or `dict`, defaults to ``{"shortest_edge": 224}``): an int or
            ``{"shortest_edge": s}`` resizes the shortest side to ``s`` keeping the aspect ratio;
            ``{"height": h, "width": w}`` resizes to exactly ``h x w``.
        interpolation (`str`, defaults to ``"bilinear"``): ``"bilinear"`` or ``"bicubic"``, always
            antialiased.
        do_center_crop (`bool`, defaults to `True`): centre crop to ``crop_size`` at evaluation.
        crop_size (`int`, `(h, w)` or `dict`, defaults to 224): output frame size.
        do_rescale (`bool`, defaults to `True`), rescale_factor (`float`, defaults to 1/255).
        do_normalize (`bool`, defaults to `True`), image_mean, image_std (3 floats, ImageNet defaults).
        train_crop_mode (`str`, defaults to ``"random_resized_crop"``): the crop used with
            ``do_train_augmentation=True``: ``"random_resized_crop"`` or ``"random_crop"``.
        random_resized_crop_scale (`(min, max)`, defaults to ``(0.5, 1.0)``): area fraction of the
            random resized crop.
        random_resized_crop_ratio (`(min, max)`, defaults to ``(3/4, 4/3)``): its aspect ratio range.
        do_random_flip (`bool`, defaults to `False`): random horizontal flip at training (swaps left
            and right; off by default, see the module docstring).
        flip_probability (`float`, defaults to 0.5).
        input_data_format (`str`, defaults to ``"channels_last"``): layout of the input frames,
            ``"channels_last"`` (``H, W, C``) or ``"channels_first"`` (``C, H, W``).

    Call::

        processor(videos, do_train_augmentation=False, generator=None, seed=None,
                  return_tensors="pt", device=None, **overrides) -> BatchFeature({"pixel_values": ...})

    ``overrides`` are any of the arguments above, for this call only. With
    ``do_train_augmentation=True``, the random draws come from ``generator`` (a CPU
    ``torch.Generator``), or from a new generator seeded with ``seed`` (a list of seeds gives each clip
    its own generator, so a clip's augmentation does not depend on its batch mates), or else from
    torch's global generator.

    Example::

        >>> processor = MambaVLVideoProcessor(num_frames=8)
        >>> clip = np.zeros((30, 256, 340, 3), dtype=np.uint8)  # 30 frames, H=256, W=340
        >>> processor(clip)["pixel_values"].shape
        torch.Size([1, 8, 3, 224, 224])
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = MambaVLVideoProcessorKwargs

    def __init__(
        self,
        num_frames: int | None = 16,
        do_resize: bool = True,
        size: int | dict[str, int] | None = None,
        interpolation: str = "bilinear",
        do_center_crop: bool = True,
        crop_size: int | Sequence[int] | dict[str, int] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        train_crop_mode: str = "random_resized_crop",
        random_resized_crop_scale: Sequence[float] = (0.5, 1.0),
        random_resized_crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        do_random_flip: bool = False,
        flip_probability: float = 0.5,
        input_data_format: str = "channels_last",
        **kwargs: Any,
    ) -> None:
        # Keys written by transformers' to_dict / ProcessorMixin, not settings.
        for key in ("video_processor_type", "image_processor_type", "processor_class", "feature_extractor_type"):
            kwargs.pop(key, None)
        auto_map = kwargs.pop("auto_map", None)
        if kwargs:
            raise TypeError(
                f"MambaVLVideoProcessor got unexpected argument(s) {sorted(kwargs)}; valid settings are "
                f"{list(_CONFIG_KEYS)}"
            )
        super().__init__()
        config = _normalize_config(
            {
                "num_frames": num_frames,
                "do_resize": do_resize,
                "size": {"shortest_edge": 224} if size is None else size,
                "interpolation": interpolation,
                "do_center_crop": do_center_crop,
                "crop_size": 224 if crop_size is None else crop_size,
                "do_rescale": do_rescale,
                "rescale_factor": rescale_factor,
                "do_normalize": do_normalize,
                "image_mean": IMAGENET_MEAN if image_mean is None else image_mean,
                "image_std": IMAGENET_STD if image_std is None else image_std,
                "train_crop_mode": train_crop_mode,
                "random_resized_crop_scale": random_resized_crop_scale,
                "random_resized_crop_ratio": random_resized_crop_ratio,
                "do_random_flip": do_random_flip,
                "flip_probability": flip_probability,
                "input_data_format": input_data_format,
            }
        )
        for key, value in config.items():
            setattr(self, key, value)
        if auto_map is not None:
            self.auto_map = auto_map

    # ------------------------------------------------------------------------------------------
    # Public helpers
    # ------------------------------------------------------------------------------------------

    @staticmethod
    def sample_frame_indices(num_available: int, num_frames: int | None) -> list[int]:
        """Indices of the frames kept from a clip of ``num_available`` frames.

        Frame ``i`` (``0 <= i < num_frames``) is ``floor((2 i + 1) * num_available / (2 * num_frames))``:
        the centre of the ``i``-th of ``num_frames`` equal segments. The indices are non-decreasing;
        when ``num_available < num_frames`` some frames repeat (each is used about
        ``num_frames / num_available`` times, in temporal order). ``num_frames=None`` returns every index.

        >>> MambaVLVideoProcessor.sample_frame_indices(10, 4)
        [1, 3, 6, 8]
        >>> MambaVLVideoProcessor.sample_frame_indices(2, 4)
        [0, 0, 1, 1]
        """
        if isinstance(num_available, bool) or not isinstance(num_available, int | np.integer) or num_available < 1:
            raise ValueError(f"a clip must have at least one frame, got {num_available!r} frames")
        if num_frames is None:
            return list(range(num_available))
        num_frames = _positive_int(num_frames, "num_frames")
        return [((2 * i + 1) * num_available) // (2 * num_frames) for i in range(num_frames)]

    # ------------------------------------------------------------------------------------------
    # Call
    # ------------------------------------------------------------------------------------------

    def __call__(self, videos: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def preprocess(
        self,
        videos: Any,
        *,
        do_train_augmentation: bool = False,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        return_tensors: str | TensorType | None = "pt",
        device: str | torch.device | None = None,
        do_sample_frames: bool | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Process one clip or a batch of clips; see the class docstring.

        Returns:
            ``BatchFeature({"pixel_values": (B, T, 3, crop_h, crop_w) float32})``, a torch tensor
            (``return_tensors="pt"`` or ``None``) or a NumPy array (``"np"``). A single clip gets
            ``B = 1``.
        """
        cfg = self._resolve(kwargs)
        if do_sample_frames is False:
            cfg["num_frames"] = None
        if not isinstance(do_train_augmentation, bool):
            raise ValueError(f"`do_train_augmentation` must be a bool, got {do_train_augmentation!r}")
        if generator is not None and seed is not None:
            raise ValueError("pass either `generator` or `seed`, not both")
        clip_seeds = None
        if isinstance(seed, (list, tuple)):
            clip_seeds = [int(s) for s in seed]  # one generator per clip: a clip's crop ignores its batch mates
        elif seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"`generator` must be a CPU torch.Generator, got one on {generator.device}")
        rt = getattr(return_tensors, "value", return_tensors)
        if rt not in ("pt", "np", None):
            raise ValueError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}")

        clips = self._split_clips(videos)
        if clip_seeds is not None and len(clip_seeds) != len(clips):
            raise ValueError(f"`seed` has {len(clip_seeds)} per-clip seeds for {len(clips)} clips")
        outputs = []
        for ci, clip in enumerate(clips):
            frames = self._clip_to_tensor(clip, ci, cfg, len(clips) > 1)
            if device is not None:
                frames = frames.to(device)
            if clip_seeds is not None:
                generator = torch.Generator().manual_seed(clip_seeds[ci])
            outputs.append(self._transform_clip(frames, ci, cfg, do_train_augmentation, generator))

        shapes = {tuple(o.shape) for o in outputs}
        if len(shapes) > 1:
            raise ValueError(
                "the processed clips have different shapes "
                f"{[tuple(o.shape) for o in outputs]} (T, C, H, W) and cannot be batched; enable "
                "do_center_crop / set num_frames so that every clip has the same size"
            )
        pixel_values = torch.stack(outputs)
        if rt == "np":
            pixel_values = pixel_values.cpu().numpy()
        return BatchFeature(data={"pixel_values": pixel_values})

    # ------------------------------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------------------------------

    def _resolve(self, overrides: dict[str, Any]) -> dict[str, Any]:
        unknown = [k for k in overrides if k not in _CONFIG_KEYS and k not in _TOLERATED_KWARGS]
        if unknown:
            raise TypeError(
                f"MambaVLVideoProcessor got unexpected argument(s) {unknown}; per-call settings are "
                f"{list(_CONFIG_KEYS)} plus do_train_augmentation, generator, seed, return_tensors, device"
            )
        for key, allowed in _TOLERATED_KWARGS.items():
            if key in overrides and not any(overrides[key] is a or overrides[key] == a for a in allowed):
                raise ValueError(
                    f"MambaVLVideoProcessor does not support `{key}={overrides[key]!r}` (supported: {allowed})"
                )
        cfg = {key: getattr(self, key) for key in _CONFIG_KEYS}
        cfg.update(_normalize_config({k: v for k, v in overrides.items() if k in _CONFIG_KEYS}))
        return cfg

    @staticmethod
    def _split_clips(videos: Any) -> list[Any]:
        videos = _unwrap_decoded(videos)
        if isinstance(videos, np.ndarray | torch.Tensor):
            if videos.ndim == 5:
                if videos.shape[0] == 0:
                    raise ValueError(f"`videos` is an empty batch (shape {tuple(videos.shape)})")
                return list(videos)
            if videos.ndim == 4:
                return [videos]
            raise ValueError(
                f"`videos` must be one clip (T, H, W, C) or a batch (B, T, H, W, C), got shape {tuple(videos.shape)}"
                + ("; wrap a single frame in a list to make a one-frame clip" if videos.ndim == 3 else "")
            )
        if isinstance(videos, list | tuple):
            if len(videos) == 0:
                raise ValueError("`videos` is empty: a clip needs at least one frame")
            if _is_frame(videos[0]):
                return [videos]  # one clip given as a list of frames
            return [_unwrap_decoded(v) for v in videos]
        raise TypeError(
            "`videos` must be a list of frames, a (T, H, W, C) or (B, T, H, W, C) array/tensor, a list of clips, "
            f"or an object with a `frames` attribute; got {_describe(videos)}"
        )

    @staticmethod
    def _clip_to_tensor(clip: Any, ci: int, cfg: dict[str, Any], batched: bool) -> torch.Tensor:
        """Validate one clip, sample its frames, return ``(T, C, H, W)`` in the input dtype."""
        where = f"clip {ci}" if batched else "the clip"
        channels_last = cfg["input_data_format"] == "channels_last"
        layout = "(H, W, C)" if channels_last else "(C, H, W)"

        if isinstance(clip, np.ndarray | torch.Tensor):
            if clip.ndim != 4:
                raise ValueError(f"{where} must have 4 dimensions (T, {layout[1:-1]}), got shape {tuple(clip.shape)}")
            if clip.shape[0] == 0:
                raise ValueError(f"{where} has zero frames (shape {tuple(clip.shape)})")
            frame_shape, dtype = tuple(clip.shape[1:]), clip.dtype
            indices = MambaVLVideoProcessor.sample_frame_indices(int(clip.shape[0]), cfg["num_frames"])
            if isinstance(clip, np.ndarray):
                selected = torch.from_numpy(np.ascontiguousarray(clip[indices]))
            else:
                selected = clip.detach()[torch.tensor(indices, device=clip.device)]
        elif isinstance(clip, list | tuple):
            if len(clip) == 0:
                raise ValueError(f"{where} has zero frames")
            frames = []
            for fi, frame in enumerate(clip):
                if _is_pil_image(frame):
                    frame = np.asarray(frame)
                    if frame.ndim == 3 and not channels_last:
                        frame = frame.transpose(2, 0, 1)
                if not isinstance(frame, np.ndarray | torch.Tensor):
                    raise TypeError(
                        f"frame {fi} of {where} must be a NumPy array, torch tensor or PIL image, "
                        f"got {_describe(frame)}"
                    )
                if frame.ndim != 3:
                    raise ValueError(f"frame {fi} of {where} must have shape {layout}, got shape {tuple(frame.shape)}")
                frames.append(frame)
            frame_shape, dtype = tuple(frames[0].shape), frames[0].dtype
            for fi, frame in enumerate(frames):
                if tuple(frame.shape) != frame_shape:
                    hw0 = frame_shape[:2] if channels_last else frame_shape[1:]
                    hwi = tuple(frame.shape[:2] if channels_last else frame.shape[1:])
                    raise ValueError(
                        f"frames of {where} have mixed sizes: frame {fi} has shape {tuple(frame.shape)} "
                        f"(H x W = {hwi[0]} x {hwi[1]}) but frame 0 has shape {frame_shape} "
                        f"(H x W = {hw0[0]} x {hw0[1]}); frames are not resized to match, fix the input"
                    )
                if frame.dtype != dtype or type(frame) is not type(frames[0]):
                    raise TypeError(
                        f"frames of {where} have mixed types: frame {fi} is {_describe(frame)} "
                        f"but frame 0 is {_describe(frames[0])}"
                    )
            indices = MambaVLVideoProcessor.sample_frame_indices(len(frames), cfg["num_frames"])
            if isinstance(frames[0], np.ndarray):
                selected = torch.from_numpy(np.stack([frames[i] for i in indices]))
            else:
                selected = torch.stack([frames[i].detach() for i in indices])
        else:
            raise TypeError(
                f"{where} must be a list of frames, a 4-D array/tensor, or an object with a `frames` attribute; "
                f"got {_describe(clip)}"
            )

        if channels_last and frame_shape[-1] != 3 and frame_shape[0] == 3:
            channels_last, layout = False, "(C, H, W)"  # channels-first frames, detected
        elif not channels_last and frame_shape[0] != 3 and frame_shape[-1] == 3:
            channels_last, layout = True, "(H, W, C)"  # channels-last frames, detected
        num_channels = frame_shape[-1] if channels_last else frame_shape[0]
        if num_channels != 3:
            raise ValueError(
                f"{where} must have 3 (RGB) channels in layout {layout} ({cfg['input_data_format']}), got frame "
                f"shape {frame_shape}; convert grayscale/RGBA frames to RGB, or set input_data_format"
            )
        if selected.dtype == torch.uint8:
            pass
        elif selected.dtype in _FLOAT_DTYPES:
            if cfg["do_rescale"]:
                raise TypeError(
                    f"{where} has {selected.dtype} frames, but do_rescale=True expects uint8 frames in [0, 255]; "
                    "pass uint8 frames, or do_rescale=False for float frames already in [0, 1]"
                )
        else:
            raise TypeError(f"{where} must be uint8 (or float with do_rescale=False), got dtype {dtype}")
        if channels_last:
            selected = selected.permute(0, 3, 1, 2)
        return selected

    def _transform_clip(
        self,
        frames: torch.Tensor,
        ci: int,
        cfg: dict[str, Any],
        train: bool,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """``(T, C, H, W)`` -> cropped, rescaled, normalized ``(T, C, h, w)`` float32."""
        x = frames.float() if frames.dtype != torch.float64 else frames
        crop_h, crop_w = cfg["crop_size"]["height"], cfg["crop_size"]["width"]
        if train and cfg["train_crop_mode"] == "random_resized_crop":
            top, left, h, w = self._random_resized_crop_box(
                x.shape[-2], x.shape[-1], cfg["random_resized_crop_scale"], cfg["random_resized_crop_ratio"], generator
            )
            x = self._resize(x[..., top : top + h, left : left + w], (crop_h, crop_w), cfg["interpolation"])
        else:
            if cfg["do_resize"]:
                x = self._resize(x, self._resized_hw(x.shape[-2], x.shape[-1], cfg["size"]), cfg["interpolation"])
            if train or cfg["do_center_crop"]:
                H, W = x.shape[-2], x.shape[-1]
                if crop_h > H or crop_w > W:
                    raise ValueError(
                        f"crop_size {crop_h} x {crop_w} is larger than the (resized) frames of clip {ci}, "
                        f"{H} x {W}; increase `size` or decrease `crop_size`"
                    )
                if train:
                    top = int(torch.randint(0, H - crop_h + 1, (1,), generator=generator))
                    left = int(torch.randint(0, W - crop_w + 1, (1,), generator=generator))
                else:
                    top, left = (H - crop_h) // 2, (W - crop_w) // 2
                x = x[..., top : top + crop_h, left : left + crop_w]
        if train and cfg["do_random_flip"] and float(torch.rand((), generator=generator)) < cfg["flip_probability"]:
            x = x.flip(-1)

        mean = torch.tensor(cfg["image_mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg["image_std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        if cfg["do_rescale"]:
            x = x * cfg["rescale_factor"]
        if cfg["do_normalize"]:
            x = (x - mean) / std
        return x.float().contiguous()

    @staticmethod
    def _resized_hw(H: int, W: int, size: dict[str, int]) -> tuple[int, int]:
        if "shortest_edge" in size:
            s = size["shortest_edge"]
            if H <= W:
                return s, int(s * W / H)
            return int(s * H / W), s
        return size["height"], size["width"]

    @staticmethod
    def _resize(x: torch.Tensor, hw: tuple[int, int], interpolation: str) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(hw):
            return x
        y = F.interpolate(x, size=hw, mode=interpolation, align_corners=False, antialias=True)
        if interpolation == "bicubic":  # bicubic can overshoot the input range
            y = y.clamp(x.amin(), x.amax())
        return y

    @staticmethod
    def _random_resized_crop_box(
        H: int, W: int, scale: Sequence[float], ratio: Sequence[float], generator: torch.Generator | None
    ) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of a random box with area in ``scale`` x H W and aspect in ``ratio``.

        Ten tries of (area, log-uniform aspect ratio); if none fits, the largest centred box with the
        aspect ratio clamped to ``ratio`` (the algorithm of torchvision's ``RandomResizedCrop``).
        """
        area = H * W
        log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
        for _ in range(10):
            target_area = area * float(torch.empty(()).uniform_(scale[0], scale[1], generator=generator))
            aspect = math.exp(float(torch.empty(()).uniform_(log_lo, log_hi, generator=generator)))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= W and 0 < h <= H:
                top = int(torch.randint(0, H - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, W - w + 1, (1,), generator=generator))
                return top, left, h, w
        in_ratio = W / H
        if in_ratio < ratio[0]:
            w, h = W, round(W / ratio[0])
        elif in_ratio > ratio[1]:
            h, w = H, round(H * ratio[1])
        else:
            h, w = H, W
        h, w = max(1, min(h, H)), max(1, min(w, W))
        return (H - h) // 2, (W - w) // 2, h, w
