"""Stage-aware engines, in one process: the alignment engine holds no UNet, the switch keeps weights."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import torch

from sgdm_dist.config.loader import load_config
from sgdm_dist.config.model import EncoderConfig
from sgdm_dist.models import build_model
from sgdm_dist.training.distributed import LaunchRequest, make_accelerator, micro_batch_seed
from sgdm_dist.training.stages import AlignModel, build_engine, switch_engine

REPO = Path(__file__).resolve().parents[1]


def _batch(model, b: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "eeg": torch.randn(b, model.n_channels, model.n_times, generator=g),
        "subject": torch.tensor([1, 2, 1, 2]),
        "clip": torch.nn.functional.normalize(
            torch.randn(b, model.cfg.clip_dim, generator=g), dim=-1
        ),
        "latent": torch.randn(b, *model.latent_shape, generator=g),
        "image_index": torch.arange(b),
        "concept": torch.zeros(b, dtype=torch.long),
    }


def test_alignment_engine_excludes_the_unet_and_the_switch_keeps_every_weight(
    tmp_path: Path,
) -> None:
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"experiment.output_dir={tmp_path}", "train.align_steps=3", "train.warmup_steps=2"],
    )
    accelerator = make_accelerator(cfg, LaunchRequest(world_size=1, deepspeed=False, fsdp=False))
    torch.manual_seed(0)
    model = build_model(cfg.model, n_channels=5, n_times=40, n_subjects=2)
    engine = build_engine(accelerator, cfg, model, "align", 0)

    module = accelerator.unwrap_model(engine.model)
    assert isinstance(module, AlignModel)
    names = {n.split(".")[0] for n, _ in module.named_parameters()}
    assert "unet" not in names and "conditioning" not in names and "encoder" in names
    trained = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in trained for p in model.unet.parameters())
    assert not any(p.requires_grad for p in model.unet.parameters())
    # The alignment forward is the SGDM's own, through the shared modules.
    batch = _batch(model)
    module.eval()
    assert torch.equal(module(batch)["loss"], model(batch, stage="align")["loss"])

    # One optimiser step, then the switch: every weight and buffer carries over exactly.
    module.train()
    out = engine.model(batch)
    accelerator.backward(out["loss"])
    engine.optimizer.step()
    engine.scheduler.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lr_before = engine.scheduler.get_last_lr()[0]
    full = switch_engine(accelerator, cfg, engine, "full", 1)
    after = full.sgdm.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k].float(), after[k].float()) for k in before)
    assert full.scheduler.get_last_lr()[0] == lr_before  # the schedule continues, not restarts
    trained = {id(p) for group in full.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in trained for p in full.sgdm.unet.parameters())


def test_micro_batch_seeds_differ_by_rank_and_step_and_repeat() -> None:
    seeds = {micro_batch_seed(0, r, s, m) for r in range(4) for s in range(50) for m in range(2)}
    assert len(seeds) == 400
    assert micro_batch_seed(0, 1, 7, 0) == micro_batch_seed(0, 1, 7, 0)
    assert micro_batch_seed(0, 1, 7, 0) != micro_batch_seed(1, 1, 7, 0)


@pytest.mark.parametrize("kind", get_args(EncoderConfig.model_fields["kind"].annotation))
def test_every_parameter_the_alignment_engine_trains_gets_a_gradient(
    kind: str, tmp_path: Path
) -> None:
    """DDP stops at a trainable parameter without a gradient ("Expected to have finished
    reduction..."): the ATM-S readout's token expansion, which only the UNet reads, did that under
    `launch/train.sh` with 2 processes. It is frozen in the alignment stage and trains after."""
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"experiment.output_dir={tmp_path}", f"model.encoder.kind={kind}"],
    )
    accelerator = make_accelerator(cfg, LaunchRequest(world_size=1, deepspeed=False, fsdp=False))
    model = build_model(cfg.model, n_channels=5, n_times=40, n_subjects=2)
    engine = build_engine(accelerator, cfg, model, "align", 0)
    accelerator.backward(engine.model(_batch(model))["loss"])
    params = dict(engine.unwrapped.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert trainable and [n for n in trainable if params[n].grad is None] == []
    if kind != "axial":  # the axial encoder's z reads its tokens, so they train in both stages
        assert "encoder.readout.tokens.weight" not in trainable
    full = switch_engine(accelerator, cfg, engine, "full", 1)
    assert all(p.requires_grad for p in full.sgdm.parameters())
