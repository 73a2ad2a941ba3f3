"""A shard split as in-memory arrays, read through the project's own loader (checksums, manifest)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sgdm_dist.config import Config
from sgdm_dist.data.latency import align_latency
from sgdm_dist.data.loader import make_loader
from sgdm_dist.data.splits import split_image_embeddings


@dataclass
class SplitArrays:
    eeg: np.ndarray  # [N, C, T] float32, one row per trial
    subject: np.ndarray  # [N] int64, 1-based
    image_index: np.ndarray  # [N] int64
    image_ids: np.ndarray  # [M] int64, the split's unique images (sorted)
    clip: np.ndarray  # [M, D] float32, raw L2-normalised CLIP embeddings of image_ids

    def target_rows(self) -> np.ndarray:
        """[N] row of each trial's image in ``clip``."""
        return np.searchsorted(self.image_ids, self.image_index)


def load_split(cfg: Config, split: str, subjects: list[int] | None = None) -> SplitArrays:
    """Every trial of ``split`` (optionally only ``subjects``), in shard order."""
    loader = make_loader(cfg, split, shuffle=False, subjects=subjects, drop_last=False)
    eeg, subject, index = [], [], []
    for batch in loader:
        eeg.append(batch["eeg"].numpy())
        subject.append(batch["subject"].numpy())
        index.append(batch["image_index"].numpy())
    ids, clip = split_image_embeddings(cfg.data.shard_dir, split)
    if not eeg:
        raise ValueError(f"no '{split}' trials of subjects {subjects} in {cfg.data.shard_dir}")
    return SplitArrays(
        np.concatenate(eeg),
        np.concatenate(subject),
        np.concatenate(index),
        ids.numpy(),
        clip.numpy(),
    )


def align_held_out(
    train: SplitArrays, test: SplitArrays, held: int, sfreq: float, max_lag_s: float
) -> SplitArrays:
    """``test`` with subject ``held``'s trials shifted in time (by up to ``max_lag_s`` s at ``sfreq``
    Hz) to the evoked response of ``train``'s other subjects (data/latency.py; no label used)."""
    keep = test.subject == held
    if not keep.any():
        raise ValueError(f"no test trials of subject {held} to align")
    eeg = test.eeg.copy()
    eeg[keep], _ = align_latency(train.eeg[train.subject != held], eeg[keep], sfreq, max_lag_s)
    return SplitArrays(eeg, test.subject, test.image_index, test.image_ids, test.clip)
