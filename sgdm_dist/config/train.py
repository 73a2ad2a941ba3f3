"""Train section: optimisation, schedule, checkpoints, tracking."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sgdm_dist.config.base import Section


class TrainConfig(Section):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_steps: int = Field(500, ge=0)
    align_steps: int = Field(2000, ge=0, description="Stage 1: encoder + semantic head only.")
    diffusion_steps: int = Field(20000, ge=0, description="Stage 2: diffusion (+ alignment) loss.")
    joint: bool = Field(False, description="Train both losses from step 0 instead of two stages.")
    grad_accum: int = Field(1, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    ema_decay: float | None = Field(0.9999, gt=0, lt=1)
    checkpoint_every: int = Field(1000, gt=0)
    keep_last: int = Field(3, gt=0)
    log_every: int = Field(50, gt=0)
    tracking_uri: str | None = Field(
        None, description="MLflow URI; None → MLFLOW_TRACKING_URI or local SQLite."
    )

    @model_validator(mode="after")
    def _some_steps(self) -> TrainConfig:
        if self.align_steps + self.diffusion_steps == 0:
            raise ValueError("align_steps + diffusion_steps must be > 0")
        return self
