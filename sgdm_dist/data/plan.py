"""Which samples each rank and worker reads in an epoch: the exactly-once split (pure arithmetic).

The epoch's shards are put in one order that depends only on (seed, epoch), so the split's ``N``
samples get global positions ``0..N-1``. With ``W`` ranks and batch size ``B``:

- ``drop_last=False`` (default): every rank takes ``S = ceil(N / W)`` consecutive positions
  (rank ``r``: ``[r*S, (r+1)*S)``) and yields ``K = ceil(S / B)`` batches, the last one smaller and
  of the same size on every rank. The ``W*S - N <= W-1`` positions past ``N`` wrap to the start of the
  order; those samples are flagged ``pad`` (seen twice; mask them to count every sample once).
- ``drop_last=True``: ``K = N // (W*B)`` full batches per rank, ``S = K*B``; the last ``N - W*S``
  positions of the epoch's order are not read this epoch (a different tail each shuffled epoch).

A rank's ``K`` batches go to its DataLoader workers in contiguous chunks (worker ``w`` gets ``K//n``
or one more); the DataLoader returns them round-robin (its ``in_order`` contract), which
:func:`output_order` reproduces so a resumed run can skip ``k`` batches without reading them.
Each shard is read by at most two ranks (one rank boundary inside it), plus the pad wrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sgdm_dist.data.manifest import ShardEntry


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` (in file order) of one shard; ``pad`` if past the epoch's end."""

    shard: ShardEntry
    start: int
    stop: int
    pad: bool


def shard_order(shards: list[ShardEntry], seed: int, epoch: int, shuffle: bool) -> list[ShardEntry]:
    """The epoch's global shard order, identical on every rank."""
    if not shuffle:
        return list(shards)
    perm = np.random.default_rng([seed, epoch, 1]).permutation(len(shards))
    return [shards[i] for i in perm]


def per_rank(n: int, world_size: int, batch_size: int, drop_last: bool) -> tuple[int, int]:
    """(samples S, batches K) that every rank gets from a split of ``n`` samples."""
    if drop_last:
        k = n // (world_size * batch_size)
        return k * batch_size, k
    s = math.ceil(n / world_size)
    return s, math.ceil(s / batch_size)


def worker_batches(k: int, num_workers: int) -> list[tuple[int, int]]:
    """[first, stop) batch indices of each worker: contiguous chunks, earlier workers one more."""
    n = max(num_workers, 1)
    out, first = [], 0
    for w in range(n):
        count = k // n + (1 if w < k % n else 0)
        out.append((first, first + count))
        first += count
    return out


def output_order(chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(worker, i-th batch of that worker) in the order a DataLoader yields them (round-robin)."""
    counts = [stop - first for first, stop in chunks]
    return [(w, i) for i in range(max(counts, default=0)) for w, c in enumerate(counts) if i < c]


def skipped_per_worker(chunks: list[tuple[int, int]], skip: int) -> list[int]:
    """How many of its own batches each worker skips when the first ``skip`` outputs are skipped."""
    done = [0] * len(chunks)
    for w, _ in output_order(chunks)[:skip]:
        done[w] += 1
    return done


def segments(order: list[ShardEntry], start: int, stop: int) -> list[Segment]:
    """Global positions ``[start, stop)`` (wrapping past N) as per-shard sample ranges."""
    n = sum(s.n_samples for s in order)
    if n == 0 or stop <= start:
        return []
    bounds = np.cumsum([0] + [s.n_samples for s in order])
    out: list[Segment] = []
    pos = start
    while pos < stop:
        q = pos % n
        i = int(np.searchsorted(bounds, q, side="right")) - 1
        take = min(int(bounds[i + 1]) - q, stop - pos)
        first = q - int(bounds[i])
        out.append(Segment(order[i], first, first + take, pad=pos >= n))
        pos += take
    return out
