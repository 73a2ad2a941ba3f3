"""A real accelerate training setup small enough for fault tests (shared by the checkpoint tests
and the child processes of the kill tests)."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from sgdm_dist.training.checkpoint import TrainerState, save_checkpoint
from sgdm_dist.training.ema import EMA


class Trainer:
    """A prepared model + AdamW (+ EMA) that can take a step and save/resume like the real loop."""

    def __init__(self, root: Path, width: int = 16, ema: bool = True) -> None:
        self.root = root
        self.acc = Accelerator(cpu=True)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 4))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.ema = EMA(self.model, 0.9, keep=True) if ema else None
        self.step = 0

    def train(self) -> None:
        loss = self.model(torch.randn(4, 8)).pow(2).mean()
        self.acc.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1

    def save(self, keep_last: int = 10) -> Path:
        return save_checkpoint(
            self.acc, self.root, TrainerState(step=self.step), self.ema, keep_last
        )

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}
