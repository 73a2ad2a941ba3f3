"""EEG encoders selectable as ``model.encoder.kind``; every one maps [B, C, T] → :class:`EncoderOutput`.

* ``axial``  — the project's per-channel patch transformer (``sgdm_dist.models.encoder``);
* ``nice``   — NICE's temporal-spatial convolution (Song et al., ICLR 2024);
* ``atms``   — ATM-S: channel-wise attention with subject tokens, then NICE's convolution
  (Li et al., NeurIPS 2024);
* ``eegnet`` — EEGNet (Lawhern et al., 2018): temporal, depthwise-spatial, separable convolutions;
* ``linear`` — a ridge-like linear readout of the whole (channel × time) epoch with dropout.

They are re-implementations from the papers' descriptions, trained by the same loop and losses.
"""

from __future__ import annotations

from torch import nn

from sgdm_dist.config.model import EncoderConfig


def uses_subject_ids(cfg: EncoderConfig) -> bool:
    """Whether the encoder's output depends on the subject id (an entry an unseen subject lacks)."""
    if cfg.kind in ("nice", "eegnet"):
        return False
    return cfg.subject_conditioning != "none"


def make_encoder(
    cfg: EncoderConfig, *, n_channels: int, n_times: int, n_subjects: int
) -> nn.Module:
    """The encoder of ``cfg.kind`` for [B, n_channels, n_times] EEG of subjects 1..n_subjects."""
    from sgdm_dist.models.encoders.augment import attach

    return attach(_build(cfg, n_channels=n_channels, n_times=n_times, n_subjects=n_subjects), cfg)


def _build(cfg: EncoderConfig, *, n_channels: int, n_times: int, n_subjects: int) -> nn.Module:
    dims = dict(n_channels=n_channels, n_times=n_times, n_subjects=n_subjects)
    if cfg.kind == "axial":
        from sgdm_dist.models.encoder import EEGEncoder

        return EEGEncoder(cfg, **dims)
    if cfg.kind == "eegnet":
        from sgdm_dist.models.encoders.eegnet import EEGNetEncoder

        return EEGNetEncoder(cfg, **dims)
    if cfg.kind == "linear":
        from sgdm_dist.models.encoders.linear import LinearEncoder

        return LinearEncoder(cfg, **dims)
    from sgdm_dist.models.encoders.shallow import ATMSEncoder, NICEEncoder

    return (NICEEncoder if cfg.kind == "nice" else ATMSEncoder)(cfg, **dims)
