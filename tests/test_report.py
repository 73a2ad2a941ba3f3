"""The HTML report and PNG grids: parsed with the stdlib, rendered in headless Chromium."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sgdm_dist.evaluation.figures import comparison_grid
from sgdm_dist.evaluation.report import write_report
from sgdm_dist.utils.grids import image_grid, save_image_grid

MAGENTA = (1.0, 0.0, 1.0)


class _Collector(HTMLParser):
    """Tables (caption + cell texts), images (src) and every external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self._text: list[str] | None = None
        self._in_caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"caption": "", "cells": []})
        elif tag == "caption":
            self._in_caption = True
        elif tag in ("td", "th"):
            self._text = []
        elif tag == "img":
            self.images.append(a.get("src") or "")
        for key in ("src", "href"):
            if a.get(key) and not str(a[key]).startswith("data:"):
                self.external.append(str(a[key]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption":
            self._in_caption = False
        elif tag in ("td", "th") and self._text is not None:
            self.tables[-1]["cells"].append("".join(self._text).strip())
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self.tables[-1]["caption"] += data
        if self._text is not None:
            self._text.append(data)


def _metrics() -> dict:
    return {
        "checkpoint": "outputs/tiny/ckpt-20",
        "retrieval": {"top1_2way": 0.75, "chance_top1_2way": 0.5, "top1_6way": 0.5},
        "reconstruction": {
            "PixCorr": 0.16,
            "AlexNet(2)": 0.776,
            "AlexNet(2).random_init": 1.0,
            "SSIM": 0.345,
        },
        "per_subject": {
            "sub-01": {"top1_2way": 0.7, "top1_6way": 0.4},
            "sub-02": {"top1_2way": 0.8, "top1_6way": 0.6},
        },
    }


def _stimuli(n: int = 6) -> torch.Tensor:
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images[0] = torch.tensor(MAGENTA)[:, None, None]  # a colour to find in the rendered page
    return images


@pytest.fixture
def report(tmp_path: Path) -> Path:
    images = _stimuli()
    recons = (images + 0.1 * torch.randn_like(images)).clamp(0, 1)
    similarity = torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
    return write_report(
        tmp_path / "eval", _metrics(), images, recons, similarity, title="Tiny <run>"
    )


def test_report_is_self_contained_with_every_table_and_image(report: Path) -> None:
    assert report.name == "report.html"
    assert [p.name for p in report.parent.iterdir()] == ["report.html"]  # no temp leftovers
    assert report.stat().st_mode & 0o444 == 0o444  # readable by all, unlike a mkstemp file
    text = report.read_text(encoding="utf-8")
    assert "<title>Tiny &lt;run&gt;</title>" in text  # escaped
    parsed = _Collector()
    parsed.feed(text)
    assert parsed.external == []  # opens with no server and no network
    assert [t["caption"] for t in parsed.tables] == [
        "Summary",
        "retrieval",
        "reconstruction",
        "per_subject",
    ]
    summary, retrieval, recon, subjects = (t["cells"] for t in parsed.tables)
    assert summary == ["metric", "value", "checkpoint", "outputs/tiny/ckpt-20"]
    # Chance levels sit beside their accuracy, not as rows of their own.
    assert retrieval == [
        *("metric", "value", "chance"),
        *("top1_2way", "0.7500", "0.5000"),
        *("top1_6way", "0.5000", ""),
    ]
    assert "AlexNet(2) ↑ (random init)" in recon and "SSIM ↑" in recon
    assert not any("random_init" in c for c in recon)
    assert subjects[:3] == ["", "top1_2way", "top1_6way"] and subjects[3:6] == [
        "sub-01",
        "0.7000",
        "0.4000",
    ]
    assert "NOT comparable with published numbers" in text

    assert len(parsed.images) == 2  # the reconstruction grid and the similarity plot
    sizes = []
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        png.load()
        sizes.append(png.size)
    # Grid: 4 (stimulus | reconstruction) pairs per row → 8 × 2 cells of 128 px plus label bands.
    assert sizes[0] == (2 + 8 * 130, 2 + 2 * (128 + 14 + 2))
    assert sizes[1] == (640, 520)


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is required: apt-get install -y chromium (Debian package)"
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            report.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400)
    pixels = torch.from_numpy(np.asarray(img).reshape(-1, 3).astype(np.int16))
    # The magenta stimulus decoded from its base64 PNG and was painted as a 128 px cell (≥ 1 %).
    magenta = ((pixels[:, 0] > 240) & (pixels[:, 1] < 15) & (pixels[:, 2] > 240)).sum()
    assert magenta >= 128 * 128
    # The warning banner's background colour (#fff3cd) is on the page too.
    banner = ((pixels[:, 0] == 255) & (pixels[:, 1] == 243) & (pixels[:, 2] == 205)).sum()
    assert banner > 1000


def test_save_image_grid_places_images_and_labels(tmp_path: Path) -> None:
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    images = colours[:, :, None, None].expand(-1, -1, 16, 16).contiguous()
    path = save_image_grid(images, tmp_path / "grid.png", nrow=2, labels=["red", "green", "blue"])
    grid = Image.open(path).convert("RGB")
    cell_h = 16 + 14  # image + label band
    assert grid.size == (2 + 2 * 18, 2 + 2 * (cell_h + 2))
    assert grid.getpixel((2 + 8, 2 + 8)) == (255, 0, 0)
    assert grid.getpixel((2 + 18 + 8, 2 + 8)) == (0, 255, 0)
    assert grid.getpixel((2 + 8, 2 + cell_h + 2 + 8)) == (0, 0, 255)
    band = grid.crop((2, 2 + 16, 2 + 16, 2 + cell_h))
    assert np.asarray(band.convert("L")).min() < 128  # label text drawn in the band
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_grid_without_labels_and_with_several_samples() -> None:
    images = torch.rand(4, 3, 8, 8)
    assert image_grid(images, nrow=4, padding=0).size == (32, 8)
    recons = torch.rand(4, 3, 3, 16, 16)  # 3 samples per stimulus
    grid = comparison_grid(images, recons, max_rows=3, cell=32)
    # 2 groups of 4 cells fit in 8 columns: stimuli 0, 1 on the first row, stimulus 2 on the second.
    assert grid.size == (2 + 8 * 34, 2 + 2 * (32 + 14 + 2))


def test_grid_columns_carry_the_given_subject_labels() -> None:
    images, recons = torch.ones(2, 3, 16, 16), torch.ones(2, 2, 3, 16, 16)
    named = comparison_grid(images, recons, cell=32, recon_labels=["sub-01", "sub-02"])
    default = comparison_grid(images, recons, cell=32)
    assert named.size == default.size
    band = (2 + 34, 2 + 32, 2 + 3 * 34, 2 + 32 + 14)  # label bands of the two recon columns
    assert named.crop(band).tobytes() != default.crop(band).tobytes()
    with pytest.raises(ValueError, match="recon_labels has 1 entries for 2 recons"):
        comparison_grid(images, recons, recon_labels=["sub-01"])


def test_retrieval_examples_frame_the_true_image_among_the_top5() -> None:
    from sgdm_dist.evaluation.figures import retrieval_examples

    candidates = torch.ones(6, 3, 8, 8) * 0.5
    similarity = torch.eye(6)[[0, 1]] + torch.linspace(0, 0.1, 6)  # row 0 → 0 first, row 1 → 1
    similarity[1, 1] = -1.0  # trial 1: its true image ranks last, outside the top 5
    grid = retrieval_examples(similarity, torch.tensor([0, 1]), candidates, rows=2, k=5)
    cell = 96 + 14 + 2
    assert grid.size == (2 + 6 * 98, 2 + 2 * cell)
    green = (0, 204, 0)
    assert grid.getpixel((2 + 98 + 1, 2 + 1)) == green  # row 0: top-1 is the true image, framed
    row1 = [grid.getpixel((2 + 98 * c + 1, 2 + cell + 1)) for c in range(1, 6)]
    assert green not in row1  # row 1: not among the top 5, nothing framed
    assert grid.getpixel((2 + 98 * 5 + 1, 2 + 1)) != green


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": ["a"]}, "labels has 1 entries for 2 images"),
        ({"images": torch.rand(2, 8, 8)}, r"images must be a \[N, 3, H, W\] tensor"),
        ({"images": torch.rand(2, 3, 8, 8) * 2}, r"images must hold values in \[0, 1\]"),
    ],
)
def test_grid_bad_input(kwargs: dict, match: str, tmp_path: Path) -> None:
    args = {"images": torch.rand(2, 3, 8, 8), "path": tmp_path / "g.png", "nrow": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        save_image_grid(**args)
    assert not (tmp_path / "g.png").exists()


def test_report_needs_images_and_recons_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both images and recons"):
        write_report(tmp_path, {"a": 1.0}, images=torch.rand(2, 3, 8, 8))
    assert not (tmp_path / "report.html").exists()
