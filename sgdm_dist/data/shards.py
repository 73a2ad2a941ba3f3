"""WebDataset tar shards: one sample = one EEG trial (schema in docs/data.md).

Writing happens per *unit* (split × subject × session): shards are written under temporary names,
renamed into place, and a small unit record (``.units/{split}-{unit}.json``, with counts and
sha256s) is written last. A re-run skips units whose record and shards are intact, so an interrupted
``prepare`` resumes without duplicating or losing samples. Tars have fixed mtimes, so identical input
gives identical bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from sgdm_dist.data import DataError
from sgdm_dist.data.io import atomic_write_json, open_url, sha256_file
from sgdm_dist.data.samples import SampleSpec, check_sample
from sgdm_dist.utils.atomic import DiskFullError, is_disk_full

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
        try:
            with wds.TarWriter(str(tmp), encoder=False, mtime=0) as sink:
                for t in batch:
                    sink.write(encode(t))
            os.replace(tmp, final)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            if is_disk_full(exc, final):
                raise DiskFullError(final, exc) from exc
            raise
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


class _Hashing:
    """File wrapper that feeds every byte read into sha256: the checksum costs no second pass."""

    def __init__(self, f: Any, url: str) -> None:
        self.f, self.h, self.url = f, hashlib.sha256(), url

    def __repr__(self) -> str:
        return self.url

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return self.h.hexdigest()


def iter_shard(
    url: str, expected: int | None = None, sha256: str | None = None
) -> Iterator[dict[str, Any]]:
    """Raw samples (dict of bytes + ``__key__``/``__url__``) of one shard.

    Raises :class:`DataError` naming the shard for a corrupt/truncated tar, a sample missing a
    required key, a sample count that differs from the manifest's (``expected``) or, when
    ``sha256`` is given, a content hash that differs (checked after the last byte is read: buffer
    the samples, e.g. ``list(iter_shard(...))``, to use none of a shard that fails).
    """
    n = 0
    current: dict[str, Any] | None = None
    found = None
    try:
        with open_url(url) as raw:
            f = _Hashing(raw, url) if sha256 else raw
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
            if sha256:
                found = f.drain()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"corrupt or truncated shard {url}: {exc}") from None
    n_final = n + (current is not None)
    # The count first: a tar cut at a header boundary ends silently, and "truncated" says more
    # than a hash mismatch; a partial last sample is never yielded.
    if expected is not None and n_final != expected:
        raise DataError(
            f"shard {url} holds {n_final} samples but the manifest says {expected} "
            "(truncated or replaced)"
        )
    if found is not None and found != sha256:
        raise DataError(
            f"shard {url}: sha256 expected {sha256} (manifest), found {found}: the shard was "
            "replaced or damaged; run `sgdm verify CONFIG` and re-run `sgdm prepare`"
        )
    if current is not None:
        yield _checked(current, url)


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


def decode(
    sample: dict[str, Any], spec: SampleSpec | None = None, finite: bool = True
) -> dict[str, Any]:
    """Bytes → arrays as stored (float16; the loader converts whole batches), metadata dict and the
    optional image [3, H, W] float32 in [0, 1]. With ``spec`` (from the manifest) every array is
    checked for dtype, shape and finiteness (:func:`check_sample`); without, EEG finiteness only."""
    url = sample.get("__url__", "?")
    key = sample.get("__key__")
    out: dict[str, Any] = {"key": key, "url": url}
    for name, ext in (("eeg", "eeg.npy"), ("clip", "clip.npy"), ("latent", "latent.npy")):
        if ext not in sample:
            raise DataError(f"shard {url}: sample '{key}' is missing key '{ext}'")
        try:
            out[name] = load_npy(sample[ext])
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(
                f"shard {url}: sample '{key}': key '{ext}' cannot be decoded: {exc}"
            ) from None
    try:
        out["meta"] = json.loads(sample["json"])
    except (ValueError, KeyError) as exc:
        raise DataError(
            f"shard {url}: sample '{key}': key 'json' cannot be decoded: {exc}"
        ) from None
    if "img.png" in sample:
        try:
            out["image"] = _png_array(sample["img.png"])
        except (ValueError, OSError) as exc:
            raise DataError(
                f"shard {url}: sample '{key}': key 'img.png' cannot be decoded: {exc}"
            ) from None
    if spec is not None:
        check_sample(out, spec, url, finite)
    elif not np.isfinite(out["eeg"]).all():
        raise DataError(f"shard {url}: sample '{key}' has non-finite EEG")
    return out


def _png_array(data: bytes) -> np.ndarray:
    """PNG bytes → [3, H, W] float32 in [0, 1]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return arr.transpose(2, 0, 1).copy()
