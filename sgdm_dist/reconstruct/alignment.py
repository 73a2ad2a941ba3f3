"""Latency alignment of the subjects a model never saw, read from the shards.

The method is data/latency.py's: a new subject's evoked response (the mean of all of its trials in
the split being scored, no label used) is lined up by global field power with the evoked response
of the subjects the model was trained on (their ``train`` split), and the new subject's trials are
shifted by that whole number of samples before they are encoded. ``evaluate.align_unseen_s`` (the
largest shift, seconds) turns it on for `sgdm evaluate` and for the tuning objective's held-out
subjects; docs/decoding.md has the measurement that motivates it.
"""

from __future__ import annotations

import numpy as np

from sgdm_dist.data.latency import best_gfp_shift, evoked_gfp
from sgdm_dist.data.manifest import Manifest, read_manifest
from sgdm_dist.data.splits import select_shards
from sgdm_dist.reconstruct.inputs import split_loader
from sgdm_dist.reconstruct.model import ReconstructError


def split_evoked(
    manifest: Manifest, shard_dir: str, split: str, subjects: list[int], batch_size: int = 64
) -> dict[int, tuple[np.ndarray, int]]:
    """One streaming pass over ``split`` of ``subjects`` (``manifest``: the shard set's): per
    subject, the sum of its trials' EEG [C, T] (float64) and the number of trials. Subjects without
    trials in the split (or not in the shards at all) are absent."""
    present = [s for s in subjects if s in manifest.subjects]
    shards = select_shards(manifest, split, present) if present and split in manifest.splits else []
    out: dict[int, tuple[np.ndarray, int]] = {}
    if not shards:
        return out
    for batch in split_loader(shard_dir, shards, manifest, batch_size, num_workers=0):
        eeg, subject = batch["eeg"].double().numpy(), batch["subject"].numpy()
        for s in np.unique(subject).tolist():
            rows = eeg[subject == s]
            total, count = out.get(s, (0.0, 0))
            out[s] = (total + rows.sum(axis=0), count + len(rows))
    return out


def unseen_subject_shifts(
    shard_dir: str, split: str, *, unseen: list[int], trained: list[int], max_lag_s: float
) -> dict[int, int]:
    """The shift (samples) of each ``unseen`` subject's trials in ``split`` that lines its evoked
    response up with the ``trained`` subjects' (their ``train`` split, pooled over trials).

    Raises a :class:`ReconstructError` naming the folder when the training subjects' trials are
    not in the shards (the reference cannot be formed)."""
    if not unseen or max_lag_s <= 0:
        return {}
    manifest = read_manifest(shard_dir)
    sfreq = manifest.sfreq
    reference = split_evoked(manifest, shard_dir, "train", trained)
    if not reference:
        raise ReconstructError(
            f"shards {shard_dir}: latency alignment (evaluate.align_unseen_s={max_lag_s}) needs "
            f"the 'train' trials of the model's training subjects {trained}; the split has none"
        )
    total = sum(t for t, _ in reference.values())
    count = sum(n for _, n in reference.values())
    reference_gfp = evoked_gfp(total / count)
    max_shift = round(max_lag_s * sfreq)
    try:
        return {
            s: best_gfp_shift(reference_gfp, evoked_gfp(t / n), max_shift)
            for s, (t, n) in sorted(split_evoked(manifest, shard_dir, split, unseen).items())
        }
    except ValueError as exc:  # a largest shift the epoch cannot hold
        raise ReconstructError(
            f"shards {shard_dir}: evaluate.align_unseen_s={max_lag_s} at {sfreq:g} Hz: {exc}"
        ) from None
