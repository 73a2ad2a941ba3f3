"""``sgdm evaluate`` and ``sgdm reconstruct``: metrics, reports and images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sgdm_dist.cli.common import ConfigArg, OverridesArg, not_implemented


def evaluate(
    config: ConfigArg,
    overrides: OverridesArg = None,
    model: Annotated[
        str | None, typer.Option(help="Checkpoint folder or models:/NAME@ALIAS.")
    ] = None,
) -> None:
    """Retrieval and reconstruction metrics on the test split; writes metrics.json and an HTML report."""
    not_implemented("evaluate", 6)


def reconstruct(
    model: Annotated[str, typer.Option(help="Checkpoint folder or models:/NAME@ALIAS.")],
    eeg: Annotated[str, typer.Option(help="Shards (path/URL pattern) or an EEG .npy file.")],
    out: Annotated[Path, typer.Option(help="Output folder for PNGs and the grid.")],
) -> None:
    """Reconstruct images from EEG with classifier-free guidance; writes PNGs and a grid."""
    not_implemented("reconstruct", 6)
