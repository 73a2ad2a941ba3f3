"""Threads per process (#18.1): each local rank takes its share of the cores, not all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import free_port
from threadpoolctl import threadpool_info
from torch.utils.data import DataLoader, Dataset

from sgdm_dist.utils.threads import (
    HostInfo,
    configure_threads,
    loader_worker_init,
    scaled_threads,
    threads_per_process,
    usable_cores,
)

REPO = Path(__file__).resolve().parents[1]


def test_share_of_the_cores_and_override() -> None:
    assert threads_per_process(HostInfo(cores=16, local_processes=8)) == 2
    assert threads_per_process(HostInfo(cores=16, local_processes=3)) == 5
    assert threads_per_process(HostInfo(cores=2, local_processes=4)) == 1  # never zero
    assert threads_per_process(HostInfo(cores=16, local_processes=8), override=6) == 6
    with pytest.raises(ValueError, match="threads must be >= 1"):
        threads_per_process(HostInfo(cores=4, local_processes=1), override=0)


def test_user_omp_num_threads_wins_outside_a_launcher_only() -> None:
    plain = HostInfo.from_env({"OMP_NUM_THREADS": "1"})
    assert plain.user_threads == 1 and threads_per_process(plain) == 1
    # accelerate launch writes OMP_NUM_THREADS=1 into every worker: there it means nothing.
    launched = HostInfo.from_env({"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "1"})
    assert launched.user_threads is None
    assert threads_per_process(launched) == launched.cores
    assert threads_per_process(plain, override=3) == 3  # experiment.threads beats both


def test_host_info_reads_the_launcher_and_the_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("100000 100000\n")  # a Kubernetes limit of 1 CPU
    host = HostInfo.from_env({"LOCAL_WORLD_SIZE": "2"}, cpu_max=quota)
    assert host == HostInfo(cores=1, local_processes=2, user_threads=None)
    quota.write_text("max 100000\n")
    assert usable_cores(quota) == affinity
    assert usable_cores(tmp_path / "absent") == affinity
    assert HostInfo.from_env({}, cpu_max=quota).local_processes == 1


def test_configure_sets_torch_and_blas_pools() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(HostInfo(cores=8, local_processes=8)) == 1
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    finally:
        configure_threads(HostInfo(cores=before, local_processes=1))


class _ThreadsSeen(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[int, int]:
        blas = max((pool["num_threads"] for pool in threadpool_info()), default=1)
        return torch.get_num_threads(), blas


def test_loader_workers_run_one_thread_each() -> None:
    before = torch.get_num_threads()
    configure_threads(HostInfo(cores=2, local_processes=1), override=2)  # parent: 2
    try:
        loader = DataLoader(
            _ThreadsSeen(), batch_size=None, num_workers=1, worker_init_fn=loader_worker_init
        )
        torch_threads, blas_threads = next(iter(loader))
        assert (int(torch_threads), int(blas_threads)) == (1, 1)
    finally:
        configure_threads(HostInfo(cores=before, local_processes=1))


def test_scaled_threads_borrows_the_idle_ranks_share_and_gives_it_back() -> None:
    before = torch.get_num_threads()
    configure_threads(HostInfo(cores=2, local_processes=2))  # a rank's share: 1
    try:
        with scaled_threads(2) as n:
            blas = {pool["num_threads"] for pool in threadpool_info()}
            assert n == 2 and torch.get_num_threads() == 2 and blas == {2}
        assert torch.get_num_threads() == 1
        assert {pool["num_threads"] for pool in threadpool_info()} == {1}
    finally:
        configure_threads(HostInfo(cores=before, local_processes=1))


@pytest.mark.slow
def test_two_local_ranks_under_accelerate_launch_share_the_cores(tmp_path: Path) -> None:
    """The launcher passes OMP_NUM_THREADS=4 through; each rank must still take only its share."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "4"
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / "ddp.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "-m",
        "sgdm_dist.utils.threads",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(launch, capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    reports = [json.loads(f.read_text()) for f in sorted(tmp_path.glob("rank-*.json"))]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    cores = usable_cores()
    for report in reports:
        assert report["omp_num_threads_env"] == "4"  # what torch would have used unaided
        assert report["local_processes"] == 2
        assert report["torch_threads"] == max(1, cores // 2)
