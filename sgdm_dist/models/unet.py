"""The denoiser: a diffusers ``UNet2DConditionModel`` sized from config or initialised from Stable Diffusion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from sgdm_dist.config import ConfigError
from sgdm_dist.config.model import UNetConfig


def unet_kwargs(cfg: UNetConfig, vector_dim: int | None) -> dict[str, Any]:
    """Constructor arguments for a from-scratch UNet; blocks follow Stable Diffusion's pattern
    (cross-attention at every resolution but the coarsest, plus the mid block)."""
    n = len(cfg.block_out_channels)
    down = ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"]
    up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1)
    if n == 1:  # a single level still needs attention to see the condition
        down, up = ["CrossAttnDownBlock2D"], ["CrossAttnUpBlock2D"]
    return dict(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        **_vector_kwargs(vector_dim),
    )


def _vector_kwargs(vector_dim: int | None) -> dict[str, Any]:
    if vector_dim is None:
        return dict(class_embed_type=None, projection_class_embeddings_input_dim=None)
    return dict(class_embed_type="projection", projection_class_embeddings_input_dim=vector_dim)


def pretrained_cross_attention_dim(cfg: UNetConfig) -> int:
    """The conditioning width of the pretrained UNet named by ``cfg.pretrained`` (reads config only)."""
    assert cfg.pretrained is not None
    local = Path(cfg.pretrained).expanduser()
    if cfg.pretrained.startswith(("/", ".", "~")) and not local.is_dir():
        raise ConfigError(f"model.unet.pretrained: cannot load '{cfg.pretrained}': no such folder")
    try:
        config = UNet2DConditionModel.load_config(cfg.pretrained, subfolder=_subfolder(cfg))
    except OSError as exc:  # diffusers: not a UNet folder, nor a hub id it can reach or has cached
        raise ConfigError(f"model.unet.pretrained: cannot load '{cfg.pretrained}': {exc}") from None
    width = config["cross_attention_dim"]
    if not isinstance(width, int):
        raise ValueError(
            f"unet.pretrained {cfg.pretrained}: per-block cross_attention_dim {width} is not supported"
        )
    return width


def build_unet(cfg: UNetConfig, vector_dim: int | None) -> UNet2DConditionModel:
    """A new UNet: random init, or ``cfg.pretrained``'s weights with our conditioning attached."""
    if cfg.pretrained is None:
        return UNet2DConditionModel(**unet_kwargs(cfg, vector_dim))
    return load_pretrained_unet(cfg, vector_dim)


def load_pretrained_unet(cfg: UNetConfig, vector_dim: int | None) -> UNet2DConditionModel:
    """Initialise from a Stable-Diffusion UNet (folder or hub id).

    The pretrained cross-attention width is kept (our conditioning projects to it, so every attention
    weight is reused); the added-vector MLP is new and its output layer starts at zero, so at step 0
    the time embedding — and the UNet's behaviour — is exactly the pretrained one.
    """
    assert cfg.pretrained is not None
    unet = UNet2DConditionModel.from_pretrained(
        cfg.pretrained,
        subfolder=_subfolder(cfg),
        low_cpu_mem_usage=False,
        sample_size=cfg.latent_size,
        **_vector_kwargs(vector_dim),
    )
    if unet.config.in_channels != cfg.latent_channels:
        raise ValueError(
            f"unet.pretrained {cfg.pretrained} takes {unet.config.in_channels} latent channels, "
            f"config unet.latent_channels is {cfg.latent_channels}"
        )
    if vector_dim is not None:
        with torch.no_grad():
            # Weights missing from the checkpoint may come back uninitialised (torch.empty: any
            # value, NaN included) from diffusers' loader: initialise the new MLP explicitly.
            unet.class_embedding.linear_1.reset_parameters()
            unet.class_embedding.linear_2.weight.zero_()
            unet.class_embedding.linear_2.bias.zero_()
    return unet


def _subfolder(cfg: UNetConfig) -> str | None:
    if cfg.pretrained_subfolder is not None:
        return cfg.pretrained_subfolder
    local = Path(cfg.pretrained).expanduser()
    if local.is_dir():
        return "unet" if (local / "unet" / "config.json").is_file() else None
    return "unet"  # a hub id names a whole Stable-Diffusion repository
