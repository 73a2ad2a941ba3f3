"""Training-step throughput of `sgdm train` against two baselines measured in the same run.

For each config (default: tiny and small) it times, on identical batches and identically initialised
models, interleaved round by round so background load hits all three alike:

  sgdm       the step `sgdm train` runs (sgdm_dist.train.train_step through Accelerate)
  plain      a bare single-process PyTorch loop: forward, backward, clip, AdamW step
  reference  the reference sketch's step: CLIP image embedding and VAE encoding of the stimuli
             computed inside every step (random-init encoders of the configured architectures:
             no weights are downloaded), then the same model step

and prints samples/s, the framework overhead (1 - sgdm/plain; goal <= 5 %), the speed-up of cached
features (sgdm/reference; goal >= 3x), and utilisation: model FLOPs per second (fwd+bwd, counted by
torch.utils.flop_counter) as a fraction of a large fp32 matmul's FLOPs per second on this machine.

    python bench/train_step.py                      # tiny + small, CPU or the visible GPU
    python bench/train_step.py --configs tiny --rounds 5 --steps 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from sgdm_dist.config import Config, load_config
from sgdm_dist.distributed import LaunchRequest, make_accelerator
from sgdm_dist.models import build_model
from sgdm_dist.train import train_step

REPO = Path(__file__).resolve().parents[1]
# Stable Diffusion's VAE architecture (sd-vae-ft-mse), built with random weights.
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
)


def eeg_shape(cfg: Config) -> tuple[int, int]:
    pre = cfg.data.preprocess
    channels = pre.channels
    n_channels = (
        17 if channels == "occipital_parietal" else 63 if channels == "all" else len(channels)
    )
    return n_channels, round((pre.tmax - pre.tmin) * pre.resample_hz)


def make_batches(
    cfg: Config, n: int, batch: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    c, t = eeg_shape(cfg)
    size = cfg.model.unet.latent_size
    out = []
    for _ in range(n):
        clip = torch.nn.functional.normalize(
            torch.randn(batch, cfg.model.clip_dim, generator=g), dim=-1
        )
        out.append(
            {
                "eeg": torch.randn(batch, c, t, generator=g).to(device),
                "clip": clip.to(device),
                "latent": torch.randn(
                    batch, cfg.model.unet.latent_channels, size, size, generator=g
                ).to(device),
                "subject": torch.randint(1, 3, (batch,), generator=g).to(device),
                "concept": torch.randint(0, 10, (batch,), generator=g).to(device),
                "image_index": torch.arange(batch).to(device),
            }
        )
    return out


def make_images(cfg: Config, n: int, batch: int) -> list[list[Image.Image]]:
    rng = np.random.default_rng(0)
    size = cfg.data.features.image_size
    return [
        [
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
            for _ in range(batch)
        ]
        for _ in range(n)
    ]


def reference_encoders(cfg: Config, device: torch.device) -> Callable[[list[Image.Image]], None]:
    """CLIP + VAE of the configured architectures, random init; returns the per-step feature pass."""
    import open_clip
    from diffusers import AutoencoderKL

    from sgdm_dist.data.features import TINY_VAE_CONFIG, register_tiny_clip, to_tensor

    register_tiny_clip(REPO / "outputs" / "bench" / "clip")
    feats = cfg.data.features
    clip, _, preprocess = open_clip.create_model_and_transforms(feats.clip_model, pretrained=None)
    clip = clip.eval().to(device)
    vae_cfg = TINY_VAE_CONFIG if feats.image_size <= 128 else SD_VAE
    vae = AutoencoderKL(sample_size=feats.image_size, **vae_cfg).eval().to(device)

    @torch.no_grad()
    def features(images: list[Image.Image]) -> None:
        x = torch.stack([preprocess(im) for im in images]).to(device)
        torch.nn.functional.normalize(clip.encode_image(x).float(), dim=-1)
        pixels = torch.stack([to_tensor(im, feats.image_size) for im in images]).to(device)
        vae.encode(pixels * 2 - 1).latent_dist.mean * vae.config.scaling_factor

    return features


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[int], None], steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        run(i)
    sync(device)
    return time.perf_counter() - start


def matmul_flops_per_s(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    seconds = timed(lambda _: a @ b, reps, device)
    return 2 * n**3 * reps / seconds


def bench_config(
    name: str, args: argparse.Namespace, device: torch.device, peak: float
) -> dict[str, float]:
    cfg = load_config(
        REPO / "configs" / f"{name}.yaml", ["train.mixed_precision=no", "train.ema_decay=null"]
    )
    batch = args.batch_size or cfg.data.loader.batch_size
    c, t = eeg_shape(cfg)
    batches = make_batches(cfg, args.steps, batch, device)
    images = make_images(cfg, args.steps, batch)
    clip_max = cfg.train.max_grad_norm

    torch.manual_seed(0)
    model_kwargs = dict(n_channels=c, n_times=t, n_subjects=2)
    accelerator = make_accelerator(cfg, LaunchRequest(world_size=1, deepspeed=False, fsdp=False))
    sgdm_model = build_model(cfg.model, **model_kwargs)
    plain_model = build_model(cfg.model, **model_kwargs).to(device)
    plain_model.load_state_dict(sgdm_model.state_dict())
    sgdm_opt = torch.optim.AdamW(sgdm_model.parameters(), lr=cfg.train.lr)
    sgdm_model, sgdm_opt = accelerator.prepare(sgdm_model, sgdm_opt)
    plain_opt = torch.optim.AdamW(plain_model.parameters(), lr=cfg.train.lr)
    features = reference_encoders(cfg, device)

    def sgdm_step(i: int) -> None:
        train_step(accelerator, sgdm_model, sgdm_opt, batches[i], "diffusion", clip_max)

    def plain_step(i: int) -> None:
        out = plain_model(batches[i], stage="diffusion")
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(plain_model.parameters(), clip_max)
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    def reference_step(i: int) -> None:
        features(images[i])
        plain_step(i)

    for step in (sgdm_step, plain_step, reference_step):  # warm-up: allocator, kernels, caches
        timed(step, min(2, args.steps), device)
    rates: dict[str, list[float]] = {"sgdm": [], "plain": [], "reference": []}
    for _ in range(args.rounds):
        for label, step in (
            ("sgdm", sgdm_step),
            ("plain", plain_step),
            ("reference", reference_step),
        ):
            rates[label].append(args.steps * batch / timed(step, args.steps, device))
    median = {k: statistics.median(v) for k, v in rates.items()}

    with FlopCounterMode(display=False) as counter:
        plain_step(0)
    flops_per_sample = counter.get_total_flops() / batch
    params = sum(p.numel() for p in plain_model.parameters())
    return {
        "params_M": params / 1e6,
        "batch": batch,
        **{f"{k}_samples_per_s": v for k, v in median.items()},
        "overhead": 1 - median["sgdm"] / median["plain"],
        "cached_speedup": median["sgdm"] / median["reference"],
        "gflop_per_sample": flops_per_sample / 1e9,
        "utilisation": flops_per_sample * median["sgdm"] / peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=6, help="steps per timed round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; the median is reported"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: data.loader.batch_size"
    )
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = matmul_flops_per_s(device)
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU x{torch.get_num_threads()} threads"
    )
    print(f"device: {where}; fp32 matmul 2048^3: {peak / 1e9:.1f} GFLOP/s")
    header = f"{'config':<8}{'params':>9}{'batch':>6}{'sgdm/s':>9}{'plain/s':>9}{'ref/s':>9}{'overhead':>10}{'cached×':>9}{'GFLOP/smp':>11}{'util':>7}"
    print(header)
    for name in args.configs:
        r = bench_config(name, args, device, peak)
        print(
            f"{name:<8}{r['params_M']:>8.1f}M{r['batch']:>6}{r['sgdm_samples_per_s']:>9.2f}"
            f"{r['plain_samples_per_s']:>9.2f}{r['reference_samples_per_s']:>9.2f}{r['overhead']:>9.1%}"
            f"{r['cached_speedup']:>8.2f}x{r['gflop_per_sample']:>11.2f}{r['utilisation']:>7.1%}"
        )


if __name__ == "__main__":
    main()
