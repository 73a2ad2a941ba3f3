"""NICE / ATM-S encoder step with the fused temporal convolution + pooling, against the papers' two layers.

``models/encoders/shallow.ConvPool`` runs NICE's ``Conv2d(1, 40, (1, k))`` and ``AvgPool2d((1, p),
(1, s))`` as one strided convolution. This bench builds each encoder of a config twice from the same
seed (fused, and with those two layers put back) and times forward + backward of z on random EEG,
one thread, alternating within each round; the last column is fused / two layers (median over rounds):

    python bench/conv_pool.py                       # the demo's EEG, 17 ch x 100 samples
    python bench/conv_pool.py --batch-size 32 data.preprocess.channels=all \
        data.preprocess.resample_hz=250             # THINGS-EEG2's 63 ch x 250 samples

Results and commands: docs/benchmarks.md, "EEG encoder step".
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from sgdm_dist.config import Config, load_config
from sgdm_dist.models.encoders.shallow import ConvPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_inputs import eeg_shape, median_ms, model_of_kind, step_parser

REPO = Path(__file__).resolve().parents[1]


def encoder(cfg: Config, kind: str, shape: tuple[int, int], fused: bool) -> nn.Module:
    """The ``kind`` encoder of ``cfg`` (seed 0), its first two conv layers unfused unless ``fused``."""
    enc = model_of_kind(cfg, kind, shape).encoder
    if not fused:
        fast = enc.conv[0]
        assert isinstance(fast, ConvPool), f"{kind}: no fused layer at conv[0]"
        conv = nn.Conv2d(1, fast.out_channels, fast.kernel_size)
        conv.load_state_dict(fast.state_dict())
        enc.conv[0], enc.conv[1] = conv, nn.AvgPool2d((1, fast.pool), (1, fast.pool_stride))
    return enc.train()


def step_ms(enc: nn.Module, eeg: torch.Tensor, subject: torch.Tensor, steps: int) -> float:
    """Median milliseconds of forward + backward of ``z`` (3 warm-up steps first)."""
    return median_ms(lambda: enc(eeg, subject).z.square().mean().backward(), steps)


def main() -> None:
    args = step_parser(__doc__.split("\n\n")[0]).parse_args()
    torch.set_num_threads(1)
    cfg = load_config(REPO / args.config, args.overrides)
    shape = eeg_shape(cfg)
    gen = torch.Generator().manual_seed(0)
    eeg = torch.randn(args.batch_size, *shape, generator=gen)
    subject = torch.randint(1, 3, (args.batch_size,), generator=gen)
    print(f"shape {shape[0]} ch x {shape[1]} samples, batch {args.batch_size}, 1 thread")
    print(f"{'kind':6} {'two layers ms':>14} {'fused ms':>9} {'ratio':>6}")
    for kind in ("nice", "atms"):
        ratios, slow, fast = [], [], []
        for _ in range(args.rounds):
            slow.append(step_ms(encoder(cfg, kind, shape, False), eeg, subject, args.steps))
            fast.append(step_ms(encoder(cfg, kind, shape, True), eeg, subject, args.steps))
            ratios.append(fast[-1] / slow[-1])
        print(
            f"{kind:6} {statistics.median(slow):14.1f} {statistics.median(fast):9.1f} "
            f"{statistics.median(ratios):6.2f}"
        )


if __name__ == "__main__":
    main()
