"""An SGDM's semantic predictions in the space it was trained in (centred CLIP), and its candidates.

Candidates are centred with the mean the model stored from its *training* batches, so nothing about
the test images is used, and ranked by cosine: the scoring every method of bench/decoding.py gets.
"""

from __future__ import annotations

import numpy as np
import torch

from sgdm_dist.models import SGDM


@torch.no_grad()
def predict_centred(
    model: SGDM, eeg: np.ndarray, subject: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """eeg [N, C, T], subject [N] (0 = unknown) → ẑ_sem [N, D] unit directions in centred space."""
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(eeg), batch_size):
            x = torch.as_tensor(eeg[i : i + batch_size], dtype=torch.float32, device=model.device)
            s = torch.as_tensor(subject[i : i + batch_size], dtype=torch.long, device=model.device)
            out.append(model.encode(x, s)[1].float().cpu().numpy())
    finally:
        model.train(was)
    return np.concatenate(out)


@torch.no_grad()
def centred_candidates(model: SGDM, clip: np.ndarray) -> np.ndarray:
    """Raw CLIP embeddings [M, D] → the unit directions the model's head predicts [M, D]."""
    x = torch.as_tensor(clip, dtype=torch.float32, device=model.device)
    return model.semantic.center(x).float().cpu().numpy()
