"""Building the Accelerator, and refusing the silent fallbacks that make a "distributed" run local.

Seen on CPU hosts (docs/benchmarks.md, FINDINGS): an accelerate DDP config without ``cpu=True`` runs N
unsynchronised processes; ``cpu=True`` drops a DeepSpeed plugin; accelerate never applies FSDP on CPU;
DeepSpeed counts one process unless the process group is created with gloo first. Each of those would
train something other than what was asked without an error, so :func:`check_world` turns them into one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    InitProcessGroupKwargs,
    ProjectConfiguration,
)

from sgdm_dist.config import Config
from sgdm_dist.training.scaleout import dynamo_backend, set_tf32, tune_deepspeed_config


class DistributedSetupError(RuntimeError):
    """The processes would not train the way the launch configuration asked."""


@dataclass(frozen=True)
class LaunchRequest:
    """What the launcher asked for, read once from the environment accelerate/torchrun set."""

    world_size: int
    deepspeed: bool
    fsdp: bool
    local_world_size: int = 1  # processes of this launch on this node

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LaunchRequest:
        env = os.environ if environ is None else environ
        flag = lambda name: env.get(name, "false").lower() in ("1", "true", "yes")  # noqa: E731
        return cls(
            world_size=int(env.get("WORLD_SIZE", "1")),
            deepspeed=flag("ACCELERATE_USE_DEEPSPEED"),
            fsdp=flag("ACCELERATE_USE_FSDP"),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")),
        )


def make_accelerator(cfg: Config, request: LaunchRequest) -> Accelerator:
    """One Accelerator for every strategy; the strategy itself comes from the accelerate config file."""
    on_cpu = not torch.cuda.is_available()
    # Every parameter of the prepared model takes part in every step: the alignment stage prepares
    # only the modules it trains (sgdm_dist/training/stages.py), so DDP needs no unused-parameter search.
    handlers: list = [DistributedDataParallelKwargs(find_unused_parameters=False)]
    if request.world_size > 1:
        # Creating the group ourselves (gloo on CPU) is what makes DeepSpeed count every process.
        backend = "gloo" if on_cpu else "nccl"
        handlers.append(InitProcessGroupKwargs(backend=backend, timeout=timedelta(minutes=10)))
    accelerator = Accelerator(
        # cpu=True turns a multi-process launch into real gloo DDP on a CPU host; it must not be set
        # for DeepSpeed, whose plugin it would silently drop.
        cpu=on_cpu and not request.deepspeed,
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        kwargs_handlers=handlers,
        project_config=ProjectConfiguration(project_dir=str(cfg.experiment.output_dir)),
        step_scheduler_with_optimizer=False,
        dynamo_backend=dynamo_backend(cfg.train.compile),
    )
    set_tf32(cfg.train.tf32)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _fill_deepspeed_config(accelerator, cfg)
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        tune_deepspeed_config(ds, cfg.train.mixed_precision, on_gpu=not on_cpu)
    check_world(accelerator, request)
    return accelerator


def _fill_deepspeed_config(accelerator: Accelerator, cfg: Config) -> None:
    # We never hand a dataloader to accelerator.prepare (WebDataset splits by node itself), so
    # DeepSpeed cannot infer its batch settings: state them.
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.data.loader.batch_size
    ds["gradient_accumulation_steps"] = cfg.train.grad_accum
    ds.pop("train_batch_size", None)
    if cfg.train.max_grad_norm is not None:
        ds["gradient_clipping"] = cfg.train.max_grad_norm


def check_world(accelerator: Accelerator, request: LaunchRequest) -> None:
    """Raise when the running processes are not the distributed job the launcher asked for."""
    kind = accelerator.distributed_type
    if accelerator.num_processes != request.world_size:
        raise DistributedSetupError(
            f"launcher started {request.world_size} processes but accelerate sees "
            f"{accelerator.num_processes} ({kind}); ranks would not synchronise"
        )
    if request.world_size > 1 and kind == DistributedType.NO:
        raise DistributedSetupError(
            f"{request.world_size} processes but no distributed backend: each would train alone"
        )
    if request.deepspeed and kind != DistributedType.DEEPSPEED:
        raise DistributedSetupError(f"a DeepSpeed config was given but accelerate runs {kind}")
    if request.fsdp and kind != DistributedType.FSDP:
        raise DistributedSetupError(
            f"an FSDP config was given but accelerate runs {kind}: accelerate applies FSDP only on "
            "GPUs; use configs/accelerate/ddp.yaml or a DeepSpeed config on CPU"
        )


def is_zero3(accelerator: Accelerator) -> bool:
    plugin = accelerator.state.deepspeed_plugin
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin.zero_stage == 3


def register_zero3_external_params(accelerator: Accelerator, model: torch.nn.Module) -> int:
    """Let ZeRO-3 gather the small non-UNet parameters whenever the whole model runs forward.

    ZeRO-3 gathers a module's parameters only around that module's own ``forward``; SGDM reads some
    (the contrastive temperature, the learned null condition, subject embeddings) from its top-level
    forward through helper methods, where they would still be partitioned (size 0). They are a tiny
    fraction of the UNet, which stays fully sharded. Returns how many were registered.
    """
    if not is_zero3(accelerator):
        return 0
    import deepspeed

    module = accelerator.unwrap_model(model)
    external = [p for name, p in module.named_parameters() if not name.startswith("unet.")]
    for param in external:
        deepspeed.zero.register_external_parameter(module, param)
    return len(external)


def check_replicas(accelerator: Accelerator, model: torch.nn.Module) -> float | None:
    """All ranks of a replicated strategy (DDP, ZeRO-1/2) must hold identical weights.

    Returns the shared fingerprint (None where parameters are sharded: ZeRO-3, FSDP). Collective.
    Catches the silent failure where processes train side by side without synchronising.
    """
    if is_zero3(accelerator) or accelerator.distributed_type == DistributedType.FSDP:
        return None
    params = [p.detach().double() for p in accelerator.unwrap_model(model).parameters()]
    # Position-weighted sums: a permutation or a one-element difference changes the fingerprint.
    fingerprint = torch.stack(
        [sum((p.flatten() * torch.arange(1, p.numel() + 1, device=p.device)).sum() for p in params)]
    ).to(accelerator.device)
    gathered = accelerator.gather(fingerprint)
    spread = (gathered.max() - gathered.min()).abs().item()
    if spread > 1e-9 * max(1.0, gathered.abs().max().item()):
        raise DistributedSetupError(
            f"ranks hold different weights (fingerprints {gathered.tolist()}): gradients were not synchronised"
        )
    return float(gathered[0])


def input_dtype(accelerator: Accelerator) -> torch.dtype | None:
    """The dtype float inputs must have for the prepared model; None: leave them float32.

    DeepSpeed casts the whole module (weights and buffers) to bf16/fp16 and runs no autocast, so its
    inputs must match; DDP/FSDP under accelerate keep fp32 weights and autocast the forward.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)


def to_device(batch: dict, device: torch.device, dtype: torch.dtype | None) -> dict:
    """The one place a batch is moved (and float tensors cast) for the model; others pass through."""
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            cast = dtype if dtype is not None and value.is_floating_point() else None
            value = value.to(device, dtype=cast, non_blocking=True)
        out[key] = value
    return out


def micro_batch_seed(seed: int, rank: int, step: int, micro: int) -> int:
    """A 63-bit seed for rank ``rank``'s micro-batch ``micro`` of optimiser step ``step``.

    Reseeding torch's generators from it before every micro-batch gives each rank its own noise,
    timestep and dropout stream, and makes a resumed run draw exactly what the uninterrupted one did
    (no RNG state to restore).
    """
    digest = hashlib.blake2b(f"{seed}/{rank}/{step}/{micro}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
