"""EEG augmentations applied to the encoder's input in training mode only (a forward pre-hook, so
state dicts and inference are unchanged): random time shift, channel dropout, additive noise.

With ~100 images × 4 repetitions an encoder sees each stimulus a few hundred times an epoch; these make
those copies differ in ways the EEG does (latency jitter, bad channels, sensor noise) so the head
learns the image, not the trial (docs/decoding.md, cause 3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sgdm_dist.config.model import EncoderConfig


def augment(eeg: Tensor, cfg: EncoderConfig) -> Tensor:
    """eeg [B, C, T] → augmented copy (torch's global RNG; identity when every knob is 0)."""
    b, c, t = eeg.shape
    if cfg.augment_shift > 0:
        # Shift each trial by up to ±augment_shift samples, padding with the edge value.
        shift = torch.randint(-cfg.augment_shift, cfg.augment_shift + 1, (b,), device=eeg.device)
        idx = (torch.arange(t, device=eeg.device)[None] - shift[:, None]).clamp(0, t - 1)
        eeg = eeg.gather(2, idx[:, None, :].expand(b, c, t))
    if cfg.augment_channel_drop > 0:
        keep = torch.rand(b, c, 1, device=eeg.device) >= cfg.augment_channel_drop
        eeg = eeg * keep / (1 - cfg.augment_channel_drop)
    if cfg.augment_noise > 0:
        scale = eeg.std(dim=(1, 2), keepdim=True)
        eeg = eeg + cfg.augment_noise * scale * torch.randn_like(eeg)
    return eeg


def attach(encoder: nn.Module, cfg: EncoderConfig) -> nn.Module:
    """Register the augmentation on ``encoder`` (no-op when every knob is 0); returns it."""
    if not (cfg.augment_shift or cfg.augment_channel_drop or cfg.augment_noise):
        return encoder

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not module.training:
            return None
        return (augment(args[0], cfg), *args[1:])

    encoder.register_forward_pre_hook(hook)
    return encoder
