"""Which MLflow run made a model: the trained model uploaded to its own run, found again by hash.

At the end of training, rank 0 uploads the exported model in the registry's layout (weights,
config.json, experiment.yaml, data_manifest.json, unet/, scheduler/, the VAE as ``vae/``,
checksums.json) to the training run as the artifact folder ``sgdm-model`` (:func:`upload_model`). The
run is tagged with the digest of its weights files (``models.export.model_digest``) before the
upload and with the sha256 of ``checksums.json`` after it, so:

* ``sgdm register --run RUN_ID`` downloads that folder from any machine and verifies it against
  the run's tag (:func:`download_run_model`): no shared volume, no config needed;
* ``sgdm register CONFIG`` (a local folder) finds its training run by the weights' hash
  (:func:`find_training_run`), in any state — a run left RUNNING by a kill is found anyway — and
  never confuses it with an evaluation run, which carries no such tag;
* evaluation runs of the same model folder are linked to the registered version by id, whichever
  came first: registration looks the evaluations up (:func:`evaluation_runs`), an evaluation of a
  folder that is already registered adds itself to the versions of the same weights
  (:func:`link_evaluation`; `sgdm demo` registers while it evaluates).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

RUN_MODEL_ARTIFACT = "sgdm-model"
TAG_MODEL_SHA = "sgdm.model_sha256"  # models.export.model_digest of the weights, set before upload
TAG_RUN_FILES = "sgdm.files_sha256"  # sha256 of the uploaded checksums.json, set after it
TAG_STAGE = "sgdm.stage"  # "train" here; the evaluate run sets "evaluate"
TAG_EVALUATIONS = "sgdm.evaluation_runs"  # on a registered version: its evaluation runs


def upload_model(client: MlflowClient, run_id: str, model_dir: Path) -> str | None:
    """Stage ``model_dir`` (+ VAE, checksums) and upload it to ``run_id``; returns the digest.

    Server errors propagate (the tracker retries them); a folder that cannot be staged (e.g. the
    shards holding its VAE are gone) is logged and skipped: there is nothing to retry.
    """
    from mlflow.entities import RunTag

    from sgdm_dist.models.export import model_digest
    from sgdm_dist.registry.core import RegistryError, stage_model_folder

    model_dir = Path(model_dir)
    client.log_batch(
        run_id,
        tags=[
            RunTag(TAG_MODEL_SHA, model_digest(model_dir)),
            RunTag(TAG_STAGE, "train"),
        ],
    )
    with tempfile.TemporaryDirectory(prefix="sgdm-upload-") as tmp:
        stage = Path(tmp) / RUN_MODEL_ARTIFACT
        try:
            digest = stage_model_folder(model_dir, stage)
        except (RegistryError, OSError) as exc:
            log.warning("model %s not uploaded to MLflow run %s: %s", model_dir, run_id, exc)
            return None
        client.log_artifacts(run_id, str(stage), RUN_MODEL_ARTIFACT)
    client.set_tag(run_id, TAG_RUN_FILES, digest)
    log.info("model uploaded to MLflow run %s (%s/)", run_id, RUN_MODEL_ARTIFACT)
    return digest


def uploaded_digest(run: Any) -> str:
    """The sha256 of the checksums.json ``run`` uploaded; RegistryError when it uploaded none."""
    from sgdm_dist.registry.core import RegistryError

    digest = run.data.tags.get(TAG_RUN_FILES)
    if not digest:
        stage = run.data.tags.get(TAG_STAGE, "unknown")
        raise RegistryError(
            f"MLflow run {run.info.run_id} (stage {stage}, status {run.info.status}) holds no "
            f"uploaded model (no '{TAG_RUN_FILES}' tag): only a training run that finished its "
            "export uploads one; register a local model folder with `sgdm register CONFIG` instead"
        )
    return digest


def download_run_model(client: MlflowClient, run: Any, into: Path) -> Path:
    """The ``sgdm-model`` folder of ``run``, downloaded into ``into`` and verified against the
    digest tagged on the run; RegistryError when the run has none or the bytes differ."""
    from mlflow.exceptions import MlflowException

    from sgdm_dist.registry.core import RegistryError, verify_folder

    run_id = run.info.run_id
    digest = uploaded_digest(run)
    into.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, RUN_MODEL_ARTIFACT, str(into))
    except (MlflowException, OSError) as exc:
        raise RegistryError(
            f"run {run_id}: downloading {RUN_MODEL_ARTIFACT}/ failed: {exc}"
        ) from None
    folder = Path(local)
    verify_folder(folder, expected_digest=digest)
    return folder


def find_training_run(client: MlflowClient, experiment_ids: list[str], weights_sha: str) -> Any:
    """The newest run whose uploaded weights have this sha256, whatever its status."""
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"tags.`{TAG_MODEL_SHA}` = '{weights_sha}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def evaluation_runs(client: MlflowClient, experiment_ids: list[str], model_dir: str) -> list[str]:
    """Ids of the evaluation runs of ``model_dir`` (as `sgdm evaluate` recorded it), newest first."""
    folder = f"tags.`evaluation.model_dir` = '{_quote(model_dir)}'"
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"tags.`{TAG_STAGE}` = 'evaluate' and {folder}",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    return [r.info.run_id for r in runs]


def link_evaluation(client: MlflowClient, run_id: str, model_dir: str) -> list[str]:
    """Add evaluation run ``run_id`` of ``model_dir`` to the ``sgdm.evaluation_runs`` tag of every
    registered version of the weights the folder holds (found through the training runs that
    uploaded them, so a folder retrained since keeps its old versions unlinked). Registration
    looks evaluations up only after creating its version, so one of the two always sees the other,
    even when they run side by side. Returns the versions linked, as "name/version"."""
    from sgdm_dist.models.export import model_digest

    experiment = client.get_run(run_id).info.experiment_id
    trained = client.search_runs(
        [experiment], filter_string=f"tags.`{TAG_MODEL_SHA}` = '{model_digest(model_dir)}'"
    )
    linked = []
    for run in trained:
        for version in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            runs = [r for r in version.tags.get(TAG_EVALUATIONS, "").split(",") if r]
            if run_id not in runs:  # newest first, as evaluation_runs lists them
                value = ",".join([run_id, *runs])
                client.set_model_version_tag(version.name, version.version, TAG_EVALUATIONS, value)
            linked.append(f"{version.name}/{version.version}")
    return linked


def _quote(value: str) -> str:
    """``value`` inside single quotes of an MLflow search filter."""
    return value.replace("'", "\\'")
