"""The exact command a PyTorchJob pod runs, executed here: two "pods" (node ranks) on loopback.

`sgdm launch k8s` renders the job; `pod_process` rebuilds each pod's command and environment as the
Training Operator would set them (MASTER_ADDR, MASTER_PORT, WORLD_SIZE = pods, RANK = node rank,
PET_*). The test runs both commands from this checkout with the image paths mapped onto it, the
shared outputs volume mapped onto a temp folder, and checks they train one synchronised model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import free_port

from sgdm_dist.config import load_config
from sgdm_dist.launch.pods import CONFIG_FILE, CONFIG_PATH, OUTPUTS_MOUNT
from sgdm_dist.launch.render import render
from sgdm_dist.launch.rendezvous import pod_process

REPO = Path(__file__).resolve().parents[1]
IMAGE_ROOT = "/opt/sgdm"  # where docker/Dockerfile installs the repository


@pytest.mark.slow
def test_pod_command_trains_two_nodes_with_operator_env(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    shard_dir = tiny_shards[2].split("=", 1)[1]
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            *tiny_shards,
            "launch.nodes=2",
            "launch.gpus_per_node=0",
            f"launch.shard_url={shard_dir}",
            "train.align_steps=3",
            "train.diffusion_steps=3",
            "train.eval_every=6",
            "train.recon_images=0",
        ],
    )
    config_map, job = render(cfg, "train")
    assert job["kind"] == "PyTorchJob"

    # The ConfigMap's config, with the outputs volume (RWX PVC in the cluster) mounted at a temp dir.
    outputs = tmp_path / "outputs"
    pod_cfg = yaml.safe_load(config_map["data"][CONFIG_FILE])
    assert pod_cfg["experiment"]["output_dir"].startswith(OUTPUTS_MOUNT)
    pod_cfg["experiment"]["output_dir"] = pod_cfg["experiment"]["output_dir"].replace(
        OUTPUTS_MOUNT, str(outputs)
    )
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(pod_cfg))
    paths = {
        IMAGE_ROOT: str(REPO),
        CONFIG_PATH: str(config_file),
        "/home/sgdm": str(tmp_path / "home"),
    }

    # Both "pods" share this machine's network namespace: a free port instead of the pod's 23456.
    port = str(free_port())
    procs = []
    for node_rank in (0, 1):
        pod = pod_process(job, node_rank, master_addr="127.0.0.1", replace_paths=paths)
        assert pod.command[0] == f"{REPO}/launch/train.sh"
        assert pod.env["WORLD_SIZE"] == "2" and pod.env["RANK"] == str(node_rank)
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        env.update(pod.env)
        env.update(MASTER_PORT=port, PET_MASTER_PORT=port, PYTHON=sys.executable)
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
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=480)[0])
        finally:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(log[-3000:] for log in logs)
    assert "replicas identical on 2 ranks" in logs[0]
    run_dir = Path(pod_cfg["experiment"]["output_dir"])
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert (run_dir / "checkpoints" / "checkpoint-00000006" / "trainer_state.json").is_file()
