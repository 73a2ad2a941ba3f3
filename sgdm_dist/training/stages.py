"""What trains in each stage, and the engine (prepared model, optimiser, LR schedule) that trains it.

The alignment stage trains the EEG encoder, the semantic head and the concept classifier; the UNet and
the conditioning are idle. Putting them in the optimiser anyway makes strategies disagree: DDP
all-reduces their zero gradients, ZeRO steps them (weight decay, Adam's step counter). So the
alignment stage prepares an :class:`AlignModel` that holds only the modules it trains (no UNet
gradients, optimiser state or all-reduce; no ``find_unused_parameters``). Inside those, what only
the UNet reads (an encoder's token expansion) is frozen until then: DDP stops at a parameter that
gets no gradient. The switch to the
diffusion stage rebuilds the engine around the whole SGDM: full fp32 weights gathered (DeepSpeed's
fp32 master copy where it keeps one), ``accelerator.free_memory()`` (destroys the DeepSpeed engine),
a fresh model loaded with them, and ``accelerator.prepare`` again. That is the one path DDP, ZeRO-2,
ZeRO-3 and FSDP all support. The diffusion stage starts a fresh AdamW for every parameter (Adam's
moments of the encoder restart); the LR schedule continues from the global step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from diffusers.optimization import get_scheduler
from torch import nn

from sgdm_dist.config import Config
from sgdm_dist.models import SGDM, build_model
from sgdm_dist.training.distributed import is_zero3, register_zero3_external_params
from sgdm_dist.training.scaleout import to_channels_last

Group = Literal["align", "full"]
# The SGDM's modules that only the diffusion loss uses; every other module trains in both stages,
# except submodules flagged ``diffusion_only`` (an encoder's token expansion, models/encoders/common.py).
DIFFUSION_ONLY = ("unet", "conditioning")
# The SemanticHead's running target statistics: DeepSpeed casts every buffer to bf16/fp16 with the
# module, where a moving average with rate 1e-3 no longer moves. They are kept fp32 (used via .to()).
FP32_BUFFERS = ("semantic.target_mean", "semantic.target_spread")


def diffusion_only_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters of ``model`` (an SGDM) that only the diffusion loss reaches: those of
    :data:`DIFFUSION_ONLY` and of any submodule with ``diffusion_only = True``."""
    flagged = [f"{p}." for p, m in model.named_modules() if getattr(m, "diffusion_only", False)]
    prefixes = (*(f"{name}." for name in DIFFUSION_ONLY), *flagged)
    return {name for name, _ in model.named_parameters() if name.startswith(prefixes)}


def group_of(stage: str) -> Group:
    """The parameter group that trains in ``stage``: align → encoder side only; else everything."""
    return "align" if stage == "align" else "full"


class AlignModel(nn.Module):
    """The alignment stage's trainable part of an SGDM (every module but :data:`DIFFUSION_ONLY`);
    ``forward`` is the SGDM's align forward.

    Attribute names match the SGDM's, so parameter names (checkpoints, EMA) are the same in both
    stages. The SGDM itself is held outside the module tree: its UNet never enters the engine.
    """

    def __init__(self, model: SGDM) -> None:
        super().__init__()
        for name, child in model.named_children():
            if name not in DIFFUSION_ONLY:
                self.add_module(name, child)
        self._sgdm = (model,)  # a tuple: not registered as a submodule

    @property
    def sgdm(self) -> SGDM:
        return self._sgdm[0]

    def forward(self, batch: dict[str, torch.Tensor], stage: str = "align") -> dict:
        return self.sgdm(batch, stage="align")

    def train(self, mode: bool = True) -> AlignModel:
        super().train(mode)
        self.sgdm.train(mode)  # SGDM.forward reads its own flag (target statistics update)
        return self


@dataclass
class Engine:
    """The prepared training objects of one stage group, and the full SGDM they belong to."""

    group: Group
    sgdm: SGDM
    model: Any  # what accelerator.prepare returned (DDP / DeepSpeedEngine / FSDP / the module)
    optimizer: Any
    scheduler: Any
    # accelerator.unwrap_model walks every submodule (~7 ms on the tiny model): done once here, not
    # once per step (the EMA reads it every step).
    unwrapped: nn.Module


def build_engine(
    accelerator: Accelerator, cfg: Config, sgdm: SGDM, group: Group, start_step: int
) -> Engine:
    """Prepare ``sgdm``'s ``group`` for training; the LR schedule is positioned at ``start_step``."""
    frozen = diffusion_only_parameters(sgdm) if group == "align" else set()
    for name, param in sgdm.named_parameters():
        param.requires_grad_(name not in frozen)
    module: nn.Module = AlignModel(sgdm) if group == "align" else sgdm
    optimizer = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad],
        lr=cfg.train.lr,
        betas=cfg.train.adam_betas,
        weight_decay=cfg.train.weight_decay,
    )
    scheduler = get_scheduler(
        cfg.train.lr_schedule,
        optimizer,
        num_warmup_steps=cfg.train.warmup_steps,
        num_training_steps=cfg.train.total_steps,
    )
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start_step):
            scheduler.step()
    if cfg.train.channels_last and group == "full":
        to_channels_last(sgdm)
    model, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    for name, buffer in unwrapped.named_buffers():
        if name in FP32_BUFFERS:
            buffer.data = buffer.data.float()
    register_zero3_external_params(accelerator, model)
    return Engine(group, sgdm, model, optimizer, scheduler, unwrapped)


def master_state_dict(accelerator: Accelerator, engine: Engine) -> dict[str, torch.Tensor]:
    """Full fp32 weights and buffers of the whole SGDM, on every rank; collective.

    Uses DeepSpeed's fp32 master copy (not the bf16 module weights) so a stage switch loses nothing.
    """
    if accelerator.distributed_type == DistributedType.FSDP:
        raise NotImplementedError(
            "stage switch under FSDP is untested here: use train.joint on FSDP"
        )
    unwrapped = engine.unwrapped
    state = {k: v.detach().float().cpu() for k, v in engine.sgdm.state_dict().items()}
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    for name, param in unwrapped.named_parameters():
        full = None
        if deepspeed:
            from deepspeed.utils import safe_get_full_fp32_param

            full = safe_get_full_fp32_param(param)
        if full is None:
            if is_zero3(accelerator):
                raise RuntimeError(f"ZeRO-3 holds no fp32 master copy of {name}")
            full = param.detach()
        state[name] = full.float().cpu().clone()
    for name, buffer in unwrapped.named_buffers():
        state[name] = buffer.detach().float().cpu().clone()
    return state


def switch_engine(
    accelerator: Accelerator, cfg: Config, engine: Engine, group: Group, step: int
) -> Engine:
    """Rebuild the engine for ``group`` at optimiser step ``step``, keeping every weight; collective."""
    state = master_state_dict(accelerator, engine)
    accelerator.free_memory()
    sgdm = engine.sgdm
    # Building draws from the global RNG; fork it so the switch never changes what training draws.
    with torch.random.fork_rng(devices=[]):
        fresh = build_model(
            cfg.model, n_channels=sgdm.n_channels, n_times=sgdm.n_times, n_subjects=sgdm.n_subjects
        )
    fresh.load_state_dict(state)
    if cfg.train.gradient_checkpointing:
        fresh.enable_gradient_checkpointing()
    return build_engine(accelerator, cfg, fresh, group, step)


def export_state_dict(accelerator: Accelerator, engine: Engine) -> dict[str, torch.Tensor] | None:
    """Full weights of the whole SGDM on rank 0 (None elsewhere); collective.

    ``accelerator.get_state_dict`` gathers the engine's part the same way for DDP, FSDP and ZeRO-3;
    modules outside the engine (the UNet during alignment) come from the SGDM itself.
    """
    part = accelerator.get_state_dict(engine.model)
    if not accelerator.is_main_process:
        return None
    state = {k: v.detach().float().cpu() for k, v in part.items()}
    if engine.group == "align":
        for key, value in engine.sgdm.state_dict().items():
            state.setdefault(key, value.detach().float().cpu())
    return state


def eval_copy(accelerator: Accelerator, cfg: Config, engine: Engine, ema: Any) -> SGDM | None:
    """Full weights (EMA when enabled) in a fresh single-process model on rank 0; collective.

    Gathering a state dict works the same for DDP, FSDP and ZeRO-3, so validation and export never
    run a forward pass through a sharded engine on one rank only.
    """
    shadow = ema.gather_state_dict() if ema is not None else {}  # collective
    state_dict = export_state_dict(accelerator, engine)
    if state_dict is None:
        return None
    sgdm = engine.sgdm
    # Building a model draws from the global RNG; fork it so validating never changes what training
    # draws next.
    with torch.random.fork_rng(devices=[]):
        copy = build_model(
            cfg.model,
            n_channels=sgdm.n_channels,
            n_times=sgdm.n_times,
            n_subjects=sgdm.n_subjects,
        )
    state_dict.update({k: v for k, v in shadow.items() if k != "__ema_updates__"})
    copy.load_state_dict(state_dict)
    return copy.to(accelerator.device).eval()
