"""Cross-subject folds: which subjects a fold trains on and which it holds out.

leave_one_subject_out: one fold per subject, that subject held out. group_kfold: the sorted subjects
cut into ``n_folds`` contiguous groups of (nearly) equal size, each group held out once. The
held-out subjects are scored on their validation split (concepts carved from the training
partition), so a sweep never reads the test set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sgdm_dist.config import Config, ConfigError, validate


@dataclass(frozen=True)
class Fold:
    index: int
    held_out: list[int]  # 1-based subject ids never seen in this fold's training
    train: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fold:
        return cls(int(data["index"]), list(data["held_out"]), list(data["train"]))


def make_folds(cfg: Config, available: list[int]) -> list[Fold]:
    """Folds of ``cfg.tune`` over the subjects ``available`` in the shards (manifest subjects)."""
    tc = cfg.tune
    subjects = sorted(set(tc.subjects if tc.subjects is not None else available))
    missing = sorted(set(subjects) - set(available))
    if missing:
        raise ConfigError(
            f"tune.subjects: {missing} not in the shards at {cfg.data.shard_dir} (have {available})"
        )
    if len(subjects) < 2:
        raise ConfigError(
            f"tune.folds: cross-subject folds need at least 2 subjects, "
            f"{cfg.data.shard_dir} has {subjects}"
        )
    n_folds = len(subjects) if tc.folds == "leave_one_subject_out" else tc.n_folds or len(subjects)
    if n_folds > len(subjects):
        raise ConfigError(f"tune.n_folds={n_folds} exceeds the {len(subjects)} subjects {subjects}")
    _check_agnostic_path(cfg)
    groups = [sorted(int(s) for s in g) for g in np.array_split(np.array(subjects), n_folds)]
    folds = [Fold(i, held, [s for s in subjects if s not in held]) for i, held in enumerate(groups)]
    return folds[: tc.max_folds] if tc.max_folds else folds


def _check_agnostic_path(cfg: Config) -> None:
    """Refuse folds whose held-out subjects would be decoded through an untrained fallback entry.

    Held-out subjects go in with id 0; that entry of the subject embedding / layer / token is only
    trained when ``model.encoder.subject_dropout`` > 0 replaces real ids with 0 during training.
    """
    from sgdm_dist.models.encoders import uses_subject_ids

    enc = cfg.model.encoder
    if uses_subject_ids(enc) and enc.subject_dropout <= 0:
        raise ConfigError(
            f"tune.folds={cfg.tune.folds}: held-out subjects are decoded with the subject-agnostic "
            f"entry (id 0), which model.encoder.subject_dropout = {enc.subject_dropout} never "
            f"trains (model.encoder.kind={enc.kind}, subject_conditioning="
            f"{enc.subject_conditioning}); set model.encoder.subject_dropout > 0 (e.g. 0.1) or "
            "model.encoder.subject_conditioning=none"
        )


def fold_config(cfg: Config, fold: Fold, output_dir: str) -> Config:
    """The trial's config restricted to the fold's training subjects, writing to ``output_dir``.

    Per-fold training runs are not tracked on their own: the trial's MLflow child run carries
    the fold scores (``metrics.jsonl`` beside each fold keeps the training curve).
    """
    tree = cfg.to_dict()
    tree["train"]["subjects"] = fold.train
    tree["experiment"]["output_dir"] = output_dir
    tree["experiment"]["tracking"] = False
    return validate(tree)
