"""Retrieval scored in the space a decoder was trained in, with its hubness.

Every decoder here predicts *centred* CLIP (the training mean removed: ``SemanticHead.center``, ridge's
intercept). Scoring those predictions against raw CLIP — or mapping them back onto the raw sphere
first — lets the shared mean direction dominate the cosine and sends most queries to a few "hub"
images. So candidates are centred with the same training mean (the model stores it: no leak) and
ranked by cosine. Reported with every score: ``distinct_top1`` (how many different images are
someone's top-1) and ``pairwise_cos`` (mean cosine between different queries' predictions — near 1
means the predictions collapsed onto one vector, whatever the top-1 says).
"""

from __future__ import annotations

import math

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_pairwise_cosine(pred: np.ndarray) -> float:
    """Mean cosine over distinct pairs of rows of pred [N, D]; 1.0 = all predictions identical."""
    n = len(pred)
    if n < 2:
        return float("nan")
    u = _unit(pred.astype(np.float64))
    total = u.sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


def average_by_image(pred: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the (unit) predictions of each image's trials: ([M', D], image ids [M'])."""
    ids, inverse = np.unique(index, return_inverse=True)
    sums = np.zeros((len(ids), pred.shape[1]))
    np.add.at(sums, inverse, _unit(pred.astype(np.float64)))
    return sums / np.bincount(inverse)[:, None], ids


def retrieval(pred: np.ndarray, rows: np.ndarray, candidates: np.ndarray) -> dict[str, float]:
    """k-way retrieval of pred [N, D] among all candidates [M, D]; true candidate rows [N].

    Returns top1, top5 and their binomial standard errors, chance, distinct_top1, pairwise_cos, n.
    """
    sims = _unit(pred.astype(np.float64)) @ _unit(candidates.astype(np.float64)).T  # [N, M]
    true = sims[np.arange(len(rows)), rows]
    rank = (sims > true[:, None]).sum(axis=1)  # 0 = best
    n, m = len(rows), candidates.shape[0]
    out: dict[str, float] = {"n": float(n), "n_way": float(m), "chance_top1": 1.0 / m}
    for k in (1, 5):
        p = float((rank < k).mean())
        out[f"top{k}"] = p
        out[f"top{k}_se"] = math.sqrt(p * (1 - p) / n)
    out["distinct_top1"] = float(len(np.unique(sims.argmax(axis=1))))
    out["pairwise_cos"] = mean_pairwise_cosine(pred)
    return out


def score_decoder(
    pred: np.ndarray, index: np.ndarray, image_ids: np.ndarray, candidates: np.ndarray
) -> dict[str, dict[str, float]]:
    """Single-trial and repetition-averaged retrieval of pred [N, D] for trials of images ``index``.

    ``image_ids`` [M] (sorted) names the rows of ``candidates`` [M, D], already in the decoder's space.
    """
    single = retrieval(pred, np.searchsorted(image_ids, index), candidates)
    avg, ids = average_by_image(pred, index)
    averaged = retrieval(avg, np.searchsorted(image_ids, ids), candidates)
    return {"single": single, "averaged": averaged}
