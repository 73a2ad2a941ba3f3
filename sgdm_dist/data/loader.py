"""Streaming loader over the shards: deterministic, exactly-once per epoch, no accelerator needed.

Pipeline per DataLoader worker (the OpenCLIP pattern, with explicit rank/world_size instead of
reading torch.distributed): shard list → seeded shard shuffle (seed, epoch) → ``[rank::world_size]``
→ ``[worker::num_workers]`` → read + check + decode → seeded sample shuffle buffer
(seed, epoch, rank, worker) → batches → ``WebLoader(batch_size=None)``. Workers' batches are
interleaved in a fixed round-robin, so the order is a function of (seed, epoch, rank, world_size,
num_workers) only; a resumed run replays it exactly.

With ``resampled=True`` each worker draws shards with replacement forever and ``with_epoch`` cuts a
nominal epoch of the same size (no exactly-once guarantee, balanced ranks).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds

from sgdm_dist.config import Config
from sgdm_dist.data import DataError
from sgdm_dist.data.manifest import Manifest, ShardEntry, read_manifest
from sgdm_dist.data.shards import decode, iter_shard

log = logging.getLogger(__name__)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Decoded samples → batch: eeg [B, C, T], clip [B, D], latent [B, 4, h, w], ints [B], keys."""
    metas = [s["meta"] for s in samples]

    def stack(name: str) -> torch.Tensor:
        # Stack the stored float16 first, then convert once: one float32 copy per batch.
        return torch.from_numpy(np.stack([s[name] for s in samples]).astype(np.float32))

    batch: dict[str, Any] = {
        "eeg": stack("eeg"),
        "clip": stack("clip"),
        "latent": stack("latent"),
        "subject": torch.tensor([m["subject"] for m in metas], dtype=torch.int64),
        "image_index": torch.tensor([m["image_index"] for m in metas], dtype=torch.int64),
        "concept": torch.tensor([m["concept"] for m in metas], dtype=torch.int64),
        "key": [s["key"] for s in samples],
    }
    if all("image" in s for s in samples):
        batch["image"] = torch.from_numpy(np.stack([s["image"] for s in samples]))
    return batch


def shard_order(shards: list[ShardEntry], seed: int, epoch: int, shuffle: bool) -> list[ShardEntry]:
    """The epoch's global shard order, identical on every rank."""
    if not shuffle:
        return list(shards)
    perm = np.random.default_rng([seed, epoch, 1]).permutation(len(shards))
    return [shards[i] for i in perm]


def assign(
    shards: list[ShardEntry], rank: int, world_size: int, worker: int, num_workers: int
) -> list[ShardEntry]:
    """Disjoint shard subsets: by rank first, then by DataLoader worker."""
    return shards[rank::world_size][worker::num_workers]


class ShardStream(torch.utils.data.IterableDataset):
    """The per-worker pipeline; iterate it directly (num_workers=0) or through a WebLoader."""

    def __init__(
        self,
        root: str,
        shards: list[ShardEntry],
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int,
        world_size: int,
        num_workers: int,
        shuffle: bool,
        shuffle_buffer: int,
        resampled: bool,
        drop_last: bool,
        skip_corrupt: bool,
        eeg_shape: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.root = root.rstrip("/")
        self.shards = shards
        self.batch_size = batch_size
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.num_workers = max(num_workers, 1)
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.resampled, self.drop_last, self.skip_corrupt = resampled, drop_last, skip_corrupt
        self.eeg_shape = eeg_shape  # [C, T] from the manifest; None: not checked
        self.skipped: list[str] = []

    def _worker(self) -> int:
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else info.id

    def worker_shards(self, worker: int) -> list[ShardEntry]:
        order = shard_order(self.shards, self.seed, self.epoch, self.shuffle)
        return assign(order, self.rank, self.world_size, worker, self.num_workers)

    def batches_for_worker(self, worker: int) -> int:
        if self.resampled:
            total = sum(s.n_samples for s in self.shards)
            per = math.ceil(total / (self.world_size * self.num_workers))
            return per // self.batch_size if self.drop_last else math.ceil(per / self.batch_size)
        n = sum(s.n_samples for s in self.worker_shards(worker))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        """Batches this rank yields in the epoch (exact)."""
        return sum(self.batches_for_worker(w) for w in range(self.num_workers))

    def _resampled_shards(self, worker: int) -> Iterator[ShardEntry]:
        rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker}-shards")
        while True:
            yield rng.choice(self.shards)

    def _samples(self, shards: Any) -> Iterator[dict[str, Any]]:
        for entry in shards:
            url = f"{self.root}/{entry.name}"
            try:
                for raw in iter_shard(url, expected=entry.n_samples):
                    sample = decode(raw)
                    if self.eeg_shape is not None and sample["eeg"].shape != self.eeg_shape:
                        raise DataError(
                            f"shard {url}: sample '{sample['key']}' has EEG of shape "
                            f"{list(sample['eeg'].shape)}, the manifest says {list(self.eeg_shape)} "
                            "[channels, samples]"
                        )
                    yield sample
            except DataError as exc:
                if not self.skip_corrupt:
                    raise
                self.skipped.append(entry.name)
                log.warning(
                    "skip_corrupt: skipped %s (%d so far): %s", entry.name, len(self.skipped), exc
                )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = self._worker()
        shards = self._resampled_shards(worker) if self.resampled else self.worker_shards(worker)
        stream: Any = self._samples(shards)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker}-samples")
            stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(stream)
        stream = wds.batched(self.batch_size, collation_fn=collate, partial=not self.drop_last)(
            stream
        )
        if self.resampled:  # an infinite stream: cut the nominal epoch (WebDataset's with_epoch)
            stream = itertools.islice(stream, self.batches_for_worker(worker))
        yield from stream
        if self.skipped:
            log.warning(
                "rank %d worker %d: skipped %d corrupt shard(s): %s",
                self.rank,
                worker,
                len(self.skipped),
                self.skipped,
            )


class EEGLoader:
    """What :func:`make_loader` returns: iterable of batches, ``len()`` = batches on this rank."""

    def __init__(self, stream: ShardStream, num_workers: int, manifest: Manifest) -> None:
        self.stream = stream
        self.manifest = manifest
        self.num_workers = num_workers
        self._loader: Any = (
            wds.WebLoader(
                stream, batch_size=None, num_workers=num_workers, persistent_workers=False
            )
            if num_workers > 0
            else stream
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._loader)

    def __len__(self) -> int:
        return len(self.stream)


def select_shards(m: Manifest, split: str, subjects: list[int] | None) -> list[ShardEntry]:
    if split not in m.splits:
        raise DataError(f"split '{split}' not in {m.root}/manifest.json (have {sorted(m.splits)})")
    shards = m.splits[split].shards
    if subjects is not None:
        missing = sorted(set(subjects) - set(m.subjects))
        if missing:
            raise DataError(f"subjects {missing} not in {m.root} (have {m.subjects})")
        shards = [s for s in shards if s.subject in subjects]
    return shards


def make_loader(
    cfg: Config,
    split: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    subjects: list[int] | None = None,
    shuffle: bool = True,
    batch_size: int | None = None,
    drop_last: bool | None = None,
) -> EEGLoader:
    """Batches of ``split`` for this rank; validates the manifest against ``cfg`` first.

    Batch: eeg float32 [B, C, T]; clip float32 [B, D]; latent float32 [B, 4, h, w]; subject, image_index,
    concept int64 [B]; key list[str]; image float32 [B, 3, H, W] in [0, 1] when the split stores images.
    """
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} outside world_size {world_size}")
    m = read_manifest(cfg.data.shard_dir)
    m.check_compatible(cfg)
    lc = cfg.data.loader
    stream = ShardStream(
        cfg.data.shard_dir,
        select_shards(m, split, subjects),
        batch_size=batch_size or lc.batch_size,
        seed=cfg.experiment.seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        num_workers=lc.num_workers,
        shuffle=shuffle,
        shuffle_buffer=lc.shuffle_buffer,
        resampled=lc.resampled and split == "train",
        drop_last=lc.drop_last if drop_last is None else drop_last,
        skip_corrupt=lc.skip_corrupt,
        eeg_shape=(m.n_channels, m.n_times),
    )
    return EEGLoader(stream, lc.num_workers, m)


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
