"""``sgdm launch``: Kubernetes jobs for training and tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sgdm_dist.cli.common import not_implemented


def launch(
    target: Annotated[str, typer.Argument(help="k8s | status | logs | delete.")],
    config: Annotated[Path | None, typer.Option(help="Experiment YAML for the job.")] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the manifests instead of submitting them.")
    ] = False,
) -> None:
    """Render and submit multi-node training (PyTorchJob) and tuning (RayJob) to Kubernetes."""
    not_implemented("launch", 9)
