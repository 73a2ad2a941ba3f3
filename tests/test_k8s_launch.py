"""``sgdm launch`` against a stub Kubernetes API server: the real CLI and the real ``kubernetes``
client, pointed by a kubeconfig at a loopback HTTP server that records every request.

Only the API server is a stand-in (none can run here); the test asserts the exact objects the client
sends, and that status / logs / delete issue the calls a real server would need.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_stub import TOKEN, StubState, running_stub

from sgdm_dist.config import load_config
from sgdm_dist.launch import render


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[tuple[StubState, Path]]:
    with running_stub(tmp_path) as server:
        yield server


def sgdm(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("sgdm")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_launch_k8s_creates_configmap_then_pytorchjob(
    stub: tuple[StubState, Path], tiny_config_path: Path
) -> None:
    state, kubeconfig = stub
    result = sgdm(
        "launch", "k8s", "--config", str(tiny_config_path), "--nodes", "3", "--gpus-per-node", "2",
        "--image", "registry.example/sgdm:7", "--name", "eeg-run", "--kubeconfig", str(kubeconfig),
        "--api", "pytorchjob",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "created PyTorchJob sgdm/eeg-run" in result.stdout

    posts = [r for r in state.requests if r.method == "POST"]
    assert [r.path for r in posts] == [
        "/api/v1/namespaces/sgdm/configmaps",
        "/apis/kubeflow.org/v1/namespaces/sgdm/pytorchjobs",
    ]
    assert all(r.auth == f"Bearer {TOKEN}" for r in posts)
    assert all(r.query.get("fieldValidation") == ["Strict"] for r in posts)

    # Exactly the objects the renderer makes for the same settings.
    cfg = load_config(
        tiny_config_path,
        [
            "launch.nodes=3",
            "launch.gpus_per_node=2",
            "launch.image=registry.example/sgdm:7",
            "launch.job_name=eeg-run",
            "launch.api=pytorchjob",
        ],
        keep_relative=True,
    )
    assert [r.body for r in posts] == render(cfg, "train")
    assert not [r for r in state.requests if r.method == "GET"]  # --api given: no discovery

    config_map, job = (r.body for r in posts)
    assert (config_map["kind"], config_map["apiVersion"]) == ("ConfigMap", "v1")
    assert config_map["metadata"]["name"] == "eeg-run-config"
    assert (job["kind"], job["apiVersion"]) == ("PyTorchJob", "kubeflow.org/v1")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert (specs["Master"]["replicas"], specs["Worker"]["replicas"]) == (1, 2)
    for rs in specs.values():
        (c,) = rs["template"]["spec"]["containers"]
        assert c["image"] == "registry.example/sgdm:7"
        env = {e["name"]: e for e in c["env"]}
        assert env["NPROC_PER_NODE"]["value"] == "2"
        assert (
            env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
            == "sgdm-mlflow-client"
        )
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_launch_k8s_tune_creates_rayjob(
    stub: tuple[StubState, Path], tiny_config_path: Path
) -> None:
    state, kubeconfig = stub
    result = sgdm(
        "launch", "k8s", "--tune", "--config", str(tiny_config_path), "--nodes", "2",
        "--gpus-per-node", "1", "--namespace", "lab", "--kubeconfig", str(kubeconfig),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    posts = [r for r in state.requests if r.method == "POST"]
    assert [r.path for r in posts] == [
        "/api/v1/namespaces/lab/configmaps",
        "/apis/ray.io/v1/namespaces/lab/rayjobs",
    ]
    job = posts[1].body
    assert (job["kind"], job["apiVersion"]) == ("RayJob", "ray.io/v1")
    assert job["metadata"]["name"] == "sgdm-tiny"
    assert job["spec"]["entrypoint"] == "sgdm tune /etc/sgdm/config.yaml --resume"
    assert job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2


def test_missing_crd_is_reported_and_rolled_back(
    stub: tuple[StubState, Path], tiny_config_path: Path
) -> None:
    state, kubeconfig = stub
    state.missing_crds.add("pytorchjobs")
    result = sgdm(
        "launch", "k8s", "--config", str(tiny_config_path), "--kubeconfig", str(kubeconfig),
        "--api", "pytorchjob",
    )  # fmt: skip
    assert result.returncode == 1
    assert "PyTorchJob CRD is not installed" in result.stderr
    assert "Traceback" not in result.stderr
    # The ConfigMap created before the failure is removed again.
    deletes = [r.path for r in state.requests if r.method == "DELETE"]
    assert deletes == ["/api/v1/namespaces/sgdm/configmaps/sgdm-tiny-config"]
    assert state.objects == {}


def test_second_launch_with_same_name_is_refused(
    stub: tuple[StubState, Path], tiny_config_path: Path
) -> None:
    state, kubeconfig = stub
    args = ("launch", "k8s", "--config", str(tiny_config_path), "--kubeconfig", str(kubeconfig))
    args += ("--api", "pytorchjob")
    assert sgdm(*args).returncode == 0
    again = sgdm(*args)
    assert again.returncode == 1
    assert "ConfigMap sgdm/sgdm-tiny-config already exists" in again.stderr
    assert "sgdm launch delete sgdm-tiny" in again.stderr
    # The refused attempt created nothing and removed nothing of the first job.
    job_posts = [r for r in state.requests if r.method == "POST" and r.path.endswith("pytorchjobs")]
    assert len(job_posts) == 1
    assert not [r for r in state.requests if r.method == "DELETE"]
    assert len(state.objects) == 2


def _pod(name: str, role: str, phase: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "sgdm",
            "labels": {"sgdm-dist/job": "run", "sgdm-dist/role": role},
        },
        "status": {"phase": phase},
    }


def test_status_logs_delete(stub: tuple[StubState, Path], tiny_config_path: Path) -> None:
    state, kubeconfig = stub
    kc = ("--kubeconfig", str(kubeconfig))
    assert (
        sgdm(
            "launch",
            "k8s",
            "--config",
            str(tiny_config_path),
            "--nodes",
            "2",
            "--name",
            "run",
            "--api",
            "pytorchjob",
            *kc,
        ).returncode
        == 0
    )
    job_path = "/apis/kubeflow.org/v1/namespaces/sgdm/pytorchjobs/run"
    state.objects[job_path]["status"] = {
        "conditions": [
            {"type": "Created", "status": "True"},
            {"type": "Running", "status": "True"},
        ],
        "replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 1}},
    }
    state.pods = [
        _pod("run-master-0", "master", "Running"),
        _pod("run-worker-0", "worker", "Running"),
    ]
    state.logs = {"run-master-0": "step 10 loss 0.5\n", "run-worker-0": "worker says hi\n"}

    status = sgdm("launch", "status", "run", *kc)
    assert status.returncode == 0, status.stderr
    assert "PyTorchJob sgdm/run: Running" in status.stdout
    assert "pod run-worker-0: Running" in status.stdout

    logs = sgdm("launch", "logs", "run", *kc)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "step 10 loss 0.5\n"
    worker_logs = sgdm("launch", "logs", "run", "--role", "worker", "--tail", "5", *kc)
    assert worker_logs.stdout == "worker says hi\n"
    log_reqs = [r for r in state.requests if r.path.endswith("/log")]
    assert log_reqs[-1].path == "/api/v1/namespaces/sgdm/pods/run-worker-0/log"
    assert log_reqs[-1].query["tailLines"] == ["5"]

    deleted = sgdm("launch", "delete", "run", *kc)
    assert deleted.returncode == 0, deleted.stderr
    deletes = [r for r in state.requests if r.method == "DELETE"]
    assert [r.path for r in deletes] == [job_path, "/api/v1/namespaces/sgdm/configmaps/run-config"]
    assert deletes[0].body["propagationPolicy"] == "Foreground"
    assert state.objects == {}

    gone = sgdm("launch", "status", "run", *kc)
    assert gone.returncode == 1
    assert "no sgdm job sgdm/run" in gone.stderr


def test_unknown_target_and_missing_job_are_usage_errors() -> None:
    bad = sgdm("launch", "kube")
    assert bad.returncode == 2 and "unknown target 'kube'" in bad.stderr
    no_job = sgdm("launch", "status")
    assert no_job.returncode == 2 and "needs a JOB name" in no_job.stderr


def test_rayjob_status_and_driver_logs(
    stub: tuple[StubState, Path], tiny_config_path: Path
) -> None:
    state, kubeconfig = stub
    kc = ("--kubeconfig", str(kubeconfig))
    launched = sgdm(
        "launch", "k8s", "--tune", "--config", str(tiny_config_path), "--name", "sweep", *kc
    )
    assert launched.returncode == 0, launched.stderr
    state.objects["/apis/ray.io/v1/namespaces/sgdm/rayjobs/sweep"]["status"] = {
        "jobStatus": "RUNNING",
        "jobDeploymentStatus": "Running",
        "rayClusterName": "sweep-raycluster-abcde",
    }
    submitter = _pod("sweep-xyz12", "submitter", "Running")
    submitter["metadata"]["labels"]["sgdm-dist/job"] = "sweep"
    state.pods = [submitter]
    state.logs = {"sweep-xyz12": "Trial 3 finished: val/top1=0.41\n"}

    status = sgdm("launch", "status", "sweep", *kc)
    assert status.returncode == 0, status.stderr
    assert "RayJob sgdm/sweep: RUNNING" in status.stdout
    assert "rayClusterName: sweep-raycluster-abcde" in status.stdout
    # The TrainJob and PyTorchJob lookups came first and missed.
    gets = [r.path for r in state.requests if r.method == "GET" and "/apis/" in r.path]
    assert gets[:3] == [
        "/apis/trainer.kubeflow.org/v1alpha1/namespaces/sgdm/trainjobs/sweep",
        "/apis/kubeflow.org/v1/namespaces/sgdm/pytorchjobs/sweep",
        "/apis/ray.io/v1/namespaces/sgdm/rayjobs/sweep",
    ]
    logs = sgdm("launch", "logs", "sweep", *kc)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "Trial 3 finished: val/top1=0.41\n"


@pytest.mark.parametrize(
    ("missing", "kind", "path"),
    [
        (set(), "TrainJob", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/sgdm/trainjobs"),
        ({"trainjobs"}, "PyTorchJob", "/apis/kubeflow.org/v1/namespaces/sgdm/pytorchjobs"),
    ],
)
def test_api_is_discovered(
    missing: set[str], kind: str, path: str, stub: tuple[StubState, Path], tiny_config_path: Path
) -> None:
    """Without --api the CLI asks the API server's discovery which training CRD it serves."""
    state, kubeconfig = stub
    state.missing_crds |= missing
    result = sgdm(
        "launch", "k8s", "--config", str(tiny_config_path), "--nodes", "2", "--gpus-per-node", "8",
        "--name", "disc", "--kubeconfig", str(kubeconfig),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"created {kind} sgdm/disc" in result.stdout
    gets = [r.path for r in state.requests if r.method == "GET"]
    assert gets[0] == "/apis/trainer.kubeflow.org/v1alpha1"  # Trainer v2 asked first
    posts = [r for r in state.requests if r.method == "POST"]
    assert [r.path for r in posts] == ["/api/v1/namespaces/sgdm/configmaps", path]
    job = posts[1].body
    assert job["kind"] == kind
    if kind != "TrainJob":
        return  # status and delete of a PyTorchJob: test_status_logs_delete
    assert job["spec"]["trainer"]["numNodes"] == 2
    assert job["spec"]["runtimeRef"]["name"] == "sgdm-torch-gang"
    assert job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]  # per-job pod settings

    status = sgdm("launch", "status", "disc", "--kubeconfig", str(kubeconfig))
    assert status.returncode == 0, status.stderr
    assert f"{kind} sgdm/disc: Pending" in status.stdout
    deleted = sgdm("launch", "delete", "disc", "--kubeconfig", str(kubeconfig))
    assert deleted.returncode == 0 and state.objects == {}


def test_neither_training_crd_is_a_clear_error(
    stub: tuple[StubState, Path], tiny_config_path: Path
) -> None:
    state, kubeconfig = stub
    state.missing_crds |= {"trainjobs", "pytorchjobs"}
    result = sgdm(
        "launch", "k8s", "--config", str(tiny_config_path), "--kubeconfig", str(kubeconfig)
    )
    assert result.returncode == 1
    assert "neither the TrainJob CRD" in result.stderr and "PyTorchJob CRD" in result.stderr
    assert "Traceback" not in result.stderr
    assert not [r for r in state.requests if r.method == "POST"]  # nothing created
