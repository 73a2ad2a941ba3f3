"""Shared fixtures. Nothing in the suite may reach a model hub: fail fast instead of retrying."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import tiny_data_overrides

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests track to stores they create; never to a server the developer's shell points at.
os.environ.pop("MLFLOW_TRACKING_URI", None)

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``pytest -n 2 --dist loadfile``), pin worker i to its share of the cores.

    Every process a test starts inherits the affinity, and the project sizes its thread pools from
    it (sgdm_dist/utils/threads.py), so N workers never run more busy threads than cores. Runs before
    any test module imports torch, whose pools are sized on first use.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... in a worker
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    share = cores[int(worker[2:]) :: count]
    if share:
        os.sched_setaffinity(0, share)


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI; a test that calls it must not send
    every later subprocess's runs to its store."""
    yield
    if "mlflow" in sys.modules:  # resets MLflow's in-process URI too, which outranks the variable
        sys.modules["mlflow"].set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def tiny_config_path() -> Path:
    return REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Shards of the synthetic tiny dataset, written once per session by the real `sgdm prepare`.

    Returns the overrides that point configs/tiny.yaml at them; tests must not modify the files.
    """
    import subprocess

    root = tmp_path_factory.mktemp("tiny-shared")
    overrides = tiny_data_overrides(root)
    sgdm = Path(sys.executable).with_name("sgdm")
    result = subprocess.run(
        [str(sgdm), "prepare", str(REPO / "configs" / "tiny.yaml"), *overrides, "--synthetic"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return overrides
