"""Launch section: where and how jobs run on Kubernetes (``sgdm launch k8s``).

One pod per node. Training is a Kubeflow ``PyTorchJob`` (Master + Worker replicas), tuning a KubeRay
``RayJob``; both read the experiment config from a ConfigMap the launcher creates beside the job.
Credentials never live here: pods take them from the Secrets named below.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from sgdm_dist.config.base import Section

# RFC 1035 label: PyTorchJob/RayJob names become Service and pod host names.
DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes quantity such as "8", "500m", "64Gi".
# What a credential in a URL or a pipe: command looks like: user:password@, a signed/tokened query,
# or an inline secret env assignment. Such a shard_url would be stored in a ConfigMap in plain text.
CREDENTIAL = re.compile(
    r"://[^/@\s]+:[^/@\s]*@"
    r"|[?&](x-amz-signature|x-goog-signature|sig|signature|token|access_token|password|secret)="
    r"|\b[A-Z0-9_]*(SECRET|PASSWORD|TOKEN|ACCESS_KEY)[A-Z0-9_]*=",
    re.IGNORECASE,
)
QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([numkMGTPE]|[KMGTPE]i|[eE][+-]?[0-9]+)?$"


class PodResources(Section):
    """Requests = limits for one pod (one node's share); GPUs are set by ``gpus_per_node``.

    ``cpu`` / ``memory`` / ``shm`` fix the pod's amounts; left at None they scale with its GPUs
    (``*_per_gpu`` × GPUs, a GPU-less pod counting as one): 8 data-loader ranks need CPUs and RAM.
    """

    cpu: str | None = Field(
        None, pattern=QUANTITY, description="CPU cores per pod; None → per GPU."
    )
    memory: str | None = Field(None, pattern=QUANTITY, description="RAM per pod; None → per GPU.")
    shm: str | None = Field(
        None, pattern=QUANTITY, description="/dev/shm size (memory emptyDir, counts as RAM)."
    )
    # Fits 8-GPU nodes of 96 vCPU / 680 GB (the smallest common A100/H100 8-GPU shapes).
    cpu_per_gpu: int = Field(10, gt=0, description="CPU cores per GPU.")
    memory_per_gpu_gib: int = Field(64, gt=0, description="RAM per GPU, GiB (includes /dev/shm).")
    shm_per_gpu_gib: int = Field(8, gt=0, description="/dev/shm per GPU, GiB.")

    def for_gpus(self, gpus: int) -> tuple[str, str, str]:
        """``(cpu, memory, shm)`` quantities of a pod with ``gpus`` GPUs."""
        n = max(gpus, 1)
        return (
            self.cpu or str(self.cpu_per_gpu * n),
            self.memory or f"{self.memory_per_gpu_gib * n}Gi",
            self.shm or f"{self.shm_per_gpu_gib * n}Gi",
        )


class SchedulingConfig(Section):
    """Queues, priority, gang scheduling and topology: a 4-node job starts on 4 nodes or not at all."""

    queue: str | None = Field(
        None, pattern=DNS_LABEL, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name)."
    )
    priority_class: str | None = Field(
        None, description="PriorityClass of every pod (Kueue orders and preempts by it)."
    )
    gang: Literal["none", "coscheduling"] = Field(
        "coscheduling",
        description="All pods scheduled together: PodGroup via the scheduler-plugins coscheduling "
        "plugin (PyTorchJob schedulingPolicy / the sgdm-torch-gang runtime); none → no PodGroup "
        "(Kueue alone admits the job's pods all at once).",
    )
    schedule_timeout_s: int = Field(600, gt=0, description="PodGroup scheduling timeout.")
    topology_preferred: str | None = Field(
        None,
        description="Node label of a topology level the pods should share "
        "(Kueue TAS kueue.x-k8s.io/podset-preferred-topology, e.g. a rack or block label).",
    )
    topology_required: str | None = Field(
        None, description="Same, but required (kueue.x-k8s.io/podset-required-topology)."
    )


class NcclConfig(Section):
    """NCCL / torch.distributed settings passed to the pods as env vars."""

    socket_ifname: str | None = Field(
        None, description="NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME, e.g. eth0 or ^lo,docker."
    )
    ib: bool = Field(True, description="InfiniBand/RoCE; False → NCCL_IB_DISABLE=1.")
    ib_hca: str | None = Field(None, description="NCCL_IB_HCA, e.g. mlx5 or =mlx5_0:1,mlx5_1:1.")
    ib_timeout: int | None = Field(None, ge=1, le=31, description="NCCL_IB_TIMEOUT exponent.")
    rdma_resource: str | None = Field(
        None, description="Extended resource of an RDMA device per pod, e.g. rdma/ib (1 per pod)."
    )
    heartbeat_timeout_s: int = Field(
        600, gt=0, description="TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC: a hung collective ends the job."
    )
    debug: Literal["VERSION", "WARN", "INFO"] = Field("WARN", description="NCCL_DEBUG.")

    def env(self) -> dict[str, str]:
        out = {
            "NCCL_DEBUG": self.debug,
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
            "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": str(self.heartbeat_timeout_s),
        }
        if self.socket_ifname:
            out["NCCL_SOCKET_IFNAME"] = out["GLOO_SOCKET_IFNAME"] = self.socket_ifname
        if not self.ib:
            out["NCCL_IB_DISABLE"] = "1"
        if self.ib_hca:
            out["NCCL_IB_HCA"] = self.ib_hca
        if self.ib_timeout is not None:
            out["NCCL_IB_TIMEOUT"] = str(self.ib_timeout)
        return out


class TrainJobConfig(Section):
    """Kubeflow Trainer v2: which (Cluster)TrainingRuntime a TrainJob runs on."""

    runtime: str | None = Field(
        None,
        pattern=DNS_LABEL,
        description="Runtime name; None → sgdm-torch-gang (scheduling.gang=coscheduling) or "
        "sgdm-torch (k8s/components/trainer-runtime).",
    )
    runtime_kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"


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
    api: Literal["auto", "trainjob", "pytorchjob"] = Field(
        "auto",
        description="Training job kind: Trainer v2 TrainJob, training-operator PyTorchJob, or "
        "auto (whichever CRD the cluster serves, TrainJob first; --dry-run renders a TrainJob).",
    )
    trainjob: TrainJobConfig = TrainJobConfig()
    restart_policy: Literal["ExitCode", "OnFailure", "Never"] = Field(
        "ExitCode",
        description="PyTorchJob: ExitCode fails the job at once on exit codes < 128 (2 = bad "
        "config/data) and recreates pods that ended by a signal (143 = preempted, 137 = killed).",
    )
    restarts_per_node: int = Field(
        2,
        ge=0,
        description="Crash-restart budget per node: each pod's launch/train.sh may relaunch the "
        "job's workers restarts_per_node × nodes times (every restart is one job-wide attempt).",
    )
    max_restarts: int | None = Field(
        None,
        ge=0,
        description="Explicit in-pod restart budget (launch/train.sh MAX_RESTARTS); None → "
        "restarts_per_node × nodes.",
    )
    backoff_limit: int | None = Field(
        None,
        ge=0,
        description="PyTorchJob runPolicy.backoffLimit / TrainJob runtime's JobSet maxRestarts; "
        "None → the in-pod budget.",
    )
    preemption_grace_s: int = Field(
        300,
        gt=0,
        description="Seconds a SIGTERMed pod has to checkpoint (TORCH_ELASTIC_SHUTDOWN_TIMEOUT; the "
        "pod's terminationGracePeriodSeconds is 30 s more).",
    )
    scheduling: SchedulingConfig = SchedulingConfig()
    nccl: NcclConfig = NcclConfig()
    register_alias: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="After training succeeds, node 0's pod registers the model (`sgdm register "
        "CONFIG --alias A`: the run that uploaded the weights) and points this alias at it.",
    )
    ttl_seconds_after_finished: int | None = Field(7 * 24 * 3600, ge=0)
    service_account: str = Field("sgdm-runner", pattern=DNS_LABEL)
    shards_claim: str | None = Field(
        "sgdm-shards", description="PVC holding the shards, mounted read-only; None → shard_url."
    )
    shard_url: str | None = Field(
        None,
        description="Object-store shard URL (fsspec/pipe:) used instead of shards_claim; no "
        "credentials in it (it lands in a ConfigMap): put them in shard_secret.",
    )
    shard_secret: str | None = Field(
        None,
        pattern=DNS_LABEL,
        description="Secret holding shard_url's credentials; its shard_secret_keys become env vars "
        "of every training pod (missing keys are skipped).",
    )
    shard_secret_keys: list[str] = Field(
        default_factory=lambda: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"],
        description="Keys of shard_secret, each passed as the env var of the same name.",
    )

    @field_validator("shard_url")
    @classmethod
    def _no_credentials(cls, url: str | None) -> str | None:
        if url is not None and CREDENTIAL.search(url):
            raise ValueError(
                "looks like it holds a credential, which would be stored in the job's ConfigMap in "
                "plain text; put credentials in a Secret and name it in launch.shard_secret "
                "(its keys become env vars, e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        return url

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
