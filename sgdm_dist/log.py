"""One logging format for every entry point, rank-aware so only rank 0 talks by default.

Distributed launchers (torchrun, accelerate, the Kubeflow operator) start one copy of the program per
process; without this, every message would be printed N times.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

FORMAT = "%(asctime)s %(levelname)-7s [rank %(rank)s] %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"


def rank_from_env(environ: Mapping[str, str] | None = None) -> int:
    """Global process rank as set by torchrun/accelerate (``RANK``); 0 outside a launcher."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get("RANK", "0"))
    except ValueError:
        return 0


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(level: str | int = "INFO", rank: int = 0, all_ranks: bool = False) -> None:
    """Configure the root logger once per process.

    Ranks other than 0 only emit warnings and errors unless ``all_ranks`` is set, so a failure on any
    rank is still visible.
    """
    if isinstance(level, str):
        level = logging.getLevelNamesMapping()[level.upper()]
    if rank != 0 and not all_ranks:
        level = max(level, logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    handler.addFilter(_RankFilter(rank))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that are chatty at INFO; their warnings still come through.
    for name in ("urllib3", "filelock", "matplotlib", "PIL", "git"):
        logging.getLogger(name).setLevel(logging.WARNING)
