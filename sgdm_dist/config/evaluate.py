"""Evaluate section: retrieval protocol, reconstruction sampling and metric backbones."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sgdm_dist.config.base import Section

BackboneName = Literal["alexnet", "inception", "clip", "effnet", "swav"]


class EvaluateConfig(Section):
    n_way: list[int] = Field(
        default_factory=lambda: [2, 4, 10, 50, 200],
        description="Candidate-set sizes for k-way retrieval; a size >= the number of test images "
        "means all of them.",
    )
    top_k: list[int] = Field(default_factory=lambda: [1, 5])
    average_reps: bool = Field(
        True, description="Average test repetitions per image before retrieval."
    )
    retrieval_trials: int = Field(
        20, gt=0, description="Random candidate subsets drawn per prediction for k-way retrieval."
    )
    steps: int = Field(25, gt=0, description="Sampler steps for reconstruction.")
    guidance_scale: float = Field(3.0, ge=0)
    weights_dir: str | None = Field(
        None,
        description="Local folder (or torch hub cache, e.g. ~/.cache/torch/hub/checkpoints) with "
        "metric backbone weights under their published file names; None → random init.",
    )
    backbones: list[BackboneName] = Field(
        default_factory=lambda: ["alexnet", "inception", "clip", "effnet", "swav"],
        description="Feature backbones for the reconstruction metrics (PixCorr and SSIM always run).",
    )
    clip_model: str = Field("ViT-L-14", description="open_clip model name for the CLIP metric.")
    clip_weights: str | None = Field(
        None,
        description="open_clip checkpoint file for clip_model (absolute, or relative to "
        "weights_dir); None → random init.",
    )
    allow_random_backbones: bool = Field(
        True,
        description="Use randomly initialised backbones (loud warning, flagged in the results) "
        "when weights are missing; False → missing weights are an error.",
    )
    metric_batch_size: int = Field(16, gt=0, description="Images per backbone forward pass.")
    report_max_images: int = Field(
        24, gt=0, description="Stimuli shown in the report's image grid."
    )

    @field_validator("n_way")
    @classmethod
    def _candidate_sets(cls, values: list[int]) -> list[int]:
        if not values or any(v < 2 for v in values):
            raise ValueError("must list candidate-set sizes >= 2")
        return values

    @field_validator("top_k")
    @classmethod
    def _ranks(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise ValueError("must list ranks >= 1")
        return values
