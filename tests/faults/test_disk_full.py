"""A full disk while a checkpoint is written: training stops with a clear error, and the previous
checkpoint stays complete and resumable (a real tmpfs of a few MB holds the output folder)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgdm_dist.checkpoint import complete_checkpoints, resolve_resume

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
RUN = [
    "train.align_steps=3",
    "train.diffusion_steps=3",
    "train.checkpoint_every=2",
    "train.eval_every=100",
    "train.recon_images=0",
    "experiment.tracking=false",
]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs: room for one tiny-config checkpoint (~15 MiB), not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def sgdm_train(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("sgdm")), "train", TINY, *args]


@pytest.mark.slow
def test_checkpoint_on_full_disk_keeps_previous_one(
    tiny_shards: list[str], small_disk: Path, tmp_path: Path
) -> None:
    out = small_disk / "run"
    result = subprocess.run(
        sgdm_train(*tiny_shards, *RUN, f"experiment.output_dir={out}"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "could not write checkpoint .tmp-checkpoint-00000004" in result.stderr
    assert (
        "the previous checkpoint" in result.stderr
        and "checkpoint-00000002 is intact" in result.stderr
    )
    assert "Traceback" not in result.stderr

    root = out / "checkpoints"
    assert [p.name for p in complete_checkpoints(root)] == ["checkpoint-00000002"]
    assert not list(root.glob(".tmp-*"))  # the partial folder was removed to give the space back
    assert resolve_resume(root, "auto") == root / "checkpoint-00000002"

    # The surviving checkpoint is usable: copied to a disk with room, training resumes and finishes.
    roomy = tmp_path / "roomy"
    shutil.copytree(root / "checkpoint-00000002", roomy / "checkpoints" / "checkpoint-00000002")
    resumed = subprocess.run(
        sgdm_train(*tiny_shards, *RUN, f"experiment.output_dir={roomy}", "--resume", "auto"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 2" in resumed.stderr
    final = json.loads(
        (roomy / "checkpoints" / "checkpoint-00000006" / "trainer_state.json").read_text()
    )
    assert final["step"] == 6
