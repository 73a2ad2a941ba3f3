"""Known-answer tests for k-way zero-shot retrieval (THINGS-EEG2 protocol)."""

from __future__ import annotations

import math

import pytest
import torch

from sgdm_dist.metrics import (
    average_by_index,
    cosine_similarity_matrix,
    mean_over_groups,
    retrieval_accuracy,
)


def test_perfect_predictions_score_one_everywhere() -> None:
    targets = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    out = retrieval_accuracy(targets, targets, torch.arange(50), n_way=[2, 4, 10, 50], top_k=[1, 5])
    accs = {k: v for k, v in out.items() if k.startswith("top")}
    assert set(accs) == {
        "top1_2way",
        "top1_4way",
        "top1_10way",
        "top5_10way",
        "top1_50way",
        "top5_50way",
    }
    assert all(v == 1.0 for v in accs.values())
    assert out["chance_top1_50way"] == pytest.approx(1 / 50)
    assert out["chance_top5_10way"] == pytest.approx(0.5)
    assert out["n_predictions"] == 50 and out["n_candidates"] == 50


def test_random_predictions_score_chance_within_binomial_tolerance() -> None:
    gen = torch.Generator().manual_seed(1)
    n_pred, n_cand = 400, 100
    targets = torch.randn(n_cand, 64, generator=gen)
    pred = torch.randn(n_pred, 64, generator=gen)
    # Every target is the truth equally often: then the expected accuracy is exactly k / n.
    index = torch.arange(n_pred) % n_cand
    out = retrieval_accuracy(pred, targets, index, n_way=[2, 10, 100], top_k=[1, 5], seed=3)
    for key in ("top1_2way", "top1_10way", "top5_10way", "top1_100way", "top5_100way"):
        p = out["chance_" + key]
        # Predictions are independent given the targets; trials of one prediction are not, so the
        # prediction (not the trial) is the unit: σ ≤ sqrt(p(1 − p) / N).
        sigma = math.sqrt(p * (1 - p) / n_pred)
        assert abs(out[key] - p) < 5 * sigma, (key, out[key], p)


def test_hand_computed_case() -> None:
    e = torch.eye(3)
    targets = e
    pred = torch.stack([e[0], e[0], e[2] + 0.5 * e[1]])
    index = torch.tensor([0, 1, 2])
    n_trials = 4000
    out = retrieval_accuracy(pred, targets, index, n_way=[2, 3], top_k=[1, 2], n_trials=n_trials)
    # Full 3-way: prediction 1 (truth e1, sim 0) is beaten by e0 (sim 1); the others rank first.
    assert out["top1_3way"] == pytest.approx(2 / 3)
    # Top-2: prediction 1 ties with e2 (sim 0 each); ties favour the truth → rank 1 < 2.
    assert out["top2_3way"] == 1.0
    # 2-way: prediction 1 loses only when its one distractor is e0 (probability 1/2).
    sigma = math.sqrt(0.25 / n_trials) / 3
    assert abs(out["top1_2way"] - (1 + 0.5 + 1) / 3) < 5 * sigma
    assert "top2_2way" not in out  # top-k with k >= n is trivially 1 and left out


def test_n_way_beyond_candidates_means_all_of_them() -> None:
    t = torch.randn(20, 8, generator=torch.Generator().manual_seed(2))
    out = retrieval_accuracy(t + 0.01, t, torch.arange(20), n_way=[50, 200], top_k=[1])
    assert "top1_20way" in out and "top1_200way" not in out and "top1_50way" not in out


def test_seed_makes_subset_draws_reproducible() -> None:
    gen = torch.Generator().manual_seed(4)
    t, p = torch.randn(30, 8, generator=gen), torch.randn(30, 8, generator=gen)
    a = retrieval_accuracy(p, t, torch.arange(30), n_way=[4], top_k=[1], seed=7, n_trials=3)
    b = retrieval_accuracy(p, t, torch.arange(30), n_way=[4], top_k=[1], seed=7, n_trials=3)
    assert a == b


def test_average_by_index_groups_repetitions() -> None:
    pred = torch.tensor([[1.0, 0.0], [3.0, 2.0], [10.0, 10.0], [0.0, 4.0]])
    index = torch.tensor([5, 2, 9, 5])
    means, unique = average_by_index(pred, index)
    assert unique.tolist() == [2, 5, 9]
    torch.testing.assert_close(means, torch.tensor([[3.0, 2.0], [0.5, 2.0], [10.0, 10.0]]))


def test_cosine_similarity_matrix_is_scale_invariant() -> None:
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    expected = torch.tensor([[1.0, 0.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]], dtype=torch.float64)
    torch.testing.assert_close(cosine_similarity_matrix(p, t), expected)


def test_mean_over_groups_and_key_mismatch() -> None:
    avg = mean_over_groups({"sub-01": {"top1_2way": 0.5}, "sub-02": {"top1_2way": 1.0}})
    assert avg == {"top1_2way": 0.75}
    with pytest.raises(ValueError, match="sub-02"):
        mean_over_groups({"sub-01": {"a": 1.0}, "sub-02": {"b": 1.0}})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_index": torch.tensor([0, 1, 7])}, r"target_index values must lie in \[0, 2\]"),
        ({"target_index": torch.tensor([0, 1])}, r"target_index must have shape \[3\]"),
        ({"targets": torch.randn(3, 5)}, "embedding size"),
        ({"pred": torch.full((3, 4), float("nan"))}, "pred has non-finite values"),
        ({"n_way": [1]}, "n_way sizes must be >= 2"),
    ],
)
def test_bad_input_names_the_problem(kwargs: dict, match: str) -> None:
    args = {
        "pred": torch.randn(3, 4),
        "targets": torch.randn(3, 4),
        "target_index": torch.arange(3),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        retrieval_accuracy(**args)
