"""Small real shard sets for data tests (H1): arbitrary shard sizes, real tars, a real manifest.

Cheaper than `sgdm prepare` (no MNE, no features) when a test only needs the loader's contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sgdm_dist import __version__
from sgdm_dist.config import Config, load_config
from sgdm_dist.data.manifest import Manifest, ShardEntry, SplitInfo, write_manifest
from sgdm_dist.data.shards import Trial, write_unit

REPO = Path(__file__).resolve().parents[1]
CH, T, CLIP, LATENT = 17, 100, 32, (4, 8, 8)


def _split(shards: list[ShardEntry]) -> SplitInfo:
    per: dict[int, int] = {}
    for s in shards:
        per[s.subject] = per.get(s.subject, 0) + s.n_samples
    return SplitInfo(
        shards=shards,
        n_samples=sum(s.n_samples for s in shards),
        per_subject=per,
        n_images=0,
        concepts=[],
        images_file="",
        has_images=False,
    )


def write_shard_set(out: Path, sizes: list[int], subject: int = 1) -> Manifest:
    """Train shards of the given sample counts (keys ``s{shard}_{i}``), random float16 arrays."""
    rng = np.random.default_rng(len(sizes))
    shards: list[ShardEntry] = []
    for si, n in enumerate(sizes):
        trials = [
            Trial(
                key=f"s{si:02d}_{i:03d}",
                eeg=rng.standard_normal((CH, T)).astype(np.float16),
                clip=rng.standard_normal(CLIP).astype(np.float16),
                latent=rng.standard_normal(LATENT).astype(np.float16),
                meta={"subject": subject, "session": 1, "image_index": i, "concept": si},
            )
            for i in range(n)
        ]
        rec = write_unit(out, "train", f"sub-{subject:02d}_ses-{si:02d}", trials, n, "t", {})
        shards += [ShardEntry(subject=subject, session=1, **s) for s in rec["shards"]]
    m = Manifest(
        package_version=__version__,
        source="test",
        ch_names=[f"O{i}" for i in range(CH)],
        sfreq=100.0,
        times=[round(float(x), 6) for x in np.arange(T) / 100 - 0.2],
        n_channels=CH,
        n_times=T,
        eeg_unit="whitened",
        clip_dim=CLIP,
        latent_shape=LATENT,
        image_size=64,
        subjects=[subject],
        sessions={subject: [1]},
        n_concepts=len(sizes),
        splits={"train": _split(shards), "val": _split([]), "test": _split([])},
        preprocess={},
        features={},
        encoders={},
        text_embeddings="",
        seed=0,
    )
    write_manifest(m, out)
    return m


def shard_config(shard_dir: str | Path, *overrides: str, **loader: Any) -> Config:
    """configs/tiny.yaml pointed at ``shard_dir`` (a path or URL), loader fields overridden."""
    ov = [
        f"data.shard_dir={shard_dir}",
        "data.preprocess.channels=all",
        "data.preprocess.tmin=-0.2",
        *(f"data.loader.{k}={v}" for k, v in loader.items()),
        *overrides,
    ]
    return load_config(REPO / "configs/tiny.yaml", ov)
