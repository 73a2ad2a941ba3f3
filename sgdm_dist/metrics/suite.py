"""The full reconstruction metric table: PixCorr, SSIM and the backbone metrics in one call."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sgdm_dist.config.evaluate import EvaluateConfig
from sgdm_dist.metrics.backbones import Backbone, load_backbones
from sgdm_dist.metrics.identification import (
    correlation_distance_per_image,
    two_way_identification_per_image,
)
from sgdm_dist.metrics.images import check_image_pair, resize_square
from sgdm_dist.metrics.reconstruction import pixcorr_per_image, ssim_per_image

log = logging.getLogger(__name__)

# Literature order of the columns (MindEye, ATM tables), with the direction that is better.
METRIC_ORDER = [
    "PixCorr",
    "SSIM",
    "Pixel(2-way)",
    "AlexNet(2)",
    "AlexNet(5)",
    "Inception",
    "CLIP",
    "EffNet-B",
    "SwAV",
]
HIGHER_IS_BETTER = {m: m not in ("EffNet-B", "SwAV") for m in METRIC_ORDER}
RANDOM_INIT_SUFFIX = ".random_init"
PIXEL_ID_SIZE = 64  # px: two-way identification on raw pixels, resized (bilinear) to this side


def reconstruction_metrics(
    recon: Tensor,
    gt: Tensor,
    backbones: Mapping[str, Any] | EvaluateConfig | None = None,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
) -> dict[str, float]:
    """Every reconstruction metric the literature reports, for one set of image pairs.

    recon, gt: float [N, 3, H, W] in [0, 1] (sizes may differ; each metric resizes), N >= 2.
    backbones: already loaded backbones ({name: Backbone}, to load once and score many sets), an
    EvaluateConfig or a dict of its fields (loads ``cfg.backbones``), or None (PixCorr and SSIM only).

    Returns PixCorr, SSIM, and per backbone metric its score plus ``<metric>.random_init`` (1.0 when
    the backbone had no real weights: such numbers are not comparable with papers), and ``n_images``.
    """
    per_image, flags = per_image_metrics(recon, gt, backbones, device, batch_size)
    out: dict[str, float] = {"n_images": float(recon.shape[0])}
    for metric, scores in per_image.items():
        out[metric] = float(scores.mean())
        if metric in flags:
            out[metric + RANDOM_INIT_SUFFIX] = flags[metric]
    return out


def per_image_metrics(
    recon: Tensor,
    gt: Tensor,
    backbones: Mapping[str, Any] | EvaluateConfig | None = None,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Each metric's score per image ({metric: [N] float64}; its mean is the metric) and the
    random-init flag of each backbone metric ({metric: 1.0 | 0.0}). Two-way identification per
    image is the fraction of the other N − 1 images it beats, so it depends on the whole set."""
    check_image_pair(recon, gt)
    if recon.shape[0] < 2:
        raise ValueError(
            f"reconstruction metrics need at least 2 image pairs, got {recon.shape[0]}"
        )
    loaded, cfg_batch = _as_backbones(backbones, device)
    batch_size = batch_size or cfg_batch
    out: dict[str, Tensor] = {
        "PixCorr": pixcorr_per_image(recon, gt),
        "SSIM": ssim_per_image(recon, gt),
        "Pixel(2-way)": two_way_identification_per_image(
            resize_square(gt, PIXEL_ID_SIZE), resize_square(recon, PIXEL_ID_SIZE)
        ),
    }
    flags: dict[str, float] = {}
    # One step per backbone: each runs a network over 2 × N images, the slow part of scoring.
    for name, backbone in tqdm(loaded.items(), desc="metric backbones", unit="net", leave=False):
        feats_gt = backbone.features(gt, batch_size)
        feats_recon = backbone.features(recon, batch_size)
        for metric in backbone.spec.metrics:
            out[metric] = (
                two_way_identification_per_image(feats_gt[metric], feats_recon[metric])
                if backbone.spec.kind == "two_way"
                else correlation_distance_per_image(feats_gt[metric], feats_recon[metric])
            )
            flags[metric] = float(backbone.random_init)
        log.info("reconstruction metrics from %s done (%s)", name, backbone.source)
    return out, flags


def random_init_metrics(metrics: Mapping[str, float]) -> list[str]:
    """Names of the metrics in a result that came from randomly initialised backbones."""
    return [
        key.removesuffix(RANDOM_INIT_SUFFIX)
        for key, value in metrics.items()
        if key.endswith(RANDOM_INIT_SUFFIX) and value
    ]


def to_mlflow_metrics(metrics: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    """Metric names MLflow accepts (no parentheses): "AlexNet(2)" → "AlexNet_2"."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        safe = re.sub(r"[^\w.\-/ ]", "_", prefix + key.replace("(", "_").replace(")", ""))
        if safe in out:
            raise ValueError(f"metric names {key!r} and another both map to {safe!r} for MLflow")
        out[safe] = float(value)
    return out


def _as_backbones(
    backbones: Mapping[str, Any] | EvaluateConfig | None, device: str | torch.device
) -> tuple[dict[str, Backbone], int]:
    if backbones is None:
        return {}, 16
    if isinstance(backbones, Mapping) and all(isinstance(b, Backbone) for b in backbones.values()):
        return dict(backbones), 16
    cfg = backbones if isinstance(backbones, EvaluateConfig) else EvaluateConfig(**backbones)
    return load_backbones(cfg, device), cfg.metric_batch_size
