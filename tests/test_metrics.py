"""Tests of mambavl.metrics. Expected numbers are worked out by hand in the comments."""

import numpy as np
import pytest
import torch

from mambavl.metrics import (
    IGNORE_INDEX,
    MetricAccumulator,
    action_accuracy,
    action_class_mean_recall_at_k,
    anticipation_metrics,
    class_mean_recall_at_k,
    format_table,
    per_class_table,
    rank_actions,
    recognition_metrics,
    topk_accuracy,
)

# Shared example: p(verb) = [0.5, 0.3, 0.2], p(noun) = [0.1, 0.6, 0.3]. Products p(v) * p(n):
#            n0    n1    n2
#     v0   0.05  0.30  0.15
#     v1   0.03  0.18  0.09
#     v2   0.02  0.12  0.06
# Ranked: (0,1) .30, (1,1) .18, (0,2) .15, (2,1) .12, (1,2) .09, (2,2) .06, (0,0) .05, (1,0) .03, (2,0) .02
PV = [0.5, 0.3, 0.2]
PN = [0.1, 0.6, 0.3]


def _probs(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# topk_accuracy
# ------------------------------------------------------------------------------------------------


def test_topk_accuracy_hand_example_with_ties_and_ignore_index():
    scores = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.2],  # ranking 1, 2, 3, 0 (2 and 3 tie: lower id first)
            [0.9, 0.0, 0.05, 0.05],  # ranking 0, 2, 3, 1
            [0.3, 0.3, 0.3, 0.1],  # ranking 0, 1, 2, 3 (three-way tie)
            [0.0, 0.0, 0.0, 1.0],  # ignored
        ]
    )
    labels = torch.tensor([2, 1, 0, IGNORE_INDEX])
    # label 2 at position 2 -> top2 hit; label 1 last -> only top4; label 0 first (tie) -> top1 hit
    acc = topk_accuracy(scores, labels, ks=(1, 2, 4))
    assert acc[1] == pytest.approx(1 / 3)
    assert acc[2] == pytest.approx(2 / 3)
    assert acc[4] == pytest.approx(1.0)


def test_topk_accuracy_all_equal_scores_ranks_by_class_id():
    scores = torch.ones(2, 3)
    assert topk_accuracy(scores, torch.tensor([0, 0]), ks=(1,)) == {1: 1.0}
    acc = topk_accuracy(scores, torch.tensor([2, 2]), ks=(1, 2, 3))
    assert acc == {1: 0.0, 2: 0.0, 3: 1.0}


def test_topk_accuracy_k_larger_than_classes_and_numpy_input():
    acc = topk_accuracy(np.array([[0.2, 0.8]]), np.array([0]), ks=(1, 5))
    assert acc == {1: 0.0, 5: 1.0}


def test_topk_accuracy_errors():
    with pytest.raises(ValueError, match="shape"):
        topk_accuracy(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        topk_accuracy(torch.zeros(2, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 4\).*found 4 at position 1"):
        topk_accuracy(torch.zeros(2, 4), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="found -1"):
        topk_accuracy(torch.zeros(2, 4), torch.tensor([0, -1]))
    with pytest.raises(TypeError, match="integer"):
        topk_accuracy(torch.zeros(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="no labelled samples"):
        topk_accuracy(torch.zeros(2, 4), torch.tensor([IGNORE_INDEX, IGNORE_INDEX]))
    with pytest.raises(ValueError, match="NaN"):
        topk_accuracy(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="positive integers"):
        topk_accuracy(torch.zeros(1, 2), torch.tensor([0]), ks=(0,))


# ------------------------------------------------------------------------------------------------
# rank_actions
# ------------------------------------------------------------------------------------------------


def test_rank_actions_hand_example_probs_and_logits():
    pv, pn = _probs([PV]), _probs([PN])
    verbs, nouns, scores = rank_actions(pv, pn, k=5, scores_are="probs")
    assert verbs.dtype == torch.long and nouns.dtype == torch.long
    assert verbs.tolist() == [[0, 1, 0, 2, 1]]
    assert nouns.tolist() == [[1, 1, 2, 1, 2]]
    assert scores[0].tolist() == pytest.approx([0.30, 0.18, 0.15, 0.12, 0.09])

    # The same probabilities given as logits (softmax(log p) = p).
    verbs2, nouns2, scores2 = rank_actions(pv.log(), pn.log(), k=5)
    assert verbs2.tolist() == verbs.tolist() and nouns2.tolist() == nouns.tolist()
    assert scores2[0].tolist() == pytest.approx([0.30, 0.18, 0.15, 0.12, 0.09])


def test_rank_actions_k_larger_than_one_side():
    # V = 2, N = 3, k = 6 = V * N: every pair. p(v) = [0.4, 0.6], p(n) = [0.2, 0.3, 0.5]
    # products: v0: .08 .12 .20 ; v1: .12 .18 .30
    # order: (1,2) .30, (0,2) .20, (1,1) .18, then .12 tie between (0,1) and (1,0):
    # verb ranks are v1=0, v0=1 -> (1,0) first; then (0,1) .12, (0,0) .08
    verbs, nouns, scores = rank_actions(_probs([[0.4, 0.6]]), _probs([[0.2, 0.3, 0.5]]), k=6, scores_are="probs")
    assert verbs.tolist() == [[1, 0, 1, 1, 0, 0]]
    assert nouns.tolist() == [[2, 2, 1, 0, 1, 0]]
    assert scores[0].tolist() == pytest.approx([0.30, 0.20, 0.18, 0.12, 0.12, 0.08])
    with pytest.raises(ValueError, match="exceeds"):
        rank_actions(_probs([[0.4, 0.6]]), _probs([[0.2, 0.3, 0.5]]), k=7, scores_are="probs")


def test_rank_actions_ties_are_deterministic():
    # All products equal: ordered by (verb rank, noun rank) = ids here.
    verbs, nouns, _ = rank_actions(_probs([[0.5, 0.5]]), _probs([[0.5, 0.5]]), k=4, scores_are="probs")
    assert verbs.tolist() == [[0, 0, 1, 1]]
    assert nouns.tolist() == [[0, 1, 0, 1]]
    # Zero probabilities: p(v) = [0.2, 0.8], p(n) = [0, 0, 1]. Verb ranks: v1, v0; noun ranks: n2, n0, n1.
    # (1,2) .8, (0,2) .2, then the zero products by (verb rank, noun rank): (1,0) (1,1) (0,0) (0,1).
    verbs, nouns, _ = rank_actions(_probs([[0.2, 0.8]]), _probs([[0.0, 0.0, 1.0]]), k=6, scores_are="probs")
    assert verbs.tolist() == [[1, 0, 1, 1, 0, 0]]
    assert nouns.tolist() == [[2, 2, 0, 1, 0, 1]]


def _brute_force(pv, pn, k):
    """All V*N pairs sorted by (-p(v)*p(n), verb rank, noun rank), in plain Python."""
    V, N = len(pv), len(pn)
    rank_v = {v: r for r, v in enumerate(sorted(range(V), key=lambda i: (-pv[i], i)))}
    rank_n = {n: r for r, n in enumerate(sorted(range(N), key=lambda i: (-pn[i], i)))}
    prods = {(v, n): pv[v] * pn[n] for v in range(V) for n in range(N)}  # Python floats are IEEE doubles
    pairs = sorted(prods, key=lambda p: (-prods[p], rank_v[p[0]], rank_n[p[1]]))[:k]
    return [p[0] for p in pairs], [p[1] for p in pairs], [prods[p] for p in pairs]


@pytest.mark.parametrize("seed", range(5))
def test_rank_actions_matches_brute_force_with_many_ties(seed):
    g = torch.Generator().manual_seed(seed)
    V, N = 4, 6
    # Small integer weights produce many equal probabilities and equal products (and zeros).
    pv = torch.randint(0, 3, (3, V), generator=g).double()
    pn = torch.randint(0, 3, (3, N), generator=g).double()
    pv[:, 0] += 1  # at least one non-zero per row
    pn[:, 0] += 1
    pv, pn = pv / pv.sum(1, keepdim=True), pn / pn.sum(1, keepdim=True)
    for k in range(1, V * N + 1):
        verbs, nouns, scores = rank_actions(pv, pn, k=k, scores_are="probs")
        for b in range(3):
            ev, en, es = _brute_force(pv[b].tolist(), pn[b].tolist(), k)
            assert verbs[b].tolist() == ev, (k, b)
            assert nouns[b].tolist() == en, (k, b)
            assert scores[b].tolist() == es


def test_rank_actions_matches_full_outer_product_on_ek100_sizes():
    g = torch.Generator().manual_seed(0)
    verb_logits, noun_logits = torch.randn(64, 97, generator=g), torch.randn(64, 300, generator=g)
    verbs, nouns, scores = rank_actions(verb_logits, noun_logits, k=5)
    full = (verb_logits.softmax(1)[:, :, None] * noun_logits.softmax(1)[:, None, :]).reshape(64, -1)
    top = full.topk(5, dim=1)
    assert torch.equal(verbs, top.indices // 300)
    assert torch.equal(nouns, top.indices % 300)
    torch.testing.assert_close(scores, top.values)


def test_rank_actions_errors():
    with pytest.raises(ValueError, match="same batch size"):
        rank_actions(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="negative"):
        rank_actions(torch.tensor([[-0.1, 1.1]]), torch.tensor([[0.5, 0.5]]), k=2, scores_are="probs")
    with pytest.raises(ValueError, match="scores_are"):
        rank_actions(torch.zeros(1, 3), torch.zeros(1, 3), scores_are="softmax")


# ------------------------------------------------------------------------------------------------
# action_accuracy
# ------------------------------------------------------------------------------------------------


def test_action_accuracy_hand_example():
    pv, pn = _probs([PV] * 4), _probs([PN] * 4)
    verb_labels = torch.tensor([0, 2, 2, 1])
    noun_labels = torch.tensor([1, 1, 0, IGNORE_INDEX])
    # (0,1) is rank 1; (2,1) is rank 4; (2,0) is rank 9 (although verb 2 and noun 0 are both in
    # their top-5: the pair convention does not count it); the last sample has no noun label.
    acc = action_accuracy(pv, pn, verb_labels, noun_labels, ks=(1, 4, 5), scores_are="probs")
    assert acc[1] == pytest.approx(1 / 3)
    assert acc[4] == pytest.approx(2 / 3)
    assert acc[5] == pytest.approx(2 / 3)


def test_action_accuracy_needs_both_labels():
    with pytest.raises(ValueError, match="no labelled samples"):
        action_accuracy(_probs([PV]), _probs([PN]), torch.tensor([0]), torch.tensor([IGNORE_INDEX]))


# ------------------------------------------------------------------------------------------------
# class-mean recall
# ------------------------------------------------------------------------------------------------

CMR_SCORES = torch.tensor(
    [
        [0.7, 0.2, 0.1, 0.0],  # label 0: ranking 0,1,2,3 -> top1 hit
        [0.1, 0.6, 0.3, 0.0],  # label 0: ranking 1,2,0,3 -> top1 miss, top2 miss
        [0.6, 0.3, 0.1, 0.0],  # label 0: top1 hit
        [0.2, 0.5, 0.3, 0.0],  # label 2: ranking 1,2,0,3 -> top1 miss, top2 hit
        [0.1, 0.1, 0.8, 0.0],  # label 2: top1 hit
        [0.0, 0.0, 0.0, 1.0],  # ignored
    ]
)
CMR_LABELS = torch.tensor([0, 0, 0, 2, 2, IGNORE_INDEX])  # classes 1 and 3 are absent


def test_class_mean_recall_excludes_absent_classes():
    # k=1: class 0 -> 2/3, class 2 -> 1/2; mean over the two present classes = 7/12.
    # (Counting absent classes as 0 would give 7/24; plain accuracy would be 3/5.)
    assert class_mean_recall_at_k(CMR_SCORES, CMR_LABELS, k=1) == pytest.approx(7 / 12)
    # k=2: class 0 -> 2/3, class 2 -> 2/2; mean = 5/6.
    assert class_mean_recall_at_k(CMR_SCORES, CMR_LABELS, k=2) == pytest.approx(5 / 6)


def test_class_mean_recall_subset_of_classes():
    # classes {2, 3}: 3 is absent -> only class 2 (1/2 at k=1).
    assert class_mean_recall_at_k(CMR_SCORES, CMR_LABELS, k=1, classes=[2, 3]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no class to average"):
        class_mean_recall_at_k(CMR_SCORES, CMR_LABELS, k=1, classes=[1, 3])
    with pytest.raises(ValueError, match="classes"):
        class_mean_recall_at_k(CMR_SCORES, CMR_LABELS, k=1, classes=[7])


def test_action_class_mean_recall_hand_example():
    pv, pn = _probs([PV] * 4), _probs([PN] * 4)
    verb_labels = torch.tensor([0, 0, 2, 1])
    noun_labels = torch.tensor([1, 1, 0, 1])
    # Action classes: (0,1) x2 at rank 1, (2,0) at rank 9, (1,1) at rank 2.
    # k=1: (0,1) 2/2, (2,0) 0, (1,1) 0 -> 1/3 (sample-level accuracy would be 1/2).
    got = action_class_mean_recall_at_k(pv, pn, verb_labels, noun_labels, k=1, scores_are="probs")
    assert got == pytest.approx(1 / 3)
    # k=2: (0,1) 1, (2,0) 0, (1,1) 1 -> 2/3.
    got = action_class_mean_recall_at_k(pv, pn, verb_labels, noun_labels, k=2, scores_are="probs")
    assert got == pytest.approx(2 / 3)
    # Restricted to the action classes {(1,1), (2,2)}: (2,2) absent -> recall of (1,1) at k=2 = 1.
    got = action_class_mean_recall_at_k(
        pv, pn, verb_labels, noun_labels, k=2, classes=[(1, 1), (2, 2)], scores_are="probs"
    )
    assert got == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------

# sample 0: p(v) = PV, p(n) = PN, labels (0, 1): verb top1, noun top1, action top1 all hit.
# sample 1: p(v) = [.2,.7,.1], p(n) = [.5,.4,.1], labels (2, 1):
#   verb ranking 1,0,2 -> top1 miss, top5 hit; noun ranking 0,1,2 -> top1 miss, top5 hit;
#   products v1: .35 .28 .07 | v0: .10 .08 .02 | v2: .05 .04 .01
#   ranked (1,0) (1,1) (0,0) (0,1) (1,2) (2,0) (2,1)... -> (2,1) is rank 7: top5 miss.
# sample 2: same scores as sample 1, labels (1, 0): verb, noun and action top1 hits.
SUM_V = _probs([PV, [0.2, 0.7, 0.1], [0.2, 0.7, 0.1]])
SUM_N = _probs([PN, [0.5, 0.4, 0.1], [0.5, 0.4, 0.1]])
SUM_YV = torch.tensor([0, 2, 1])
SUM_YN = torch.tensor([1, 1, 0])


def test_recognition_metrics_hand_example_in_percent():
    m = recognition_metrics(SUM_V, SUM_N, SUM_YV, SUM_YN, scores_are="probs")
    assert set(m) == {"verb_top1", "verb_top5", "noun_top1", "noun_top5", "action_top1", "action_top5"}
    assert m["verb_top1"] == pytest.approx(200 / 3)
    assert m["verb_top5"] == pytest.approx(100.0)
    assert m["noun_top1"] == pytest.approx(200 / 3)
    assert m["noun_top5"] == pytest.approx(100.0)
    assert m["action_top1"] == pytest.approx(200 / 3)
    assert m["action_top5"] == pytest.approx(200 / 3)


def test_anticipation_metrics_hand_example_in_percent():
    # k=5: verbs (V=3) and nouns (N=3) all recalled -> 100; actions: (0,1) 1, (2,1) 0, (1,0) 1 -> 2/3.
    m = anticipation_metrics(SUM_V, SUM_N, SUM_YV, SUM_YN, scores_are="probs")
    assert m == pytest.approx({"verb_recall5": 100.0, "noun_recall5": 100.0, "action_recall5": 200 / 3})
    # k=1: verbs {0: 1, 2: 0, 1: 1} -> 2/3; nouns {1: 1/2, 0: 1} -> 3/4; actions {(0,1):1,(2,1):0,(1,0):1}.
    m = anticipation_metrics(SUM_V, SUM_N, SUM_YV, SUM_YN, k=1, scores_are="probs")
    assert m == pytest.approx({"verb_recall1": 200 / 3, "noun_recall1": 75.0, "action_recall1": 200 / 3})


def test_per_class_table_hand_example():
    rows = per_class_table(CMR_SCORES, CMR_LABELS, class_names=["a", "b", "c", "d"], ks=(1, 2))
    assert rows == [
        {
            "class_id": 0,
            "name": "a",
            "support": 3,
            "top1_recall": pytest.approx(200 / 3),
            "top2_recall": pytest.approx(200 / 3),
        },
        {
            "class_id": 2,
            "name": "c",
            "support": 2,
            "top1_recall": pytest.approx(50.0),
            "top2_recall": pytest.approx(100.0),
        },
    ]
    rows = per_class_table(CMR_SCORES, CMR_LABELS, include_absent=True)
    assert [r["class_id"] for r in rows] == [0, 1, 2, 3]
    assert rows[1] == {"class_id": 1, "name": "1", "support": 0, "top1_recall": None, "top5_recall": None}
    assert rows[2]["top5_recall"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="class_names"):
        per_class_table(CMR_SCORES, CMR_LABELS, class_names=["a"])


def test_format_table():
    rows = [{"name": "take", "support": 3, "top1": 66.6666}, {"name": "a|b", "support": 0, "top1": None}]
    text = format_table(rows, ["name", ("support", "n"), ("top1", "top-1 (%)")])
    assert text == ("| name | n | top-1 (%) |\n|---|---|---|\n| take | 3 | 66.67 |\n| a\\|b | 0 |  |\n")
    assert format_table(rows[:1]).splitlines()[0] == "| name | support | top1 |"
    with pytest.raises(ValueError, match="no column"):
        format_table(rows, ["missing"])


# ------------------------------------------------------------------------------------------------
# MetricAccumulator
# ------------------------------------------------------------------------------------------------


def test_accumulator_matches_one_shot_metrics():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(10, 7, generator=g, requires_grad=True)
    n = torch.randn(10, 9, generator=g)
    yv = torch.randint(0, 7, (10,), generator=g)
    yn = torch.randint(0, 9, (10,), generator=g)
    yn[3] = IGNORE_INDEX
    acc = MetricAccumulator(task="all")
    for sl in (slice(0, 4), slice(4, 4), slice(4, 10)):  # includes an empty batch
        acc.update(v[sl], n[sl], yv[sl], yn[sl])
    assert acc.num_samples == len(acc) == 10
    got = acc.compute()
    expected = {**recognition_metrics(v, n, yv, yn), **anticipation_metrics(v, n, yv, yn)}
    assert got == pytest.approx(expected)
    assert all(not t.requires_grad and t.device.type == "cpu" for t in acc.tensors().values())
    acc.reset()
    with pytest.raises(ValueError, match="empty"):
        acc.compute()


def test_accumulator_tasks_and_errors():
    acc = MetricAccumulator(task="anticipation", scores_are="probs")
    acc.update(SUM_V, SUM_N, SUM_YV, SUM_YN)
    assert set(acc.compute()) == {"verb_recall5", "noun_recall5", "action_recall5"}
    with pytest.raises(ValueError, match="inconsistent number of classes"):
        acc.update(torch.zeros(1, 4), torch.zeros(1, 3), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="task"):
        MetricAccumulator(task="segmentation")
    with pytest.raises(ValueError, match="empty"):
        MetricAccumulator().compute()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda():
    v, n = SUM_V.cuda(), SUM_N.cuda()
    m = recognition_metrics(v, n, SUM_YV.cuda(), SUM_YN, scores_are="probs")
    assert m["action_top1"] == pytest.approx(200 / 3)
    acc = MetricAccumulator(scores_are="probs")
    acc.update(v, n, SUM_YV.cuda(), SUM_YN.cuda())
    assert acc.compute() == pytest.approx(m)
