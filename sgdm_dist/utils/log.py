"""One logging format for every entry point, rank-aware so only rank 0 talks by default.

Distributed launchers (torchrun, accelerate, the Kubeflow operator) start one copy of the program per
process; without this, every message would be printed N times.
"""

from __future__ import annotations

import functools
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


# Libraries whose INFO lines drown the CLI's own output; their warnings and errors still show.
QUIET_LOGGERS: tuple[str, ...] = (
    "mlflow",
    "alembic",
    "huey",
    "ray",
    "DeepSpeed",
    "deepspeed",
    "accelerate",
    "torch.distributed",
    "urllib3",
    "httpx",
    "httpcore",
    "botocore",
    "s3fs",
    "aiobotocore",
    "numexpr",
    "filelock",
    "fsspec",
    "matplotlib",
    "PIL",
    "git",
    "optuna",
    "mne",
    "open_clip",
    "diffusers",
    "transformers",
    "huggingface_hub",
    "werkzeug",
)


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


class _OnceFilter(logging.Filter):
    """Let each distinct warning (logger, text) through once per process: a library repeating the
    same warning every step or for every file says nothing new after the first time."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _LibraryRootFilter(logging.Filter):
    """Hide INFO a quiet library writes through the *root* logger (open_clip calls
    ``logging.info(...)``, so no named logger can be clamped): matched by the calling file's package."""

    def __init__(self, names: tuple[str, ...] = QUIET_LOGGERS) -> None:
        super().__init__()
        self.folders = tuple(f"{os.sep}{name}{os.sep}" for name in names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root" or record.levelno >= logging.WARNING:
            return True
        return not any(folder in record.pathname for folder in self.folders)


def _clamped_set_level(logger: logging.Logger, level: int | str) -> None:
    level = logging._checkLevel(level)  # type: ignore[attr-defined]
    logging.Logger.setLevel(logger, max(level, logging.WARNING))


def quiet_third_party(verbose: bool = False, names: tuple[str, ...] = QUIET_LOGGERS) -> None:
    """Third-party loggers at WARNING (``verbose``: back to INFO).

    mlflow, ray and DeepSpeed set their own logger's level when they are imported, which may happen
    after this runs (they are imported lazily), so the clamp lives on the logger object itself: its
    ``setLevel`` keeps the level at WARNING or above until ``verbose`` removes the clamp.
    """
    for name in names:
        logger = logging.getLogger(name)
        if verbose:
            logger.__dict__.pop("setLevel", None)
            logger.setLevel(logging.INFO)
        else:
            logger.setLevel = functools.partial(_clamped_set_level, logger)  # type: ignore[method-assign]
            logger.setLevel(logging.WARNING)


def setup_logging(
    level: str | int = "INFO", rank: int = 0, all_ranks: bool = False, verbose: bool = False
) -> None:
    """Configure the root logger once per process.

    Ranks other than 0 only emit warnings and errors unless ``all_ranks`` is set, so a failure on any
    rank is still visible. Third-party INFO lines are hidden unless ``verbose``; a warning repeated
    with the same text (ours, a library's, or a Python ``warnings.warn``) is shown once.
    """
    if isinstance(level, str):
        level = logging.getLevelNamesMapping()[level.upper()]
    if rank != 0 and not all_ranks:
        level = max(level, logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    handler.addFilter(_RankFilter(rank))
    handler.addFilter(_OnceFilter())
    if not verbose:
        handler.addFilter(_LibraryRootFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn → logger "py.warnings" → the once-filter above
    quiet_third_party(verbose)
