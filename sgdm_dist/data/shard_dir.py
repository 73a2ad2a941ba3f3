"""One ``prepare`` at a time per shard folder, one set of settings per folder, no kill leftovers.

- :func:`locked`: an ``fcntl`` lock on ``{shard_dir}/.prepare.lock`` (released by the kernel when
  the holder dies, so a SIGKILLed run never leaves a stale lock).
- :func:`clean_leftovers`: temp shards ``.*.tar.tmp-PID``, temp unit records, ``encoders/.vae.tmp-*``
  and renamed-aside encoder folders that a killed run left (only those whose process is gone).
- :func:`check_settings`: ``{shard_dir}/.settings.json`` records what the shards were made with; a
  run with other settings is refused (or, with ``overwrite``, the folder is emptied first), so one
  folder never mixes e.g. whitened and µV subjects.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgdm_dist.data import DataError
from sgdm_dist.data.io import atomic_write_json
from sgdm_dist.utils.atomic import recover_dir, remove_leftovers

if TYPE_CHECKING:
    from sgdm_dist.config import Config

LOCK = ".prepare.lock"
SETTINGS = ".settings.json"


@contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold the folder's prepare lock; :class:`DataError` naming the holder if another has it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise DataError(
                f"{out_dir} is being written by another `sgdm prepare` (pid {holder}, lock "
                f"{path}); wait for it to finish or use another data.shard_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def clean_leftovers(out_dir: Path) -> list[Path]:
    """Remove what a killed prepare left behind (call with the lock held); returns what went."""
    removed: list[Path] = []
    for sub in (out_dir, *(p for p in out_dir.iterdir() if p.is_dir())):
        removed += remove_leftovers(sub, ".*.tmp-*")
    enc = out_dir / "encoders"
    if enc.is_dir():
        for aside in list(enc.glob(".*.old-*")):
            name = aside.name[1:].split(".old-", 1)[0]
            recover_dir(enc / name)
    return removed


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def read_settings(out_dir: str | Path) -> dict[str, Any] | None:
    """What the shards in ``out_dir`` were made with (``.settings.json``), None when not recorded."""
    path = Path(out_dir) / SETTINGS
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def check_settings(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse a folder prepared with other settings (or empty it when ``overwrite``); record ours."""
    path = out_dir / SETTINGS
    old = read_settings(out_dir)
    if old is None and (out_dir / "manifest.json").exists():
        old = {"unknown": "shards written before settings were recorded"}
    settings = json.loads(json.dumps(settings))  # the JSON form, as it is compared next time
    if old is not None and old != settings:
        if not overwrite:
            a, b = _flat(old), _flat(settings)
            diff = [
                f"{k}: folder {a.get(k)!r}, config {b.get(k)!r}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
            raise DataError(
                f"{out_dir} holds shards made with other settings; mixing them in one folder is "
                "refused:\n  " + "\n  ".join(diff[:12]) + "\nuse another data.shard_dir, or "
                "`sgdm prepare --overwrite` to delete these shards first"
            )
        empty_folder(out_dir)
    atomic_write_json(path, settings)


def empty_folder(out_dir: Path) -> None:
    """Delete everything in ``out_dir`` but the lock file; the manifest goes first."""
    (out_dir / "manifest.json").unlink(missing_ok=True)
    for p in out_dir.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def settings_of(cfg: Config) -> dict:
    """What the shards depend on: a folder holds shards of exactly one such set."""
    return {
        "format": 1,
        "data": cfg.data.model_dump(
            mode="json",
            include={
                "source",
                "preprocess",
                "shard_max_samples",
                "val_fraction",
                "val_by",
                "image_splits",
                "features",
            },
        ),
        "seed": cfg.experiment.seed,
    }
