"""A self-contained HTML evaluation report and PNG image grids.

The report opens from disk with no server and no network: CSS is inline and every image (the
stimulus | reconstruction grid, the retrieval similarity plot) is embedded as a base64 PNG.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

import sgdm_dist
from sgdm_dist.atomic import atomic_write
from sgdm_dist.config import flatten
from sgdm_dist.metrics.suite import HIGHER_IS_BETTER, RANDOM_INIT_SUFFIX

_LABEL_BAND = 14  # px under each grid cell for its label
_PADDING = 2


def image_grid(
    images: Tensor, nrow: int = 8, labels: Sequence[str] | None = None, padding: int = _PADDING
) -> Image.Image:
    """images [N, 3, H, W] in [0, 1] → one RGB PIL image, ``nrow`` images per row, optional labels."""
    _check_images(images, "images")
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
    atomic_write(path, lambda tmp: tmp.write_bytes(_png_bytes(grid)))
    return path


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
    _check_images(images, "images")
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
    _check_images(recons.flatten(0, 1), "recons")
    n = min(images.shape[0], max_rows)
    n_rec = recons.shape[1]
    if recon_labels is not None and len(recon_labels) != n_rec:
        raise ValueError(f"recon_labels has {len(recon_labels)} entries for {n_rec} recons")
    groups_per_row = max(1, max_columns // (1 + n_rec))
    cells = []
    labels = []
    for i in range(n):
        cells.append(_fit(images[i], cell))
        labels.append(f"stimulus {i}")
        for r in range(n_rec):
            cells.append(_fit(recons[i, r], cell))
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
    _check_images(candidates, "candidates")
    if similarity.shape[1] != candidates.shape[0]:
        raise ValueError(
            f"similarity has {similarity.shape[1]} candidates, candidates {candidates.shape[0]}"
        )
    k = min(k, candidates.shape[0])
    picks = torch.linspace(0, similarity.shape[0] - 1, min(rows, similarity.shape[0])).round()
    cells, labels = [], []
    for row in picks.long().tolist():
        truth = int(target_index[row])
        cells.append(_fit(candidates[truth], 96))
        labels.append(f"trial {row}: seen")
        for rank, c in enumerate(similarity[row].topk(k).indices.tolist(), 1):
            cell = _fit(candidates[c], 96)
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


def write_report(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    images: Tensor | None = None,
    recons: Tensor | None = None,
    similarity: Tensor | None = None,
    title: str = "sgdm-dist evaluation",
    max_images: int = 24,
    target_index: Tensor | None = None,
    recon_labels: Sequence[str] | None = None,
    retrieval_images: Tensor | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (self-contained) and return its path.

    metrics: scalars, and/or groups {name: {metric: value}}; a group whose values are all dicts
    (e.g. {subject: {metric: value}}) becomes one comparison table with a row per entry.
    ``<metric>.random_init`` flags mark metrics from randomly initialised backbones.
    images/recons/recon_labels: see ``comparison_grid``; similarity: [N, M] retrieval similarities,
    with target_index [N] the true candidate of each row (circled in the plot); retrieval_images
    [M, 3, H, W]: the candidates, for the retrieval-examples figure (trial → its top-5 images).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    random_metrics = sorted(_random_init_metrics(metrics))
    parts = [f"<h1>{_e(title)}</h1>", _meta_line()]
    if random_metrics:
        parts.append(
            '<p class="warn"><b>Random-init backbones:</b> '
            + _e(", ".join(random_metrics))
            + " were computed with randomly initialised networks (no weights found). They test the "
            "pipeline only and are NOT comparable with published numbers.</p>"
        )
    parts.append("<h2>Metrics</h2>")
    for name, group in _groups(metrics):
        parts.append(_table(name, group, set(random_metrics)))
    if images is not None and recons is not None:
        grid = comparison_grid(images, recons, max_rows=max_images, recon_labels=recon_labels)
        shown = min(images.shape[0], max_images)
        parts.append("<h2>Reconstructions</h2>")
        parts.append(
            _figure(grid, f"stimulus | reconstruction, first {shown} of {images.shape[0]}")
        )
    elif images is not None or recons is not None:
        raise ValueError("write_report needs both images and recons for the image grid, or neither")
    if similarity is not None:
        parts.append("<h2>Retrieval</h2>")
        parts.append(
            _figure(
                similarity_plot(similarity, target_index),
                "cosine similarity; red: top-1 pick"
                + ("; white circle: true image" if target_index is not None else ""),
            )
        )
        if retrieval_images is not None and target_index is not None:
            parts.append(
                _figure(
                    retrieval_examples(similarity, target_index, retrieval_images),
                    "retrieval examples: the image seen, then the trial's top-5 candidates "
                    "(green frame: the true image)",
                )
            )
    page = _PAGE.format(title=_e(title), body="\n".join(parts))
    path = out_dir / "report.html"
    atomic_write(path, lambda tmp: tmp.write_bytes(page.encode("utf-8")))
    return path


# --------------------------------------------------------------------------------------- helpers

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
caption {{ text-align: left; font-weight: bold; padding: 0.3em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; }}
.warn {{ background: #fff3cd; border: 1px solid #e0b400; padding: 0.6em; }}
.meta {{ color: #666; font-size: 0.9em; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; image-rendering: auto; }}
</style></head>
<body>
{body}
</body></html>
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _meta_line() -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f'<p class="meta">sgdm-dist {_e(sgdm_dist.__version__)} · generated {now}</p>'


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not _is_number(value):
        return _e(value)
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4f}"


def _label(metric: str, random_metrics: set[str]) -> str:
    better = HIGHER_IS_BETTER.get(metric)
    arrow = "" if better is None else (" ↑" if better else " ↓")
    flag = " (random init)" if metric in random_metrics else ""
    return _e(metric + arrow + flag)


def _random_init_metrics(tree: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for key, value in tree.items():
        if isinstance(value, Mapping):
            found |= _random_init_metrics(value)
        elif key.endswith(RANDOM_INIT_SUFFIX) and value:
            found.add(key.removesuffix(RANDOM_INIT_SUFFIX))
    return found


def _groups(metrics: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Top-level scalars → "Summary"; each top-level dict → its own table, in input order."""
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, Mapping)}
    groups = [(k, v) for k, v in metrics.items() if isinstance(v, Mapping)]
    return ([("Summary", scalars)] if scalars else []) + groups


def _table(name: str, group: Mapping[str, Any], random_metrics: set[str]) -> str:
    if group and all(isinstance(v, Mapping) for v in group.values()):
        return _matrix_table(name, group, random_metrics)
    flat = {k: v for k, v in flatten(group).items() if not k.endswith(RANDOM_INIT_SUFFIX)}
    chance = {k: v for k, v in flat.items() if k.startswith("chance_")}
    rows = []
    for key, value in flat.items():
        if key in chance:
            continue
        cells = f"<td>{_label(key, random_metrics)}</td><td>{_fmt(value)}</td>"
        if chance:
            cells += f"<td>{_fmt(chance.get('chance_' + key, ''))}</td>"
        rows.append(f"<tr>{cells}</tr>")
    head = "<th>metric</th><th>value</th>" + ("<th>chance</th>" if chance else "")
    return (
        f"<table><caption>{_e(name)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _matrix_table(
    name: str, group: Mapping[str, Mapping[str, Any]], random_metrics: set[str]
) -> str:
    """Rows = entries (e.g. subjects), columns = the union of their metrics in first-seen order."""
    flat_rows = {
        row: {k: v for k, v in flatten(vals).items() if not k.endswith(RANDOM_INIT_SUFFIX)}
        for row, vals in group.items()
    }
    columns: list[str] = []
    for vals in flat_rows.values():
        columns += [k for k in vals if k not in columns]
    head = "<th></th>" + "".join(f"<th>{_label(c, random_metrics)}</th>" for c in columns)
    body = "".join(
        f"<tr><td>{_e(row)}</td>"
        + "".join(f"<td>{_fmt(vals.get(c, ''))}</td>" for c in columns)
        + "</tr>"
        for row, vals in flat_rows.items()
    )
    return (
        f"<table><caption>{_e(name)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _figure(image: Image.Image, caption: str) -> str:
    data = base64.b64encode(_png_bytes(image)).decode("ascii")
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _check_images(images: Tensor, name: str) -> None:
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


def _fit(image: Tensor, size: int) -> Tensor:
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
