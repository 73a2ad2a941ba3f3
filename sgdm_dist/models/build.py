"""``build_model(cfg, n_channels=…, n_times=…, n_subjects=…)``: the one way the rest of the code makes an SGDM."""

from __future__ import annotations

from sgdm_dist.config.model import ModelConfig
from sgdm_dist.models.sgdm import SGDM
from sgdm_dist.models.unet import build_unet, pretrained_cross_attention_dim


def conditioning_vector_dim(cfg: ModelConfig) -> int | None:
    """Width of the vector added to the UNet time embedding, or None when that route is off."""
    if cfg.variant == "sgdm" and cfg.conditioning.time_embedding:
        return cfg.encoder.dim + cfg.clip_dim
    return None


def build_model(cfg: ModelConfig, *, n_channels: int, n_times: int, n_subjects: int) -> SGDM:
    """A new SGDM for EEG of shape [B, n_channels, n_times] from subjects 1..n_subjects.

    With ``cfg.unet.pretrained`` the UNet starts from Stable-Diffusion weights and keeps their
    cross-attention width (``cfg.unet.cross_attention_dim`` is then ignored: the conditioning
    projects to the pretrained width instead).
    """
    for name, value in (
        ("n_channels", n_channels),
        ("n_times", n_times),
        ("n_subjects", n_subjects),
    ):
        if value < 1:
            raise ValueError(f"build_model: {name} must be >= 1, got {value}")
    if cfg.unet.pretrained is not None:
        pretrained_cross_attention_dim(cfg.unet)  # fails early with a clear message
    unet = build_unet(cfg.unet, conditioning_vector_dim(cfg))
    return SGDM(cfg, n_channels=n_channels, n_times=n_times, n_subjects=n_subjects, unet=unet)
