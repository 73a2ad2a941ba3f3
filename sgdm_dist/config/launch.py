"""Launch section: where and how jobs run on Kubernetes (``sgdm launch k8s``).

One pod per node. Training is a Kubeflow ``PyTorchJob`` (Master + Worker replicas), tuning a KubeRay
``RayJob``; both read the experiment config from a ConfigMap the launcher creates beside the job.
Credentials never live here: pods take them from the Secrets named below.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sgdm_dist.config.base import Section

# RFC 1035 label: PyTorchJob/RayJob names become Service and pod host names.
DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes quantity such as "8", "500m", "64Gi".
QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([numkMGTPE]|[KMGTPE]i|[eE][+-]?[0-9]+)?$"


class PodResources(Section):
    """Requests = limits for one pod (one node's share); GPUs are set by ``gpus_per_node``."""

    cpu: str = Field("8", pattern=QUANTITY, description="CPU cores per pod.")
    memory: str = Field("64Gi", pattern=QUANTITY, description="RAM per pod.")
    shm: str = Field(
        "16Gi", pattern=QUANTITY, description="/dev/shm size (memory emptyDir, counts as RAM)."
    )


class TuneClusterConfig(Section):
    """The Ray cluster a RayJob brings up for ``sgdm tune``: one head + ``launch.nodes`` workers."""

    ray_version: str = Field("2.60.0", description="Ray version in the image (KubeRay checks it).")
    head: PodResources = PodResources(cpu="2", memory="8Gi", shm="2Gi")
    shutdown_after_finish: bool = Field(True, description="Delete the Ray cluster when done.")


class LaunchConfig(Section):
    namespace: str = Field("sgdm", pattern=DNS_LABEL, max_length=63)
    image: str = Field(
        "ghcr.io/sgdm-dist/sgdm:0.1.0",
        min_length=1,
        description="Container image for training/tuning pods.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    job_name: str | None = Field(
        None,
        pattern=DNS_LABEL,
        max_length=40,
        description="Job name; None → derived from experiment.name. Pods are <name>-master-0 …",
    )
    nodes: int = Field(1, gt=0, description="Pods (= nodes) in the job.")
    gpus_per_node: int = Field(
        1, ge=0, description="GPUs per pod = processes per pod; 0 → one CPU process per pod."
    )
    accelerate: Literal["ddp", "fsdp", "zero2", "zero3"] = Field(
        "ddp",
        description="configs/accelerate/<name>.yaml (<name>_multinode.yaml when nodes > 1) in the image.",
    )
    master_port: int = Field(23456, gt=0, lt=65536, description="Rendezvous port on the master.")
    train_args: list[str] = Field(
        default_factory=lambda: ["--resume", "auto"],
        description="Arguments after the config path: restarted pods resume from the last checkpoint.",
    )
    restart_policy: Literal["OnFailure", "ExitCode", "Never"] = "OnFailure"
    backoff_limit: int = Field(
        6, ge=0, description="Pod restarts (preemptions included) before the job fails."
    )
    max_restarts: int = Field(
        0,
        ge=0,
        description="Local worker-group restarts inside a pod (launch/train.sh MAX_RESTARTS); "
        "pod-level restarts are backoff_limit's.",
    )
    ttl_seconds_after_finished: int | None = Field(7 * 24 * 3600, ge=0)
    service_account: str = Field("sgdm-runner", pattern=DNS_LABEL)
    shards_claim: str | None = Field(
        "sgdm-shards", description="PVC holding the shards, mounted read-only; None → shard_url."
    )
    shard_url: str | None = Field(
        None, description="Object-store shard URL (fsspec/pipe:) used instead of shards_claim."
    )
    checkpoints_claim: str = Field(
        "sgdm-checkpoints", description="ReadWriteMany PVC: every DeepSpeed rank writes its shard."
    )
    mlflow_secret: str = Field(
        "sgdm-mlflow-client",
        description="Secret with MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD.",
    )
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU.")
    resources: PodResources = PodResources()
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra plain env vars for every pod (no secrets)."
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tune: TuneClusterConfig = TuneClusterConfig()
