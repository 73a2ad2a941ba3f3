"""The exact command a training pod runs, executed here: two "pods" (node ranks) on loopback.

`sgdm launch k8s` renders the job; `pod_process` rebuilds each pod's command and environment as the
operator would set them: PyTorchJob (MASTER_ADDR/PORT, WORLD_SIZE = pods x nprocPerNode, RANK = node
rank, PET_*) or Trainer v2 TrainJob (PET_* only, JOB_COMPLETION_INDEX). The tests run both commands
from this checkout with the image paths mapped onto it and the shared outputs volume mapped onto a
temp folder: under PyTorchJob they train one synchronised model; under TrainJob a preemption
(SIGTERM to both pods) writes a checkpoint and ends both pods with 143, which the runtime restarts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import free_port

from sgdm_dist.config import load_config
from sgdm_dist.launch.pods import CONFIG_FILE, CONFIG_PATH, OUTPUTS_MOUNT
from sgdm_dist.launch.render import render
from sgdm_dist.launch.rendezvous import pod_process

REPO = Path(__file__).resolve().parents[1]
IMAGE_ROOT = "/opt/sgdm"  # where docker/Dockerfile installs the repository


def start_pods(
    tiny_shards: list[str], tmp_path: Path, api: str, steps: tuple[int, int]
) -> tuple[list[subprocess.Popen], Path, dict[str, Any]]:
    """Render the job for 2 CPU nodes and start both pods' commands; returns (procs, run dir, job)."""
    shard_dir = tiny_shards[2].split("=", 1)[1]
    align, diffusion = steps
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            *tiny_shards,
            "launch.nodes=2",
            "launch.gpus_per_node=0",
            f"launch.shard_url={shard_dir}",
            f"train.align_steps={align}",
            f"train.diffusion_steps={diffusion}",
            "train.eval_every=6",
            "train.log_every=1",
            "train.recon_images=0",
        ],
    )
    config_map, job = render(cfg, "train", api)

    # The ConfigMap's config, with the outputs volume (RWX PVC in the cluster) mounted at a temp dir.
    outputs = tmp_path / "outputs"
    pod_cfg = yaml.safe_load(config_map["data"][CONFIG_FILE])
    assert pod_cfg["experiment"]["output_dir"].startswith(OUTPUTS_MOUNT)
    run_dir = Path(pod_cfg["experiment"]["output_dir"].replace(OUTPUTS_MOUNT, str(outputs)))
    pod_cfg["experiment"]["output_dir"] = str(run_dir)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(pod_cfg))
    paths = {IMAGE_ROOT: str(REPO), CONFIG_PATH: str(config_file), "/home/sgdm": str(tmp_path)}

    # Both "pods" share this machine's network namespace: a free port instead of the pod's.
    port = str(free_port())
    procs = []
    for node_rank in (0, 1):
        pod = pod_process(job, node_rank, master_addr="127.0.0.1", replace_paths=paths)
        assert pod.command[0] == f"{REPO}/launch/train.sh"
        assert pod.env["PET_NODE_RANK"] == str(node_rank) and pod.env["PET_NNODES"] == "2"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PET_", "MASTER_")) and k not in ("WORLD_SIZE", "RANK")
        }
        env.update(pod.env)
        env["PET_MASTER_PORT"] = port
        if "MASTER_PORT" in env:
            env["MASTER_PORT"] = port
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        procs.append(
            subprocess.Popen(
                pod.command,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs, run_dir, job


def finish(procs: list[subprocess.Popen]) -> tuple[list[int | None], list[str]]:
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=480)[0])
        finally:
            proc.kill()
    return [p.returncode for p in procs], logs


@pytest.mark.slow
def test_pytorchjob_pods_train_two_nodes(tiny_shards: list[str], tmp_path: Path) -> None:
    procs, run_dir, job = start_pods(tiny_shards, tmp_path, "pytorchjob", (3, 3))
    assert pod_process(job, 1).env["WORLD_SIZE"] == "2"  # pods x nprocPerNode (1 CPU process)
    codes, logs = finish(procs)
    assert codes == [0, 0], "\n----\n".join(log[-3000:] for log in logs)
    assert "replicas identical on 2 ranks" in logs[0]
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert (run_dir / "checkpoints" / "checkpoint-00000006" / "trainer_state.json").is_file()


def logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return max((row.get("step", 0) for row in rows), default=0)


@pytest.mark.slow
def test_trainjob_pods_rendezvous_and_exit_143_on_preemption(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    procs, run_dir, job = start_pods(tiny_shards, tmp_path, "trainjob", (3, 400))
    assert "MASTER_ADDR" not in pod_process(job, 0).env  # Trainer v2 sets PET_* only
    deadline = time.monotonic() + 480
    while logged_step(run_dir) < 2:  # both nodes joined: steps need the all-reduce
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            codes, logs = finish(procs)
            pytest.fail(f"exited early {codes}:\n" + "\n----\n".join(x[-3000:] for x in logs))
        time.sleep(0.2)  # polling interval of a condition check, not a synchronisation sleep
    for proc in procs:  # what the kubelet does to every pod of a preempted job
        proc.send_signal(signal.SIGTERM)
    codes, logs = finish(procs)
    assert codes == [143, 143], "\n----\n".join(log[-3000:] for log in logs)
    (checkpoint,) = sorted((run_dir / "checkpoints").glob("checkpoint-*"))
    stopped_at = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    assert 2 <= stopped_at < 403
    assert not (run_dir / "model").exists()


@pytest.mark.slow
def test_single_process_pod_exits_143_on_preemption(tiny_shards: list[str], tmp_path: Path) -> None:
    """One node, one process: accelerate runs the worker as a plain subprocess and passes no
    signal on; the launcher (sgdm_dist.launch.node) forwards SIGTERM so the worker checkpoints."""
    shard_dir = tiny_shards[2].split("=", 1)[1]
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "MASTER_"))}
    env.update(PYTHON=sys.executable, NPROC_PER_NODE="1", MAX_RESTARTS="0")
    proc = subprocess.Popen(
        [
            str(REPO / "launch" / "train.sh"),
            str(REPO / "configs" / "tiny.yaml"),
            *tiny_shards[:2],
            f"data.shard_dir={shard_dir}",
            f"experiment.output_dir={run_dir}",
            "train.align_steps=3",
            "train.diffusion_steps=400",
            "train.log_every=1",
            "train.recon_images=0",
            "experiment.tracking=false",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 480
    while logged_step(run_dir) < 1:
        if proc.poll() is not None or time.monotonic() > deadline:
            codes, logs = finish([proc])
            pytest.fail(f"exited early {codes}: {logs[0][-3000:]}")
        time.sleep(0.2)  # polling interval of a condition check, not a synchronisation sleep
    proc.send_signal(signal.SIGTERM)
    codes, logs = finish([proc])
    assert codes == [143], logs[0][-3000:]
    assert len(list((run_dir / "checkpoints").glob("checkpoint-*"))) == 1
