"""What a reconstruction score means: floors, ceilings, confidence intervals, condition sensitivity.

* floor: the model's reconstructions from *shuffled* EEG (each image gets another image's EEG, a
  derangement), scored against the true stimuli: what the model scores without the right EEG;
* ceiling: the autoencoder's round trip of the true stimulus (encode, decode), scored the same way:
  no latent-diffusion model can draw better than its own decoder;
* bootstrap 95 % confidence intervals of a mean over images (percentile bootstrap, resampling
  images with replacement);
* condition sensitivity: mean absolute pixel change when the EEG is swapped between trials, divided
  by the change when only the sampler's seed changes. Below 1 the seed decides the image more than
  the EEG does.
"""

from __future__ import annotations

import torch
from torch import Tensor

N_BOOTSTRAP = 1000
CI_LEVEL = 0.95


def derangement(n: int, seed: int) -> Tensor:
    """A permutation [n] with no fixed point (n >= 2): a random cycle, so no row keeps its own."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(1)
    return perm


def bootstrap_ci(
    per_image: Tensor, *, n_boot: int = N_BOOTSTRAP, level: float = CI_LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``per_image`` [N] scores: (low, high)."""
    x = per_image.detach().double().flatten().cpu()
    if x.numel() == 0:
        raise ValueError("bootstrap_ci: no scores")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n_boot, x.numel()), generator=gen)
    means = x[idx].mean(dim=1)
    alpha = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return float(low), float(high)


def summarise(per_image: dict[str, Tensor], seed: int = 0) -> dict[str, float]:
    """{metric: [N]} → {metric: mean, "metric.ci_low": …, "metric.ci_high": …, "n_images": N}."""
    out: dict[str, float] = {}
    for metric, scores in per_image.items():
        low, high = bootstrap_ci(scores, seed=seed)
        out[metric] = float(scores.double().mean())
        out[f"{metric}.ci_low"] = low
        out[f"{metric}.ci_high"] = high
        out["n_images"] = float(scores.numel())
    return out


def pixel_change(a: Tensor, b: Tensor) -> float:
    """Mean absolute difference of two image sets [N, 3, H, W] in [0, 1]."""
    if a.shape != b.shape:
        raise ValueError(f"pixel_change: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().mean())


def condition_sensitivity(
    recon: Tensor, swapped_eeg: Tensor, other_seed: Tensor
) -> dict[str, float]:
    """recon: images from each trial's EEG; swapped_eeg: from another trial's EEG, same seed;
    other_seed: from the same EEG, another seed. Returns both changes and their ratio."""
    eeg_change = pixel_change(recon, swapped_eeg)
    seed_change = pixel_change(recon, other_seed)
    ratio = eeg_change / seed_change if seed_change > 0 else float("inf")
    return {
        "condition_sensitivity": ratio,
        "pixel_change_eeg_swapped": eeg_change,
        "pixel_change_seed_changed": seed_change,
    }
