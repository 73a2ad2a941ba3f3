"""What ``sgdm evaluate`` reports next to the model's retrieval (``metrics.json`` → ``decoding``).

On the same shards: the model's test retrieval scored in its own space (centred CLIP) with its
hubness — ``pairwise_cos``, the mean cosine between different trials' predictions (the collapse
guard: near 1 means one vector for every input) and ``distinct_top1`` — and a ridge regression per
subject (training split → centred CLIP, CV-chosen penalty) scored the same way, with the ratio
model/ridge of top-1. Single trials and repetition-averaged predictions.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from sgdm_dist.baselines.arrays import SplitArrays, load_split
from sgdm_dist.baselines.model_space import centred_candidates, predict_centred
from sgdm_dist.baselines.ridge import RidgeDecoder
from sgdm_dist.baselines.scoring import score_decoder
from sgdm_dist.config import Config
from sgdm_dist.data.latency import shift_trials

log = logging.getLogger(__name__)
MODES = ("single", "averaged")
KEYS = ("top1", "top5", "top1_se", "pairwise_cos", "distinct_top1", "chance_top1")


def _subset(a: SplitArrays, rows: np.ndarray) -> SplitArrays:
    return SplitArrays(a.eeg[rows], a.subject[rows], a.image_index[rows], a.image_ids, a.clip)


def _mean(rows: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {m: {k: float(np.mean([r[m][k] for r in rows])) for k in KEYS} for m in MODES}


def decoding_checks(
    cfg: Config, model: Any, agnostic: bool = False, shifts: dict[int, int] | None = None
) -> dict[str, Any]:
    """Model vs ridge retrieval on the test split, per subject and mean; see the module doc.
    ``shifts`` (subject → samples, latency alignment of untrained subjects) moves those subjects'
    test trials before the model reads them, as `sgdm evaluate` did for its own scores; the ridge,
    fitted on the subject's own training trials, reads them as recorded."""
    subjects = cfg.evaluate.subjects
    train = load_split(cfg, "train", subjects)
    test = load_split(cfg, "test", subjects)
    out: dict[str, Any] = {"model": {}, "ridge": {}}
    for s in sorted(set(test.subject.tolist()) & set(train.subject.tolist())):
        te = _subset(test, test.subject == s)
        ids = np.zeros_like(te.subject) if agnostic else te.subject
        shift = (shifts or {}).get(s, 0)
        eeg = shift_trials(te.eeg, shift) if shift else te.eeg
        pred = predict_centred(model, eeg, ids)
        cands = centred_candidates(model, te.clip)
        out["model"][f"sub-{s:02d}"] = score_decoder(pred, te.image_index, te.image_ids, cands)
        ridge = RidgeDecoder().fit(*_xy(_subset(train, train.subject == s)))
        scores = score_decoder(
            ridge.predict(te.eeg), te.image_index, te.image_ids, ridge.center(te.clip)
        )
        out["ridge"][f"sub-{s:02d}"] = scores
    for name in ("model", "ridge"):
        out[name]["mean"] = _mean(list(out[name].values()))
    out["ratio_top1"] = {
        m: out["model"]["mean"][m]["top1"] / max(out["ridge"]["mean"][m]["top1"], 1e-9)
        for m in MODES
    }
    out["collapse_pairwise_cos"] = out["model"]["mean"]["single"]["pairwise_cos"]
    return out


def _xy(a: SplitArrays) -> tuple[np.ndarray, np.ndarray]:
    return a.eeg, a.clip[a.target_rows()]


def summary_line(checks: dict[str, Any]) -> str:
    """One line for the terminal: model vs ridge top-1 (single trials) and the collapse guard."""
    m, r = checks["model"]["mean"]["single"], checks["ridge"]["mean"]["single"]
    return (
        f"decoding (single trials, centred CLIP): model top-1 {m['top1']:.3f} vs ridge "
        f"{r['top1']:.3f} (ratio {checks['ratio_top1']['single']:.2f}); predictions' mean pairwise "
        f"cosine {m['pairwise_cos']:.2f}, {m['distinct_top1']:.0f} distinct top-1 images"
    )
