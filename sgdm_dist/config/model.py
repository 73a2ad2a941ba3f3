"""Model section: EEG encoder, semantic head, multi-scale conditioning, UNet and diffusion settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sgdm_dist.config.base import Section

# diffusers' UNet2DConditionModel normalises with GroupNorm(32 groups) unless told otherwise.
UNET_NORM_GROUPS = 32


class EncoderConfig(Section):
    """EEG encoder: per-channel temporal convolutions, then attention across channels and time."""

    kind: Literal["axial", "nice", "atms", "eegnet", "linear"] = Field(
        "axial",
        description="axial (patch transformer, the fields below) | nice | atms | eegnet (published "
        "encoders, re-implemented) | linear (dropout + linear readout); see docs/decoding.md.",
    )
    dim: int = Field(256, gt=0, description="Width of z_eeg and of every encoder token.")
    heads: int = Field(4, gt=0)
    depth: int = Field(2, ge=0, description="Axial (channel + time) attention blocks.")
    n_tokens: int = Field(
        4, gt=0, description="Length of the EEG token sequence fed to cross-attention."
    )
    patch_size: int = Field(
        10, gt=0, description="Samples per time patch (temporal conv stride), samples."
    )
    temporal_kernel: int = Field(
        13, gt=0, description="First temporal convolution kernel length, samples."
    )
    readout_dim: int = Field(
        8,
        gt=0,
        description="Features per (channel, time patch) cell in the flattened z_eeg readout.",
    )
    dropout: float = Field(0.1, ge=0, lt=1)
    subject_conditioning: Literal["none", "embedding", "layer"] = Field(
        "embedding",
        description="none | embedding (a learned subject vector: added to the axial encoder's "
        "tokens, ATM-S's subject token, the linear encoder's bias) | layer (subject-specific C×C "
        "spatial input layer; axial only). Index 0 is the subject-agnostic fallback. nice and "
        "eegnet take no subject input (as published).",
    )
    subject_dropout: float = Field(
        0.1, ge=0, le=1, description="Training probability of using the unknown-subject fallback."
    )
    augment_shift: int = Field(
        0, ge=0, description="Training: random time shift of each trial, up to ± samples."
    )
    augment_channel_drop: float = Field(
        0.0, ge=0, lt=1, description="Training: probability of zeroing each channel of a trial."
    )
    augment_noise: float = Field(
        0.0, ge=0, description="Training: Gaussian noise, s.d. as a fraction of the trial's s.d."
    )

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> EncoderConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.dim < 2:
            raise ValueError("dim must be >= 2")
        if self.subject_conditioning == "layer" and self.kind != "axial":
            # Silently treating it as another mode would train a model the user did not ask for.
            raise ValueError(
                f"subject_conditioning='layer' (a subject-specific C×C input layer) exists for "
                f"kind 'axial' only, got kind '{self.kind}': use 'embedding' or 'none'"
            )
        return self


class SemanticConfig(Section):
    """EEG → CLIP head trained with a CLIP-style contrastive loss."""

    hidden_dim: int | None = Field(None, gt=0, description="MLP width; None → 2 × encoder.dim.")
    dropout: float = Field(0.1, ge=0, lt=1)
    logit_scale_init: float = Field(
        1 / 0.07, gt=0, description="Initial inverse temperature (CLIP's 1/0.07)."
    )
    logit_scale_max: float = Field(100.0, gt=0, description="Clamp of the inverse temperature.")
    center_targets: bool = Field(
        True,
        description="Contrast against clip − running mean (the image-specific part); see docs/model.md.",
    )
    center_momentum: float = Field(
        0.01, gt=0, le=1, description="EMA rate of the running target mean, per training batch."
    )


class ConditioningConfig(Section):
    """How z_eeg and ẑ_sem reach the UNet (see docs/model.md)."""

    n_semantic_tokens: int = Field(
        4, ge=1, description="Cross-attention tokens expanded from ẑ_sem (the coarse, global part)."
    )
    time_embedding: bool = Field(
        True,
        description="Also add concat(z_eeg, ẑ_sem) to the UNet time embedding (every ResNet block).",
    )


class UNetConfig(Section):
    pretrained: str | None = Field(
        None, description="Stable-Diffusion UNet folder or hub id; None → from scratch."
    )
    pretrained_subfolder: str | None = Field(
        None,
        description="Subfolder holding the UNet (e.g. 'unet' for a full SD repo); "
        "None → 'unet' when the folder has one, else the folder itself.",
    )
    block_out_channels: list[int] = Field(default_factory=lambda: [320, 640, 1280, 1280])
    layers_per_block: int = Field(2, gt=0)
    cross_attention_dim: int = Field(
        768, gt=0, description="Conditioning token width (a pretrained UNet's own width wins)."
    )
    attention_head_dim: int = Field(8, gt=0)
    latent_channels: int = Field(4, gt=0)
    latent_size: int = Field(64, gt=0, description="Latent height = width (image px / 8).")

    @model_validator(mode="after")
    def _channels_fit_groupnorm(self) -> UNetConfig:
        if not self.block_out_channels:
            raise ValueError("block_out_channels must not be empty")
        bad = [c for c in self.block_out_channels if c % UNET_NORM_GROUPS]
        if bad:
            raise ValueError(
                f"block_out_channels {bad} are not multiples of {UNET_NORM_GROUPS} "
                "(the UNet's GroupNorm groups)"
            )
        return self


class DiffusionConfig(Section):
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    num_train_timesteps: int = Field(1000, gt=0)
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear"
    beta_start: float = Field(0.00085, gt=0)
    beta_end: float = Field(0.012, gt=0)
    min_snr_gamma: float | None = Field(5.0, gt=0, description="Min-SNR weighting γ; None → off.")
    cond_dropout: float = Field(
        0.1, ge=0, le=1, description="Probability of the null condition (CFG)."
    )


class ModelConfig(Section):
    variant: Literal["sgdm", "reference"] = Field(
        "sgdm",
        description="sgdm | reference (the seed sketch: attention over time, one concat(z_eeg, "
        "z_sem) token, zero null condition) kept for benchmarks.",
    )
    clip_dim: int = Field(1024, gt=0)
    n_classes: int | None = Field(
        None, gt=0, description="Concept classes for category guidance; None → off."
    )
    lambda_align: float = Field(1.0, ge=0, description="Weight of the contrastive loss.")
    lambda_mse: float = Field(0.0, ge=0, description="Weight of the 1 − cos(ẑ_sem, clip) term.")
    lambda_cls: float = Field(0.0, ge=0, description="Weight of the concept classifier loss.")
    lambda_structure: float = Field(
        1.0,
        ge=0,
        description="Weight of the structure head's loss (EEG → coarse latent, docs/model.md); "
        "0 → no structure head.",
    )
    structure_strength: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Default sampling start (img2img strength) from the EEG's predicted structure: "
        "1 → pure noise, 0 → the structure decoded as is.",
    )
    encoder: EncoderConfig = EncoderConfig()
    semantic: SemanticConfig = SemanticConfig()
    conditioning: ConditioningConfig = ConditioningConfig()
    unet: UNetConfig = UNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()

    @model_validator(mode="after")
    def _classifier_needs_classes(self) -> ModelConfig:
        if self.lambda_cls > 0 and self.n_classes is None:
            raise ValueError("lambda_cls > 0 needs n_classes (the number of concept classes)")
        return self
