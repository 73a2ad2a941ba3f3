"""Experiment-wide settings: name, seed, where outputs go and where runs are tracked."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from sgdm_dist.config.base import Section


class ExperimentConfig(Section):
    name: str = Field("sgdm", min_length=1, description="Run/experiment name (MLflow experiment).")
    seed: int = Field(20200220, ge=0, description="Global seed (THINGS-EEG2's official seed).")
    output_dir: Path = Field(
        Path("outputs"), description="Root folder for checkpoints and reports."
    )
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    tracking: bool = Field(True, description="Track runs in MLflow.")
    tracking_timeout_s: float = Field(
        5.0, gt=0, description="Longest wait for one MLflow request (training never blocks longer)."
    )
    tracking_close_timeout_s: float = Field(
        30.0,
        ge=0,
        description="Longest wait at the end of training for undelivered tracking calls; the "
        "model upload for `sgdm register --run` may take longer while the server answers.",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; None → $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch/BLAS threads per process; None → usable cores ÷ local processes.",
    )
