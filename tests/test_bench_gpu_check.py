"""bench/gpu_check.sh (#18.7): the CPU dry run CI runs, and the plan it would run on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def _run(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # correctness here, not speed
    return subprocess.run(
        [str(SCRIPT), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_dry_run_exercises_every_job_kind_and_writes_json_and_markdown(tmp_path: Path) -> None:
    result = _run("--dry-run", out=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    entries = {e["job"]["kind"]: e for e in report["entries"]}
    assert set(entries) == {"strategy", "unet", "width"}
    assert all(e["status"].startswith("ok") for e in entries.values())
    strategy = entries["strategy"]["result"]
    assert strategy["samples_per_s"] > 0 and strategy["loss_finite"]
    assert strategy["ema_devices"] == ["cpu"] and strategy["ema_gathered_tensors"] > 0
    unet = entries["unet"]["result"]
    assert unet["batch"] == 2 and 0 < unet["mfu"] < 1
    assert entries["width"]["result"]["widths_fit"] == [0.1, 0.2]
    # The GPU plan: 2 configs x 4 strategies, the SD-scale UNet, widths under DDP and ZeRO-3.
    plan = report["gpu_plan"]
    assert len(plan) == 11
    for strategy_name in ("ddp", "zero2", "zero3", "fsdp"):
        assert sum(f"accelerate/{strategy_name}.yaml" in cmd for cmd in plan) >= 2
    table = (tmp_path / "gpu_check.md").read_text().splitlines()
    assert table[2:4] == ["| job | status | result | s |", "|---|---|---|---|"]
    assert len([row for row in table if row.startswith("| strategy tiny ddp |")]) == 1


def test_without_a_gpu_it_refuses_unless_dry_run(tmp_path: Path) -> None:
    result = _run(out=tmp_path)
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
