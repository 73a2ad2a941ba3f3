"""``sgdm verify``: check every shard of a config's shard folder against its manifest."""

from __future__ import annotations

from typing import Annotated

import typer

from sgdm_dist.cli.common import EXIT_BAD_INPUT, ConfigArg, OverridesArg, resolve


def verify(
    config: ConfigArg,
    overrides: OverridesArg = None,
    samples: Annotated[
        bool,
        typer.Option(help="Also decode every sample and check its arrays (dtype, shape, finite)."),
    ] = True,
) -> None:
    """Check shards against manifest.json: sha256, sample counts and (default) every sample.

    Exit 0 when all match, 2 with one line per bad shard (path, key, expected vs found) otherwise.
    """
    from sgdm_dist.data import DataError
    from sgdm_dist.data.manifest import check_shard_set, read_manifest

    cfg = resolve(config, overrides)
    try:
        m = read_manifest(cfg.data.shard_dir)
        m.check_compatible(cfg)
        n_shards, n_samples, problems = check_shard_set(cfg.data.shard_dir, samples, m)
    except DataError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    for problem in problems:
        typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
    if problems:
        typer.secho(
            f"{len(problems)} of {n_shards} shards in {cfg.data.shard_dir} failed verification",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    what = "sha256, counts and samples" if samples else "sha256 and counts"
    typer.echo(f"ok: {n_shards} shards, {n_samples} samples in {cfg.data.shard_dir} ({what})")
