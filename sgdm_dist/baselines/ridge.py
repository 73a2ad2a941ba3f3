"""Ridge regression from flattened EEG to centred CLIP: the baseline every decoder must beat.

Single trials [N, C·T] (standardised per feature on the training trials) → CLIP − training mean,
with the penalty chosen by efficient leave-one-out CV over a log grid (scikit-learn ``RidgeCV``).
Predictions live in the centred space, where retrieval is scored (``baselines.scoring``).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ALPHAS = np.logspace(0, 6, 13)


class RidgeDecoder:
    """``fit(eeg [N, C, T], clip [N, D])`` then ``predict(eeg) → [N, D]`` centred CLIP estimates."""

    def __init__(self, alphas: np.ndarray = ALPHAS) -> None:
        self.model = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas))
        self.clip_mean: np.ndarray | None = None

    def fit(self, eeg: np.ndarray, clip: np.ndarray) -> RidgeDecoder:
        self.clip_mean = clip.mean(axis=0)
        self.model.fit(eeg.reshape(len(eeg), -1), clip - self.clip_mean)
        return self

    @property
    def alpha(self) -> float:
        return float(self.model[-1].alpha_)

    def predict(self, eeg: np.ndarray) -> np.ndarray:
        if self.clip_mean is None:
            raise RuntimeError("RidgeDecoder.predict before fit")
        return self.model.predict(eeg.reshape(len(eeg), -1)).astype(np.float32)

    def center(self, clip: np.ndarray) -> np.ndarray:
        """Candidate embeddings [M, D] in the space the decoder predicts (training mean removed)."""
        if self.clip_mean is None:
            raise RuntimeError("RidgeDecoder.center before fit")
        return clip - self.clip_mean
