"""EEG encoder: ``eeg [B, C, T] → z_eeg [B, D]`` plus a short token sequence ``[B, K, D]``.

Each channel's time course is cut into patches by temporal convolutions shared across channels, giving a
grid of ``C × P`` tokens (P = ceil(T / patch_size)). Axial attention blocks then alternate attention
*across channels* at each time patch (spatial) and *across time patches* within each channel (temporal),
which costs O(C² + P²) per grid cell instead of O((C·P)²). K learned queries read the grid out into the
token sequence the UNet cross-attends to; z_eeg is a linear readout of the flattened grid (reduced to
``readout_dim`` features per cell) plus the mean token.

Subjects: ids are 1-based; 0 (or any id > n_subjects) is "unknown" and selects a shared, subject-agnostic
entry that is trained by replacing real ids with 0 at rate ``subject_dropout``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sgdm_dist.config.model import EncoderConfig


@dataclass
class EncoderOutput:
    z: Tensor  # [B, D] pooled EEG embedding
    tokens: Tensor  # [B, K, D] token sequence for cross-attention


def sanitize_subjects(subject: Tensor, n_subjects: int) -> Tensor:
    """Map ids outside 1..n_subjects (0, unseen subjects) to the fallback index 0; int64 [B]."""
    subject = subject.long()
    known = (subject >= 1) & (subject <= n_subjects)
    return torch.where(known, subject, torch.zeros_like(subject))


def drop_subjects(subject: Tensor, p: float) -> Tensor:
    """Replace each id by 0 with probability p (torch's global RNG), so the fallback is trained."""
    if p <= 0:
        return subject
    drop = torch.rand(subject.shape, device=subject.device) < p
    return torch.where(drop, torch.zeros_like(subject), subject)


class SubjectSpatialLayer(nn.Module):
    """A per-subject C×C channel-mixing matrix, initialised to identity (row 0: agnostic fallback)."""

    def __init__(self, n_subjects: int, n_channels: int) -> None:
        super().__init__()
        eye = torch.eye(n_channels).expand(n_subjects + 1, n_channels, n_channels)
        self.weight = nn.Parameter(eye.clone())

    def forward(self, eeg: Tensor, subject: Tensor) -> Tensor:
        """eeg [B, C, T], subject [B] (sanitised) → [B, C, T]."""
        return torch.bmm(self.weight[subject], eeg)


class AxialBlock(nn.Module):
    """Pre-norm transformer block over a [B, C, P, D] grid: channel attention, time attention, MLP."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_s = nn.LayerNorm(dim)
        self.attn_s = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_t = nn.LayerNorm(dim)
        self.attn_t = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, c, p, d = x.shape
        # Spatial: sequences over channels, one per (sample, time patch).
        s = x.transpose(1, 2).reshape(b * p, c, d)
        h = self.norm_s(s)
        s = s + self.drop(self.attn_s(h, h, h, need_weights=False)[0])
        x = s.reshape(b, p, c, d).transpose(1, 2)
        # Temporal: sequences over time patches, one per (sample, channel).
        t = x.reshape(b * c, p, d)
        h = self.norm_t(t)
        t = t + self.drop(self.attn_t(h, h, h, need_weights=False)[0])
        x = t.reshape(b, c, p, d)
        return x + self.drop(self.mlp(self.norm_m(x)))


class EEGEncoder(nn.Module):
    """[B, C, T] EEG (any C, T fixed at build time from the manifest) → :class:`EncoderOutput`."""

    def __init__(
        self, cfg: EncoderConfig, *, n_channels: int, n_times: int, n_subjects: int
    ) -> None:
        super().__init__()
        d = cfg.dim
        self.n_channels, self.n_times, self.n_subjects = n_channels, n_times, n_subjects
        self.patch_size = cfg.patch_size
        self.n_patches = math.ceil(n_times / cfg.patch_size)
        self.subject_dropout = cfg.subject_dropout
        self.gradient_checkpointing = False

        self.subject_layer = (
            SubjectSpatialLayer(n_subjects, n_channels)
            if cfg.subject_conditioning == "layer"
            else None
        )
        self.subject_embedding = (
            nn.Embedding(n_subjects + 1, d) if cfg.subject_conditioning == "embedding" else None
        )
        k = cfg.temporal_kernel
        self.stem = nn.Sequential(
            nn.Conv1d(1, d // 2, k, padding=k // 2),
            nn.GELU(),
            nn.Conv1d(d // 2, d, cfg.patch_size, stride=cfg.patch_size),
        )
        self.channel_pos = nn.Parameter(torch.randn(n_channels, d) * 0.02)
        self.time_pos = nn.Parameter(torch.randn(self.n_patches, d) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(AxialBlock(d, cfg.heads, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        # z_eeg reads the flattened grid: where (channel, time) a feature occurs is the signal, and a
        # mean over the grid would throw exactly that away.
        self.flat_reduce = nn.Linear(d, cfg.readout_dim)
        self.flat_proj = nn.Linear(n_channels * self.n_patches * cfg.readout_dim, d)
        self.queries = nn.Parameter(torch.randn(cfg.n_tokens, d) * 0.02)
        self.readout = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.token_norm = nn.LayerNorm(d)

    def subjects(self, subject: Tensor) -> Tensor:
        """Sanitised ids, with subject dropout applied in training mode."""
        subject = sanitize_subjects(subject, self.n_subjects)
        if self.training:
            subject = drop_subjects(subject, self.subject_dropout)
        return subject

    def forward(self, eeg: Tensor, subject: Tensor) -> EncoderOutput:
        b, c, t = eeg.shape
        if (c, t) != (self.n_channels, self.n_times):
            raise ValueError(
                f"EEG batch has shape [B, {c}, {t}] but the encoder was built for "
                f"[B, {self.n_channels}, {self.n_times}] (channels, times)"
            )
        subject = self.subjects(subject.to(eeg.device))
        if self.subject_layer is not None:
            eeg = self.subject_layer(eeg, subject)
        # Per-channel temporal convolutions; right-pad so the last patch is complete.
        x = eeg.reshape(b * c, 1, t)
        x = F.pad(x, (0, self.n_patches * self.patch_size - t))
        x = self.stem(x)  # [B*C, D, P]
        x = x.reshape(b, c, -1, self.n_patches).permute(0, 1, 3, 2)  # [B, C, P, D]
        x = x + self.channel_pos[None, :, None, :] + self.time_pos[None, None, :, :]
        if self.subject_embedding is not None:
            x = x + self.subject_embedding(subject)[:, None, None, :]
        x = self.drop(x)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        grid = self.norm(x).reshape(b, c * self.n_patches, -1)  # [B, C*P, D]
        queries = self.queries.expand(b, -1, -1)
        tokens = self.token_norm(queries + self.readout(queries, grid, grid, need_weights=False)[0])
        z = self.flat_proj(self.drop(self.flat_reduce(grid).flatten(1)))
        # z also reads the tokens so the alignment stage trains the readout the UNet will use.
        return EncoderOutput(z=z + tokens.mean(dim=1), tokens=tokens)
