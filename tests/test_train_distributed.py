"""`sgdm train` as users launch it: real processes under `accelerate launch` on loopback (gloo, CPU).

Every multi-process test checks that the processes really formed one job (world size, strategy as
recorded in MLflow) and that replicated ranks ended with identical weights; a launch that silently
ran N independent trainings would fail here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support import free_port

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
SHORT = [
    "train.align_steps=3",
    "train.diffusion_steps=3",
    "train.checkpoint_every=4",
    "train.log_every=1",
    "train.eval_every=6",
    "train.recon_images=0",
]


def launch_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHON"] = sys.executable
    env["MASTER_PORT"] = str(free_port())
    env.update(extra)
    return env


def run_launcher(
    args: list[str], env: dict[str, str], timeout: int = 420
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "launch" / "train.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


def only_run(out_dir: Path) -> tuple[MlflowClient, object]:
    client = MlflowClient(f"sqlite:///{out_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sgdm-tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def losses(out_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "expected_type"),
    # ZeRO-2/3 (bf16, trajectories vs 1 process, resume): tests/test_train_equivalence.py
    [("ddp", "MULTI_CPU")],
)
def test_two_processes_train_one_synchronised_model(
    tiny_shards: list[str], tmp_path: Path, strategy: str, expected_type: str
) -> None:
    out = tmp_path / strategy
    env = launch_env(NPROC_PER_NODE="2", ACCELERATE_CONFIG=f"configs/accelerate/{strategy}.yaml")
    result = run_launcher([TINY, *tiny_shards, *SHORT, f"experiment.output_dir={out}"], env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]

    _client, run = only_run(out)
    assert run.data.tags["num_processes"] == "2"
    assert run.data.tags["distributed_type"] == f"DistributedType.{expected_type}"
    assert run.info.status == "FINISHED"
    if strategy != "zero3":  # replicated weights: every rank must hold the same numbers
        assert "replicas identical on 2 ranks" in log
    # The exported model is complete (gathered from shards under ZeRO-3) and loads.
    from sgdm_dist.models import SGDM

    model = SGDM.from_pretrained(out / "model")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert (out / "checkpoints" / "checkpoint-00000006" / "trainer_state.json").is_file()
    assert sorted(losses(out)) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_two_nodes_rendezvous_on_loopback(tiny_shards: list[str], tmp_path: Path) -> None:
    """Two launchers, one process each, as two Kubernetes pods would run them."""
    out = tmp_path / "two-nodes"
    port = str(free_port())
    procs = []
    for node_rank in (0, 1):
        env = launch_env(
            NNODES="2",
            NODE_RANK=str(node_rank),
            NPROC_PER_NODE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            ACCELERATE_CONFIG="configs/accelerate/ddp_multinode.yaml",
        )
        procs.append(
            subprocess.Popen(
                [
                    str(REPO / "launch" / "train.sh"),
                    TINY,
                    *tiny_shards,
                    *SHORT,
                    f"experiment.output_dir={out}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=REPO,
            )
        )
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=420)[0])
        finally:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "replicas identical on 2 ranks" in logs[0]
    _, run = only_run(out)
    assert run.data.tags["num_processes"] == "2"


def test_fsdp_on_cpu_is_refused_not_silently_replaced(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    env = launch_env(NPROC_PER_NODE="2", ACCELERATE_CONFIG="configs/accelerate/fsdp.yaml")
    result = run_launcher([TINY, *tiny_shards, *SHORT, f"experiment.output_dir={tmp_path}"], env)
    assert result.returncode != 0
    assert "accelerate applies FSDP only on GPUs" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_launcher_rejects_bad_environment(tmp_path: Path) -> None:
    result = run_launcher([TINY], launch_env(NPROC_PER_NODE="two"))
    assert result.returncode == 2
    assert "nproc must be a whole number, got 'two'" in result.stderr
    result = run_launcher([TINY], launch_env(ACCELERATE_CONFIG="configs/accelerate/nope.yaml"))
    assert result.returncode == 2
    assert "accelerate config not found" in result.stderr


def test_launcher_reads_operator_node_range(tmp_path: Path) -> None:
    """PET_NNODES=MIN:MAX (elastic policy): equal bounds are a size, a real range is refused."""
    env = launch_env(PET_NNODES="2:2", PET_NODE_RANK="1", NPROC_PER_NODE="3", PYTHON="echo")
    result = run_launcher([TINY], env)
    assert result.returncode == 0, result.stderr
    assert "--num_machines 2 --machine_rank 1" in result.stdout
    assert "--num_processes 6" in result.stdout
    result = run_launcher([TINY], launch_env(PET_NNODES="1:4"))
    assert result.returncode == 2
    assert "elastic node range '1:4' is not supported" in result.stderr
