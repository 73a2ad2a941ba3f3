"""Tune section: a Ray Tune sweep over dotted config keys, scored by leave-subject-out folds.

The search space is data: ``space: {"train.lr": {type: loguniform, low: 1e-5, high: 1e-3}}``.
See docs/tune.md for what each trial runs and what the scheduler sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sgdm_dist.config.base import Section

# What every trial reports (sgdm_dist.tune.trial); ``tune.metric`` must be one of them.
# heldout_* = mean over folds of the held-out subject's validation score (running mean mid-sweep).
REPORTED_METRICS = ("heldout_top1", "heldout_top5", "heldout_mrr", "heldout_cosine")

# Keys a search space may not touch: the sweep itself owns them (folds, outputs, tracking).
RESERVED_KEYS = ("tune.", "train.subjects", "experiment.output_dir", "experiment.tracking")


class SearchDim(Section):
    """One dimension of the search space.

    uniform/loguniform: real ``low``..``high``; randint: integer ``low``..``high`` (high excluded);
    choice: one of ``values`` (sampled); grid: every one of ``values`` (needs ``search: random``).
    """

    type: Literal["uniform", "loguniform", "randint", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds_or_values(self) -> SearchDim:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"type '{self.type}' needs a non-empty 'values' list")
            if self.low is not None or self.high is not None:
                raise ValueError(f"type '{self.type}' takes 'values', not 'low'/'high'")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"type '{self.type}' needs 'low' and 'high'")
        if self.values is not None:
            raise ValueError(f"type '{self.type}' takes 'low'/'high', not 'values'")
        if not self.low < self.high:
            raise ValueError(f"'low' ({self.low}) must be < 'high' ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        if self.type == "randint" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("randint needs integer 'low' and 'high'")
        return self


class TuneConfig(Section):
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Sweep folder name under storage_path; None → experiment.name.",
    )
    storage_path: Path | None = Field(
        None,
        description="Where Ray Tune keeps the sweep (shared storage on a multi-node cluster); "
        "None → <experiment.output_dir>/tune.",
    )
    space: dict[str, SearchDim] = Field(
        default_factory=dict,
        description="Dotted config key → {type: uniform|loguniform|randint|choice|grid, ...}.",
    )
    num_samples: int = Field(8, gt=0, description="Trials (per grid point when grids are used).")
    search: Literal["optuna", "random"] = Field(
        "optuna", description="Optuna TPE searcher, or Ray's random/grid variant generator."
    )
    seed: int | None = Field(None, ge=0, description="Searcher seed; None → experiment.seed.")
    metric: Literal["heldout_top1", "heldout_top5", "heldout_mrr", "heldout_cosine"] = Field(
        "heldout_top1",
        description="The score a configuration is ranked by (mean over folds). heldout_mrr is the "
        "smooth retrieval score; heldout_cosine ranks a constant predictor first (docs/tune.md).",
    )
    mode: Literal["max", "min"] = "max"
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="ASHA stops weak trials early; fifo runs every trial to the end."
    )
    grace_period: int = Field(1, gt=0, description="ASHA: reports before a trial can be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: 1/rf of trials go on per rung.")
    folds: Literal["leave_one_subject_out", "group_kfold"] = "leave_one_subject_out"
    n_folds: int | None = Field(
        None, gt=1, description="group_kfold only: subject groups (None → one per subject)."
    )
    max_folds: int | None = Field(
        None, gt=0, description="Run only the first N folds per trial (cheaper, noisier)."
    )
    subjects: list[int] | None = Field(
        None, description="Subjects that take part in the folds (None → all in the manifest)."
    )
    max_concurrent: int = Field(2, gt=0, description="Trials running at the same time.")
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs per trial (per worker when >1).")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs per trial (per worker when >1).")
    workers_per_trial: int = Field(
        1, gt=0, description="> 1 → each fold trains under a Ray Train TorchTrainer (DDP)."
    )
    max_failures: int = Field(0, ge=0, description="Retries of a failed trial.")
    reuse_actors: bool = Field(
        True,
        description="Run the next trial in the same process (torch and diffusers are imported "
        "once); Ray replaces a process whose stopped trial does not exit within 2 s.",
    )
    ray_num_cpus: int | None = Field(
        None, gt=0, description="CPUs of the embedded local Ray; None → all of this machine."
    )
    keep_fold_models: bool = Field(
        False, description="Keep each fold's exported weights (off: only config + metrics stay)."
    )
    top_k: int = Field(5, gt=0, description="Rows of the final summary table.")

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        for key, dim in self.space.items():
            if any(key == r.rstrip(".") or key.startswith(r) for r in RESERVED_KEYS):
                raise ValueError(
                    f"space key '{key}' is set by the sweep itself and cannot be tuned"
                )
            if dim.type == "grid" and self.search == "optuna":
                raise ValueError(
                    f"space key '{key}': grid dimensions need search: random (Optuna samples)"
                )
        if self.n_folds is not None and self.folds != "group_kfold":
            raise ValueError("n_folds applies to folds: group_kfold only")
        if self.subjects is not None and len(set(self.subjects)) < 2:
            raise ValueError("subjects: folds need at least 2 distinct subjects")
        return self

    def resolved_storage(self, output_dir: Path) -> Path:
        return (self.storage_path or output_dir / "tune").expanduser().resolve()

    def resolved_name(self, experiment_name: str) -> str:
        return self.name or experiment_name
