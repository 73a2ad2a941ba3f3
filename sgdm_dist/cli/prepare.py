"""``sgdm prepare``: raw EEG + images → preprocessed WebDataset shards + manifest."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sgdm_dist.cli.common import EXIT_BAD_INPUT, ConfigArg, OverridesArg, resolve


def prepare(
    config: ConfigArg,
    overrides: OverridesArg = None,
    synthetic: Annotated[
        bool, typer.Option(help="First write the synthetic THINGS-like raw dataset.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Delete shards made with other settings in data.shard_dir first.")
    ] = False,
) -> None:
    """Preprocess EEG with MNE, cache CLIP/VAE features and write WebDataset shards + manifest."""
    from sgdm_dist.data import DataError
    from sgdm_dist.data.manifest import manifest_hash
    from sgdm_dist.data.prepare import local_out_dir, summary_rows
    from sgdm_dist.data.prepare import prepare as run_prepare
    from sgdm_dist.utils.atomic import DiskFullError
    from sgdm_dist.utils.threads import HostInfo, configure_threads

    cfg = resolve(config, overrides)
    configure_threads(HostInfo.from_env(), cfg.experiment.threads)  # features: its share of cores
    console = Console()
    try:
        manifest = run_prepare(cfg, synthetic=synthetic, overwrite=overwrite)
    except DataError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except DiskFullError as exc:  # the job failed (exit 1), with the path instead of a traceback
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    table = Table(title=f"shards in {cfg.data.shard_dir}")
    for col in ("split", "subject", "samples", "shards"):
        table.add_column(col, justify="right" if col in ("samples", "shards") else "left")
    for split, subject, n, n_shards in summary_rows(manifest):
        table.add_row(split, subject, str(n), str(n_shards))
    console.print(table)
    console.print(
        f"EEG [{manifest.n_channels} ch × {manifest.n_times} samples @ {manifest.sfreq:g} Hz, "
        f"{manifest.eeg_unit}], clip_dim {manifest.clip_dim}, latent {list(manifest.latent_shape)}, "
        f"subjects {manifest.subjects}; manifest sha256 {manifest_hash(str(local_out_dir(cfg)))[:12]}"
    )
