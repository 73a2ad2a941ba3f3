"""Decoding benchmark: does the EEG → CLIP route generalise, against ridge and the published encoders?

Synthetic THINGS-format datasets of three generative families (``data.synthetic.family``: additive,
latency, nonlinear — they differ in which image factors drive the response and how, in latencies and
waveforms, in how subjects differ and in noise, SNR and repetitions), each at two sizes, 3 subjects,
disjoint train/test concepts, are written as raw files and put through ``sgdm prepare`` (the real path).
Every method is then trained in this process (one thread) and scored on the test split by k-way
retrieval in the space it was trained in (``sgdm_dist.baselines.scoring``): top-1/top-5 ± s.e.,
single trials and repetitions averaged, intra-subject and leave-one-subject-out (held-out subject
decoded through the subject-agnostic path). Model selection uses the validation split, which is carved
from the *training* concepts: the test split is read only to score.

    python bench/decoding.py --quick          # ~17 min on 2 idle cores (goal: <= 10)
    python bench/decoding.py                  # the full table of docs/decoding.md

The last line is ``decoding: default/ridge top-1 ratio min=<x>`` (single-trial, intra-subject, over
datasets).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import torch

from sgdm_dist.baselines.arrays import SplitArrays, load_split
from sgdm_dist.baselines.model_space import centred_candidates, predict_centred
from sgdm_dist.baselines.ridge import RidgeDecoder
from sgdm_dist.baselines.scoring import score_decoder
from sgdm_dist.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "tiny.yaml"  # data and model sizes; methods add their recipe below
RECIPE = ROOT / "configs" / "decoding.yaml"

# Generative families: what drives the response, waveforms, subject differences, noise and SNR.
FAMILIES: dict[str, list[str]] = {
    "additive": [
        "data.synthetic.family=additive",
        "data.synthetic.snr=3.0",
        "data.synthetic.subject_variability=0.5",
    ],
    "latency": [
        "data.synthetic.family=latency",
        "data.synthetic.snr=4.0",
        "data.synthetic.latency_jitter_s=0.01",
        "data.synthetic.subject_latency_s=0.015",
        "data.synthetic.subject_gain=0.3",
        "data.synthetic.subject_variability=0.3",
        "data.synthetic.blink_rate_hz=0.5",
    ],
    "nonlinear": [
        "data.synthetic.family=nonlinear",
        "data.synthetic.snr=4.0",
        "data.synthetic.n_factors=12",
        "data.synthetic.subject_variability=0.7",
        "data.synthetic.line_hz=60.0",
        "data.synthetic.subject_gain=0.2",
    ],
}
# size name → (train concepts, images per concept, train reps, test reps); 20 % of the training
# concepts become the validation split, 50 test concepts of one image each.
SIZES = {
    "small": (60, 2, 4, 10),  # 96 train images
    "large": (320, 4, 2, 10),  # 1024 train images
    "quick-large": (120, 4, 2, 8),  # 384 train images
    "mini": (20, 2, 2, 4),  # 32 train images: a smoke test of the pipeline, not a benchmark
}


@dataclass
class Dataset:
    name: str
    family: str
    size: str
    root: Path
    overrides: list[str] = field(default_factory=list)

    def config(self, extra: list[str] | None = None) -> Config:
        return load_config(BASE, [*self.overrides, *(extra or [])])


def make_dataset(family: str, size: str, work: Path, seed: int) -> Dataset:
    concepts, per, train_reps, test_reps = SIZES[size]
    root = work / f"{family}-{size}"
    overrides = [
        f"experiment.seed={seed}",
        f"experiment.output_dir={root}/out",
        f"data.raw_dir={root}/raw",
        f"data.image_dir={root}/raw/images",
        f"data.shard_dir={root}/shards",
        f"data.cache_dir={root}/cache",
        "data.shard_max_samples=4000",
        "data.val_by=concept",
        "data.val_fraction=0.2",
        "data.synthetic.n_subjects=3",
        f"data.synthetic.n_train_concepts={concepts}",
        f"data.synthetic.images_per_concept={per}",
        "data.synthetic.n_test_concepts=50",
        f"data.synthetic.train_reps={train_reps}",
        f"data.synthetic.test_reps={test_reps}",
        *FAMILIES[family],
    ]
    ds = Dataset(f"{family}-{size}", family, size, root, overrides)
    if not (root / "shards" / "manifest.json").exists():
        cmd = [str(Path(sys.executable).with_name("sgdm")), "prepare", str(BASE), *overrides]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return ds


# ------------------------------------------------------------------------------------- methods


def ridge_scores(train: SplitArrays, test: SplitArrays, test_ids: np.ndarray) -> dict:
    """Ridge fitted on ``train`` trials, scored on ``test`` trials whose subject is in test_ids."""
    keep = np.isin(test.subject, test_ids)
    ridge = RidgeDecoder().fit(train.eeg, train.clip[train.target_rows()])
    pred = ridge.predict(test.eeg[keep])
    return score_decoder(pred, test.image_index[keep], test.image_ids, ridge.center(test.clip))


def train_model(
    ds: Dataset, method: list[str], run: str, subjects: list[int] | None
) -> torch.nn.Module:
    """Train ``method`` (config overrides) with ``sgdm_dist.training.loop.train`` in this process."""
    from sgdm_dist.models import SGDM
    from sgdm_dist.training.loop import train

    out = ds.root / "runs" / run
    extra = [
        f"experiment.output_dir={out}",
        "experiment.tracking=false",
        "train.diffusion_steps=0",
        "train.recon_images=0",
        "train.checkpoint_every=100000",
        *method,
    ]
    if subjects is not None:
        extra.append(f"train.subjects={subjects}")
    cfg = load_config(RECIPE, [*ds.overrides, *extra])
    if (out / "model").exists():
        return SGDM.from_pretrained(out / "model")
    result = train(cfg)
    return SGDM.from_pretrained(result.model_dir)


def model_scores(model, test: SplitArrays, test_ids: np.ndarray, unseen: bool) -> dict:
    keep = np.isin(test.subject, test_ids)
    subject = np.zeros(keep.sum(), dtype=np.int64) if unseen else test.subject[keep]
    pred = predict_centred(model, test.eeg[keep], subject)
    cands = centred_candidates(model, test.clip)
    return score_decoder(pred, test.image_index[keep], test.image_ids, cands)


# Methods: "ridge" or config overrides on top of configs/decoding.yaml (the default recipe).
METHODS: dict[str, list[str]] = {
    "default": [],
    "nice": ["model.encoder.kind=nice"],
    "atms": ["model.encoder.kind=atms"],
    "eegnet": ["model.encoder.kind=eegnet"],
    "linear": ["model.encoder.kind=linear"],
    "reference": ["model.variant=reference"],  # configs/reference.yaml on the same recipe
    "axial-500steps": [  # the recipe before #13: fixed steps, last weights (scored in centred space)
        "train.align_epochs=null",
        "train.align_steps=500",
        "train.select_best=false",
        "train.early_stop_patience=null",
        "data.loader.batch_size=16",
    ],
}


def run_dataset(ds: Dataset, methods: list[str], loso_folds: list[int]) -> list[dict]:
    """Every method intra-subject (one model, 3 subjects) and leave-one-subject-out."""
    cfg = ds.config()
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    subjects = sorted(set(train.subject.tolist()))
    rows = []

    def subset(a: SplitArrays, keep: np.ndarray) -> SplitArrays:
        return SplitArrays(a.eeg[keep], a.subject[keep], a.image_index[keep], a.image_ids, a.clip)

    for method in methods:
        t0 = time.perf_counter()
        if method == "ridge":  # one ridge per subject, as the encoders' published baselines
            per = [
                ridge_scores(subset(train, train.subject == s), test, np.array([s]))
                for s in subjects
            ]
            intra = {m: _pool([p[m] for p in per]) for m in ("single", "averaged")}
        else:
            model = train_model(ds, METHODS[method], method, None)
            intra = model_scores(model, test, np.array(subjects), unseen=False)
        rows.append(_row(ds, method, "intra", intra, time.perf_counter() - t0))
        for held in loso_folds:
            t0 = time.perf_counter()
            rest = [s for s in subjects if s != held]
            if method == "ridge":
                loso = ridge_scores(subset(train, train.subject != held), test, np.array([held]))
            else:
                model = train_model(ds, METHODS[method], f"{method}-loso{held}", rest)
                loso = model_scores(model, test, np.array([held]), unseen=True)
            rows.append(_row(ds, method, f"loso-{held}", loso, time.perf_counter() - t0))
    return rows


def _pool(parts: list[dict[str, float]]) -> dict[str, float]:
    """Per-subject scores → pooled over subjects (equal trial counts: mean; s.e. of the pool)."""
    n = sum(p["n"] for p in parts)
    out = {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}
    for k in ("top1", "top5"):
        out[f"{k}_se"] = (out[k] * (1 - out[k]) / n) ** 0.5
    out["n"] = n
    return out


def _row(ds: Dataset, method: str, setting: str, scores: dict, seconds: float) -> dict:
    row = {"dataset": ds.name, "method": method, "setting": setting, "seconds": seconds}
    for mode in ("single", "averaged"):
        for k, v in scores[mode].items():
            row[f"{mode}_{k}"] = v
    print(_fmt(row), flush=True)
    return row


HEADER = (
    f"{'dataset':<18} {'method':<15} {'setting':<8} "
    f"{'single top-1':>15} {'single top-5':>15} {'avg top-1':>15} {'avg top-5':>15} "
    f"{'hubs':>5} {'pw-cos':>6} {'chance':>6} {'s':>5}"
)


def _fmt(r: dict) -> str:
    def pm(key: str) -> str:
        return f"{r[key]:.3f}±{r[key + '_se']:.3f}"

    return (
        f"{r['dataset']:<18} {r['method']:<15} {r['setting']:<8} "
        f"{pm('single_top1'):>15} {pm('single_top5'):>15} {pm('averaged_top1'):>15} "
        f"{pm('averaged_top5'):>15} {r['single_distinct_top1']:>5.0f} "
        f"{r['single_pairwise_cos']:>6.2f} {r['single_chance_top1']:>6.3f} {r['seconds']:>5.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 methods, 1 LOSO fold")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench-decoding"))
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--sizes", nargs="*", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import logging

    logging.disable(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    sizes = args.sizes or (["small"] if args.quick else ["small", "large"])
    methods = args.methods or (["ridge", "default"] if args.quick else ["ridge", *METHODS])
    folds = [3] if args.quick else [1, 2, 3]
    print(HEADER, flush=True)
    rows = []
    for size in sizes:
        for family in args.families:
            ds = make_dataset(family, size, args.work.resolve(), args.seed)
            rows += run_dataset(ds, methods, folds)
    ratios = []
    for r in rows:
        if r["method"] == "default" and r["setting"] == "intra":
            ridge = next(
                x
                for x in rows
                if x["dataset"] == r["dataset"]
                and x["method"] == "ridge"
                and x["setting"] == "intra"
            )
            ratios.append(r["single_top1"] / max(ridge["single_top1"], 1e-9))
    loso = [
        r["single_top1"] / r["single_chance_top1"]
        for r in rows
        if r["method"] == "default" and r["setting"].startswith("loso")
    ]
    if loso:
        print(f"decoding: default LOSO top-1 / chance min={min(loso):.2f}")
    print(f"decoding: default/ridge top-1 ratio min={min(ratios) if ratios else float('nan'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
