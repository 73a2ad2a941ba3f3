"""The MLflow model registry: register a trained SGDM, move aliases, pull a verified copy.

A registered version is an MLflow pyfunc "model from code" (:mod:`sgdm_dist.registry_pyfunc`)
whose single artifact folder has the layout of ``{output_dir}/model/``::

    model.safetensors  config.json  experiment.yaml  data_manifest.json   (from training)
    vae/                 the AutoencoderKL the shards were made with (decodes without the shards)
    checksums.json       sha256 of every file above

The sha256 of ``checksums.json`` is recorded on the model version (tag ``sgdm.files_sha256``) at
registration, so a pull verifies the downloaded bytes against the registry database, not against
a file that travelled with them. Pulled folders also get ``pulled.json`` (what was pulled, from
where), which the checksums do not cover.

Tracking URIs are passed in by the caller (config value, else $MLFLOW_TRACKING_URI read by the CLI,
else ``sqlite:///{output_dir}/mlflow.db``); credentials only ever come from MLflow's own
environment variables and are stripped from every URI this module prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sgdm_dist import __version__
from sgdm_dist.config.registry import check_alias
from sgdm_dist.tracking import experiment_id as create_experiment_id

if TYPE_CHECKING:
    from diffusers import AutoencoderKL
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

MODEL_FILES = ("model.safetensors", "config.json", "experiment.yaml", "data_manifest.json")
VAE_DIR = "vae"
CHECKSUMS = "checksums.json"
PULLED = "pulled.json"
UNCHECKED = frozenset({CHECKSUMS, PULLED})  # the files checksums.json does not list
ARTIFACT_KEY = "sgdm"  # key of the artifact folder in the pyfunc (context.artifacts["sgdm"])
LOGGED_MODEL_NAME = "sgdm"
PYFUNC_FILE = Path(__file__).with_name("registry_pyfunc.py")

TAG_FILES = "sgdm.files_sha256"
TAG_MANIFEST = "data.manifest_sha256"
TAG_VERSION = "sgdm_dist.version"
TAG_COMMIT = "git.commit"
TAG_DIRTY = "git.dirty"
TAG_SOURCE = "sgdm.model_dir"
METRIC_PREFIX = "metric."

_CHECKSUMS_FORMAT = "sgdm-dist/checksums"


class RegistryError(Exception):
    """Anything the registry cannot do: unknown model/alias/version, unreachable server, bad files."""


# ---------------------------------------------------------------------------------------------
# references


@dataclass(frozen=True)
class ModelRef:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (exactly one of alias/version is set)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return (
            f"models:/{self.name}@{self.alias}"
            if self.alias
            else f"models:/{self.name}/{self.version}"
        )


_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))$")


def is_model_uri(ref: str) -> bool:
    return ref.startswith("models:/")


def parse_model_uri(ref: str) -> ModelRef:
    """``models:/NAME@ALIAS`` → ModelRef(name, alias=…); ``models:/NAME/3`` → ModelRef(name, version="3")."""
    match = _REF.match(ref)
    if not match:
        raise RegistryError(
            f"{ref!r} is not a registered-model reference: use models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    version = match["version"]
    if version is not None and not version.isdigit():
        raise RegistryError(f"{ref!r}: version must be a number, got {version!r}")
    return ModelRef(match["name"], alias=match["alias"], version=version)


def redact(uri: str) -> str:
    """``uri`` without user:password (for logs and errors)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


# ---------------------------------------------------------------------------------------------
# files and checksums


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def folder_checksums(root: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``root`` except checksums/pull info."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in UNCHECKED
    }


def write_checksums(root: Path) -> str:
    """Write ``root/checksums.json`` listing every file; returns the sha256 of that file."""
    data = {"format": _CHECKSUMS_FORMAT, "algorithm": "sha256", "files": folder_checksums(root)}
    path = Path(root) / CHECKSUMS
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return sha256_file(path)


def verify_folder(root: Path, expected_digest: str | None = None) -> dict[str, str]:
    """Check ``root`` against its ``checksums.json``; returns ``{file: sha256}``.

    ``expected_digest`` (the sha256 of checksums.json recorded in the registry) anchors the list
    itself; without it only the consistency of the folder with its own list is checked. Raises
    RegistryError naming every file that is missing, unexpected or changed.
    """
    root = Path(root)
    listing = root / CHECKSUMS
    if not listing.is_file():
        raise RegistryError(f"{root}: no {CHECKSUMS}; not a registered SGDM model folder")
    if expected_digest is not None and sha256_file(listing) != expected_digest:
        raise RegistryError(
            f"checksum mismatch: {listing} differs from the sha256 recorded at registration "
            f"({expected_digest[:12]}…); the artifact was modified after it was registered"
        )
    try:
        recorded = json.loads(listing.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{listing}: unreadable checksum list ({exc})") from None
    present = folder_checksums(root)
    problems = [f"missing {name}" for name in sorted(set(recorded) - set(present))]
    problems += [f"unexpected {name}" for name in sorted(set(present) - set(recorded))]
    problems += [
        f"changed {name} (sha256 {present[name][:12]}…, recorded {recorded[name][:12]}…)"
        for name in sorted(set(recorded) & set(present))
        if present[name] != recorded[name]
    ]
    if problems:
        raise RegistryError(f"checksum mismatch in {root}: " + "; ".join(problems))
    return present


def check_model_folder(path: Path) -> Path:
    """``path`` when it holds a saved SGDM (``model.safetensors`` + ``config.json``)."""
    path = Path(path)
    if not path.is_dir():
        raise RegistryError(f"model folder {path} does not exist")
    missing = [n for n in ("model.safetensors", "config.json") if not (path / n).is_file()]
    if missing:
        raise RegistryError(f"{path}: not a saved SGDM model folder (missing {', '.join(missing)})")
    return path


def stage_model_folder(model_dir: Path, target: Path, *, bundle_vae: bool = True) -> str:
    """Copy a trained model folder (+ its VAE as ``vae/``) to ``target`` and write checksums.json.

    Returns the sha256 of checksums.json. ``target`` must not exist yet.
    """
    model_dir = check_model_folder(model_dir)
    missing = [n for n in MODEL_FILES if not (model_dir / n).is_file()]
    if missing:
        raise RegistryError(
            f"{model_dir}: missing {', '.join(missing)}; register the folder `sgdm train` exports "
            "({output_dir}/model), which records the config and data manifest it was trained with"
        )
    target.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(model_dir / name, target / name)
    if bundle_vae:
        load_vae_for_model(model_dir).save_pretrained(target / VAE_DIR, safe_serialization=True)
    return write_checksums(target)


def load_vae_for_model(model_dir: Path) -> AutoencoderKL:
    """The VAE that decodes this model's latents, in eval mode on the CPU.

    A registered/pulled model carries it in ``model_dir/vae``; a folder straight from training
    falls back to the shards named in its ``experiment.yaml`` (``data.shard_dir``).
    """
    from diffusers import AutoencoderKL

    model_dir = Path(model_dir)
    bundled = model_dir / VAE_DIR
    if (bundled / "config.json").is_file():
        return AutoencoderKL.from_pretrained(bundled, use_safetensors=True).eval()
    from sgdm_dist.data import DataError
    from sgdm_dist.data.features import load_vae
    from sgdm_dist.data.manifest import manifest_hash

    shard_dir = _trained_config(model_dir).get("data", {}).get("shard_dir")
    if not shard_dir:
        raise RegistryError(
            f"{model_dir}: no {VAE_DIR}/ folder and no data.shard_dir in experiment.yaml; "
            "cannot tell which VAE decodes this model"
        )
    try:
        vae = load_vae(shard_dir)
        current = manifest_hash(shard_dir)
    except (DataError, OSError) as exc:
        raise RegistryError(
            f"{model_dir}: no {VAE_DIR}/ folder, and the shards it was trained on ({shard_dir}) "
            f"cannot give the VAE: {exc}"
        ) from None
    manifest = model_dir / "data_manifest.json"
    if manifest.is_file() and sha256_file(manifest) != current:
        log.warning(
            "%s/manifest.json changed since %s was trained; its VAE may not be the training one",
            shard_dir,
            model_dir,
        )
    return vae.eval()


def _trained_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "experiment.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: invalid YAML ({exc})") from None
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------
# tracking server access


def check_reachable(tracking_uri: str, timeout: float = 10.0) -> None:
    """Fail fast with RegistryError when an http(s) tracking server does not answer /health.

    MLflow's client would otherwise retry for minutes before giving up. Any HTTP answer (even
    401) proves the server is there; only a connection failure counts as unreachable.
    """
    parts = urllib.parse.urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        return
    # /health needs no credentials, and urllib would take user:password@ for part of the host.
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    url = urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", "")
    )
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(
            f"MLflow tracking server {redact(tracking_uri)} is unreachable ({reason}); "
            "check experiment.tracking_uri / MLFLOW_TRACKING_URI and that the server runs"
        ) from None


def _client(tracking_uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    check_reachable(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


@contextlib.contextmanager
def _fluent_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (start_run, log_model, register_model) at ``tracking_uri``.

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI; the previous URI and variable
    are put back afterwards so registering leaves the caller's MLflow setup as it was. The
    registry URI follows the tracking URI unless MLflow's own MLFLOW_REGISTRY_URI says otherwise.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    before, exported = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if exported is not None:
            os.environ["MLFLOW_TRACKING_URI"] = exported


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def find_version(client: MlflowClient, ref: ModelRef) -> ModelVersion:
    """The ModelVersion ``ref`` points at; RegistryError naming what exists when it does not."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(ref.name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise RegistryError(f"{ref.uri}: registry error: {exc.message}") from None
        known = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise RegistryError(
            f"unknown registered model {ref.name!r}; registered models: {known or 'none'}"
        ) from None
    aliases = dict(registered.aliases or {})
    if ref.alias is not None:
        if ref.alias not in aliases:
            shown = ", ".join(f"{a}→v{v}" for a, v in sorted(aliases.items())) or "none"
            raise RegistryError(f"model {ref.name!r} has no alias {ref.alias!r}; aliases: {shown}")
        version = str(aliases[ref.alias])
    else:
        version = str(ref.version)
    try:
        return client.get_model_version(ref.name, version)
    except MlflowException as exc:
        if not _not_found(exc):
            raise RegistryError(f"{ref.uri}: registry error: {exc.message}") from None
        versions = sorted(
            int(v.version) for v in client.search_model_versions(f"name = '{ref.name}'")
        )
        raise RegistryError(
            f"model {ref.name!r} has no version {version}; versions: {versions or 'none'}"
        ) from None


# ---------------------------------------------------------------------------------------------
# registering


@dataclass
class RegisteredVersion:
    """One model version as the registry describes it (what ``register`` and ``pull`` print)."""

    name: str
    version: str
    aliases: list[str]
    run_id: str | None
    source: str
    tags: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)  # relative path → sha256
    path: Path | None = None  # the local folder, after a pull

    @classmethod
    def of(cls, client: MlflowClient, mv: ModelVersion) -> RegisteredVersion:
        aliases = client.get_registered_model(mv.name).aliases or {}
        return cls(
            name=mv.name,
            version=str(mv.version),
            aliases=sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
            run_id=mv.run_id,
            source=mv.source,
            tags=dict(mv.tags or {}),
        )


def code_version() -> dict[str, str]:
    """Package version, plus the git commit (and whether the tree is dirty) of a source checkout."""
    tags = {TAG_VERSION: __version__}
    package = Path(__file__).resolve().parent
    try:
        top = _git(package, "rev-parse", "--show-toplevel")
        if Path(top).resolve() != package.parent:
            return tags  # the package sits inside some other repository
        tags[TAG_COMMIT] = _git(package, "rev-parse", "HEAD")
        dirty = _git(package, "status", "--porcelain", "--untracked-files=no")
        tags[TAG_DIRTY] = str(bool(dirty)).lower()
    except (OSError, subprocess.SubprocessError):
        pass  # an installed wheel: no git, the package version is the code version
    return tags


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
    )
    return out.stdout.strip()


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

    Lineage: the model is logged into the training run — ``run_id``, else the newest finished run
    of ``experiment`` whose output_dir and data-manifest hash match the folder's, else a new
    "register" run. The version is tagged with that run's metrics (``metric.<name>``), the
    data-manifest hash, the code version and the sha256 of the artifact's checksums.json.
    """
    model_dir = check_model_folder(model_dir).resolve()
    if not name or any(c in name for c in "/@:"):
        raise RegistryError(
            f"model name {name!r} is not valid: it must be non-empty, no '/', '@', ':'"
        )
    aliases = [check_alias_or_fail(a) for a in aliases]
    trained = _trained_config(model_dir)
    experiment = experiment or trained.get("experiment", {}).get("name") or "sgdm"
    manifest_sha = (
        sha256_file(model_dir / "data_manifest.json")
        if (model_dir / "data_manifest.json").is_file()
        else None
    )
    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="sgdm-register-") as tmp:
        stage = Path(tmp) / ARTIFACT_KEY
        digest = stage_model_folder(model_dir, stage, bundle_vae=bundle_vae)
        files = json.loads((stage / CHECKSUMS).read_text())["files"]
        with _fluent_uri(tracking_uri):
            run = _lineage_run(
                client, run_id, experiment, tracking_uri, model_dir, trained, manifest_sha
            )
            metrics = _run_metrics(client, run.info.run_id, model_dir)
            model_uri = _log_pyfunc(client, run, stage)
            tags = {
                **{f"{METRIC_PREFIX}{k}": repr(float(v)) for k, v in sorted(metrics.items())},
                **code_version(),
                TAG_FILES: digest,
                TAG_SOURCE: str(model_dir),
            }
            if manifest_sha:
                tags[TAG_MANIFEST] = manifest_sha
            mv = _register(model_uri, name, tags)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, mv.version)
    result = RegisteredVersion.of(client, client.get_model_version(name, mv.version))
    result.files = files
    log.info("registered %s version %s (aliases: %s)", name, mv.version, result.aliases or "none")
    return result


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
    mv = find_version(client, ModelRef(name, version=str(version)))
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
    from mlflow.entities import Param, RunTag
    from mlflow.exceptions import MlflowException

    from sgdm_dist.config import flatten

    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise RegistryError(
                f"MLflow run {run_id!r} not found at {redact(tracking_uri)}"
            ) from None
        recorded = run.data.tags.get(TAG_MANIFEST)
        if manifest_sha and recorded and recorded != manifest_sha:
            raise RegistryError(
                f"run {run_id} trained on data manifest {recorded[:12]}…, but {model_dir} "
                f"records {manifest_sha[:12]}…: this run did not produce this model"
            )
        return run
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        run = _find_training_run(client, exp.experiment_id, trained, manifest_sha)
        if run is not None:
            log.info("lineage: model from training run %s", run.info.run_id)
            return run
        experiment_id = exp.experiment_id
    else:
        experiment_id = create_experiment_id(client, experiment, tracking_uri)
    log.warning(
        "no finished training run of %s found in experiment '%s'; logging into a new run",
        model_dir,
        experiment,
    )
    run = client.create_run(experiment_id, run_name=f"register-{time.strftime('%Y%m%d-%H%M%S')}")
    # The folder's own config as params: the run then answers "how was this model made".
    items = [(k, str(v)[:6000]) for k, v in flatten(trained).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    tags = {TAG_SOURCE: str(model_dir), TAG_VERSION: __version__}
    if manifest_sha:
        tags[TAG_MANIFEST] = manifest_sha
    client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return client.get_run(run.info.run_id)


def _find_training_run(
    client: MlflowClient,
    experiment_id: str,
    trained: dict[str, Any],
    manifest_sha: str | None,
) -> Any:
    output_dir = trained.get("experiment", {}).get("output_dir")
    if not output_dir:
        return None
    clauses = [
        "attributes.status = 'FINISHED'",
        f"params.`experiment.output_dir` = '{_quote(str(output_dir))}'",
    ]
    if manifest_sha:
        clauses.append(f"tags.`{TAG_MANIFEST}` = '{manifest_sha}'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _run_metrics(client: MlflowClient, run_id: str, model_dir: Path) -> dict[str, float]:
    """The run's latest metric values; else the last values in the ``metrics.jsonl`` beside."""
    metrics = dict(client.get_run(run_id).data.metrics)
    if metrics:
        return metrics
    history = model_dir.parent / "metrics.jsonl"
    if history.is_file():
        for line in history.read_text().splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                metrics.update({k: float(v) for k, v in row.items() if k != "step"})
    return metrics


def _log_pyfunc(client: MlflowClient, run: Any, stage: Path) -> str:
    """Log the staged folder as a pyfunc into ``run`` (status and end time left as they were)."""
    import mlflow

    from sgdm_dist.registry_pyfunc import MODEL_CONFIG

    signature, example = _signature(stage)
    status, end_time = run.info.status, run.info.end_time
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.pyfunc.log_model(
            name=LOGGED_MODEL_NAME,
            python_model=str(PYFUNC_FILE),
            artifacts={ARTIFACT_KEY: str(stage)},
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
            model_config=MODEL_CONFIG,
        )
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status, end_time)
    return info.model_uri


def _register(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    import mlflow

    return mlflow.register_model(model_uri, name, tags=tags)


def _signature(stage: Path) -> tuple[Any, Any]:
    """Tensor signature: eeg float32 [-1, C, T], subject int64 [-1] → images float32 [-1, 3, H, W]."""
    import numpy as np
    from mlflow.models import infer_signature

    from sgdm_dist.registry_pyfunc import DEFAULT_PARAMS

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


# ---------------------------------------------------------------------------------------------
# pulling


def pull_model(ref: str, dst: Path, *, tracking_uri: str) -> RegisteredVersion:
    """Download ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` into ``dst``, verified.

    ``dst`` ends up as the model folder (model.safetensors, config.json, experiment.yaml,
    data_manifest.json, vae/, checksums.json, pulled.json). It must be absent, empty or an earlier
    pull; it is replaced only after every file matched the sha256 recorded at registration.
    """
    model_ref = parse_model_uri(ref)
    client = _client(tracking_uri)
    mv = find_version(client, model_ref)
    result = RegisteredVersion.of(client, mv)
    digest = result.tags.get(TAG_FILES)
    if not digest:
        raise RegistryError(
            f"{model_ref.uri} (version {mv.version}) has no '{TAG_FILES}' tag: it was not "
            "registered by `sgdm register`, so its files cannot be verified"
        )
    dst = Path(dst)
    _check_destination(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    download = dst.parent / f".{dst.name}.download-{uuid.uuid4().hex[:8]}"
    try:
        folder = _download(client, mv, download, tracking_uri)
        result.files = verify_folder(folder, expected_digest=digest)
        info = {
            "uri": model_ref.uri,
            "name": mv.name,
            "version": str(mv.version),
            "aliases": result.aliases,
            "run_id": mv.run_id,
            "source": mv.source,
            "tracking_uri": redact(tracking_uri),
            "files_sha256": digest,
            "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (folder / PULLED).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _replace_dir(folder, dst)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    result.path = dst
    return result


def _replace_dir(folder: Path, dst: Path) -> None:
    """Move ``folder`` to ``dst`` (same filesystem), replacing an earlier pull only on success."""
    old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    if dst.exists():
        dst.rename(old)
    try:
        folder.rename(dst)
    except BaseException:
        if old.exists():
            old.rename(dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_destination(dst: Path) -> None:
    if not dst.exists():
        return
    if not dst.is_dir():
        raise RegistryError(f"--to {dst}: exists and is not a folder")
    if any(dst.iterdir()) and not (dst / PULLED).is_file():
        raise RegistryError(
            f"--to {dst}: folder is not empty and holds no earlier pull ({PULLED}); "
            "refusing to replace it"
        )


def _download(client: MlflowClient, mv: ModelVersion, into: Path, tracking_uri: str) -> Path:
    """Download the MLflow model of ``mv`` into ``into``; returns its sgdm artifact folder."""
    import mlflow
    from mlflow.exceptions import MlflowException

    into.mkdir(parents=True)
    try:
        # The version's own artifact location (mlflow-artifacts:/…, s3://…, a local path): a
        # models:/ URI would be resolved again through MLflow's global registry URI.
        location = client.get_model_version_download_uri(mv.name, str(mv.version))
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=str(into), tracking_uri=tracking_uri
        )
    except (MlflowException, OSError) as exc:
        raise RegistryError(
            f"models:/{mv.name}/{mv.version}: download failed from {redact(tracking_uri)}: {exc}"
        ) from None
    mlmodel = Path(local) / "MLmodel"
    try:
        spec = yaml.safe_load(mlmodel.read_text())
        relative = spec["flavors"]["python_function"]["artifacts"][ARTIFACT_KEY]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise RegistryError(
            f"models:/{mv.name}/{mv.version}: not an SGDM pyfunc (MLmodel lacks the "
            f"'{ARTIFACT_KEY}' artifact: {exc})"
        ) from None
    folder = (Path(local) / relative).resolve()
    if not folder.is_relative_to(Path(local).resolve()) or not folder.is_dir():
        raise RegistryError(
            f"models:/{mv.name}/{mv.version}: artifact path {relative!r} in MLmodel is invalid"
        )
    return folder


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "sgdm-dist" / "models"


def resolve_model(
    ref: str,
    *,
    tracking_uri: str | None = None,
    dst: Path | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """A local model folder for ``ref``: a folder path (checked) or a verified pull of a models:/ URI.

    ``models:/…`` goes to ``dst``, else to ``{cache_dir}/{server}/{name}/{version}`` (cache_dir:
    registry.cache_dir, default ~/.cache/sgdm-dist/models), where a complete earlier pull of the
    same version is reused once it verifies again against the registry's checksum. ``tracking_uri``
    None leaves the choice to MLflow (its MLFLOW_TRACKING_URI).
    """
    if not is_model_uri(ref):
        folder = check_model_folder(Path(ref))
        if (folder / CHECKSUMS).is_file():
            verify_folder(folder)
        return folder
    if tracking_uri is None:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
    model_ref = parse_model_uri(ref)
    if dst is None:
        client = _client(tracking_uri)
        mv = find_version(client, model_ref)
        server = hashlib.sha256(redact(tracking_uri).encode()).hexdigest()[:12]
        dst = (cache_dir or default_cache_dir()) / server / mv.name / str(mv.version)
        digest = (mv.tags or {}).get(TAG_FILES)
        if digest and (dst / PULLED).is_file():
            try:
                verify_folder(dst, expected_digest=digest)
                log.info("%s: using the verified copy in %s", ref, dst)
                return dst
            except RegistryError as exc:
                log.warning("%s: cached copy is stale or damaged (%s); pulling again", ref, exc)
        ref = ModelRef(mv.name, version=str(mv.version)).uri  # the alias may move meanwhile
    pull_model(ref, dst, tracking_uri=tracking_uri)
    return dst
