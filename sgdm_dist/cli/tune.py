"""``sgdm tune``: Ray Tune sweeps with leave-subject-out folds."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from sgdm_dist.cli.common import EXIT_BAD_INPUT, ConfigArg, OverridesArg, resolve

log = logging.getLogger("sgdm_dist.tune")


def tune(
    config: ConfigArg,
    overrides: OverridesArg = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the sweep in the same folder (after the driver died)."
        ),
    ] = False,
) -> None:
    """Cross-subject hyper-parameter sweep with Ray Tune (leave-subject-out folds), tracked in MLflow.

    A local Ray runs the trials; with RAY_ADDRESS set, that cluster does.

    At the end the top configurations are printed and the best is written to
    <tune.storage_path>/<tune.name>/best.yaml, ready for `sgdm train`. See docs/tune.md.
    """
    cfg = resolve(config, overrides)
    # Heavy imports after the config is known to be valid, so config errors stay instant.
    from sgdm_dist.data import DataError
    from sgdm_dist.tune import SweepError, run_sweep

    # Ray phones home with usage statistics unless told not to; a sweep has no business doing so.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        result = run_sweep(
            cfg,
            resume=resume,
            address=os.environ.get("RAY_ADDRESS") or None,
            env_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
        )
    except DataError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(EXIT_BAD_INPUT)
    except SweepError as exc:  # every trial failed: their errors, not a driver traceback
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    typer.echo(f"\ntop configurations by {cfg.tune.metric} ({cfg.tune.mode}):\n{result.table}")
    typer.echo(f"best configuration: {result.best_config}")
    if result.parent_run_id:
        typer.echo(f"MLflow sweep run: {result.parent_run_id}")
