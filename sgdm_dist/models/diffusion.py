"""Noise schedulers (DDPM for training; DDIM / DPM-Solver++ for sampling), targets, min-SNR weights, CFG."""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.training_utils import compute_snr
from torch import Tensor

from sgdm_dist.config.model import DiffusionConfig

Sampler = Literal["ddim", "dpm++"]


def make_train_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
    )


def make_sampler(train_scheduler: DDPMScheduler, kind: Sampler) -> SchedulerMixin:
    """A deterministic sampler sharing the training noise schedule."""
    config = train_scheduler.config
    if kind == "ddim":
        return DDIMScheduler.from_config(config, set_alpha_to_one=False, steps_offset=1)
    if kind == "dpm++":
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2
        )
    raise ValueError(f"unknown scheduler {kind!r}: expected 'ddim' or 'dpm++'")


def diffusion_target(
    scheduler: DDPMScheduler, latent: Tensor, noise: Tensor, timesteps: Tensor
) -> Tensor:
    """What the UNet regresses: ε, or v = √ᾱ·ε − √(1−ᾱ)·x₀."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    return scheduler.get_velocity(latent, noise, timesteps)


def min_snr_weights(
    scheduler: DDPMScheduler, timesteps: Tensor, gamma: float | None
) -> Tensor | None:
    """Per-sample loss weights [B] of Min-SNR-γ (Hang et al. 2023), or None when off."""
    if gamma is None:
        return None
    snr = compute_snr(scheduler, timesteps)  # ᾱ / (1 − ᾱ), diffusers' own
    clipped = snr.clamp(max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def guide(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + s·(cond − uncond); s = 1 is the conditional prediction."""
    return uncond + scale * (cond - uncond)


def timestep_batch(t: Tensor | int, batch: int, device: torch.device) -> Tensor:
    return torch.as_tensor(t, device=device).long().expand(batch)
