"""Exponential moving average of the weights, kept on the model's device and sharded like the model.

Each rank blends the tensors it already holds: the whole parameter under DDP / ZeRO-1/2 (only the
main rank keeps a shadow there: every replica is identical), its ZeRO-3 partition (``ds_tensor``),
or its FSDP2 shard (a DTensor). So an update is one fused ``lerp`` per group of tensors on the device,
with no copy to the host and no gather; gathering happens only when a full copy is written
(:meth:`EMA.gather_state_dict`, collective). Only parameters that train now (``requires_grad``) are
blended: a UNet frozen during the alignment stage costs nothing.

diffusers' ``EMAModel`` is not used: it keeps the shadow in the parameters' dtype (bf16 under
DeepSpeed, where a 0.9999 decay rounds every update away), copies frozen parameters every step and
gathers each ZeRO-3 parameter in full on every rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

COUNTER = "__ema_updates__"
CHUNK = 64  # tensors per fused lerp: bounds the fp32 temporaries of bf16 parameters


@dataclass(frozen=True)
class _Zero3Shard:
    """Where a ZeRO-3 partition sits in its parameter: ``flat[rank * size:(rank + 1) * size]``."""

    shape: torch.Size
    numel: int
    group: Any  # the parameter's data-parallel process group


class EMA:
    """fp32 shadow of a model's floating-point parameters, keyed by parameter name.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the diffusers
    convention), so a short run is not dominated by the random initialisation. ``keep``: this is the
    main rank (it writes checkpoints); with replicated parameters only it holds a shadow.
    """

    def __init__(self, model: nn.Module, decay: float, *, keep: bool, zero3: bool = False) -> None:
        del zero3  # sharding is read from the parameters themselves
        self.decay = decay
        self.main = keep
        self.updates = 0
        self._bind(model, {})

    def _bind(self, model: nn.Module, full: dict[str, torch.Tensor]) -> None:
        """Lay the shadow out like ``model``'s parameters; start from ``full`` where it has a name."""
        params = list(_float_params(model))
        # Listed once: walking named_parameters() every step costs more than the lerp on a small
        # model. Bound to this module until track() rebinds it.
        self._model, self._params = model, params
        self.zero3 = {n: _zero3_shard(p) for n, p in params if hasattr(p, "ds_tensor")}
        self.sharded = bool(self.zero3) or any(isinstance(p, DTensor) for _, p in params)
        self.keep = self.main or self.sharded  # under sharding every rank holds its part
        self.shadow: dict[str, torch.Tensor] = {}
        if not self.keep:
            return
        with torch.no_grad():
            self.shadow = {n: _held(p).detach().float().clone() for n, p in params}
            for name, shadow in self.shadow.items():  # same order on every rank: collectives
                if name in full:
                    _local(shadow).copy_(self._part(name, shadow, full[name].float()))

    def track(self, model: nn.Module) -> None:
        """Collective: follow a re-prepared model (the stage switch), keeping shadows and the count.

        Shadows of parameters ``model`` shares by name carry over (re-sharded to its layout); new
        parameters start from their current weights.
        """
        full = {n: self._gather(n, t) for n, t in self.shadow.items()}  # every rank, when sharded
        self._bind(model, full)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights in; call after every optimiser step, on every rank."""
        if self.keep:
            params = self._params if model is self._model else _float_params(model)
            # Only what trains now: frozen parameters (the UNet while aligning) keep their shadow.
            pairs = [
                (_local(self.shadow[n]), _local(_held(p))) for n, p in params if p.requires_grad
            ]
            for start in range(0, len(pairs), CHUNK):
                chunk = pairs[start : start + CHUNK]
                torch._foreach_lerp_(
                    [s for s, _ in chunk], [w.float() for _, w in chunk], 1.0 - self.current_decay()
                )
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full tensors on the host plus the update counter; replicated parameters only (no comms)."""
        if self.sharded:
            raise RuntimeError("sharded EMA: call gather_state_dict() on every rank instead")
        return {**{n: t.cpu() for n, t in self.shadow.items()}, COUNTER: torch.tensor(self.updates)}

    def gather_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective: full fp32 host tensors + counter on the main rank, ``{}`` on the others."""
        if not self.sharded:
            return self.state_dict() if self.main else {}
        out: dict[str, torch.Tensor] = {}
        for name, shadow in self.shadow.items():  # same order on every rank
            full = self._gather(name, shadow)
            if self.main:
                out[name] = full.cpu()
        return {**out, COUNTER: torch.tensor(self.updates)} if self.main else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Full tensors (as written by the main rank); call on every rank, each takes its part."""
        state = dict(state)
        self.updates = int(state.pop(COUNTER))
        if not self.keep:
            return
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks parameters: {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, shadow in self.shadow.items():
                _local(shadow).copy_(self._part(name, shadow, state[name].float()))

    def _gather(self, name: str, shadow: torch.Tensor) -> torch.Tensor:
        """The full tensor, on every rank of the parameter's group (collective when sharded)."""
        if isinstance(shadow, DTensor):
            return shadow.full_tensor()
        if name not in self.zero3:
            return shadow
        shard = self.zero3[name]
        pieces = [torch.empty_like(shadow) for _ in range(dist.get_world_size(shard.group))]
        dist.all_gather(pieces, shadow.contiguous(), group=shard.group)
        return torch.cat(pieces)[: shard.numel].view(shard.shape)

    def _part(self, name: str, shadow: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of a full tensor, on the shadow's device."""
        if isinstance(shadow, DTensor):
            full = full.to(shadow.device)
            return _local(distribute_tensor(full, shadow.device_mesh, shadow.placements))
        if name not in self.zero3:
            if full.shape != shadow.shape:
                raise ValueError(f"EMA {name}: shape {tuple(full.shape)} != {tuple(shadow.shape)}")
            return full
        shard = self.zero3[name]
        if full.numel() != shard.numel:
            raise ValueError(f"EMA {name}: {full.numel()} elements != {shard.numel}")
        size = shadow.numel()
        flat = torch.zeros(size * dist.get_world_size(shard.group), dtype=full.dtype)
        flat[: shard.numel] = full.flatten()
        rank = dist.get_rank(shard.group)
        return flat[rank * size : (rank + 1) * size]


def _float_params(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if p.is_floating_point())


def _held(p: nn.Parameter) -> torch.Tensor:
    """The tensor this rank holds for ``p``: its ZeRO-3 partition, else the parameter itself."""
    return p.ds_tensor if hasattr(p, "ds_tensor") else p


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _zero3_shard(p: nn.Parameter) -> _Zero3Shard:
    return _Zero3Shard(shape=p.ds_shape, numel=p.ds_numel, group=p.ds_process_group)
