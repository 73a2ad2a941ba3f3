"""Multi-node training as a Kubeflow Trainer v2 ``TrainJob`` (trainer.kubeflow.org/v1alpha1).

The job names a torch ``ClusterTrainingRuntime`` (k8s/components/trainer-runtime, rendered by
:func:`render_cluster_runtime`): a JobSet with one replicated Job ``node`` whose pods run container
``node``. The runtime holds what is the same for every job (restart rules, gang scheduling, the
pod's security); the TrainJob holds the rest: image, command, node count, processes and resources
per node, env, and per-job pod settings as a ``runtimePatches`` entry (volumes with this job's
ConfigMap, mounts, service account, tolerations, topology hints).

The Trainer's torch plugin sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (the Job completion
index), PET_MASTER_ADDR (``<job>-node-0-0.<job>``) and PET_MASTER_PORT (29500) on container
``node`` (kubeflow/trainer pkg/runtime/framework/plugins/torch/torch.go); ``launch/train.sh``
reads those first.

Restarts: exit 1 or 2 fails the Job through its podFailurePolicy and the JobSet's first matching
rule fails the whole job; a pod disrupted by preemption or eviction restarts the JobSet without
counting against ``maxRestarts``; anything else (e.g. 137, killed) restarts it, counted.
"""

from __future__ import annotations

from typing import Any

from sgdm_dist.config import Config
from sgdm_dist.launch import pods
from sgdm_dist.launch.training import (
    TRAIN_SCRIPT,
    container_env,
    grace_seconds,
    nproc_per_node,
    pod_resources,
    shm_size,
)

API_GROUP = "trainer.kubeflow.org"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "TrainJob"
CONTAINER = "node"  # the torch plugin injects PET_* into the container of this name
REPLICATED_JOB = "node"
MASTER_PORT = 29500  # the Trainer's ContainerTrainerPort
RUNTIMES = {"none": "sgdm-torch", "coscheduling": "sgdm-torch-gang"}
# The coscheduling plugin only labels the pods with their PodGroup; they must also be scheduled by
# the scheduler-plugins scheduler (this is the name its Helm chart gives a second scheduler).
GANG_SCHEDULER = "scheduler-plugins-scheduler"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # a Kueue WorkloadPriorityClass
PATCH_MANAGER = "sgdm-dist.io/launch"
# The runtime's own budget of counted JobSet restarts (the per-job budget is train.sh's in-pod one).
RUNTIME_MAX_RESTARTS = 3
# Exit codes that end the job at once: 2 = bad config or data, 1 = crashed after train.sh's restarts.
FAIL_FAST_EXIT_CODES = [1, 2]


def runtime_name(cfg: Config) -> str:
    return cfg.launch.trainjob.runtime or RUNTIMES[cfg.launch.scheduling.gang]


def _pod_patch(cfg: Config, name: str) -> dict[str, Any]:
    """Per-job pod settings, as a runtimePatches pod template (only the fields it admits)."""
    launch = cfg.launch
    vols, mounts = pods.volumes(cfg, name, shm_size(cfg))
    spec: dict[str, Any] = {
        "serviceAccountName": launch.service_account,
        "securityContext": pods.pod_security(),
        "terminationGracePeriodSeconds": grace_seconds(cfg),
        "containers": [
            {
                "name": CONTAINER,
                "securityContext": pods.container_security(),
                "volumeMounts": mounts,
            }
        ],
        "volumes": vols,
    }
    tolerations = pods.gpu_tolerations(cfg, launch.gpus_per_node)
    if tolerations:
        spec["tolerations"] = tolerations
    if launch.node_selector:
        spec["nodeSelector"] = dict(launch.node_selector)
    metadata: dict[str, Any] = {"labels": pods.labels(name, "training", "node")}
    if pods.topology_annotations(cfg):
        metadata["annotations"] = pods.topology_annotations(cfg)
    return {"metadata": metadata, "spec": spec}


def render_trainjob(cfg: Config, name: str) -> dict[str, Any]:
    """The TrainJob manifest for ``cfg.launch``; it runs on :func:`runtime_name`'s runtime."""
    launch = cfg.launch
    labels = pods.job_labels(cfg, name, "training")
    if launch.scheduling.priority_class:
        labels[PRIORITY_LABEL] = launch.scheduling.priority_class
    patch = {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": REPLICATED_JOB,
                            "template": {"spec": {"template": _pod_patch(cfg, name)}},
                        }
                    ]
                }
            }
        },
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": launch.namespace, "labels": labels},
        "spec": {
            "runtimeRef": {
                "apiGroup": API_GROUP,
                "kind": launch.trainjob.runtime_kind,
                "name": runtime_name(cfg),
            },
            "trainer": {
                "image": launch.image,
                "command": [TRAIN_SCRIPT],
                "args": [pods.CONFIG_PATH, *launch.train_args],
                "numNodes": launch.nodes,
                "numProcPerNode": nproc_per_node(cfg),
                "resourcesPerNode": pod_resources(cfg),
                "env": container_env(cfg),
            },
            "runtimePatches": [patch],
        },
    }


def _failure_policy(max_restarts: int) -> dict[str, Any]:
    return {
        "maxRestarts": max_restarts,
        "rules": [
            {
                # Preempted or evicted (the pod carries DisruptionTarget): not the job's fault.
                "name": "disrupted",
                "action": "RestartJobSetAndIgnoreMaxRestarts",
                "onJobFailureReasons": ["PodFailurePolicy"],
                "onJobFailureMessagePatterns": ["DisruptionTarget"],
            },
            {
                # Exit 2 (bad config/data) or 1 (crash after the in-pod restarts): retrying is useless.
                "name": "failFast",
                "action": "FailJobSet",
                "onJobFailureReasons": ["PodFailurePolicy"],
            },
        ],
    }


def _runtime_pod(cfg: Config) -> dict[str, Any]:
    launch = cfg.launch
    return {
        "metadata": {"labels": {**pods.PART_OF}},
        "spec": {
            "restartPolicy": "Never",  # podFailurePolicy needs it; restarts are the JobSet's
            "automountServiceAccountToken": False,
            "securityContext": pods.pod_security(),
            "containers": [
                {
                    "name": CONTAINER,
                    "image": launch.image,
                    "imagePullPolicy": launch.image_pull_policy,
                    "command": [TRAIN_SCRIPT],
                    "workingDir": pods.APP_DIR,
                    "securityContext": pods.container_security(),
                }
            ],
        },
    }


def render_cluster_runtime(
    cfg: Config, gang: bool, kind: str = "ClusterTrainingRuntime"
) -> dict[str, Any]:
    """The torch runtime TrainJobs run on: ``sgdm-torch`` or, with a PodGroup, ``sgdm-torch-gang``."""
    name = RUNTIMES["coscheduling" if gang else "none"]
    job_spec = {
        "backoffLimit": 0,  # any pod failure ends this attempt; the JobSet rules decide what next
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": FAIL_FAST_EXIT_CODES,
                    },
                },
                {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": _runtime_pod(cfg),
    }
    spec: dict[str, Any] = {
        "mlPolicy": {"numNodes": 1, "torch": {}},
        "template": {
            "spec": {
                "failurePolicy": _failure_policy(RUNTIME_MAX_RESTARTS),
                "replicatedJobs": [
                    {
                        "name": REPLICATED_JOB,
                        "template": {
                            "metadata": {
                                "labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
                            },
                            "spec": job_spec,
                        },
                    }
                ],
            }
        },
    }
    if gang:
        spec["podGroupPolicy"] = {
            "coscheduling": {"scheduleTimeoutSeconds": cfg.launch.scheduling.schedule_timeout_s}
        }
        job_spec["template"]["spec"]["schedulerName"] = GANG_SCHEDULER
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"trainer.kubeflow.org/framework": "torch", **pods.PART_OF},
    }
    if kind == "TrainingRuntime":
        metadata["namespace"] = cfg.launch.namespace
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}
