"""Synthetic inputs for the step benches (bench/train_step.py, encoder_step.py, conv_pool.py): batches
shaped like a config's, stimulus images, the reference sketch's per-step feature encoders (random
init: nothing is downloaded), and the benches' shared options and timer."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sgdm_dist.config import Config
from sgdm_dist.models import build_model

# Stable Diffusion's VAE architecture (sd-vae-ft-mse), built with random weights.
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
)


def eeg_shape(cfg: Config) -> tuple[int, int]:
    """(channels, times) of the EEG a config's preprocessing produces."""
    pre = cfg.data.preprocess
    channels = pre.channels
    n_channels = (
        17 if channels == "occipital_parietal" else 63 if channels == "all" else len(channels)
    )
    return n_channels, round((pre.tmax - pre.tmin) * pre.resample_hz)


def make_batches(
    cfg: Config, n: int, batch: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """``n`` batches: eeg [B, C, T], clip [B, D] (unit norm), latent [B, 4, s, s], ids."""
    g = torch.Generator().manual_seed(0)
    c, t = eeg_shape(cfg)
    size = cfg.model.unet.latent_size
    out = []
    for _ in range(n):
        clip = torch.nn.functional.normalize(
            torch.randn(batch, cfg.model.clip_dim, generator=g), dim=-1
        )
        out.append(
            {
                "eeg": torch.randn(batch, c, t, generator=g).to(device),
                "clip": clip.to(device),
                "latent": torch.randn(
                    batch, cfg.model.unet.latent_channels, size, size, generator=g
                ).to(device),
                "subject": torch.randint(1, 3, (batch,), generator=g).to(device),
                "concept": torch.randint(0, 10, (batch,), generator=g).to(device),
                "image_index": torch.arange(batch).to(device),
            }
        )
    return out


def make_images(cfg: Config, n: int, batch: int) -> list[list[Image.Image]]:
    rng = np.random.default_rng(0)
    size = cfg.data.features.image_size
    return [
        [
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
            for _ in range(batch)
        ]
        for _ in range(n)
    ]


def reference_encoders(
    cfg: Config, device: torch.device, clip_dir: Path
) -> Callable[[list[Image.Image]], None]:
    """CLIP + VAE of the configured architectures, random init; returns the per-step feature pass."""
    import open_clip
    from diffusers import AutoencoderKL

    from sgdm_dist.data.features import TINY_VAE_CONFIG, register_tiny_clip, to_tensor

    register_tiny_clip(clip_dir)
    feats = cfg.data.features
    clip, _, preprocess = open_clip.create_model_and_transforms(feats.clip_model, pretrained=None)
    clip = clip.eval().to(device)
    vae_cfg = TINY_VAE_CONFIG if feats.image_size <= 128 else SD_VAE
    vae = AutoencoderKL(sample_size=feats.image_size, **vae_cfg).eval().to(device)

    @torch.no_grad()
    def features(images: list[Image.Image]) -> None:
        x = torch.stack([preprocess(im) for im in images]).to(device)
        torch.nn.functional.normalize(clip.encode_image(x).float(), dim=-1)
        pixels = torch.stack([to_tensor(im, feats.image_size) for im in images]).to(device)
        vae.encode(pixels * 2 - 1).latent_dist.mean * vae.config.scaling_factor

    return features


def step_parser(description: str) -> argparse.ArgumentParser:
    """Options every step bench takes: the config (relative to the repository) and its overrides,
    the batch size, timed steps per measurement and rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="configs/demo.yaml", help="relative to the repository")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. a.b=c")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every variant")
    return parser


def median_ms(step: Callable[[], object], steps: int, warmup: int = 3) -> float:
    """Median milliseconds of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def model_of_kind(cfg: Config, kind: str, shape: tuple[int, int]) -> torch.nn.Module:
    """The SGDM of ``cfg`` with ``model.encoder.kind`` = ``kind`` for EEG ``shape`` (channels,
    samples), 2 subjects, built from seed 0 in training mode."""
    torch.manual_seed(0)
    encoder = cfg.model.encoder.model_copy(update={"kind": kind})
    model_cfg = cfg.model.model_copy(update={"encoder": encoder})
    return build_model(model_cfg, n_channels=shape[0], n_times=shape[1], n_subjects=2).train()
