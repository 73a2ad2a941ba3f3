"""Preemption and resume: SIGTERM → checkpoint and exit 143; `--resume auto` continues the same run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
RUN = [
    "train.align_steps=8",
    "train.diffusion_steps=8",
    "train.log_every=1",
    "train.checkpoint_every=100",  # only the SIGTERM checkpoint exists mid-run
    "train.eval_every=5",
    "train.recon_images=0",
    "experiment.tracking=false",
]


def sgdm_train(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("sgdm")), "train", TINY, *args]


def logged_losses(out: Path) -> dict[int, float]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> None:
    """Block until the run has logged ``step`` (polling its metrics file), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if max(logged_losses(out), default=0) >= step:
            return
        if proc.poll() is not None:
            pytest.fail(
                f"training exited early with {proc.returncode}: {proc.stderr.read()[-3000:]}"
            )
        time.sleep(0.2)  # polling interval of a condition check, not a synchronisation sleep
    proc.kill()
    pytest.fail(f"step {step} not reached in {timeout} s")


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_replays_the_same_losses(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    full, split = tmp_path / "uninterrupted", tmp_path / "preempted"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    reference = subprocess.run(
        sgdm_train(*tiny_shards, *RUN, f"experiment.output_dir={full}"),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = logged_losses(full)
    assert sorted(expected) == list(range(1, 17))

    proc = subprocess.Popen(
        sgdm_train(*tiny_shards, *RUN, f"experiment.output_dir={split}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    wait_for_step(proc, split, 6)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    assert "resume with --resume auto" in stderr
    checkpoints = sorted((split / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1
    stopped_at = json.loads((checkpoints[0] / "trainer_state.json").read_text())["step"]
    assert 6 <= stopped_at < 16
    assert not (split / "model").exists()  # no final export from an interrupted run

    fresh = subprocess.run(
        sgdm_train(*tiny_shards, *RUN, f"experiment.output_dir={split}"),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert fresh.returncode == 1  # a fresh start must not overwrite the interrupted run
    assert "holds checkpoints of an earlier run: pass --resume auto" in fresh.stderr

    resumed = subprocess.run(
        sgdm_train(*tiny_shards, *RUN, f"experiment.output_dir={split}", "--resume", "auto"),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoints[0]} at step {stopped_at}" in resumed.stderr
    got = logged_losses(split)
    assert sorted(got) == list(range(1, 17))
    for step in range(stopped_at + 1, 17):
        # Same seed, same data position, same RNG state: equal up to float summation order.
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    assert (split / "model" / "model.safetensors").is_file()
