"""Model section: EEG encoder, semantic head, multi-scale conditioning, UNet and diffusion settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sgdm_dist.config.base import Section


class EncoderConfig(Section):
    dim: int = Field(256, gt=0, description="Width of z_eeg.")
    heads: int = Field(4, gt=0)
    depth: int = Field(2, ge=0)
    n_tokens: int = Field(
        4, gt=0, description="Length of the EEG token sequence fed to cross-attention."
    )
    dropout: float = Field(0.1, ge=0, lt=1)
    subject_embedding: bool = True


class UNetConfig(Section):
    pretrained: str | None = Field(
        None, description="Stable-Diffusion UNet folder or hub id; None → from scratch."
    )
    block_out_channels: list[int] = Field(default_factory=lambda: [320, 640, 1280, 1280])
    layers_per_block: int = Field(2, gt=0)
    cross_attention_dim: int = Field(768, gt=0)
    attention_head_dim: int = Field(8, gt=0)
    latent_channels: int = Field(4, gt=0)
    latent_size: int = Field(64, gt=0, description="Latent height = width (image px / 8).")


class DiffusionConfig(Section):
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    num_train_timesteps: int = Field(1000, gt=0)
    min_snr_gamma: float | None = Field(5.0, gt=0)
    cond_dropout: float = Field(
        0.1, ge=0, le=1, description="Probability of the null condition (CFG)."
    )


class ModelConfig(Section):
    variant: Literal["sgdm", "reference"] = "sgdm"
    clip_dim: int = Field(1024, gt=0)
    n_classes: int | None = Field(
        None, description="Concept classes for category guidance; None → off."
    )
    lambda_align: float = Field(1.0, ge=0)
    lambda_mse: float = Field(0.0, ge=0)
    lambda_cls: float = Field(0.0, ge=0)
    encoder: EncoderConfig = EncoderConfig()
    unet: UNetConfig = UNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
