"""The noise-free reference of a synthetic dataset: how well an image's CLIP embedding can be decoded
from the sources that image evokes *before* any noise, subject mixing or jitter is added.

An EEG decoder sees only those sources, mixed onto the scalp and buried in noise, so the reference
says how much room a dataset leaves above ridge. Two decoders of the sources [N, F + 2, T]
(``data.synthetic.noise_free_sources``, sampled at the shards' rate): a linear one (``RidgeCV``) and
an RBF kernel ridge whose width and penalty are chosen by 5-fold cross-validation grouped by concept
on the training images. Neither is a proof of a bound (a better nonlinear decoder may exist); the
kernel one is what a flexible decoder reaches with perfect denoising and this many training images.
Synthetic data only: the generator must be known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from sgdm_dist.config import Config
from sgdm_dist.data import synthetic
from sgdm_dist.data.shard_dir import SETTINGS, read_settings

GAMMAS = (0.1, 0.3, 1.0, 3.0)  # RBF widths, × 1 / n_features of the standardised sources
ALPHAS = (0.01, 0.1, 1.0)
PARTS = {"train": "training", "val": "training", "test": "test"}


def source_features(cfg: Config, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids [M], concept [M], noise-free sources [M, (F + 2)·T]) of ``split``'s images, in
    the order of ``{split}_images.npz``, sampled at the shards' rate (``preprocess.resample_hz``)."""
    if cfg.data.source != "synthetic":
        raise ValueError(
            f"the noise-free reference needs a synthetic dataset, not {cfg.data.source!r}"
        )
    _check_seed(cfg)
    path = Path(cfg.data.shard_dir) / f"{split}_images.npz"
    with np.load(path) as z:
        ids, concept, condition = z["image_index"], z["concept"], z["condition"]
    sources = synthetic.noise_free_sources(
        cfg.data.synthetic, cfg.experiment.seed, PARTS[split], condition
    )
    step = max(1, round(synthetic.SFREQ / cfg.data.preprocess.resample_hz))
    return ids, concept, sources[:, :, ::step].reshape(len(ids), -1)


def _check_seed(cfg: Config) -> None:
    """The sources are regenerated from ``experiment.seed``: it must be the seed the shards were
    prepared with (recorded beside them), or they would belong to another dataset."""
    settings = read_settings(cfg.data.shard_dir)
    if settings is None:
        return  # shards from before settings were recorded: nothing to compare
    recorded = settings.get("seed")
    if recorded != cfg.experiment.seed:
        raise ValueError(
            f"{Path(cfg.data.shard_dir) / SETTINGS}: the shards were prepared with "
            f"experiment.seed={recorded}, the config has {cfg.experiment.seed}; the noise-free "
            "sources would be another dataset's"
        )


def fit_reference(x: np.ndarray, clip: np.ndarray, concept: np.ndarray, kind: str) -> Pipeline:
    """Sources x [M, P] → centred CLIP (clip [M, D] minus its mean), ``kind`` "linear" or "kernel"."""
    if kind == "linear":
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        return model.fit(x, clip - clip.mean(axis=0))
    pipe = make_pipeline(StandardScaler(), KernelRidge(kernel="rbf"))
    grid = {
        "kernelridge__gamma": [g / x.shape[1] for g in GAMMAS],
        "kernelridge__alpha": list(ALPHAS),
    }
    folds = min(5, len(np.unique(concept)))
    search = GridSearchCV(pipe, grid, cv=GroupKFold(folds), n_jobs=1)
    search.fit(x, clip - clip.mean(axis=0), groups=concept)
    return search.best_estimator_
