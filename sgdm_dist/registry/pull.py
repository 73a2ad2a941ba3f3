"""Pulling: a registered version → a verified local folder (``sgdm pull``, ``resolve_model``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from sgdm_dist.registry.core import (
    ARTIFACT_KEY,
    TAG_FILES,
    ModelRef,
    RegistryError,
    check_model_folder,
    is_model_uri,
    parse_model_uri,
    redact,
    verify_folder,
)
from sgdm_dist.registry.server import RegisteredVersion, _client, find_version
from sgdm_dist.utils.atomic import recover_dir, remove_leftovers
from sgdm_dist.utils.checksums import (
    CHECKSUMS,
    PULLED,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
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
    mv = find_version(client, model_ref, tracking_uri)
    result = RegisteredVersion.of(client, mv)
    digest = result.tags.get(TAG_FILES)
    if not digest:
        raise RegistryError(
            f"{model_ref.uri} (version {mv.version}) has no '{TAG_FILES}' tag: it was not "
            "registered by `sgdm register`, so its files cannot be verified"
        )
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # What a killed pull left: a renamed-aside earlier pull is put back, stale downloads go.
    recover_dir(dst)
    remove_leftovers(dst.parent, f".{dst.name}.download-*")
    _check_destination(dst)
    download = dst.parent / f".{dst.name}.download-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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


def _cached_copy_verifies(ref: str, dst: Path, digest: str, version: str) -> bool:
    """Whether ``dst`` holds a complete earlier pull of the version whose checksums.json has
    ``digest``, every file verified; says why when a copy there cannot be reused."""
    if not (dst / PULLED).is_file():
        return False
    if _pulled_digest(dst) not in (None, digest):
        # Not damage: a store recreated at the same address numbers its versions anew.
        log.info(
            "%s: the cached copy in %s is of another model than version %s holds now "
            "(the registry was recreated or the version re-registered); pulling it",
            ref,
            dst,
            version,
        )
        return False
    try:
        verify_folder(dst, expected_digest=digest)
    except RegistryError as exc:
        log.warning("%s: cached copy is damaged (%s); pulling again", ref, exc)
        return False
    log.info("%s: using the verified copy in %s", ref, dst)
    return True


def _pulled_digest(folder: Path) -> str | None:
    """The checksums digest an earlier pull recorded in ``folder/pulled.json`` (None: unreadable)."""
    try:
        return json.loads((folder / PULLED).read_text()).get("files_sha256")
    except (OSError, ValueError, AttributeError):
        return None


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
    None is an error for a models:/ reference (never MLflow's default ./mlflow.db).
    """
    if not is_model_uri(ref):
        folder = check_model_folder(Path(ref))
        if (folder / CHECKSUMS).is_file():
            verify_folder(folder)
        return folder
    if not tracking_uri:
        # MLflow's own default would be ./mlflow.db, created empty wherever the command runs.
        raise RegistryError(
            f"{ref}: no MLflow tracking server or store given: set MLFLOW_TRACKING_URI or pass "
            "--tracking-uri (a models:/ reference is looked up in a registry; not in ./mlflow.db)"
        )
    model_ref = parse_model_uri(ref)
    if dst is None:
        client = _client(tracking_uri)
        mv = find_version(client, model_ref, tracking_uri)
        server = hashlib.sha256(redact(tracking_uri).encode()).hexdigest()[:12]
        dst = (cache_dir or default_cache_dir()) / server / mv.name / str(mv.version)
        digest = (mv.tags or {}).get(TAG_FILES)
        if digest and _cached_copy_verifies(ref, dst, digest, mv.version):
            return dst
        ref = ModelRef(mv.name, version=str(mv.version)).uri  # the alias may move meanwhile
    pull_model(ref, dst, tracking_uri=tracking_uri)
    return dst
