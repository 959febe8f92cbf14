"""Files that open but fail mid-decode (a truncated MP4 whose header is intact): skipped with a log line naming file
and segment under ``on_error="skip"`` (``--skip-unreadable``), in training and in evaluation; an error naming both
otherwise."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertTokenizer

pytest.importorskip("av")

from mambavl import (
    Conv3dVideoConfig,
    MambaVLConfig,
    MambaVLForActionRecognition,
    MambaVLProcessor,
    MambaVLVideoProcessor,
)
from mambavl.data import (
    EK100SegmentDataset,
    MambaVLCollator,
    VideoDecodingError,
    VideoFileSource,
    decode_frames,
    drop_skipped,
    generate_synthetic_dataset,
    read_video_info,
    write_video,
)
from mambavl.training import TrainingConfig, evaluate, train
from tiny import tiny_text_config

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "person", "doing", "to", "?", "object"]


def truncate_keeping_header(path: Path) -> None:
    """Rewrite the MP4 at ``path`` with its index first (faststart), then cut off the second half of its frames: the
    file still opens and reports every frame, but the later ones fail to decode."""
    info = read_video_info(path)
    frames = decode_frames(path, range(info.num_frames))
    write_video(path, frames, info.fps, gop_size=max(1, round(info.fps)), faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The synthetic dataset with one training video truncated; returns ``(info, bad_video_id)``."""
    root = tmp_path_factory.mktemp("unreadable")
    info = generate_synthetic_dataset(root / "data", num_videos=4, segments_per_video=4, size=32)
    bad = info.load_annotations("train")[0]["video_id"]
    truncate_keeping_header(Path(info.videos_dir) / f"{bad}.mp4")
    return info, bad


def late_segments(info, split: str, video_id: str) -> list[str]:
    """narration_ids of the segments of ``video_id`` that fail to decode (read one by one, strictly)."""
    source = VideoFileSource(info.videos_dir, layout="flat")
    strict = EK100SegmentDataset(info.load_annotations(split), source, num_frames=4, sampling="center")
    failing = []
    for index, position in enumerate(strict.positions):
        row = strict.annotations[position]
        if row["video_id"] == video_id:
            try:
                strict[index]
            except VideoDecodingError:
                failing.append(row["narration_id"])
    first = next(r["narration_id"] for r in strict.annotations if r["video_id"] == video_id)
    assert failing and first not in failing, "the truncated file must fail in some segments, not in its first"
    return failing


def test_a_truncated_mp4_with_intact_header_opens_but_fails_mid_decode(tmp_path):
    path = tmp_path / "cut.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (48, 32, 32, 3), dtype=np.uint8)
    write_video(path, frames, 10, gop_size=8, faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert read_video_info(path).num_frames == 48  # the header is intact
    assert decode_frames(path, [0, 1]).shape == (2, 32, 32, 3)  # and the first frames decode
    with pytest.raises(VideoDecodingError, match=r"cut\.mp4") as error:
        decode_frames(path, [47])
    assert error.value.path == str(path)


def test_a_file_without_decodable_frame_says_so(tmp_path):
    path = tmp_path / "empty.mp4"
    write_video(path, np.zeros((8, 32, 32, 3), np.uint8), 10, faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"mdat") + 4])  # the header, no frame data
    with pytest.raises(VideoDecodingError, match=r"No frame of .*empty\.mp4.* could be decoded"):
        decode_frames(path, [0])


def test_the_dataset_raises_naming_file_and_segment_or_skips_with_a_log_line(synthetic, caplog):
    info, bad = synthetic
    late = late_segments(info, "train", bad)
    source = VideoFileSource(info.videos_dir, layout="flat")
    strict = EK100SegmentDataset(info.load_annotations("train"), source, num_frames=4, sampling="center")
    index = [strict.annotations[p]["narration_id"] for p in strict.positions].index(late[0])
    with pytest.raises(VideoDecodingError) as error:
        strict[index]
    assert late[0] in str(error.value) and bad in str(error.value) and error.value.narration_id == late[0]

    lenient = EK100SegmentDataset(
        info.load_annotations("train"), source, num_frames=4, sampling="center", on_error="skip"
    )
    assert len(lenient) == len(strict)  # the file opens: the up-front check passes it
    with caplog.at_level(logging.WARNING, logger="mambavl"):
        assert lenient[index] is None
    assert f"narration_id={late[0]!r}" in caplog.text and f"{bad}.mp4" in caplog.text
    assert lenient.num_skipped == 1
    good = [lenient[i] for i in range(len(lenient)) if lenient.annotations[lenient.positions[i]]["video_id"] != bad]
    batch = drop_skipped(lambda items: [item["narration_id"] for item in items])([good[0], None, good[1]])
    assert batch == [good[0]["narration_id"], good[1]["narration_id"]]
    assert drop_skipped(list)([None, None]) is None


def make_run(info):
    processor = MambaVLProcessor(
        MambaVLVideoProcessor(num_frames=4, size=18, crop_size=16),
        BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}),
        verb_classes=info.verb_names,
        noun_classes=info.noun_names,
    )
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(
        MambaVLConfig(
            video_config=Conv3dVideoConfig(channels=[4, 8], hidden_size=16), hidden_size=16, state_size=4,
            text_config=tiny_text_config(), num_verb_classes=info.num_verbs, num_noun_classes=info.num_nouns,
        )
    )  # fmt: skip
    return model, processor


def test_training_and_evaluation_skip_segments_that_fail_mid_decode(synthetic, tmp_path, caplog):
    info, bad = synthetic
    late = late_segments(info, "train", bad)
    model, processor = make_run(info)
    source = VideoFileSource(info.videos_dir, layout="flat")  # decodes each segment: no whole-video cache
    train_set = EK100SegmentDataset(info.load_annotations("train"), source, num_frames=4, on_error="skip")
    config = TrainingConfig(output_dir=tmp_path / "run", num_epochs=2, batch_size=4, progress_bar=False)
    with caplog.at_level(logging.WARNING, logger="mambavl"):
        result = train(model, train_set, MambaVLCollator(processor, training=True), config, processor=processor)
    assert result.global_step == 2 * (len(train_set) // 4)
    assert caplog.text.count("Skipping unreadable segment") == len(late)  # once each, not again every epoch
    assert f"{len(late)} segments of the train set were skipped as unreadable" in caplog.text

    strict = EK100SegmentDataset(info.load_annotations("train"), source, num_frames=4, sampling="center")
    with pytest.raises(VideoDecodingError, match=late[0]):
        evaluate(model, strict, MambaVLCollator(processor), batch_size=4, progress_bar=False)
    lenient = EK100SegmentDataset(
        info.load_annotations("train"), source, num_frames=4, sampling="center", on_error="skip"
    )
    metrics = evaluate(model, lenient, MambaVLCollator(processor), batch_size=4, progress_bar=False)
    assert metrics["num_samples"] == len(lenient) - len(late) and lenient.num_skipped == len(late)


def test_a_batch_of_only_unreadable_segments_is_passed_over(synthetic, tmp_path):
    info, bad = synthetic
    late = set(late_segments(info, "train", bad))
    model, processor = make_run(info)
    rows = info.load_annotations("train").filter(lambda row: row["narration_id"] in late)
    dataset = EK100SegmentDataset(rows, VideoFileSource(info.videos_dir, layout="flat"), num_frames=4, on_error="skip")
    config = TrainingConfig(output_dir=tmp_path / "run", num_epochs=2, batch_size=len(rows), progress_bar=False)
    result = train(model, dataset, MambaVLCollator(processor, training=True), config, processor=processor)
    assert result.global_step == 0 and result.epochs_completed == 2 and dataset.num_skipped == len(rows)


def test_transformers_trainer_passes_over_segments_that_fail_mid_decode(synthetic, tmp_path, caplog):
    from transformers import Trainer, TrainingArguments

    info, bad = synthetic
    late = late_segments(info, "train", bad)
    model, processor = make_run(info)
    source = VideoFileSource(info.videos_dir, layout="flat")
    dataset = EK100SegmentDataset(info.load_annotations("train"), source, num_frames=4, on_error="skip")
    args = TrainingArguments(tmp_path / "trainer", per_device_train_batch_size=4, max_steps=3, report_to=[])
    collator = MambaVLCollator(processor)
    trainer = Trainer(model, args, train_dataset=dataset, eval_dataset=dataset, data_collator=collator)
    with caplog.at_level(logging.WARNING, logger="mambavl"):
        assert trainer.train().global_step == 3  # the skipped segments' None items are left out of their batch
        assert np.isfinite(trainer.evaluate()["eval_loss"])
    assert f"narration_id={late[0]!r}" in caplog.text
    good = next(item for item in (dataset[i] for i in range(len(dataset))) if item is not None)
    batch = collator([None, good, None])
    assert batch["pixel_values"].shape[0] == 1 and batch["verb_labels"].tolist() == [good["verb_class"]]
    with pytest.raises(ValueError, match=r"Every item of this batch of 2 is None.*check_videos=\"decode\""):
        collator([None, None])


class UnreadableSecondBatch(torch.utils.data.Dataset):
    """The items of ``dataset``, except that the second batch drawn in each epoch is all unreadable (``None``)."""

    def __init__(self, dataset, batch_size: int):
        self.dataset, self.batch_size, self.calls = dataset, batch_size, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        call, self.calls = self.calls % len(self), self.calls + 1
        return None if self.batch_size <= call < 2 * self.batch_size else self.dataset[index]


def test_an_unreadable_batch_mid_epoch_is_passed_over_without_repeating_or_looping(synthetic, tmp_path):
    info, bad = synthetic
    model, processor = make_run(info)
    rows = info.load_annotations("train").filter(lambda row: row["video_id"] != bad)
    dataset = EK100SegmentDataset(rows, VideoFileSource(info.videos_dir, layout="flat"), num_frames=4)
    batches = len(dataset) // 2
    assert batches >= 3
    trained = []
    model.register_forward_pre_hook(lambda module, args: trained.append(module.training) if module.training else None)
    data = UnreadableSecondBatch(dataset, batch_size=2)
    config = TrainingConfig(output_dir=tmp_path / "run", num_epochs=2, batch_size=2, progress_bar=False)
    result = train(model, data, MambaVLCollator(processor, training=True), config, processor=processor)
    # each epoch: every batch drawn once, the unreadable one giving no step (the epoch was complete when its
    # batches were, not when its step count was: that looped forever, or trained batches twice)
    assert result.epochs_completed == 2 and result.global_step == 2 * (batches - 1) == len(trained)
    assert data.calls == 2 * len(dataset)

    everything_skipped = [None] * len(dataset)  # with max_steps, epochs without a step would go on forever
    config = TrainingConfig(output_dir=tmp_path / "run2", max_steps=3, batch_size=2, progress_bar=False)
    with pytest.raises(ValueError, match="Epoch 0 gave no training step: every segment of every batch was skipped"):
        train(model, everything_skipped, MambaVLCollator(processor, training=True), config, processor=processor)
