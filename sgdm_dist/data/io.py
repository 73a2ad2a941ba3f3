"""Small file helpers of the data pipeline: atomic JSON/npy writes (see sgdm_dist.utils.atomic) and content hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from sgdm_dist.data import DataError
from sgdm_dist.utils.atomic import atomic_write


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str | Path, obj: Any, allow_pickle: bool = False) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, obj, allow_pickle=allow_pickle)

    return atomic_write(path, write)


# --- reading shards and manifests from anywhere ----------------------------------------------
# Local paths and ``pipe:`` / ``http(s)://`` go through WebDataset's own opener (``wds.gopen``);
# object stores (``s3://``, ``gs://``, ``memory://`` …) through fsspec. A ``pipe:`` shard_dir is a
# command template: ``{}`` is replaced by the file's path relative to the shard folder.

GOPEN_SCHEMES = ("pipe", "http", "https")


def scheme(url: str) -> str:
    if url.startswith("pipe:"):
        return "pipe"
    if "://" in url:
        return url.split("://", 1)[0]
    return "file"


def join_url(root: str, name: str) -> str:
    """The URL of ``name`` (e.g. ``train/x.tar``) inside the shard folder ``root``."""
    if scheme(root) == "pipe":
        if "{}" not in root:
            raise DataError(
                f"pipe: shard_dir {root!r} needs a '{{}}' where the file name goes, e.g. "
                "'pipe:aws s3 cp s3://bucket/shards/{} -'"
            )
        return root.replace("{}", name)
    return f"{root.rstrip('/')}/{name}"


def open_url(url: str) -> Any:
    """A binary read stream for ``url``; a :class:`DataError` for an unknown protocol or a missing
    package (s3fs, gcsfs) instead of a raw ValueError/ImportError."""
    import fsspec
    import webdataset as wds

    kind = scheme(url)
    if kind == "file":
        return open(url.removeprefix("file://"), "rb")
    if kind in GOPEN_SCHEMES:
        return wds.gopen(url, "rb")
    try:
        fsspec.get_filesystem_class(kind)
    except ValueError:
        raise DataError(
            f"{url}: unknown protocol '{kind}' (use a local path, pipe:, http(s)://, s3://, gs:// "
            "or another fsspec protocol)"
        ) from None
    except ImportError as exc:
        raise DataError(
            f"{url}: protocol '{kind}' needs a package that is missing: {exc}"
        ) from None
    return fsspec.open(url, "rb").open()


def read_url(url: str) -> bytes:
    """Whole content of ``url``; FileNotFoundError when it does not exist (also for a failing pipe)."""
    try:
        with open_url(url) as f:
            data = f.read()
    except OSError as exc:
        if scheme(url) == "pipe":  # a pipe's command failed: most often the object is not there
            raise FileNotFoundError(f"{url}: {exc}") from None
        raise
    return data
