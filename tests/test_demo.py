"""The front door: `sgdm demo --quick` runs every stage for real and prints its summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sgdm_dist.cli.demo import Lane, Step

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    # From another folder than the repository, with a relative config path and relative output
    # paths inside it: every step must read and write where the user's folder says.
    (tmp_path / "mine.yaml").write_text(
        f"extends: {REPO / 'configs' / 'demo.yaml'}\n"
        "experiment: {output_dir: demo}\n"
        "data: {raw_dir: demo/raw, image_dir: demo/raw/images, shard_dir: demo/shards,"
        " cache_dir: demo/cache}\n"
    )
    out = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "160"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "sgdm_dist.cli", "demo", "mine.yaml", "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for step in ("prepare", "train", "evaluate", "register", "pull", "reconstruct"):
        assert f"✓ {step}" in result.stdout
    assert "test retrieval top-1" in result.stdout and "chance" in result.stdout
    assert "sgdm-demo version 1 @champion" in result.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout

    assert "condition sensitivity" in result.stdout and "ceiling" in result.stdout
    assert (out / "evaluation" / "report.html").is_file()
    assert (out / "evaluation" / "metrics.json").is_file()
    # No VAE given: prepare trained the small autoencoder, kept its curve and scored its round trip.
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    training = manifest["features"]["vae_training"]
    assert training["steps"] == 20 and manifest["features"]["random_init"]["vae"] is False
    assert {"PixCorr", "SSIM"} <= set(training["held_out_round_trip"])
    assert (out / "shards" / "encoders" / "vae" / "loss_curve.png").is_file()
    assert (out / "reconstructions" / "grid.png").is_file()
    assert (out / "pulled" / "model.safetensors").is_file()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("sgdm-demo", "champion")
    assert str(champion.version) == "1"
    # Serving ran beside evaluation: its steps' output is kept and shown, and the champion is
    # linked to the evaluation although it was registered before the evaluation finished.
    assert "registered models:/sgdm-demo/1" in (out / "logs" / "register.log").read_text()
    assert "registered models:/sgdm-demo/1" in result.stdout
    experiment = client.get_experiment_by_name("sgdm-demo").experiment_id
    (evaluation,) = client.search_runs([experiment], "tags.`sgdm.stage` = 'evaluate'")
    assert champion.tags["sgdm.evaluation_runs"] == evaluation.info.run_id
    train_runs = client.search_runs([experiment], "tags.num_processes = '2'")
    assert len(train_runs) == 1  # trained by 2 processes under accelerate launch
    # The exported structure head was refitted through the decoder, never to a worse validation fit.
    refit = train_runs[0].data.metrics
    assert refit["structure_refit/val_pixel_mse"] <= refit["structure_refit/val_pixel_mse_before"]
    assert 0 <= refit["structure_refit/best_step"] <= 10


def test_serving_lane_runs_in_order_stops_at_a_failure_and_when_stopped(tmp_path: Path) -> None:
    ran = tmp_path / "third-step-ran"
    ok = Step("a", "prints", [sys.executable, "-c", "print('from a')"])
    bad = Step("b", "fails", [sys.executable, "-c", "import sys; sys.exit(3)"])
    never = Step("c", "must not run", [sys.executable, "-c", f"open({str(ran)!r}, 'w')"])
    lane = Lane([ok, bad, never], tmp_path / "logs")
    lane.start()
    lane.join()
    assert [(name, code) for name, code, _ in lane.runs] == [("a", 0), ("b", 3)]
    assert (tmp_path / "logs" / "a.log").read_text() == "from a\n"
    assert not ran.exists()

    # A failed evaluate stops the lane: the running step is terminated, the next never starts.
    hang = Step("h", "hangs", [sys.executable, "-c", "import time; time.sleep(600)"])
    lane = Lane([hang, never], tmp_path / "logs2")
    lane.start()
    lane.stop()
    lane.join(timeout=60)
    assert not lane.is_alive()
    assert [name for name, _, _ in lane.runs] in ([], ["h"])  # stopped before or while it ran
    assert all(code != 0 for _, code, _ in lane.runs)
    assert not ran.exists()
