"""A rank killed with SIGKILL mid-epoch: `accelerate launch` restarts the workers, they resume from the
newest complete checkpoint, and the job finishes with the same final step count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support import free_port

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
TOTAL = 8
RUN = [
    f"train.align_steps={TOTAL // 2}",
    f"train.diffusion_steps={TOTAL // 2}",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "train.eval_every=100",
    "train.recon_images=0",
    "experiment.tracking=false",
]


def worker_with_rank(launcher: psutil.Process, rank: int) -> psutil.Process | None:
    for proc in launcher.children(recursive=True):
        try:
            if "sgdm_dist.cli" in " ".join(proc.cmdline()) and proc.environ().get("RANK") == str(
                rank
            ):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_sigkilled_rank_is_restarted_and_resumes(tiny_shards: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(
        NPROC_PER_NODE="2",
        MAX_RESTARTS="1",
        MASTER_PORT=str(free_port()),
        PYTHON=sys.executable,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    launcher = subprocess.Popen(
        [
            str(REPO / "launch" / "train.sh"),
            TINY,
            *tiny_shards,
            *RUN,
            f"experiment.output_dir={out}",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 420
        victim = None
        while victim is None:
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "training never passed its first checkpoint"
            if max(logged_steps(out), default=0) >= 3:  # checkpoint-2 exists, step 4 is running
                victim = worker_with_rank(psutil.Process(launcher.pid), 1)
            time.sleep(0.2)  # polling interval of a condition check
        victim.send_signal(signal.SIGKILL)
        log, _ = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 0, log[-4000:]
    assert "restart 1/1 from the newest checkpoint" in log
    assert "resumed from" in log and "checkpoint-0000000" in log
    final = json.loads(
        (out / "checkpoints" / f"checkpoint-{TOTAL:08d}" / "trainer_state.json").read_text()
    )
    assert final["step"] == TOTAL
    assert logged_steps(out)[-1] == TOTAL
    assert (out / "model" / "model.safetensors").is_file()
