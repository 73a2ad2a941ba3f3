"""One node's launcher: ``accelerate launch`` run in-process, with the workers' exit status kept.

``python -m sgdm_dist.launch.node ACCELERATE_LAUNCH_ARGS... -m sgdm_dist.cli train CONFIG ...``

``accelerate launch`` ends with exit 1 and a traceback whatever its workers did: torchrun raises
``ChildFailedError`` when a worker fails and ``SignalException`` when the launcher itself is
SIGTERMed, and accelerate's single-process path raises ``CalledProcessError``. A job controller
needs the difference (docs/deploy.md, "Exit codes"), so this module maps them back:

- 2 if any worker exited 2 (bad config or data: the same on every retry),
- 128 + N when the launcher was stopped by signal N (143 = SIGTERM: preempted, the workers were
  given ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds to checkpoint),
- otherwise the first failed worker's code, a signal death −N read as 128 + N (137 = SIGKILL).

With one process accelerate runs the worker as a plain subprocess and passes no signal on, so a
SIGTERM here is forwarded to it (torchrun installs its own handlers and forwards them itself).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sgdm_dist.cli.common import EXIT_BAD_INPUT

CRASHED = 1


def normalise(code: int) -> int:
    """A process status as a shell reports it: a death by signal N (−N) is 128 + N."""
    return 128 - code if code < 0 else code


def failure_code(first: int, all_codes: Iterable[int]) -> int:
    """Exit code for failed workers: 2 wins (retrying bad input is useless), else the root cause."""
    codes = [normalise(c) for c in all_codes]
    if EXIT_BAD_INPUT in codes:
        return EXIT_BAD_INPUT
    return normalise(first) or CRASHED


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; pods and CI run Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _forward(signum: int, _frame: Any) -> None:
    for pid in child_pids(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def run(argv: list[str]) -> int:
    """Run ``accelerate launch argv``; return the exit code this node should end with."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _forward)
    try:
        launch_command(args)
    except ChildFailedError as exc:
        _, first = exc.get_first_failure()
        code = failure_code(first.exitcode, (f.exitcode for f in exc.failures.values()))
        print(f"sgdm launch: worker(s) failed; node exits {code}", file=sys.stderr)
        return code
    except SignalException as exc:
        code = normalise(-int(exc.sigval))
        print(f"sgdm launch: stopped by {exc.sigval.name}; node exits {code}", file=sys.stderr)
        return code
    except subprocess.CalledProcessError as exc:
        return failure_code(exc.returncode, [exc.returncode])
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
