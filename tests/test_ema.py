"""EMA on the model's device, sharded like the model (#18.2).

The sharded cases run under ``torchrun`` (2 processes, gloo): this file is also the worker script.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import free_port
from torch import nn

from sgdm_dist.training.ema import EMA

REPO = Path(__file__).resolve().parents[1]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 5), nn.GELU(), nn.Linear(5, 3))  # odd sizes: uneven shards


def test_shadow_lives_on_the_model_device() -> None:
    """On ``meta`` any copy to the host would raise: the shadow and its update stay on the device."""
    with torch.device("meta"):
        model = _net()
    ema = EMA(model, 0.99, keep=True)
    ema.update(model)
    assert ema.shadow and {t.device.type for t in ema.shadow.values()} == {"meta"}
    assert {t.dtype for t in ema.shadow.values()} == {torch.float32}


def test_bf16_weights_keep_an_fp32_shadow_and_frozen_ones_are_not_blended() -> None:
    model = _net().to(torch.bfloat16)
    ema = EMA(model, 0.9999, keep=True)
    frozen_before = ema.shadow["2.weight"].clone()
    model[2].requires_grad_(False)  # e.g. the UNet during the alignment stage
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    assert ema.shadow["0.weight"].dtype == torch.float32
    expected = model[0].weight.float() - 0.1  # first update: decay 0.1, so 90 % of the way
    torch.testing.assert_close(ema.shadow["0.weight"], expected, atol=0.02, rtol=0)
    assert torch.equal(ema.shadow["2.weight"], frozen_before)


def test_track_carries_shadows_over_to_the_full_model_at_the_stage_switch() -> None:
    full = _net()
    align = nn.Sequential(full[0])  # the alignment engine's model: same names, fewer parameters
    ema = EMA(align, 0.9, keep=True)
    with torch.no_grad():
        full[0].weight.add_(1.0)
    ema.update(align)
    carried = ema.shadow["0.weight"].clone()
    ema.track(full)
    assert ema.updates == 1
    assert set(ema.shadow) == {n for n, _ in full.named_parameters()}
    assert torch.equal(ema.shadow["0.weight"], carried)  # not reset to the current weights
    assert torch.equal(ema.shadow["2.weight"], full[2].weight)  # new: starts from the weights


@pytest.mark.slow
def test_sharded_ema_matches_an_unsharded_one_under_fsdp2_and_zero3(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", SGDM_EMA_TEST_DIR=str(tmp_path))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        __file__,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    # One marker file per rank and part (their stdout lines interleave under torchrun).
    assert sorted(f.name for f in tmp_path.glob("ok-*")) == [
        "ok-fsdp2-0",
        "ok-fsdp2-1",
        "ok-zero3-0",
        "ok-zero3-1",
    ]


# ---------------------------------------------------------------------------------------------
# worker (run by torchrun above)


def _nudge(model: nn.Module, step: int) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.0 + 0.1 * step).add_(0.01)


def _fsdp2(rank: int, folder: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    reference = _net()
    model = copy.deepcopy(reference)
    fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
    ema, ref_ema = EMA(model, 0.9, keep=rank == 0), EMA(reference, 0.9, keep=True)
    big = ema.shadow["0.weight"]
    assert big.to_local().numel() < big.numel(), "the shadow must be sharded like the model"
    for step in range(3):
        _nudge(model, step)
        _nudge(reference, step)
        ema.update(model)
        ref_ema.update(reference)
    ema.track(model)  # re-shard round trip (what the stage switch does)
    full = ema.gather_state_dict()
    if rank == 0:
        want = ref_ema.state_dict()
        assert full.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(full[name], want[name])
        torch.save(full, folder / "fsdp2.pt")
    else:
        assert full == {}
    torch.distributed.barrier()
    restored = EMA(model, 0.9, keep=rank == 0)
    restored.load_state_dict(torch.load(folder / "fsdp2.pt"))
    assert restored.updates == 3
    again = restored.gather_state_dict()
    if rank == 0:
        for name in full:
            torch.testing.assert_close(again[name], full[name])


def _zero3(rank: int) -> None:
    """After a real ZeRO-3 optimiser step, a fresh shadow gathered = DeepSpeed's own gather."""
    import deepspeed

    model = _net()
    ds_config = {
        "train_micro_batch_size_per_gpu": 2,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 20,
        },  # biases persist
        "zero_allow_untested_optimizer": True,
    }
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), config=ds_config
    )
    x = torch.randn(2, 7, generator=torch.Generator().manual_seed(rank))
    engine.backward(engine(x).square().mean())
    engine.step()
    ema = EMA(engine.module, 0.9, keep=rank == 0)
    assert ema.shadow["0.weight"].numel() < 35, "the shadow must be a ZeRO-3 partition"
    full = ema.gather_state_dict()
    params = list(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params]):
        weights = {n: p.detach().float().clone() for n, p in params}
    if rank == 0:
        for name, w in weights.items():
            torch.testing.assert_close(full[name], w)
    restored = EMA(engine.module, 0.9, keep=rank == 0)
    restored.load_state_dict(
        {n: w for n, w in weights.items()} | {"__ema_updates__": torch.tensor(5)}
    )
    torch.testing.assert_close(restored.shadow["0.weight"], ema.shadow["0.weight"])


def _worker() -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    folder = Path(os.environ["SGDM_EMA_TEST_DIR"])
    _fsdp2(rank, folder)
    (folder / f"ok-fsdp2-{rank}").touch()
    _zero3(rank)
    (folder / f"ok-zero3-{rank}").touch()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker()
