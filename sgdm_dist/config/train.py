"""Train section: optimisation, schedule, checkpoints, evaluation during training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sgdm_dist.config.base import Section


class StructureRefitConfig(Section):
    """End-of-training refit of the structure head through the autoencoder's decoder (pixel MSE,
    encoder frozen, best step on the validation images; training/structure_refit.py)."""

    steps: int = Field(0, ge=0, description="0 → off: the head keeps what the loop taught it.")
    batch_size: int = Field(16, gt=0, description="Repetition-averaged (subject, image) rows.")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    feature_noise: float = Field(
        0.3, ge=0, description="Gaussian noise on z_eeg, in units of each feature's s.d."
    )
    feature_dropout: float = Field(0.3, ge=0, lt=1, description="Dropout on z_eeg.")
    eval_every: int = Field(25, gt=0, description="Steps between validation checks.")


class TrainConfig(Section):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(500, ge=0)
    align_steps: int = Field(2000, ge=0, description="Stage 1: encoder + semantic head only.")
    diffusion_steps: int = Field(20000, ge=0, description="Stage 2: diffusion (+ alignment) loss.")
    joint: bool = Field(False, description="Train both losses from step 0 instead of two stages.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimiser step.")
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    compile: bool = Field(False, description="torch.compile the model (inductor; opt-in, GPU).")
    channels_last: bool = Field(False, description="NHWC UNet weights (tensor-core convolutions).")
    tf32: bool = Field(False, description="TF32 for fp32 matmuls/convolutions (Ampere+ GPUs).")
    ema_decay: float | None = Field(0.9999, gt=0, lt=1, description="None → no EMA.")
    checkpoint_every: int = Field(1000, gt=0, description="Optimiser steps between checkpoints.")
    keep_last: int = Field(3, gt=0, description="Complete checkpoints kept on disk.")
    log_every: int = Field(50, gt=0)
    eval_every: int = Field(1000, gt=0, description="Steps between validation retrieval runs.")
    recon_images: int = Field(
        8, ge=0, description="Validation images reconstructed for the final grid."
    )
    recon_steps: int = Field(
        25, gt=0, description="Sampler steps for the training-time reconstruction grid."
    )
    subjects: list[int] | None = Field(
        None, description="Train on these subjects only (None → all)."
    )
    align_epochs: float | None = Field(
        None,
        gt=0,
        description="Alignment stage length in passes over the train split; set → overrides "
        "align_steps (sgdm_dist/training/selection.py).",
    )
    eval_every_epochs: float | None = Field(
        None,
        gt=0,
        description="Validation cadence in passes over the train split; set → overrides "
        "eval_every, so early stopping's patience (counted in validations) means the same number "
        "of epochs at any dataset size (sgdm_dist/training/selection.py).",
    )
    select_best: bool = Field(
        False, description="Align-only runs: export the best validation weights (not the last)."
    )
    early_stop_patience: int | None = Field(
        None, gt=0, description="Align-only runs: stop after N validations without improvement."
    )
    sync_every: int = Field(
        10,
        gt=0,
        description="Optimiser steps between the ranks' agreement on the stop signal and the "
        "finite-loss flag (one small all-reduce; also done before every log, validation and "
        "checkpoint).",
    )
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A non-finite loss on any rank: 'stop' raises NonFiniteLossError at the next "
        "agreement (no checkpoint is written after it); 'skip' checks every step (one host sync "
        "per step) and skips that update on all ranks.",
    )
    nonfinite_limit: int = Field(
        10, ge=0, description="With nonfinite='skip': skipped updates allowed before stopping."
    )
    structure_refit: StructureRefitConfig = StructureRefitConfig()

    @property
    def total_steps(self) -> int:
        return self.align_steps + self.diffusion_steps

    def stage_at(self, step: int) -> Literal["align", "diffusion", "joint"]:
        """Which loss the model trains at optimiser step ``step`` (0-based)."""
        if self.joint:
            return "joint"
        return "align" if step < self.align_steps else "diffusion"

    @model_validator(mode="after")
    def _some_steps(self) -> TrainConfig:
        if self.total_steps == 0:
            raise ValueError("align_steps + diffusion_steps must be > 0")
        return self
