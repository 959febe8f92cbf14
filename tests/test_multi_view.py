"""Several temporal views per clip through the model's forward (`num_views`): the view-averaged logits and their loss,
`transformers.Trainer.evaluate`/`predict` on multi-view batches, and the errors of a wrong `num_views`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from mambavl import MambaVLForActionAnticipation, MambaVLForActionRecognition
from mambavl.data import EK100SegmentDataset, MambaVLCollator
from mambavl.metrics import rank_actions, recognition_metrics
from mambavl.training import evaluate
from test_training import make_model, make_processor, synthetic  # noqa: F401 (synthetic: a fixture)
from tiny import tiny_config, tiny_inputs

CLIPS, VIEWS = 2, 3


@pytest.fixture(scope="module")
def tiny_model() -> MambaVLForActionRecognition:
    torch.manual_seed(0)
    return MambaVLForActionRecognition(tiny_config()).eval()


@pytest.mark.parametrize("model_class", [MambaVLForActionRecognition, MambaVLForActionAnticipation])
def test_forward_averages_each_clips_views_and_takes_the_loss_on_the_average(model_class):
    torch.manual_seed(0)
    model = model_class(tiny_config()).eval()
    inputs = tiny_inputs(batch=CLIPS * VIEWS)  # views of a clip adjacent: rows 0-2 are clip 0, rows 3-5 clip 1
    verb_labels, noun_labels = torch.tensor([1, 4]), torch.tensor([6, -100])
    per_view = model(**inputs)
    verb_mean = per_view.verb_logits.view(CLIPS, VIEWS, -1).mean(1)
    noun_mean = per_view.noun_logits.view(CLIPS, VIEWS, -1).mean(1)

    out = model(**inputs, num_views=VIEWS, verb_labels=verb_labels, noun_labels=noun_labels)
    torch.testing.assert_close(out.verb_logits, verb_mean)
    torch.testing.assert_close(out.noun_logits, noun_mean)
    torch.testing.assert_close(out.verb_loss, F.cross_entropy(verb_mean, verb_labels))
    torch.testing.assert_close(out.noun_loss, F.cross_entropy(noun_mean, noun_labels, ignore_index=-100))
    torch.testing.assert_close(out.loss, out.verb_loss + out.noun_loss)
    # the features stay per view: what the heads saw
    assert out.verb_features.shape == out.noun_features.shape == (CLIPS * VIEWS, model.config.hidden_size)
    torch.testing.assert_close(out.verb_features, per_view.verb_features)

    # the conventional `labels (B, 2)`, a tuple output, and the 0-d tensor an accelerator may make of the int
    labels = torch.stack([verb_labels, noun_labels], dim=1)
    torch.testing.assert_close(model(**inputs, num_views=torch.tensor(VIEWS), labels=labels).loss, out.loss)
    loss, *_ = model(**inputs, num_views=VIEWS, labels=labels, return_dict=False)
    torch.testing.assert_close(loss, out.loss)
    # one view (or None) is the plain forward
    for one in (1, None, torch.tensor(1)):
        torch.testing.assert_close(model(**inputs, num_views=one).verb_logits, per_view.verb_logits)


@pytest.mark.parametrize(
    ("num_views", "match"),
    [
        (4, r"6 rows, not a multiple of `num_views` = 4"),
        (0, r"`num_views` must be a positive int.*, got 0"),
        (-2, r"`num_views` must be a positive int.*, got -2"),
        (True, r"`num_views` must be a positive int.*, got True"),
        (3.0, r"`num_views` must be a positive int.*, got 3.0"),
        ("3", r"`num_views` must be a positive int.*, got '3'"),
        (torch.tensor(3.0), r"`num_views` must be a positive int.*, got tensor\(3\.\)"),
        (torch.tensor([3, 3]), r"`num_views` must be a positive int.*, got tensor\(\[3, 3\]\)"),
    ],
)
def test_a_wrong_num_views_is_a_clear_error(tiny_model, num_views, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(**tiny_inputs(batch=6), num_views=num_views)


def test_views_cannot_be_streamed(tiny_model):
    with pytest.raises(ValueError, match=r"`num_views` = 3 .* stream"):
        tiny_model(**tiny_inputs(batch=6), num_views=3, use_cache=True)
    cache = tiny_model(**tiny_inputs(batch=6), use_cache=True).cache
    with pytest.raises(ValueError, match=r"`num_views` = 3 .* stream"):
        tiny_model(**tiny_inputs(batch=6), num_views=3, cache_params=cache)
    tiny_model(**tiny_inputs(batch=6), num_views=1, use_cache=True)  # one view streams as before


def _multi_view_set(info) -> EK100SegmentDataset:
    annotations = info.load_annotations("validation")
    return EK100SegmentDataset(annotations, info.video_source(), num_frames=4, sampling="center", num_views=VIEWS)


def test_trainer_evaluates_and_predicts_multi_view_batches_as_training_evaluate(synthetic, tmp_path):  # noqa: F811
    processor, model = make_processor(synthetic), make_model(synthetic).eval()
    views = _multi_view_set(synthetic)
    expected = evaluate(
        model, views, MambaVLCollator(processor), batch_size=4, progress_bar=False, return_predictions=True
    )

    def compute_metrics(eval_prediction):
        return recognition_metrics(*eval_prediction.predictions, *eval_prediction.label_ids)

    # 3 clips a batch: 4 clips end in a partial batch, whose padding Trainer drops by clips, not views
    args = TrainingArguments(str(tmp_path), per_device_eval_batch_size=3, report_to=[], use_cpu=True)
    trainer = Trainer(
        model, args, eval_dataset=views, data_collator=MambaVLCollator(processor), compute_metrics=compute_metrics
    )
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics
    for name in ("verb_top1", "noun_top1", "action_top1", "verb_top5"):
        assert metrics[f"eval_{name}"] == pytest.approx(expected[name]), name

    prediction = trainer.predict(views)
    verb_logits, noun_logits = prediction.predictions
    assert verb_logits.shape == (len(views), synthetic.num_verbs)  # one row per clip, not per view
    np.testing.assert_allclose(verb_logits, expected["predictions"]["verb_scores"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(noun_logits, expected["predictions"]["noun_scores"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(prediction.label_ids[0], expected["predictions"]["verb_labels"].numpy())


def test_predict_actions_ranks_each_clip_of_a_multi_view_batch(synthetic):  # noqa: F811
    processor, model = make_processor(synthetic), make_model(synthetic).eval()
    views = _multi_view_set(synthetic)
    batch = MambaVLCollator(processor)([views[0], views[1]])
    assert batch["num_views"] == VIEWS and batch["pixel_values"].shape[0] == 2 * VIEWS
    ranked = model.predict_actions(k=3, **batch)
    assert len(ranked) == 2 and all(len(clip) == 3 for clip in ranked)
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if not k.endswith("_labels")})
    verb_ids, noun_ids, scores = rank_actions(out.verb_logits, out.noun_logits, k=3)
    assert out.verb_logits.shape == (2, synthetic.num_verbs)
    assert [[(a["verb_id"], a["noun_id"]) for a in clip] for clip in ranked] == [
        list(zip(v, n, strict=True)) for v, n in zip(verb_ids.tolist(), noun_ids.tolist(), strict=True)
    ]
    np.testing.assert_allclose([[a["score"] for a in clip] for clip in ranked], scores.numpy(), rtol=1e-6)


def test_views_are_averaged_in_float32_whatever_the_model_dtype():
    torch.manual_seed(0)
    model = MambaVLForActionRecognition(tiny_config()).eval().to(torch.bfloat16)
    inputs = tiny_inputs(batch=CLIPS * VIEWS)
    inputs["video_features"] = inputs["video_features"].to(torch.bfloat16)
    per_view = model(**inputs).verb_logits
    averaged = model(**inputs, num_views=VIEWS).verb_logits
    assert per_view.dtype == torch.bfloat16 and averaged.dtype == torch.float32  # as training.evaluate averaged them
    torch.testing.assert_close(averaged, per_view.float().view(CLIPS, VIEWS, -1).mean(1))
