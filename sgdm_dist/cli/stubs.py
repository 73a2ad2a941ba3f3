"""Subcommands whose implementation lands with later issues.

Each keeps its final signature and help so ``sgdm --help`` already shows the whole product, and
says plainly that it is not implemented yet (exit code 3) instead of pretending to work.
"""

from __future__ import annotations

from pathlib import Path
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


def train(
    config: ConfigArg,
    overrides: OverridesArg = None,
    resume: Annotated[
        str | None, typer.Option(help="'auto' (latest complete checkpoint) or a checkpoint path.")
    ] = None,
) -> None:
    """Train the SGDM model with Accelerate (DDP, FSDP or DeepSpeed ZeRO-2/3); run under `accelerate launch`."""
    not_implemented("train", 5)


def tune(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Cross-subject hyper-parameter sweep with Ray Tune (leave-subject-out folds), tracked in MLflow."""
    not_implemented("tune", 7)


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


def launch(
    target: Annotated[str, typer.Argument(help="k8s | status | logs | delete.")],
    config: Annotated[Path | None, typer.Option(help="Experiment YAML for the job.")] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the manifests instead of submitting them.")
    ] = False,
) -> None:
    """Render and submit multi-node training (PyTorchJob) and tuning (RayJob) to Kubernetes."""
    not_implemented("launch", 9)
