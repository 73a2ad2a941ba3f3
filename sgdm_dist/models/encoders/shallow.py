"""NICE's temporal-spatial convolution and ATM-S (channel attention with subject tokens, then NICE).

NICE (Song et al., "Decoding natural images from EEG for object recognition", ICLR 2024): a temporal
convolution (40 filters, 25 samples at 250 Hz), average pooling (51, stride 5), batch norm, ELU, a
spatial convolution over all channels, batch norm, ELU, dropout 0.5, a 1×1 projection; flattened.
ATM-S (Li et al., "Visual decoding and reconstruction via EEG embeddings with guided diffusion",
NeurIPS 2024): each channel's time course becomes one token (a linear embedding of the whole epoch),
a learned subject token joins them, one transformer encoder layer attends across channels, and the
channel tokens go through NICE's convolution. Kernels scale with ``n_times`` (see ``common.scaled``).

The temporal convolution and the average pooling run as one strided convolution (``ConvPool``): both
are linear, so this is the same function with the same parameters, without ``avg_pool2d`` over
[B, 40, C, T], the encoder's most expensive operation on the CPU (the encoder's forward + backward:
0.34-0.67× with it fused, ``bench/conv_pool.py``, docs/benchmarks.md, "EEG encoder step").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgdm_dist.config.model import EncoderConfig
from sgdm_dist.models.encoder import EncoderOutput, drop_subjects, sanitize_subjects
from sgdm_dist.models.encoders.common import NICE_TIMES, Readout, check_shape, feature_width, scaled

FILTERS = 40


class ConvPool(nn.Conv2d):
    """``Conv2d(1, F, (1, k))`` then ``AvgPool2d((1, p), (1, s))``: [B, 1, C, T] → [B, F, C, T'].

    Run as one convolution of stride s whose kernel is the temporal kernel convolved with a box of
    p samples (length k + p − 1): the same output up to float rounding, without the pooling pass.
    Its parameters are the temporal convolution's (``weight`` [F, 1, 1, k], ``bias`` [F]).
    """

    def __init__(self, filters: int, kernel: int, pool: int, stride: int) -> None:
        super().__init__(1, filters, (1, kernel))
        self.pool, self.pool_stride = pool, stride

    def forward(self, x: Tensor) -> Tensor:
        n, _, _, k = self.weight.shape
        box = self.weight.new_full((1, 1, 1, self.pool), 1.0 / self.pool)
        # Correlating with a zero-padded box is the full convolution (the box is symmetric).
        kernel = F.conv2d(self.weight.reshape(n, 1, 1, k), box, padding=(0, self.pool - 1))
        return F.conv2d(x, kernel, self.bias, stride=(1, self.pool_stride))


def temporal_spatial_conv(n_channels: int, n_times: int, dropout: float) -> nn.Sequential:
    """[B, 1, C, T] → [B, 40, 1, T'] (NICE's ``tsconv`` + 1×1 projection)."""
    kernel = scaled(25, n_times, NICE_TIMES, minimum=3)
    pool = min(scaled(51, n_times, NICE_TIMES, minimum=2), n_times - kernel + 1)
    stride = scaled(5, n_times, NICE_TIMES)
    return nn.Sequential(
        ConvPool(FILTERS, kernel, pool, stride),
        # Index 1 held the separate AvgPool2d: an identity keeps every later layer's name (conv.2…).
        nn.Identity(),
        nn.BatchNorm2d(FILTERS),
        nn.ELU(),
        nn.Conv2d(FILTERS, FILTERS, (n_channels, 1)),
        nn.BatchNorm2d(FILTERS),
        nn.ELU(),
        nn.Dropout(dropout),
        nn.Conv2d(FILTERS, FILTERS, (1, 1)),
    )


class NICEEncoder(nn.Module):
    """[B, C, T] → z [B, D] (+ tokens); no subject conditioning (NICE trains one model per subject)."""

    def __init__(
        self, cfg: EncoderConfig, *, n_channels: int, n_times: int, n_subjects: int
    ) -> None:
        super().__init__()
        self.n_channels, self.n_times, self.n_subjects = n_channels, n_times, n_subjects
        self.gradient_checkpointing = False
        self.conv = temporal_spatial_conv(n_channels, n_times, max(cfg.dropout, 0.5))
        width = feature_width(self.conv, n_channels, n_times)
        self.readout = Readout(width, cfg.dim, cfg.n_tokens, cfg.dropout)

    def forward(self, eeg: Tensor, subject: Tensor) -> EncoderOutput:
        check_shape(eeg, self.n_channels, self.n_times)
        return self.readout(self.conv(eeg[:, None]).flatten(1))


class ATMSEncoder(nn.Module):
    """[B, C, T] + subject [B] → z [B, D] (+ tokens). Subject 0 / unknown: the agnostic token."""

    def __init__(
        self, cfg: EncoderConfig, *, n_channels: int, n_times: int, n_subjects: int
    ) -> None:
        super().__init__()
        self.n_channels, self.n_times, self.n_subjects = n_channels, n_times, n_subjects
        self.gradient_checkpointing = False
        self.subject_dropout = cfg.subject_dropout
        heads = 4
        d_model = heads * -(-n_times // heads)  # the epoch length, rounded up to split into heads
        self.embed = nn.Linear(n_times, d_model)  # iTransformer's inverted embedding
        # The paper's learned subject token; subject_conditioning=none leaves it out (every
        # subject, seen or not, then goes through the same weights).
        self.subject_token = (
            nn.Embedding(n_subjects + 1, d_model) if cfg.subject_conditioning != "none" else None
        )
        self.drop = nn.Dropout(0.25)
        self.attention = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=256, dropout=0.25, batch_first=True, norm_first=False
        )
        self.conv = temporal_spatial_conv(n_channels, d_model, max(cfg.dropout, 0.5))
        width = feature_width(self.conv, n_channels, d_model)
        self.readout = Readout(width, cfg.dim, cfg.n_tokens, cfg.dropout)

    def forward(self, eeg: Tensor, subject: Tensor) -> EncoderOutput:
        check_shape(eeg, self.n_channels, self.n_times)
        tokens = self.drop(self.embed(eeg))  # [B, C, d]
        if self.subject_token is not None:
            subject = sanitize_subjects(subject.to(eeg.device), self.n_subjects)
            if self.training:
                subject = drop_subjects(subject, self.subject_dropout)
            tokens = torch.cat([tokens, self.subject_token(subject)[:, None]], dim=1)
        channels = self.attention(tokens)[:, : self.n_channels]  # [B, C, d]
        return self.readout(self.conv(channels[:, None]).flatten(1))
