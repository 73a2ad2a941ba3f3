"""Alignment-stage training step of each EEG encoder kind, timed against the axial encoder.

For every ``model.encoder.kind`` the bench builds the SGDM of a config and times its alignment step
(forward, backward, AdamW; the loop's own losses) on random EEG, one thread by default (what each of
`sgdm demo`'s two training processes gets). The kinds alternate within each round; the last column is
each kind's time over the axial encoder's in the same round (median over rounds):

    python bench/encoder_step.py                                   # demo shape, 17 ch x 100 samples
    python bench/encoder_step.py --shape 63 250 --batch-size 32    # THINGS-EEG2 at 250 Hz

Results and commands: docs/benchmarks.md, "EEG encoder step".
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from sgdm_dist.config import load_config
from sgdm_dist.models import build_model

REPO = Path(__file__).resolve().parents[1]
KINDS = ("axial", "atms", "nice", "eegnet", "linear")


def step_ms(kind: str, args: argparse.Namespace, steps: int) -> float:
    """Median milliseconds of ``steps`` alignment steps of a fresh model of ``kind``."""
    cfg = load_config(REPO / args.config, [f"model.encoder.kind={kind}"])
    channels, times = args.shape
    torch.manual_seed(0)
    model = build_model(cfg.model, n_channels=channels, n_times=times, n_subjects=2).train()
    b = args.batch_size
    batch = {
        "eeg": torch.randn(b, channels, times),
        "subject": torch.randint(1, 3, (b,)),
        "clip": torch.nn.functional.normalize(torch.randn(b, cfg.model.clip_dim), dim=-1),
        "image_index": torch.arange(b),
        "latent": torch.randn(b, *model.latent_shape),
    }
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("unet")])
    times_ms = []
    for i in range(steps + 3):  # 3 warm-up steps
        start = time.perf_counter()
        loss = model(batch, stage="align")["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:
            times_ms.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="relative to the repository")
    parser.add_argument("--shape", type=int, nargs=2, default=[17, 100], metavar=("C", "T"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every kind")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"shape {args.shape[0]} ch x {args.shape[1]} samples, batch {args.batch_size}, "
        f"{args.threads} thread(s); median ms per alignment step over {args.rounds} rounds"
    )
    print(f"{'kind':8} {'ms/step':>9} {'/ axial':>8}")
    rounds = [{kind: step_ms(kind, args, args.steps) for kind in KINDS} for _ in range(args.rounds)]
    for kind in KINDS:
        ms = statistics.median(r[kind] for r in rounds)
        ratio = statistics.median(r[kind] / r["axial"] for r in rounds)
        print(f"{kind:8} {ms:9.1f} {ratio:8.2f}")


if __name__ == "__main__":
    main()
