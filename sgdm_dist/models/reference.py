"""The seed sketch's architecture, kept reachable as ``model.variant: reference`` for benchmarks.

Faithful to the sketch: temporal convolutions over all channels at once, multi-head attention across
*time* (the sketch called it spatial), mean-pooled z_eeg, and one conditioning token concat(z_eeg, z_sem)
projected to the UNet width. Its defects are not copied: z_sem comes from the EEG (not a random vector
at inference), guidance is real CFG (against an all-zero null token, the sketch had none), and there
are no unused multi-scale projections. There is no subject conditioning.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sgdm_dist.config.model import EncoderConfig
from sgdm_dist.models.conditioning import Condition
from sgdm_dist.models.encoder import EncoderOutput


class ReferenceEncoder(nn.Module):
    """[B, C, T] → z_eeg [B, D] with a single token [B, 1, D]."""

    def __init__(
        self, cfg: EncoderConfig, *, n_channels: int, n_times: int, n_subjects: int
    ) -> None:
        super().__init__()
        d, k = cfg.dim, cfg.temporal_kernel
        self.n_channels, self.n_times = n_channels, n_times
        self.gradient_checkpointing = False
        self.conv = nn.Sequential(
            nn.Conv1d(n_channels, d, k, padding=k // 2),
            nn.BatchNorm1d(d),
            nn.GELU(),
            nn.Conv1d(d, d, k, padding=k // 2),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
        )
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)

    def forward(self, eeg: Tensor, subject: Tensor) -> EncoderOutput:
        if tuple(eeg.shape[1:]) != (self.n_channels, self.n_times):
            raise ValueError(
                f"EEG batch has shape [B, {eeg.shape[1]}, {eeg.shape[2]}] but the encoder was "
                f"built for [B, {self.n_channels}, {self.n_times}] (channels, times)"
            )
        h = self.norm(self.conv(eeg).transpose(1, 2))  # [B, T, D]
        h = h + self.attn(h, h, h, need_weights=False)[0]
        z = h.mean(dim=1)
        return EncoderOutput(z=z, tokens=z[:, None, :])


class ReferenceConditioning(nn.Module):
    """concat(z_eeg, ẑ_sem) → one cross-attention token; the null condition is all zeros."""

    def __init__(self, *, eeg_dim: int, clip_dim: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(eeg_dim + clip_dim, cross_attention_dim)
        self.n_tokens = 1
        self.vector_dim = None
        self.cross_attention_dim = cross_attention_dim

    def forward(self, z_eeg: Tensor, eeg_tokens: Tensor, z_sem: Tensor) -> Condition:
        return Condition(self.proj(torch.cat([z_eeg, z_sem], dim=-1))[:, None, :], None)

    def null(self, batch: int) -> Condition:
        tokens = self.proj.weight.new_zeros(batch, 1, self.cross_attention_dim)
        return Condition(tokens, None)
