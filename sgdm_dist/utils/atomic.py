"""Atomic writes: a file or folder appears under its final name only once it is complete.

Write to a hidden temporary sibling, then rename (atomic on one filesystem). A crash leaves a
``.name.tmp-PID-…`` that readers ignore, never a half-written file or folder that looks finished;
the next write of the same name removes such leftovers (and, for folders, puts back a previous
version a kill left renamed aside). One writer per name at a time is assumed: a leftover whose
process still runs on this machine is left alone.

A full disk is reported as :class:`DiskFullError`, naming the path and the space left, instead of
the library error of whoever was writing (torch, safetensors and numpy each word it differently).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

_FULL_WORDS = ("no space left on device", "disk quota exceeded")
# torch ("unexpected pos …") and numpy ("… requested and … written") do not say why a write
# failed; a failed write on a filesystem with less than this left is taken as a full disk.
_NEARLY_FULL_BYTES = 1 << 20
_PID = re.compile(r"\.(?:tmp|old|download)-(\d+)(?:-|$)")


class DiskFullError(OSError):
    """The filesystem ran out of space (or quota) while ``path`` was written."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        self.path = Path(path)
        super().__init__(
            errno.ENOSPC,
            f"disk full while writing {self.path} ({free_space(self.path)} free; "
            f"{type(cause).__name__}: {cause})",
        )

    def __str__(self) -> str:
        return str(self.strerror)


def _free_bytes(path: Path) -> int | None:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def free_space(path: Path) -> str:
    """Free space of the filesystem holding ``path`` (or its nearest existing parent), e.g. '3.1 MiB'."""
    free = _free_bytes(path)
    return "unknown space" if free is None else f"{free / 2**20:.1f} MiB"


def is_disk_full(exc: BaseException, path: Path | None = None) -> bool:
    """True when ``exc`` (or an exception it wraps) says the disk or quota is full, or when a
    write to ``path`` failed and its filesystem has (almost) no space left."""
    if path is not None and isinstance(exc, OSError | RuntimeError | ValueError):
        free = _free_bytes(path)
        if free is not None and free < _NEARLY_FULL_BYTES:
            return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(word in str(current).lower() for word in _FULL_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


def _tag() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _owner_alive(leftover: Path) -> bool:
    """Whether the process named in ``.name.tmp-PID-…`` (or ``.old-``/``.download-``) still runs
    here and is not this one."""
    match = _PID.search(leftover.name)
    if match is None or int(match.group(1)) == os.getpid():
        return False  # an old-style random tag, or a leftover of an earlier life of this pid
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(parent: Path, pattern: str) -> list[Path]:
    """Delete files/folders in ``parent`` matching ``pattern`` whose writer is gone; returns them."""
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for leftover in sorted(parent.glob(pattern)):
        if _owner_alive(leftover):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then rename tmp → path, so a crash never leaves a complete-looking file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, f".{path.name}.tmp-*")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as exc:
        if is_disk_full(exc, path):
            raise DiskFullError(path, exc) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def recover_dir(target: str | Path) -> None:
    """Undo what a kill during :func:`write_dir_atomically` left: put a renamed-aside previous
    version back when ``target`` is missing, and delete temp folders of writers that are gone."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    if not target.exists():
        aside = [p for p in sorted(target.parent.glob(f".{target.name}.old-*")) if p.is_dir()]
        if aside:
            aside[-1].rename(target)
    remove_leftovers(target.parent, f".{target.name}.tmp-*")
    if target.exists():
        remove_leftovers(target.parent, f".{target.name}.old-*")


def write_dir_atomically(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Call ``fill(tmp_dir)`` and then move tmp_dir to ``target`` (replacing it).

    A crash leaves either the old folder or a hidden ``.tmp`` folder, never a half-written ``target``;
    the next call for the same ``target`` cleans that up first. A full disk raises DiskFullError.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tag = _tag()
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    old = target.parent / f".{target.name}.old-{tag}"
    tmp.mkdir()
    try:
        fill(tmp)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    except BaseException as exc:
        # Measured before the temp folder gives its space back, so the message shows the full disk.
        full = (
            DiskFullError(target, exc)
            if isinstance(exc, Exception) and is_disk_full(exc, target)
            else None
        )
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            old.rename(target)
        if full is not None:
            raise full from exc
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target
