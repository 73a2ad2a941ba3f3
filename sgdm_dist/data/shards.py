"""WebDataset tar shards: one sample = one EEG trial (schema in docs/data.md).

Writing happens per *unit* (split × subject × session): shards are written under temporary names,
renamed into place, and a small unit record (``.units/{split}-{unit}.json``, with counts and
sha256s) is written last. A re-run skips units whose record and shards are intact, so an interrupted
``prepare`` resumes without duplicating or losing samples. Tars have fixed mtimes, so identical input
gives identical bytes.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import webdataset as wds
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from sgdm_dist.data import DataError
from sgdm_dist.data.io import atomic_write_json, sha256_file

UNITS_DIR = ".units"
REQUIRED_KEYS = ("eeg.npy", "clip.npy", "latent.npy", "json")


@dataclass
class Trial:
    """One sample before encoding. Arrays: eeg [C, T], clip [D], latent [4, h, w]."""

    key: str
    eeg: np.ndarray
    clip: np.ndarray
    latent: np.ndarray
    meta: dict[str, Any]
    image_png: bytes | None = None


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def encode(trial: Trial) -> dict[str, Any]:
    """Trial → WebDataset sample dict of bytes (float16 arrays, JSON metadata, optional PNG)."""
    sample: dict[str, Any] = {
        "__key__": trial.key,
        "eeg.npy": npy_bytes(trial.eeg.astype(np.float16)),
        "clip.npy": npy_bytes(trial.clip.astype(np.float16)),
        "latent.npy": npy_bytes(trial.latent.astype(np.float16)),
        "json": json.dumps(trial.meta, sort_keys=True).encode(),
    }
    if trial.image_png is not None:
        sample["img.png"] = trial.image_png
    return sample


def unit_record_path(out_dir: Path, split: str, unit: str) -> Path:
    return Path(out_dir) / UNITS_DIR / f"{split}-{unit}.json"


def read_unit_record(out_dir: Path, split: str, unit: str, fingerprint: str) -> dict | None:
    """The record of a finished unit if it is complete and made with the same settings, else None."""
    path = unit_record_path(out_dir, split, unit)
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    if rec.get("fingerprint") != fingerprint:
        return None
    for shard in rec["shards"]:
        f = Path(out_dir) / shard["name"]
        if not f.exists() or sha256_file(f) != shard["sha256"]:
            return None
    return rec


def write_unit(
    out_dir: Path,
    split: str,
    unit: str,
    trials: Iterable[Trial],
    max_per_shard: int,
    fingerprint: str,
    meta: dict[str, Any],
) -> dict:
    """Write one unit's trials as ``{split}/{unit}-NNNNNN.tar`` shards, then its record."""
    split_dir = Path(out_dir) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    batch: list[Trial] = []

    def flush() -> None:
        name = f"{split}/{unit}-{len(shards):06d}.tar"
        final = Path(out_dir) / name
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        # Integer mtime: a float one makes tarfile add a PAX header to every member (2× slower reads).
        with wds.TarWriter(str(tmp), encoder=False, mtime=0) as sink:
            for t in batch:
                sink.write(encode(t))
        os.replace(tmp, final)
        shards.append({"name": name, "n_samples": len(batch), "sha256": sha256_file(final)})
        batch.clear()

    for trial in trials:
        batch.append(trial)
        if len(batch) == max_per_shard:
            flush()
    if batch:
        flush()
    rec = {"split": split, "unit": unit, "fingerprint": fingerprint, "shards": shards, **meta}
    atomic_write_json(unit_record_path(out_dir, split, unit), rec)
    return rec


def _open(url: str) -> Any:
    if "://" in url and not url.startswith("file://"):
        return fsspec.open(url, "rb").open()
    return open(url.removeprefix("file://"), "rb")


def iter_shard(url: str, expected: int | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples (dict of bytes + ``__key__``/``__url__``) of one shard.

    Raises :class:`DataError` naming the shard for a corrupt/truncated tar, a sample missing a
    required key, or a sample count that differs from the manifest's (``expected``).
    """
    n = 0
    current: dict[str, Any] | None = None
    try:
        with _open(url) as f:
            for member in tar_file_iterator(f):
                key, ext = base_plus_ext(member["fname"])
                data = member["data"]
                if current is not None and current["__key__"] != key:
                    yield _checked(current, url)
                    n += 1
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"corrupt or truncated shard {url}: {exc}") from None
    if current is not None:
        n += 1
        # tarfile ends a stream cut at a header boundary silently, so a truncated shard shows up
        # as a short count with a partial last sample: report the count, not the partial sample.
        if expected is None or n == expected:
            yield _checked(current, url)
    if expected is not None and n != expected:
        raise DataError(
            f"shard {url} holds {n} samples but the manifest says {expected} (truncated or replaced)"
        )


def _checked(sample: dict[str, Any], url: str) -> dict[str, Any]:
    missing = [k for k in REQUIRED_KEYS if k not in sample]
    if missing:
        raise DataError(f"shard {url}: sample '{sample['__key__']}' is missing {missing}")
    return sample


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def load_npy(buf: bytes) -> np.ndarray:
    """``np.load`` for in-memory .npy bytes, parsing each distinct header once (it is the same for
    every sample of a shard set, and parsing it dominates decoding small arrays)."""
    if buf[:8] == b"\x93NUMPY\x01\x00":
        end = 10 + int.from_bytes(buf[8:10], "little")
        header = buf[:end]
        parsed = _NPY_HEADERS.get(header)
        if parsed is None:
            stream = io.BytesIO(buf)
            np.lib.format.read_magic(stream)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
            if fortran or dtype.hasobject:
                return np.load(io.BytesIO(buf), allow_pickle=False)
            parsed = _NPY_HEADERS[header] = (dtype, shape, end)
        dtype, shape, offset = parsed
        return np.frombuffer(buf, dtype=dtype, offset=offset).reshape(shape)
    return np.load(io.BytesIO(buf), allow_pickle=False)


def decode(sample: dict[str, Any]) -> dict[str, Any]:
    """Bytes → arrays as stored (float16; the loader converts whole batches), metadata dict and the
    optional image [3, H, W] float32 in [0, 1]."""
    url = sample.get("__url__", "?")
    try:
        out: dict[str, Any] = {
            "key": sample["__key__"],
            "eeg": load_npy(sample["eeg.npy"]),
            "clip": load_npy(sample["clip.npy"]),
            "latent": load_npy(sample["latent.npy"]),
            "meta": json.loads(sample["json"]),
        }
        if "img.png" in sample:
            from PIL import Image

            with Image.open(io.BytesIO(sample["img.png"])) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            out["image"] = arr.transpose(2, 0, 1).copy()
    except (ValueError, KeyError, OSError) as exc:
        raise DataError(
            f"shard {url}: sample '{sample.get('__key__')}' cannot be decoded: {exc}"
        ) from None
    if not np.isfinite(out["eeg"]).all():
        raise DataError(f"shard {url}: sample '{out['key']}' has non-finite EEG")
    return out
