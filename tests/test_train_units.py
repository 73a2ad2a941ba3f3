"""Checkpoint discovery, EMA maths, launch checks and the failure-tolerant tracker, in one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import free_port
from torch import nn

from sgdm_dist.training.checkpoint import (
    STATE_FILE,
    CheckpointError,
    TrainerState,
    complete_checkpoints,
    resolve_resume,
)
from sgdm_dist.training.distributed import LaunchRequest
from sgdm_dist.training.ema import EMA
from sgdm_dist.utils.tracking import Tracker, default_tracking_uri


def _checkpoint(root: Path, step: int, complete: bool = True, prefix: str = "checkpoint-") -> Path:
    folder = root / f"{prefix}{step:08d}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    if complete:
        (folder / STATE_FILE).write_text(TrainerState(step=step).to_json())
    return folder


def test_resume_auto_ignores_partial_checkpoints(tmp_path: Path) -> None:
    good = _checkpoint(tmp_path, 5)
    _checkpoint(tmp_path, 10, prefix=".tmp-checkpoint-")  # cut off before the rename
    _checkpoint(tmp_path, 12, complete=False)  # no trainer_state.json: never finished
    assert complete_checkpoints(tmp_path) == [good]
    assert resolve_resume(tmp_path, "auto") == good
    assert TrainerState.read(good).step == 5


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path: Path) -> None:
    assert resolve_resume(tmp_path / "none", "auto") is None
    assert resolve_resume(tmp_path, None) is None


def test_resume_from_incomplete_path_is_an_error(tmp_path: Path) -> None:
    partial = _checkpoint(tmp_path, 3, complete=False)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(partial))


def test_checkpoints_sorted_by_step_not_name(tmp_path: Path) -> None:
    for step in (100, 20, 3):
        _checkpoint(tmp_path, step)
    assert [TrainerState.read(p).step for p in complete_checkpoints(tmp_path)] == [3, 20, 100]


def test_ema_warmup_and_update() -> None:
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.99, keep=True)
    assert ema.current_decay() == pytest.approx(1 / 10)
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    # shadow moved 90 % of the way (decay 0.1 at the first update)
    assert torch.allclose(ema.shadow["weight"], start["weight"] + 0.9, atol=1e-6)
    assert ema.current_decay() == pytest.approx(2 / 11)
    clone = EMA(nn.Linear(3, 2), decay=0.99, keep=True)
    clone.load_state_dict(ema.state_dict())
    assert clone.updates == 1
    assert torch.equal(clone.shadow["weight"], ema.shadow["weight"])


def test_ema_on_other_ranks_keeps_nothing() -> None:
    ema = EMA(nn.Linear(3, 2), decay=0.9, keep=False)
    ema.update(nn.Linear(3, 2))
    assert ema.shadow == {}
    assert ema.updates == 1


def test_launch_request_from_env() -> None:
    req = LaunchRequest.from_env({"WORLD_SIZE": "4", "ACCELERATE_USE_DEEPSPEED": "true"})
    assert req == LaunchRequest(world_size=4, deepspeed=True, fsdp=False)
    assert LaunchRequest.from_env({}) == LaunchRequest(world_size=1, deepspeed=False, fsdp=False)
    assert (
        LaunchRequest.from_env({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}).local_world_size == 4
    )


def test_tracking_uri_precedence(tmp_path: Path) -> None:
    assert default_tracking_uri("http://a", tmp_path, "http://b") == "http://a"
    assert default_tracking_uri(None, tmp_path, "http://b") == "http://b"
    assert default_tracking_uri(None, tmp_path, None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_tracker_never_blocks_training_when_server_is_down() -> None:
    import mlflow.tracking  # noqa: F401  (imported here, not half-way in the tracker's thread)

    tracker = Tracker(f"http://127.0.0.1:{free_port()}", "exp", "run", retry_seconds=0.05)
    for step in range(200):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step)
    # Every call returned although no run could even be created: they wait in the queue.
    assert tracker._queue.qsize() >= 199
    # A refused connection fails at once; after stop the rest is dropped untried, so close()
    # returns long before this limit (which only guards against a hang).
    delivered = tracker.close(timeout=120)
    assert not delivered  # nothing reached the server, and close says so
    assert tracker.failures > 0
    assert tracker.dropped >= 200  # every metric call (and the run's end) counted as undelivered
    assert tracker.run_id is None


def test_tracker_sqlite_round_trip(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp", "run")
    tracker.log_params({"train.lr": 0.001, "model.unet.block_out_channels": [32, 64]})
    tracker.set_tags({"data.manifest_sha256": "abc"})
    for step in range(1, 4):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    assert tracker.close(timeout=60)
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.tags["data.manifest_sha256"] == "abc"
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert run.info.status == "FINISHED"
