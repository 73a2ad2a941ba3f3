"""What a decoded sample must look like, from the manifest, and the check every sample passes.

Every array is checked for dtype (float16 as written by ``prepare``), shape and finiteness, and the
metadata for the integer fields batches carry; a failure is a :class:`DataError` naming the shard,
the sample, the key, and expected vs found, so one bad value never reaches the model silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdm_dist.data import DataError

ARRAY_KEYS = ("eeg", "clip", "latent")
META_INTS = ("subject", "image_index", "concept")
STORED_DTYPE = np.dtype(np.float16)


@dataclass(frozen=True)
class SampleSpec:
    """Expected shapes: eeg [C, T], clip [D], latent [4, h, w]; ``subject`` of the shard, if known."""

    eeg: tuple[int, ...]
    clip: tuple[int, ...]
    latent: tuple[int, ...]
    subject: int | None = None

    @classmethod
    def from_manifest(cls, m: Any, subject: int | None = None) -> SampleSpec:
        return cls(
            eeg=(m.n_channels, m.n_times),
            clip=(m.clip_dim,),
            latent=tuple(int(x) for x in m.latent_shape),
            subject=subject,
        )

    def with_subject(self, subject: int | None) -> SampleSpec:
        return SampleSpec(self.eeg, self.clip, self.latent, subject)


def check_sample(sample: dict[str, Any], spec: SampleSpec, url: str, finite: bool = True) -> None:
    """Raise :class:`DataError` for the first array or metadata field that is not as specified.

    ``finite=False`` leaves the NaN/Inf scan to :func:`check_finite_batch` (one vectorised pass
    over the float32 batch instead of one float16 pass per sample)."""
    where = f"shard {url}: sample '{sample.get('key')}'"
    for name in ARRAY_KEYS:
        x = sample[name]
        want = getattr(spec, name)
        if x.dtype != STORED_DTYPE:
            raise DataError(f"{where}: key '{name}' expected dtype float16, found {x.dtype}")
        if tuple(x.shape) != want:
            raise DataError(
                f"{where}: key '{name}' expected shape {list(want)}, found {list(x.shape)}"
            )
        if finite and not np.isfinite(x).all():
            _not_finite(where, name, x)
    meta = sample["meta"]
    if not isinstance(meta, dict):
        raise DataError(f"{where}: key 'json' expected an object, found {type(meta).__name__}")
    for name in META_INTS:
        value = meta.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{where}: key 'json.{name}' expected an integer, found {value!r}")
    if spec.subject is not None and meta["subject"] != spec.subject:
        raise DataError(
            f"{where}: key 'json.subject' expected {spec.subject} (the manifest's subject of this "
            f"shard), found {meta['subject']}: the shard was swapped or renamed"
        )


def _not_finite(where: str, name: str, x: np.ndarray) -> None:
    bad = int(x.size - np.isfinite(x).sum())
    raise DataError(f"{where}: key '{name}' expected finite values, found {bad} NaN/Inf")


def check_finite_batch(name: str, batch: np.ndarray, samples: list[dict[str, Any]]) -> None:
    """NaN/Inf anywhere in the stacked ``batch`` [B, ...] → the first offending sample, named."""
    if np.isfinite(batch).all():
        return
    for row, sample in zip(batch, samples, strict=True):
        if not np.isfinite(row).all():
            where = f"shard {sample.get('url', '?')}: sample '{sample.get('key')}'"
            _not_finite(where, name, row)
