"""Pod pieces shared by training and tuning jobs: names, labels, mounts, security, resources.

Every pod runs the same image as a non-root user with a read-only root filesystem; what must be
writable is an explicit volume (home/caches, /tmp, /dev/shm, the checkpoint claim).
"""

from __future__ import annotations

import re
from typing import Any

from sgdm_dist.config import Config

# Inside the image (docker/Dockerfile): the repo's launch/ and configs/ live under APP_DIR.
APP_DIR = "/opt/sgdm"
HOME_DIR = "/home/sgdm"
USER_ID = 10001
CONFIG_DIR = "/etc/sgdm"
CONFIG_FILE = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
SHARDS_MOUNT = "/mnt/shards"
OUTPUTS_MOUNT = "/mnt/outputs"

JOB_LABEL = "sgdm-dist/job"
ROLE_LABEL = "sgdm-dist/role"
PART_OF = {"app.kubernetes.io/part-of": "sgdm-dist", "app.kubernetes.io/managed-by": "sgdm"}

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
MAX_NAME = 40


def job_name(cfg: Config) -> str:
    """``launch.job_name`` or a DNS-1035 label made from ``experiment.name`` (≤ 40 chars).

    40 leaves room for the suffixes operators add (``-worker-12``, KubeRay's ``-raycluster-xxxxx``).
    """
    if cfg.launch.job_name:
        return cfg.launch.job_name
    slug = re.sub(r"[^a-z0-9-]+", "-", cfg.experiment.name.lower()).strip("-")
    slug = re.sub(r"-{2,}", "-", slug)
    if not slug or not slug[0].isalpha():
        slug = f"sgdm-{slug}".rstrip("-")
    return slug[:MAX_NAME].rstrip("-")


def job_labels(cfg: Config, name: str, component: str) -> dict[str, str]:
    """Labels of the job object: ours plus Kueue's queue name when ``scheduling.queue`` is set."""
    out = labels(name, component)
    if cfg.launch.scheduling.queue:
        out[QUEUE_LABEL] = cfg.launch.scheduling.queue
    return out


def topology_annotations(cfg: Config) -> dict[str, str]:
    """Kueue topology-aware scheduling hints for a pod template."""
    sched = cfg.launch.scheduling
    out = {}
    if sched.topology_required:
        out["kueue.x-k8s.io/podset-required-topology"] = sched.topology_required
    elif sched.topology_preferred:
        out["kueue.x-k8s.io/podset-preferred-topology"] = sched.topology_preferred
    return out


def config_map_name(name: str) -> str:
    return f"{name}-config"


def labels(name: str, component: str, role: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "sgdm",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        **PART_OF,
        JOB_LABEL: name,
    }
    if role is not None:
        out[ROLE_LABEL] = role
    return out


def pod_security() -> dict[str, Any]:
    """Pod-level: the image's non-root user; volumes group-owned so the claim is writable."""
    return {
        "runAsNonRoot": True,
        "runAsUser": USER_ID,
        "runAsGroup": USER_ID,
        # Checkpoints are trusted input (DeepSpeed unpickles them): the claim is group-owned by this
        # uid/gid; only pods running as it write there.
        "fsGroup": USER_ID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def resources(
    cpu: str, memory: str, gpus: int, gpu_resource: str, extra: dict[str, int] | None = None
) -> dict[str, Any]:
    """Requests = limits (Guaranteed QoS: the scheduler never overcommits a training node)."""
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus > 0:
        amounts[gpu_resource] = gpus
    amounts.update(extra or {})
    return {"requests": dict(amounts), "limits": dict(amounts)}


def secret_env(secret: str, keys: tuple[str, ...] = MLFLOW_SECRET_KEYS) -> list[dict[str, Any]]:
    """Env vars read from a Secret; the values never appear in a manifest."""
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}} for key in keys
    ]


def shard_secret_env(cfg: Config) -> list[dict[str, Any]]:
    """``launch.shard_secret``'s keys as env vars (object-store credentials); absent keys skipped."""
    launch = cfg.launch
    if launch.shard_secret is None:
        return []
    return [
        {
            "name": key,
            "valueFrom": {
                "secretKeyRef": {"name": launch.shard_secret, "key": key, "optional": True}
            },
        }
        for key in launch.shard_secret_keys
    ]


def plain_env(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": key, "value": str(value)} for key, value in values.items()]


def volumes(cfg: Config, name: str, shm: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts): config, /dev/shm, home, /tmp, checkpoints, shards."""
    launch = cfg.launch
    vols: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(name)}},
        # NCCL and DataLoader workers exchange tensors through /dev/shm; Docker's 64 MB default breaks them.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}},
        {"name": "home", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {
            "name": "checkpoints",
            "persistentVolumeClaim": {"claimName": launch.checkpoints_claim},
        },
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "home", "mountPath": HOME_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "checkpoints", "mountPath": OUTPUTS_MOUNT},
    ]
    if launch.shard_url is None and launch.shards_claim is not None:
        vols.append(
            {
                "name": "shards",
                "persistentVolumeClaim": {"claimName": launch.shards_claim, "readOnly": True},
            }
        )
        mounts.append({"name": "shards", "mountPath": SHARDS_MOUNT, "readOnly": True})
    return vols, mounts


def gpu_tolerations(cfg: Config, gpus: int) -> list[dict[str, Any]]:
    """GPU node pools are usually tainted with the GPU resource name."""
    if gpus <= 0:
        return []
    return [{"key": cfg.launch.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]


def pod_spec(
    cfg: Config,
    name: str,
    containers: list[dict[str, Any]],
    vols: list[dict[str, Any]],
    gpus: int,
    restart_policy: str | None = None,
    grace_s: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": cfg.launch.service_account,
        # Jobs never talk to the API server: no token in the pod.
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "containers": containers,
        "volumes": vols,
    }
    if restart_policy is not None:
        spec["restartPolicy"] = restart_policy
    if grace_s is not None:
        spec["terminationGracePeriodSeconds"] = grace_s
    if cfg.launch.scheduling.priority_class:
        spec["priorityClassName"] = cfg.launch.scheduling.priority_class
    tolerations = gpu_tolerations(cfg, gpus)
    if tolerations:
        spec["tolerations"] = tolerations
    if cfg.launch.node_selector:
        spec["nodeSelector"] = dict(cfg.launch.node_selector)
    return spec
