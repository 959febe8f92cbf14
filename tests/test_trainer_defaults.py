"""`transformers.Trainer` with its default arguments: no `remove_unused_columns=False`, `label_names` or
`ignore_keys`; the model declares its labels and the outputs to leave out of the predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Trainer, TrainingArguments

from mambavl.data import MambaVLCollator, SegmentItem
from mambavl.metrics import recognition_metrics
from test_training import datasets, make_model, make_processor, synthetic  # noqa: F401 (synthetic: a fixture)


def test_trainer_with_default_arguments_trains_evaluates_and_predicts(synthetic, tmp_path):  # noqa: F811
    processor, model = make_processor(synthetic), make_model(synthetic)
    train_set, val_set = datasets(synthetic)
    received = []

    def compute_metrics(eval_prediction):
        received.append(eval_prediction)
        verb_logits, noun_logits = eval_prediction.predictions
        verb_labels, noun_labels = eval_prediction.label_ids
        return recognition_metrics(verb_logits, noun_logits, verb_labels, noun_labels)

    args = TrainingArguments(
        str(tmp_path), max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-2
    )
    assert args.remove_unused_columns and args.label_names is None  # the defaults
    trainer = Trainer(
        model, args, train_dataset=train_set, eval_dataset=val_set, data_collator=MambaVLCollator(processor),
        compute_metrics=compute_metrics,
    )  # fmt: skip
    assert trainer.label_names == ["verb_labels", "noun_labels"]  # found in the forward's signature
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    output = trainer.train()
    assert output.global_step == 2 and np.isfinite(output.training_loss)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)

    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_verb_top1", "eval_noun_top1", "eval_action_top1"} <= set(metrics)
    verb_logits, noun_logits = received[-1].predictions  # the logits only: the other outputs are ignored
    assert verb_logits.shape == (len(val_set), synthetic.num_verbs)
    assert noun_logits.shape == (len(val_set), synthetic.num_nouns)
    verb_labels, noun_labels = received[-1].label_ids
    expected = [(val_set[i]["verb_class"], val_set[i]["noun_class"]) for i in range(len(val_set))]
    assert list(zip(verb_labels.tolist(), noun_labels.tolist(), strict=True)) == expected

    prediction = trainer.predict(val_set)
    assert len(prediction.predictions) == 2 and prediction.predictions[0].shape == verb_logits.shape
    model.eval()
    with torch.no_grad():
        batch = MambaVLCollator(processor)([val_set[i] for i in range(4)])
        direct = model(**{k: v for k, v in batch.items() if not k.endswith("_labels")}).verb_logits
    np.testing.assert_allclose(prediction.predictions[0][:4], direct.numpy(), atol=1e-5, rtol=1e-4)


def test_dataset_items_keep_their_fields_through_the_trainer_column_filter(synthetic):  # noqa: F811
    from transformers.trainer_utils import RemoveColumnsCollator

    train_set, _ = datasets(synthetic)
    item = train_set[0]
    assert isinstance(item, SegmentItem) and not isinstance(item, dict)
    assert item["verb_class"] == dict(item)["verb_class"]
    seen = []
    RemoveColumnsCollator(seen.extend, signature_columns=["pixel_values", "verb_labels"])([item])
    assert set(seen[0]) == set(item) and "frames" in seen[0]


def test_plain_dict_items_stripped_by_the_trainer_name_the_setting(synthetic):  # noqa: F811
    collate = MambaVLCollator(make_processor(synthetic))
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        collate([{"verb_labels": 1}])  # what a stripped plain-dict item looks like
