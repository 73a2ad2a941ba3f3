"""Multi-node training as a Kubeflow Training Operator ``PyTorchJob`` (kubeflow.org/v1), and the
pod pieces it shares with the Trainer v2 ``TrainJob`` (:mod:`sgdm_dist.launch.trainjob`).

Shape: one pod per node, ``Master`` (1 replica, node rank 0) + ``Worker`` (nodes − 1 replicas), each
pod with ``gpus_per_node`` GPUs and as many processes. The operator injects MASTER_ADDR
(``<job>-master-0``), MASTER_PORT, WORLD_SIZE (= pods × nprocPerNode: processes, not pods), RANK
(= node rank) and torchrun's PET_* variables; we add NPROC_PER_NODE and ACCELERATE_CONFIG, and
``launch/train.sh`` turns them into ``accelerate launch --num_machines … --machine_rank …``.

Restarts (docs/deploy.md, "Exit codes"): ``restartPolicy: ExitCode`` fails the job at once on an exit
code < 128 (2 = bad config or data; 1 = crashed after the in-pod restart budget) and recreates a pod
that ended by a signal (143 = preempted, checkpoint written; 137 = killed). Crashes are restarted
inside the pods by train.sh (``MAX_RESTARTS`` = the per-attempt budget, scaled to the node count).
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
GRACE_MARGIN_S = 30  # kubelet grace beyond the launcher's own shutdown timeout


def nproc_per_node(cfg: Config) -> int:
    """Processes per pod: one per GPU, or a single CPU process on GPU-less pods."""
    return max(cfg.launch.gpus_per_node, 1)


def world_size(cfg: Config) -> int:
    """Global number of training processes (what ``accelerate launch --num_processes`` gets)."""
    return cfg.launch.nodes * nproc_per_node(cfg)


def restart_budget(cfg: Config) -> int:
    """In-pod crash restarts per job attempt: ``max_restarts`` or ``restarts_per_node × nodes``."""
    launch = cfg.launch
    if launch.max_restarts is not None:
        return launch.max_restarts
    return launch.restarts_per_node * launch.nodes


def backoff_limit(cfg: Config) -> int:
    """Operator-level restarts (PyTorchJob backoffLimit, JobSet maxRestarts)."""
    limit = cfg.launch.backoff_limit
    return restart_budget(cfg) if limit is None else limit


def grace_seconds(cfg: Config) -> int:
    """terminationGracePeriodSeconds: time to checkpoint after SIGTERM, plus a margin."""
    return cfg.launch.preemption_grace_s + GRACE_MARGIN_S


def accelerate_config_path(cfg: Config) -> str:
    """The image's accelerate config; the ``_multinode`` variants carry DeepSpeed's standard
    multi-node launcher (the default one needs ssh between pods)."""
    suffix = "_multinode" if cfg.launch.nodes > 1 else ""
    return f"{pods.APP_DIR}/configs/accelerate/{cfg.launch.accelerate}{suffix}.yaml"


def plain_env(cfg: Config) -> dict[str, str]:
    """The env every training pod gets from the manifest (the operator adds the rendezvous)."""
    return {
        "NPROC_PER_NODE": str(nproc_per_node(cfg)),
        "ACCELERATE_CONFIG": accelerate_config_path(cfg),
        "MAX_RESTARTS": str(restart_budget(cfg)),
        # torchrun waits this long for workers to checkpoint after SIGTERM before it SIGKILLs them.
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(cfg.launch.preemption_grace_s),
        "HOME": pods.HOME_DIR,
        **cfg.launch.nccl.env(),
        **({"REGISTER_ALIAS": cfg.launch.register_alias} if cfg.launch.register_alias else {}),
        **cfg.launch.env,
    }


def container_env(cfg: Config) -> list[dict[str, Any]]:
    return (
        pods.plain_env(plain_env(cfg))
        + pods.secret_env(cfg.launch.mlflow_secret)
        + pods.shard_secret_env(cfg)
    )


def pod_resources(cfg: Config) -> dict[str, Any]:
    launch = cfg.launch
    cpu, memory, _ = launch.resources.for_gpus(launch.gpus_per_node)
    extra = {launch.nccl.rdma_resource: 1} if launch.nccl.rdma_resource else None
    return pods.resources(cpu, memory, launch.gpus_per_node, launch.gpu_resource, extra)


def shm_size(cfg: Config) -> str:
    return cfg.launch.resources.for_gpus(cfg.launch.gpus_per_node)[2]


def _template(cfg: Config, name: str, role: str) -> dict[str, Any]:
    launch = cfg.launch
    vols, mounts = pods.volumes(cfg, name, shm_size(cfg))
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": launch.image,
        "imagePullPolicy": launch.image_pull_policy,
        "command": [TRAIN_SCRIPT],
        "args": [pods.CONFIG_PATH, *launch.train_args],
        "workingDir": pods.APP_DIR,
        "ports": [{"name": PORT_NAME, "containerPort": launch.master_port, "protocol": "TCP"}],
        "env": container_env(cfg),
        "resources": pod_resources(cfg),
        "securityContext": pods.container_security(),
        "volumeMounts": mounts,
    }
    metadata: dict[str, Any] = {"labels": pods.labels(name, "training", role)}
    if pods.topology_annotations(cfg):
        metadata["annotations"] = pods.topology_annotations(cfg)
    return {
        "metadata": metadata,
        "spec": pods.pod_spec(
            cfg, name, [container], vols, launch.gpus_per_node, grace_s=grace_seconds(cfg)
        ),
    }


def _run_policy(cfg: Config) -> dict[str, Any]:
    launch = cfg.launch
    run_policy: dict[str, Any] = {
        # Under ExitCode the operator recreates signal-ended pods without counting them here
        # (training-operator pkg/core/job.go counts container restarts only); kept for OnFailure.
        "backoffLimit": backoff_limit(cfg),
        # A failed job leaves no pod waiting at the rendezvous.
        "cleanPodPolicy": "Running",
    }
    if launch.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = launch.ttl_seconds_after_finished
    sched = launch.scheduling
    if sched.gang != "none" or sched.queue or sched.priority_class:
        # The operator's PodGroup (--gang-scheduler-name=scheduler-plugins|volcano): all nodes at once.
        policy: dict[str, Any] = {
            "minAvailable": launch.nodes,
            "scheduleTimeoutSeconds": sched.schedule_timeout_s,
        }
        if sched.priority_class:
            policy["priorityClass"] = sched.priority_class
        run_policy["schedulingPolicy"] = policy
    return run_policy


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
    spec: dict[str, Any] = {
        "nprocPerNode": str(nproc_per_node(cfg)),
        "runPolicy": _run_policy(cfg),
        "pytorchReplicaSpecs": specs,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": launch.namespace,
            "labels": pods.job_labels(cfg, name, "training"),
        },
        "spec": spec,
    }
