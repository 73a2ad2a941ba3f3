"""A full disk while a checkpoint is written: training stops with a clear "disk full" error, and the
previous checkpoints stay complete; copied to a disk with room with the newest one truncated,
`--resume auto` walks back past it and finishes (a real tmpfs of a few MB holds the output folder)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgdm_dist.training.checkpoint import complete_checkpoints, resolve_resume

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
    """A 24 MiB tmpfs: room for the first tiny-config checkpoints (4 + 17 MiB), not a third."""
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
    # Which save hits the limit depends on the model's size per stage; what must hold does not.
    failed = re.search(r"could not write checkpoint \.tmp-checkpoint-(\d+)", result.stderr)
    kept = re.search(r"the previous checkpoint (\S+) is intact", result.stderr)
    assert failed and kept, result.stderr[-3000:]
    assert "disk full (" in result.stderr
    assert f"MiB free on the filesystem of {out / 'checkpoints'})" in result.stderr
    assert "Traceback" not in result.stderr

    root = out / "checkpoints"
    previous = Path(kept.group(1))
    assert previous == complete_checkpoints(root)[-1]
    assert int(previous.name.split("-")[1]) == int(failed.group(1)) - 2  # checkpoint_every=2
    assert not list(root.glob(".tmp-*"))  # the partial folder was removed to give the space back
    assert resolve_resume(root, "auto") == previous

    # The surviving checkpoints are usable: copied to a disk with room, the newest one then cut off
    # mid-file (a real truncated model.safetensors), `--resume auto` skips it, saying why, resumes
    # from the one before and finishes: no traceback, no restart loop.
    roomy = tmp_path / "roomy"
    survivors = complete_checkpoints(root)
    for folder in survivors:
        shutil.copytree(folder, roomy / "checkpoints" / folder.name)
    start = survivors[-1]
    if len(survivors) > 1:
        weights = roomy / "checkpoints" / survivors[-1].name / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        start = survivors[-2]
    resumed = subprocess.run(
        sgdm_train(*tiny_shards, *RUN, f"experiment.output_dir={roomy}", "--resume", "auto"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if start != survivors[-1]:
        assert f"skipping checkpoint {roomy / 'checkpoints' / survivors[-1].name}" in resumed.stderr
        assert "model.safetensors: truncated or grown" in resumed.stderr
    assert f"at step {int(start.name.split('-')[1])}" in resumed.stderr
    final = json.loads(
        (roomy / "checkpoints" / "checkpoint-00000006" / "trainer_state.json").read_text()
    )
    assert final["step"] == 6


@pytest.mark.slow
def test_model_export_on_full_disk_is_named_and_leaves_no_model(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    """The output folder on a 1 MiB tmpfs, its checkpoints/ bind-mounted to a disk with room: the
    checkpoint is written, the export of the model (several MiB) fills the disk."""
    out, roomy = tmp_path / "run", tmp_path / "roomy"
    out.mkdir()
    roomy.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)], check=True)
    try:
        (out / "checkpoints").mkdir()
        subprocess.run(["mount", "--bind", str(roomy), str(out / "checkpoints")], check=True)
        try:
            one_step = [arg for arg in RUN if "_steps=" not in arg]
            result = subprocess.run(
                sgdm_train(
                    *tiny_shards,
                    *one_step,
                    "train.align_steps=1",
                    "train.diffusion_steps=0",
                    f"experiment.output_dir={out}",
                ),
                capture_output=True,
                text=True,
                timeout=600,
            )
            leftovers = sorted(p.name for p in out.iterdir())
        finally:
            subprocess.run(["umount", "-l", str(out / "checkpoints")], check=False)
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"error: disk full while writing {out / 'model'} (" in result.stderr
    assert "Traceback" not in result.stderr
    assert "model" not in leftovers and not [n for n in leftovers if ".tmp-" in n], leftovers
    assert [p.name for p in complete_checkpoints(roomy)] == ["checkpoint-00000001"]
