"""Registry basics: model references, errors, tags, and the staged model folder (+ VAE)."""

from __future__ import annotations

import logging
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sgdm_dist.utils.checksums import (  # noqa: F401  (re-exported: registry.sha256_file etc.)
    CHECKSUMS,
    PULLED,
    UNCHECKED,
    ChecksumError,
    folder_checksums,
    sha256_file,
    write_checksums,
)
from sgdm_dist.utils.checksums import verify_folder as _verify_folder

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

log = logging.getLogger(__name__)

MODEL_FILES = ("model.safetensors", "config.json", "experiment.yaml", "data_manifest.json")
MODEL_DIRS = ("unet", "scheduler")  # diffusers' layout (model format 2); absent in format 1 folders
VAE_DIR = "vae"
ARTIFACT_KEY = "sgdm"  # key of the artifact folder in the pyfunc (context.artifacts["sgdm"])
LOGGED_MODEL_NAME = "sgdm"
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")

TAG_FILES = "sgdm.files_sha256"
TAG_MANIFEST = "data.manifest_sha256"
TAG_VERSION = "sgdm_dist.version"
TAG_COMMIT = "git.commit"
TAG_DIRTY = "git.dirty"
TAG_SOURCE = "sgdm.model_dir"
TAG_TRAINING_RUN = "sgdm.training_run"
METRIC_PREFIX = "metric."


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


def verify_folder(root: Path, expected_digest: str | None = None) -> dict[str, str]:
    """:func:`sgdm_dist.utils.checksums.verify_folder` (one implementation for every reader), with its
    ChecksumError as a RegistryError naming every missing, unexpected or changed file."""
    try:
        return _verify_folder(root, expected_digest)
    except ChecksumError as exc:
        raise RegistryError(str(exc)) from None


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
    for name in MODEL_DIRS:
        if (model_dir / name).is_dir():
            shutil.copytree(model_dir / name, target / name)
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
