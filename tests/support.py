"""Helpers shared by test modules (fixtures live in conftest.py): loopback ports, an MLflow server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: uvicorn workers and job consumers die with it
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)  # polling interval while the server starts
    kill_group(proc)
    raise RuntimeError("mlflow server did not become healthy in 120 s")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the server and every process it started (`mlflow server` forks several)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def tiny_data_overrides(root: Path) -> list[str]:
    """Dotted overrides that put every data path of configs/tiny.yaml under ``root``."""
    return [
        f"data.raw_dir={root}/raw",
        f"data.image_dir={root}/raw/images",
        f"data.shard_dir={root}/shards",
        f"data.cache_dir={root}/cache",
    ]
