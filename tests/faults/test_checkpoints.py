"""Checkpoints that must never lose the good state: non-finite saves refused (nothing pruned),
resume walking back past a truncated file, a complete-but-damaged file and an unparsable state,
and a full disk named as such. Real ``accelerate`` checkpoints of a small model, damaged by hand
after they were written."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from faults.ckpt_support import Trainer
from sgdm_dist.training.checkpoint import (
    CheckpointError,
    NonFiniteCheckpointError,
    TrainerState,
    complete_checkpoints,
    resume_checkpoint,
)


def steps(root: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in complete_checkpoints(root)]


def test_non_finite_weights_are_refused_and_nothing_is_pruned(tmp_path: Path) -> None:
    t = Trainer(tmp_path / "ckpt")
    for _ in range(2):
        t.train()
        t.save(keep_last=2)
    t.train()
    with torch.no_grad():
        t.model[2].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteCheckpointError) as err:
        t.save(keep_last=2)
    message = str(err.value)
    assert "checkpoint-00000003" in message and "parameter 2.weight" in message
    assert "newest kept: checkpoint-00000002" in message
    assert steps(t.root) == [1, 2]  # keep_last=2 pruned nothing for the refused save
    assert sorted(p.name for p in t.root.iterdir()) == [
        "checkpoint-00000001",
        "checkpoint-00000002",
    ]


def test_inf_in_optimizer_state_is_refused(tmp_path: Path) -> None:
    t = Trainer(tmp_path / "ckpt", ema=False)
    t.train()
    t.save()
    t.train()
    state = next(iter(t.optimizer.state.values()))
    state["exp_avg_sq"].view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteCheckpointError, match="optimizer exp_avg_sq of 0.weight"):
        t.save(keep_last=1)
    assert steps(t.root) == [1]


def test_resume_walks_back_past_a_truncated_and_a_damaged_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    t = Trainer(tmp_path / "ckpt")
    snapshots = {}
    for _ in range(3):
        t.train()
        t.save()
        snapshots[t.step] = t.weights()
    newest = t.root / "checkpoint-00000003" / "model.safetensors"
    size = newest.stat().st_size
    with open(newest, "r+b") as handle:  # a real file cut off mid-write: half its bytes
        handle.truncate(size // 2)
    middle = t.root / "checkpoint-00000002" / "optimizer.bin"
    data = bytearray(middle.read_bytes())  # complete (same size) but damaged: flipped bytes
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)
    middle.write_bytes(bytes(data))

    fresh = Trainer(tmp_path / "ckpt")
    prepared: list[int] = []  # the loop builds the engine of the checkpoint's stage here

    def prepare(found: TrainerState):
        prepared.append(found.step)
        return fresh.ema

    with caplog.at_level(logging.WARNING, logger="sgdm_dist.training.checkpoint"):
        state, folder = resume_checkpoint(fresh.acc, fresh.root, "auto", None, prepare)
    assert (state.step, folder) == (1, fresh.root / "checkpoint-00000001")
    assert prepared == [1]  # never called for a checkpoint whose files failed verification
    for name, value in fresh.model.state_dict().items():
        assert torch.equal(value, snapshots[1][name]), name
    log = caplog.text
    assert (
        f"checkpoint-00000003/model.safetensors: truncated or grown: expected {size} bytes, found {size // 2}"
        in log
    )
    assert "checkpoint-00000002/optimizer.bin: damaged: sha256 differs" in log
    assert sorted(p.name for p in fresh.root.iterdir()) == [
        "checkpoint-00000001",
        "damaged-checkpoint-00000002",
        "damaged-checkpoint-00000003",
    ]
    fresh.step = 1  # the resumed run saves step 2 again: not blocked by the damaged one
    fresh.train()
    assert fresh.save(keep_last=1).name == "checkpoint-00000002"
    assert steps(fresh.root) == [2]  # pruning counted only good checkpoints
    assert (fresh.root / "damaged-checkpoint-00000003").is_dir()  # kept for inspection


def test_unparsable_state_and_unloadable_legacy_checkpoint_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    t = Trainer(tmp_path / "ckpt", ema=False)
    for _ in range(3):
        t.train()
        t.save()
    (t.root / "checkpoint-00000003" / "trainer_state.json").write_text('{"step": 3, "epo')
    legacy = t.root / "checkpoint-00000002"  # as written before checksums.json existed
    (legacy / "checksums.json").unlink()
    optimizer = legacy / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])

    fresh = Trainer(tmp_path / "ckpt", ema=False)
    with caplog.at_level(logging.WARNING, logger="sgdm_dist.training.checkpoint"):
        state, folder = resume_checkpoint(fresh.acc, fresh.root, "auto", None)
    assert state.step == 1 and folder is not None and folder.name == "checkpoint-00000001"
    assert "checkpoint-00000003: unreadable trainer_state.json" in caplog.text
    assert (
        "skipping checkpoint" in caplog.text and "checkpoint-00000002: load failed" in caplog.text
    )


def test_resume_when_no_checkpoint_loads_names_all_then_starts_fresh(tmp_path: Path) -> None:
    t = Trainer(tmp_path / "ckpt", ema=False)
    t.train()
    t.save()
    weights = t.root / "checkpoint-00000001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="no checkpoint in .* loads: checkpoint-00000001"):
        resume_checkpoint(t.acc, t.root, "auto", None)
    assert resume_checkpoint(t.acc, t.root, "auto", None) == (TrainerState(), None)
    with pytest.raises(CheckpointError, match="cannot resume from .*damaged-checkpoint-00000001"):
        resume_checkpoint(t.acc, t.root, str(t.root / "damaged-checkpoint-00000001"), None)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (a real filesystem that fills up)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_up(disk: Path, leave: int) -> None:
    import shutil

    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(bytes(max(free - leave, 0)))


def test_full_disk_during_checkpoint_says_disk_full_and_keeps_the_previous(
    small_disk: Path,
) -> None:
    t = Trainer(small_disk / "ckpt", width=256)
    t.train()
    t.save()
    fill_up(small_disk, leave=64 * 1024)
    t.train()
    with pytest.raises(CheckpointError) as err:
        t.save()
    message = str(err.value)
    assert "could not write checkpoint .tmp-checkpoint-00000002" in message
    assert "disk full" in message and str(small_disk / "ckpt") in message
    assert "checkpoint-00000001 is intact" in message
    assert sorted(p.name for p in t.root.iterdir()) == ["checkpoint-00000001"]


def test_full_disk_during_model_export_names_the_path_and_keeps_the_old_model(
    small_disk: Path,
) -> None:
    from sgdm_dist.config import load_config
    from sgdm_dist.models import SGDM, build_model
    from sgdm_dist.utils.atomic import DiskFullError

    cfg = load_config("configs/tiny.yaml", []).model
    model = build_model(cfg, n_channels=7, n_times=40, n_subjects=3)
    target = small_disk / "model"
    model.save_pretrained(target)
    before = (target / "model.safetensors").read_bytes()
    fill_up(small_disk, leave=64 * 1024)
    with pytest.raises(DiskFullError) as err:
        model.save_pretrained(target)
    assert str(err.value).startswith(f"disk full while writing {target} (")
    assert (target / "model.safetensors").read_bytes() == before  # the previous export is intact
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "model"]
    SGDM.from_pretrained(target)


def test_intact_checkpoint_of_another_model_is_an_error_not_skipped(tmp_path: Path) -> None:
    t = Trainer(tmp_path / "ckpt", ema=False)
    t.train()
    t.save()
    other = Trainer(tmp_path / "ckpt", width=32, ema=False)  # the config changed between runs
    with pytest.raises(CheckpointError, match="is intact .* but does not load into this run"):
        resume_checkpoint(other.acc, other.root, "auto", None)
    assert steps(other.root) == [1]  # a good checkpoint is never moved aside
