"""``sgdm register`` and ``sgdm pull``: the MLflow model registry."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from sgdm_dist.cli.common import EXIT_BAD_INPUT, OverridesArg, resolve

if TYPE_CHECKING:
    from sgdm_dist.config import Config
    from sgdm_dist.registry import RegisteredVersion


# register's argument and option declarations, named here so its signature stays a list.
RegisterConfigArg = Annotated[
    Path | None,
    typer.Argument(
        help="Experiment YAML (model folder, names, tracking); not needed with --run.",
        show_default=False,
    ),
]
RunOpt = Annotated[
    str | None,
    typer.Option(
        "--run",
        help="Register the model this training run uploaded to MLflow (no CONFIG needed; "
        "e.g. a run trained on a cluster).",
    ),
]
ModelDirOpt = Annotated[
    Path | None,
    typer.Option(help="Trained model folder; default {experiment.output_dir}/model."),
]
RunIdOpt = Annotated[
    str | None,
    typer.Option(
        help="With a model folder: the MLflow run that trained it (lineage); default: the run "
        "that uploaded the same weights."
    ),
]
NameOpt = Annotated[
    str | None, typer.Option(help="Registered model name; default registry.model_name.")
]
AliasOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Alias to point at the version (repeatable), e.g. candidate, champion; "
        "default registry.aliases."
    ),
]
VersionOpt = Annotated[
    int | None,
    typer.Option(help="Register nothing new: move --alias onto this existing version (promotion)."),
]
TrackingUriOpt = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI; default: the config's, else $MLFLOW_TRACKING_URI."),
]


def register(
    config: RegisterConfigArg = None,
    overrides: OverridesArg = None,
    run: RunOpt = None,
    model_dir: ModelDirOpt = None,
    run_id: RunIdOpt = None,
    name: NameOpt = None,
    alias: AliasOpt = None,
    version: VersionOpt = None,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Register a trained model as a new MLflow model version and point aliases at it.

    `sgdm register configs/tiny.yaml --alias candidate` logs {output_dir}/model (weights, config,
    data manifest and the VAE) as a pyfunc in the run that trained it and registers it;
    `sgdm register --run RUN_ID --alias candidate` registers what training run RUN_ID uploaded;
    `sgdm register configs/tiny.yaml --version 3 --alias champion` promotes version 3.
    Tracking: --tracking-uri, else experiment.tracking_uri, else $MLFLOW_TRACKING_URI, else
    {output_dir}/mlflow.db.
    """
    from sgdm_dist.registry import RegistryError, register_model, register_run, set_aliases

    cfg = resolve(config, overrides) if config is not None else None
    if cfg is None and run is None:
        _fail("give CONFIG (a local model folder) or --run RUN_ID")
    uri = _tracking(cfg, tracking_uri)
    try:
        _check_sources(version, run, model_dir, run_id)
        aliases = list(alias) if alias else list(cfg.registry.aliases if cfg else [])
        if version is not None:
            model_name = name or (cfg.registry.model_name if cfg else None)
            if not aliases or not model_name:
                raise RegistryError("--version needs --alias and a model name (--name or CONFIG)")
            result = set_aliases(model_name, version, aliases, tracking_uri=uri)
        elif run is not None:
            model_name = name or (cfg.registry.model_name if cfg else None)
            result = register_run(run, tracking_uri=uri, name=model_name, aliases=aliases)
        else:
            assert cfg is not None
            result = register_model(
                model_dir or cfg.experiment.output_dir / "model",
                tracking_uri=uri,
                name=name or cfg.registry.model_name,
                aliases=aliases,
                run_id=run_id,
                experiment=cfg.experiment.name,
                bundle_vae=cfg.registry.bundle_vae,
            )
    except RegistryError as exc:
        _fail(exc)
    _print_version("registered" if version is None else "aliases set on", result, uri)


def _check_sources(
    version: int | None, run: str | None, model_dir: Path | None, run_id: str | None
) -> None:
    """Refuse option mixes that name more than one thing to register (or promote)."""
    from sgdm_dist.registry import RegistryError

    if version is not None and (model_dir is not None or run_id or run):
        raise RegistryError("--version moves aliases: no --model-dir, --run or --run-id")
    if run is not None and (model_dir is not None or run_id):
        raise RegistryError("--run registers what the run uploaded: no --model-dir/--run-id")


def _tracking(cfg: Config | None, explicit: str | None, config_flag: str = "CONFIG") -> str:
    """--tracking-uri, else the config's (its own value, $MLFLOW_TRACKING_URI, its output_dir)."""
    from sgdm_dist.utils.tracking import default_tracking_uri

    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if explicit:
        return explicit
    if cfg is not None:
        return default_tracking_uri(cfg.experiment.tracking_uri, cfg.experiment.output_dir, env_uri)
    if not env_uri:
        _fail(
            f"no tracking server: pass --tracking-uri or {config_flag}, or set MLFLOW_TRACKING_URI"
        )
    return str(env_uri)


def pull(
    uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION.")],
    to: Annotated[
        Path, typer.Option(help="Destination folder (created; an earlier pull is replaced).")
    ],
    config: Annotated[
        Path | None,
        typer.Option(help="Experiment YAML whose experiment.tracking_uri / output_dir to use."),
    ] = None,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Download a registered model, verify its checksums and print what was pulled."""
    from sgdm_dist.registry import RegistryError, pull_model

    cfg = resolve(config, []) if config is not None else None
    uri_used = _tracking(cfg, tracking_uri, "--config")
    try:
        result = pull_model(uri, to, tracking_uri=uri_used)
    except RegistryError as exc:
        _fail(exc)
    _print_version("pulled", result, uri_used)


def _fail(message: object) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(EXIT_BAD_INPUT)


def _print_version(what: str, v: RegisteredVersion, tracking_uri: str) -> None:
    from sgdm_dist.registry import METRIC_PREFIX, TAG_COMMIT, TAG_MANIFEST, TAG_VERSION, redact

    echo = typer.echo
    echo(f"{what} models:/{v.name}/{v.version}")
    echo(f"  name:      {v.name}")
    echo(f"  version:   {v.version}")
    echo(f"  aliases:   {', '.join(v.aliases) or '-'}")
    echo(f"  run:       {v.run_id or '-'} (trained it)")
    if v.tags.get("sgdm.evaluation_runs"):
        echo(f"  evaluated: {v.tags['sgdm.evaluation_runs'].replace(',', ', ')}")
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
