"""What a cluster does with a training job: restarts, exit codes, scheduling, NCCL, credentials.

Asserted on the rendered objects (validated against the vendored CRDs) and, for the exit codes, on
what launch/train.sh and its launcher really return: a config error in a pod is exit 2, which both
APIs turn into a failed job without a restart.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_schema import kustomize, sgdm_in_process, training_containers, validation_errors

from sgdm_dist.config import ConfigError, load_config
from sgdm_dist.launch import CONFIG_PATH, pod_process, render, render_cluster_runtime, world_size
from sgdm_dist.launch.node import failure_code, normalise

REPO = Path(__file__).resolve().parents[1]
TRAIN_SH = REPO / "launch" / "train.sh"


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def pod_specs(job: dict[str, Any]) -> list[dict[str, Any]]:
    if job["kind"] == "TrainJob":
        (patch,) = job["spec"]["runtimePatches"]
        return [
            j["template"]["spec"]["template"]
            for j in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        ]
    return [rs["template"] for rs in job["spec"]["pytorchReplicaSpecs"].values()]


# ------------------------------------------------------------------------------------- restarts
def test_pytorchjob_fails_fast_on_exit_codes_below_128(tiny_config_path: Path) -> None:
    cfg = load_config(tiny_config_path, ["launch.nodes=4", "launch.gpus_per_node=8"])
    job = render(cfg, "train", "pytorchjob")[1]
    assert validation_errors(job) == []
    # ExitCode: the operator fails the job on 1-127 (2 = bad input) and recreates pods that a
    # signal ended (training-operator IsRetryableExitCode: code >= 128).
    assert {rs["restartPolicy"] for rs in job["spec"]["pytorchReplicaSpecs"].values()} == {
        "ExitCode"
    }
    run = job["spec"]["runPolicy"]
    assert run["cleanPodPolicy"] == "Running"  # no pod left waiting at the rendezvous
    assert run["backoffLimit"] == 8
    for c in training_containers(job):
        assert env_of(c)["MAX_RESTARTS"] == "8"  # 2 per node: the per-attempt crash budget
        assert env_of(c)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "300"
    for template in pod_specs(job):
        assert template["spec"]["terminationGracePeriodSeconds"] == 330


def test_trainjob_runtime_fails_fast_and_restarts_on_preemption(tiny_config_path: Path) -> None:
    cfg = load_config(tiny_config_path, ["launch.nodes=4", "launch.gpus_per_node=8"])
    job = render(cfg, "train", "trainjob")[1]
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "sgdm-torch-gang",
    }
    assert env_of(job["spec"]["trainer"])["MAX_RESTARTS"] == "8"
    for gang in (False, True):
        runtime = render_cluster_runtime(cfg, gang)
        assert validation_errors(runtime) == []
        jobset = runtime["spec"]["template"]["spec"]
        (node,) = jobset["replicatedJobs"]
        spec = node["template"]["spec"]
        assert spec["backoffLimit"] == 0 and spec["template"]["spec"]["restartPolicy"] == "Never"
        exit_rule, disrupted_rule = spec["podFailurePolicy"]["rules"]
        assert exit_rule["action"] == "FailJob"
        assert exit_rule["onExitCodes"]["containerName"] == "node"
        assert exit_rule["onExitCodes"]["operator"] == "In"
        assert 2 in exit_rule["onExitCodes"]["values"]
        assert 143 not in exit_rule["onExitCodes"]["values"]
        assert disrupted_rule["onPodConditions"] == [{"type": "DisruptionTarget"}]
        # The JobSet's first matching rule: disruption restarts uncounted, exit 1/2 fails the job.
        first, second = jobset["failurePolicy"]["rules"]
        assert first["action"] == "RestartJobSetAndIgnoreMaxRestarts"
        assert first["onJobFailureMessagePatterns"] == ["DisruptionTarget"]
        assert (second["action"], second["onJobFailureReasons"]) == (
            "FailJobSet",
            ["PodFailurePolicy"],
        )
        assert ("podGroupPolicy" in runtime["spec"]) is gang


def test_restart_budget_scales_with_nodes(tiny_config_path: Path) -> None:
    for nodes, overrides, budget in ((1, [], 2), (4, [], 8), (4, ["launch.max_restarts=1"], 1)):
        cfg = load_config(tiny_config_path, [f"launch.nodes={nodes}", *overrides])
        for api in ("trainjob", "pytorchjob"):
            for c in training_containers(render(cfg, "train", api)[1]):
                assert env_of(c)["MAX_RESTARTS"] == str(budget), (nodes, overrides, api)


def test_exit_code_mapping() -> None:
    assert normalise(-15) == 143 and normalise(-9) == 137 and normalise(2) == 2
    assert failure_code(1, [1, 2, -15]) == 2  # bad input anywhere: retrying is useless
    assert failure_code(-15, [-15, -15]) == 143
    assert failure_code(-9, [-9, 1]) == 137
    assert failure_code(1, [1]) == 1


def run_train_sh(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "MASTER_"))}
    return subprocess.run(
        [str(TRAIN_SH), *args],
        env={**base, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_train_sh_config_error_exits_2_before_any_worker(
    tiny_config_path: Path, tmp_path: Path
) -> None:
    """The pod's exit code for a bad config is 2, so both APIs fail the job without a restart."""
    env = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": "2", "MAX_RESTARTS": "3"}
    bad = run_train_sh([str(tiny_config_path), "train.lr=-1", "--resume", "auto"], env, REPO)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "train.lr" in bad.stderr and "Traceback" not in bad.stderr
    assert "restart" not in bad.stderr  # MAX_RESTARTS never retries exit 2
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"extends": str(tiny_config_path), "train": {"lrr": 1}}))
    assert run_train_sh([str(typo)], env, REPO).returncode == 2
    elastic = run_train_sh([str(tiny_config_path)], {**env, "PET_NNODES": "1:4"}, REPO)
    assert elastic.returncode == 2 and "elastic node range" in elastic.stderr


def test_train_sh_finds_the_venv_python_without_python_on_path(
    tiny_config_path: Path, tmp_path: Path
) -> None:
    """No `python` on PATH (only coreutils): train.sh still finds this venv's interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    env.update(PATH="/usr/bin:/bin", VIRTUAL_ENV=str(Path(sys.executable).parents[1]))
    result = subprocess.run(
        [str(TRAIN_SH), str(tiny_config_path), "train.lr=-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    # It got as far as the config check, which needs sgdm_dist imported.
    assert result.returncode == 2 and "train.lr" in result.stderr, result.stderr[-2000:]


# ------------------------------------------------------------------- scheduling, NCCL, resources
@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_queue_priority_gang_topology_nccl(api: str, tiny_config_path: Path) -> None:
    cfg = load_config(
        tiny_config_path,
        [
            "launch.nodes=4",
            "launch.gpus_per_node=8",
            "launch.scheduling.queue=gpu-team",
            "launch.scheduling.priority_class=training-high",
            "launch.scheduling.topology_preferred=cloud.example/block",
            "launch.nccl.socket_ifname=eth0",
            "launch.nccl.ib=false",
            "launch.nccl.rdma_resource=rdma/ib",
            "launch.resources.cpu_per_gpu=12",
        ],
    )
    job = render(cfg, "train", api)[1]
    assert validation_errors(job) == []
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu-team"
    for template in pod_specs(job):
        annotations = template["metadata"]["annotations"]
        assert annotations["kueue.x-k8s.io/podset-preferred-topology"] == "cloud.example/block"
    for c in training_containers(job):
        env = env_of(c)
        assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth0"
        assert env["NCCL_IB_DISABLE"] == "1"
        resources = c.get("resources") or c["resourcesPerNode"]
        assert resources["limits"]["cpu"] == "96" and resources["limits"]["memory"] == "512Gi"
        assert resources["limits"]["rdma/ib"] == 1
    if api == "pytorchjob":
        sched = job["spec"]["runPolicy"]["schedulingPolicy"]
        assert sched["minAvailable"] == 4 and sched["priorityClass"] == "training-high"
        for template in pod_specs(job):
            assert template["spec"]["priorityClassName"] == "training-high"
    else:
        assert labels["kueue.x-k8s.io/priority-class"] == "training-high"
        assert job["spec"]["runtimeRef"]["name"] == "sgdm-torch-gang"
    solo = load_config(tiny_config_path, ["launch.scheduling.gang=none"])
    assert render(solo, "train", "trainjob")[1]["spec"]["runtimeRef"]["name"] == "sgdm-torch"
    assert "schedulingPolicy" not in render(solo, "train", "pytorchjob")[1]["spec"]["runPolicy"]


# ---------------------------------------------------------------------------------- credentials
@pytest.mark.parametrize(
    "url",
    [
        "https://user:pa55@store.example/shards/train/shard-{000000..000009}.tar",
        "https://store.example/shard-000000.tar?X-Amz-Signature=abc123",
        "pipe:AWS_SECRET_ACCESS_KEY=abc aws s3 cp s3://bucket/shard-000000.tar -",
    ],
)
def test_credentials_in_shard_url_are_refused(url: str, tiny_config_path: Path) -> None:
    with pytest.raises(ConfigError, match="launch.shard_url.*shard_secret"):
        load_config(tiny_config_path, [f"launch.shard_url={url}"])


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_shard_credentials_come_from_a_secret(api: str, tiny_config_path: Path) -> None:
    url = "pipe:aws s3 cp s3://bucket/shards/train/shard-{000000..000009}.tar -"
    cfg = load_config(tiny_config_path, [f"launch.shard_url={url}", "launch.shard_secret=s3-keys"])
    config_map, job = render(cfg, "train", api)
    assert validation_errors(job) == []
    assert yaml.safe_load(config_map["data"]["config.yaml"])["data"]["shard_dir"] == url
    for c in training_containers(job):
        env = env_of(c)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            assert env[key] == {"secretKeyRef": {"name": "s3-keys", "key": key, "optional": True}}


def test_egress_is_limited() -> None:
    (egress,) = [
        o for o in kustomize("k8s/base/platform") if o["metadata"]["name"] == "sgdm-egress"
    ]
    assert egress["spec"]["podSelector"] == {} and egress["spec"]["policyTypes"] == ["Egress"]
    rules = egress["spec"]["egress"]
    external = [r for r in rules if "ipBlock" in r["to"][0]]
    assert external and all(
        "169.254.169.254/32" in r["to"][0]["ipBlock"]["except"] for r in external
    )
    assert all("ports" in r for r in external)  # no blanket egress to the internet


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_register_step_runs_on_node_0_after_success(api: str, tiny_config_path: Path) -> None:
    """launch.register_alias → node 0's train.sh runs `sgdm register CONFIG --alias A` when done.

    PYTHON=echo prints each Python command instead of running it (the register command itself is
    tested with its own tests); nodes other than 0 never register.
    """
    cfg = load_config(tiny_config_path, ["launch.nodes=2", "launch.register_alias=champion"])
    job = render(cfg, "train", api)[1]
    assert validation_errors(job) == []
    outputs = []
    for rank in (0, 1):
        pod = pod_process(
            job,
            rank,
            master_addr="127.0.0.1",
            replace_paths={"/opt/sgdm": str(REPO), CONFIG_PATH: str(tiny_config_path)},
        )
        assert pod.env["REGISTER_ALIAS"] == "champion"
        result = subprocess.run(
            pod.command,
            env={"PATH": "/usr/bin:/bin", **pod.env, "PYTHON": "echo"},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout.splitlines())
    register = f"-m sgdm_dist.cli register {tiny_config_path} --alias champion"
    assert outputs[0][0].startswith("-m sgdm_dist.launch.node") and outputs[0][1] == register
    assert len(outputs[1]) == 1 and "register" not in outputs[1][0]


def test_done_when_command_renders_valid_trainer_v2_objects(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 19's acceptance command, in process: every object validates against the vendored CRDs."""
    small = str(REPO / "configs" / "small.yaml")
    args = ["launch", "k8s", "--api", "trainjob", "--config", small]
    code, out, err = sgdm_in_process(
        [*args, "--nodes", "4", "--gpus-per-node", "8", "--dry-run"], capsys
    )
    assert code == 0, err
    objects = list(yaml.safe_load_all(out))
    assert [o["kind"] for o in objects] == ["ConfigMap", "TrainJob"]
    assert [e for o in objects for e in validation_errors(o)] == []
    trainer = objects[1]["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)


# ------------------------------------------------------------------ the CLI and the pod command
def test_cli_dry_run_prints_the_manifests(
    tiny_config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exe = Path(sys.executable).with_name("sgdm")
    args = ["launch", "k8s", "--config", str(tiny_config_path), "--nodes", "2"]
    args += ["--gpus-per-node", "4", "--image", "registry.example/sgdm:9", "--dry-run"]
    result = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outputs = {None: result.stdout}
    for api in ("trainjob", "pytorchjob"):
        code, outputs[api], err = sgdm_in_process([*args, "--api", api], capsys)
        assert code == 0, err
    for api, kind in (("trainjob", "TrainJob"), ("pytorchjob", "PyTorchJob"), (None, "TrainJob")):
        config_map, job = yaml.safe_load_all(outputs[api])
        assert config_map["kind"] == "ConfigMap" and job["kind"] == kind
        (c, *_) = training_containers(job)
        assert c["image"] == "registry.example/sgdm:9"
        assert validation_errors(job) == []
    # No cluster to ask: the current API.
    assert (
        list(yaml.safe_load_all(outputs[None]))[1]
        == list(yaml.safe_load_all(outputs["trainjob"]))[1]
    )

    for bad_args, where in (
        (["--nodes", "0"], "launch.nodes"),
        (["--api", "mpijob"], "--api 'mpijob'"),
    ):
        code, _, err = sgdm_in_process([*args[:4], *bad_args, "--dry-run"], capsys)
        assert code == 2, err
        assert where in err and "Traceback" not in err


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
@pytest.mark.parametrize(("nodes", "gpus"), [(2, 4), (3, 0)])
def test_pod_command_drives_train_sh(
    nodes: int, gpus: int, api: str, tiny_config_path: Path
) -> None:
    """The pod's command, with each operator's env, gives accelerate the right world.

    launch/train.sh honours PYTHON; ``echo`` prints the accelerate command line instead of running
    it (the real 2-node runs on loopback live in tests/test_k8s_entrypoint.py).
    """
    cfg = load_config(tiny_config_path, [f"launch.nodes={nodes}", f"launch.gpus_per_node={gpus}"])
    job = render(cfg, "train", api)[1]
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
        assert argv[:2] == ["-m", "sgdm_dist.launch.node"]
        flags = dict(itertools.pairwise(argv))
        assert flags["--num_machines"] == str(nodes)
        assert flags["--machine_rank"] == str(rank)
        assert flags["--num_processes"] == str(world_size(cfg))
        assert flags["--main_process_ip"] == "127.0.0.1"
        assert flags["--main_process_port"] == ("23456" if api == "pytorchjob" else "29500")
        assert flags["--config_file"] == str(REPO / "configs/accelerate/ddp_multinode.yaml")
        assert argv[-4:] == ["train", str(tiny_config_path), "--resume", "auto"]
