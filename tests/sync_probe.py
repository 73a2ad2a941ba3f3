"""Run the real training loop with a fixed global-batch stream, optionally with a deliberate sync bug.

Used by tests/test_train_equivalence.py, in a process of its own (plain ``python`` for 1 process,
``accelerate launch`` for N). The data stream is patched so N processes see exactly the 1-process
global batches: global batch k = the k-th 16 samples of the unshuffled train split, and rank r gets
rows ``[r·B, (r+1)·B)`` with B = 16 / N. That is what makes N-process and 1-process trajectories
comparable; the loop, engines, collectives and checkpoints are the product's own.

Mutations (test-only, injected here by monkeypatching, never reachable from the product):
  same-data   every rank gets rank 0's rows (a broken data split)
  rank0-grad  rank 0's gradient replaces the average (loss × N on rank 0, × 0 elsewhere)

    python tests/sync_probe.py CONFIG OUT_DIR MUTATION [--resume auto] [overrides...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

import sgdm_dist.training.loop as train_module
import sgdm_dist.training.step as step_module
from sgdm_dist.config.loader import load_config
from sgdm_dist.data.loader import make_loader as real_make_loader
from sgdm_dist.utils.log import rank_from_env, setup_logging


class _Slices:
    """Rank ``rank``'s rows of each global batch of the unshuffled train split; len() per rank."""

    def __init__(self, batches: list[dict[str, Any]], skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches[self.skip :])


GLOBAL_BATCH = 16


def patch_loader(mutation: str) -> None:
    def make_loader(cfg, split, *, rank=0, world_size=1, skip_batches=0, **kwargs):
        # The same call (same cfg, same arguments) at every world size: identical global batches.
        local = GLOBAL_BATCH // world_size
        stream = real_make_loader(
            cfg,
            split,
            shuffle=False,
            batch_size=GLOBAL_BATCH,
            drop_last=True,
            subjects=kwargs.get("subjects"),
        )
        row = 0 if mutation == "same-data" else rank
        part = slice(row * local, (row + 1) * local)
        batches = [
            {k: (v[part] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in b.items()}
            for b in stream
        ]
        return _Slices(batches, skip_batches)

    step_module.make_loader = make_loader  # what the loop's epoch_batches calls


def patch_rank0_gradient() -> None:
    original = Accelerator.backward

    def backward(self: Accelerator, loss: torch.Tensor, **kwargs: Any) -> None:
        factor = float(self.num_processes) if self.process_index == 0 else 0.0
        return original(self, loss * factor, **kwargs)

    Accelerator.backward = backward  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    config, out_dir, mutation, *rest = argv
    resume = None
    if rest[:2] == ["--resume", "auto"]:
        resume, rest = "auto", rest[2:]
    setup_logging(rank=rank_from_env())
    cfg = load_config(Path(config), [*rest, f"experiment.output_dir={out_dir}"])
    patch_loader(mutation)
    if mutation == "rank0-grad":
        patch_rank0_gradient()
    elif mutation not in ("none", "same-data"):
        raise SystemExit(f"unknown mutation {mutation!r}")
    train_module.train(cfg, resume=resume)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
