"""Training throughput of `sgdm train` against a plain PyTorch loop, both measured in the same run.

loop  (default: tiny) the FULL `sgdm_dist.training.loop.train` loop (EMA, LR scheduler, stop-flag agreement,
      the data loader, logging cadence, MLflow tracking, metrics.jsonl) on shards written by the real
      `sgdm prepare --synthetic`, read from its own throughput log (samples between two log steps /
      wall time), against a plain loop over the same loader, model and batch size (forward, backward,
      clip, AdamW, LR scheduler: no EMA, no tracking). Runs alternate; the first window of every
      run (start-up) is dropped. slowdown = plain / sgdm (goal <= 1.05): the median over rounds of
      each round's median-window ratio, with the rounds' range.
step  (default: tiny small) samples/s of the plain step against a reference-style step that
      computes the CLIP image embedding and VAE latent of every stimulus inside the step
      (random-init encoders of the configured architectures: nothing is downloaded), and
      utilisation: the model's FLOPs per sample (its own profile, attention included) x samples/s
      over a 2048^3 fp32 matmul's FLOP/s measured with the same thread count.

    python bench/train_step.py                                   # both parts, defaults
    python bench/train_step.py --parts loop --loop-steps 120 --rounds 3
    python bench/train_step.py --parts step --configs small --steps 2 --batch-size 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from sgdm_dist.config import Config, load_config
from sgdm_dist.models import build_model
from sgdm_dist.models.profile import profile_model
from sgdm_dist.utils.threads import HostInfo, configure_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_inputs import eeg_shape, make_batches, make_images, reference_encoders

REPO = Path(__file__).resolve().parents[1]


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
    """Peak proxy with the thread count this process runs (set before calling)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    seconds = timed(lambda _: a @ b, reps, device)
    return 2 * n**3 * reps / seconds


# ---------------------------------------------------------------------------------------------
# loop: the real train() against a plain loop


def prepared_shards(work: Path) -> list[str]:
    """Tiny synthetic shards by the real `sgdm prepare` (reused when already there)."""
    overrides = [
        f"data.raw_dir={work}/raw",
        f"data.image_dir={work}/raw/images",
        f"data.shard_dir={work}/shards",
        f"data.cache_dir={work}/cache",
    ]
    if not (work / "shards" / "manifest.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        sgdm = Path(sys.executable).with_name("sgdm")
        cmd = [str(sgdm), "prepare", str(REPO / "configs" / "tiny.yaml"), *overrides, "--synthetic"]
        subprocess.run(cmd, check=True, cwd=work, capture_output=True)
    return overrides


def loop_config(name: str, shards: list[str], out: Path, args: argparse.Namespace) -> Config:
    steps, every = args.loop_steps, args.log_every
    return load_config(
        REPO / "configs" / f"{name}.yaml",
        [
            *shards,
            f"experiment.output_dir={out}",
            "train.mixed_precision=no",
            "train.align_steps=0",
            f"train.diffusion_steps={steps}",
            f"train.log_every={every}",
            f"train.eval_every={steps}",  # validation only after the last window
            f"train.checkpoint_every={steps * 10}",
            "train.recon_images=0",
            *args.override,
        ],
    )


def sgdm_windows(cfg: Config) -> list[float]:
    """samples/s of every log window of one real train() run, start-up window dropped."""
    from sgdm_dist.training.loop import train

    shutil.rmtree(cfg.experiment.output_dir, ignore_errors=True)
    train(cfg)
    rows = (cfg.experiment.output_dir / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(r)["samples_per_s"] for r in rows if "samples_per_s" in r]
    return rates[1:]


def plain_windows(cfg: Config, device: torch.device) -> list[float]:
    """The same number of steps and windows through a bare PyTorch loop over the same loader."""
    from diffusers.optimization import get_scheduler

    from sgdm_dist.data.loader import make_loader
    from sgdm_dist.data.manifest import read_manifest

    tc = cfg.train
    m = read_manifest(cfg.data.shard_dir)
    torch.manual_seed(cfg.experiment.seed)
    model = build_model(
        cfg.model, n_channels=m.n_channels, n_times=m.n_times, n_subjects=max(m.subjects)
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = get_scheduler(
        tc.lr_schedule, opt, num_warmup_steps=tc.warmup_steps, num_training_steps=tc.total_steps
    )
    model.train()
    rates, step, epoch = [], 0, 0
    start, samples = time.perf_counter(), 0
    while step < tc.total_steps:
        for batch in make_loader(cfg, "train", epoch=epoch):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            loss = model(batch, stage="diffusion")["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step, samples = step + 1, samples + batch["eeg"].shape[0]
            if step % tc.log_every == 0 or step == tc.total_steps:
                loss.item()  # a plain loop reads its loss when it logs, too
                now = time.perf_counter()
                rates.append(samples / (now - start))
                start, samples = now, 0
            if step >= tc.total_steps:
                break
        epoch += 1
    return rates[1:]


def bench_loop(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Rounds of (sgdm run, plain run) back to back. The machine's speed drifts by more than the
    5 % measured (windows of one run vary ±15 % on a shared VM), so each round's ratio compares two
    runs minutes apart and the median over rounds is reported with the rounds' range."""
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    shards = prepared_shards(args.work / "data")
    sgdm: list[float] = []
    plain: list[float] = []
    ratios: list[float] = []
    for i in range(args.rounds):  # a fresh output folder (and MLflow store) per run
        cfg = loop_config(name, shards, work / f"run-{time.time_ns()}-{i}", args)
        if i % 2 == 0:  # alternate which goes first: no side gets the warmer machine every time
            s, p = sgdm_windows(cfg), plain_windows(cfg, device)
        else:
            p, s = plain_windows(cfg, device), sgdm_windows(cfg)
        ratios.append(statistics.median(p) / statistics.median(s))
        sgdm, plain = sgdm + s, plain + p
    return {
        "sgdm_samples_per_s": statistics.median(sgdm),
        "plain_samples_per_s": statistics.median(plain),
        "slowdown": statistics.median(ratios),
        "slowdown_min": min(ratios),
        "slowdown_max": max(ratios),
        "windows": len(sgdm),
    }


# ---------------------------------------------------------------------------------------------
# step: plain vs reference-style, utilisation


def bench_step(
    name: str, args: argparse.Namespace, device: torch.device, peak: float
) -> dict[str, float]:
    cfg = load_config(REPO / "configs" / f"{name}.yaml", ["train.mixed_precision=no"])
    batch = args.batch_size or cfg.data.loader.batch_size
    c, t = eeg_shape(cfg)
    batches = make_batches(cfg, args.steps, batch, device)
    images = make_images(cfg, args.steps, batch)
    torch.manual_seed(0)
    model = build_model(cfg.model, n_channels=c, n_times=t, n_subjects=2).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    features = reference_encoders(cfg, device, REPO / "outputs" / "bench" / "clip")

    def plain_step(i: int) -> None:
        model(batches[i], stage="diffusion")["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def reference_step(i: int) -> None:
        features(images[i])
        plain_step(i)

    for step in (plain_step, reference_step):  # warm-up: allocator, kernels, caches
        timed(step, min(2, args.steps), device)
    rates: dict[str, list[float]] = {"plain": [], "reference": []}
    for _ in range(args.rounds):
        for label, step in (("plain", plain_step), ("reference", reference_step)):
            rates[label].append(args.steps * batch / timed(step, args.steps, device))
    median = {k: statistics.median(v) for k, v in rates.items()}
    prof = profile_model(cfg.model, n_channels=c, n_times=t, n_subjects=2, batch=1)
    return {
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch": batch,
        **{f"{k}_samples_per_s": v for k, v in median.items()},
        "cached_speedup": median["plain"] / median["reference"],
        "gflop_per_sample": prof.total_flops / 1e9,
        "utilisation": prof.total_flops * median["plain"] / peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", default=["loop", "step"], choices=["loop", "step"])
    parser.add_argument("--loop-configs", nargs="+", default=["tiny"])
    parser.add_argument("--loop-steps", type=int, default=100, help="optimiser steps per run")
    parser.add_argument("--log-every", type=int, default=10, help="steps per throughput window")
    parser.add_argument("--override", nargs="*", default=[], help="extra overrides for the loop")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sgdm-bench")
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"], help="step part")
    parser.add_argument("--steps", type=int, default=6, help="steps per timed round (step part)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians")
    parser.add_argument("--batch-size", type=int, default=None, help="step part; default config's")
    parser.add_argument("--threads", type=int, default=None, help="default: usable cores")
    args = parser.parse_args()

    threads = configure_threads(HostInfo.from_env(), args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = matmul_flops_per_s(device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{threads} threads"
    print(f"device: {where}; fp32 matmul 2048^3 at {threads} threads: {peak / 1e9:.1f} GFLOP/s")
    if "loop" in args.parts:
        print(
            f"{'config':<8}{'sgdm loop/s':>13}{'plain loop/s':>14}{'slowdown':>10}"
            f"{'rounds range':>15}{'windows':>9}"
        )
        for name in args.loop_configs:
            r = bench_loop(name, args, device)
            print(
                f"{name:<8}{r['sgdm_samples_per_s']:>13.1f}{r['plain_samples_per_s']:>14.1f}"
                f"{r['slowdown']:>10.3f}{r['slowdown_min']:>8.3f}-{r['slowdown_max']:.3f}"
                f"{r['windows']:>9}"
            )
    if "step" in args.parts:
        print(
            f"{'config':<8}{'params':>9}{'batch':>6}{'plain/s':>9}{'ref/s':>9}{'cached×':>9}"
            f"{'GFLOP/smp':>11}{'util':>7}"
        )
        for name in args.configs:
            r = bench_step(name, args, device, peak)
            print(
                f"{name:<8}{r['params_M']:>8.1f}M{r['batch']:>6}{r['plain_samples_per_s']:>9.2f}"
                f"{r['reference_samples_per_s']:>9.2f}{r['cached_speedup']:>8.2f}x"
                f"{r['gflop_per_sample']:>11.2f}{r['utilisation']:>7.1%}"
            )


if __name__ == "__main__":
    main()
