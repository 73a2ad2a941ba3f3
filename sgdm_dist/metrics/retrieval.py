"""Zero-shot EEG → image retrieval, the THINGS-EEG2 protocol (NICE, ATM, UBP).

Each prediction is an EEG-predicted image embedding; the candidates are the embeddings of the test
images. Similarity is the cosine of L2-normalised vectors. "k-way" accuracy draws random candidate
sets of size k that always contain the true image; a k at least as large as the number of test images
means the whole set (the deterministic 200-way score on THINGS-EEG2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def average_by_index(pred: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Average the predictions that share an image index (test repetitions → one vector per image).

    pred: [N, D]; index: [N] integer image index of each prediction.
    Returns (means [U, D], unique_index [U]) with unique_index sorted ascending.
    """
    _check_2d(pred, "pred")
    if index.ndim != 1 or index.shape[0] != pred.shape[0]:
        raise ValueError(
            f"index must have shape [{pred.shape[0]}] (one image index per prediction), "
            f"got {tuple(index.shape)}"
        )
    unique, inverse = torch.unique(index, sorted=True, return_inverse=True)
    sums = torch.zeros(len(unique), pred.shape[1], dtype=torch.float64, device=pred.device)
    sums.index_add_(0, inverse, pred.to(torch.float64))
    counts = torch.bincount(inverse, minlength=len(unique)).to(sums)
    return (sums / counts[:, None]).to(pred.dtype), unique


def cosine_similarity_matrix(pred: Tensor, targets: Tensor) -> Tensor:
    """Cosine similarity of every prediction with every target: pred [N, D], targets [M, D] → [N, M]."""
    _check_2d(pred, "pred")
    _check_2d(targets, "targets")
    if pred.shape[1] != targets.shape[1]:
        raise ValueError(
            f"pred and targets must share the embedding size, got pred [{pred.shape[1]}] and "
            f"targets [{targets.shape[1]}]"
        )
    p = F.normalize(pred.to(torch.float64), dim=1)
    t = F.normalize(targets.to(torch.float64), dim=1)
    return p @ t.T


def retrieval_accuracy(
    pred: Tensor,
    targets: Tensor,
    target_index: Tensor,
    n_way: Sequence[int] = (2, 4, 10, 50, 200),
    top_k: Sequence[int] = (1, 5),
    seed: int | torch.Generator = 0,
    n_trials: int = 20,
) -> dict[str, float]:
    """Top-k accuracy of k-way retrieval, with chance levels.

    pred: [N, D] predicted embeddings; targets: [M, D] candidate (test image) embeddings;
    target_index: [N] index into targets of each prediction's true image.
    For a k-way size n < M, each of n_trials draws, per prediction, n − 1 distinct distractors
    uniformly from the other M − 1 targets; accuracy is the mean over predictions and draws.
    A size n >= M scores against all M targets (deterministic) and is keyed with M.
    A top-k with k >= n is trivially 1 and is left out.

    Returns keys ``top{k}_{n}way`` (fraction in [0, 1]) and ``chance_top{k}_{n}way`` (= k / n), plus
    ``n_predictions`` and ``n_candidates``. Ties count in favour of the true target.
    """
    sims = cosine_similarity_matrix(pred, targets)
    n_pred, n_cand = sims.shape
    target_index = _check_index(target_index, n_pred, n_cand).to(sims.device)
    if n_cand < 2:
        raise ValueError(f"retrieval needs at least 2 candidate targets, got {n_cand}")
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))

    true_sim = sims.gather(1, target_index[:, None])
    # beats[i, j]: candidate j is strictly more similar to prediction i than its true target.
    beats = sims > true_sim
    out: dict[str, float] = {"n_predictions": float(n_pred), "n_candidates": float(n_cand)}
    for n in sorted({min(int(n), n_cand) for n in n_way}):
        if n < 2:
            raise ValueError(f"n_way sizes must be >= 2, got {n}")
        ranks = (
            _full_ranks(beats)
            if n == n_cand
            else _subset_ranks(beats, target_index, n, n_trials, gen)
        )
        for k in sorted(set(top_k)):
            if k < 1:
                raise ValueError(f"top_k values must be >= 1, got {k}")
            if k >= n:
                continue
            out[f"top{k}_{n}way"] = float((ranks < k).to(torch.float64).mean())
            out[f"chance_top{k}_{n}way"] = k / n
    return out


def mean_over_groups(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Average metric dicts (e.g. one per subject) key by key; keys missing in a group are an error."""
    if not results:
        raise ValueError("no results to average")
    groups = list(results)
    keys = list(results[groups[0]])
    for group in groups[1:]:
        if set(results[group]) != set(keys):
            diff = sorted(set(results[group]) ^ set(keys))
            raise ValueError(
                f"group {group!r} has different metric keys than {groups[0]!r}: {diff}"
            )
    return {key: sum(float(results[g][key]) for g in groups) / len(groups) for key in keys}


def _full_ranks(beats: Tensor) -> Tensor:
    """0-based rank of the true target among all candidates: [N]."""
    return beats.sum(dim=1)


def _subset_ranks(
    beats: Tensor, target_index: Tensor, n: int, n_trials: int, gen: torch.Generator
) -> Tensor:
    """Ranks within random n-candidate sets containing the true target: [n_trials, N]."""
    n_pred, n_cand = beats.shape
    ranks = torch.empty(n_trials, n_pred, dtype=torch.long)
    rows = torch.arange(n_pred)
    for trial in range(n_trials):
        # Random keys with the true target pushed last: the n − 1 smallest are a uniform distractor set.
        keys = torch.rand(n_pred, n_cand, generator=gen, dtype=torch.float64)
        keys[rows, target_index.cpu()] = 2.0
        distractors = keys.argsort(dim=1)[:, : n - 1].to(beats.device)
        ranks[trial] = beats.gather(1, distractors).sum(dim=1).cpu()
    return ranks


def _check_2d(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor [N, D], got {shape}")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has non-finite values in rows {bad}")


def _check_index(index: Tensor, n_pred: int, n_cand: int) -> Tensor:
    if index.ndim != 1 or index.shape[0] != n_pred:
        raise ValueError(
            f"target_index must have shape [{n_pred}] (one target per prediction), "
            f"got {tuple(index.shape)}"
        )
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"target_index must be an integer tensor, got {index.dtype}")
    if len(index) and (index.min() < 0 or index.max() >= n_cand):
        raise ValueError(
            f"target_index values must lie in [0, {n_cand - 1}] (rows of targets), "
            f"got range [{int(index.min())}, {int(index.max())}]"
        )
    return index.to(dtype=torch.long)
