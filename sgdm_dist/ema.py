"""Exponential moving average of the trainable weights, correct under DDP, ZeRO-2/3 and FSDP.

Only rank 0 keeps the shadow copy (it is what gets saved); every rank takes part in gathering the
parameters, because under ZeRO-3 each rank holds just a shard and gathering is a collective.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """fp32 shadow of a model's parameters, keyed by parameter name.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the diffusers
    convention), so a short run is not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float, *, keep: bool, zero3: bool = False) -> None:
        self.decay = decay
        self.keep = keep
        self.zero3 = zero3
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {}
        with self._gathered(model):
            if keep:
                self.shadow = {
                    name: p.detach().float().cpu().clone() for name, p in _trainable(model)
                }

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights in; call after every optimiser step, on every rank."""
        decay = self.current_decay()
        with self._gathered(model):
            if self.keep:
                for name, p in _trainable(model):
                    self.shadow[name].lerp_(p.detach().float().cpu(), 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors: the shadow plus the update counter."""
        return {**self.shadow, "__ema_updates__": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.updates = int(state.pop("__ema_updates__"))
        if self.keep:
            missing = set(self.shadow) - set(state)
            if missing:
                raise KeyError(f"EMA state lacks parameters: {sorted(missing)[:5]}")
            self.shadow = {name: state[name].float() for name in self.shadow}

    def _gathered(self, model: nn.Module) -> contextlib.AbstractContextManager:
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        params = [p for _, p in _trainable(model)]
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _trainable(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((name, p) for name, p in model.named_parameters() if p.requires_grad)
