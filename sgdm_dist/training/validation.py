"""What training checks on the validation split: EEG → CLIP retrieval, and a reconstruction grid.

The validation split is carved from the training partition (never the test set), so choosing a
checkpoint by these numbers does not leak test information.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sgdm_dist.config import Config
from sgdm_dist.data.features import load_vae
from sgdm_dist.data.loader import make_loader
from sgdm_dist.data.splits import split_image_embeddings
from sgdm_dist.metrics.retrieval import retrieval_accuracy
from sgdm_dist.models import SGDM
from sgdm_dist.utils.grids import save_image_grid

VAL_SPLIT = "val"


@torch.no_grad()
def predict_split(
    cfg: Config, model: SGDM, split: str, device: torch.device, subjects: list[int] | None = None
) -> dict[str, torch.Tensor]:
    """Predicted CLIP embeddings of every trial of ``split``: ``pred`` [N, D], ``image_index`` [N],
    ``subject`` [N] (and ``eeg`` [N, C, T] kept for reconstruction)."""
    loader = make_loader(cfg, split, shuffle=False, subjects=subjects, drop_last=False)
    parts: dict[str, list[torch.Tensor]] = {"pred": [], "image_index": [], "subject": [], "eeg": []}
    for batch in loader:
        parts["pred"].append(
            model.predict_clip(batch["eeg"].to(device), batch["subject"].to(device)).cpu()
        )
        for key in ("image_index", "subject", "eeg"):
            parts[key].append(batch[key].cpu())
    if not parts["pred"]:
        return {}
    return {key: torch.cat(values) for key, values in parts.items()}


def validate_retrieval(cfg: Config, model: SGDM, device: torch.device) -> dict[str, float]:
    """Single-trial top-1/top-5 against all validation images: ``val/top1``, ``val/top5``, chance."""
    predicted = predict_split(cfg, model, VAL_SPLIT, device)
    if not predicted:
        return {}
    image_index, targets = split_image_embeddings(cfg.data.shard_dir, VAL_SPLIT)
    position = {int(i): n for n, i in enumerate(image_index.tolist())}
    target_index = torch.tensor([position[int(i)] for i in predicted["image_index"]])
    n_images = targets.shape[0]
    scores = retrieval_accuracy(
        predicted["pred"],
        targets,
        target_index,
        n_way=[n_images],
        top_k=[1, 5],
        seed=cfg.experiment.seed,
    )
    out = {
        "val/top1": scores[f"top1_{n_images}way"],
        "val/chance_top1": scores[f"chance_top1_{n_images}way"],
    }
    if f"top5_{n_images}way" in scores:
        out["val/top5"] = scores[f"top5_{n_images}way"]
    return out


def reconstruction_grid(cfg: Config, model: SGDM, path: Path) -> Path:
    """Stimulus | reconstruction pairs of the first validation trials, as one PNG."""
    batch = next(
        iter(
            make_loader(
                cfg, VAL_SPLIT, shuffle=False, batch_size=cfg.train.recon_images, drop_last=False
            )
        )
    )
    vae = load_vae(cfg.data.shard_dir).to(model.device)
    recon = model.reconstruct(
        batch["eeg"],
        batch["subject"],
        vae=vae,
        steps=cfg.train.recon_steps,
        guidance_scale=cfg.evaluate.guidance_scale,
        seed=cfg.experiment.seed,
    ).cpu()
    if "image" in batch:
        pairs = torch.stack([batch["image"].float().cpu(), recon], dim=1).flatten(0, 1)
        return save_image_grid(pairs, path, nrow=2)
    return save_image_grid(recon, path, nrow=min(8, recon.shape[0]))


def final_grid(cfg: Config, accelerator: Any, model_dir: Path | None, out_dir: Path) -> Path | None:
    """The end-of-training grid from the exported model, or None when there is nothing to show."""
    if model_dir is None or cfg.train.recon_images == 0 or cfg.train.diffusion_steps == 0:
        return None
    return reconstruction_grid(
        cfg,
        SGDM.from_pretrained(model_dir, device=accelerator.device),
        out_dir / "reconstructions.png",
    )
