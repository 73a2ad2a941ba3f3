"""Every Kubernetes manifest validates offline, and the rendered jobs are wired for rendezvous.

The validator (tests/k8s_schema.py): core kinds against kubernetes-validate's strict schemas, CRD
kinds (TrainJob and runtimes of Trainer v2.3.0, PyTorchJob, RayJob) against the vendored CRD schemas
of tests/schemas/, made strict as the API server treats structural schemas.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml
from k8s_schema import (
    KUSTOMIZATIONS,
    REPO,
    SHAPES,
    env_of,
    kustomize,
    pod_templates,
    training_containers,
    validation_errors,
)

from sgdm_dist.config import ConfigError, load_config
from sgdm_dist.launch import (
    CONFIG_PATH,
    job_name,
    nproc_per_node,
    pod_process,
    render,
    render_cluster_runtime,
    render_pytorchjob,
    render_rayjob,
    world_size,
)


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

    trainjob = render(cfg, "train", "trainjob")[1]
    assert validation_errors(trainjob) == []
    typo = copy.deepcopy(trainjob)
    typo["spec"]["trainer"]["numNode"] = typo["spec"]["trainer"].pop("numNodes")
    assert any("numNode" in e for e in validation_errors(typo))
    bad_patch = copy.deepcopy(trainjob)
    patch = bad_patch["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["priorityClassName"] = "x"
    assert any("priorityClassName" in e for e in validation_errors(bad_patch))  # not patchable
    runtime = render_cluster_runtime(cfg, gang=True)
    assert validation_errors(runtime) == []
    node = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    node["template"]["spec"]["containers"][0]["gpus"] = 8  # the pod template: core schema
    node["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] = "2"
    errors = validation_errors(runtime)
    assert any("'gpus' was unexpected" in e for e in errors) and any("values" in e for e in errors)

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
                # A runtime's pods get their resources from each TrainJob's resourcesPerNode.
                resources = c.get("resources") or obj["kind"].endswith("TrainingRuntime")
                for bound in ("requests", "limits") if isinstance(resources, dict) else ():
                    assert {"cpu", "memory"} <= set(resources[bound]), (label, bound)
        if obj["kind"] == "TrainJob":
            per_node = obj["spec"]["trainer"]["resourcesPerNode"]
            assert per_node["requests"] == per_node["limits"], path
            assert {"cpu", "memory"} <= set(per_node["limits"]), path


@pytest.mark.parametrize(
    ("overlay", "api"),
    [("k8s/overlays/training-4x8", "pytorchjob"), ("k8s/overlays/trainjob-4x8", "trainjob")],
)
def test_4x8_overlays_are_what_the_renderer_produces(overlay: str, api: str) -> None:
    """Replicas, GPUs, processes, restart budget and gang size change together in each overlay."""
    objects = kustomize(overlay)
    (job,) = [o for o in objects if o["kind"] in ("PyTorchJob", "TrainJob")]
    cfg = load_config(
        REPO / "configs" / "default.yaml",
        ["launch.nodes=4", "launch.gpus_per_node=8", "launch.accelerate=zero3"],
    )
    assert job == render(cfg, "train", api)[1]
    proc = pod_process(job, 3)
    assert proc.env["PET_NNODES"] == "4" and proc.env["MAX_RESTARTS"] == "8"
    assert proc.env["ACCELERATE_CONFIG"].endswith("/configs/accelerate/zero3_multinode.yaml")
    if api == "trainjob":  # the overlay ships the runtimes the job names
        runtimes = {o["metadata"]["name"] for o in objects if o["kind"] == "ClusterTrainingRuntime"}
        assert job["spec"]["runtimeRef"]["name"] in runtimes
        assert all("namespace" not in o["metadata"] for o in objects if o["kind"].startswith("Cl"))


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


def test_generated_manifests_are_what_the_renderer_produces() -> None:
    """k8s/base/*/… jobs and the runtime component are renderer output (k8s/generate.py)."""
    sys.path.insert(0, str(REPO / "k8s"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    for rel, text in generate.files().items():
        assert (REPO / "k8s" / rel).read_text() == text, f"k8s/{rel}: run python k8s/generate.py"


@pytest.mark.parametrize("component", ["training", "trainjob", "tuning"])
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
@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
@pytest.mark.parametrize(("nodes", "gpus"), SHAPES)
def test_rendered_training_job_rendezvous(
    nodes: int, gpus: int, api: str, tiny_config_path: Path
) -> None:
    cfg = load_config(
        tiny_config_path,
        [f"launch.nodes={nodes}", f"launch.gpus_per_node={gpus}", "launch.accelerate=zero2"],
    )
    config_map, job = render(cfg, "train", api)
    errors = validation_errors(config_map) + validation_errors(job)
    assert errors == [], "\n".join(errors)

    nproc = max(gpus, 1)
    assert nproc_per_node(cfg) == nproc and world_size(cfg) == nodes * nproc
    name = job["metadata"]["name"]
    if api == "pytorchjob":
        specs = job["spec"]["pytorchReplicaSpecs"]
        assert specs["Master"]["replicas"] == 1
        assert specs.get("Worker", {"replicas": 0})["replicas"] == nodes - 1
        assert job["spec"]["nprocPerNode"] == str(nproc)
        pod_specs = [rs["template"]["spec"] for rs in specs.values()]
    else:
        trainer = job["spec"]["trainer"]
        assert (trainer["numNodes"], trainer["numProcPerNode"]) == (nodes, nproc)
        (patch,) = job["spec"]["runtimePatches"]
        (node_job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        pod_specs = [node_job["template"]["spec"]["template"]["spec"]]
        limits = trainer["resourcesPerNode"]["limits"]
        assert limits.get("nvidia.com/gpu", 0) == gpus
        assert trainer["resourcesPerNode"]["requests"] == limits
    for c in training_containers(job):
        assert c["args"][:1] == [CONFIG_PATH] and "--resume" in c["args"]
        env = env_of(c)
        assert env["NPROC_PER_NODE"] == str(nproc)
        suffix = "_multinode" if nodes > 1 else ""
        assert env["ACCELERATE_CONFIG"] == f"/opt/sgdm/configs/accelerate/zero2{suffix}.yaml"
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert env[var]["secretKeyRef"]["name"] == cfg.launch.mlflow_secret
        if "resources" in c:
            assert c["resources"]["limits"].get("nvidia.com/gpu", 0) == gpus
            assert c["resources"]["requests"] == c["resources"]["limits"]
    for pod in pod_specs:
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{8 * nproc}Gi"}
        assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "sgdm-checkpoints"
        assert pod["securityContext"]["fsGroup"] == 10001  # the checkpoint claim's group
        (c,) = pod["containers"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]

    # What each pod sees once the operator has added its variables.
    master = f"{name}-master-0" if api == "pytorchjob" else f"{name}-node-0-0.{name}"
    for rank in range(nodes):
        proc = pod_process(job, rank)
        assert proc.env["PET_NODE_RANK"] == str(rank)
        assert proc.env["PET_NNODES"] == str(nodes)
        assert proc.env["PET_MASTER_ADDR"] == master
        assert proc.env["PET_NPROC_PER_NODE"] == str(nproc)
        if api == "pytorchjob":
            # The operator's WORLD_SIZE counts processes (pods x nprocPerNode), RANK is the node rank.
            assert proc.env["WORLD_SIZE"] == str(world_size(cfg))
            assert proc.env["RANK"] == str(rank) and proc.env["MASTER_PORT"] == "23456"
            pod_name = f"{name}-master-0" if rank == 0 else f"{name}-worker-{rank - 1}"
        else:
            assert "WORLD_SIZE" not in proc.env and "MASTER_ADDR" not in proc.env
            assert proc.env["PET_MASTER_PORT"] == "29500"
            pod_name = f"{name}-node-0-{rank}"
        assert proc.pod_name == pod_name
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
    assert env["MAX_RESTARTS"] == str(2 * nodes)  # launch.restarts_per_node x nodes


def test_object_store_shards_replace_the_claim(tiny_config_path: Path) -> None:
    url = "pipe:aws s3 cp s3://bucket/shards/train/shard-{000000..000009}.tar -"
    cfg = load_config(tiny_config_path, [f"launch.shard_url={url}"])
    config_map, job = render(cfg, "train", "pytorchjob")
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
