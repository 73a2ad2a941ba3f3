"""Semantic head (EEG → CLIP space) and its losses: CLIP-style contrastive, cosine, concept classifier."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgdm_dist.config.model import SemanticConfig
from sgdm_dist.utils.collective import gather_no_grad, gather_with_grad


class SemanticHead(nn.Module):
    """z_eeg [B, D_eeg] → ẑ_sem [B, D_clip], a unit direction in (centred) CLIP space.

    CLIP image embeddings share a large common component (mean pairwise cosine ~0.5 for real CLIP,
    ~0.95 for the tiny random CLIP), so the image-specific part is a small fraction of each target and
    a contrastive loss on raw embeddings easily collapses every prediction onto the common direction.
    With ``center_targets`` the head predicts the direction of ``clip − mean`` (the mean is a running
    buffer updated from training batches); :meth:`to_clip` is the retrieval query (the prediction
    itself, see there).
    """

    def __init__(self, cfg: SemanticConfig, *, in_dim: int, clip_dim: int) -> None:
        super().__init__()
        hidden = cfg.hidden_dim or 2 * in_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(hidden, clip_dim),
        )
        self.skip = nn.Linear(in_dim, clip_dim, bias=False)
        # Stored as log so the optimiser works on an unconstrained value, as in CLIP. Shape [1], not
        # 0-d, like the buffers below: DeepSpeed's broadcast views tensors as bytes, which 0-d cannot do.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(cfg.logit_scale_init)))
        self.logit_scale_max = cfg.logit_scale_max
        self.center_targets = cfg.center_targets
        self.momentum = cfg.center_momentum
        self.register_buffer("target_mean", torch.zeros(clip_dim))
        self.register_buffer("target_spread", torch.ones(1))
        self.register_buffer("target_updates", torch.zeros(1, dtype=torch.long))

    def forward(self, z_eeg: Tensor) -> Tensor:
        return F.normalize(self.net(z_eeg) + self.skip(z_eeg), dim=-1)

    def scale(self) -> Tensor:
        """The inverse temperature exp(logit_scale), clamped to logit_scale_max; scalar."""
        return self.logit_scale.exp().clamp(max=self.logit_scale_max).squeeze(0)

    @torch.no_grad()
    def observe(self, clip: Tensor) -> None:
        """Update the running mean / spread of the targets from a training batch clip [B, D]."""
        if not self.center_targets:
            return
        # Cumulative average for the first 1/momentum batches, then an exponential moving average.
        # Tensor arithmetic, not .item(): no device sync per step, and traceable on the meta device.
        rate = (1.0 / (self.target_updates + 1).float()).clamp(min=self.momentum)
        clip = gather_no_grad(clip.float())  # the global batch: identical buffers on every rank
        self.target_mean.lerp_(clip.float().mean(dim=0), rate)
        spread = (clip.float() - self.target_mean).norm(dim=-1).mean()
        self.target_spread.lerp_(spread, rate)
        self.target_updates += 1

    def center(self, clip: Tensor) -> Tensor:
        """Raw L2-normalised CLIP embeddings [B, D] → the unit directions the head predicts."""
        if not self.center_targets:
            return clip
        return F.normalize(clip - self.target_mean.to(clip.dtype), dim=-1)

    def to_clip(self, z_sem: Tensor) -> Tensor:
        """Predicted directions [B, D] → the query used for retrieval against raw CLIP embeddings.

        The prediction itself: ranking raw unit targets t by z·t ranks them by z·(t − mean), because
        z·mean is one constant per query — retrieval happens in the space the head was trained in.
        Mapping z back onto the raw sphere (normalize(mean + spread·z), what this did before) let the
        shared mean dominate every cosine: test queries collapsed onto a few hub images, and as
        ‖mean‖ > spread the map is not even injective (docs/decoding.md, cause 1).
        """
        return z_sem


def contrastive_loss(
    pred: Tensor, target: Tensor, scale: Tensor, image_index: Tensor | None = None
) -> Tensor:
    """Symmetric InfoNCE between pred [B, D] and target [B, D] (both L2-normalised).

    Trials of the same image (equal ``image_index``) are all positives of each other, so repetitions
    of a stimulus in one batch are not pushed apart as false negatives.
    """
    # Over the global batch (sgdm_dist.utils.collective): this rank's rows [B] against every rank's
    # columns [W*B]; the mean over ranks of these local losses is the 1-process loss. fp32 logits.
    pred, target = pred.float(), target.float()
    all_pred, first = gather_with_grad(pred)
    all_target, _ = gather_with_grad(target)
    if image_index is None:
        image_index = first + torch.arange(pred.shape[0], device=pred.device)
    all_index = gather_no_grad(image_index)
    same = (image_index[:, None] == all_index[None, :]).float()  # [B, W*B]
    soft = same / same.sum(dim=1, keepdim=True)
    eeg_to_img = -(soft * (scale * pred @ all_target.T).log_softmax(dim=1)).sum(dim=1).mean()
    img_to_eeg = -(soft * (scale * target @ all_pred.T).log_softmax(dim=1)).sum(dim=1).mean()
    return (eeg_to_img + img_to_eeg) / 2


def cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean 1 − cos(pred, target); scalar."""
    return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()


def classification_loss(logits: Tensor, concept: Tensor) -> Tensor:
    """Cross-entropy over concept classes; names the bad id instead of a CUDA assert."""
    n = logits.shape[-1]
    if concept.numel() and (int(concept.min()) < 0 or int(concept.max()) >= n):
        bad = concept[(concept < 0) | (concept >= n)][0].item()
        raise ValueError(f"batch 'concept' id {bad} outside model.n_classes = {n} (0..{n - 1})")
    return F.cross_entropy(logits, concept.long())


@torch.no_grad()
def in_batch_top1(pred: Tensor, target: Tensor, image_index: Tensor | None = None) -> Tensor:
    """Fraction of rows whose most similar target is one of its positives; scalar in [0, 1]."""
    best = (pred @ target.T).argmax(dim=1)
    if image_index is None:
        return (best == torch.arange(len(best), device=best.device)).float().mean()
    return (image_index[best] == image_index).float().mean()
