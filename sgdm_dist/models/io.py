"""Model folders: ``model.safetensors`` + ``config.json``, written atomically, read without unpickling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "sgdm-dist/model"
FORMAT_VERSION = 1


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_model_dir(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The parsed ``config.json`` and the weights path of a saved model folder; clear errors."""
    path = Path(path)
    config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{path}: not a saved SGDM model folder (missing {needed.name})"
            )
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{config_path}: 'format' is not {FORMAT!r}; not an SGDM model config")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: format_version {data.get('format_version')!r} unsupported "
            f"(this package reads {FORMAT_VERSION})"
        )
    for key in ("model", "n_channels", "n_times", "n_subjects", "unet"):
        if key not in data:
            raise ValueError(f"{config_path}: missing key '{key}'")
    return data, weights_path
