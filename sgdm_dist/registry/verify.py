"""Verify a registered SGDM pyfunc before MLflow runs any of it.

What an attacker with write access to the artifact store (not the registry database) can change,
and what catches it:

- the weights, configs, VAE, ``checksums.json``: the sha256 of ``checksums.json`` must be one the
  registry recorded on the model version (tag ``sgdm.files_sha256``), and every file must match it;
- the code file ``pyfunc_model.py`` (MLflow *executes* it at load): its sha256 must equal the
  version's ``sgdm.code_sha256`` tag (older versions without it: the installed package's copy);
- ``MLmodel``: loader module, code file name and artifact path must be the ones ``sgdm register``
  writes, with no ``code`` paths (MLflow would put them on ``sys.path``) and no other files.

:func:`load_verified` does all of that with this package's code *before* calling
``mlflow.pyfunc.load_model`` on the checked copy. A bare ``mlflow.pyfunc.load_model(uri)`` can only
run the artifact store's own ``pyfunc_model.py``, whose ``load_context`` checks the data files
(:func:`anchored_digest`) but cannot vouch for itself: see docs/registry.md.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sgdm_dist.utils.checksums import CHECKSUMS, ChecksumError, sha256_file, verify_folder

log = logging.getLogger(__name__)

TAG_FILES = "sgdm.files_sha256"  # the same tag registry.py writes at registration
TAG_CODE = "sgdm.code_sha256"
CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
ARTIFACT_KEY = "sgdm"
CALLER_DIGEST_KEY = "files_sha256"  # model_config key a caller may pass to anchor the check
LOADER_MODULE = "mlflow.pyfunc.loaders.code_model"  # what MLflow writes for a model from code
META_FILE = "registered_model_meta"  # written by MLflow on the caller's side for models:/ loads
# Files MLflow writes beside MLmodel that load_model does not execute (env files are used only
# when MLflow builds an environment; see docs/registry.md).
DATA_FILES = frozenset(
    {
        "MLmodel",
        "conda.yaml",
        "python_env.yaml",
        "requirements.txt",
        "input_example.json",
        "serving_input_example.json",
        META_FILE,
    }
)
_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class VerificationError(ChecksumError):
    """A pyfunc whose files, code or MLmodel differ from what the registry recorded."""


def code_tags() -> dict[str, str]:
    """Tags to record on a model version at registration: the sha256 of the pyfunc code file."""
    return {TAG_CODE: sha256_file(CODE_FILE)}


def load_verified(
    model_uri: str,
    *,
    tracking_uri: str | None = None,
    model_config: dict[str, Any] | None = None,
    dst: Path | None = None,
) -> Any:
    """``mlflow.pyfunc.load_model`` of ``models:/NAME@ALIAS`` or ``models:/NAME/N``, verified first.

    Downloads the version into ``dst`` (default: a temp folder, removed after loading), checks
    files, code and MLmodel against the registry, then loads that checked copy. Raises
    VerificationError naming what differs; nothing of the download is imported before.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    match = _REF.match(model_uri)
    if not match:
        raise VerificationError(f"{model_uri!r}: use models:/NAME@ALIAS or models:/NAME/VERSION")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name = match["name"]
    try:
        if match["alias"]:
            mv = client.get_model_version_by_alias(name, match["alias"])
        else:
            mv = client.get_model_version(name, match["version"])
    except MlflowException as exc:
        raise VerificationError(f"{model_uri}: {exc.message}") from None
    tags = dict(mv.tags or {})
    if not tags.get(TAG_FILES):
        raise VerificationError(
            f"models:/{name}/{mv.version} has no '{TAG_FILES}' tag: not registered by "
            "`sgdm register`, its files cannot be verified"
        )
    work = Path(tempfile.mkdtemp(prefix="sgdm-verified-")) if dst is None else Path(dst)
    try:
        location = client.get_model_version_download_uri(name, str(mv.version))
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(work), tracking_uri=tracking_uri
            )
        )
        verify_download(local, tags)
        config = {**(model_config or {}), CALLER_DIGEST_KEY: tags[TAG_FILES]}
        return mlflow.pyfunc.load_model(str(local), model_config=config)
    finally:
        if dst is None:
            shutil.rmtree(work, ignore_errors=True)


def verify_download(local: Path, tags: dict[str, str]) -> None:
    """Check a downloaded pyfunc folder (``MLmodel`` at its top) against a version's ``tags``."""
    flavor = _pyfunc_flavor(local)
    if flavor.get("loader_module") != LOADER_MODULE or flavor.get("code"):
        raise VerificationError(
            f"{local / 'MLmodel'}: python_function flavor was altered (loader_module "
            f"{flavor.get('loader_module')!r}, code paths {flavor.get('code')!r}); expected "
            f"{LOADER_MODULE!r} and none"
        )
    code_name = Path(str(flavor.get("model_code_path", ""))).name
    if code_name != CODE_FILE.name:
        raise VerificationError(
            f"{local / 'MLmodel'}: model code file is {code_name!r}, expected {CODE_FILE.name!r}"
        )
    expected_code = tags.get(TAG_CODE) or sha256_file(CODE_FILE)
    found_code = sha256_file(local / code_name)
    if found_code != expected_code:
        raise VerificationError(
            f"{local / code_name}: sha256 {found_code[:12]}… differs from the "
            f"{'registered' if tags.get(TAG_CODE) else 'installed'} code ({expected_code[:12]}…); "
            "the code MLflow would execute was modified"
        )
    artifact = _artifact_dir(local, flavor)
    verify_folder(artifact, expected_digest=tags[TAG_FILES])
    extra = sorted(
        p.relative_to(local).as_posix()
        for p in local.rglob("*")
        if p.is_file()
        and not p.is_relative_to(artifact)
        and p.relative_to(local).as_posix() not in DATA_FILES | {code_name}
    )
    if extra:
        raise VerificationError(f"{local}: files that no registration writes: {', '.join(extra)}")


def anchored_digest(artifact_root: Path, model_config: dict[str, Any] | None) -> str | None:
    """The registry-recorded sha256 of ``artifact_root/checksums.json``, for ``load_context``.

    From the caller's ``model_config["files_sha256"]`` (``load_verified`` passes it), else, for a
    ``models:/`` load, from the tag of the version MLflow names in ``registered_model_meta`` (a
    file MLflow writes on the caller's side after the download). Returns None when neither exists
    (a folder or ``runs:/`` load: only the folder's own list can be checked); raises
    VerificationError when the version has no recorded sha256.
    """
    mlmodel = _find_mlmodel(artifact_root)
    spec = _read_mlmodel(mlmodel) if mlmodel is not None else {}
    logged = (spec.get("flavors", {}).get("python_function", {}) or {}).get("config") or {}
    if CALLER_DIGEST_KEY in logged:  # an honest MLmodel never carries it: only a caller may
        raise VerificationError(f"{mlmodel}: carries '{CALLER_DIGEST_KEY}' itself (tampered)")
    if (model_config or {}).get(CALLER_DIGEST_KEY):
        return str(model_config[CALLER_DIGEST_KEY])
    meta = mlmodel.with_name(META_FILE) if mlmodel is not None else None
    if meta is None or not meta.is_file():
        return None
    from mlflow.tracking import MlflowClient

    info = _read_mlmodel(meta)
    name, version = str(info.get("model_name")), str(info.get("model_version"))
    recorded = (MlflowClient().get_model_version(name, version).tags or {}).get(TAG_FILES)
    if not recorded:
        raise VerificationError(
            f"models:/{name}/{version} has no '{TAG_FILES}' tag: not registered by "
            "`sgdm register`, its files cannot be verified"
        )
    return str(recorded)


def _find_mlmodel(artifact_root: Path) -> Path | None:
    for parent in list(Path(artifact_root).resolve().parents)[:3]:
        if (parent / "MLmodel").is_file():
            return parent / "MLmodel"
    return None


def _read_mlmodel(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise VerificationError(f"{path}: unreadable ({exc})") from None
    if not isinstance(spec, dict):
        raise VerificationError(f"{path}: not an MLmodel mapping")
    return spec


def _pyfunc_flavor(local: Path) -> dict[str, Any]:
    flavor = _read_mlmodel(local / "MLmodel").get("flavors", {}).get("python_function")
    if not isinstance(flavor, dict):
        raise VerificationError(f"{local / 'MLmodel'}: no python_function flavor")
    return flavor


def _artifact_dir(local: Path, flavor: dict[str, Any]) -> Path:
    try:
        relative = flavor["artifacts"][ARTIFACT_KEY]["path"]
    except (KeyError, TypeError):
        raise VerificationError(f"{local / 'MLmodel'}: no '{ARTIFACT_KEY}' artifact") from None
    folder = (local / str(relative)).resolve()
    if not folder.is_relative_to(local.resolve()) or not folder.is_dir():
        raise VerificationError(f"{local / 'MLmodel'}: artifact path {relative!r} is invalid")
    return folder


def describe(digest: str | None) -> str:
    """One log line on how far a load was verified."""
    if digest:
        return f"verified against the registry's {TAG_FILES} {digest[:12]}…"
    return (
        f"verified against its own {CHECKSUMS} only: no registered version records its sha256 "
        "(use sgdm_dist.registry.verify.load_verified, or model_config={'files_sha256': …})"
    )
