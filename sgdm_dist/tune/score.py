"""Scoring a fold: the held-out subjects' validation retrieval, through the subject-agnostic path.

The fold's model never saw the held-out subjects, so their trials go in with subject id 0 (the
fallback embedding), exactly as a new, unseen participant would be decoded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgdm_dist.config import Config
from sgdm_dist.data.loader import make_loader, split_image_embeddings
from sgdm_dist.metrics.retrieval import retrieval_accuracy
from sgdm_dist.models import SGDM

SPLIT = "val"  # carved from the training partition: a sweep never reads the test set
UNSEEN_SUBJECT = 0


@torch.no_grad()
def score_held_out(cfg: Config, model: SGDM, held_out: list[int]) -> dict[str, float]:
    """Retrieval of the held-out subjects' validation trials against all validation images.

    Returns ``top1``, ``top5`` (fractions; 1.0 when there are 5 images or fewer), ``cosine`` (mean
    cosine of predicted and true CLIP embedding, a smooth score for small validation sets) and
    ``n_trials``.
    """
    preds, image_index = [], []
    loader = make_loader(cfg, SPLIT, shuffle=False, subjects=held_out, drop_last=False)
    for batch in loader:
        unseen = torch.full_like(batch["subject"], UNSEEN_SUBJECT)
        preds.append(model.predict_clip(batch["eeg"], unseen).float().cpu())
        image_index.append(batch["image_index"].cpu())
    if not preds:
        raise ValueError(f"no '{SPLIT}' trials of subjects {held_out} in {cfg.data.shard_dir}")
    pred, index = torch.cat(preds), torch.cat(image_index)
    all_index, targets = split_image_embeddings(cfg.data.shard_dir, SPLIT)
    position = {int(i): n for n, i in enumerate(all_index.tolist())}
    target_index = torch.tensor([position[int(i)] for i in index.tolist()])
    n_images = targets.shape[0]
    scores = retrieval_accuracy(
        pred, targets, target_index, n_way=[n_images], top_k=[1, 5], seed=cfg.experiment.seed
    )
    cosine = (F.normalize(pred, dim=1) * F.normalize(targets[target_index], dim=1)).sum(1)
    return {
        "top1": scores[f"top1_{n_images}way"],
        "top5": scores.get(f"top5_{n_images}way", 1.0),
        "cosine": float(cosine.mean()),
        "n_trials": float(pred.shape[0]),
    }
