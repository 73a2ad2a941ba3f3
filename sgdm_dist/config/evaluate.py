"""Evaluate section: retrieval protocol, reconstruction sampling and metric backbones."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sgdm_dist.config.base import Section

BackboneName = Literal["alexnet", "inception", "clip", "effnet", "swav"]
SamplerName = Literal["ddim", "dpm++"]


class EvaluateConfig(Section):
    n_way: list[int] = Field(
        default_factory=lambda: [2, 4, 10, 50, 200],
        description="Candidate-set sizes for k-way retrieval; a size >= the number of test images "
        "means all of them.",
    )
    top_k: list[int] = Field(default_factory=lambda: [1, 5])
    average_reps: bool = Field(
        True,
        description="Headline retrieval from test repetitions averaged per image (the published "
        "protocol); False → single trials. Both are always computed and written.",
    )
    average_space: Literal["eeg", "prediction"] = Field(
        "eeg",
        description="Where repetitions are averaged: 'eeg' averages the trials' EEG and encodes the "
        "mean (NICE/ATM protocol); 'prediction' averages the single-trial CLIP predictions.",
    )
    subjects: list[int] | None = Field(
        None,
        description="Test subjects to evaluate (1-based ids); None → every subject in the shards.",
    )
    subject_agnostic: bool = Field(
        False,
        description="Encode every trial as subject 0 (the subject-agnostic fallback): the "
        "inter-subject / leave-one-subject-out protocol. Subjects the model never saw are mapped "
        "to 0 either way.",
    )
    align_unseen_s: float = Field(
        0.0,
        ge=0,
        le=0.2,
        description="Latency alignment of subjects the model was not trained on (seconds, the "
        "largest shift; 0 = off): their trials are shifted so their evoked response lines up, by "
        "global field power, with the training subjects' (the shards' train split), before they "
        "are encoded. Applies to `sgdm evaluate` and the tuning objective's held-out subjects "
        "(docs/decoding.md).",
    )
    retrieval_trials: int = Field(
        20, gt=0, description="Random candidate subsets drawn per prediction for k-way retrieval."
    )
    reconstruct: bool = Field(
        True, description="Reconstruct the test images and score them; False → retrieval only."
    )
    steps: int = Field(25, gt=0, description="Sampler steps for reconstruction.")
    guidance_scale: float = Field(3.0, ge=0)
    scheduler: SamplerName = Field("ddim", description="Sampler for reconstruction.")
    structure_strength: float | None = Field(
        None,
        ge=0,
        le=1,
        description="img2img start from the EEG's predicted structure; None → the model's "
        "model.structure_strength (docs/model.md).",
    )
    baselines: bool = Field(
        True,
        description="Also score the floor (shuffled EEG), the ceiling (autoencoder round trip) and "
        "the condition sensitivity (two more sampling passes per subject).",
    )
    recon_batch_size: int = Field(16, gt=0, description="EEG rows per sampling batch.")
    recon_max_images: int | None = Field(
        None,
        gt=1,
        description="Reconstruct only the first N test images (by image index) per subject; None → "
        "all. Metrics on a subset are not comparable with papers (flagged in metrics.json).",
    )
    save_images: bool = Field(
        True, description="Write every reconstruction as a PNG under <out>/reconstructions/."
    )
    device: str | None = Field(None, description="torch device; None → cuda when available.")
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

    @field_validator("subjects")
    @classmethod
    def _subject_ids(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and (not values or any(v < 1 for v in values)):
            raise ValueError("must list 1-based subject ids (or be null for every subject)")
        return values

    @field_validator("top_k")
    @classmethod
    def _ranks(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise ValueError("must list ranks >= 1")
        return values
