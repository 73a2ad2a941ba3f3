"""Labelled PNG image grids: images [N, 3, H, W] in [0, 1] → one PIL image or file (written
atomically)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

from sgdm_dist.utils.atomic import atomic_write

_LABEL_BAND = 14  # px under each grid cell for its label


_PADDING = 2


def image_grid(
    images: Tensor, nrow: int = 8, labels: Sequence[str] | None = None, padding: int = _PADDING
) -> Image.Image:
    """images [N, 3, H, W] in [0, 1] → one RGB PIL image, ``nrow`` images per row, optional labels."""
    check_images(images, "images")
    if labels is not None and len(labels) != images.shape[0]:
        raise ValueError(f"labels has {len(labels)} entries for {images.shape[0]} images")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    x = images.detach().float().cpu().clamp(0, 1)
    n, _, h, w = x.shape
    if labels is not None:
        x = torch.cat([x, torch.ones(n, 3, _LABEL_BAND, w)], dim=2)  # white label band
    grid = make_grid(x, nrow=nrow, padding=padding, pad_value=1.0)
    pil = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy(), mode="RGB")
    if labels is not None:
        _draw_labels(pil, labels, nrow, cell=(h + _LABEL_BAND, w), image_h=h, padding=padding)
    return pil


def save_image_grid(
    images: Tensor, path: str | Path, nrow: int = 8, labels: Sequence[str] | None = None
) -> Path:
    """Write ``image_grid(images, nrow, labels)`` as a PNG (atomically) and return its path."""
    path = Path(path)
    grid = image_grid(images, nrow=nrow, labels=labels)
    atomic_write(path, lambda tmp: tmp.write_bytes(png_bytes(grid)))
    return path


def check_images(images: Tensor, name: str) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a [N, 3, H, W] tensor, got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not images.dtype.is_floating_point:
        raise ValueError(f"{name} must be float in [0, 1], got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{name} must hold values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")


def fit_square(image: Tensor, size: int) -> Tensor:
    """[3, H, W] → [3, size, size] for display (aspect kept by centre crop)."""
    out = TF.resize(image.float()[None], [size], antialias=True)
    return TF.center_crop(out, [size, size])[0].clamp(0, 1)


def _draw_labels(
    pil: Image.Image,
    labels: Sequence[str],
    nrow: int,
    cell: tuple[int, int],
    image_h: int,
    padding: int,
) -> None:
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=10)
    cell_h, cell_w = cell
    for i, text in enumerate(labels):
        row, col = divmod(i, nrow)
        x = col * (cell_w + padding) + padding + 2
        y = row * (cell_h + padding) + padding + image_h + 1
        while text and draw.textlength(text, font=font) > cell_w - 4:
            text = text[:-1]  # clip labels wider than the cell
        draw.text((x, y), text, fill=(0, 0, 0), font=font)


def png_bytes(image: Image.Image) -> bytes:
    """The PNG encoding of ``image``."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
