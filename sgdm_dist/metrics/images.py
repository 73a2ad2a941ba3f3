"""Input checks and the resize every reconstruction metric starts with."""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

# Values this far outside [0, 1] are a wrong input range (e.g. [-1, 1] VAE output), not rounding.
_RANGE_TOLERANCE = 1e-3


def check_image_pair(recon: Tensor, gt: Tensor) -> None:
    """Both sets must be float [N, 3, H, W] in [0, 1] with the same N (sizes may differ)."""
    for name, x in (("recon", recon), ("gt", gt)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must have shape [N, 3, H, W], got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise ValueError(f"{name} must be a float tensor in [0, 1], got {x.dtype}")
        if x.numel() == 0:
            raise ValueError(f"{name} is empty: {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} has non-finite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
            raise ValueError(f"{name} must hold values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    if recon.shape[0] != gt.shape[0]:
        raise ValueError(
            f"recon and gt must hold the same number of images, got {recon.shape[0]} and {gt.shape[0]}"
        )


def resize_square(images: Tensor, size: int) -> Tensor:
    """[N, 3, H, W] → [N, 3, size, size]: bilinear resize of the shorter side, then a centre crop.

    For square stimuli (THINGS images are 500×500) this is the plain bilinear ``Resize(size)`` of the
    MindEye/ATM evaluation code; the crop only matters for non-square inputs.
    """
    out = TF.resize(
        images.float(), [size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True
    )
    if out.shape[-2:] != (size, size):
        out = TF.center_crop(out, [size, size])
    return out
