"""Reconstruction scoring for ``sgdm evaluate``: the model, its floor and ceiling, with CIs.

Per subject (docs/metrics.md has the definitions):

* model: one image per test stimulus from the subject's repetition-averaged EEG;
* floor: the same sampling from the EEG of *other* images (a derangement), same seed;
* ceiling: the autoencoder's round trip of each true stimulus (no sampling);
* condition sensitivity: pixel change (EEG swapped) / pixel change (seed changed).

Every table row carries the mean over images and a bootstrap 95 % CI (``metric.ci_low/.ci_high``);
the "mean" row pools the images of every subject.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sgdm_dist.metrics.baselines import condition_sensitivity, derangement, summarise
from sgdm_dist.metrics.suite import RANDOM_INIT_SUFFIX, per_image_metrics
from sgdm_dist.models import SGDM
from sgdm_dist.reconstruct.sampling import SamplingOptions, sample_images

MODEL, FLOOR, CEILING = "model", "floor", "ceiling"
MEAN_ROW = "mean"


@dataclass
class ReconScores:
    """Per-image scores of each kind (model/floor/ceiling) per subject, and sensitivity rows."""

    per_image: dict[str, dict[str, dict[str, Tensor]]] = field(
        default_factory=lambda: {MODEL: {}, FLOOR: {}, CEILING: {}}
    )
    flags: dict[str, float] = field(default_factory=dict)
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(
        self, kind: str, row: str, recon: Tensor, gt: Tensor, backbones: Any, **kw: Any
    ) -> None:
        scores, flags = per_image_metrics(recon, gt, backbones, **kw)
        self.per_image[kind][row] = scores
        self.flags.update(flags)

    def tables(self, seed: int) -> dict[str, dict[str, dict[str, float]]]:
        """{kind: {"sub-XX": row, "mean": row}} with means, CIs and random-init flags."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for kind, rows in self.per_image.items():
            if not rows:
                continue
            table = {name: self._row(scores, seed) for name, scores in rows.items()}
            pooled = {
                m: torch.cat([r[m] for r in rows.values()]) for m in next(iter(rows.values()))
            }
            table[MEAN_ROW] = self._row(pooled, seed)
            out[kind] = table
        return out

    def _row(self, scores: dict[str, Tensor], seed: int) -> dict[str, float]:
        row = summarise(scores, seed=seed)
        row.update({m + RANDOM_INIT_SUFFIX: v for m, v in self.flags.items() if m in scores})
        return row

    def sensitivity_table(self) -> dict[str, dict[str, float]]:
        if not self.sensitivity:
            return {}
        rows = dict(self.sensitivity)
        keys = next(iter(rows.values())).keys()
        mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in keys}
        # The ratio of the mean changes, not the mean of ratios (robust to one tiny seed change).
        seed_change = mean["pixel_change_seed_changed"]
        mean["condition_sensitivity"] = (
            mean["pixel_change_eeg_swapped"] / seed_change if seed_change > 0 else float("inf")
        )
        return {**rows, MEAN_ROW: mean}


def score_subject(
    scores: ReconScores,
    row: str,
    model: SGDM,
    eeg: Tensor,
    ids: Tensor,
    stimuli: Tensor,
    vae: Any,
    sampling: SamplingOptions,
    backbones: Any,
    *,
    baselines: bool,
    progress: bool,
    metric_kw: dict[str, Any],
) -> Tensor:
    """Sample and score one subject's reconstructions (and baselines); returns the model's images."""
    recon = sample_images(
        model, eeg, ids, vae, sampling, desc=f"reconstruct {row}", progress=progress
    )
    scores.add(MODEL, row, recon, stimuli, backbones, **metric_kw)
    if not baselines:
        return recon
    perm = derangement(eeg.shape[0], sampling.seed)
    shuffled = sample_images(
        model, eeg[perm], ids[perm], vae, sampling, desc=f"floor {row}", progress=progress
    )
    scores.add(FLOOR, row, shuffled, stimuli, backbones, **metric_kw)
    reseeded = sample_images(
        model,
        eeg,
        ids,
        vae,
        dataclasses.replace(sampling, seed=sampling.seed + 1),
        desc=f"other seed {row}",
        progress=progress,
    )
    scores.sensitivity[row] = condition_sensitivity(recon, shuffled, reseeded)
    ceiling = autoencoder_round_trip(vae, stimuli, recon.shape[-1])
    scores.add(CEILING, row, ceiling, stimuli, backbones, **metric_kw)
    return recon


@torch.no_grad()
def autoencoder_round_trip(vae: Any, stimuli: Tensor, size: int, batch_size: int = 16) -> Tensor:
    """Stimuli [N, 3, H, W] in [0, 1] → resized to the decoder's ``size`` px, encoded (posterior
    mean) and decoded: the best any model sampling this VAE's latents can draw."""
    import torchvision.transforms.v2.functional as TF

    param = next(vae.parameters())
    out = []
    for start in range(0, stimuli.shape[0], batch_size):
        x = stimuli[start : start + batch_size].float()
        if x.shape[-1] != size or x.shape[-2] != size:
            x = TF.resize(x, [size, size], antialias=True)
        z = vae.encode((x * 2 - 1).to(param.device, param.dtype)).latent_dist.mean
        y = vae.decode(z, return_dict=False)[0]
        out.append(((y.float() + 1) / 2).clamp(0, 1).cpu())
    return torch.cat(out)


def with_ci(row: dict[str, float], metric: str) -> str:
    """ "0.412 [0.380, 0.447]": the mean and its bootstrap 95 % CI ("" when absent)."""
    if metric not in row:
        return ""
    low, high = row.get(f"{metric}.ci_low"), row.get(f"{metric}.ci_high")
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{row[metric]:.3f}{ci}"


def baseline_rows(
    reconstruction: dict[str, Any], baselines: dict[str, Any], metrics: list[str]
) -> dict[str, dict[str, str]]:
    """{metric: {"model": "m [lo, hi]", "floor": …, "ceiling": …}} over all subjects' images (the
    "mean" rows); floor = shuffled EEG, ceiling = autoencoder round trip."""
    columns = {
        MODEL: reconstruction.get(MEAN_ROW, {}),
        FLOOR: baselines.get(FLOOR, {}).get(MEAN_ROW, {}),
        CEILING: baselines.get(CEILING, {}).get(MEAN_ROW, {}),
    }
    return {
        m: {name: with_ci(row, m) for name, row in columns.items()}
        for m in metrics
        if m in columns[MODEL]
    }
