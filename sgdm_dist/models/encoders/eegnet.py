"""EEGNet (Lawhern et al., "EEGNet: a compact convolutional neural network for EEG-based
brain-computer interfaces", J. Neural Eng. 2018), the 8-2 variant.

Temporal convolution (F1 = 8 filters, half a second long: 64 samples at 128 Hz), batch norm, depthwise
spatial convolution over all channels (D = 2 per filter, max-norm 1 in the paper), batch norm, ELU,
average pool 4, dropout, separable convolution (depthwise 16 samples + pointwise F2 = 16), batch norm,
ELU, average pool 8, dropout; flattened. Kernels and pools scale with ``n_times`` (128 at 128 Hz, 1 s).
"""

from __future__ import annotations

from torch import Tensor, nn

from sgdm_dist.config.model import EncoderConfig
from sgdm_dist.models.encoder import EncoderOutput
from sgdm_dist.models.encoders.common import Readout, check_shape, feature_width, scaled

EEGNET_TIMES = 128
F1, DEPTH, F2 = 8, 2, 16


def eegnet_features(n_channels: int, n_times: int, dropout: float) -> nn.Sequential:
    """[B, 1, C, T] → [B, F2, 1, T / 32]."""
    k1 = scaled(64, n_times, EEGNET_TIMES, minimum=3) | 1  # odd: 'same' padding is symmetric
    k2 = scaled(16, n_times, EEGNET_TIMES, minimum=3) | 1
    p1 = min(4, max(1, n_times // 8))
    p2 = min(8, max(1, n_times // (p1 * 2)))
    return nn.Sequential(
        nn.Conv2d(1, F1, (1, k1), padding=(0, k1 // 2), bias=False),
        nn.BatchNorm2d(F1),
        nn.Conv2d(F1, F1 * DEPTH, (n_channels, 1), groups=F1, bias=False),
        nn.BatchNorm2d(F1 * DEPTH),
        nn.ELU(),
        nn.AvgPool2d((1, p1)),
        nn.Dropout(dropout),
        nn.Conv2d(
            F1 * DEPTH, F1 * DEPTH, (1, k2), padding=(0, k2 // 2), groups=F1 * DEPTH, bias=False
        ),
        nn.Conv2d(F1 * DEPTH, F2, 1, bias=False),
        nn.BatchNorm2d(F2),
        nn.ELU(),
        nn.AvgPool2d((1, p2)),
        nn.Dropout(dropout),
    )


class EEGNetEncoder(nn.Module):
    """[B, C, T] → z [B, D] (+ tokens); no subject conditioning."""

    def __init__(
        self, cfg: EncoderConfig, *, n_channels: int, n_times: int, n_subjects: int
    ) -> None:
        super().__init__()
        self.n_channels, self.n_times, self.n_subjects = n_channels, n_times, n_subjects
        self.gradient_checkpointing = False
        self.features = eegnet_features(n_channels, n_times, max(cfg.dropout, 0.25))
        width = feature_width(self.features, n_channels, n_times)
        self.readout = Readout(width, cfg.dim, cfg.n_tokens, cfg.dropout)

    def forward(self, eeg: Tensor, subject: Tensor) -> EncoderOutput:
        check_shape(eeg, self.n_channels, self.n_times)
        return self.readout(self.features(eeg[:, None]).flatten(1))
