"""Scoring a fold: the held-out subjects' validation retrieval, through the subject-agnostic path.

The fold's model never saw the held-out subjects, so their trials go in with subject id 0 (the
fallback embedding), exactly as a new, unseen participant would be decoded. Retrieval ranks the
validation images in the space the head was trained in (``SemanticHead.to_clip``). ``mrr`` (mean
reciprocal rank of the true image) is the smooth objective for small validation sets: unlike the mean
cosine to the true embedding — which ranked a constant predictor (0.939) above a trained model
(0.887), because CLIP embeddings share one large common direction — a predictor that ignores the EEG
gets the chance value of every retrieval score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgdm_dist.config import Config
from sgdm_dist.data.loader import make_loader
from sgdm_dist.data.manifest import read_manifest
from sgdm_dist.data.splits import split_image_embeddings
from sgdm_dist.metrics.retrieval import retrieval_accuracy
from sgdm_dist.models import SGDM
from sgdm_dist.reconstruct.alignment import unseen_subject_shifts
from sgdm_dist.reconstruct.inputs import shift_rows

SPLIT = "val"  # carved from the training partition: a sweep never reads the test set
UNSEEN_SUBJECT = 0


def held_out_shifts(cfg: Config, held_out: list[int]) -> dict[int, int]:
    """With ``evaluate.align_unseen_s``: the latency shift (samples) of each held-out subject's
    validation trials towards the fold's training subjects (reconstruct/alignment.py); else empty.
    Data only, so a fold computes it once."""
    if cfg.evaluate.align_unseen_s <= 0:
        return {}
    manifest = read_manifest(cfg.data.shard_dir)
    trained = cfg.train.subjects or sorted(set(manifest.subjects) - set(held_out))
    return unseen_subject_shifts(
        str(cfg.data.shard_dir),
        SPLIT,
        unseen=held_out,
        trained=trained,
        max_lag_s=cfg.evaluate.align_unseen_s,
    )


@torch.no_grad()
def score_held_out(
    cfg: Config, model: SGDM, held_out: list[int], shifts: dict[int, int] | None = None
) -> dict[str, float]:
    """Retrieval of the held-out subjects' validation trials against all validation images;
    ``shifts`` (from :func:`held_out_shifts`) moves their trials in time first.

    Returns ``top1``, ``top5`` (fractions; 1.0 when there are 5 images or fewer), ``mrr`` (mean
    reciprocal rank among all validation images), ``chance_mrr``, ``cosine`` (mean cosine of the
    prediction and the true centred CLIP embedding; reported, not a good objective) and ``n_trials``.
    """
    preds, image_index = [], []
    loader = make_loader(cfg, SPLIT, shuffle=False, subjects=held_out, drop_last=False)
    for batch in loader:
        unseen = torch.full_like(batch["subject"], UNSEEN_SUBJECT)
        eeg = shift_rows(batch["eeg"], batch["subject"], shifts or {})
        preds.append(model.predict_clip(eeg, unseen).float().cpu())
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
    centred = model.semantic.center(targets.to(model.device)).float().cpu()
    cosine = (F.normalize(pred, dim=1) * centred[target_index]).sum(1)
    sims = F.normalize(pred, dim=1) @ centred.T  # [N, M], the head's own space
    rank = (sims >= sims.gather(1, target_index[:, None])).sum(1)  # ties count against
    return {
        "top1": scores[f"top1_{n_images}way"],
        "top5": scores.get(f"top5_{n_images}way", 1.0),
        "mrr": float((1.0 / rank.double()).mean()),
        "chance_mrr": float(sum(1.0 / k for k in range(1, n_images + 1)) / n_images),
        "cosine": float(cosine.mean()),
        "n_trials": float(pred.shape[0]),
    }
