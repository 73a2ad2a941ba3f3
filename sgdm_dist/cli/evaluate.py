"""``sgdm evaluate`` and ``sgdm reconstruct``: metrics, reports and images."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from sgdm_dist.cli.common import EXIT_BAD_INPUT, ConfigArg, OverridesArg, resolve


class SamplerChoice(StrEnum):
    ddim = "ddim"
    dpmpp = "dpm++"


def evaluate(
    config: ConfigArg,
    overrides: OverridesArg = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model folder or models:/NAME@ALIAS; default {experiment.output_dir}/model."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder; default {experiment.output_dir}/evaluation."),
    ] = None,
) -> None:
    """Retrieval and reconstruction metrics on the test split; writes metrics.json and an HTML report.

    Example: `sgdm evaluate configs/tiny.yaml --model outputs/tiny/model`.
    """
    cfg = resolve(config, overrides)
    # Heavy imports after the config is known to be valid, so config errors stay instant.
    from sgdm_dist.utils.threads import HostInfo, configure_threads

    configure_threads(HostInfo.from_env(), cfg.experiment.threads)
    from rich.console import Console

    from sgdm_dist.data import DataError
    from sgdm_dist.evaluation.evaluate import evaluate as run_evaluation
    from sgdm_dist.evaluation.scoring import EvaluationError
    from sgdm_dist.evaluation.tables import comparison_tables

    try:
        result = run_evaluation(
            cfg,
            model or str(cfg.experiment.output_dir / "model"),
            out_dir=out,
            env_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
        )
    except (EvaluationError, DataError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    from sgdm_dist.baselines.checks import summary_line

    console = Console()
    for table in comparison_tables(result.metrics):
        console.print(table)
    console.print(f"retrieval headline: {result.metrics['summary']['retrieval_mode']}")
    console.print(summary_line(result.metrics["decoding"]))
    console.print(f"metrics: {result.metrics_path}\nreport:  {result.report_path}")
    if result.run_id:
        console.print(f"MLflow run {result.run_id}")


# reconstruct's longer options, named here so its signature reads as a list of inputs.
EegOpt = Annotated[
    str,
    typer.Option(help="Shard dir (path/URL with manifest.json) or an EEG .npy file [N, C, T]."),
]
StrengthOpt = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Start from the EEG's predicted structure noised this far (1: pure noise, 0: the "
        "structure decoded); default: the model's model.structure_strength.",
    ),
]
SubjectOpt = Annotated[
    int | None,
    typer.Option(
        help="Shards: only this subject. .npy: the subject of every row (default 0, "
        "subject-agnostic)."
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option(min=1, help="Only the first N images per subject (or rows).")
]
VaeOpt = Annotated[
    str | None,
    typer.Option(help="VAE folder or shard dir; default: the model's vae/, else the shards'."),
]
TrackingUriOpt = Annotated[
    str | None,
    typer.Option(help="MLflow URI for models:/ references; default $MLFLOW_TRACKING_URI."),
]


def reconstruct(
    model: Annotated[str, typer.Option(help="Model folder or models:/NAME@ALIAS.")],
    eeg: EegOpt,
    out: Annotated[Path, typer.Option(help="Output folder for PNGs and the grid.")],
    steps: Annotated[int, typer.Option(min=1, help="Sampler steps.")] = 25,
    guidance_scale: Annotated[float, typer.Option(min=0.0, help="Classifier-free guidance.")] = 3.0,
    scheduler: Annotated[SamplerChoice, typer.Option(help="Sampler.")] = SamplerChoice.ddim,
    strength: StrengthOpt = None,
    seed: Annotated[int, typer.Option(help="Same seed and batch size → identical images.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="EEG rows per sampling batch.")] = 16,
    subject: SubjectOpt = None,
    split: Annotated[str, typer.Option(help="Shard split to reconstruct.")] = "test",
    limit: LimitOpt = None,
    vae: VaeOpt = None,
    device: Annotated[str | None, typer.Option(help="torch device; default cuda if any.")] = None,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Reconstruct images from EEG with classifier-free guidance; writes PNGs and a grid.

    Shards: one image per stimulus and subject from the repetition-averaged EEG (sub-XX/NNNNN.png)
    and grid.png (stimulus | subjects). A .npy file: one image per row (row-NNNNN.png).
    reconstructions.json lists every image with its subject, image index and settings.
    """
    from sgdm_dist.utils.threads import HostInfo, configure_threads

    configure_threads(HostInfo.from_env())
    from sgdm_dist.data import DataError
    from sgdm_dist.reconstruct.model import ReconstructError
    from sgdm_dist.reconstruct.run import reconstruct_to_dir
    from sgdm_dist.reconstruct.sampling import SamplingOptions

    options = SamplingOptions(
        steps=steps,
        guidance_scale=guidance_scale,
        scheduler=scheduler.value,
        seed=seed,
        batch_size=batch_size,
        strength=strength,
    )
    try:
        result = reconstruct_to_dir(
            model,
            eeg,
            out,
            options,
            subject=subject,
            split=split,
            limit=limit,
            vae=vae,
            tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
            device=device,
        )
    except (ReconstructError, DataError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    typer.echo(f"{len(result.files)} images in {result.out_dir}; grid {result.grid}")
