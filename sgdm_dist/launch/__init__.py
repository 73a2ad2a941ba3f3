"""Kubernetes launch: render one job's manifests from the config, submit and follow it.

``render(cfg, "train")`` → ``[ConfigMap, PyTorchJob]``; ``render(cfg, "tune")`` → ``[ConfigMap,
RayJob]``; :class:`Cluster` talks to the API server; :func:`pod_process` shows what one training pod
runs (command + the operator's rendezvous env) so it can be exercised off-cluster.
"""

from sgdm_dist.launch.cluster import Cluster, JobStatus, LaunchError
from sgdm_dist.launch.pods import CONFIG_PATH, job_name
from sgdm_dist.launch.render import TARGETS, pod_config, render, to_yaml
from sgdm_dist.launch.rendezvous import PodProcess, pod_process
from sgdm_dist.launch.training import nproc_per_node, render_pytorchjob, world_size
from sgdm_dist.launch.tuning import render_rayjob

__all__ = [
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
    "render_pytorchjob",
    "render_rayjob",
    "to_yaml",
    "world_size",
]
