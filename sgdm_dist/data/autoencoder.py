"""A small diffusers ``AutoencoderKL`` learned on the training stimuli when no pretrained VAE is given.

A random VAE cannot draw anything: decoding a stimulus's own latent through it correlates with the
stimulus at about 0 (PixCorr), so no EEG model could reconstruct through it. Where no VAE weights exist
(the synthetic demo, air-gapped sites), ``sgdm prepare`` trains this one on the training split's
stimuli (with flips and quarter turns, which keep synthetic stimuli in their family), sets its
``scaling_factor`` so cached latents have unit variance (what the diffusion schedule assumes), and
saves it beside the shards with its loss curve (``loss_curve.json`` + ``.png``). Its round trip on
held-out stimuli (val + test images, never trained on) is recorded in the manifest: it is the
ceiling of every reconstruction metric (docs/metrics.md).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sgdm_dist.utils.atomic import write_dir_atomically

log = logging.getLogger(__name__)

LOSS_CURVE = "loss_curve.json"
LOSS_PLOT = "loss_curve.png"
# Below 64 px: 3 levels of 16, 32, 32 channels → 4× downsampling (32 px → latents [4, 8, 8]), 0.24 M
# params. From 64 px: 4 levels (16, 32, 64, 64) → 8× like Stable Diffusion's VAE. Measured on the
# demo's stimuli (docs/model.md): 8× at 64 px with 8-32 channels stalled at PixCorr ≈ 0.2 after 400
# steps; 4× at 32 px reached 0.69 after 160. Batches of 16 rather than 8 lifted the 400-step round trip
# from 0.29-0.75 (by seed) to 0.62-0.94 (data.features.autoencoder_batch_size). A last level of 32
# channels instead of 64 takes 0.77× the time per step with the same round trip on held-out training
# stimuli (0.875 against 0.876, mean of three dataset seeds); 8, 16, 32 channels lose 0.3-0.4.
SMALL_AE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
}


def small_ae_config(image_size: int) -> dict[str, Any]:
    """AutoencoderKL kwargs for ``image_size`` px stimuli (see SMALL_AE_CONFIG)."""
    channels = list(SMALL_AE_CONFIG["block_out_channels"]) if image_size < 64 else [16, 32, 64, 64]
    return {
        **SMALL_AE_CONFIG,
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
    }


KL_WEIGHT = 1e-6  # small: a near-deterministic autoencoder, as SD's VAE (which uses ~1e-6)


def train_autoencoder(
    images: Tensor,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Fit a small AutoencoderKL to ``images`` [N, 3, H, W] in [0, 1] (H = W, divisible by 8).

    Returns (the autoencoder in eval mode with ``scaling_factor`` set, a record with the loss curve
    ``{"step": [...], "loss": [...]}``, steps, seconds and the scaling factor).
    """
    from diffusers import AutoencoderKL

    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(
            f"train_autoencoder: images must be [N, 3, H, W], got {list(images.shape)}"
        )
    torch.manual_seed(seed)
    vae = AutoencoderKL(sample_size=images.shape[-1], **small_ae_config(images.shape[-1]))
    x_all = images.float() * 2 - 1
    started = time.perf_counter()
    curve = _fit(vae, x_all, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    scaling = _unit_variance_scaling(vae, x_all)
    vae.register_to_config(scaling_factor=scaling)
    seconds = time.perf_counter() - started
    log.info(
        "autoencoder: %d steps in %.0f s, final reconstruction loss %.4f, scaling factor %.3f",
        steps,
        seconds,
        curve["loss"][-1] if curve["loss"] else float("nan"),
        scaling,
    )
    record = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "n_train_images": int(images.shape[0]),
        "seconds": round(seconds, 1),
        "scaling_factor": scaling,
        "curve": curve,
    }
    return vae, record


def _fit(
    vae: Any, x_all: Tensor, *, steps: int, batch_size: int, lr: float, seed: int
) -> dict[str, list[float]]:
    """Train ``vae`` in place on x_all [N, 3, H, W] in [-1, 1], left in eval mode.

    Returns the L1 + L2 reconstruction loss every 10 steps and at the last: ``{"step", "loss"}``.
    """
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    curve: dict[str, list[float]] = {"step": [], "loss": []}
    vae.train()
    for step in range(steps):
        idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=gen)
        x = _augment(x_all[idx], gen)
        posterior = vae.encode(x).latent_dist
        # The posterior mean: sampling at init (std ≈ 1) drowns the code and stalls a short run.
        recon = vae.decode(posterior.mean).sample
        rec = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        loss = rec + KL_WEIGHT * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0 or step == steps - 1:
            curve["step"].append(step)
            curve["loss"].append(float(rec.detach()))
    vae.eval()
    return curve


@torch.no_grad()
def round_trip(vae: Any, images: Tensor, batch_size: int = 32) -> Tensor:
    """Encode (posterior mean) and decode: images [N, 3, H, W] in [0, 1] → same shape in [0, 1]."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].float() * 2 - 1
        z = vae.encode(x).latent_dist.mean
        out.append(((vae.decode(z).sample + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def round_trip_scores(vae: Any, images: Tensor) -> dict[str, float]:
    """PixCorr and SSIM of the round trip of ``images`` (>= 2) against themselves."""
    from sgdm_dist.metrics.reconstruction import pixcorr, ssim

    recon = round_trip(vae, images)
    return {
        "PixCorr": round(pixcorr(recon, images), 4),
        "SSIM": round(ssim(recon, images), 4),
        "n_images": int(images.shape[0]),
    }


def save_autoencoder(vae: Any, record: dict[str, Any], path: Path) -> Path:
    """Write the autoencoder (diffusers folder), its loss curve JSON and PNG, atomically."""

    def fill(tmp: Path) -> None:
        vae.save_pretrained(tmp)
        (tmp / LOSS_CURVE).write_text(json.dumps(record, indent=2) + "\n")
        _plot_curve(record["curve"], tmp / LOSS_PLOT)

    return write_dir_atomically(Path(path), fill)


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random flips and quarter turns per batch (a synthetic stimulus stays a stimulus)."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = x.flip(3)
    return x


@torch.no_grad()
def _unit_variance_scaling(vae: Any, x: Tensor) -> float:
    means = torch.cat([vae.encode(x[i : i + 32]).latent_dist.mean for i in range(0, len(x), 32)])
    return float(1.0 / means.std().clamp_min(1e-6))


def _plot_curve(curve: dict[str, list[float]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(curve["step"], curve["loss"])
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("L1 + L2 reconstruction loss")
    ax.set_title("autoencoder training (training-split stimuli)")
    fig.tight_layout()
    fig.savefig(path, format="png")
