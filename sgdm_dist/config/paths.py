"""Every local path of a config made absolute against one folder, once, when the config is loaded.

Relative paths in a config mean "relative to the folder `sgdm` was started from". Ray trials chdir
into their own folders, pods and subprocesses have other working directories; resolving at load
time makes every later reader see the same files. URLs (``s3://…``, ``pipe:…``), hub ids and
model-name tags stay as they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# dotted key → how to resolve its value
_ALWAYS = "path"  # a local path (None stays None)
_URL_OR_PATH = "url_or_path"  # a path unless it carries a scheme (s3://, pipe:, file://)
_IF_EXISTS = "if_exists"  # a hub id / tag / path: made absolute only when the path exists
_SQLITE = "sqlite"  # an MLflow URI whose sqlite:/// database path may be relative

PATH_KEYS: dict[str, str] = {
    "experiment.output_dir": _ALWAYS,
    "experiment.tracking_uri": _SQLITE,
    "data.raw_dir": _ALWAYS,
    "data.image_dir": _ALWAYS,
    "data.shard_dir": _URL_OR_PATH,
    "data.cache_dir": _ALWAYS,
    "data.features.clip_pretrained": _IF_EXISTS,
    "data.features.vae": _IF_EXISTS,
    "model.unet.pretrained": _IF_EXISTS,
    "tune.storage_path": _ALWAYS,
    "registry.cache_dir": _ALWAYS,
    "evaluate.weights_dir": _URL_OR_PATH,
}

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def absolute(value: Any, base: Path) -> Any:
    """``value`` (str or Path) as an absolute path against ``base``, ``~`` expanded; type kept."""
    path = Path(value).expanduser()
    out = path if path.is_absolute() else base / path
    return type(value)(out) if isinstance(value, str) else out


def _resolve(kind: str, value: Any, base: Path) -> Any:
    if value is None or value == "":
        return value
    text = str(value)
    if kind == _ALWAYS:
        return absolute(value, base)
    if kind == _URL_OR_PATH:
        return value if _SCHEME.match(text) and not text.startswith("file:") else _file(value, base)
    if kind == _IF_EXISTS:
        return absolute(value, base) if absolute(Path(text), base).exists() else value
    if kind == _SQLITE and text.startswith("sqlite:///") and not text.startswith("sqlite:////"):
        return "sqlite:///" + str(absolute(text.removeprefix("sqlite:///"), base))
    return value


def _file(value: Any, base: Path) -> Any:
    text = str(value)
    if text.startswith("file://"):
        return "file://" + str(absolute(text.removeprefix("file://"), base))
    return absolute(value, base)


def resolve_paths(tree: dict[str, Any], base: Path, keys: dict[str, str] = PATH_KEYS) -> None:
    """Make the local paths of a plain config ``tree`` (``Config.model_dump()``) absolute, in place."""
    for dotted, kind in keys.items():
        *parents, leaf = dotted.split(".")
        node: Any = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = _resolve(kind, node[leaf], base)
