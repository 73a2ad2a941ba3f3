"""Evaluate section: retrieval protocol, reconstruction sampling and metric backbones."""

from __future__ import annotations

from pydantic import Field

from sgdm_dist.config.base import Section


class EvaluateConfig(Section):
    n_way: list[int] = Field(default_factory=lambda: [2, 4, 10, 50, 200])
    top_k: list[int] = Field(default_factory=lambda: [1, 5])
    average_reps: bool = Field(
        True, description="Average test repetitions per image before retrieval."
    )
    steps: int = Field(25, gt=0, description="Sampler steps for reconstruction.")
    guidance_scale: float = Field(3.0, ge=0)
    weights_dir: str | None = Field(
        None, description="Local folder with metric backbone weights; None → random init."
    )
