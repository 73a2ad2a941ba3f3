"""Model folder files: names, format versions, and checks that run before anything is loaded.

The layout itself (diffusers' ``unet/`` and ``scheduler/`` beside the SGDM parts) and the writing
and loading are in :mod:`sgdm_dist.models.export`. Nothing is ever unpickled.

Reading checks the weights file's safetensors header against its size first, so a truncated or
damaged ``model.safetensors`` is a :class:`ModelFileError` naming the file, the tensor and the
expected vs found byte counts, not a Rust/Python traceback from deep inside the loader.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "sgdm-dist/model"
FORMAT_VERSION = 2  # 2: diffusers layout (unet/, scheduler/); 1: the UNet inside model.safetensors
READ_VERSIONS = (1, 2)
UNET_DIR = "unet"
UNET_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' own file name
SCHEDULER_DIR = "scheduler"
_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header


class ModelFileError(ValueError):
    """A saved model file that cannot be read; the message names the file and what is wrong."""


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_model_dir(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The parsed ``config.json`` and the (checked) weights path of a saved model folder."""
    path = Path(path)
    config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{path}: not a saved SGDM model folder (missing {needed.name})"
            )
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{config_path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f"{config_path}: 'format' is not {FORMAT!r}; not an SGDM model config")
    version = data.get("format_version")
    if version not in READ_VERSIONS:
        raise ModelFileError(
            f"{config_path}: format_version {version!r} unsupported "
            f"(this package reads {list(READ_VERSIONS)})"
        )
    required = ("model", "n_channels", "n_times", "n_subjects") + (
        ("unet",) if version == 1 else ()
    )
    for key in required:
        if key not in data:
            raise ModelFileError(f"{config_path}: missing key '{key}'")
    if version >= 2:
        unet_dir = path / UNET_DIR
        for needed in (unet_dir / CONFIG_NAME, unet_dir / UNET_WEIGHTS_NAME):
            if not needed.is_file():
                raise ModelFileError(
                    f"{path}: missing {needed.relative_to(path)} (format {version} keeps the UNet "
                    f"in {UNET_DIR}/, diffusers' layout)"
                )
        check_safetensors(unet_dir / UNET_WEIGHTS_NAME)
    check_safetensors(weights_path)
    return data, weights_path


def check_safetensors(path: str | Path) -> dict[str, Any]:
    """Parse the header of a safetensors file and check that every tensor's bytes are there.

    Returns the header (``{tensor name: {"dtype", "shape", "data_offsets"}}``). Raises
    ModelFileError naming the file, the first tensor cut off and expected vs found sizes.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelFileError(
                f"{path}: truncated: {size} bytes, a safetensors file needs at least 8"
            )
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            raise ModelFileError(
                f"{path}: truncated or not safetensors: header declares {header_len} bytes, "
                f"file has {size - 8} after the length prefix"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        ends = {name: int(info["data_offsets"][1]) for name, info in tensors.items()}
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelFileError(f"{path}: unreadable safetensors header ({exc})") from None
    data_bytes = size - 8 - header_len
    expected = max(ends.values(), default=0)
    if data_bytes != expected:
        cut = sorted((end, name) for name, end in ends.items() if end > data_bytes)
        where = f"; tensor '{cut[0][1]}' is cut off" if cut else ""
        raise ModelFileError(
            f"{path}: truncated or damaged: expected {8 + header_len + expected} bytes "
            f"(header + {len(ends)} tensors), found {size}{where}"
        )
    return header
