"""What a training pod runs: its command and environment, as the Training Operator would set them.

The operator adds rendezvous variables to the manifest's env when it creates each pod
(training-operator ``pkg/controller.v1/pytorch/envvar.go``): MASTER_ADDR = ``<job>-master-0``,
MASTER_PORT (the container port named ``pytorchjob-port``), WORLD_SIZE = number of pods, RANK = node
rank (Master 0, Worker i → i + 1), and torchrun's PET_* mirrors. :func:`pod_process` rebuilds that
for any node rank so the exact pod command can be run and checked off-cluster (e.g. on loopback).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


def pod_process(
    job: Mapping[str, Any],
    node_rank: int,
    *,
    master_addr: str | None = None,
    replace_paths: Mapping[str, str] | None = None,
) -> PodProcess:
    """Command and env of node ``node_rank`` of a rendered PyTorchJob.

    ``master_addr`` replaces the in-cluster ``<job>-master-0`` (use ``127.0.0.1`` on one machine);
    ``replace_paths`` rewrites path prefixes in the command and env values (``{"/opt/sgdm": repo,
    "/etc/sgdm/config.yaml": "configs/tiny.yaml"}``) so the same command runs from a checkout.
    """
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
    paths = replace_paths or {}

    env: dict[str, str] = {}
    secrets: dict[str, tuple[str, str]] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _rewrite(str(item["value"]), paths)
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            secrets[item["name"]] = (ref["name"], ref["key"])
    addr = master_addr or f"{name}-master-0"
    port = str(_port(_container(spec["pytorchReplicaSpecs"]["Master"]["template"])))
    env.update(
        {
            "PYTHONUNBUFFERED": "0",
            "MASTER_ADDR": addr,
            "MASTER_PORT": port,
            "WORLD_SIZE": str(n_pods),
            "RANK": str(node_rank),
            "PET_MASTER_ADDR": addr,
            "PET_MASTER_PORT": port,
            "PET_NNODES": str(n_pods),
            "PET_NODE_RANK": str(node_rank),
        }
    )
    if "nprocPerNode" in spec:
        env["PET_NPROC_PER_NODE"] = str(spec["nprocPerNode"])
    command = [
        _rewrite(part, paths)
        for part in [*container.get("command", []), *container.get("args", [])]
    ]
    return PodProcess(
        pod_name=f"{name}-{replica.lower()}-{index}",
        node_rank=node_rank,
        command=command,
        env=env,
        secret_env=secrets,
    )
