"""A multi-worker trial: each fold trains under a Ray Train TorchTrainer (2 gloo DDP workers, CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sgdm_dist.config import load_config
from sgdm_dist.tune import run_sweep

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ray_shutdown():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    yield
    import ray

    ray.shutdown()


def test_trial_with_two_workers_trains_ddp_and_reports_per_fold(
    tiny_shards: list[str], tmp_path: Path, ray_shutdown: None
) -> None:
    cfg = load_config(
        REPO / "configs" / "tune" / "tiny.yaml",
        [
            *tiny_shards,
            f"experiment.output_dir={tmp_path}",
            "tune.num_samples=1",
            "tune.max_folds=1",
            "tune.scheduler=fifo",
            "tune.workers_per_trial=2",
            "tune.ray_num_cpus=3",  # 2 workers × 1 CPU + the trial's 0.1
            "tune.keep_fold_models=true",
        ],
    )
    result = run_sweep(cfg)
    (row,) = result.rows
    assert row.status == "complete" and row.folds_done == 1
    assert row.iterations == 1  # one report per fold on this path
    fold_dir = result.path / "trials" / row.trial_id / "fold-0"
    record = json.loads((fold_dir / "fold.json").read_text())
    assert record["held_out"] == [1] and record["train"] == [2]
    # The fold trained as 2 gloo ranks (train() refuses a world that differs from WORLD_SIZE).
    workers = json.loads((fold_dir / "workers.json").read_text())
    assert workers == {"world_size": 2, "backend": "gloo", "steps": cfg.train.total_steps}
    assert (fold_dir / "model" / "model.safetensors").is_file()
    assert load_config(fold_dir / "model" / "experiment.yaml").train.subjects == [2]
    trial = json.loads((result.path / "trials" / row.trial_id / "trial.json").read_text())
    assert trial["heldout_mrr"] == pytest.approx(row.score)
    assert 0.0 <= trial["heldout_top1"] <= 1.0
