"""Low-level reconstruction metrics: PixCorr and SSIM, as in the MindEye/ATM evaluation code.

Both resize the images to 425 px (bilinear). PixCorr is the Pearson correlation of the flattened RGB
pixels per image; SSIM is skimage's ``structural_similarity`` on grayscale (``rgb2gray``) images with
Gaussian weights (σ = 1.5), population covariance and data range 1. Each is averaged over images.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity
from torch import Tensor

from sgdm_dist.metrics.images import check_image_pair, resize_square

log = logging.getLogger(__name__)

LOW_LEVEL_SIZE = 425
_CHUNK = 16  # images resized at a time


def rowwise_pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson r of matching rows: a, b [N, F] → [N] (float64); NaN where a row is constant."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"expected two [N, F] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))


def undefined_as_zero(r: Tensor, what: str) -> Tensor:
    """Score undefined correlations (a constant image or feature vector) as 0, with a warning.

    0 means "no linear relation": a blank reconstruction counts as uninformative instead of turning
    the mean into NaN.
    """
    bad = torch.isnan(r)
    if bad.any():
        log.warning(
            "%s: Pearson r undefined (constant image/features) for images %s; scored as 0",
            what,
            bad.nonzero().flatten()[:10].tolist(),
        )
    return torch.where(bad, torch.zeros_like(r), r)


def pixcorr_per_image(recon: Tensor, gt: Tensor, size: int = LOW_LEVEL_SIZE) -> Tensor:
    """PixCorr of each image pair: recon, gt [N, 3, H, W] in [0, 1] → [N] Pearson r."""
    check_image_pair(recon, gt)
    scores = []
    # Chunks bound memory: 200 stimuli at 425 px in float64 would need several GB at once.
    for start in range(0, recon.shape[0], _CHUNK):
        r = resize_square(recon[start : start + _CHUNK], size).flatten(1)
        g = resize_square(gt[start : start + _CHUNK], size).flatten(1)
        scores.append(rowwise_pearson(g, r).cpu())
    return undefined_as_zero(torch.cat(scores), "PixCorr")


def pixcorr(recon: Tensor, gt: Tensor, size: int = LOW_LEVEL_SIZE) -> float:
    """Mean PixCorr (↑, 1 for identical images, ≈0 for unrelated ones)."""
    return float(pixcorr_per_image(recon, gt, size).mean())


def ssim_per_image(recon: Tensor, gt: Tensor, size: int = LOW_LEVEL_SIZE) -> Tensor:
    """SSIM of each image pair: recon, gt [N, 3, H, W] in [0, 1] → [N] (float64)."""
    check_image_pair(recon, gt)
    scores = []
    for start in range(0, recon.shape[0], _CHUNK):
        r = _to_gray(resize_square(recon[start : start + _CHUNK], size))
        g = _to_gray(resize_square(gt[start : start + _CHUNK], size))
        scores += [
            structural_similarity(
                ri,
                gi,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            for ri, gi in zip(r, g, strict=True)
        ]
    return torch.tensor(scores, dtype=torch.float64)


def ssim(recon: Tensor, gt: Tensor, size: int = LOW_LEVEL_SIZE) -> float:
    """Mean SSIM (↑, 1 for identical images)."""
    return float(ssim_per_image(recon, gt, size).mean())


def _to_gray(images: Tensor) -> np.ndarray:
    """[N, 3, H, W] → [N, H, W] float64 luminance via skimage (ITU-R BT.709 weights)."""
    hwc = images.clamp(0, 1).permute(0, 2, 3, 1).cpu().to(torch.float64).numpy()
    return rgb2gray(hwc)
