"""What the ranks must agree on between steps: a stop signal and whether every loss was finite.

Both are counted on the device with no host sync; the ranks agree by ONE small all-reduce every
``train.sync_every`` steps and before every log, validation and checkpoint (so nothing is ever saved
after a non-finite loss went unnoticed). ``train.nonfinite: skip`` needs the answer before the update,
so it checks every step (a host sync per step) and skips that update on all ranks.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import torch
from accelerate import Accelerator

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss term was NaN/Inf on some rank; training stopped before writing anything after it."""

    def __init__(self, first_step: int, last_step: int, terms: list[str], detail: str = "") -> None:
        where = (
            f"step {last_step}" if first_step == last_step else f"steps {first_step}-{last_step}"
        )
        super().__init__(
            f"non-finite loss in {where} (terms: {', '.join(terms) or 'loss'}){detail}; "
            "no checkpoint was written after it. Check the data (sgdm verify), lower train.lr, "
            "or set train.nonfinite=skip"
        )
        self.first_step, self.last_step, self.terms = first_step, last_step, terms


class StopSignal:
    """SIGTERM/SIGINT → a flag; the loop checkpoints and exits once the ranks agree on it."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    @classmethod
    def install(cls) -> StopSignal:
        flag = cls()
        if threading.current_thread() is not threading.main_thread():
            return flag  # e.g. a Ray Tune trial thread: its host process owns the signals
        for sig in (signal.SIGTERM, signal.SIGINT):
            flag._previous[sig] = signal.signal(sig, flag._handle)
        return flag

    def _handle(self, signum: int, _frame: Any) -> None:
        if not self.requested:
            log.warning(
                "received %s: checkpointing at the next agreement", signal.Signals(signum).name
            )
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StepGuard:
    """Counts non-finite loss terms on the device; :meth:`agree` makes the ranks decide together."""

    def __init__(
        self, accelerator: Accelerator, stop: StopSignal, *, policy: str, limit: int
    ) -> None:
        self.accelerator = accelerator
        self.stop = stop
        self.policy, self.limit = policy, limit
        self.bad: dict[str, torch.Tensor] = {}  # term → non-finite micro-batches since agreement
        self.first_step: int | None = None
        self.skipped = 0

    @staticmethod
    def _names(out: dict[str, torch.Tensor]) -> list[str]:
        return ["loss", *sorted(k for k in out if k.startswith("loss/"))]

    def observe(self, out: dict[str, torch.Tensor], step: int) -> None:
        """Count this micro-batch's non-finite terms; no host sync."""
        if self.policy == "skip":
            return  # already decided in should_skip
        for name in self._names(out):
            flag = (~torch.isfinite(out[name].detach())).float().reshape(())
            self.bad[name] = self.bad[name] + flag if name in self.bad else flag
        if self.first_step is None:
            self.first_step = step  # the window the error names starts here

    def should_skip(self, out: dict[str, torch.Tensor], step: int) -> bool:
        """Policy 'skip': do all ranks' losses hold no NaN/Inf? Collective and a host sync."""
        names = self._names(out)
        flags = torch.stack([(~torch.isfinite(out[n].detach())).float().reshape(()) for n in names])
        flags = self.accelerator.reduce(flags, reduction="sum").cpu()
        if float(flags.sum()) == 0:
            return False
        self.skipped += 1
        bad = [n for n, f in zip(names, flags.tolist(), strict=True) if f > 0]
        log.warning(
            "non-finite loss at step %d (%s): update skipped (%d so far)",
            step + 1,
            ", ".join(bad),
            self.skipped,
        )
        if self.skipped > self.limit:
            raise NonFiniteLossError(
                step + 1, step + 1, bad, f"; {self.skipped} skipped > train.nonfinite_limit"
            )
        return True

    def agree(self, step: int) -> bool:
        """All ranks: raise NonFiniteLossError if any loss since the last call was non-finite;
        return whether any rank got a stop signal. One all-reduce, one host sync."""
        device = self.accelerator.device
        # Every rank ran the same stages, so every rank holds the same term names.
        names = sorted(self.bad)
        stop = torch.tensor([float(self.stop.requested)], device=device)
        flags = torch.cat([stop, *(self.bad[n].reshape(1).to(device) for n in names)])
        flags = self.accelerator.reduce(flags, reduction="sum").cpu().tolist()
        first = self.first_step if self.first_step is not None else step - 1
        self.bad, self.first_step = {}, None
        if any(f > 0 for f in flags[1:]):
            raise NonFiniteLossError(
                first + 1, step, [n for n, f in zip(names, flags[1:], strict=True) if f > 0]
            )
        return flags[0] > 0
