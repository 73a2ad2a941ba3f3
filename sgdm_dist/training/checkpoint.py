"""Training checkpoints: atomic, finite, keep-last-K, and found again by ``--resume auto``.

A checkpoint is written by every rank into ``.tmp-checkpoint-<step>`` (DeepSpeed shards its optimiser
state per rank). Once all ranks are done, rank 0 records the size and sha256 of every file in
``checksums.json`` and writes ``trainer_state.json`` last; one rename then makes it
``checkpoint-<step>``. A run killed mid-write therefore leaves only a hidden temp folder, which
resume ignores and the next save removes.

Nothing non-finite is ever committed: before writing, every rank checks its parameters and
optimiser state (and rank 0 the EMA) for NaN/Inf; if any rank finds one, no file is touched, the
earlier checkpoints stay (pruning never runs) and :class:`NonFiniteCheckpointError` names the
tensors. ``--resume auto`` walks back from the newest checkpoint to the newest one that loads
(:func:`resume_checkpoint`), moving damaged ones aside as ``damaged-checkpoint-<step>``.

Trust: under DeepSpeed, resume loads the model/optimiser shards with ``torch.load(weights_only=False)``,
i.e. full unpickling (accelerate's own files go through its restricted ``weights_only=True`` loader).
Whoever can write the checkpoint folder can then run code in the trainer: keep it on a volume only the
training job writes (docs/reliability.md). The sha256 list guards against damage, not against such a
writer, who can rewrite it too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from sgdm_dist.training.ema import EMA
from sgdm_dist.utils.atomic import free_space, is_disk_full
from sgdm_dist.utils.checksums import sha256_file

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
DAMAGED_PREFIX = "damaged-"
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
CHECKSUMS_FILE = "checksums.json"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or resumed from; the message names the folder."""


class NonFiniteCheckpointError(CheckpointError):
    """The model, optimiser or EMA holds NaN/Inf: the checkpoint was refused, the earlier ones kept."""


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
            return cls(**json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))
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


# ---------------------------------------------------------------------------------------------
# saving


def save_checkpoint(
    accelerator: Accelerator, root: Path, state: TrainerState, ema: EMA | None, keep_last: int
) -> Path:
    """Collective: every rank must call it. Returns the final folder."""
    final = root / f"{PREFIX}{state.step:08d}"
    if (final / STATE_FILE).is_file():  # e.g. SIGTERM right after a periodic save: same state
        return final
    ema_state = _ema_state(ema, accelerator)
    _refuse_non_finite(accelerator, ema_state, final)
    tmp = root / f"{TMP_PREFIX}{state.step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    error: Exception | None = _attempt(lambda: accelerator.save_state(str(tmp)))
    _raise_if_any_failed(accelerator, error, tmp, root)  # also: every rank's files are in place
    if accelerator.is_main_process:
        error = _attempt(lambda: _finish(tmp, state, ema_state))
    _raise_if_any_failed(accelerator, error, tmp, root)
    if accelerator.is_main_process:
        if final.exists():  # an incomplete leftover of the same step (no trainer_state.json)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(root, keep_last)
        log.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def _ema_state(ema: EMA | None, accelerator: Accelerator) -> dict[str, torch.Tensor] | None:
    """Collective: the full EMA shadow on the main rank (``{}`` elsewhere), None without EMA."""
    if ema is None:
        return None
    if hasattr(ema, "gather_state_dict"):  # sharded EMA (ZeRO-3/FSDP): every rank takes part
        return ema.gather_state_dict()
    return ema.state_dict() if accelerator.is_main_process else {}


def _refuse_non_finite(
    accelerator: Accelerator, ema_state: dict[str, torch.Tensor] | None, final: Path
) -> None:
    """Raise NonFiniteCheckpointError on every rank if any rank holds a NaN/Inf tensor."""
    bad = list(_non_finite_tensors(accelerator, ema_state))
    count = torch.tensor([float(len(bad))], device=accelerator.device)
    total = int(accelerator.reduce(count, reduction="sum").item())
    if total == 0:
        return
    root = final.parent
    previous = complete_checkpoints(root)
    kept = f"newest kept: {previous[-1].name}" if previous else "no earlier checkpoint exists"
    named = ", ".join(bad[:5]) + (" …" if len(bad) > 5 else "") if bad else "on another rank"
    raise NonFiniteCheckpointError(
        f"refusing to write {final.name} in {root}: {total} tensor(s) hold NaN/Inf ({named}); "
        f"earlier checkpoints are kept and none was pruned ({kept}); resume from it with "
        "--resume auto after fixing the cause (learning rate, bad samples)"
    )


def _non_finite_tensors(
    accelerator: Accelerator, ema_state: dict[str, torch.Tensor] | None
) -> Iterator[str]:
    """Names of this rank's non-finite tensors: what ``save_state`` would write, plus the EMA.

    ``accelerator._models``/``_optimizers`` are exactly the objects ``save_state`` serialises.
    Under ZeRO-3 a parameter's local shard is ``ds_tensor``; optimiser state is per-rank already.
    """
    names: dict[int, str] = {}
    for model in accelerator._models:
        for name, param in model.named_parameters():
            names[id(param)] = name
            local = getattr(param, "ds_tensor", param)
            if local.numel() and not torch.isfinite(local.detach()).all():
                yield f"parameter {name}"
    for optimizer in accelerator._optimizers:
        state: Any = getattr(optimizer, "state", {}) or {}
        for key, slots in state.items():
            if not isinstance(slots, dict):
                continue
            for slot, value in slots.items():
                floating = torch.is_tensor(value) and value.is_floating_point()
                if floating and not torch.isfinite(value).all():
                    yield f"optimizer {slot} of {names.get(id(key), 'a parameter')}"
    for name, value in (ema_state or {}).items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            yield f"EMA {name}"


def _attempt(write: Callable[[], None]) -> Exception | None:
    try:
        write()
    except Exception as exc:  # disk full, quota, permissions (torch/safetensors wrap OSError): reported collectively below
        return exc
    return None


def _finish(tmp: Path, state: TrainerState, ema_state: dict[str, torch.Tensor] | None) -> None:
    if ema_state is not None:
        save_file(ema_state, str(tmp / EMA_FILE))
    files = {
        p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    _write_synced(tmp / CHECKSUMS_FILE, json.dumps({"files": files}, indent=1) + "\n")
    _write_synced(tmp / STATE_FILE, state.to_json())  # last file in: marks the folder complete


def _raise_if_any_failed(
    accelerator: Accelerator, error: Exception | None, tmp: Path, root: Path
) -> None:
    """All ranks learn whether any rank failed to write, so none waits at a barrier forever."""
    failed = torch.tensor([float(error is not None)], device=accelerator.device)
    if accelerator.reduce(failed, reduction="sum").item() == 0:
        return
    if error is None:
        reason = "another rank failed to write its part"
    elif is_disk_full(error, tmp):  # before the partial folder gives its space back
        reason = f"disk full ({free_space(tmp)} free on the filesystem of {root}): {error}"
    else:
        reason = str(error)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; never leave a partial folder
    previous = complete_checkpoints(root)
    kept = (
        f"the previous checkpoint {previous[-1]} is intact"
        if previous
        else "no earlier checkpoint exists"
    )
    raise CheckpointError(f"could not write checkpoint {tmp.name} in {root}: {reason}; {kept}")


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _prune(root: Path, keep_last: int) -> None:
    # Only complete checkpoints count (all finite: non-finite ones are never committed), and
    # damaged ones were renamed aside at resume, so K good checkpoints always remain.
    for old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# loading


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


def check_files(folder: Path) -> None:
    """Raise CheckpointError when a file listed in ``checksums.json`` is missing, truncated or changed.

    Checkpoints written before ``checksums.json`` existed pass (their load is the only check).
    """
    TrainerState.read(folder)
    listing = folder / CHECKSUMS_FILE
    if not listing.is_file():
        return
    try:
        files = json.loads(listing.read_text(encoding="utf-8"))["files"]
        expected = {name: (int(v["bytes"]), str(v["sha256"])) for name, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{listing}: unreadable ({exc})") from None
    for name, (size, digest) in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {CHECKSUMS_FILE})")
        found = path.stat().st_size
        if found != size:
            raise CheckpointError(
                f"{path}: truncated or grown: expected {size} bytes, found {found}"
            )
        if sha256_file(path) != digest:
            raise CheckpointError(
                f"{path}: damaged: sha256 differs from the one recorded when it was written"
            )


Prepare = Callable[[TrainerState], "EMA | None"]


def resume_checkpoint(
    accelerator: Accelerator,
    root: Path,
    resume: str | None,
    ema: EMA | None,
    prepare: Prepare | None = None,
) -> tuple[TrainerState, Path | None]:
    """Collective. ``None`` → fresh state; a path → exactly that checkpoint (errors name it);
    ``"auto"`` → the newest checkpoint under ``root`` that verifies and loads.

    Walking back, each damaged checkpoint (files missing/truncated/changed against its
    ``checksums.json``, unreadable state, or a load error of one written without that list) is
    logged with the reason and renamed ``damaged-checkpoint-<step>`` (kept for inspection, never
    counted by keep_last). Raises CheckpointError when checkpoints exist but none loads (they are
    then all aside, so a rerun starts fresh), and when an intact checkpoint does not load into
    this run (a changed config: moving good checkpoints aside would lose them).

    ``prepare(state)``, when given, runs on every rank with each candidate's TrainerState after
    its files verified and before it is loaded (e.g. to build the engine of that step's stage);
    the EMA it returns replaces ``ema`` for that load.
    """
    if resume is None:
        return TrainerState(), None
    if resume != "auto":
        folder = resolve_resume(root, resume)
        assert folder is not None
        outcome = _try_load(accelerator, folder, ema, prepare)
        if isinstance(outcome, str):
            raise CheckpointError(f"cannot resume from {folder}: {outcome}")
        return outcome, folder
    skipped: list[str] = []
    for folder in reversed(complete_checkpoints(root)):
        outcome = _try_load(accelerator, folder, ema, prepare)
        if isinstance(outcome, TrainerState):
            return outcome, folder
        log.warning("resume: skipping checkpoint %s: %s", folder, outcome)
        skipped.append(f"{folder.name} ({outcome})")
        _move_aside(accelerator, folder)
    if skipped:
        raise CheckpointError(
            f"no checkpoint in {root} loads: {'; '.join(skipped)}. They were renamed "
            f"{DAMAGED_PREFIX}*; a rerun with --resume auto starts from step 0"
        )
    return TrainerState(), None


def _try_load(
    accelerator: Accelerator, folder: Path, ema: EMA | None, prepare: Prepare | None
) -> TrainerState | str:
    """The loaded state, or (on every rank alike) why ``folder`` could not be loaded."""
    reason: str | None = None
    if accelerator.is_main_process:
        try:
            check_files(folder)
        except CheckpointError as exc:
            reason = str(exc)
    if _any_rank(accelerator, reason is not None):
        return reason or "its files failed verification on rank 0"
    if prepare is not None:
        ema = prepare(TrainerState.read(folder))  # verified on rank 0; every rank builds its engine
    try:
        state = load_checkpoint(accelerator, folder, ema)
    except Exception as exc:  # unpickling, shape or safetensors errors: named, never a traceback
        reason = f"load failed: {type(exc).__name__}: {str(exc)[:300]}"
        state = None
    if _any_rank(accelerator, reason is not None):
        reason = reason or "load failed on another rank"
        if (folder / CHECKSUMS_FILE).is_file():  # intact bytes: the run, not the files, differs
            raise CheckpointError(
                f"{folder} is intact (its files match {CHECKSUMS_FILE}) but does not load into "
                f"this run: {reason}; resume with the config that wrote it, or use another "
                "experiment.output_dir"
            )
        return reason
    assert state is not None
    return state


def _any_rank(accelerator: Accelerator, flag: bool) -> bool:
    value = torch.tensor([float(flag)], device=accelerator.device)
    return accelerator.reduce(value, reduction="sum").item() > 0


def _move_aside(accelerator: Accelerator, folder: Path) -> None:
    if accelerator.is_main_process:
        target = folder.with_name(DAMAGED_PREFIX + folder.name)
        n = 1
        while target.exists():
            n += 1
            target = folder.with_name(f"{DAMAGED_PREFIX}{folder.name}.{n}")
        folder.rename(target)
    accelerator.wait_for_everyone()
