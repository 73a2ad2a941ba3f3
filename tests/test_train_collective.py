"""The global-batch contrastive loss: 2 gloo ranks × B rows give the 1-process loss and gradients on 2B.

Also the target statistics of the semantic head (same buffers on every rank, equal to one process
seeing the whole batch) and the finite-loss guard's policies, in one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import free_port

from sgdm_dist.config.model import SemanticConfig
from sgdm_dist.models.semantic import SemanticHead, contrastive_loss
from sgdm_dist.utils.collective import global_batch

B, D = 4, 8


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pred = torch.nn.functional.normalize(torch.randn(2 * B, D, generator=g), dim=-1)
    target = torch.nn.functional.normalize(torch.randn(2 * B, D, generator=g), dim=-1)
    index = torch.tensor([0, 1, 2, 3, 0, 5, 6, 7])  # a repeat across ranks: rows 0 and 4
    clip = torch.randn(2 * B, D, generator=g)
    return pred, target, index, clip


def _loss_and_grad(pred, target, index, scale):
    pred, target = pred.clone().requires_grad_(), target.clone().requires_grad_()
    scale = scale.clone().requires_grad_()
    loss = contrastive_loss(pred, target, scale, index)
    loss.backward()
    return loss.detach(), pred.grad, target.grad, scale.grad


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    pred, target, index, clip = _inputs()
    rows = slice(rank * B, (rank + 1) * B)
    with global_batch():
        loss, g_pred, g_target, g_scale = _loss_and_grad(
            pred[rows], target[rows], index[rows], torch.tensor(10.0)
        )
        head = SemanticHead(SemanticConfig(), in_dim=4, clip_dim=D)
        head.observe(clip[rows])
    # What DDP does to parameter gradients: average over ranks.
    for t in (loss, g_scale):
        dist.all_reduce(t)
        t /= 2
    torch.save(
        {
            "loss": loss,
            "g_pred": g_pred,
            "g_target": g_target,
            "g_scale": g_scale,
            "mean": head.target_mean,
        },
        f"{out}/rank{rank}.pt",
    )
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_give_the_one_process_loss_and_gradients(tmp_path: Path) -> None:
    # spawn, not fork: a fork of the test process (threads of torch, MLflow, … already running)
    # can inherit a held lock and hang in the child.
    mp.start_processes(_rank, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    pred, target, index, clip = _inputs()
    loss, g_pred, g_target, g_scale = _loss_and_grad(pred, target, index, torch.tensor(10.0))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for r, got in enumerate(ranks):
        rows = slice(r * B, (r + 1) * B)
        assert torch.allclose(got["loss"], loss, atol=1e-6), (got["loss"], loss)
        # Features: each rank holds ∂(mean of local losses)/∂x; the 1-process gradient of the
        # global mean is that divided by the world size (DDP's average does the division).
        assert torch.allclose(got["g_pred"] / 2, g_pred[rows], atol=1e-6)
        assert torch.allclose(got["g_target"] / 2, g_target[rows], atol=1e-6)
        assert torch.allclose(got["g_scale"], g_scale, atol=1e-6)
    head = SemanticHead(SemanticConfig(), in_dim=4, clip_dim=D)
    head.observe(clip)
    assert torch.equal(ranks[0]["mean"], ranks[1]["mean"])
    assert torch.allclose(ranks[0]["mean"], head.target_mean, atol=1e-6)


def test_without_global_batch_the_loss_stays_local() -> None:
    """Outside the training loop's context (validation on one rank) nothing is gathered."""
    pred, target, index, _ = _inputs()
    local = contrastive_loss(pred[:B], target[:B], torch.tensor(10.0), index[:B])
    with global_batch():  # no process group: still local
        again = contrastive_loss(pred[:B], target[:B], torch.tensor(10.0), index[:B])
    assert torch.equal(local, again)
    whole = contrastive_loss(pred, target, torch.tensor(10.0), index)
    assert not torch.allclose(local, whole)


def _guard(policy: str, limit: int = 1):
    from accelerate import Accelerator

    from sgdm_dist.training.guard import StepGuard, StopSignal

    return StepGuard(Accelerator(cpu=True), StopSignal(), policy=policy, limit=limit)


def test_guard_stop_names_the_steps_and_terms() -> None:
    from sgdm_dist.training.guard import NonFiniteLossError

    guard = _guard("stop")
    finite = {"loss": torch.tensor(1.0), "loss/align": torch.tensor(1.0)}
    guard.observe(finite, step=0)
    assert guard.agree(step=1) is False
    guard.observe(finite, step=1)
    guard.observe({"loss": torch.tensor(float("nan")), "loss/align": torch.tensor(1.0)}, step=2)
    with pytest.raises(NonFiniteLossError, match=r"steps 2-3 \(terms: loss\)"):
        guard.agree(step=3)
    guard.stop.requested = True
    assert guard.agree(step=4) is True  # the window was reset; the stop signal is agreed


def test_guard_skip_counts_and_stops_past_the_limit() -> None:
    from sgdm_dist.training.guard import NonFiniteLossError

    guard = _guard("skip", limit=1)
    bad = {"loss": torch.tensor(float("inf")), "loss/diffusion": torch.tensor(float("inf"))}
    assert guard.should_skip({"loss": torch.tensor(2.0)}, step=0) is False
    assert guard.should_skip(bad, step=1) is True
    assert guard.skipped == 1
    with pytest.raises(NonFiniteLossError, match="loss, loss/diffusion.*2 skipped"):
        guard.should_skip(bad, step=2)
