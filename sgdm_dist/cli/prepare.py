"""``sgdm prepare``: raw EEG + images → preprocessed WebDataset shards + manifest."""

from __future__ import annotations

from typing import Annotated

import typer

from sgdm_dist.cli.common import ConfigArg, OverridesArg, not_implemented


def prepare(
    config: ConfigArg,
    overrides: OverridesArg = None,
    synthetic: Annotated[
        bool, typer.Option(help="First write the synthetic THINGS-like raw dataset.")
    ] = False,
) -> None:
    """Preprocess EEG with MNE, cache CLIP/VAE features and write WebDataset shards + manifest."""
    not_implemented("prepare", 3)
