"""Loader throughput vs the raw tar-read rate of the same shards, measured in the same run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/data_throughput.py --samples 8000 --workers 2

Writes a shard set of the requested EEG shape and the product's 4×64×64 float16 latents (random
values, real schema) under --out, then times (1) reading every tar member of every shard in this
process (the raw rate) and (2) the training loader (sha256 on first read, decode, per-sample checks,
shuffle, collate to float32) with --workers DataLoader workers; one loader iterated once per epoch
(persistent workers), or --fresh-loader. Prints both rates, their ratio (goal ≥ 0.8) and the CPU
seconds per 1000 samples of each (workers included) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from sgdm_dist import __version__
from sgdm_dist.config import load_config
from sgdm_dist.data.loader import make_loader
from sgdm_dist.data.manifest import Manifest, ShardEntry, SplitInfo, write_manifest
from sgdm_dist.data.shards import Trial, iter_shard, write_unit

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """User + system CPU of this process and all its children, finished (rusage) or alive
    (psutil: persistent DataLoader workers never finish between two readings)."""
    import psutil

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    alive = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            alive += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + alive


def write_bench_shards(
    out: Path, n: int, per_shard: int, ch: int, t: int, clip_dim: int, latent: int = 64
) -> Manifest:
    rng = np.random.default_rng(0)

    def trials():
        for i in range(n):
            yield Trial(
                key=f"01_01_img{i:06d}_00",
                eeg=rng.standard_normal((ch, t)).astype(np.float16),
                clip=rng.standard_normal(clip_dim).astype(np.float16),
                latent=rng.standard_normal((4, latent, latent)).astype(np.float16),
                meta={"subject": 1, "session": 1, "image_index": i, "concept": i % 50},
            )

    rec = write_unit(out, "train", "sub-01_ses-01", trials(), per_shard, "bench", {})
    shards = [ShardEntry(subject=1, session=1, **s) for s in rec["shards"]]
    empty = SplitInfo(
        shards=[],
        n_samples=0,
        per_subject={},
        n_images=0,
        concepts=[],
        images_file="",
        has_images=False,
    )
    m = Manifest(
        package_version=__version__,
        source="bench",
        ch_names=[f"O{i}" for i in range(ch)],
        sfreq=100.0,
        times=list(np.round(np.arange(t) / 100 - 0.2, 6)),
        n_channels=ch,
        n_times=t,
        eeg_unit="whitened",
        clip_dim=clip_dim,
        latent_shape=(4, latent, latent),
        image_size=64,
        subjects=[1],
        sessions={1: [1]},
        n_concepts=50,
        splits={
            "train": SplitInfo(
                shards=shards,
                n_samples=n,
                per_subject={1: n},
                n_images=n,
                concepts=[],
                images_file="",
                has_images=False,
            ),
            "val": empty,
            "test": empty,
        },
        preprocess={},
        features={},
        encoders={},
        text_embeddings="",
        seed=0,
    )
    write_manifest(m, out)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--channels", type=int, default=17)
    ap.add_argument("--times", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latent-size", type=int, default=64, help="64: the product's 4x64x64")
    ap.add_argument(
        "--fresh-loader",
        action="store_true",
        help="a new loader (new workers) per epoch instead of one loader with persistent workers",
    )
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="sgdm-bench-"))
    m = write_bench_shards(out, a.samples, a.shard_size, a.channels, a.times, 32, a.latent_size)
    mb = sum((out / s.name).stat().st_size for s in m.splits["train"].shards) / 1e6
    cfg = load_config(
        REPO / "configs/tiny.yaml",
        [
            f"data.shard_dir={out}",
            f"data.loader.num_workers={a.workers}",
            f"data.loader.batch_size={a.batch_size}",
            "data.preprocess.channels=all",
            "data.preprocess.tmin=-0.2",
            f"model.unet.latent_size={a.latent_size}",
        ],
    )
    raw_rates, loader_rates, raw_cpu, loader_cpu = [], [], [], []
    loader = None
    for epoch in range(a.repeats):
        t0, c0 = time.perf_counter(), cpu_seconds()
        n_raw = sum(
            1 for s in m.splits["train"].shards for _ in iter_shard(f"{out}/{s.name}", s.n_samples)
        )
        raw_rates.append(n_raw / (time.perf_counter() - t0))
        raw_cpu.append((cpu_seconds() - c0) / n_raw * 1000)
        t0, c0 = time.perf_counter(), cpu_seconds()
        if a.fresh_loader or loader is None:  # else: the next pass of one loader = next epoch
            loader = make_loader(cfg, "train", epoch=epoch, drop_last=False)
        n_loaded = sum(len(b["key"]) for b in loader)
        loader_rates.append(n_loaded / (time.perf_counter() - t0))
        loader_cpu.append((cpu_seconds() - c0) / n_loaded * 1000)
        assert n_loaded == n_raw == a.samples
    raw, rate = float(np.median(raw_rates)), float(np.median(loader_rates))
    print(
        f"shards: {len(m.splits['train'].shards)} × {a.shard_size} samples, {mb:.1f} MB, "
        f"EEG [{a.channels}, {a.times}] float16; batch {a.batch_size}, {a.workers} workers"
    )
    print(
        f"raw tar read (1 process): {raw:8.0f} samples/s, "
        f"{np.median(raw_cpu):.3f} CPU-s per 1000 samples"
    )
    print(
        f"loader (read+decode+shuffle+collate): {rate:8.0f} samples/s, "
        f"{np.median(loader_cpu):.3f} CPU-s per 1000 samples (workers included)"
    )
    cpu_ratio = float(np.median(loader_cpu) / np.median(raw_cpu))
    print(
        f"ratio loader/raw: {rate / raw:.2f} (goal >= 0.8); CPU ratio loader/raw: {cpu_ratio:.2f}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if a.out is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
