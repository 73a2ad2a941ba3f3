"""Tune section: Ray Tune sweep over dotted config keys with leave-subject-out folds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sgdm_dist.config.base import Section


class TuneConfig(Section):
    num_samples: int = Field(8, gt=0)
    metric: str = "val/top1"
    mode: Literal["max", "min"] = "max"
    folds: Literal["leave_one_subject_out", "group_kfold"] = "leave_one_subject_out"
    n_folds: int | None = Field(None, gt=1)
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Dotted config key → {type: uniform|loguniform|choice|grid, ...}.",
    )
    max_concurrent: int = Field(2, gt=0)
