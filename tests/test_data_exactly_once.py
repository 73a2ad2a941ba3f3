"""Exactly-once epochs at any world size and shard layout (#15.2), on real tar shards.

Every rank is built as `make_loader(..., rank=r, world_size=W)` would be in a W-process run (the
loader never talks to other ranks, so iterating them in one process is the same computation).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from data_support import shard_config, write_shard_set

from sgdm_dist.data import DataError
from sgdm_dist.data.loader import make_loader
from sgdm_dist.data.plan import output_order, segments, shard_order, worker_batches

UNEVEN = [7, 3, 11, 1, 5, 9, 2]  # 38 samples: divides by neither 2, 3 nor any batch size used


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uneven")
    write_shard_set(root, UNEVEN)
    return root


def _epoch(root: Path, world: int, batch: int, workers: int, epoch: int, **kw: object) -> list:
    cfg = shard_config(root, num_workers=workers, batch_size=batch, shuffle_buffer=4)
    loaders = [
        make_loader(cfg, "train", rank=r, world_size=world, epoch=epoch, **kw) for r in range(world)
    ]
    return [(len(ld), list(ld)) for ld in loaders]


def _shard_of(key: str) -> str:
    return key.split("_")[0]


@pytest.mark.parametrize(
    ("world", "batch", "workers"), [(2, 4, 0), (3, 5, 0), (2, 3, 2), (3, 4, 2)]
)
def test_every_sample_once_per_epoch_same_batches_on_every_rank(
    uneven: Path, world: int, batch: int, workers: int
) -> None:
    n = sum(UNEVEN)
    per_rank = math.ceil(n / world)
    for epoch in (0, 1):
        ranks = _epoch(uneven, world, batch, workers, epoch)
        lengths = {length for length, _ in ranks}
        assert lengths == {math.ceil(per_rank / batch)}  # known before iterating, equal on all
        for length, batches in ranks:
            assert len(batches) == length
        # batch i has the same size on every rank (all_gather-safe)
        sizes = [[len(b["key"]) for b in batches] for _, batches in ranks]
        assert all(s == sizes[0] for s in sizes)
        real = [
            k
            for _, batches in ranks
            for b in batches
            for k, pad in zip(b["key"], b["pad"].tolist(), strict=True)
            if not pad
        ]
        assert len(real) == n and len(set(real)) == n  # every sample exactly once
        n_pad = sum(int(b["pad"].sum()) for _, batches in ranks for b in batches)
        assert n_pad == world * per_rank - n < world
        # whole shards are not handed out: a shard is read by at most 2 ranks (not counting pads)
        readers: dict[str, set[int]] = {}
        for r, (_, batches) in enumerate(ranks):
            for b in batches:
                for k, pad in zip(b["key"], b["pad"].tolist(), strict=True):
                    if not pad:
                        readers.setdefault(_shard_of(k), set()).add(r)
        assert max(len(v) for v in readers.values()) <= 2


def test_drop_last_gives_full_batches_and_no_repeats(uneven: Path) -> None:
    ranks = _epoch(uneven, 3, 4, 0, 0, drop_last=True)
    assert [length for length, _ in ranks] == [sum(UNEVEN) // 12] * 3
    keys = [k for _, batches in ranks for b in batches for k in b["key"]]
    assert all(len(b["key"]) == 4 for _, batches in ranks for b in batches)
    assert len(keys) == len(set(keys)) == 12 * (sum(UNEVEN) // 12)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_replays_the_rest_exactly(uneven: Path, workers: int) -> None:
    cfg = shard_config(uneven, num_workers=workers, batch_size=3, shuffle_buffer=5)
    full = [b["key"] for b in make_loader(cfg, "train", rank=1, world_size=2, epoch=4)]
    for k in (1, 4, len(full)):
        rest = make_loader(cfg, "train", rank=1, world_size=2, epoch=4, skip_batches=k)
        assert len(rest) == len(full) and rest.remaining == len(full) - k
        assert [b["key"] for b in rest] == full[k:]
    with pytest.raises(DataError, match="skip_batches"):
        make_loader(cfg, "train", rank=1, world_size=2, epoch=4, skip_batches=len(full) + 1)


def test_worker_count_changes_order_not_coverage(uneven: Path) -> None:
    def keys(workers: int) -> list[str]:
        cfg = shard_config(uneven, num_workers=workers, batch_size=4, shuffle_buffer=1)
        return [
            k for b in make_loader(cfg, "train", rank=0, world_size=2, epoch=2) for k in b["key"]
        ]

    assert sorted(keys(0)) == sorted(keys(2))


@pytest.mark.parametrize("workers", [0, 2])
def test_iterating_again_is_the_next_epoch(uneven: Path, workers: int) -> None:
    cfg = shard_config(uneven, num_workers=workers, batch_size=4)  # 2: persistent workers
    loader = make_loader(cfg, "train", epoch=5, skip_batches=1)
    first, second = ([k for b in loader for k in b["key"]] for _ in range(2))
    assert second == [k for b in make_loader(cfg, "train", epoch=6) for k in b["key"]]
    assert len(first) == len(second) - 4  # the skip applies to the first pass only
    assert set(first) < set(second) and first != second[4:]


def test_plan_arithmetic() -> None:
    chunks = worker_batches(5, 2)
    assert chunks == [(0, 3), (3, 5)]
    assert output_order(chunks) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
    order = shard_order([], 0, 0, shuffle=True)
    assert order == [] and segments(order, 0, 3) == []
