"""Which model and VAE to sample with: a model folder or ``models:/NAME@ALIAS``, the training data it
was made from, the subject ids it knows, the VAE beside its shards or in its bundle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sgdm_dist.data import DataError
from sgdm_dist.data.manifest import read_manifest
from sgdm_dist.models import SGDM

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


MODELS_SCHEME = "models:/"


class ReconstructError(ValueError):
    """Bad input for reconstruction; the message names the file, shard or model and what is wrong."""


def model_folder(
    ref: str | Path, *, tracking_uri: str | None = None, dst: Path | None = None
) -> Path:
    """A local model folder for ``ref``: a folder path, or ``models:/NAME@ALIAS`` /
    ``models:/NAME/VERSION`` pulled (verified) from the MLflow registry into ``dst`` (None → the
    registry's cache). Folders with a ``checksums.json`` (pulled copies) are verified too."""
    text = str(ref)
    if not text.startswith(MODELS_SCHEME):
        text = str(Path(text).expanduser())
    if not text.startswith(MODELS_SCHEME) and not Path(text).is_dir():
        raise ReconstructError(
            f"model {text}: no such folder (give a trained model folder such as "
            "outputs/tiny/model, or models:/NAME@ALIAS)"
        )
    from sgdm_dist.registry import RegistryError, resolve_model

    try:
        return Path(resolve_model(text, tracking_uri=tracking_uri, dst=dst))
    except RegistryError as exc:
        raise ReconstructError(f"model {text}: {exc}") from None


def load_model(model_dir: Path, device: str | torch.device = "cpu") -> SGDM:
    """The saved SGDM in eval mode; a folder that is not a model is a :class:`ReconstructError`."""
    try:
        return SGDM.from_pretrained(model_dir, device=device).eval()
    except (FileNotFoundError, ValueError) as exc:
        raise ReconstructError(f"cannot load model: {exc}") from None


@dataclass(frozen=True)
class TrainingData:
    """What a model folder records about its training data (``data_manifest.json``,
    ``experiment.yaml``); fields are None when the folder does not say."""

    ch_names: list[str] | None = None
    sfreq: float | None = None
    shard_dir: str | None = None
    subjects: list[int] | None = None  # train.subjects; None: every subject of the shards


def training_data(model_dir: Path) -> TrainingData:
    ch_names, sfreq, shard_dir, subjects = None, None, None, None
    manifest = model_dir / "data_manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        ch_names, sfreq = data.get("ch_names"), data.get("sfreq")
    experiment = model_dir / "experiment.yaml"
    if experiment.is_file():
        import yaml

        data = yaml.safe_load(experiment.read_text()) or {}
        shard_dir = (data.get("data") or {}).get("shard_dir")
        subjects = (data.get("train") or {}).get("subjects")
    return TrainingData(ch_names=ch_names, sfreq=sfreq, shard_dir=shard_dir, subjects=subjects)


def check_eeg_shape(
    n_channels: int, n_times: int, model: SGDM, trained: TrainingData, where: str
) -> None:
    """Raise a :class:`ReconstructError` naming ``where`` when [C, T] does not fit the model."""
    problems = []
    if n_channels != model.n_channels:
        names = f" ({', '.join(trained.ch_names)})" if trained.ch_names else ""
        problems.append(
            f"{n_channels} channels per trial, the model takes {model.n_channels}{names}"
        )
    if n_times != model.n_times:
        secs = (
            f" ({model.n_times / trained.sfreq:g} s at {trained.sfreq:g} Hz)"
            if trained.sfreq
            else ""
        )
        problems.append(f"{n_times} time samples per trial, the model takes {model.n_times}{secs}")
    if problems:
        raise ReconstructError(f"{where}: " + "; ".join(problems))


def model_subjects(subject: Tensor, n_subjects: int, agnostic: bool = False) -> Tensor:
    """Subject ids the model can embed [B]: ids outside 1..n_subjects (never trained) → 0, the
    subject-agnostic fallback; every id → 0 when ``agnostic``."""
    if agnostic:
        return torch.zeros_like(subject)
    known = (subject >= 1) & (subject <= n_subjects)
    return torch.where(known, subject, torch.zeros_like(subject))


def find_vae(
    model_dir: Path,
    latent_channels: int,
    *,
    vae: str | None = None,
    shard_dir: str | None = None,
    trained: TrainingData | None = None,
) -> tuple[AutoencoderKL, str]:
    """The VAE to decode with and where it came from, the first of: ``vae`` (a VAE folder or a shard
    dir), ``model_dir/vae`` (registered models carry one), the manifest of ``shard_dir``, the shard dir
    the model was trained on (its ``experiment.yaml``)."""
    from diffusers import AutoencoderKL

    from sgdm_dist.data.features import load_vae

    tried: list[str] = []
    found: tuple[Any, str] | None = None
    if vae is not None:
        found = _load_vae_from(load_vae, vae, "--vae")
    elif (model_dir / "vae" / "config.json").is_file():
        found = _load_vae_from(AutoencoderKL.from_pretrained, str(model_dir / "vae"), "model")
    else:
        tried.append(f"{model_dir / 'vae'} (absent)")
        for origin, candidate in (
            ("EEG shards", shard_dir),
            ("training shards", trained.shard_dir if trained else None),
        ):
            if candidate is None:
                continue
            if not _has_manifest(candidate):
                tried.append(f"{candidate} ({origin}: no manifest.json)")
                continue
            found = _load_vae_from(load_vae, candidate, origin)
            break
    if found is None:
        raise ReconstructError(
            "no VAE to decode latents with; looked in " + ", ".join(tried or ["nothing"]) + ". "
            "Pass --vae with a VAE folder or the shard dir the model was trained on."
        )
    model, source = found
    if model.config.latent_channels != latent_channels:
        raise ReconstructError(
            f"VAE from {source} has {model.config.latent_channels} latent channels, the model "
            f"samples {latent_channels}"
        )
    return model.eval(), source


def _load_vae_from(loader: Any, where: str, origin: str) -> tuple[Any, str]:
    try:
        return loader(where), f"{where} ({origin})"
    except (OSError, ValueError, DataError) as exc:
        raise ReconstructError(f"cannot load the VAE from {where} ({origin}): {exc}") from None


def _has_manifest(shard_dir: str) -> bool:
    try:
        read_manifest(shard_dir)
    except (DataError, OSError):
        return False
    return True
