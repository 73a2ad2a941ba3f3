"""How much room does a synthetic dataset leave above ridge? Cross-validated on the training images.

For each dataset that ``bench/decoding.py`` prepared under ``--work``, the training images are split
into 5 folds by concept; every fold's images are decoded by models fitted on the other four:

* ``ridge``: the EEG ridge baseline (single trials, one model per subject), as in the bench;
* ``noise-free-linear`` / ``noise-free``: a linear / RBF-kernel decoder of the sources each image
  evokes before any noise, mixing or jitter (``sgdm_dist/baselines/noise_free.py``).

Each decoder's out-of-fold predictions are scored by 50-way retrieval among random sets of 50
training images (the same sets for all three; candidates centred on their mean). The last column,
the better noise-free decoder over ridge, is so measured on about 1,000 images instead of the test
split's 50: it says how far above ridge perfect denoising gets a decoder on this dataset
(single-trial ridge; top-1 among 50, chance 0.02). Only training concepts are read.

    python bench/decoding.py --sizes small large --methods ridge --loso-folds --work W
    python bench/decoding_headroom.py --work W
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from sklearn.model_selection import GroupKFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decoding as bench  # the bench's datasets and their configs

from sgdm_dist.baselines.arrays import load_split
from sgdm_dist.baselines.noise_free import fit_reference, source_features
from sgdm_dist.baselines.ridge import RidgeDecoder
from sgdm_dist.baselines.scoring import retrieval

FOLDS, WAY, DRAWS = 5, 50, 20


def top1_in_sets(
    pred: np.ndarray, query_image: np.ndarray, clip: np.ndarray, seed: int = 0
) -> float:
    """Top-1 of queries pred [Q, D] (of images query_image [Q], rows of clip [M, D]) among random
    sets of 50 images (all M when fewer), drawn DRAWS times; candidates centred on the images' mean."""
    rng, correct, total = np.random.default_rng(seed), 0.0, 0
    for _ in range(DRAWS):
        for chunk in np.array_split(rng.permutation(len(clip)), max(1, len(clip) // WAY)):
            chunk = np.sort(chunk)
            keep = np.isin(query_image, chunk)
            rows = np.searchsorted(chunk, query_image[keep])
            correct += retrieval(pred[keep], rows, clip[chunk] - clip.mean(0))["top1"] * keep.sum()
            total += int(keep.sum())
    return correct / total


def headroom(ds: bench.Dataset) -> dict[str, float]:
    """Out-of-fold predictions of every training image (folds by concept) → top-1 of each decoder."""
    cfg = ds.config()
    train = load_split(cfg, "train")
    ids, concept, x = source_features(cfg, "train")
    clip = train.clip[np.searchsorted(train.image_ids, ids)]  # [M, D], rows in ids order
    trial_row = np.searchsorted(ids, train.image_index)  # ids are sorted (image_index order)
    eeg_pred = np.zeros((len(trial_row), clip.shape[1]), dtype=np.float32)
    source_pred = {"noise-free-linear": np.zeros_like(clip), "noise-free": np.zeros_like(clip)}
    for fit, held in GroupKFold(FOLDS).split(x, groups=concept):
        fitted = np.isin(trial_row, fit)
        for s in np.unique(train.subject):
            mine = train.subject == s
            ridge = RidgeDecoder().fit(train.eeg[mine & fitted], clip[trial_row[mine & fitted]])
            eeg_pred[mine & ~fitted] = ridge.predict(train.eeg[mine & ~fitted])
        for name, kind in (("noise-free-linear", "linear"), ("noise-free", "kernel")):
            model = fit_reference(x[fit], clip[fit], concept[fit], kind)
            source_pred[name][held] = model.predict(x[held])
    images = np.arange(len(clip))
    return {
        "ridge": top1_in_sets(eeg_pred, trial_row, clip),
        **{name: top1_in_sets(p, images, clip) for name, p in source_pred.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("outputs/bench-decoding"))
    parser.add_argument("--seed", type=int, default=0, help="the datasets' generator seed")
    args = parser.parse_args()
    found = [
        bench.make_dataset(family, size, args.work.resolve(), args.seed, prepare=False)
        for size in bench.SIZES
        for family in bench.FAMILIES
        if (args.work / f"{family}-{size}" / "shards" / "manifest.json").exists()
    ]
    if not found:
        raise SystemExit(f"no prepared dataset under {args.work}: run bench/decoding.py first")
    print(f"{'dataset':<18} {'ridge':>7} {'nf-lin':>7} {'nf-kern':>7} {'best nf/ridge':>14}")
    for ds in found:
        r = headroom(ds)
        ratio = max(r["noise-free"], r["noise-free-linear"]) / max(r["ridge"], 1e-9)
        print(
            f"{ds.name:<18} {r['ridge']:>7.3f} {r['noise-free-linear']:>7.3f} "
            f"{r['noise-free']:>7.3f} {ratio:>14.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
