"""End-of-training refit of the structure head in pixel space, through the autoencoder's decoder.

The training loop teaches the structure head (models/structure.py) the coarse latent by MSE in latent
space. A small autoencoder's latent space is far from linear: the conditional mean of latents (what
an MSE head predicts) decodes off the image manifold, so a head that fits its latents well can still
draw images that do not look like the stimulus (docs/model.md, "What limits it"). This refit asks the
question the reconstruction is scored on instead: with the encoder frozen, the head is trained so that
*the decoded image* of its prediction matches the decoded true latent (pixel MSE through the frozen
decoder), from repetition-averaged training EEG. The head overfits a few hundred images within
epochs, so the refit keeps the step with the lowest pixel MSE on the validation images (held-out
*training* images, never test) and regularises the features it reads (noise, dropout).

Called on the exported copy of the model by the trainer (``train.structure_refit.steps`` > 0).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from sgdm_dist.config import Config
from sgdm_dist.config.train import StructureRefitConfig
from sgdm_dist.data.features import load_vae
from sgdm_dist.models import SGDM
from sgdm_dist.reconstruct.inputs import read_split
from sgdm_dist.reconstruct.model import ReconstructError, TrainingData, model_subjects
from sgdm_dist.utils.threads import scaled_threads

log = logging.getLogger(__name__)

TARGET_CACHE_BYTES = 1 << 30  # decoded targets kept in memory up to 1 GiB


@dataclass
class Averaged:
    """Repetition means of one split, one row per (subject, image): ``eeg`` [M, C, T],
    ``latent`` [M, 4, h, w] (cached, × VAE scaling), ``subject`` [M]."""

    eeg: Tensor
    latent: Tensor
    subject: Tensor


def read_averaged(cfg: Config, split: str, model: SGDM) -> Averaged | None:
    """Mean EEG per (subject, image) of ``split`` for the training subjects (the evaluation's own
    reader, reconstruct/inputs.py), or None when the split holds no shards or trials."""
    try:
        data = read_split(
            cfg.data.shard_dir,
            split,
            model=model,
            trained=TrainingData(),
            subjects=cfg.train.subjects,
            progress=False,
        )
    except ReconstructError:
        return None
    index = [int(i) for s in data.subjects for i in data.image_index[s]]
    return Averaged(
        eeg=torch.cat([data.mean_eeg[s] for s in data.subjects]),
        latent=torch.stack([data.latents[i] for i in index]),
        subject=torch.cat([torch.full((len(data.image_index[s]),), s) for s in data.subjects]),
    )


def _batch(
    z_train: Tensor, spread: Tensor, rc: StructureRefitConfig, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A random batch of rows and their augmented features: noise × each feature's s.d. [1, D], then
    dropout. Every draw comes from ``gen`` (CPU), so a refit is the same in any process."""
    n, dim = z_train.shape
    idx = torch.randint(0, n, (rc.batch_size,), generator=gen)
    noise = torch.randn(rc.batch_size, dim, generator=gen)
    keep = (torch.rand(rc.batch_size, dim, generator=gen) >= rc.feature_dropout).float()
    idx, noise, keep = idx.to(z_train.device), noise.to(z_train.device), keep.to(z_train.device)
    z = (z_train[idx] + rc.feature_noise * spread * noise) * keep / (1 - rc.feature_dropout)
    return idx, z


@torch.no_grad()
def _features(model: SGDM, data: Averaged, batch_size: int = 64) -> Tensor:
    """z_eeg [M, D] of the averaged EEG (eval mode: no dropout)."""
    out = []
    for start in range(0, len(data.subject), batch_size):
        sl = slice(start, start + batch_size)
        subject = model_subjects(data.subject[sl], model.n_subjects)
        enc, _ = model.encode(data.eeg[sl].to(model.device), subject.to(model.device))
        out.append(enc.z.float())
    return torch.cat(out)


class Targets:
    """What the autoencoder draws of each row's true latent (the best any head could match):
    ``targets[idx]`` → images [B, 3, H, W]. Decoded once and kept when all rows fit in
    ``cache_bytes``; decoded per batch otherwise (THINGS-EEG2 at 512 px would need hundreds of GB)."""

    def __init__(self, vae: Any, latent: Tensor, cache_bytes: int = TARGET_CACHE_BYTES) -> None:
        self.vae, self.latent = vae, latent
        pixels = self._decode(slice(0, 1)).numel()
        fits = pixels * 4 * len(latent) <= cache_bytes
        self.cache = (
            torch.cat([self._decode(slice(i, i + 64)) for i in range(0, len(latent), 64)])
            if fits
            else None
        )

    @torch.no_grad()
    def _decode(self, idx: Tensor | slice) -> Tensor:
        return SGDM.decode_raw(self.latent[idx], self.vae)

    def __getitem__(self, idx: Tensor | slice) -> Tensor:
        return self.cache[idx] if self.cache is not None else self._decode(idx)

    def __len__(self) -> int:
        return len(self.latent)


def refit_for_export(model: SGDM, cfg: Config, local_processes: int) -> dict[str, float]:
    """The trainer's call on rank 0 before export: refit when configured, with the shard set's VAE.
    The node's other ``local_processes - 1`` ranks wait at the export barrier meanwhile, so this one
    borrows their threads. Returns the metrics to log (empty when the refit is off)."""
    if cfg.train.structure_refit.steps == 0 or model.structure is None:
        return {}
    with scaled_threads(local_processes):
        return refit_structure_head(model, cfg, load_vae(cfg.data.shard_dir)) or {}


def refit_structure_head(model: SGDM, cfg: Config, vae: Any) -> dict[str, float] | None:
    """Refit ``model.structure`` in place (see the module docstring); returns what it measured, or
    None when there is nothing to refit (no head, no steps, no training or validation EEG)."""
    rc = cfg.train.structure_refit
    if model.structure is None or rc.steps == 0:
        return None
    train, val = read_averaged(cfg, "train", model), read_averaged(cfg, "val", model)
    if train is None or val is None:
        log.warning("structure refit skipped: it needs train and val EEG in %s", cfg.data.shard_dir)
        return None
    started = time.perf_counter()
    model.eval()
    vae = vae.to(model.device).eval().requires_grad_(False)
    z_train, z_val = _features(model, train), _features(model, val)
    x_train = Targets(vae, train.latent.to(model.device))
    x_val = Targets(vae, val.latent.to(model.device))
    before, best, best_step = _fit(
        model.structure, vae, (z_train, x_train), (z_val, x_val), rc, cfg
    )
    log.info(
        "structure refit: validation pixel MSE %.4f → %.4f (step %d of %d, %d train / %d val rows)",
        before,
        best,
        best_step,
        rc.steps,
        len(z_train),
        len(z_val),
    )
    return {
        "structure_refit/val_pixel_mse_before": before,
        "structure_refit/val_pixel_mse": best,
        "structure_refit/best_step": float(best_step),
        "structure_refit/seconds": time.perf_counter() - started,
    }


def _fit(
    head: torch.nn.Module,
    vae: Any,
    train: tuple[Tensor, Targets],
    val: tuple[Tensor, Targets],
    rc: StructureRefitConfig,
    cfg: Config,
) -> tuple[float, float, int]:
    """Train ``head`` on (z [M, D], target images) rows; leave it at its best validation step.

    Returns (validation pixel MSE at step 0, at the best step, the best step)."""
    (z_train, x_train), (z_val, x_val) = train, val
    spread = z_train.std(0, keepdim=True)

    @torch.no_grad()
    def val_mse() -> float:  # in chunks: a large validation split never decodes at once
        head.eval()
        total, count = 0.0, 0
        for start in range(0, len(z_val), 64):
            sl = slice(start, start + 64)
            target = x_val[sl]
            total += float(
                F.mse_loss(SGDM.decode_raw(head(z_val[sl]), vae), target, reduction="sum")
            )
            count += target.numel()
        return total / count

    best, best_step, best_state = val_mse(), 0, copy.deepcopy(head.state_dict())
    before = best
    opt = torch.optim.AdamW(head.parameters(), lr=rc.lr, weight_decay=rc.weight_decay)
    gen = torch.Generator().manual_seed(cfg.experiment.seed)
    for step in tqdm(range(1, rc.steps + 1), desc="structure refit", unit="step", leave=False):
        head.train()
        idx, z = _batch(z_train, spread, rc, gen)
        loss = F.mse_loss(SGDM.decode_raw(head(z), vae), x_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % rc.eval_every == 0 or step == rc.steps:
            current = val_mse()
            if current < best:
                best, best_step, best_state = current, step, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    head.eval()
    return before, best, best_step
