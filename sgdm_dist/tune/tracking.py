"""MLflow for a sweep: one parent run per sweep, one child run per trial (``mlflow.parentRunId``).

The parent run is created by the driver and its id kept in the sweep folder, so a resumed sweep
keeps logging to it. Child runs are written by Ray Tune's ``MLflowLoggerCallback`` (in the driver)
with the parent's id as a tag: the MLflow UI nests them under the sweep.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sgdm_dist import __version__
from sgdm_dist.data.io import atomic_write_text
from sgdm_dist.utils.tracking import experiment_id

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "sgdm.sweep"
RUN_FILE = "mlflow_parent_run.json"


class SweepRun:
    """The sweep's parent MLflow run (synchronous: child runs need its id before any trial)."""

    def __init__(self, uri: str, experiment: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.experiment = experiment
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=uri)

    @classmethod
    def start(
        cls, uri: str, experiment: str, sweep_dir: Path, name: str, tags: dict[str, str]
    ) -> SweepRun:
        """A new parent run, or the one recorded in ``sweep_dir`` when resuming that sweep."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        record = sweep_dir / RUN_FILE
        if record.is_file():
            run_id = json.loads(record.read_text())["run_id"]
            client.update_run(run_id, status="RUNNING")
            run = cls(uri, experiment, run_id)
            run.close_orphans()
            log.info("MLflow: resuming sweep run %s at %s", run_id, uri)
            return run
        created = client.create_run(
            experiment_id(client, experiment, uri),
            run_name=f"sweep-{name}",
            tags={SWEEP_TAG: name, "sgdm_dist.version": __version__, **tags},
        )
        atomic_write_text(record, json.dumps({"run_id": created.info.run_id, "uri": uri}))
        log.info(
            "MLflow: sweep run %s in experiment '%s' at %s", created.info.run_id, experiment, uri
        )
        return cls(uri, experiment, created.info.run_id)

    def child_callback(self) -> Any:
        """Ray Tune callback that logs each trial as a child run of this one."""
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        return MLflowLoggerCallback(
            tracking_uri=self.uri,
            experiment_name=self.experiment,
            tags={PARENT_TAG: self.run_id},
            save_artifact=False,
        )

    def children(self) -> list[Any]:
        experiment = self.client.get_run(self.run_id).info.experiment_id
        return self.client.search_runs(
            [experiment], filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}'", max_results=10_000
        )

    def close_orphans(self) -> None:
        """Child runs left RUNNING by a driver that died: their trials restart in new child runs."""
        for child in self.children():
            if child.info.status == "RUNNING":
                self.client.set_terminated(child.info.run_id, "KILLED")

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, float(value))

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
