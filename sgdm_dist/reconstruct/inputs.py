"""EEG to reconstruct from: one split of the shards (trials grouped by subject and image, repetitions
averaged as the THINGS-EEG2 test protocol does) or a ``.npy`` array [N, C, T], checked against the
model before any sampling starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sgdm_dist.data.latency import shift_trials
from sgdm_dist.data.loader import EEGLoader, ShardStream
from sgdm_dist.data.manifest import Manifest, ShardEntry, read_manifest
from sgdm_dist.data.samples import SampleSpec
from sgdm_dist.data.splits import select_shards
from sgdm_dist.models import SGDM
from sgdm_dist.reconstruct.model import (
    ReconstructError,
    TrainingData,
    check_eeg_shape,
    model_subjects,
)


@dataclass
class SplitEEG:
    """One split of a shard set, grouped by subject and image.

    Per subject s: ``mean_eeg[s]`` [M_s, C, T] float32, the mean over the repetitions of each image;
    ``image_index[s]`` [M_s] sorted; ``n_reps[s]`` [M_s]; and, when read with a model, single-trial
    CLIP predictions ``trial_pred[s]`` [N_s, D] with their ``trial_index[s]`` [N_s].
    ``images``: image index → stimulus [3, H, W] uint8 (when the split stores them);
    ``latents``: image index → cached VAE latent [4, h, w] float32;
    ``concepts``: image index → concept name; ``shifts``: subject → the samples its trials were
    moved by before reading (latency alignment, reconstruct/alignment.py; empty when off).
    """

    shard_dir: str
    split: str
    manifest: Manifest
    mean_eeg: dict[int, Tensor] = field(default_factory=dict)
    image_index: dict[int, Tensor] = field(default_factory=dict)
    n_reps: dict[int, Tensor] = field(default_factory=dict)
    trial_pred: dict[int, Tensor] = field(default_factory=dict)
    trial_index: dict[int, Tensor] = field(default_factory=dict)
    images: dict[int, Tensor] = field(default_factory=dict)
    latents: dict[int, Tensor] = field(default_factory=dict)
    concepts: dict[int, str] = field(default_factory=dict)
    shifts: dict[int, int] = field(default_factory=dict)

    @property
    def subjects(self) -> list[int]:
        return sorted(self.mean_eeg)

    def stimuli(self, index: Tensor) -> Tensor:
        """Stimuli [K, 3, H, W] float in [0, 1] of image indices [K]."""
        missing = [int(i) for i in index if int(i) not in self.images]
        if missing:
            raise ReconstructError(
                f"{self.shard_dir}: split '{self.split}' stores no stimulus image for image "
                f"indices {missing[:5]} (prepare the shards with images to score reconstructions)"
            )
        return torch.stack([self.images[int(i)] for i in index]).float() / 255.0


def read_split(
    shard_dir: str,
    split: str,
    *,
    model: SGDM,
    trained: TrainingData,
    subjects: list[int] | None = None,
    predict: bool = False,
    agnostic: bool = False,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = True,
    shifts: dict[int, int] | None = None,
) -> SplitEEG:
    """Read ``split`` once (checking its EEG shape and channels against the model first): repetition
    means per subject and image, stimuli, and with ``predict`` the single-trial CLIP predictions.
    ``shifts`` (subject → samples, reconstruct/alignment.py) moves those subjects' trials in time
    before anything is averaged or encoded."""
    manifest = read_manifest(shard_dir)
    _check_against_model(manifest, shard_dir, model, trained)
    shards = select_shards(manifest, split, subjects)
    if not shards:
        raise ReconstructError(f"shards {shard_dir}: split '{split}' has no shards")
    loader = split_loader(shard_dir, shards, manifest, batch_size, num_workers)
    concepts = manifest.splits[split].concepts
    out = SplitEEG(shard_dir=shard_dir, split=split, manifest=manifest)
    acc = _TrialSums()
    for batch in tqdm(
        loader, total=len(loader), desc=f"read {split}", unit="batch", disable=not progress
    ):
        if shifts:
            batch["eeg"] = shift_rows(batch["eeg"], batch["subject"], shifts)
        acc.add_trials(batch, out, concepts)
        if predict:
            subject = batch["subject"]
            ids = model_subjects(subject, model.n_subjects, agnostic)
            acc.add_predictions(
                model.predict_clip(batch["eeg"], ids), subject, batch["image_index"]
            )
    acc.fill(out, predict)
    out.shifts = {s: k for s, k in (shifts or {}).items() if s in out.mean_eeg}
    if not out.mean_eeg:
        raise ReconstructError(f"shards {shard_dir}: split '{split}' holds no trials")
    return out


def _check_against_model(
    manifest: Manifest, shard_dir: str, model: SGDM, trained: TrainingData
) -> None:
    """Refuse shards whose EEG shape or channel names differ from what the model was trained on."""
    check_eeg_shape(manifest.n_channels, manifest.n_times, model, trained, f"shards {shard_dir}")
    if trained.ch_names is not None and list(trained.ch_names) != list(manifest.ch_names):
        raise ReconstructError(
            f"shards {shard_dir}: channels {manifest.ch_names} differ from the model's training "
            f"channels {trained.ch_names} (same names in the same order are required)"
        )


def split_loader(
    shard_dir: str,
    shards: list[ShardEntry],
    manifest: Manifest,
    batch_size: int,
    num_workers: int,
) -> EEGLoader:
    """One ordered, unshuffled pass over ``shards`` on a single rank, every trial kept."""
    stream = ShardStream(
        shard_dir,
        shards,
        batch_size=batch_size,
        seed=0,
        epoch=0,
        rank=0,
        world_size=1,
        num_workers=num_workers,
        shuffle=False,
        shuffle_buffer=0,
        resampled=False,
        drop_last=False,
        skip_corrupt=False,
        spec=SampleSpec.from_manifest(manifest),
    )
    return EEGLoader(stream, num_workers, manifest)


def shift_rows(eeg: Tensor, subject: Tensor, shifts: dict[int, int]) -> Tensor:
    """``eeg`` [B, C, T] with the rows of each subject in ``shifts`` delayed by its shift (samples;
    negative: advanced) as :func:`sgdm_dist.data.latency.shift_trials` does; other rows as given."""
    moved = [s for s, k in shifts.items() if k != 0 and bool((subject == s).any())]
    if not moved:
        return eeg
    out = eeg.clone()
    for s in moved:
        rows = subject == s
        shifted = shift_trials(eeg[rows].cpu().numpy(), shifts[s])
        out[rows] = torch.from_numpy(shifted).to(eeg.device, eeg.dtype)
    return out


@dataclass
class _TrialSums:
    """Running EEG sums and counts per (subject, image), and single-trial predictions per subject."""

    sums: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    counts: dict[tuple[int, int], int] = field(default_factory=dict)
    preds: dict[int, list[Tensor]] = field(default_factory=dict)
    pred_index: dict[int, list[Tensor]] = field(default_factory=dict)

    def add_trials(self, batch: dict[str, Any], out: SplitEEG, concepts: list[str]) -> None:
        """Add a batch's EEG [B, C, T] to the sums; record each new image's concept and stimulus."""
        eeg, subject, index = batch["eeg"], batch["subject"], batch["image_index"]
        for row, (s, i) in enumerate(zip(subject.tolist(), index.tolist(), strict=True)):
            key = (s, i)
            self.sums[key] = self.sums.get(key, 0) + eeg[row].double()
            self.counts[key] = self.counts.get(key, 0) + 1
            out.concepts.setdefault(i, concepts[int(batch["concept"][row])])
            if "image" in batch and i not in out.images:
                out.images[i] = batch["image"][row].mul(255).round().to(torch.uint8)
            if i not in out.latents:
                out.latents[i] = batch["latent"][row].float().clone()

    def add_predictions(self, pred: Tensor, subject: Tensor, index: Tensor) -> None:
        """Keep a batch's CLIP predictions [B, D] and image indices [B], grouped by subject [B]."""
        for s in subject.unique().tolist():
            rows = subject == s
            self.preds.setdefault(s, []).append(pred[rows].float().cpu())
            self.pred_index.setdefault(s, []).append(index[rows])

    def fill(self, out: SplitEEG, predict: bool) -> None:
        """Write the per-subject means, image indices, repetition counts (and predictions)."""
        for s in sorted({s for s, _ in self.sums}):
            images = sorted(i for t, i in self.sums if t == s)
            out.image_index[s] = torch.tensor(images, dtype=torch.long)
            out.n_reps[s] = torch.tensor([self.counts[(s, i)] for i in images])
            out.mean_eeg[s] = torch.stack(
                [(self.sums[(s, i)] / self.counts[(s, i)]).float() for i in images]
            )
            if predict:
                out.trial_pred[s] = torch.cat(self.preds[s])
                out.trial_index[s] = torch.cat(self.pred_index[s])


def read_npy_eeg(path: Path, model: SGDM, trained: TrainingData) -> Tensor:
    """EEG [N, C, T] float32 from a ``.npy`` file ([C, T] is one row), checked against the model."""
    if not path.is_file():
        raise ReconstructError(f"EEG file {path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ReconstructError(f"EEG file {path}: not a readable .npy array ({exc})") from None
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ReconstructError(f"EEG file {path}: dtype {array.dtype} is not numeric")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ReconstructError(
            f"EEG file {path}: shape {list(array.shape)}, expected [N, C, T] "
            f"(trials × {model.n_channels} channels × {model.n_times} samples)"
        )
    if array.shape[0] == 0:
        raise ReconstructError(f"EEG file {path}: holds no trials (shape {list(array.shape)})")
    check_eeg_shape(array.shape[1], array.shape[2], model, trained, f"EEG file {path}")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=(1, 2)))
    if bad.size:
        raise ReconstructError(f"EEG file {path}: non-finite values in rows {bad[:5].tolist()}")
    return torch.from_numpy(array.astype(np.float32))
