"""What a training pod runs: its command and environment, as each operator would set them.

PyTorchJob (kubeflow/trainer v1.9.2 ``pkg/controller.v1/pytorch/envvar.go``, ``master.go``):
PYTHONUNBUFFERED=1, MASTER_ADDR = PET_MASTER_ADDR = ``<job>-master-0``, MASTER_PORT = PET_MASTER_PORT
(the container port named ``pytorchjob-port``), WORLD_SIZE = pods × nprocPerNode (processes, not
pods: 32 for 4×8), RANK = PET_NODE_RANK = node rank (Master 0, Worker i → i + 1), PET_NNODES = pods,
PET_NPROC_PER_NODE = nprocPerNode.

TrainJob (kubeflow/trainer v2.3.0 ``pkg/runtime/framework/plugins/torch/torch.go``): PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK (the Job completion index), PET_MASTER_ADDR =
``<job>-node-0-0.<job>``, PET_MASTER_PORT = 29500, and the Job controller's JOB_COMPLETION_INDEX;
no MASTER_ADDR, WORLD_SIZE or RANK.

:func:`pod_process` rebuilds that for any node rank so the exact pod command can be run and checked
off-cluster (e.g. on loopback).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sgdm_dist.launch import trainjob
from sgdm_dist.launch.training import CONTAINER, PORT_NAME


@dataclass(frozen=True)
class PodProcess:
    """``command`` + ``env`` of the ``pytorch`` container in the pod of one node rank.

    ``secret_env`` maps env names the pod reads from Secrets to ``(secret, key)``; their values are
    not in the manifest, so they are not in ``env``.
    """

    pod_name: str
    node_rank: int
    command: list[str]
    env: dict[str, str]
    secret_env: dict[str, tuple[str, str]] = field(default_factory=dict)


def _replicas(job: Mapping[str, Any]) -> tuple[int, int]:
    specs = job["spec"]["pytorchReplicaSpecs"]
    masters = int(specs.get("Master", {}).get("replicas", 1)) if "Master" in specs else 0
    workers = int(specs["Worker"].get("replicas", 1)) if "Worker" in specs else 0
    return masters, workers


def _container(template: Mapping[str, Any]) -> Mapping[str, Any]:
    for container in template["spec"]["containers"]:
        if container["name"] == CONTAINER:
            return container
    raise ValueError(f"pod template has no container named {CONTAINER!r}")


def _port(container: Mapping[str, Any]) -> int:
    for port in container.get("ports", []):
        if port.get("name") == PORT_NAME:
            return int(port["containerPort"])
    return 23456  # the operator's default when no named port is declared


def _rewrite(value: str, paths: Mapping[str, str]) -> str:
    for old, new in paths.items():
        if value.startswith(old):
            return new + value[len(old) :]
    return value


def _env_and_secrets(
    items: list[Mapping[str, Any]], paths: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    env: dict[str, str] = {}
    secrets: dict[str, tuple[str, str]] = {}
    for item in items:
        if "value" in item:
            env[item["name"]] = _rewrite(str(item["value"]), paths)
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            secrets[item["name"]] = (ref["name"], ref["key"])
    return env, secrets


def _pytorchjob_process(
    job: Mapping[str, Any], node_rank: int, master_addr: str | None, paths: Mapping[str, str]
) -> PodProcess:
    masters, workers = _replicas(job)
    n_pods = masters + workers
    if masters != 1:
        raise ValueError(f"expected exactly one Master replica, got {masters}")
    if not 0 <= node_rank < n_pods:
        raise ValueError(f"node_rank {node_rank} out of range for {n_pods} pods")
    name = job["metadata"]["name"]
    replica, index = ("Master", 0) if node_rank == 0 else ("Worker", node_rank - 1)
    spec = job["spec"]
    container = _container(spec["pytorchReplicaSpecs"][replica]["template"])
    env, secrets = _env_and_secrets(container.get("env", []), paths)
    addr = master_addr or f"{name}-master-0"
    port = str(_port(_container(spec["pytorchReplicaSpecs"]["Master"]["template"])))
    nproc = str(spec.get("nprocPerNode", "1"))
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "MASTER_PORT": port,
            "PET_MASTER_PORT": port,
            "MASTER_ADDR": addr,
            "PET_MASTER_ADDR": addr,
            # getNprocPerNodeInt: a non-integer nprocPerNode ("auto") counts as 1.
            "WORLD_SIZE": str(n_pods * (int(nproc) if nproc.isdigit() else 1)),
            "RANK": str(node_rank),
            "PET_NODE_RANK": str(node_rank),
            "PET_NNODES": str(n_pods),
        }
    )
    if "nprocPerNode" in spec:
        env["PET_NPROC_PER_NODE"] = nproc
    command = [
        _rewrite(part, paths)
        for part in [*container.get("command", []), *container.get("args", [])]
    ]
    return PodProcess(f"{name}-{replica.lower()}-{index}", node_rank, command, env, secrets)


def _trainjob_process(
    job: Mapping[str, Any], node_rank: int, master_addr: str | None, paths: Mapping[str, str]
) -> PodProcess:
    name = job["metadata"]["name"]
    trainer = job["spec"]["trainer"]
    n_nodes = int(trainer.get("numNodes", 1))
    if not 0 <= node_rank < n_nodes:
        raise ValueError(f"node_rank {node_rank} out of range for {n_nodes} nodes")
    env, secrets = _env_and_secrets(trainer.get("env", []), paths)
    reserved = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR"} & set(env)
    if reserved:  # the Trainer's admission webhook refuses these
        raise ValueError(f"TrainJob env must not set {sorted(reserved)}")
    host = f"{name}-{trainjob.REPLICATED_JOB}-0"
    env.update(
        {
            "JOB_COMPLETION_INDEX": str(node_rank),
            "PET_NNODES": str(n_nodes),
            "PET_NPROC_PER_NODE": str(trainer.get("numProcPerNode", "auto")),
            "PET_NODE_RANK": str(node_rank),
            "PET_MASTER_ADDR": master_addr or f"{host}-0.{name}",
            "PET_MASTER_PORT": str(trainjob.MASTER_PORT),
        }
    )
    command = [
        _rewrite(part, paths) for part in [*trainer.get("command", []), *trainer.get("args", [])]
    ]
    return PodProcess(f"{host}-{node_rank}", node_rank, command, env, secrets)


def pod_process(
    job: Mapping[str, Any],
    node_rank: int,
    *,
    master_addr: str | None = None,
    replace_paths: Mapping[str, str] | None = None,
) -> PodProcess:
    """Command and env of node ``node_rank`` of a rendered PyTorchJob or TrainJob.

    ``master_addr`` replaces the in-cluster master host name (use ``127.0.0.1`` on one machine);
    ``replace_paths`` rewrites path prefixes in the command and env values (``{"/opt/sgdm": repo,
    "/etc/sgdm/config.yaml": "configs/tiny.yaml"}``) so the same command runs from a checkout.
    """
    paths = replace_paths or {}
    if job["kind"] == trainjob.KIND:
        return _trainjob_process(job, node_rank, master_addr, paths)
    return _pytorchjob_process(job, node_rank, master_addr, paths)
