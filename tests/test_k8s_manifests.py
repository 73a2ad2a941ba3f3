"""Every Kubernetes manifest validates offline, and the rendered jobs are wired for rendezvous.

Core kinds: kubernetes-validate's strict schemas (unknown fields are errors, as with the API server's
``fieldValidation=Strict``). PyTorchJob / RayJob: the operators' own CRD openAPIV3Schema (vendored in
tests/schemas/, made strict the way the API server treats structural schemas), with their pod templates
checked against the core PodTemplateSpec schema.
"""

from __future__ import annotations

import copy
import itertools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sgdm_dist.config import ConfigError, load_config
from sgdm_dist.launch import (
    CONFIG_PATH,
    job_name,
    nproc_per_node,
    pod_process,
    render,
    render_pytorchjob,
    render_rayjob,
    world_size,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSIONS = ("1.30.0", "1.37.0")  # oldest cluster we document, newest schemas shipped
CRD_SCHEMAS = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob-v1.yaml",
    ("ray.io/v1", "RayJob"): "rayjob-v1.yaml",
}
KUSTOMIZATIONS = [
    "k8s/base/platform",
    "k8s/base/tracking",
    "k8s/base/training",
    "k8s/base/tuning",
    "k8s/overlays/dev",
    "k8s/overlays/production",
    "k8s/overlays/training-4x8",
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
    elif obj["kind"] == "RayJob":
        cluster = spec["rayClusterSpec"]
        yield "head", cluster["headGroupSpec"]["template"]
        for group in cluster["workerGroupSpecs"]:
            yield group["groupName"], group["template"]
        yield "submitter", spec["submitterPodTemplate"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# ---------------------------------------------------------------------------- the validator has teeth
def test_crd_validator_rejects_broken_jobs(tiny_config_path: Path) -> None:
    cfg = load_config(tiny_config_path, ["launch.nodes=2"])
    job = render_pytorchjob(cfg, "sgdm-tiny")
    assert validation_errors(job) == []

    typo = copy.deepcopy(job)
    typo["spec"]["pytorchReplicaSpec"] = typo["spec"].pop("pytorchReplicaSpecs")
    assert any("pytorchReplicaSpec" in e for e in validation_errors(typo))

    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "two"
    assert any("replicas" in e for e in validation_errors(wrong_type))

    bad_pod = copy.deepcopy(job)
    container = bad_pod["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][
        0
    ]
    container["gpus"] = 8
    assert any("'gpus' was unexpected" in e for e in validation_errors(bad_pod))

    ray = render_rayjob(cfg, "sgdm-tiny")
    assert validation_errors(ray) == []
    del ray["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    assert any("groupName" in e for e in validation_errors(ray))


def test_core_validator_rejects_unknown_fields() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}}
    assert validation_errors(cm) == []
    cm["datta"] = {}
    assert validation_errors(cm)


# ------------------------------------------------------------------------------ kustomize manifests
@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomization_renders_and_validates(path: str) -> None:
    objects = kustomize(path)
    assert objects, f"{path} rendered nothing"
    errors = [e for obj in objects for e in validation_errors(obj)]
    assert errors == [], "\n".join(errors)
    for obj in objects:
        for where, template in pod_templates(obj):
            label = f"{path}: {obj['kind']} {obj['metadata']['name']} {where}"
            assert template["spec"]["securityContext"]["runAsNonRoot"] is True, label
            assert template["spec"].get("automountServiceAccountToken") is False, label
            for c in template["spec"]["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, label
                assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], label
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][bound]), (label, bound)


def test_training_overlay_scales_consistently() -> None:
    (job,) = [o for o in kustomize("k8s/overlays/training-4x8") if o["kind"] == "PyTorchJob"]
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert (specs["Master"]["replicas"], specs["Worker"]["replicas"]) == (1, 3)
    for rs in specs.values():
        (c,) = rs["template"]["spec"]["containers"]
        env = env_of(c)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert env["NPROC_PER_NODE"] == job["spec"]["nprocPerNode"] == "8"
        assert env["ACCELERATE_CONFIG"].endswith("/configs/accelerate/zero3_multinode.yaml")
    assert pod_process(job, 3).env["WORLD_SIZE"] == "4"


def test_production_overlay_uses_external_database() -> None:
    objects = kustomize("k8s/overlays/production")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("StatefulSet", "sgdm-postgres") not in kinds
    (mlflow,) = [o for o in objects if o["kind"] == "Deployment"]
    env = env_of(mlflow["spec"]["template"]["spec"]["containers"][0])
    assert env["MLFLOW_BACKEND_STORE_URI"] == {
        "secretKeyRef": {"name": "sgdm-mlflow-db", "key": "uri"}
    }
    assert "POSTGRES_PASSWORD" not in env


def test_tracking_server_auth_and_artifacts_from_secrets() -> None:
    objects = kustomize("k8s/base/tracking")
    (mlflow,) = [o for o in objects if o["kind"] == "Deployment"]
    (c,) = mlflow["spec"]["template"]["spec"]["containers"]
    assert "--app-name=basic-auth" in c["args"]
    assert "--serve-artifacts" in c["args"]
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in c["args"]
    env = env_of(c)
    for secret_var in ("POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert "secretKeyRef" in env[secret_var], secret_var
    # No literal credential anywhere in the tracking manifests.
    text = yaml.safe_dump_all(objects)
    assert "password:" not in text.lower().replace("key: password", "")


def test_base_jobs_are_what_the_renderer_produces() -> None:
    default = REPO / "configs" / "default.yaml"
    cfg = load_config(default, ["launch.nodes=2", "launch.gpus_per_node=8"])
    on_disk = yaml.safe_load((REPO / "k8s/base/training/pytorchjob.yaml").read_text())
    assert on_disk == render_pytorchjob(cfg, job_name(cfg))
    cfg = load_config(default, ["launch.nodes=2", "launch.gpus_per_node=1"])
    on_disk = yaml.safe_load((REPO / "k8s/base/tuning/rayjob.yaml").read_text())
    assert on_disk == render_rayjob(cfg, job_name(cfg))


@pytest.mark.parametrize("component", ["training", "tuning"])
def test_base_in_pod_config_loads(component: str, tmp_path: Path) -> None:
    cm = yaml.safe_load((REPO / f"k8s/base/{component}/config.yaml").read_text())
    text = cm["data"]["config.yaml"]
    # In the image configs/ lives under /opt/sgdm; here, in the checkout.
    text = text.replace("/opt/sgdm/configs/default.yaml", str(REPO / "configs" / "default.yaml"))
    (tmp_path / "config.yaml").write_text(text)
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.data.shard_dir == "/mnt/shards"
    assert str(cfg.experiment.output_dir) == "/mnt/outputs/sgdm-things"
    assert cfg.experiment.tracking_uri is None
    assert cfg.model.clip_dim == load_config(REPO / "configs" / "default.yaml").model.clip_dim


# ------------------------------------------------------------------------ what sgdm launch renders
@pytest.mark.parametrize(("nodes", "gpus"), SHAPES)
def test_rendered_training_job_rendezvous(nodes: int, gpus: int, tiny_config_path: Path) -> None:
    cfg = load_config(
        tiny_config_path,
        [f"launch.nodes={nodes}", f"launch.gpus_per_node={gpus}", "launch.accelerate=zero2"],
    )
    config_map, job = render(cfg, "train")
    errors = validation_errors(config_map) + validation_errors(job)
    assert errors == [], "\n".join(errors)

    nproc = max(gpus, 1)
    assert nproc_per_node(cfg) == nproc and world_size(cfg) == nodes * nproc
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1
    assert specs.get("Worker", {"replicas": 0})["replicas"] == nodes - 1
    assert job["spec"]["nprocPerNode"] == str(nproc)
    assert job["spec"]["runPolicy"]["backoffLimit"] == cfg.launch.backoff_limit
    for rs in specs.values():
        assert rs["restartPolicy"] == "OnFailure"
        pod = rs["template"]["spec"]
        (c,) = pod["containers"]
        assert c["name"] == "pytorch"
        assert c["args"][:1] == [CONFIG_PATH] and "--resume" in c["args"]
        env = env_of(c)
        assert env["NPROC_PER_NODE"] == str(nproc)
        suffix = "_multinode" if nodes > 1 else ""
        assert env["ACCELERATE_CONFIG"] == f"/opt/sgdm/configs/accelerate/zero2{suffix}.yaml"
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert env[var]["secretKeyRef"]["name"] == cfg.launch.mlflow_secret
        limits = c["resources"]["limits"]
        assert limits.get("nvidia.com/gpu", 0) == gpus
        assert c["resources"]["requests"] == limits
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "sgdm-checkpoints"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]

    # What each pod sees once the operator has added its variables.
    total = 0
    for rank in range(nodes):
        proc = pod_process(job, rank)
        assert proc.env["RANK"] == proc.env["PET_NODE_RANK"] == str(rank)
        assert proc.env["WORLD_SIZE"] == proc.env["PET_NNODES"] == str(nodes)
        assert proc.env["MASTER_ADDR"] == f"{job['metadata']['name']}-master-0"
        assert proc.env["MASTER_PORT"] == "23456"
        total += int(proc.env["NPROC_PER_NODE"])
        assert proc.pod_name == (
            f"{job['metadata']['name']}-master-0"
            if rank == 0
            else f"{job['metadata']['name']}-worker-{rank - 1}"
        )
    assert total == world_size(cfg)
    with pytest.raises(ValueError, match="out of range"):
        pod_process(job, nodes)


@pytest.mark.parametrize(("nodes", "gpus"), SHAPES)
def test_rendered_tuning_job(nodes: int, gpus: int, tiny_config_path: Path) -> None:
    cfg = load_config(tiny_config_path, [f"launch.nodes={nodes}", f"launch.gpus_per_node={gpus}"])
    config_map, job = render(cfg, "tune")
    errors = validation_errors(config_map) + validation_errors(job)
    assert errors == [], "\n".join(errors)
    assert job["spec"]["entrypoint"] == f"sgdm tune {CONFIG_PATH} --resume"
    cluster = job["spec"]["rayClusterSpec"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == nodes
    (c,) = workers["template"]["spec"]["containers"]
    assert c["resources"]["limits"].get("nvidia.com/gpu", 0) == gpus
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    assert "RAY_ADDRESS" not in env_of(head)  # KubeRay sets it for the entrypoint
    assert cluster["rayVersion"] == cfg.launch.tune.ray_version


@pytest.mark.parametrize("backend", ["ddp", "fsdp", "zero2", "zero3"])
@pytest.mark.parametrize("nodes", [1, 2])
def test_accelerate_config_exists_in_the_repo(
    backend: str, nodes: int, tiny_config_path: Path
) -> None:
    """The image copies configs/ to /opt/sgdm/configs: what the pods name must exist there."""
    cfg = load_config(tiny_config_path, [f"launch.nodes={nodes}", f"launch.accelerate={backend}"])
    env = env_of(
        render_pytorchjob(cfg, "x")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
            "containers"
        ][0]
    )
    in_repo = REPO / env["ACCELERATE_CONFIG"].removeprefix("/opt/sgdm/")
    assert in_repo.is_file(), in_repo
    accel = yaml.safe_load(in_repo.read_text())
    if backend.startswith("zero") and nodes > 1:
        # DeepSpeed's default multi-node launcher needs ssh between pods.
        assert accel["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
    assert env["MAX_RESTARTS"] == "0"


def test_object_store_shards_replace_the_claim(tiny_config_path: Path) -> None:
    url = "pipe:aws s3 cp s3://bucket/shards/train/shard-{000000..000009}.tar -"
    cfg = load_config(tiny_config_path, [f"launch.shard_url={url}"])
    config_map, job = render(cfg, "train")
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "shards" not in {v["name"] for v in pod["volumes"]}
    in_pod = yaml.safe_load(config_map["data"]["config.yaml"])
    assert in_pod["data"]["shard_dir"] == url


def test_in_pod_config_keeps_the_experiment(tiny_config_path: Path, tmp_path: Path) -> None:
    cfg = load_config(tiny_config_path, ["train.lr=0.003", "launch.job_name=exp-7"])
    config_map, job = render(cfg, "train")
    assert job["metadata"]["name"] == "exp-7" and config_map["metadata"]["name"] == "exp-7-config"
    (tmp_path / "pod.yaml").write_text(config_map["data"]["config.yaml"])
    in_pod = load_config(tmp_path / "pod.yaml")
    assert in_pod.train.lr == 0.003
    assert in_pod.model == cfg.model
    assert str(in_pod.experiment.output_dir) == "/mnt/outputs/exp-7"
    assert in_pod.data.shard_dir == "/mnt/shards"


def test_pod_process_runs_from_a_checkout(tiny_config_path: Path) -> None:
    cfg = load_config(tiny_config_path, ["launch.nodes=2", "launch.gpus_per_node=0"])
    job = render_pytorchjob(cfg, job_name(cfg))
    proc = pod_process(
        job,
        1,
        master_addr="127.0.0.1",
        replace_paths={"/opt/sgdm": str(REPO), CONFIG_PATH: str(tiny_config_path)},
    )
    assert proc.command == [
        str(REPO / "launch/train.sh"),
        str(tiny_config_path),
        "--resume",
        "auto",
    ]
    assert proc.env["ACCELERATE_CONFIG"] == str(REPO / "configs/accelerate/ddp_multinode.yaml")
    assert proc.env["MASTER_ADDR"] == "127.0.0.1" and proc.env["RANK"] == "1"
    assert proc.secret_env["MLFLOW_TRACKING_URI"] == ("sgdm-mlflow-client", "MLFLOW_TRACKING_URI")


def test_job_names_are_dns_labels(tiny_config_path: Path) -> None:
    cfg = load_config(tiny_config_path, ["experiment.name=My EEG_Run 3 (subject 1..10)"])
    name = job_name(cfg)
    assert name == "my-eeg-run-3-subject-1-10"
    cfg = load_config(tiny_config_path, ["experiment.name='42'"])
    assert job_name(cfg) == "sgdm-42"
    with pytest.raises(ConfigError, match="launch.job_name"):
        load_config(tiny_config_path, ["launch.job_name=Bad_Name"])
    with pytest.raises(ConfigError, match=r"launch.resources.memory"):
        load_config(tiny_config_path, ["launch.resources.memory=lots"])


def test_cli_dry_run_prints_the_manifests(tiny_config_path: Path) -> None:
    exe = Path(sys.executable).with_name("sgdm")
    args = [
        "launch",
        "k8s",
        "--config",
        str(tiny_config_path),
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
    ]
    result = subprocess.run(
        [str(exe), *args, "--image", "registry.example/sgdm:9", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    config_map, job = yaml.safe_load_all(result.stdout)
    assert config_map["kind"] == "ConfigMap" and job["kind"] == "PyTorchJob"
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["image"] == "registry.example/sgdm:9"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1

    bad = subprocess.run(
        [str(exe), *args[:4], "--nodes", "0", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "launch.nodes" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(("nodes", "gpus"), [(2, 4), (3, 0)])
def test_pod_command_drives_train_sh(nodes: int, gpus: int, tiny_config_path: Path) -> None:
    """The pod's command, with the operator's env, gives accelerate the right world.

    launch/train.sh honours PYTHON; ``echo`` prints the accelerate command line instead of running
    it (the real 2-rank run on loopback lives with the training tests).
    """
    cfg = load_config(tiny_config_path, [f"launch.nodes={nodes}", f"launch.gpus_per_node={gpus}"])
    job = render_pytorchjob(cfg, job_name(cfg))
    for rank in range(nodes):
        proc = pod_process(
            job,
            rank,
            master_addr="127.0.0.1",
            replace_paths={"/opt/sgdm": str(REPO), CONFIG_PATH: str(tiny_config_path)},
        )
        env = {"PATH": "/usr/bin:/bin", **proc.env, "PYTHON": "echo"}
        result = subprocess.run(
            proc.command, env=env, capture_output=True, text=True, timeout=60, cwd=REPO
        )
        assert result.returncode == 0, result.stderr
        argv = result.stdout.split()
        flags = dict(itertools.pairwise(argv))
        assert flags["--num_machines"] == str(nodes)
        assert flags["--machine_rank"] == str(rank)
        assert flags["--num_processes"] == str(world_size(cfg))
        assert flags["--main_process_ip"] == "127.0.0.1"
        assert flags["--main_process_port"] == "23456"
        assert flags["--config_file"] == str(REPO / "configs/accelerate/ddp_multinode.yaml")
        assert argv[-4:] == ["train", str(tiny_config_path), "--resume", "auto"]
