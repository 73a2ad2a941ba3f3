"""Model folders in diffusers' layout: the UNet and scheduler loadable by plain diffusers.

A folder written by :meth:`SGDM.save_pretrained` (format version 2)::

    config.json          SGDM config: format, the ``model`` section, EEG dims (channels, times, subjects)
    model.safetensors    every SGDM weight except the UNet's (encoder, heads, conditioning)
    unet/                UNet2DConditionModel.save_pretrained: config.json + diffusion_pytorch_model.safetensors
    scheduler/           the training noise scheduler: scheduler_config.json

so ``UNet2DConditionModel.from_pretrained(folder, subfolder="unet")`` and
``DDPMScheduler.from_pretrained(folder, subfolder="scheduler")`` work for diffusers users. Folders of
format version 1 (the UNet's config inline in config.json, its weights in model.safetensors) still
load. The folder is written atomically (a temp folder renamed into place), and every weights file is
size-checked against its safetensors header before loading (:func:`io.check_safetensors`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from sgdm_dist.config.model import ModelConfig
from sgdm_dist.models import io
from sgdm_dist.utils.atomic import write_dir_atomically
from sgdm_dist.utils.checksums import sha256_file

if TYPE_CHECKING:
    from sgdm_dist.models.sgdm import SGDM

UNET_PREFIX = "unet."  # the UNet's keys in the SGDM state dict


@dataclass(frozen=True)
class ModelParts:
    """What a model folder holds, read and checked, before any SGDM is built."""

    cfg: ModelConfig
    dims: dict[str, int]  # n_channels, n_times, n_subjects
    unet: UNet2DConditionModel
    weights: Path  # model.safetensors
    format_version: int


def config_dict(model: SGDM) -> dict[str, Any]:
    """config.json of a folder: the SGDM parts' own config; the UNet's is in ``unet/config.json``."""
    return {
        "format": io.FORMAT,
        "format_version": io.FORMAT_VERSION,
        "model": model.cfg.model_dump(mode="json"),
        "n_channels": model.n_channels,
        "n_times": model.n_times,
        "n_subjects": model.n_subjects,
    }


def write_model_dir(model: SGDM, path: str | Path) -> Path:
    """Write ``model`` to ``path`` in the layout above, atomically; returns ``path``."""

    def fill(tmp: Path) -> None:
        # Clones: safetensors refuses tensors that share storage, and the file must not alias the
        # live parameters of a model that keeps training.
        own = {
            k: v.detach().to("cpu").contiguous().clone()
            for k, v in model.state_dict().items()
            if not k.startswith(UNET_PREFIX)
        }
        save_file(own, str(tmp / io.WEIGHTS_NAME))
        model.unet.save_pretrained(tmp / io.UNET_DIR, safe_serialization=True)
        model.noise_scheduler.save_pretrained(tmp / io.SCHEDULER_DIR)
        io.write_json(tmp / io.CONFIG_NAME, config_dict(model))

    return write_dir_atomically(path, fill)


def read_model_parts(path: str | Path) -> ModelParts:
    """Read and check a model folder (either format version); the UNet comes back built."""
    path = Path(path)
    data, weights = io.read_model_dir(path)
    try:
        cfg = ModelConfig.model_validate(data["model"])
    except ValueError as exc:
        raise ValueError(f"{path / io.CONFIG_NAME}: invalid 'model' section: {exc}") from None
    version = int(data["format_version"])
    if version == 1:
        unet = UNet2DConditionModel.from_config(data["unet"])
    else:
        unet = UNet2DConditionModel.from_pretrained(
            path, subfolder=io.UNET_DIR, use_safetensors=True, low_cpu_mem_usage=False
        )
    dims = {k: int(data[k]) for k in ("n_channels", "n_times", "n_subjects")}
    return ModelParts(cfg=cfg, dims=dims, unet=unet, weights=weights, format_version=version)


def load_weights(model: SGDM, parts: ModelParts) -> None:
    """Load ``model.safetensors`` into ``model`` (the UNet's weights too for format 1).

    Raises ValueError naming the file and the keys when the weights do not match the config.
    """
    state = load_file(str(parts.weights), device="cpu")
    expected = model.state_dict()
    if parts.format_version >= 2:  # the UNet was loaded from unet/ already
        expected = {k: v for k, v in expected.items() if not k.startswith(UNET_PREFIX)}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{parts.weights}: weights do not match the config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{parts.weights}: weights do not match config.json: {exc}") from None


def model_digest(path: str | Path) -> str:
    """sha256 identifying a model folder's weights: every weights file, by relative path.

    Format 1 folders have one weights file; the digest is then that file's sha256, as before.
    """
    path = Path(path)
    files = [path / io.WEIGHTS_NAME]
    unet_weights = path / io.UNET_DIR / io.UNET_WEIGHTS_NAME
    if unet_weights.is_file():
        files.append(unet_weights)
    if len(files) == 1:
        return sha256_file(files[0])
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(path).as_posix()} {sha256_file(f)}\n".encode())
    return digest.hexdigest()
