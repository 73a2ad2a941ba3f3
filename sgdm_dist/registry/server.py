"""Talking to the tracking server: reachability, clients, finding versions, code version."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sgdm_dist import __version__
from sgdm_dist.registry.core import (
    TAG_COMMIT,
    TAG_DIRTY,
    TAG_VERSION,
    ModelRef,
    RegistryError,
    redact,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
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


def _client(tracking_uri: str, *, create: bool = False) -> MlflowClient:
    """A client for ``tracking_uri``; fails fast on a dead server, and (unless ``create``) on a
    SQLite store whose database file does not exist, which MLflow would silently create empty."""
    from mlflow.tracking import MlflowClient

    check_reachable(tracking_uri)
    if not create and tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise RegistryError(
                f"no MLflow store at {tracking_uri}: {db} does not exist; point "
                "MLFLOW_TRACKING_URI / --tracking-uri / experiment.tracking_uri at the store "
                "that holds the registry"
            )
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


def find_version(
    client: MlflowClient, ref: ModelRef, tracking_uri: str | None = None
) -> ModelVersion:
    """The ModelVersion ``ref`` points at; RegistryError naming what exists (and in which store)
    when it does not."""
    from mlflow.exceptions import MlflowException

    store = f" in {redact(tracking_uri)}" if tracking_uri else ""
    try:
        registered = client.get_registered_model(ref.name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise RegistryError(f"{ref.uri}: registry error: {exc.message}") from None
        known = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise RegistryError(
            f"unknown registered model {ref.name!r}{store}; registered models: {known or 'none'}"
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
    package = Path(__file__).resolve().parents[1]
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
