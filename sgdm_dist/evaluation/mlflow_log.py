"""Evaluation results into MLflow: flat metrics, ``metrics.json``, the report and the grids, on the
active run or a new run of the experiment (``experiment.tracking``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sgdm_dist
from sgdm_dist.config import Config, flatten
from sgdm_dist.metrics import to_mlflow_metrics
from sgdm_dist.utils.tracking import experiment_id

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


def log_to_mlflow(
    cfg: Config,
    metrics: Mapping[str, Any],
    files: list[Path | None],
    tracking_uri: str,
    model: str,
) -> str | None:
    """Log metrics (MLflow-safe names under ``test/``), the protocol (tags ``evaluation.*``) and the
    files (artifact folder ``evaluation``) to the active run, else to a new run in the configured store
    when ``experiment.tracking`` is on. Returns the run id; a tracking failure is a warning only,
    since every result is already on disk."""
    import mlflow
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    from sgdm_dist.registry.lineage import link_evaluation

    active = mlflow.active_run()
    if active is None and not cfg.experiment.tracking:
        return None
    numbers = _test_metrics(metrics)
    stamp = int(time.time() * 1000)
    tags = {f"evaluation.{k}": str(v)[:5000] for k, v in metrics["protocol"].items()}
    try:
        if active is not None:
            client, run_id = MlflowClient(), active.info.run_id
        else:
            client = MlflowClient(tracking_uri)
            run_id = _new_run(client, cfg, tracking_uri)
            tags.update(
                {
                    "data.manifest_sha256": str(metrics["protocol"]["data.manifest_sha256"]),
                    "sgdm_dist.version": sgdm_dist.__version__,
                    "sgdm.stage": "evaluate",
                }
            )
        items = [Metric(k, v, stamp, 0) for k, v in numbers.items()]
        for i in range(0, len(items), 1000):  # MLflow caps a batch at 1000 metrics
            client.log_batch(run_id, metrics=items[i : i + 1000])
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for path in files:
            if path is not None:
                client.log_artifact(run_id, str(path), "evaluation")
        linked: list[str] = []
        if active is None:  # an evaluation run of its own, which registered versions can name
            client.set_terminated(run_id)
            linked = link_evaluation(client, run_id, str(metrics["protocol"]["model_dir"]))
    except Exception as exc:  # a tracking outage must not lose results that are already written
        log.warning(
            "MLflow at %s: evaluation not tracked (%s); results are in files", tracking_uri, exc
        )
        return None
    log.info("evaluation of %s logged to MLflow run %s", model, run_id)
    if linked:
        log.info("evaluation linked to registered version(s) %s", ", ".join(linked))
    return run_id


def _test_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric results, flattened to MLflow-safe names under ``test/``."""
    keys = ("summary", "retrieval", "reconstruction", "reconstruction_baselines")
    flat = flatten({k: metrics[k] for k in keys if k in metrics}, sep="/")
    return to_mlflow_metrics(
        {k: v for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)},
        prefix="test/",
    )


def _new_run(client: MlflowClient, cfg: Config, tracking_uri: str) -> str:
    """Create an evaluation run in the experiment, log the config as its params, return its id."""
    from mlflow.entities import Param

    run_id = client.create_run(
        experiment_id(client, cfg.experiment.name, tracking_uri),
        run_name=f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}",
    ).info.run_id
    params = [Param(k, str(v)[:6000]) for k, v in cfg.flat().items()]
    for i in range(0, len(params), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=params[i : i + 100])
    return run_id
