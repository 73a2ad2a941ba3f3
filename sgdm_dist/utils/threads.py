"""Threads per process: each process of a launch takes its share of the node's cores.

torch sizes its intra-op pool to every core by default, so N local processes run N x cores threads
and contend for the caches and the memory bus (two ranks ran 5.7x slower that way than with one thread
each, docs/benchmarks.md). ``accelerate launch`` sets ``OMP_NUM_THREADS=1`` in every worker instead,
which leaves all but one core of a one-GPU node idle for data and host work. So every entry point
(training, evaluation, tuning trials, benches) sets ``usable cores // local processes`` itself;
``experiment.threads`` overrides it, and so does ``OMP_NUM_THREADS`` in a process no launcher started.
On an oversubscribed host (more runnable threads than cores) keep it at 1: OpenMP's barriers then
wait for descheduled threads, and a 2-thread step ran 20-40x slower than a 1-thread one.

The environment is read once, by the command-line layer (:meth:`HostInfo.from_env`); the rest
takes plain numbers.

    python -m sgdm_dist.utils.threads [--threads N]   # prints what this process would use, as JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


@dataclass(frozen=True)
class HostInfo:
    """What decides the thread count: cores this process may use, processes sharing them."""

    cores: int  # CPU affinity, capped by a cgroup CPU quota (a Kubernetes CPU limit)
    local_processes: int  # processes of this launch on this node (LOCAL_WORLD_SIZE)
    user_threads: int | None = None  # OMP_NUM_THREADS the user set (not a launcher's default)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, cpu_max: Path = CGROUP_CPU_MAX
    ) -> HostInfo:
        env = os.environ if environ is None else environ
        launched = "LOCAL_WORLD_SIZE" in env  # torchrun / accelerate launch / Ray Train worker
        # A launcher writes OMP_NUM_THREADS=1 into every worker whatever the user asked, so there
        # it says nothing; in a plain process it is the user's explicit choice and wins.
        omp = env.get("OMP_NUM_THREADS", "")
        return cls(
            cores=usable_cores(cpu_max),
            local_processes=max(1, int(env.get("LOCAL_WORLD_SIZE", "1"))),
            user_threads=int(omp) if omp.isdigit() and int(omp) > 0 and not launched else None,
        )


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, int(int(quota) / int(period))))


def threads_per_process(host: HostInfo, override: int | None = None) -> int:
    """``override`` when given, else the user's OMP_NUM_THREADS, else an equal share of the cores."""
    if override is not None:
        if override < 1:
            raise ValueError(f"threads must be >= 1, got {override}")
        return override
    if host.user_threads is not None:
        return host.user_threads
    return max(1, host.cores // host.local_processes)


def apply_threads(n: int) -> None:
    """Size torch's intra-op pool and every BLAS/OpenMP pool in this process (numpy, MNE) to ``n``."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    # The limit stays in force after the call: we never restore the library defaults.
    threadpool_limits(limits=n)


@contextmanager
def scaled_threads(factor: int) -> Iterator[int]:
    """Multiply this process's thread count by ``factor`` inside the block, restore it after; yields
    the count. For work one rank does alone while the node's other ranks wait idle at a barrier."""
    before = torch.get_num_threads()
    n = max(1, before * factor)
    apply_threads(n)
    try:
        yield n
    finally:
        apply_threads(before)


def configure_threads(host: HostInfo, override: int | None = None) -> int:
    """Apply this process's share; returns the thread count. Call once, first thing in a command."""
    n = threads_per_process(host, override)
    apply_threads(n)
    log.info(
        "threads: %d per process (%d usable cores, %d local processes%s)",
        n,
        host.cores,
        host.local_processes,
        ", set by experiment.threads"
        if override is not None
        else ", set by OMP_NUM_THREADS"
        if host.user_threads is not None
        else "",
    )
    return n


def loader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoader workers: one thread each (they decode, not compute)."""
    del worker_id
    apply_threads(1)


def main() -> None:
    """Report what :func:`configure_threads` sets in this process (used by tests under a launcher)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="override (experiment.threads)")
    parser.add_argument(
        "--report-dir", type=Path, default=None, help="also write rank-R.json there"
    )
    args = parser.parse_args()
    host = HostInfo.from_env()
    configure_threads(host, args.threads)
    report = {
        **asdict(host),
        "rank": int(os.environ.get("RANK", "0")),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report), flush=True)
    if args.report_dir is not None:  # ranks' stdout lines can interleave under a launcher
        (args.report_dir / f"rank-{report['rank']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
