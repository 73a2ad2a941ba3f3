"""Multi-node training as a Kubeflow Training Operator ``PyTorchJob`` (kubeflow.org/v1).

Shape: one pod per node, ``Master`` (1 replica, node rank 0) + ``Worker`` (nodes − 1 replicas), each
pod with ``gpus_per_node`` GPUs and as many processes. The operator injects MASTER_ADDR
(``<job>-master-0``), MASTER_PORT, WORLD_SIZE (= pods) and RANK (= node rank) plus torchrun's PET_*
variables; we add NPROC_PER_NODE and ACCELERATE_CONFIG, and ``launch/train.sh`` turns all of them into
``accelerate launch --num_machines … --machine_rank … --num_processes (nodes × nproc)``.
"""

from __future__ import annotations

from typing import Any

from sgdm_dist.config import Config
from sgdm_dist.launch import pods

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the operator finds the rendezvous port on the container of this name
PORT_NAME = "pytorchjob-port"
TRAIN_SCRIPT = f"{pods.APP_DIR}/launch/train.sh"


def nproc_per_node(cfg: Config) -> int:
    """Processes per pod: one per GPU, or a single CPU process on GPU-less pods."""
    return max(cfg.launch.gpus_per_node, 1)


def world_size(cfg: Config) -> int:
    """Global number of training processes (what ``accelerate launch --num_processes`` gets)."""
    return cfg.launch.nodes * nproc_per_node(cfg)


def accelerate_config_path(cfg: Config) -> str:
    """The image's accelerate config; the ``_multinode`` variants carry DeepSpeed's standard
    multi-node launcher (the default one needs ssh between pods)."""
    suffix = "_multinode" if cfg.launch.nodes > 1 else ""
    return f"{pods.APP_DIR}/configs/accelerate/{cfg.launch.accelerate}{suffix}.yaml"


def container_env(cfg: Config) -> list[dict[str, Any]]:
    plain = {
        "NPROC_PER_NODE": str(nproc_per_node(cfg)),
        "ACCELERATE_CONFIG": accelerate_config_path(cfg),
        "MAX_RESTARTS": str(cfg.launch.max_restarts),
        "HOME": pods.HOME_DIR,
        **cfg.launch.env,
    }
    return pods.plain_env(plain) + pods.secret_env(cfg.launch.mlflow_secret)


def _template(cfg: Config, name: str, role: str) -> dict[str, Any]:
    launch = cfg.launch
    gpus = launch.gpus_per_node
    vols, mounts = pods.volumes(cfg, name, launch.resources.shm)
    container = {
        "name": CONTAINER,
        "image": launch.image,
        "imagePullPolicy": launch.image_pull_policy,
        "command": [TRAIN_SCRIPT],
        "args": [pods.CONFIG_PATH, *launch.train_args],
        "workingDir": pods.APP_DIR,
        "ports": [{"name": PORT_NAME, "containerPort": launch.master_port, "protocol": "TCP"}],
        "env": container_env(cfg),
        "resources": pods.resources(
            launch.resources.cpu, launch.resources.memory, gpus, launch.gpu_resource
        ),
        "securityContext": pods.container_security(),
        "volumeMounts": mounts,
    }
    return {
        "metadata": {"labels": pods.labels(name, "training", role)},
        "spec": pods.pod_spec(cfg, name, [container], vols, gpus),
    }


def render_pytorchjob(cfg: Config, name: str) -> dict[str, Any]:
    """The PyTorchJob manifest for ``cfg.launch`` (nodes, gpus_per_node, image, …)."""
    launch = cfg.launch
    replica = {"restartPolicy": launch.restart_policy}
    specs: dict[str, Any] = {
        "Master": {"replicas": 1, **replica, "template": _template(cfg, name, "master")}
    }
    if launch.nodes > 1:
        specs["Worker"] = {
            "replicas": launch.nodes - 1,
            **replica,
            "template": _template(cfg, name, "worker"),
        }
    run_policy: dict[str, Any] = {
        # Preempted/failed pods are recreated up to this many times; train.sh resumes from the
        # newest checkpoint on the shared claim (--resume auto).
        "backoffLimit": launch.backoff_limit,
        "cleanPodPolicy": "None",
    }
    if launch.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = launch.ttl_seconds_after_finished
    spec: dict[str, Any] = {
        "nprocPerNode": str(nproc_per_node(cfg)),
        "runPolicy": run_policy,
        "pytorchReplicaSpecs": specs,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": launch.namespace,
            "labels": pods.labels(name, "training"),
        },
        "spec": spec,
    }
