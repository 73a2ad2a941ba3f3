"""Hyper-parameter sweeps as a KubeRay ``RayJob`` (ray.io/v1) that runs ``sgdm tune``.

The RayJob brings up its own Ray cluster (one head, ``launch.nodes`` GPU workers with
``gpus_per_node`` GPUs each), submits the entrypoint from a small submitter pod (KubeRay sets
RAY_ADDRESS for it) and deletes the cluster when the sweep ends. Trials write to the shared
checkpoint claim, which Ray Tune's multi-node ``storage_path`` requires.
"""

from __future__ import annotations

import shlex
from typing import Any

from sgdm_dist.config import Config
from sgdm_dist.launch import pods

API_VERSION = "ray.io/v1"
KIND = "RayJob"
HEAD_PORTS = (("gcs-server", 6379), ("dashboard", 8265), ("client", 10001))
SUBMITTER_RESOURCES = ("500m", "512Mi")


def entrypoint(cfg: Config) -> str:
    # --resume: a restarted RayJob continues its sweep (a fresh one starts when none exists yet).
    return shlex.join(["sgdm", "tune", pods.CONFIG_PATH, "--resume"])


def _env(cfg: Config) -> list[dict[str, Any]]:
    return pods.plain_env({"HOME": pods.HOME_DIR, **cfg.launch.env}) + pods.secret_env(
        cfg.launch.mlflow_secret
    )


def _ray_template(cfg: Config, name: str, role: str, *, head: bool) -> dict[str, Any]:
    launch = cfg.launch
    res = launch.tune.head if head else launch.resources
    gpus = 0 if head else launch.gpus_per_node
    cpu, memory, shm = res.for_gpus(gpus)
    vols, mounts = pods.volumes(cfg, name, shm)
    container: dict[str, Any] = {
        "name": "ray-head" if head else "ray-worker",
        "image": launch.image,
        "imagePullPolicy": launch.image_pull_policy,
        "workingDir": pods.APP_DIR,
        "env": _env(cfg),
        "resources": pods.resources(cpu, memory, gpus, launch.gpu_resource),
        "securityContext": pods.container_security(),
        "volumeMounts": mounts,
    }
    if head:
        container["ports"] = [
            {"name": port_name, "containerPort": port, "protocol": "TCP"}
            for port_name, port in HEAD_PORTS
        ]
    return {
        "metadata": {"labels": pods.labels(name, "tuning", role)},
        "spec": pods.pod_spec(cfg, name, [container], vols, gpus),
    }


def _submitter_template(cfg: Config, name: str) -> dict[str, Any]:
    launch = cfg.launch
    cpu, memory = SUBMITTER_RESOURCES
    container = {
        # No command: KubeRay fills in `ray job submit … -- <entrypoint>`.
        "name": "ray-job-submitter",
        "image": launch.image,
        "imagePullPolicy": launch.image_pull_policy,
        "env": pods.plain_env({"HOME": pods.HOME_DIR}),
        "resources": pods.resources(cpu, memory, 0, launch.gpu_resource),
        "securityContext": pods.container_security(),
        "volumeMounts": [
            {"name": "home", "mountPath": pods.HOME_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    spec = pods.pod_spec(
        cfg,
        name,
        [container],
        [{"name": "home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        0,
        restart_policy="Never",
    )
    return {"metadata": {"labels": pods.labels(name, "tuning", "submitter")}, "spec": spec}


def render_rayjob(cfg: Config, name: str) -> dict[str, Any]:
    """The RayJob manifest: head + ``launch.nodes`` workers running ``sgdm tune``."""
    launch = cfg.launch
    nodes = launch.nodes
    spec: dict[str, Any] = {
        "entrypoint": entrypoint(cfg),
        "shutdownAfterJobFinishes": launch.tune.shutdown_after_finish,
        "rayClusterSpec": {
            "rayVersion": launch.tune.ray_version,
            "enableInTreeAutoscaling": False,
            "headGroupSpec": {
                # The head schedules no trials (num-gpus 0); the dashboard must be reachable from
                # the submitter pod through the head Service, hence 0.0.0.0.
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0"},
                "template": _ray_template(cfg, name, "ray-head", head=True),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": nodes,
                    "minReplicas": nodes,
                    "maxReplicas": nodes,
                    "rayStartParams": {},
                    "template": _ray_template(cfg, name, "ray-worker", head=False),
                }
            ],
        },
        "submitterPodTemplate": _submitter_template(cfg, name),
    }
    if launch.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = launch.ttl_seconds_after_finished
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": launch.namespace,
            "labels": pods.job_labels(cfg, name, "tuning"),
        },
        "spec": spec,
    }
