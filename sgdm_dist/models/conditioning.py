"""Multi-scale conditioning: z_eeg, EEG tokens and ẑ_sem → what the diffusers UNet consumes.

Two routes into ``UNet2DConditionModel``, both supported by it without patching:

* cross-attention tokens (``encoder_hidden_states``) — read by every transformer block at every
  resolution the UNet attends at (down, mid, up): ``n_semantic_tokens`` tokens expanded from ẑ_sem
  (global, image-level content) followed by the encoder's EEG tokens (finer, trial-specific detail);
* an added vector (``class_embed_type="projection"``, passed as ``class_labels``) — concat(z_eeg, ẑ_sem)
  is mapped by the UNet's own MLP and summed into the time embedding, so it scales/shifts the features
  of every ResNet block, from the finest resolution to the coarsest, including blocks without attention.

Classifier-free guidance replaces the whole condition with a learned null condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sgdm_dist.config.model import ConditioningConfig


@dataclass
class Condition:
    tokens: Tensor  # [B, L, cross_attention_dim]
    vector: Tensor | None  # [B, vector_dim] added to the time embedding, or None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def cat(self, other: Condition) -> Condition:
        """Stack two conditions along the batch (for one UNet call with [uncond; cond])."""
        vector = None if self.vector is None else torch.cat([self.vector, other.vector])
        return Condition(torch.cat([self.tokens, other.tokens]), vector)

    def select(self, mask: Tensor, other: Condition) -> Condition:
        """Rows where mask [B] is True come from ``other`` (broadcastable), the rest from self."""
        tokens = torch.where(mask[:, None, None], other.tokens, self.tokens)
        vector = None
        if self.vector is not None:
            vector = torch.where(mask[:, None], other.vector, self.vector)
        return Condition(tokens, vector)


def dropout_mask(batch: int, p: float, device: torch.device | str) -> Tensor:
    """bool [B]: True where the condition is dropped for CFG training (torch's global RNG)."""
    return torch.rand(batch, device=device) < p


class MultiScaleConditioning(nn.Module):
    """(z_eeg [B, D], eeg tokens [B, K, D], ẑ_sem [B, S]) → :class:`Condition` and its null."""

    def __init__(
        self,
        cfg: ConditioningConfig,
        *,
        eeg_dim: int,
        n_eeg_tokens: int,
        clip_dim: int,
        cross_attention_dim: int,
    ) -> None:
        super().__init__()
        x = cross_attention_dim
        self.n_semantic_tokens = cfg.n_semantic_tokens
        self.cross_attention_dim = x
        self.semantic_tokens = nn.Linear(clip_dim, cfg.n_semantic_tokens * x)
        self.eeg_tokens = nn.Linear(eeg_dim, x)
        # Tells the UNet which token is which; attention itself is permutation-invariant.
        self.position = nn.Parameter(torch.randn(cfg.n_semantic_tokens + n_eeg_tokens, x) * 0.02)
        self.norm = nn.LayerNorm(x)
        self.n_tokens = cfg.n_semantic_tokens + n_eeg_tokens
        self.vector_dim = eeg_dim + clip_dim if cfg.time_embedding else None
        self.null_tokens = nn.Parameter(torch.randn(self.n_tokens, x) * 0.02)
        self.null_vector = (
            nn.Parameter(torch.zeros(self.vector_dim)) if self.vector_dim is not None else None
        )

    def forward(self, z_eeg: Tensor, eeg_tokens: Tensor, z_sem: Tensor) -> Condition:
        b = z_eeg.shape[0]
        sem = self.semantic_tokens(z_sem).reshape(b, self.n_semantic_tokens, -1)
        tokens = torch.cat([sem, self.eeg_tokens(eeg_tokens)], dim=1) + self.position
        vector = torch.cat([z_eeg, z_sem], dim=-1) if self.vector_dim is not None else None
        return Condition(self.norm(tokens), vector)

    def null(self, batch: int) -> Condition:
        tokens = self.null_tokens.expand(batch, -1, -1)
        vector = None if self.null_vector is None else self.null_vector.expand(batch, -1)
        return Condition(tokens, vector)
