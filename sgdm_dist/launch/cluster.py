"""Submit, watch and remove sgdm jobs with the official ``kubernetes`` Python client.

Objects are created with server-side strict field validation, so a field the installed operator
does not know is an error, not silently dropped. Every object of a job carries the label
``sgdm-dist/job=<name>``; status, logs and delete find them through it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from sgdm_dist.launch import pods

# kind → (group, version, plural) of the custom resources sgdm creates.
CUSTOM_KINDS: dict[str, tuple[str, str, str]] = {
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
    "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs"),
    "RayJob": ("ray.io", "v1", "rayjobs"),
}
# Training APIs in the order `--api auto` prefers them: Trainer v2 first, the operator it replaced next.
TRAINING_APIS = {"trainjob": "TrainJob", "pytorchjob": "PyTorchJob"}
# Whose logs `sgdm launch logs` shows when no role is given: rank 0, or the Ray job driver's output.
DEFAULT_LOG_ROLE = {"TrainJob": "node", "PyTorchJob": "master", "RayJob": "submitter"}
CRD_HELP = {
    "TrainJob": "Kubeflow Trainer v2",
    "PyTorchJob": "the Training Operator",
    "RayJob": "KubeRay",
}


class LaunchError(RuntimeError):
    """The cluster refused or could not do what was asked; the message says what and where."""


@dataclass(frozen=True)
class JobStatus:
    kind: str
    name: str
    namespace: str
    state: str
    detail: dict[str, Any] = field(default_factory=dict)
    pods: dict[str, str] = field(default_factory=dict)  # pod name → phase


def _api_error(action: str, exc: ApiException) -> LaunchError:
    message = exc.reason or ""
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(exc.body or "{}").get("message", message)
    return LaunchError(f"{action}: HTTP {exc.status}: {message}")


class Cluster:
    """A Kubernetes API endpoint as seen through one ``ApiClient``."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    @classmethod
    def connect(cls, kubeconfig: Path | None = None, context: str | None = None) -> Cluster:
        """From a kubeconfig (the client's usual lookup when None), else the in-cluster account."""
        try:
            api = config.new_client_from_config(
                config_file=str(kubeconfig) if kubeconfig else None,
                context=context,
                persist_config=False,
            )
        except config.ConfigException as exc:
            if kubeconfig is not None:
                raise LaunchError(f"kubeconfig {kubeconfig}: {exc}") from None
            try:
                config.load_incluster_config()
            except config.ConfigException:
                raise LaunchError(
                    f"no Kubernetes cluster configured ({exc}); pass --kubeconfig"
                ) from None
            api = client.ApiClient()
        return cls(api)

    # -- create ---------------------------------------------------------------------------------
    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind, meta = obj["kind"], obj["metadata"]
        where = f"{kind} {meta['namespace']}/{meta['name']}"
        try:
            if kind == "ConfigMap":
                created = self.core.create_namespaced_config_map(
                    meta["namespace"], obj, field_validation="Strict"
                )
                return self.api.sanitize_for_serialization(created)
            group, version, plural = CUSTOM_KINDS[kind]
            return self.custom.create_namespaced_custom_object(
                group, version, meta["namespace"], plural, obj, field_validation="Strict"
            )
        except KeyError:
            raise LaunchError(f"cannot create {where}: unsupported kind") from None
        except ApiException as exc:
            if exc.status == 409:
                raise LaunchError(
                    f"{where} already exists: `sgdm launch delete {meta['name']}` or choose --name"
                ) from None
            if exc.status == 404 and kind in CUSTOM_KINDS:
                raise LaunchError(
                    f"cannot create {where}: the {kind} CRD is not installed "
                    f"(see docs/deploy.md step 0: {CRD_HELP[kind]})"
                ) from None
            raise _api_error(f"cannot create {where}", exc) from None

    def submit(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create the objects in order; on failure remove what this call created, then raise."""
        created: list[dict[str, Any]] = []
        try:
            for obj in objects:
                created.append(self.create(obj))
        except LaunchError:
            for obj in reversed(created):
                self._delete_one(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
            raise
        return created

    # -- discovery ------------------------------------------------------------------------------
    def serves(self, kind: str) -> bool:
        """Whether the API server serves ``kind``'s resource (its CRD is installed)."""
        group, version, plural = CUSTOM_KINDS[kind]
        try:
            listed = self.custom.get_api_resources(group, version)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise _api_error(f"cannot discover {group}/{version}", exc) from None
        return any(r.name == plural for r in (listed.resources if listed else []) or [])

    def training_api(self) -> str:
        """``trainjob`` or ``pytorchjob``: the first the cluster serves, TrainJob preferred."""
        for api, kind in TRAINING_APIS.items():
            if self.serves(kind):
                return api
        raise LaunchError(
            "neither the TrainJob CRD (trainer.kubeflow.org/v1alpha1, Kubeflow Trainer v2) nor the "
            "PyTorchJob CRD (kubeflow.org/v1, Training Operator) is installed on this cluster "
            "(see docs/deploy.md step 0), or --kubeconfig/--context point at another cluster"
        )

    # -- read -----------------------------------------------------------------------------------
    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        """The TrainJob, PyTorchJob or RayJob called ``name``."""
        for kind, (group, version, plural) in CUSTOM_KINDS.items():
            try:
                return self.custom.get_namespaced_custom_object(
                    group, version, namespace, plural, name
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise _api_error(f"cannot read {kind} {namespace}/{name}", exc) from None
        raise LaunchError(
            f"no sgdm job {namespace}/{name} (no TrainJob, PyTorchJob or RayJob of that name)"
        )

    def job_pods(self, namespace: str, name: str) -> list[client.V1Pod]:
        try:
            listed = self.core.list_namespaced_pod(
                namespace, label_selector=f"{pods.JOB_LABEL}={name}"
            )
        except ApiException as exc:
            raise _api_error(f"cannot list pods of {namespace}/{name}", exc) from None
        return sorted(listed.items, key=lambda p: p.metadata.name)

    def status(self, namespace: str, name: str) -> JobStatus:
        job = self.get_job(namespace, name)
        st = job.get("status") or {}
        if job["kind"] in ("PyTorchJob", "TrainJob"):
            conditions = [c for c in st.get("conditions", []) if c.get("status") == "True"]
            state = conditions[-1]["type"] if conditions else "Pending"
            key = "replicaStatuses" if job["kind"] == "PyTorchJob" else "jobsStatus"
            detail = {key: st.get(key, {})}
        else:
            state = st.get("jobStatus") or st.get("jobDeploymentStatus") or "Pending"
            detail = {
                key: st[key]
                for key in ("jobDeploymentStatus", "rayClusterName", "message", "dashboardURL")
                if key in st
            }
        phases = {
            p.metadata.name: (p.status.phase if p.status else "Unknown")
            for p in self.job_pods(namespace, name)
        }
        return JobStatus(job["kind"], name, namespace, state, detail, phases)

    def logs(
        self,
        namespace: str,
        name: str,
        role: str | None = None,
        index: int = 0,
        tail: int | None = None,
    ) -> tuple[str, str]:
        """``(pod name, log text)`` of one pod of the job: rank 0 / the Ray driver by default."""
        kind = self.get_job(namespace, name)["kind"]
        role = role or DEFAULT_LOG_ROLE[kind]
        matching = [
            p
            for p in self.job_pods(namespace, name)
            if (p.metadata.labels or {}).get(pods.ROLE_LABEL) == role
        ]
        if not matching:
            raise LaunchError(f"{kind} {namespace}/{name}: no pod with role {role!r} yet")
        if not 0 <= index < len(matching):
            raise LaunchError(
                f"{kind} {namespace}/{name}: role {role!r} has {len(matching)} pod(s), no index {index}"
            )
        pod = matching[index].metadata.name
        try:
            text = self.core.read_namespaced_pod_log(pod, namespace, tail_lines=tail)
        except ApiException as exc:
            raise _api_error(f"cannot read logs of pod {namespace}/{pod}", exc) from None
        return pod, text

    # -- delete ---------------------------------------------------------------------------------
    def _delete_one(self, kind: str, namespace: str, name: str) -> bool:
        body = client.V1DeleteOptions(propagation_policy="Foreground")
        try:
            if kind == "ConfigMap":
                self.core.delete_namespaced_config_map(name, namespace, body=body)
            else:
                group, version, plural = CUSTOM_KINDS[kind]
                self.custom.delete_namespaced_custom_object(
                    group, version, namespace, plural, name, body=body
                )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise _api_error(f"cannot delete {kind} {namespace}/{name}", exc) from None
        return True

    def delete(self, namespace: str, name: str) -> list[str]:
        """Delete the job (its pods go with it) and its ConfigMap; returns what was deleted."""
        kind = self.get_job(namespace, name)["kind"]
        deleted = []
        for k, n in ((kind, name), ("ConfigMap", pods.config_map_name(name))):
            if self._delete_one(k, namespace, n):
                deleted.append(f"{k} {namespace}/{n}")
        return deleted
