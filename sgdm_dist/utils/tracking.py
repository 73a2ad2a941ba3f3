"""MLflow tracking that never stops training.

Calls go through a queue to one background thread, so a slow or dead tracking server costs the
training loop nothing. When the server is unreachable the thread warns, backs off and retries the
same call; at the end :meth:`Tracker.close` flushes what it can within a deadline and reports what
could not be delivered. Only rank 0 tracks; on other ranks every method is a no-op.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


def default_tracking_uri(configured: str | None, output_dir: Path, env_uri: str | None) -> str:
    """Config value, else $MLFLOW_TRACKING_URI (passed in by the caller), else a local SQLite file."""
    if configured:
        return configured
    if env_uri:
        return env_uri
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def local_artifact_root(uri: str) -> str | None:
    """For a SQLite store: artifacts in ``mlartifacts/`` beside the database, not in the current folder."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    return (db.parent / "mlartifacts").as_uri()


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with artifacts beside a SQLite store) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=local_artifact_root(uri))


class Tracker:
    """Asynchronous, failure-tolerant MLflow run."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        *,
        enabled: bool = True,
        retry_seconds: float = 2.0,
        request_timeout: float = 5.0,
    ) -> None:
        self.enabled = enabled
        self.uri = uri
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None
        self.failures = 0
        self.dropped = 0
        self._retry_seconds = retry_seconds
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=10_000)
        self._warned = False
        self._close_at_least = 0.0
        self._thread: threading.Thread | None = None
        self._given_up = False
        if enabled:
            # MLflow's own HTTP retries would block a call for minutes; we retry ourselves. MLflow
            # reads these only from the environment; set, not setdefault: an inherited
            # MLFLOW_HTTP_REQUEST_TIMEOUT=120 must not outlast the configured bound.
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(request_timeout)))
            self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
            self._thread.start()
            self._submit(self._start_run)

    # -- what the training loop calls ---------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        # MLflow caps a value at 6000 chars and a batch at 100 params.
        items = [(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            chunk = dict(items[i : i + 100])
            self._submit(lambda c, chunk=chunk: c.log_batch(self.run_id, params=_params(chunk)))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._submit(lambda c: c.log_batch(self.run_id, tags=_tags(tags)))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        self._submit(lambda c: c.log_batch(self.run_id, metrics=_metrics(metrics, step, stamp)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._submit(lambda c: c.log_artifact(self.run_id, str(path), artifact_path))

    def log_model(self, model_dir: Path, upload_timeout: float = 1800.0) -> None:
        """Upload the exported model (weights, configs, data manifest, VAE, checksums) to this
        run, for `sgdm register --run RUN_ID` (:mod:`sgdm_dist.registry.lineage`). :meth:`close` then waits
        up to ``upload_timeout`` s for it instead of its usual deadline."""
        from sgdm_dist.registry.lineage import upload_model

        if self.enabled:
            self._close_at_least = max(self._close_at_least, upload_timeout)
        self._submit(lambda c: upload_model(c, self.run_id, model_dir))

    def close(self, status: str = "FINISHED", timeout: float = 30.0) -> bool:
        """Flush and end the run; True when everything reached the server."""
        if not self.enabled or self._thread is None:
            return True
        self._submit(lambda c: c.set_terminated(self.run_id, status))
        self._queue.put(_STOP)
        self._thread.join(max(timeout, self._close_at_least))
        pending = self._queue.qsize() + (1 if self._thread.is_alive() else 0)
        lost = self.dropped + pending
        if lost:
            log.warning("MLflow at %s: %d tracking calls were not delivered", self.uri, lost)
        return lost == 0

    # -- the background thread ----------------------------------------------------------------
    def _submit(self, call: Callable[[Any], Any]) -> None:
        if not self.enabled:
            return
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            self.dropped += 1

    def _start_run(self, client: Any) -> None:
        run = client.create_run(
            experiment_id(client, self.experiment, self.uri), run_name=self.run_name
        )
        self.run_id = run.info.run_id
        log.info("MLflow run %s in experiment '%s' at %s", self.run_id, self.experiment, self.uri)

    def _work(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        stopping = False
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._given_up:  # stop requested and the server failed: don't try the rest
                self.dropped += 1
                continue
            while True:
                try:
                    item(client)
                    if self._warned:
                        log.warning("MLflow at %s reachable again", self.uri)
                        self._warned = False
                    break
                except Exception as exc:  # any failure of the server must not reach training
                    self.failures += 1
                    if not self._warned:
                        log.warning(
                            "MLflow at %s unreachable (%s); training goes on, retrying",
                            self.uri,
                            exc,
                        )
                        self._warned = True
                    stopping = stopping or _stop_requested(self._queue)
                    if stopping:
                        # At most one request timeout after close(), even on a silent server.
                        self.dropped += 1
                        self._given_up = True
                        break
                    time.sleep(
                        self._retry_seconds
                    )  # back-off between retries, off the training thread


def _stop_requested(q: queue.Queue[Any]) -> bool:
    with q.mutex:
        return any(item is _STOP for item in q.queue)


def _params(values: dict[str, str]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, v) for k, v in values.items()]


def _tags(values: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in values.items()]


def _metrics(values: dict[str, float], step: int, stamp: int) -> list[Any]:
    from mlflow.entities import Metric

    return [Metric(k, float(v), stamp, step) for k, v in values.items()]
