"""Training checkpoints: atomic, keep-last-K, and found again by ``--resume auto``.

A checkpoint is written by every rank into ``.tmp-checkpoint-<step>`` (DeepSpeed shards its optimiser
state per rank) and becomes ``checkpoint-<step>`` by one rename once all ranks are done and rank 0 has
written ``trainer_state.json``. A run killed mid-write therefore leaves only a hidden temp folder,
which resume ignores and the next save removes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from sgdm_dist.ema import EMA

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the folder."""


@dataclass
class TrainerState:
    """Where training stands: enough to replay the data stream from the same position."""

    step: int = 0  # optimiser steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    samples_seen: int = 0  # across all ranks

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, folder: Path) -> TrainerState:
        try:
            return cls(**json.loads((folder / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{folder}: unreadable {STATE_FILE} ({exc})") from None


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def resolve_resume(root: Path, resume: str | None) -> Path | None:
    """``None`` → fresh start; ``"auto"`` → newest complete checkpoint (or fresh); a path → that one."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
    return path


def save_checkpoint(
    accelerator: Accelerator, root: Path, state: TrainerState, ema: EMA | None, keep_last: int
) -> Path:
    """Collective: every rank must call it. Returns the final folder."""
    final = root / f"{PREFIX}{state.step:08d}"
    if final.exists():  # e.g. SIGTERM right after a periodic save: the state is identical
        return final
    tmp = root / f"{TMP_PREFIX}{state.step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    error: Exception | None = _attempt(lambda: accelerator.save_state(str(tmp)))
    if accelerator.is_main_process and error is None:
        error = _attempt(lambda: _finish(tmp, state, ema))
    _raise_if_any_failed(accelerator, error, tmp, root)
    if accelerator.is_main_process:
        os.replace(tmp, final)
        _prune(root, keep_last)
        log.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def _attempt(write: Callable[[], None]) -> Exception | None:
    try:
        write()
    except Exception as exc:  # disk full, quota, permissions (torch/safetensors wrap OSError): reported collectively below
        return exc
    return None


def _finish(tmp: Path, state: TrainerState, ema: EMA | None) -> None:
    if ema is not None:
        save_file(ema.state_dict(), str(tmp / EMA_FILE))
    _write_synced(tmp / STATE_FILE, state.to_json())  # last file in: marks the folder complete


def _raise_if_any_failed(
    accelerator: Accelerator, error: OSError | None, tmp: Path, root: Path
) -> None:
    """All ranks learn whether any rank failed to write, so none waits at a barrier forever."""
    failed = torch.tensor([float(error is not None)], device=accelerator.device)
    if accelerator.reduce(failed, reduction="sum").item() == 0:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; never leave a partial folder
    previous = complete_checkpoints(root)
    kept = (
        f"the previous checkpoint {previous[-1]} is intact"
        if previous
        else "no earlier checkpoint exists"
    )
    reason = error if error is not None else "another rank failed to write its part"
    raise CheckpointError(f"could not write checkpoint {tmp.name} in {root}: {reason}; {kept}")


def load_checkpoint(accelerator: Accelerator, folder: Path, ema: EMA | None) -> TrainerState:
    """Collective: restores model, optimiser, LR schedule and RNG on every rank; EMA on rank 0."""
    state = TrainerState.read(folder)
    accelerator.load_state(str(folder))
    if ema is not None:
        ema_path = folder / EMA_FILE
        if not ema_path.is_file():
            raise CheckpointError(f"{folder}: EMA is enabled but {EMA_FILE} is missing")
        ema.load_state_dict(load_file(str(ema_path)))
    return state


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _prune(root: Path, keep_last: int) -> None:
    for old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
