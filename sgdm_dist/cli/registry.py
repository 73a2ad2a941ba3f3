"""``sgdm register`` and ``sgdm pull``: the MLflow model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sgdm_dist.cli.common import not_implemented


def register(
    run: Annotated[
        str, typer.Option(help="MLflow run id (or checkpoint folder) holding the trained model.")
    ],
    name: Annotated[str, typer.Option(help="Registered model name.")] = "sgdm",
    alias: Annotated[
        str | None, typer.Option(help="Alias to point at the new version, e.g. champion.")
    ] = None,
) -> None:
    """Register a trained model in the MLflow registry and manage its aliases."""
    not_implemented("register", 8)


def pull(
    uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION.")],
    to: Annotated[Path, typer.Option(help="Destination folder.")],
) -> None:
    """Download a registered model, verify its checksums and print what was pulled."""
    not_implemented("pull", 8)
