"""``sgdm register`` and ``sgdm pull``: the MLflow model registry."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sgdm_dist.cli.common import EXIT_BAD_INPUT, ConfigArg, OverridesArg, resolve

if TYPE_CHECKING:
    from sgdm_dist.registry import RegisteredVersion


def register(
    config: ConfigArg,
    overrides: OverridesArg = None,
    model_dir: Annotated[
        Path | None,
        typer.Option(help="Trained model folder; default {experiment.output_dir}/model."),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            help="MLflow run that trained it (lineage); default: found by output_dir + data hash."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Registered model name; default registry.model_name.")
    ] = None,
    alias: Annotated[
        list[str] | None,
        typer.Option(
            help="Alias to point at the version (repeatable), e.g. candidate, champion; "
            "default registry.aliases."
        ),
    ] = None,
    version: Annotated[
        int | None,
        typer.Option(
            help="Register nothing new: move --alias onto this existing version (promotion)."
        ),
    ] = None,
) -> None:
    """Register a trained model as a new MLflow model version and point aliases at it.

    `sgdm register configs/tiny.yaml --alias candidate` logs {output_dir}/model (weights, config,
    data manifest and the VAE) as a pyfunc in the training run and registers it;
    `sgdm register configs/tiny.yaml --version 3 --alias champion` promotes version 3.
    Tracking: experiment.tracking_uri, else $MLFLOW_TRACKING_URI, else {output_dir}/mlflow.db.
    """
    cfg = resolve(config, overrides)
    from sgdm_dist.registry import RegistryError, register_model, set_aliases
    from sgdm_dist.tracking import default_tracking_uri

    uri = default_tracking_uri(
        cfg.experiment.tracking_uri,
        cfg.experiment.output_dir,
        os.environ.get("MLFLOW_TRACKING_URI"),
    )
    model_name = name or cfg.registry.model_name
    aliases = list(alias) if alias else list(cfg.registry.aliases)
    try:
        if version is not None:
            if not aliases or model_dir is not None or run_id is not None:
                raise RegistryError(
                    "--version moves aliases onto an existing version: give --alias, "
                    "and no --model-dir or --run-id"
                )
            result = set_aliases(model_name, version, aliases, tracking_uri=uri)
        else:
            result = register_model(
                model_dir or cfg.experiment.output_dir / "model",
                tracking_uri=uri,
                name=model_name,
                aliases=aliases,
                run_id=run_id,
                experiment=cfg.experiment.name,
                bundle_vae=cfg.registry.bundle_vae,
            )
    except RegistryError as exc:
        _fail(exc)
    _print_version("registered" if version is None else "aliases set on", result, uri)


def pull(
    uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION.")],
    to: Annotated[
        Path, typer.Option(help="Destination folder (created; an earlier pull is replaced).")
    ],
    config: Annotated[
        Path | None,
        typer.Option(help="Experiment YAML whose experiment.tracking_uri / output_dir to use."),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI; default: the config's, else $MLFLOW_TRACKING_URI."),
    ] = None,
) -> None:
    """Download a registered model, verify its checksums and print what was pulled."""
    from sgdm_dist.registry import RegistryError, pull_model
    from sgdm_dist.tracking import default_tracking_uri

    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri is None and config is not None:
        cfg = resolve(config, [])
        tracking_uri = default_tracking_uri(
            cfg.experiment.tracking_uri, cfg.experiment.output_dir, env_uri
        )
    tracking_uri = tracking_uri or env_uri
    if not tracking_uri:
        _fail("no tracking server: pass --tracking-uri or --config, or set MLFLOW_TRACKING_URI")
    try:
        result = pull_model(uri, to, tracking_uri=tracking_uri)
    except RegistryError as exc:
        _fail(exc)
    _print_version("pulled", result, tracking_uri)


def _fail(message: object) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(EXIT_BAD_INPUT)


def _print_version(what: str, v: RegisteredVersion, tracking_uri: str) -> None:
    from sgdm_dist.registry import METRIC_PREFIX, TAG_COMMIT, TAG_MANIFEST, TAG_VERSION, redact

    echo = typer.echo
    echo(f"{what} models:/{v.name}/{v.version}")
    echo(f"  name:      {v.name}")
    echo(f"  version:   {v.version}")
    echo(f"  aliases:   {', '.join(v.aliases) or '-'}")
    echo(f"  run:       {v.run_id or '-'}")
    echo(f"  tracking:  {redact(tracking_uri)}")
    echo(f"  data:      manifest sha256 {v.tags.get(TAG_MANIFEST, '-')}")
    code = v.tags.get(TAG_VERSION, "-")
    if TAG_COMMIT in v.tags:
        code += f" (git {v.tags[TAG_COMMIT][:12]})"
    echo(f"  code:      sgdm-dist {code}")
    metrics = {
        k.removeprefix(METRIC_PREFIX): x for k, x in v.tags.items() if k.startswith(METRIC_PREFIX)
    }
    shown = [k for k in ("val/top1", "val/top5", "loss") if k in metrics]
    if shown:
        echo("  metrics:   " + ", ".join(f"{k}={float(metrics[k]):.4g}" for k in shown))
    if v.path is not None:
        echo(f"  folder:    {v.path}")
    if v.files:
        echo("  files (sha256, verified):" if v.path is not None else "  files (sha256):")
        for name, digest in sorted(v.files.items()):
            echo(f"    {digest}  {name}")
