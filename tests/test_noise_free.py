"""The noise-free reference of a synthetic dataset (baselines/noise_free.py) and its bench rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold, cross_val_predict

from sgdm_dist.baselines.arrays import load_split
from sgdm_dist.baselines.noise_free import fit_reference, source_features
from sgdm_dist.baselines.table import summary
from sgdm_dist.config import load_config

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "decoding.py"


def _explained(x: np.ndarray, y: np.ndarray) -> float:
    """Cross-validated R² of a ridge x → y, pooled over every output (noise columns included)."""
    pred = cross_val_predict(RidgeCV(alphas=np.logspace(-2, 4, 13)), x, y, cv=5)
    return float(1 - ((y - pred) ** 2).sum() / ((y - y.mean(axis=0)) ** 2).sum())


def test_noise_free_sources_are_what_the_recording_carries(tiny_shards: list[str]) -> None:
    """Each image's sources must predict its evoked response in the shards (through MNE, MVNN and
    the shards' image order): a wrong condition → image mapping explains nothing, as a shuffle does."""
    cfg = load_config(REPO / "configs" / "tiny.yaml", tiny_shards)
    train = load_split(cfg, "train")
    ids, concept, x = source_features(cfg, "train")
    assert len(ids) == len(concept) == len(x) == len(train.image_ids)
    row = np.searchsorted(ids, train.image_index)
    evoked = np.stack([train.eeg[row == i].mean(axis=0).ravel() for i in range(len(ids))])
    rng = np.random.default_rng(0)
    shuffled = [_explained(x[rng.permutation(len(x))], evoked) for _ in range(3)]
    assert max(shuffled) < 0 < _explained(x, evoked), shuffled


def test_kernel_reference_finds_what_a_linear_one_cannot() -> None:
    """On targets nonlinear in the sources, the cross-validated kernel decoder beats the linear one
    on new images; on linear targets the linear one is not worse."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(300, 4))
    concept = np.arange(300) // 3
    curved = np.stack([np.sin(2 * x[:, 0]), x[:, 1] ** 2, np.abs(x[:, 2])], axis=1)
    straight = x[:, :3] @ rng.standard_normal((3, 3))

    def heldout_r2(y: np.ndarray, kind: str) -> float:
        fit, held = next(GroupKFold(5).split(x, groups=concept))
        model = fit_reference(x[fit], y[fit], concept[fit], kind)
        pred = model.predict(x[held]) + y[fit].mean(axis=0)
        return float(1 - ((y[held] - pred) ** 2).sum() / ((y[held] - y[held].mean(0)) ** 2).sum())

    assert heldout_r2(curved, "kernel") > heldout_r2(curved, "linear") + 0.3
    assert heldout_r2(straight, "linear") >= heldout_r2(straight, "kernel") - 0.02


def test_reference_refuses_a_recorded_dataset(tiny_shards: list[str]) -> None:
    cfg = load_config(REPO / "configs" / "tiny.yaml", [*tiny_shards, "data.source=things_raw"])
    with pytest.raises(ValueError, match="synthetic dataset, not 'things_raw'"):
        source_features(cfg, "train")


def test_reference_refuses_another_seed_than_the_shards(tiny_shards: list[str]) -> None:
    cfg = load_config(REPO / "configs" / "tiny.yaml", [*tiny_shards, "experiment.seed=5"])
    with pytest.raises(
        ValueError, match=r"\.settings\.json: .*experiment\.seed=0, the config has 5"
    ):
        source_features(cfg, "train")


def test_bench_scores_the_reference_once_per_dataset(tmp_path: Path) -> None:
    """No LOSO folds and no training seeds for the noise-free rows (they see no subject, no seed)."""
    cmd = [sys.executable, str(BENCH), "--dry-run", "--work", str(tmp_path / "w"), "--quick"]
    cmd += ["--families", "nonlinear", "--methods", "noise-free", "ridge", "--train-seeds", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split()[:3] for line in result.stdout.splitlines()]
    assert rows == [
        ["nonlinear-small", "noise-free", "intra"],
        ["nonlinear-small", "ridge", "intra"],
        ["nonlinear-small", "ridge", "loso-3"],
    ]


def test_summary_reports_the_room_above_ridge() -> None:
    def row(dataset: str, method: str, top1: float) -> dict:
        return {"dataset": dataset, "method": method, "base": method, "setting": "intra",
                "single_top1": top1, "single_chance_top1": 0.02}  # fmt: skip

    rows = [row("a", "ridge", 0.05), row("a", "noise-free", 0.06), row("a", "default", 0.08)]
    assert summary(rows)[-2:] == [
        "decoding: noise-free/ridge top-1: a 1.20",
        "decoding: default/ridge top-1 ratio min=1.600",
    ]
    assert not any("noise-free" in line for line in summary(rows[::2]))
