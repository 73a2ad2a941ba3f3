"""One micro-batch of training (forward, backward, step) and the batches that feed it, on the device."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from sgdm_dist.config import Config
from sgdm_dist.data.loader import make_loader
from sgdm_dist.training.checkpoint import TrainerState
from sgdm_dist.training.distributed import input_dtype, to_device
from sgdm_dist.training.guard import StepGuard
from sgdm_dist.utils.collective import global_batch


def train_step(
    accelerator: Accelerator,
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    stage: str,
    max_grad_norm: float | None,
    *,
    guard: StepGuard | None = None,
    step: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One micro-batch: forward, backward, and — at an accumulation boundary — clip and step.

    Returns the model's loss terms (device tensors: nothing is read back to the host) and the
    gradient norm before clipping (a device tensor; None between boundaries, when unclipped, and
    under DeepSpeed, which clips inside its step: read it with :func:`_grad_norm` when logging).
    With ``guard`` policy 'skip', a non-finite loss on any rank skips the update on every rank.
    """
    grad_norm = None
    with accelerator.accumulate(model):
        with global_batch(accelerator.num_processes > 1):
            out = model(batch, stage=stage)
        if guard is not None and guard.policy == "skip" and guard.should_skip(out, step):
            optimizer.zero_grad(set_to_none=True)
            return out, None
        if guard is not None:
            guard.observe(out, step)
        accelerator.backward(out["loss"])
        deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        if accelerator.sync_gradients and max_grad_norm is not None and not deepspeed:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return out, grad_norm


def epoch_batches(cfg: Config, accelerator: Accelerator, state: TrainerState) -> Iterator[dict]:
    """Batches of ``state.epoch`` on this rank from ``state.batch_in_epoch`` on, on the device.

    The loader gives every rank the same number of equally sized batches (sgdm_dist/data/loader.py),
    so no rank ever waits on another and no per-batch agreement is needed.
    """
    loader = make_loader(
        cfg,
        "train",
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        epoch=state.epoch,
        subjects=cfg.train.subjects,
        skip_batches=state.batch_in_epoch,
    )
    dtype = input_dtype(accelerator)
    for batch in loader:
        yield to_device(batch, accelerator.device, dtype)
