"""MLflow tracking of `sgdm train` against a real `mlflow server` on loopback, and its failure mode."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support import kill_group, start_mlflow_server

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")

WEIGHT_FILES = ("model.safetensors", "unet/diffusion_pytorch_model.safetensors")


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    proc, uri = start_mlflow_server(tmp_path / "mlflow")
    try:
        yield proc, uri
    finally:
        kill_group(proc)


def train_cmd(tiny_shards: list[str], out: Path, uri: str, *extra: str) -> list[str]:
    return [
        str(Path(sys.executable).with_name("sgdm")),
        "train",
        TINY,
        *tiny_shards,
        f"experiment.output_dir={out}",
        f"experiment.tracking_uri={uri}",
        *extra,
    ]


@pytest.mark.slow
def test_params_metrics_and_reconstruction_grid_reach_the_server(
    tiny_shards: list[str], tmp_path: Path, mlflow_server: tuple[subprocess.Popen, str]
) -> None:
    _, uri = mlflow_server
    out = tmp_path / "run"
    args = [
        "train.align_steps=4",
        "train.diffusion_steps=4",
        "train.log_every=2",
        "train.eval_every=4",
        "train.recon_images=4",
        "train.recon_steps=3",
    ]
    result = subprocess.run(
        train_cmd(tiny_shards, out, uri, *args), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sgdm-tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.params["data.shard_dir"] == tiny_shards[2].split("=", 1)[1]
    manifest_sha = run.data.tags["data.manifest_sha256"]
    import hashlib

    shard_dir = Path(tiny_shards[2].split("=", 1)[1])
    assert manifest_sha == hashlib.sha256((shard_dir / "manifest.json").read_bytes()).hexdigest()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2, 4, 6, 8]
    assert {"val/top1", "lr", "samples_per_s", "loss/align", "loss/diffusion"} <= set(
        run.data.metrics
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reconstructions")}
    assert artifacts == {"reconstructions/reconstructions.png"}
    local = client.download_artifacts(
        run.info.run_id, "reconstructions/reconstructions.png", str(tmp_path)
    )
    from PIL import Image

    with Image.open(local) as grid:
        assert grid.width > 64 and grid.height > 64  # 4 stimulus | reconstruction pairs of 64 px
    # The exported model reached its own run (what `sgdm register --run` registers), verified.
    from sgdm_dist.models.export import model_digest
    from sgdm_dist.registry import sha256_file, verify_folder

    weights = {f: sha256_file(out / "model" / f) for f in WEIGHT_FILES}
    assert run.data.tags["sgdm.model_sha256"] == model_digest(out / "model")
    assert run.data.tags["sgdm.stage"] == "train"
    uploaded = Path(client.download_artifacts(run.info.run_id, "sgdm-model", str(tmp_path / "m")))
    files = verify_folder(uploaded, run.data.tags["sgdm.files_sha256"])
    assert {f: files[f] for f in WEIGHT_FILES} == weights and "vae/config.json" in files
    assert "scheduler/scheduler_config.json" in files  # the diffusers layout travels whole


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a hang guard for a busy CI box, not a speed requirement
def test_training_finishes_when_the_server_dies_mid_run(
    tiny_shards: list[str], tmp_path: Path, mlflow_server: tuple[subprocess.Popen, str]
) -> None:
    server, uri = mlflow_server
    out = tmp_path / "run"
    args = [
        "train.align_steps=10",
        "train.diffusion_steps=10",
        "train.log_every=1",
        "train.eval_every=100",
        "train.recon_images=0",
        "train.checkpoint_every=100",
    ]
    proc = subprocess.Popen(
        train_cmd(tiny_shards, out, uri, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "training did not reach step 3"
        time.sleep(0.2)  # polling interval of a condition check
    kill_group(server)
    _, stderr = proc.communicate(timeout=1200)
    assert proc.returncode == 0, stderr[-3000:]
    assert "unreachable" in stderr and "training goes on" in stderr
    assert "tracking calls were not delivered" in stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps[-1] == 20  # every step ran and was recorded locally
    assert (out / "model" / "model.safetensors").is_file()
