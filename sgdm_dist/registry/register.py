"""Registering: a model folder or a training run's upload → a pyfunc version with lineage."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgdm_dist import __version__
from sgdm_dist.config.registry import check_alias
from sgdm_dist.registry.core import (
    ARTIFACT_KEY,
    LOGGED_MODEL_NAME,
    METRIC_PREFIX,
    PYFUNC_FILE,
    TAG_FILES,
    TAG_MANIFEST,
    TAG_SOURCE,
    TAG_TRAINING_RUN,
    TAG_VERSION,
    VAE_DIR,
    ModelRef,
    RegistryError,
    _trained_config,
    check_model_folder,
    redact,
    stage_model_folder,
)
from sgdm_dist.registry.server import (
    RegisteredVersion,
    _client,
    _fluent_uri,
    code_version,
    find_version,
)
from sgdm_dist.utils.checksums import (
    CHECKSUMS,
    sha256_file,
)
from sgdm_dist.utils.tracking import experiment_id as create_experiment_id

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


def register_model(
    model_dir: Path,
    *,
    tracking_uri: str,
    name: str,
    aliases: Sequence[str] = (),
    run_id: str | None = None,
    experiment: str | None = None,
    bundle_vae: bool = True,
) -> RegisteredVersion:
    """Log ``model_dir`` as an MLflow pyfunc, register it as a new version of ``name``, set aliases.

    Lineage: the model is logged into the run that trained it — ``run_id``, else the run whose
    uploaded weights have the same sha256 (:func:`.lineage.find_training_run`: any status,
    never an evaluation run), else a new "register" run. The version is tagged with that run's
    metrics (``metric.<name>``), the data-manifest hash, the code version, the training run, the
    evaluation runs of the folder and the sha256 of the artifact's checksums.json.
    """
    model_dir = check_model_folder(model_dir).resolve()
    _check_name(name)
    aliases = [check_alias_or_fail(a) for a in aliases]
    trained = _trained_config(model_dir)
    experiment = experiment or trained.get("experiment", {}).get("name") or "sgdm"
    manifest_sha = (
        sha256_file(model_dir / "data_manifest.json")
        if (model_dir / "data_manifest.json").is_file()
        else None
    )
    client = _client(tracking_uri, create=True)
    with tempfile.TemporaryDirectory(prefix="sgdm-register-") as tmp:
        stage = Path(tmp) / ARTIFACT_KEY
        digest = stage_model_folder(model_dir, stage, bundle_vae=bundle_vae)
        run = _lineage_run(
            client, run_id, experiment, tracking_uri, model_dir, trained, manifest_sha
        )
        return _publish(
            client,
            tracking_uri,
            run,
            stage,
            Publication(name, aliases, digest, str(model_dir), str(model_dir), model_dir.parent),
        )


def register_run(
    run_id: str, *, tracking_uri: str, name: str | None = None, aliases: Sequence[str] = ()
) -> RegisteredVersion:
    """Register the model a training run uploaded (``sgdm register --run RUN_ID``): no config and
    no access to the training machine's folders needed, only the tracking server.

    The folder is downloaded and verified against the sha256 tagged on the run before anything is
    logged; the version's name defaults to the run's ``registry.model_name`` parameter.
    """
    from mlflow.exceptions import MlflowException

    from sgdm_dist.registry.lineage import (
        RUN_MODEL_ARTIFACT,
        TAG_RUN_FILES,
        download_run_model,
        uploaded_digest,
    )

    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RegistryError(f"MLflow run {run_id!r} not found at {redact(tracking_uri)}") from None
    uploaded_digest(run)  # a run without an uploaded model: say so before anything else
    name = name or run.data.params.get("registry.model_name")
    if not name:
        raise RegistryError(f"run {run_id} records no registry.model_name: pass --name")
    _check_name(name)
    aliases = [check_alias_or_fail(a) for a in aliases]
    output_dir = run.data.params.get("experiment.output_dir")
    with tempfile.TemporaryDirectory(prefix="sgdm-register-") as tmp:
        folder = download_run_model(client, run, Path(tmp) / "download")
        publication = Publication(
            name,
            aliases,
            run.data.tags[TAG_RUN_FILES],
            f"runs:/{run_id}/{RUN_MODEL_ARTIFACT}",
            f"{output_dir}/model" if output_dir else None,
            None,
        )
        return _publish(client, tracking_uri, run, folder, publication)


@dataclass(frozen=True)
class Publication:
    """What a new version is made of besides the run: name, aliases and where the files came from."""

    name: str
    aliases: list[str]
    digest: str  # sha256 of the staged checksums.json
    source: str  # the local folder or runs:/ URI the files came from (tag sgdm.model_dir)
    evaluated_as: str | None  # the model folder as `sgdm evaluate` records it (links evaluations)
    history_dir: Path | None  # where metrics.jsonl may be, when the run has no metrics


def _publish(
    client: MlflowClient, tracking_uri: str, run: Any, stage: Path, pub: Publication
) -> RegisteredVersion:
    """Log the staged folder as a pyfunc into ``run``, register it, tag lineage, set aliases."""
    from sgdm_dist.registry.lineage import TAG_EVALUATIONS, evaluation_runs
    from sgdm_dist.registry.verify import code_tags

    run_id = run.info.run_id
    files = json.loads((stage / CHECKSUMS).read_text())["files"]
    metrics = _run_metrics(client, run_id, pub.history_dir)
    tags = {
        **{f"{METRIC_PREFIX}{k}": repr(float(v)) for k, v in sorted(metrics.items())},
        **code_version(),
        TAG_FILES: pub.digest,
        TAG_SOURCE: pub.source,
        TAG_TRAINING_RUN: run_id,
        **code_tags(),  # sgdm.code_sha256: pyfunc_model.py as registered (registry.verify)
    }
    if (stage / "data_manifest.json").is_file():
        tags[TAG_MANIFEST] = sha256_file(stage / "data_manifest.json")
    with _fluent_uri(tracking_uri):
        model_uri = _log_pyfunc(client, run_id, stage, pub.digest)
        mv = _register(model_uri, pub.name, tags)
    # After the version exists: an evaluation finishing meanwhile links itself to it
    # (lineage.link_evaluation), one finished before is found here.
    evaluations = (
        evaluation_runs(client, [run.info.experiment_id], pub.evaluated_as)
        if pub.evaluated_as
        else []
    )
    if evaluations:
        client.set_model_version_tag(pub.name, mv.version, TAG_EVALUATIONS, ",".join(evaluations))
    for alias in pub.aliases:
        client.set_registered_model_alias(pub.name, alias, mv.version)
    result = RegisteredVersion.of(client, client.get_model_version(pub.name, mv.version))
    result.files = files
    log.info(
        "registered %s version %s from run %s (aliases: %s)",
        pub.name,
        mv.version,
        run_id,
        result.aliases or "none",
    )
    return result


def _check_name(name: str) -> None:
    if not name or any(c in name for c in "/@:"):
        raise RegistryError(
            f"model name {name!r} is not valid: it must be non-empty, no '/', '@', ':'"
        )


def check_alias_or_fail(alias: str) -> str:
    try:
        return check_alias(alias)
    except ValueError as exc:
        raise RegistryError(str(exc)) from None


def set_aliases(
    name: str, version: str | int, aliases: Sequence[str], *, tracking_uri: str
) -> RegisteredVersion:
    """Point ``aliases`` (e.g. champion) at an existing version; an alias moves off its old one."""
    client = _client(tracking_uri)
    mv = find_version(client, ModelRef(name, version=str(version)), tracking_uri)
    for alias in [check_alias_or_fail(a) for a in aliases]:
        client.set_registered_model_alias(name, alias, mv.version)
    return RegisteredVersion.of(client, client.get_model_version(name, mv.version))


def _lineage_run(
    client: MlflowClient,
    run_id: str | None,
    experiment: str,
    tracking_uri: str,
    model_dir: Path,
    trained: dict[str, Any],
    manifest_sha: str | None,
) -> Any:
    """The run to log the model into: ``run_id`` (checked against the folder), else the training
    run that uploaded the same weights, else a new "register" run in ``experiment``."""
    from sgdm_dist.models.export import model_digest
    from sgdm_dist.registry.lineage import find_training_run

    weights_sha = model_digest(model_dir)
    if run_id is not None:
        return _given_run(client, run_id, tracking_uri, model_dir, manifest_sha, weights_sha)
    exp = client.get_experiment_by_name(experiment)
    searched = [exp.experiment_id] if exp is not None else []
    searched += [
        e.experiment_id for e in client.search_experiments() if e.experiment_id not in searched
    ]
    run = find_training_run(client, searched, weights_sha) if searched else None
    if run is not None:
        log.info("lineage: model from training run %s (%s)", run.info.run_id, run.info.status)
        return run
    experiment_id = (
        exp.experiment_id if exp else create_experiment_id(client, experiment, tracking_uri)
    )
    log.warning(
        "no training run uploaded the weights of %s (sha256 %s…); logging into a new run",
        model_dir,
        weights_sha[:12],
    )
    return _new_register_run(client, experiment_id, model_dir, trained, manifest_sha)


def _given_run(
    client: MlflowClient,
    run_id: str,
    tracking_uri: str,
    model_dir: Path,
    manifest_sha: str | None,
    weights_sha: str,
) -> Any:
    """Run ``run_id``, refused when its data manifest or uploaded weights differ from the folder's."""
    from mlflow.exceptions import MlflowException

    from sgdm_dist.registry.lineage import TAG_MODEL_SHA

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RegistryError(f"MLflow run {run_id!r} not found at {redact(tracking_uri)}") from None
    recorded = run.data.tags.get(TAG_MANIFEST)
    if manifest_sha and recorded and recorded != manifest_sha:
        raise RegistryError(
            f"run {run_id} trained on data manifest {recorded[:12]}…, but {model_dir} "
            f"records {manifest_sha[:12]}…: this run did not produce this model"
        )
    uploaded = run.data.tags.get(TAG_MODEL_SHA)
    if uploaded and uploaded != weights_sha:
        raise RegistryError(
            f"run {run_id} uploaded weights with sha256 {uploaded[:12]}…, but "
            f"{model_dir} has weights {weights_sha[:12]}…: this run did not produce them"
        )
    return run


def _new_register_run(
    client: MlflowClient,
    experiment_id: str,
    model_dir: Path,
    trained: dict[str, Any],
    manifest_sha: str | None,
) -> Any:
    """A new, finished "register" run holding the folder's config as params and its lineage tags."""
    from mlflow.entities import Param, RunTag

    from sgdm_dist.config import flatten

    run = client.create_run(experiment_id, run_name=f"register-{time.strftime('%Y%m%d-%H%M%S')}")
    # The folder's own config as params: the run then answers "how was this model made".
    items = [(k, str(v)[:6000]) for k, v in flatten(trained).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    tags = {TAG_SOURCE: str(model_dir), TAG_VERSION: __version__, "sgdm.stage": "register"}
    if manifest_sha:
        tags[TAG_MANIFEST] = manifest_sha
    client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return client.get_run(run.info.run_id)


def _run_metrics(client: MlflowClient, run_id: str, history_dir: Path | None) -> dict[str, float]:
    """The run's latest metric values; else the last values in ``history_dir/metrics.jsonl``."""
    metrics = dict(client.get_run(run_id).data.metrics)
    if metrics or history_dir is None:
        return metrics
    history = history_dir / "metrics.jsonl"
    if history.is_file():
        for line in history.read_text().splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                metrics.update({k: float(v) for k, v in row.items() if k != "step"})
    return metrics


def _log_pyfunc(client: MlflowClient, run_id: str, stage: Path, digest: str) -> str:
    """Save the staged folder as a pyfunc and upload it to ``run_id``; returns its runs:/ URI.

    Saved locally and uploaded as plain artifacts, so the run is never reopened: a killed
    `sgdm register` cannot leave a finished training run RUNNING. Same files → same path.
    """
    import mlflow

    from sgdm_dist.registry.pyfunc_model import MODEL_CONFIG

    signature, example = _signature(stage)
    artifact = f"{LOGGED_MODEL_NAME}-pyfunc-{digest[:12]}"
    with tempfile.TemporaryDirectory(prefix="sgdm-pyfunc-") as tmp:
        saved = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            path=str(saved),
            python_model=str(PYFUNC_FILE),
            artifacts={ARTIFACT_KEY: str(stage)},
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
            model_config=MODEL_CONFIG,
        )
        client.log_artifacts(run_id, str(saved), artifact)
    return f"runs:/{run_id}/{artifact}"


def _register(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    import mlflow

    return mlflow.register_model(model_uri, name, tags=tags)


def _signature(stage: Path) -> tuple[Any, Any]:
    """Tensor signature: eeg float32 [-1, C, T], subject int64 [-1] → images float32 [-1, 3, H, W]."""
    import numpy as np
    from mlflow.models import infer_signature

    from sgdm_dist.registry.pyfunc_model import DEFAULT_PARAMS

    config = json.loads((stage / "config.json").read_text())
    c, t = int(config["n_channels"]), int(config["n_times"])
    latent = int(config["model"]["unet"]["latent_size"])
    vae_config = stage / VAE_DIR / "config.json"
    down = 8
    if vae_config.is_file():
        down = 2 ** (len(json.loads(vae_config.read_text())["block_out_channels"]) - 1)
    example = {"eeg": np.zeros((1, c, t), np.float32), "subject": np.zeros((1,), np.int64)}
    output = np.zeros((1, 3, latent * down, latent * down), np.float32)
    signature = infer_signature(example, output, params=DEFAULT_PARAMS)
    # A 2-step example keeps MLflow's load-and-predict check of the logged model cheap.
    return signature, (example, {**DEFAULT_PARAMS, "steps": 2})


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = [f"sgdm-dist=={__version__}"]
    for dist in ("mlflow", "torch", "diffusers", "safetensors", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            reqs.append(f"{dist}=={version(dist)}")
    return reqs
