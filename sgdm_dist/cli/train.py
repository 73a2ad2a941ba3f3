"""``sgdm train``: the Accelerate training loop (run it under ``launch/train.sh`` for several processes)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from sgdm_dist.cli.common import EXIT_BAD_INPUT, ConfigArg, OverridesArg, resolve

log = logging.getLogger("sgdm_dist.training.loop")


def train(
    config: ConfigArg,
    overrides: OverridesArg = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="'auto' (newest complete checkpoint, or a fresh start) or a checkpoint folder."
        ),
    ] = None,
) -> None:
    """Train the SGDM model with Accelerate (DDP, FSDP or DeepSpeed ZeRO-2/3).

    One process: `sgdm train configs/tiny.yaml`. Several processes or nodes:
    `launch/train.sh configs/tiny.yaml` with NPROC_PER_NODE and ACCELERATE_CONFIG set.
    SIGTERM/SIGINT write a checkpoint and exit with code 143; rerun with --resume auto.
    """
    cfg = resolve(config, overrides)
    # Heavy imports after the config is known to be valid, so config errors stay instant.
    from sgdm_dist.utils.threads import HostInfo, configure_threads

    configure_threads(
        HostInfo.from_env(), cfg.experiment.threads
    )  # before torch spins up its pools
    from sgdm_dist.data import DataError
    from sgdm_dist.training.checkpoint import CheckpointError
    from sgdm_dist.training.distributed import DistributedSetupError
    from sgdm_dist.training.loop import PREEMPTED_EXIT_CODE, NonFiniteLossError, Preempted
    from sgdm_dist.training.loop import train as run_training
    from sgdm_dist.utils.atomic import DiskFullError

    try:
        result = run_training(
            cfg, resume=resume, env_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI")
        )
    except Preempted as stopped:
        log.warning("%s; resume with --resume auto", stopped)
        sys.exit(PREEMPTED_EXIT_CODE)
    except (DataError, DistributedSetupError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(EXIT_BAD_INPUT)
    except (CheckpointError, DiskFullError, NonFiniteLossError) as exc:  # DiskFull: model export
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    if result.model_dir is not None:
        log.info(
            "done: %d steps; model in %s; MLflow run %s",
            result.step,
            result.model_dir,
            result.run_id,
        )
