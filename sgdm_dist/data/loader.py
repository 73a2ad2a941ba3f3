"""Streaming loader over the shards: exactly-once per epoch at any world size, no accelerator needed.

Which samples each rank and DataLoader worker reads is planned by :mod:`sgdm_dist.data.plan` from the
manifest's per-shard counts: one (seed, epoch) shard order, a contiguous range of ``ceil(N/W)``
samples per rank, contiguous chunks of whole batches per worker. So every rank yields the same
number of batches ``len(loader)`` (known before iterating), batch ``i`` has the same size on every
rank, and every sample is read once per epoch (drop_last=False; wrap-around pads flagged
``batch["pad"]``). Per worker: read its shard ranges (each shard's sha256 checked on its first read
in the process, streamed, before any of its samples is used) → block shuffle of ``shuffle_buffer``
samples seeded by (seed, epoch, rank, worker) → decode + check against the manifest → batches.
A resumed run passes ``skip_batches``: skipped blocks are read past without decoding.

With ``resampled=True`` each worker draws shards with replacement forever and the epoch is cut at
the same ``len(loader)`` (no exactly-once guarantee, balanced ranks).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from sgdm_dist.config import Config
from sgdm_dist.data import DataError
from sgdm_dist.data.io import join_url
from sgdm_dist.data.manifest import Manifest, ShardEntry, read_manifest
from sgdm_dist.data.plan import (
    Segment,
    output_order,
    per_rank,
    segments,
    shard_order,
    skipped_per_worker,
    worker_batches,
)
from sgdm_dist.data.samples import SampleSpec, check_finite_batch
from sgdm_dist.data.shards import decode, iter_shard
from sgdm_dist.data.splits import select_shards
from sgdm_dist.utils.threads import loader_worker_init

log = logging.getLogger(__name__)

# Per shard set: one shared-memory byte per shard, 1 once its sha256 matched. Created in the main
# process and inherited by every DataLoader worker (fork), so a shard is hashed once per training
# process, not once per worker or per epoch, even when a new loader is made each epoch.
_VERIFIED: dict[tuple[str, tuple[tuple[str, str], ...]], torch.Tensor] = {}


def verified_flags(root: str, shards: list[ShardEntry]) -> torch.Tensor:
    key = (root, tuple((s.name, s.sha256) for s in shards))
    if key not in _VERIFIED:
        _VERIFIED[key] = torch.zeros(len(shards), dtype=torch.uint8).share_memory_()
    return _VERIFIED[key]


__all__ = ["EEGLoader", "ShardStream", "collate", "make_loader", "shard_order"]


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Decoded samples → batch: eeg [B, C, T], clip [B, D], latent [B, 4, h, w], ints [B], keys."""
    metas = [s["meta"] for s in samples]
    in_worker = torch.utils.data.get_worker_info() is not None

    def stack(name: str) -> torch.Tensor:
        # Stack the stored float16, convert once with torch (vectorised f16→f32, ~3× numpy's),
        # then one NaN/Inf scan of the whole float32 batch (the per-sample check skips it).
        f16 = torch.from_numpy(np.stack([s[name] for s in samples]))
        out = torch.empty(f16.shape, dtype=torch.float32)
        if in_worker:  # built in shared memory: handing it to the main process copies nothing
            out.share_memory_()
        out.copy_(f16)
        check_finite_batch(name, out.numpy(), samples)
        return out

    batch: dict[str, Any] = {
        "eeg": stack("eeg"),
        "clip": stack("clip"),
        "latent": stack("latent"),
        "subject": torch.tensor([m["subject"] for m in metas], dtype=torch.int64),
        "image_index": torch.tensor([m["image_index"] for m in metas], dtype=torch.int64),
        "concept": torch.tensor([m["concept"] for m in metas], dtype=torch.int64),
        "pad": torch.tensor([bool(s.get("pad", False)) for s in samples], dtype=torch.bool),
        "key": [s["key"] for s in samples],
    }
    if all("image" in s for s in samples):
        batch["image"] = torch.from_numpy(np.stack([s["image"] for s in samples]))
    return batch


def read_segment(
    root: str, seg: Segment, flags: torch.Tensor | None, index: int
) -> Iterator[dict[str, Any]]:
    """Raw samples ``[seg.start, seg.stop)`` of one shard.

    Unless ``flags[index]`` says it was verified (``flags`` None: never verify), the shard is read
    whole, hashing as it goes, and samples are yielded only after the sha256 matched; otherwise the
    read streams and stops at ``seg.stop``.
    """
    url = join_url(root, seg.shard.name)
    entry = seg.shard
    if flags is not None and not flags[index]:
        raw = list(iter_shard(url, entry.n_samples, sha256=entry.sha256))
        flags[index] = 1
        chosen: Any = raw[seg.start : seg.stop]
    else:
        chosen = itertools.islice(iter_shard(url, entry.n_samples), seg.start, seg.stop)
    for sample in chosen:
        sample["pad"] = seg.pad
        yield sample


class ShardStream(torch.utils.data.IterableDataset):
    """The per-worker pipeline; iterate it directly (num_workers=0) or through a DataLoader."""

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
        spec: SampleSpec | None = None,
        skip_batches: int = 0,
        verify: bool = True,
    ) -> None:
        super().__init__()
        self.root = root.rstrip("/")
        self.shards = shards
        self.batch_size = batch_size
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.num_workers = max(num_workers, 1)
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.resampled, self.drop_last, self.skip_corrupt = resampled, drop_last, skip_corrupt
        self.spec = spec
        self.flags = verified_flags(self.root, shards) if verify else None
        self.index = {s.name: i for i, s in enumerate(shards)}
        self.n_total = sum(s.n_samples for s in shards)
        self.per_rank, self.n_batches = per_rank(self.n_total, world_size, batch_size, drop_last)
        self.chunks = worker_batches(self.n_batches, self.num_workers)
        if not 0 <= skip_batches <= self.n_batches:
            raise DataError(f"skip_batches={skip_batches} outside 0..{self.n_batches}")
        self.skip = skipped_per_worker(self.chunks, skip_batches)
        self.skip_batches = skip_batches
        self.current_epoch = epoch
        self.iteration = 0  # epochs iterated so far: epoch of the next pass = epoch + iteration
        self.skipped: list[str] = []

    def __len__(self) -> int:
        """Batches every rank yields in the epoch (before ``skip_batches``)."""
        return self.n_batches

    def worker_range(self, worker: int) -> tuple[int, int]:
        """Global sample positions [start, stop) of ``worker`` on this rank (stop may pass N: pads)."""
        first, stop = self.chunks[worker]
        base = self.rank * self.per_rank
        return base + first * self.batch_size, base + min(stop * self.batch_size, self.per_rank)

    def worker_segments(self, worker: int) -> list[Segment]:
        order = shard_order(self.shards, self.seed, self.current_epoch, self.shuffle)
        return segments(order, *self.worker_range(worker))

    def _raw(self, segs: list[Segment]) -> Iterator[dict[str, Any]]:
        for seg in segs:
            try:
                yield from read_segment(self.root, seg, self.flags, self.index[seg.shard.name])
            except DataError as exc:
                if not self.skip_corrupt:
                    raise
                self.skipped.append(seg.shard.name)
                log.warning(
                    "skip_corrupt: skipped %s (%d so far): %s",
                    seg.shard.name,
                    len(self.skipped),
                    exc,
                )

    def _decoded(self, raw: Iterator[dict[str, Any]], skip: int, worker: int) -> Iterator[dict]:
        """Block shuffle (exactly replayable), then skip ``skip`` samples undecoded, then decode."""
        block = self.shuffle_buffer if self.shuffle and self.shuffle_buffer > 1 else 1
        rng = random.Random(f"{self.seed}-{self.current_epoch}-{self.rank}-{worker}-samples")
        done = 0
        while chunk := list(itertools.islice(raw, block)):
            if block > 1:
                rng.shuffle(chunk)
            for sample in chunk:
                done += 1
                if done <= skip:
                    continue
                entry_subject = self._subject_of(sample)
                spec = self.spec.with_subject(entry_subject) if self.spec else None
                out = decode(sample, spec, finite=spec is None)
                out["pad"] = sample["pad"]
                yield out

    def _subject_of(self, sample: dict[str, Any]) -> int | None:
        url = sample.get("__url__", "")
        return self._subjects.get(url)

    def _resampled(self, worker: int) -> Iterator[dict[str, Any]]:
        rng = random.Random(f"{self.seed}-{self.current_epoch}-{self.rank}-{worker}-shards")
        while True:
            entry = rng.choice(self.shards)
            yield from self._raw([Segment(entry, 0, entry.n_samples, pad=False)])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        # Counted locally too, so persistent workers (one dataset copy each) advance in step.
        self.current_epoch = self.epoch + self.iteration
        skip = self.skip_batches if self.iteration == 0 else 0
        self.iteration += 1
        self._skip_now = skipped_per_worker(self.chunks, skip)
        self._subjects = {join_url(self.root, s.name): s.subject for s in self.shards}
        order = output_order(self.chunks)
        if info is not None:
            # The DataLoader asks worker 0 first; after a skip the next batch belongs to worker
            # ``first``, so worker ids are rotated to keep the order a tail of the full epoch's.
            first = order[skip][0] if skip < len(order) else 0
            yield from self._worker_batches((info.id + first) % self.num_workers)
        else:
            streams = {w: self._worker_batches(w) for w in range(self.num_workers)}
            for w, _ in order[skip:]:
                yield next(streams[w])
        if self.skipped:
            log.warning(
                "rank %d: skipped %d corrupt shard(s): %s",
                self.rank,
                len(self.skipped),
                self.skipped,
            )

    def _worker_batches(self, worker: int) -> Iterator[dict[str, Any]]:
        first, stop = self.chunks[worker]
        skip = self._skip_now[worker]
        raw = self._resampled(worker) if self.resampled else self._raw(self.worker_segments(worker))
        samples = self._decoded(raw, skip * self.batch_size, worker)
        recent: list[dict[str, Any]] = []
        for j in range(first + skip, stop):
            size = min(self.batch_size, self.per_rank - j * self.batch_size)
            batch = list(itertools.islice(samples, size))
            if len(batch) < size:  # only after skip_corrupt dropped a shard: keep len() exact
                batch += self._fill(recent or batch, size - len(batch))
            recent = batch
            yield collate(batch)

    def _fill(self, good: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
        """``n`` pad-flagged repeats of good samples standing in for a skipped corrupt shard."""
        if not good:
            raise DataError(
                f"rank {self.rank}: every shard of a DataLoader worker was skipped as corrupt "
                f"({self.skipped}); nothing left to train on"
            )
        return [{**good[i % len(good)], "pad": True} for i in range(n)]


def _plain_errors(batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Re-raise a worker's DataError with its own message: the DataLoader wraps it in the worker's
    traceback text, which the CLI would print instead of the one-line error."""
    try:
        yield from batches
    except DataError as exc:
        msg = str(exc)
        if "Original Traceback" not in msg:
            raise
        raise DataError(msg.rsplit("DataError: ", 1)[-1].strip()) from None


class EEGLoader:
    """What :func:`make_loader` returns: iterable of batches; ``len()`` = batches per rank per epoch,
    the same on every rank; iteration yields batches ``skip_batches .. len()-1``."""

    def __init__(
        self,
        stream: ShardStream,
        num_workers: int,
        manifest: Manifest,
        *,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        self.stream = stream
        self.manifest = manifest
        self.num_workers = num_workers
        self._passes = 0
        self._loader: Any = (
            torch.utils.data.DataLoader(
                stream,
                batch_size=None,
                num_workers=num_workers,
                pin_memory=pin_memory,
                persistent_workers=persistent_workers,
                worker_init_fn=loader_worker_init,  # one thread per worker (they decode)
                in_order=True,  # the round-robin order plan.output_order relies on
            )
            if num_workers > 0
            else stream
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.num_workers > 0 and not self._loader.persistent_workers:
            # Fresh workers get a copy of the stream: tell it which pass (epoch) this is.
            self.stream.iteration = self._passes
        self._passes += 1
        it = iter(self._loader)
        return _plain_errors(it) if self.num_workers > 0 else it

    def __len__(self) -> int:
        return len(self.stream)

    @property
    def remaining(self) -> int:
        """Batches this iteration yields: ``len(self) - skip_batches``."""
        return len(self.stream) - self.stream.skip_batches


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
    skip_batches: int = 0,
) -> EEGLoader:
    """Batches of ``split`` for this rank; validates the manifest against ``cfg`` first.

    Batch: eeg float32 [B, C, T]; clip float32 [B, D]; latent float32 [B, 4, h, w]; subject, image_index,
    concept int64 [B]; pad bool [B] (wrap-around repeats, see :mod:`sgdm_dist.data.plan`); key
    list[str]; image float32 [B, 3, H, W] in [0, 1] when the split stores images. ``len()`` is the
    same on every rank; ``skip_batches`` (resume) skips the epoch's first batches without decoding.
    Iterating the loader again gives the next epoch (``epoch + 1``, ...), in the same workers when
    ``data.loader.persistent_workers``.
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
        spec=SampleSpec.from_manifest(m),
        skip_batches=skip_batches,
        verify=lc.verify_checksums,
    )
    pin = torch.cuda.is_available() if lc.pin_memory == "auto" else bool(lc.pin_memory)
    return EEGLoader(
        stream,
        lc.num_workers,
        m,
        pin_memory=pin,
        persistent_workers=lc.persistent_workers and lc.num_workers > 0,
    )
