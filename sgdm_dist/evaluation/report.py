"""A self-contained HTML evaluation report and PNG image grids.

The report opens from disk with no server and no network: CSS is inline and every image (the
stimulus | reconstruction grid, the retrieval similarity plot) is embedded as a base64 PNG.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor

import sgdm_dist
from sgdm_dist.config import flatten
from sgdm_dist.evaluation.figures import (
    comparison_grid,
    retrieval_examples,
    similarity_plot,
)
from sgdm_dist.metrics.suite import HIGHER_IS_BETTER, RANDOM_INIT_SUFFIX
from sgdm_dist.utils.atomic import atomic_write
from sgdm_dist.utils.grids import png_bytes


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
        parts.append(_random_init_warning(random_metrics))
    parts.append("<h2>Metrics</h2>")
    for name, group in _groups(metrics):
        parts.append(_table(name, group, set(random_metrics)))
    parts += _reconstruction_section(images, recons, max_images, recon_labels)
    if similarity is not None:
        parts += _retrieval_section(similarity, target_index, retrieval_images)
    page = _PAGE.format(title=_e(title), body="\n".join(parts))
    path = out_dir / "report.html"
    atomic_write(path, lambda tmp: tmp.write_bytes(page.encode("utf-8")))
    return path


def _random_init_warning(random_metrics: list[str]) -> str:
    """The banner that says which metrics came from randomly initialised backbones."""
    return (
        '<p class="warn"><b>Random-init backbones:</b> '
        + _e(", ".join(random_metrics))
        + " were computed with randomly initialised networks (no weights found). They test the "
        "pipeline only and are NOT comparable with published numbers.</p>"
    )


def _reconstruction_section(
    images: Tensor | None,
    recons: Tensor | None,
    max_images: int,
    recon_labels: Sequence[str] | None,
) -> list[str]:
    """The stimulus | reconstruction grid (images [N, 3, H, W], recons per ``comparison_grid``);
    nothing when neither is given."""
    if images is not None and recons is not None:
        grid = comparison_grid(images, recons, max_rows=max_images, recon_labels=recon_labels)
        shown = min(images.shape[0], max_images)
        return [
            "<h2>Reconstructions</h2>",
            _figure(grid, f"stimulus | reconstruction, first {shown} of {images.shape[0]}"),
        ]
    if images is not None or recons is not None:
        raise ValueError("write_report needs both images and recons for the image grid, or neither")
    return []


def _retrieval_section(
    similarity: Tensor, target_index: Tensor | None, retrieval_images: Tensor | None
) -> list[str]:
    """The similarity plot (similarity [N, M], target_index [N]) and, with the candidates
    [M, 3, H, W] and targets, the retrieval examples."""
    parts = [
        "<h2>Retrieval</h2>",
        _figure(
            similarity_plot(similarity, target_index),
            "cosine similarity; red: top-1 pick"
            + ("; white circle: true image" if target_index is not None else ""),
        ),
    ]
    if retrieval_images is not None and target_index is not None:
        parts.append(
            _figure(
                retrieval_examples(similarity, target_index, retrieval_images),
                "retrieval examples: the image seen, then the trial's top-5 candidates "
                "(green frame: the true image)",
            )
        )
    return parts


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
    data = base64.b64encode(png_bytes(image)).decode("ascii")
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )
