"""Offline validation of Kubernetes objects, shared by the tests/test_k8s_*.py modules.

Core kinds: kubernetes-validate's strict schemas (unknown fields are errors, as with the API server's
``fieldValidation=Strict``). TrainJob / (Cluster)TrainingRuntime (Kubeflow Trainer v2.3.0), PyTorchJob,
RayJob: the operators' own CRD openAPIV3Schema (vendored in tests/schemas/ with the upstream tag and
commit, made strict the way the API server treats structural schemas), with their pod templates
checked against the core PodTemplateSpec schema.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSIONS = ("1.30.0", "1.37.0")  # oldest cluster we document, newest schemas shipped
CRD_SCHEMAS = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob-v1.yaml",
    ("ray.io/v1", "RayJob"): "rayjob-v1.yaml",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjob-v1alpha1.yaml",
    ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime"): "trainingruntime-v1alpha1.yaml",
    ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"): (
        "clustertrainingruntime-v1alpha1.yaml"
    ),
}
KUSTOMIZATIONS = [
    "k8s/base/platform",
    "k8s/base/tracking",
    "k8s/base/training",
    "k8s/base/trainjob",
    "k8s/base/tuning",
    "k8s/overlays/dev",
    "k8s/overlays/production",
    "k8s/overlays/training-4x8",
    "k8s/overlays/trainjob-4x8",
]
SHAPES = [(1, 1), (2, 4), (3, 0), (4, 8)]
KUBECTL = shutil.which("kubectl")


# ---------------------------------------------------------------------------------------- validator
def _strict(schema: Any) -> Any:
    """Unknown fields → errors: what the API server does for structural schemas under Strict."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _core_kind(validator: Any, kind: str, instance: Any, schema: Any) -> Iterator[Any]:
    assert kind == "PodTemplateSpec", kind
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
    wrapped["template"] = instance
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(wrapped, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in list(exc.path)[1:])
            yield jsonschema.ValidationError(
                f"pod template (k8s {version}) at {where}: {exc.message}"
            )


CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-sgdm-core-kind": _core_kind}
)


@cache
def crd_validator(api_version: str, kind: str) -> Any:
    schema = yaml.safe_load((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return CrdValidator(_strict(schema["openAPIV3Schema"]))


def validation_errors(obj: dict[str, Any]) -> list[str]:
    key = (obj.get("apiVersion"), obj.get("kind"))
    label = f"{key[1]} {obj.get('metadata', {}).get('name')}"
    if key in CRD_SCHEMAS:
        errors = [
            f"{label}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validator(*key).iter_errors(obj)
        ]
        name = obj["metadata"].get("name", "")
        if not (0 < len(name) <= 63 and name.replace("-", "").isalnum() and name.islower()):
            errors.append(f"{label}: metadata.name is not a DNS-1035 label")
        return errors
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{label}: no schema for {key} in Kubernetes {version}")
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{label} (k8s {version}): {'/'.join(map(str, exc.path))}: {exc.message}")
    return errors


def kustomize(path: str) -> list[dict[str, Any]]:
    assert KUBECTL, "kubectl is needed to render the kustomizations"
    result = subprocess.run(
        [KUBECTL, "kustomize", str(REPO / path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {path}: {result.stderr[-2000:]}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet"):
        yield "template", spec["template"]
    elif obj["kind"] == "PyTorchJob":
        for replica, rs in spec["pytorchReplicaSpecs"].items():
            yield replica, rs["template"]
    elif obj["kind"] in ("ClusterTrainingRuntime", "TrainingRuntime"):
        for job in spec["template"]["spec"]["replicatedJobs"]:
            yield job["name"], job["template"]["spec"]["template"]
    elif obj["kind"] == "RayJob":
        cluster = spec["rayClusterSpec"]
        yield "head", cluster["headGroupSpec"]["template"]
        for group in cluster["workerGroupSpecs"]:
            yield group["groupName"], group["template"]
        yield "submitter", spec["submitterPodTemplate"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def training_containers(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The training container of every pod template, as the pods will see it (env, command)."""
    if job["kind"] == "TrainJob":
        return [job["spec"]["trainer"]]
    return [
        rs["template"]["spec"]["containers"][0]
        for rs in job["spec"]["pytorchReplicaSpecs"].values()
    ]


def sgdm_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The CLI's entry point in this process (the console script is one subprocess test below)."""
    from sgdm_dist.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
