"""Structure guidance: the coarse → fine route of SGDM.

A low-level head maps z_eeg to the image's coarse VAE latent (``loss/structure``: MSE against the
cached latent, trained in every stage with the other losses). At sampling time the reverse process
starts from that structure instead of pure noise, img2img style: the predicted latent is noised to the
timestep a fraction ``strength`` of the way through the schedule, and only the remaining steps run.

* strength 1: pure noise, structure unused (text-to-image style sampling);
* strength 0: the predicted latent decoded as is (no diffusion: the blurry conditional mean);
* in between: the diffusion UNet refines the EEG's layout and colours into detail.

The default was chosen by measurement (docs/model.md, "Structure guidance").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class StructureHead(nn.Module):
    """z_eeg [B, D] → predicted latent [B, C, h, w] (in cached-latent units, × VAE scaling)."""

    def __init__(self, in_dim: int, latent_shape: tuple[int, int, int], hidden: int) -> None:
        super().__init__()
        self.latent_shape = latent_shape
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, math.prod(latent_shape)),
        )

    def forward(self, z_eeg: Tensor) -> Tensor:
        return self.net(z_eeg).reshape(z_eeg.shape[0], *self.latent_shape)


def structure_loss(pred: Tensor, latent: Tensor) -> Tensor:
    """Mean squared error per latent element (scalar)."""
    return (pred.float() - latent.float()).pow(2).mean()


def start_timesteps(sampler: object, steps: int, strength: float) -> tuple[Tensor, int]:
    """The sampler's timesteps from ``strength`` on (img2img): returns (timesteps, skipped steps).

    ``sampler.set_timesteps(steps)`` must have been called. With strength s the last
    ``round(s · steps)`` timesteps run (at least 1 when s > 0)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"structure strength must be in [0, 1], got {strength}")
    timesteps = sampler.timesteps  # type: ignore[attr-defined]
    keep = 0 if strength == 0 else max(1, min(steps, round(strength * steps)))
    skip = steps - keep
    order = getattr(sampler, "order", 1)
    if hasattr(sampler, "set_begin_index"):  # multistep solvers index their sigmas from here
        sampler.set_begin_index(skip * order)
    return timesteps[skip * order :], skip


def noised_start(sampler: object, structure: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The structure latent [B, C, h, w] noised to timestep ``t`` (the img2img starting point)."""
    timestep = torch.as_tensor(t, device=structure.device).reshape(1).expand(structure.shape[0])
    return sampler.add_noise(structure, noise, timestep)  # type: ignore[attr-defined]
