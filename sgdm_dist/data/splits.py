"""What one split of a prepared shard set holds: its shards (for chosen subjects), its image table.

Read from the manifest and ``{split}_images.npz`` only (no shard is opened): the loader picks its
shards here, evaluation and validation take their retrieval targets from here.
"""

from __future__ import annotations

import numpy as np
import torch

from sgdm_dist.data import DataError
from sgdm_dist.data.manifest import Manifest, ShardEntry, read_manifest


def select_shards(m: Manifest, split: str, subjects: list[int] | None) -> list[ShardEntry]:
    """The shards of ``split`` in manifest order, only those of ``subjects`` unless it is None."""
    if split not in m.splits:
        raise DataError(f"split '{split}' not in {m.root}/manifest.json (have {sorted(m.splits)})")
    shards = m.splits[split].shards
    if subjects is not None:
        missing = sorted(set(subjects) - set(m.subjects))
        if missing:
            raise DataError(f"subjects {missing} not in {m.root} (have {m.subjects})")
        shards = [s for s in shards if s.subject in subjects]
    return shards


def split_image_embeddings(shard_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_index [N] int64, clip [N, D] float32) of the split's unique images, by image_index."""
    import fsspec

    m = read_manifest(shard_dir)
    if split not in m.splits:
        raise DataError(f"split '{split}' not in {shard_dir}/manifest.json")
    with fsspec.open(f"{shard_dir.rstrip('/')}/{m.splits[split].images_file}", "rb") as f:
        z = np.load(f, allow_pickle=False)
        idx, clip = z["image_index"], z["clip"]
    order = np.argsort(idx)
    return torch.from_numpy(idx[order].astype(np.int64)), torch.from_numpy(
        clip[order].astype(np.float32)
    )
