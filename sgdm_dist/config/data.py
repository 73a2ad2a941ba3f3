"""Data section: where recordings come from, how they are preprocessed, featurised and sharded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

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
    ica: bool = False
    tmin: float = Field(-0.2, description="Epoch start relative to stimulus onset, s.")
    tmax: float = Field(0.8, description="Epoch end relative to stimulus onset, s.")
    baseline: tuple[float | None, float] | None = (None, 0.0)
    resample_hz: float = Field(100.0, gt=0, description="Sampling rate after epoching, Hz.")
    channels: Literal["occipital_parietal", "all"] | list[str] = "occipital_parietal"
    mvnn: Literal["time", "epochs", "none"] = "time"
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
    batch_size: int = Field(32, gt=0)


class SyntheticConfig(Section):
    """Knobs of the synthetic THINGS-like dataset (the embedded default)."""

    n_subjects: int = Field(2, gt=0)
    n_sessions: int = Field(1, gt=0)
    n_train_concepts: int = Field(8, gt=0)
    images_per_concept: int = Field(2, gt=0)
    n_test_concepts: int = Field(4, gt=0)
    train_reps: int = Field(2, gt=0)
    test_reps: int = Field(4, gt=0)
    snr: float = Field(
        1.0, gt=0, description="Evoked-response to background-noise amplitude ratio."
    )
    subject_variability: float = Field(
        0.5, ge=0, description="0: identical subjects; 1: unrelated spatial mixing."
    )


class LoaderConfig(Section):
    batch_size: int = Field(32, gt=0, description="Per-process batch size.")
    num_workers: int = Field(2, ge=0)
    shuffle_buffer: int = Field(1000, ge=0)
    resampled: bool = False
    skip_corrupt: bool = False


class DataConfig(Section):
    source: Literal["synthetic", "things_raw", "things_preprocessed", "mne"] = "synthetic"
    raw_dir: Path = Field(
        Path("data/raw"), description="Input recordings (THINGS-EEG2 layout or MNE files)."
    )
    image_dir: Path | None = Field(
        None, description="Stimulus images (training_images/, test_images/)."
    )
    shard_dir: str = Field(
        "data/shards", description="Output/input shards: a local path or fsspec URL."
    )
    subjects: list[int] | None = Field(
        None, description="Subjects to use (1-based); None → all found."
    )
    shard_max_samples: int = Field(2000, gt=0)
    preprocess: PreprocessConfig = PreprocessConfig()
    features: FeatureConfig = FeatureConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    loader: LoaderConfig = LoaderConfig()
