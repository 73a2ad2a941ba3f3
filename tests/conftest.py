"""Shared fixtures. Nothing in the suite may reach a model hub: fail fast instead of retrying."""

from __future__ import annotations

import logging
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


# MLflow reads these only from the environment, so the project's Tracker sets them in-process
# (sgdm_dist/utils/tracking.py: no MLflow retries, a 5 s timeout).
MLFLOW_HTTP_VARS = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")


@pytest.fixture(autouse=True)
def _no_leaked_tracking_env() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI; a test that calls it must not send
    every later subprocess's runs to its store. A Tracker's HTTP bounds must not leak either: a later
    test's plain MlflowClient would give up after 5 s without retrying (seen under pytest-xdist)."""
    saved = {name: os.environ.get(name) for name in MLFLOW_HTTP_VARS}
    yield
    if "mlflow" in sys.modules:  # resets MLflow's in-process URI too, which outranks the variable
        sys.modules["mlflow"].set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# The longest files (docs/benchmarks.md, "Test suite"), collected first: pytest-xdist hands whole
# files to workers in collection order, so a long file handed out last would run alone at the end.
LONG_FILES = ("test_docs.py", "test_train_equivalence.py", "test_demo.py", "test_tune.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long files first, everything else in its usual order (a stable sort)."""
    items.sort(key=lambda item: item.path.name not in LONG_FILES)


@pytest.fixture(autouse=True)
def _no_leaked_root_handler() -> Iterator[None]:
    """A test that configures logging in-process (``setup_logging``, a library's ``basicConfig``)
    leaves a root handler bound to that test's captured stderr, which is closed afterwards: every
    later in-process log line in the same worker then prints "--- Logging error ---". Handlers a
    test adds to the root logger are removed after it (pytest's own capture handlers are not ours)."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    root.setLevel(level)


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
