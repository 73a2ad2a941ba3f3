"""Kubernetes launch: render one job's manifests from the config, submit and follow it.

``render(cfg, "train", api)`` → ``[ConfigMap, TrainJob | PyTorchJob]``; ``render(cfg, "tune")`` →
``[ConfigMap, RayJob]``; ``render_cluster_runtime`` → the torch ClusterTrainingRuntime TrainJobs run on; :class:`Cluster` talks to the API server; :func:`pod_process` shows what one training pod
runs (command + the operator's rendezvous env) so it can be exercised off-cluster.
"""

from sgdm_dist.launch.cluster import Cluster, JobStatus, LaunchError
from sgdm_dist.launch.pods import CONFIG_PATH, job_name
from sgdm_dist.launch.render import APIS, TARGETS, pod_config, render, to_yaml, training_api
from sgdm_dist.launch.rendezvous import PodProcess, pod_process
from sgdm_dist.launch.training import (
    nproc_per_node,
    render_pytorchjob,
    restart_budget,
    world_size,
)
from sgdm_dist.launch.trainjob import render_cluster_runtime, render_trainjob
from sgdm_dist.launch.tuning import render_rayjob

__all__ = [
    "APIS",
    "CONFIG_PATH",
    "TARGETS",
    "Cluster",
    "JobStatus",
    "LaunchError",
    "PodProcess",
    "job_name",
    "nproc_per_node",
    "pod_config",
    "pod_process",
    "render",
    "render_cluster_runtime",
    "render_pytorchjob",
    "render_rayjob",
    "render_trainjob",
    "restart_budget",
    "to_yaml",
    "training_api",
    "world_size",
]
