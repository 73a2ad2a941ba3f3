"""Evaluation figures: the stimulus | reconstruction comparison grid, the retrieval similarity plot and
retrieval examples (matplotlib rendered off-screen, PIL images out)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch import Tensor

from sgdm_dist.utils.grids import check_images, fit_square, image_grid


def comparison_grid(
    images: Tensor,
    recons: Tensor,
    max_rows: int = 24,
    cell: int = 128,
    max_columns: int = 8,
    recon_labels: Sequence[str] | None = None,
) -> Image.Image:
    """Stimulus | reconstruction(s) groups, as many side by side as fit in ``max_columns`` cells.

    images: [N, 3, H, W]; recons: [N, 3, H', W'] or [N, R, 3, H', W'] (R samples per stimulus, e.g.
    one per subject, named by ``recon_labels`` [R]), both in [0, 1]. Every cell is resized to
    ``cell`` px so small reconstructions stay visible.
    """
    check_images(images, "images")
    if recons.ndim == 4:
        recons = recons[:, None]
    if recons.ndim != 5 or recons.shape[2] != 3:
        raise ValueError(
            f"recons must be [N, 3, H, W] or [N, R, 3, H, W], got {tuple(recons.shape)}"
        )
    if recons.shape[0] != images.shape[0]:
        raise ValueError(
            f"images and recons must hold the same number of stimuli, got {images.shape[0]} "
            f"and {recons.shape[0]}"
        )
    check_images(recons.flatten(0, 1), "recons")
    n = min(images.shape[0], max_rows)
    n_rec = recons.shape[1]
    if recon_labels is not None and len(recon_labels) != n_rec:
        raise ValueError(f"recon_labels has {len(recon_labels)} entries for {n_rec} recons")
    groups_per_row = max(1, max_columns // (1 + n_rec))
    cells = []
    labels = []
    for i in range(n):
        cells.append(fit_square(images[i], cell))
        labels.append(f"stimulus {i}")
        for r in range(n_rec):
            cells.append(fit_square(recons[i, r], cell))
            if recon_labels is not None:
                labels.append(recon_labels[r])
            else:
                labels.append(f"recon {r}" if n_rec > 1 else "reconstruction")
    return image_grid(torch.stack(cells), nrow=groups_per_row * (1 + n_rec), labels=labels)


def similarity_plot(
    similarity: Tensor, target_index: Tensor | None = None, max_rows: int = 400
) -> Image.Image:
    """Heat map of a retrieval similarity matrix [N predictions, M candidates].

    Top-1 picks are marked red; with ``target_index`` [N] the true candidates are circled in white.
    """
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be [N, M], got {tuple(similarity.shape)}")
    if target_index is not None and tuple(target_index.shape) != (similarity.shape[0],):
        raise ValueError(
            f"target_index must have shape [{similarity.shape[0]}], got {tuple(target_index.shape)}"
        )
    sim = similarity.detach().double().cpu()
    stride = max(1, math.ceil(sim.shape[0] / max_rows))
    sim = sim[::stride]
    fig = Figure(figsize=(6.4, 5.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(sim.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    picks = sim.argmax(dim=1).numpy()
    ax.scatter(picks, range(len(picks)), s=6, c="red", marker="s", label="top-1 pick")
    if target_index is not None:
        truth = target_index.cpu()[::stride].numpy()
        ax.scatter(
            truth,
            range(len(truth)),
            s=40,
            facecolors="none",
            edgecolors="white",
            label="true image",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("candidate image")
    ax.set_ylabel("prediction" + (f" (every {stride}th)" if stride > 1 else ""))
    ax.set_title("Retrieval: cosine similarity")
    ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(im, ax=ax, label="cosine similarity")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def retrieval_examples(
    similarity: Tensor, target_index: Tensor, candidates: Tensor, rows: int = 8, k: int = 5
) -> Image.Image:
    """One row per prediction (evenly spaced over ``similarity``'s rows): the image seen, then the
    top-``k`` candidates by similarity, the true one framed in green. similarity [N, M],
    target_index [N], candidates [M, 3, H, W] in [0, 1]."""
    check_images(candidates, "candidates")
    if similarity.shape[1] != candidates.shape[0]:
        raise ValueError(
            f"similarity has {similarity.shape[1]} candidates, candidates {candidates.shape[0]}"
        )
    k = min(k, candidates.shape[0])
    picks = torch.linspace(0, similarity.shape[0] - 1, min(rows, similarity.shape[0])).round()
    cells, labels = [], []
    for row in picks.long().tolist():
        truth = int(target_index[row])
        cells.append(fit_square(candidates[truth], 96))
        labels.append(f"trial {row}: seen")
        for rank, c in enumerate(similarity[row].topk(k).indices.tolist(), 1):
            cell = fit_square(candidates[c], 96)
            if c == truth:
                cell = _frame(cell, (0.0, 0.8, 0.0))
            cells.append(cell)
            labels.append(f"top-{rank}" + (" (true)" if c == truth else ""))
    return image_grid(torch.stack(cells), nrow=k + 1, labels=labels)


def _frame(image: Tensor, rgb: tuple[float, float, float], width: int = 5) -> Tensor:
    out = image.clone()
    colour = torch.tensor(rgb)[:, None, None]
    out[:, :width], out[:, -width:] = colour, colour
    out[:, :, :width], out[:, :, -width:] = colour, colour
    return out
