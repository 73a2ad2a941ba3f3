"""A linear readout of the whole epoch: the strongest published baselines on little data are close to
linear (ridge from flattened EEG to CLIP), so this is the low-variance end of the encoder choice.

[B, C, T] → dropout → z = W · vec(eeg) + b [B, D]; tokens are a linear expansion of z. Subject
conditioning: an optional per-subject bias on z (row 0: the subject-agnostic fallback).
"""

from __future__ import annotations

from torch import Tensor, nn

from sgdm_dist.config.model import EncoderConfig
from sgdm_dist.models.encoder import EncoderOutput, drop_subjects, sanitize_subjects
from sgdm_dist.models.encoders.common import Readout, check_shape


class LinearEncoder(nn.Module):
    def __init__(
        self, cfg: EncoderConfig, *, n_channels: int, n_times: int, n_subjects: int
    ) -> None:
        super().__init__()
        self.n_channels, self.n_times, self.n_subjects = n_channels, n_times, n_subjects
        self.gradient_checkpointing = False
        self.subject_dropout = cfg.subject_dropout
        self.readout = Readout(n_channels * n_times, cfg.dim, cfg.n_tokens, cfg.dropout)
        self.subject_bias = (
            nn.Embedding(n_subjects + 1, cfg.dim) if cfg.subject_conditioning != "none" else None
        )
        if self.subject_bias is not None:
            nn.init.zeros_(self.subject_bias.weight)

    def forward(self, eeg: Tensor, subject: Tensor) -> EncoderOutput:
        check_shape(eeg, self.n_channels, self.n_times)
        out = self.readout(eeg.flatten(1))
        if self.subject_bias is None:
            return out
        subject = sanitize_subjects(subject.to(eeg.device), self.n_subjects)
        if self.training:
            subject = drop_subjects(subject, self.subject_dropout)
        return EncoderOutput(z=out.z + self.subject_bias(subject), tokens=out.tokens)
