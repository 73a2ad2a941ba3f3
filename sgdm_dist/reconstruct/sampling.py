"""EEG → images: seeded sampling in batches (same seed and batch size → identical images), PNG files
and side-by-side comparison grids."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from sgdm_dist.models import SGDM
from sgdm_dist.utils.atomic import atomic_write
from sgdm_dist.utils.grids import fit_square, save_image_grid

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


GRID_COLUMNS = 8  # cells per grid row
GRID_MAX_ITEMS = 24  # stimuli (or EEG rows) shown in grid.png
GRID_CELL = 128  # px per grid cell: small reconstructions stay visible, large ones stay light


@dataclass(frozen=True)
class SamplingOptions:
    """How images are sampled: steps, CFG scale, sampler, seed and EEG rows per batch (same seed
    and batch size → identical images; see :func:`sample_images`)."""

    steps: int = 25
    guidance_scale: float = 3.0
    scheduler: Literal["ddim", "dpm++"] = "ddim"
    seed: int = 0
    batch_size: int = 16
    strength: float | None = None  # img2img start from the EEG's structure; None → model default


def sample_images(
    model: SGDM,
    eeg: Tensor,
    subject: Tensor,
    vae: AutoencoderKL,
    options: SamplingOptions,
    *,
    desc: str = "sampling",
    progress: bool = True,
) -> Tensor:
    """EEG [N, C, T] + model subject ids [N] → images [N, 3, H, W] float in [0, 1] on the CPU.

    The same seed and batch size give identical images. The model draws all noise up front, so
    another batch size starts from the same noise; batched float maths may then differ in the last
    bits (at most about one 8-bit level per pixel).
    """
    total = math.ceil(eeg.shape[0] / options.batch_size) * options.steps  # at most (img2img: fewer)
    with _denoising_progress(model, total, desc, progress):
        images = model.reconstruct(
            eeg,
            subject,
            vae=vae,
            steps=options.steps,
            guidance_scale=options.guidance_scale,
            scheduler=options.scheduler,
            seed=options.seed,
            batch_size=options.batch_size,
            strength=options.strength,
        )
    return images.float().cpu()


@contextlib.contextmanager
def _denoising_progress(model: SGDM, total: int, desc: str, enabled: bool) -> Iterator[None]:
    """A progress bar ticked by each UNet call (one per denoising step and batch), so sampling itself
    stays untouched."""
    bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled)

    def tick(*_: Any) -> None:  # a hook returning a value would replace the UNet's output
        bar.update(1)

    handle = model.unet.register_forward_hook(tick)
    try:
        yield
    finally:
        handle.remove()
        bar.close()


def save_png(image: Tensor, path: Path) -> Path:
    """image [3, H, W] float in [0, 1] → an 8-bit RGB PNG, written atomically (same pixels → same bytes)."""
    array = image.detach().float().cpu().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(array.numpy(), mode="RGB").save(buf, format="PNG")
    return atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


def save_comparison_grid(
    path: Path,
    columns: list[tuple[str, Tensor]],
    row_labels: list[str],
    max_rows: int = GRID_MAX_ITEMS,
) -> Path:
    """One row per item, one column per image set: ``columns`` = [(label, images [N, 3, H, W])], e.g.
    ("stimulus", ...), ("sub-01", ...). Cells are resized to ``GRID_CELL`` px; the first ``max_rows``
    items, as many side by side as fit in ``GRID_COLUMNS`` cells."""
    n = min(len(row_labels), max_rows)
    cells, labels = [], []
    for row in range(n):
        for label, images in columns:
            cells.append(fit_square(images[row], GRID_CELL))
            labels.append(f"{row_labels[row]} {label}" if label == "stimulus" else label)
    per_row = max(1, GRID_COLUMNS // len(columns))
    return save_image_grid(torch.stack(cells), path, nrow=per_row * len(columns), labels=labels)
