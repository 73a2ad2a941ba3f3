"""Known-answer tests for two-way identification and correlation distance."""

from __future__ import annotations

import math

import pytest
import torch

from sgdm_dist.metrics import (
    correlation_distance,
    to_mlflow_metrics,
    two_way_identification,
    two_way_identification_per_image,
)


def _derangement(n: int, gen: torch.Generator) -> torch.Tensor:
    while True:
        perm = torch.randperm(n, generator=gen)
        if (perm != torch.arange(n)).all():
            return perm


def test_identical_features_identify_perfectly_with_zero_distance() -> None:
    f = torch.randn(10, 7, 3, generator=torch.Generator().manual_seed(0))
    assert two_way_identification(f, f) == 1.0
    assert correlation_distance(f, f) == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_case() -> None:
    gt = torch.eye(4)[:3]  # one-hot in 4-D: distinct rows correlate at −1/3
    recon = torch.stack([gt[0], gt[0], gt[2]])
    # Column 1: own r = −1/3; gt0 gives 1 (beats), gt2 gives −1/3 (tie, not lower) → 0 of 2.
    per_image = two_way_identification_per_image(gt, recon)
    assert per_image.tolist() == [1.0, 0.0, 1.0]
    assert two_way_identification(gt, recon) == pytest.approx(2 / 3)


def test_permuted_features_score_near_chance() -> None:
    gen = torch.Generator().manual_seed(1)
    n = 300
    gt = torch.randn(n, 50, generator=gen)
    perm = _derangement(n, gen)
    score = two_way_identification(gt, gt[perm])
    # Reconstruction j shows image π(j): gt π(j) always wins (r = 1), the other N − 2 are
    # exchangeable with j, so E = (N − 2) / (2(N − 1)); each per-image score is a uniform rank
    # (variance ≈ 1/12), so the mean has σ ≈ sqrt(1 / (12 N)).
    expected = (n - 2) / (2 * (n - 1))
    assert abs(score - expected) < 5 * math.sqrt(1 / (12 * n))


def test_unrelated_features_score_half_and_distance_one() -> None:
    gen = torch.Generator().manual_seed(2)
    n, f = 300, 200
    gt, recon = torch.randn(n, f, generator=gen), torch.randn(n, f, generator=gen)
    assert abs(two_way_identification(gt, recon) - 0.5) < 5 * math.sqrt(1 / (12 * n))
    # Per-image r ~ N(0, 1/√F): the mean distance is 1 within 5 σ of the mean.
    assert abs(correlation_distance(gt, recon) - 1.0) < 5 / math.sqrt(f * n)


def test_correlation_distance_known_values() -> None:
    gt = torch.randn(5, 12, generator=torch.Generator().manual_seed(3))
    assert correlation_distance(gt, 3 * gt + 1) == pytest.approx(0.0, abs=1e-12)
    assert correlation_distance(gt, -gt) == pytest.approx(2.0, abs=1e-12)


def test_bad_feature_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        two_way_identification(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="at least 2 images"):
        two_way_identification(torch.randn(1, 3), torch.randn(1, 3))


def test_mlflow_names_are_accepted_by_mlflow() -> None:
    from mlflow.utils.validation import _validate_metric_name

    names = to_mlflow_metrics({"AlexNet(2)": 0.9, "EffNet-B": 0.4, "top1_200way": 0.1}, "recon/")
    assert set(names) == {"recon/AlexNet_2", "recon/EffNet-B", "recon/top1_200way"}
    for name in names:
        _validate_metric_name(name)
