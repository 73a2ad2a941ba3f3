"""Pieces shared by the convolutional encoders: shape checks, time scaling, the z/token readout."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sgdm_dist.models.encoder import EncoderOutput

# The published encoders' kernels are given in samples at a reference rate over a ~1 s epoch
# (NICE/ATM: 250 samples; EEGNet: 128 Hz). Scaling them by n_times keeps them constant in seconds.
NICE_TIMES = 250


def scaled(samples: int, n_times: int, reference: int, minimum: int = 1) -> int:
    """A kernel of ``samples`` at ``reference`` samples per epoch, rescaled to ``n_times``."""
    return max(minimum, round(samples * n_times / reference))


def check_shape(eeg: Tensor, n_channels: int, n_times: int) -> None:
    if tuple(eeg.shape[1:]) != (n_channels, n_times):
        raise ValueError(
            f"EEG batch has shape [B, {eeg.shape[1]}, {eeg.shape[2]}] but the encoder was "
            f"built for [B, {n_channels}, {n_times}] (channels, times)"
        )


def feature_width(module: nn.Module, n_channels: int, n_times: int) -> int:
    """Flattened output width of ``module`` on one [1, 1, C, T] input (probed once at build time)."""
    with torch.no_grad():
        was = module.training
        module.eval()
        width = module(torch.zeros(1, 1, n_channels, n_times)).flatten(1).shape[1]
        module.train(was)
    return width


class Readout(nn.Module):
    """Flattened features [B, F] → z [B, D] and ``n_tokens`` tokens [B, K, D] for cross-attention."""

    def __init__(self, features: int, dim: int, n_tokens: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.z = nn.Linear(features, dim)
        self.tokens = nn.Linear(dim, n_tokens * dim)
        self.norm = nn.LayerNorm(dim)
        self.n_tokens, self.dim = n_tokens, dim
        # The tokens only condition the UNet: no alignment loss reaches them, so the alignment stage
        # leaves them frozen (DDP refuses parameters without a gradient; training/stages.py).
        for module in (self.tokens, self.norm):
            module.diffusion_only = True

    def forward(self, features: Tensor) -> EncoderOutput:
        z = self.z(self.drop(features))
        tokens = self.norm(self.tokens(z).reshape(-1, self.n_tokens, self.dim))
        return EncoderOutput(z=z, tokens=tokens)
