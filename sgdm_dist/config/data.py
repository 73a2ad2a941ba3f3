"""Data section: where recordings come from, how they are preprocessed, featurised and sharded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from sgdm_dist.config.base import Section


class PreprocessConfig(Section):
    """MNE preprocessing; defaults follow the official THINGS-EEG2 pipeline (PROTOCOL.md)."""

    notch_hz: list[float] = Field(
        default_factory=list, description="Line-noise notch frequencies, Hz."
    )
    l_freq: float | None = Field(
        None, ge=0, description="Band-pass low edge, Hz (None: no high-pass)."
    )
    h_freq: float | None = Field(
        None, gt=0, description="Band-pass high edge, Hz (None: no low-pass)."
    )
    ica: bool = Field(False, description="Remove blink components found with EOG proxies.")
    ica_n_components: int | float = Field(
        20, gt=0, description="ICA components (int) or explained variance (float < 1)."
    )
    ica_fit_hz: float = Field(
        200.0, gt=0, description="ICA is fitted on data decimated to about this rate, Hz (speed)."
    )
    eog_channels: list[str] = Field(
        default_factory=lambda: ["Fp1", "Fp2"],
        description="Frontal channels used as EOG proxies to find blink ICA components.",
    )
    tmin: float = Field(-0.2, description="Epoch start relative to stimulus onset, s.")
    tmax: float = Field(0.8, description="Epoch end relative to stimulus onset, s.")
    baseline: tuple[float | None, float] | None = (None, 0.0)
    resample_hz: float = Field(100.0, gt=0, description="Sampling rate after epoching, Hz.")
    crop: tuple[float, float] | None = Field(
        None, description="Crop epochs to [start, end] s after resampling (NICE/ATM: 0..1 s)."
    )
    channels: Literal["occipital_parietal", "all"] | list[str] = "occipital_parietal"
    target_event: int = Field(
        99999, description="Stimulus-channel code of catch trials, dropped before epoching."
    )
    max_train_reps: int | None = Field(
        None, gt=0, description="Repetitions kept per training image per session (THINGS: 2)."
    )
    max_test_reps: int | None = Field(
        None, gt=0, description="Repetitions kept per test image per session (THINGS: 20)."
    )
    mvnn: Literal["time", "epochs", "none"] = "time"
    mvnn_fit: Literal["both", "train"] = Field(
        "both",
        description="Partitions the MVNN covariance is averaged over: 'both' = official "
        "THINGS-EEG2 code, 'train' = leak-free (NICE/ATM).",
    )
    average_test_reps: bool = False


class FeatureConfig(Section):
    """Frozen image encoders whose outputs are cached in the shards."""

    clip_model: str = Field("ViT-H-14", description="open_clip architecture name.")
    clip_pretrained: str | None = Field(
        None, description="open_clip pretrained tag or local checkpoint path; None → random init."
    )
    vae: str | None = Field(
        None, description="diffusers AutoencoderKL hub id or local folder; None → tiny random VAE."
    )
    image_size: int = Field(512, gt=0, description="Resolution the VAE encodes, px.")
    autoencoder_steps: int = Field(
        600,
        ge=0,
        description="With vae=None: steps of the small AutoencoderKL trained on the training "
        "stimuli (data/autoencoder.py); 0 → a random VAE (pipeline tests only).",
    )
    autoencoder_lr: float = Field(1e-3, gt=0, description="Peak learning rate of that training.")
    autoencoder_batch_size: int = Field(
        16,
        gt=0,
        description="Stimuli per step of that training (8 reached a held-out round trip of "
        "PixCorr 0.29-0.75 by seed, 16 reached 0.62-0.94: docs/model.md).",
    )
    batch_size: int = Field(32, gt=0)
    device: str | None = Field(None, description="torch device; None → cuda when available.")


class SyntheticConfig(Section):
    """Knobs of the synthetic THINGS-like dataset (the embedded default); see docs/data.md."""

    n_subjects: int = Field(2, gt=0)
    n_sessions: int = Field(1, gt=0)
    n_train_concepts: int = Field(8, gt=0)
    images_per_concept: int = Field(2, gt=0)
    n_test_concepts: int = Field(4, gt=0)
    train_reps: int = Field(2, gt=0, description="Repetitions per training image per session.")
    test_reps: int = Field(4, gt=0, description="Repetitions per test image per session.")
    n_factors: int = Field(8, gt=0, description="Latent image factors that drive the EEG.")
    image_spread: float = Field(
        0.6, ge=0, description="Within-concept spread of image factors (concept spread = 1)."
    )
    image_px: int = Field(64, ge=16, description="Side of the written stimulus images, px.")
    snr: float = Field(
        1.0, gt=0, description="Evoked-response to background-noise amplitude ratio."
    )
    subject_variability: float = Field(
        0.5, ge=0, le=1, description="0: identical subjects; 1: unrelated spatial mixing."
    )
    line_hz: float = Field(50.0, gt=0, description="Mains frequency of the line noise, Hz.")
    blink_rate_hz: float = Field(0.25, ge=0, description="Mean eye blinks per second.")
    catch_fraction: float = Field(
        0.05, ge=0, lt=1, description="Fraction of extra target (catch) trials, event 99999."
    )
    family: Literal["additive", "latency", "nonlinear"] = Field(
        "additive",
        description="Generative family (docs/decoding.md): additive (factors scale fixed ERPs) | "
        "latency (factors shift latencies and widths) | nonlinear (rectified factor mixtures, "
        "damped oscillations).",
    )
    latency_jitter_s: float = Field(0.0, ge=0, description="Per-trial latency jitter s.d., s.")
    subject_latency_s: float = Field(0.0, ge=0, description="Per-subject latency shift s.d., s.")
    subject_gain: float = Field(0.0, ge=0, description="Per-subject log-amplitude s.d.")


class LoaderConfig(Section):
    batch_size: int = Field(32, gt=0, description="Per-process batch size.")
    num_workers: int = Field(2, ge=0)
    shuffle_buffer: int = Field(1000, ge=0)
    resampled: bool = False
    skip_corrupt: bool = False
    drop_last: bool = Field(
        False,
        description="False: every sample once per epoch, last batch smaller (same size on every "
        "rank), <= world-1 wrap-around pads flagged in batch['pad']. True: only full batches.",
    )
    verify_checksums: bool = Field(
        True, description="Check each shard's sha256 on its first read in a process (streamed)."
    )
    pin_memory: bool | Literal["auto"] = Field(
        "auto", description="auto: pin when CUDA is available."
    )
    persistent_workers: bool = Field(
        True, description="Keep DataLoader workers across epochs when a loader is iterated again."
    )


class DataConfig(Section):
    source: Literal["synthetic", "things_raw", "things_preprocessed", "mne", "bids"] = "synthetic"
    raw_dir: Path = Field(
        Path("data/raw"), description="Input recordings (THINGS-EEG2 layout or MNE files)."
    )
    image_dir: Path | None = Field(
        None, description="Stimulus images (training_images/, test_images/)."
    )
    shard_dir: str = Field(
        "data/shards", description="Output/input shards: a local path or fsspec URL."
    )
    cache_dir: Path = Field(
        Path("data/cache"), description="Local content-addressed cache of image features."
    )
    subjects: list[int] | None = Field(
        None, description="Subjects to use (1-based); None → all found."
    )
    shard_max_samples: int = Field(2000, gt=0)
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="Fraction of training concepts held out as validation."
    )
    val_by: Literal["concept", "image"] = Field(
        "concept",
        description="Hold out whole concepts (zero-shot, like test) or single images per concept.",
    )
    image_splits: list[Literal["train", "val", "test"]] = Field(
        default_factory=lambda: ["val", "test"],
        description="Splits whose samples carry the stimulus image (img.png) for evaluation.",
    )
    workers: int = Field(1, gt=0, description="Processes preprocessing subjects/sessions.")
    preprocess: PreprocessConfig = PreprocessConfig()
    features: FeatureConfig = FeatureConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    loader: LoaderConfig = LoaderConfig()

    @model_validator(mode="after")
    def _epoch_window(self) -> DataConfig:
        p = self.preprocess
        if p.tmax <= p.tmin:
            raise ValueError(f"preprocess.tmax ({p.tmax}) must be > tmin ({p.tmin})")
        return self
