"""High-level reconstruction metrics over backbone features: two-way identification and distance.

Two-way identification (MindEye/ATM code, after Ozcelik & VanRullen): with r[i, j] the Pearson
correlation of ground-truth features i and reconstruction features j, reconstruction j scores the
fraction of the other N − 1 ground truths i ≠ j with r[i, j] < r[j, j]; the metric is the mean over j
(1 = perfect, 0.5 = chance). The distance metrics (EffNet-B, SwAV) are the mean over images of the
correlation distance 1 − r[j, j] (0 = identical features, 1 = uncorrelated).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sgdm_dist.metrics.reconstruction import rowwise_pearson, undefined_as_zero


def _check_features(gt: Tensor, recon: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten per-image features: [N, ...] → [N, F] float64, with N >= 2 and matching shapes."""
    if gt.shape != recon.shape:
        raise ValueError(
            f"gt and recon features must have one shape, got {tuple(gt.shape)} and {tuple(recon.shape)}"
        )
    if gt.ndim < 2:
        raise ValueError(f"features must be [N, ...] with a feature axis, got {tuple(gt.shape)}")
    return gt.flatten(1).to(torch.float64), recon.flatten(1).to(torch.float64)


def correlation_matrix(gt: Tensor, recon: Tensor) -> Tensor:
    """r[i, j] = Pearson(gt_i, recon_j): gt, recon [N, F] → [N, N] (float64).

    Rows with zero variance give 0 correlations (undefined Pearson r, treated as no relation).
    """

    def standardise(x: Tensor) -> Tensor:
        x = x - x.mean(dim=1, keepdim=True)
        norm = x.norm(dim=1, keepdim=True)
        return torch.where(norm > 0, x / norm.clamp_min(1e-300), torch.zeros_like(x))

    return standardise(gt) @ standardise(recon).T


def two_way_identification_per_image(gt: Tensor, recon: Tensor) -> Tensor:
    """Per-reconstruction two-way identification score: gt, recon [N, ...] features → [N] in [0, 1]."""
    g, r = _check_features(gt, recon)
    n = g.shape[0]
    if n < 2:
        raise ValueError(f"two-way identification needs at least 2 images, got {n}")
    corr = correlation_matrix(g, r)
    congruent = corr.diagonal()
    # Column j: other ground truths that correlate less with reconstruction j than its own does.
    wins = (corr < congruent[None, :]).sum(dim=0)
    return wins.to(torch.float64) / (n - 1)


def two_way_identification(gt: Tensor, recon: Tensor) -> float:
    """Mean two-way identification accuracy (↑, chance 0.5)."""
    return float(two_way_identification_per_image(gt, recon).mean())


def correlation_distance_per_image(gt: Tensor, recon: Tensor) -> Tensor:
    """Correlation distance 1 − Pearson(gt_j, recon_j) of each image [N] (float64)."""
    g, r = _check_features(gt, recon)
    return 1.0 - undefined_as_zero(rowwise_pearson(g, r), "correlation distance")


def correlation_distance(gt: Tensor, recon: Tensor) -> float:
    """Mean correlation distance 1 − Pearson(gt_j, recon_j) over images (↓, 0 for identical)."""
    return float(correlation_distance_per_image(gt, recon).mean())
