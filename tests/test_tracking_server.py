"""The tracking server of k8s/base/tracking starts as deployed and its basic auth works.

The exact command and environment of the `sgdm-mlflow` Deployment are read from the manifest and
run here, with Kubernetes' ``$(VAR)`` expansion and the Secrets docs/deploy.md step 3 creates.
Only what cannot run here is replaced: PostgreSQL (both the tracking and the auth database) by
SQLite files, ``--host=0.0.0.0`` by 127.0.0.1 and the port by a free one; uvicorn's worker health
check gets more time, because this machine may be busy.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import free_port, kill_group

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "k8s" / "base" / "tracking" / "mlflow.yaml"
ADMIN = ("admin", "a" * 48)  # docs/deploy.md: username=admin, password=$(openssl rand -hex 24)
JOBS = ("sgdm-jobs", "b" * 48)


def container() -> dict[str, Any]:
    for doc in yaml.safe_load_all(MANIFEST.read_text()):
        if doc and doc.get("kind") == "Deployment" and doc["metadata"]["name"] == "sgdm-mlflow":
            (mlflow,) = [
                c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "mlflow"
            ]
            return mlflow
    raise AssertionError(f"{MANIFEST}: no Deployment sgdm-mlflow")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, others left as written."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), value)


def pod_env(spec: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def request(url: str, auth: tuple[str, str] | None = None, body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening (yet)
        return 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("tracking")
    auth_ini = root / "basic_auth.ini"
    # docs/deploy.md step 3's basic_auth.ini, with its PostgreSQL database_uri as SQLite.
    auth_ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    secrets = {
        "sgdm-postgres": {"username": "mlflow", "password": "c" * 48},
        "sgdm-mlflow-admin": {
            "username": ADMIN[0],
            "password": ADMIN[1],
            "flask-secret-key": "d" * 64,
        },
        "sgdm-artifacts": {
            "endpoint-url": "http://127.0.0.1:9",
            "access-key-id": "x",
            "secret-access-key": "y",
        },
    }
    spec = container()
    env = pod_env(spec, secrets)
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:ccc")
    env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_ini)  # where the Secret is mounted in the pod
    env["HOME"] = str(root)
    # uvicorn kills a worker that misses a 5 s health check; a shared 2-core CI box can be slower
    # while the workers import MLflow (then they die and restart forever).
    env["UVICORN_TIMEOUT_WORKER_HEALTHCHECK"] = "120"
    port = free_port()
    args = [expand(a, env) for a in spec["args"]]
    args = [
        {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}"}.get(a, a)
        for a in args
    ]
    assert "--app-name=basic-auth" in args
    command = [str(Path(sys.executable).with_name(spec["command"][0])), *spec["command"][1:]]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | env
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [*command, *args],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while request(f"{url}/health") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"server did not start (exit {proc.poll()}):\n"
                    + (root / "server.log").read_text()[-4000:]
                )
            time.sleep(0.5)  # polling interval while the server starts
        yield url
    finally:
        kill_group(proc)
        log.close()


@pytest.mark.slow
def test_basic_auth_server_starts_and_admits_only_known_users(server: str) -> None:
    api = f"{server}/api/2.0/mlflow"
    search = {"max_results": 1}
    assert request(f"{api}/experiments/search", body=search) == 401  # no credentials
    assert request(f"{api}/experiments/search", ("admin", "wrong"), search) == 401
    assert request(f"{api}/experiments/search", ADMIN, search) == 200  # the Secret's admin
    # docs/deploy.md step 4: the admin creates the jobs' user, which can then track.
    assert request(f"{api}/users/create", ADMIN, {"username": JOBS[0], "password": JOBS[1]}) == 200
    created = request(f"{api}/experiments/create", JOBS, {"name": "from-a-job"})
    assert created == 200
    assert request(f"{api}/experiments/create", (JOBS[0], "wrong"), {"name": "x"}) == 401


@pytest.mark.slow
def test_mlflow_client_logs_with_the_jobs_credentials(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What training pods do: MLFLOW_TRACKING_USERNAME/PASSWORD from the sgdm-mlflow-client Secret."""
    from mlflow.tracking import MlflowClient

    request(
        f"{server}/api/2.0/mlflow/users/create", ADMIN, {"username": JOBS[0], "password": JOBS[1]}
    )
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", JOBS[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", JOBS[1])
    client = MlflowClient(server)
    experiment = client.create_experiment("client-run")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "loss", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
