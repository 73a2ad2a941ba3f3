"""Global-batch collectives for losses: all-gather with and without gradient, opt-in per forward.

The training loop wraps each forward in :func:`global_batch`; inside it, losses that need the whole
global batch (the contrastive loss, the target statistics of the semantic head) gather every rank's
rows. Outside it (validation on rank 0 only, evaluation, tests) the helpers are the identity, so a
forward run by one rank alone can never wait on a collective the others never join.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

_ACTIVE = False


@contextlib.contextmanager
def global_batch(enabled: bool = True) -> Iterator[None]:
    """Inside: the gather helpers gather across all ranks (every rank must run the same forward)."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, enabled and dist.is_available() and dist.is_initialized()
    try:
        yield
    finally:
        _ACTIVE = previous


def _world() -> tuple[int, int]:
    if not _ACTIVE:
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sends every rank's gradient to the owning rank.

    Backward is an all-reduce (sum) of the full gradient, then this rank's slice: it works on every
    backend (gloo has no reduce-scatter) and the gathered tensors are small ([B, D] features).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.n = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None, None


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[B, ...] on each of W ranks → ([W*B, ...] in rank order, this rank's first row).

    Differentiable, so the global-batch contrastive loss (open_clip's local-loss pattern: this rank's
    rows against every rank's columns) gets exact gradients. Every rank must pass the same B (the
    loader guarantees equal batch sizes). Identity outside :func:`global_batch` or at world size 1.
    """
    rank, world = _world()
    if world == 1:
        return tensor, 0
    # fp32 on the wire: gloo lacks some bf16 kernels, and these features are tiny.
    return _GatherWithGrad.apply(tensor.float(), rank, world), rank * tensor.shape[0]


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """[B, ...] on each rank → [W*B, ...] in rank order, no gradient; identity when not gathering."""
    _rank, world = _world()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
