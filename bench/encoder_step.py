"""Alignment-stage training step of each EEG encoder kind, timed against the axial encoder.

For every ``model.encoder.kind`` the bench builds the SGDM of a config and times its alignment step
(forward, backward, AdamW; the loop's own losses) on random EEG, one thread by default (what each of
`sgdm demo`'s two training processes gets). The kinds alternate within each round; the last column is
each kind's time over the axial encoder's in the same round (median over rounds):

    python bench/encoder_step.py                   # the demo's EEG, 17 ch x 100 samples
    python bench/encoder_step.py --batch-size 32 data.preprocess.channels=all \
        data.preprocess.resample_hz=250            # THINGS-EEG2's 63 ch x 250 samples

The EEG shape is the one the config's preprocessing produces (overrides as for ``sgdm``).

Results and commands: docs/benchmarks.md, "EEG encoder step".
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import get_args

import torch

from sgdm_dist.config import Config, load_config
from sgdm_dist.config.model import EncoderConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_inputs import eeg_shape, make_batches, median_ms, model_of_kind, step_parser

REPO = Path(__file__).resolve().parents[1]
KINDS: tuple[str, ...] = get_args(EncoderConfig.model_fields["kind"].annotation)


def step_ms(cfg: Config, kind: str, batch: dict[str, torch.Tensor], steps: int) -> float:
    """Median milliseconds of ``steps`` alignment steps of a fresh model of ``kind`` on ``batch``."""
    model = model_of_kind(cfg, kind, tuple(batch["eeg"].shape[1:]))
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("unet")])

    def step() -> None:
        loss = model(batch, stage="align")["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_ms(step, steps)


def main() -> None:
    parser = step_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(REPO / args.config, args.overrides)
    channels, times = eeg_shape(cfg)
    (batch,) = make_batches(cfg, 1, args.batch_size, torch.device("cpu"))
    print(
        f"shape {channels} ch x {times} samples, batch {args.batch_size}, "
        f"{args.threads} thread(s); median ms per alignment step over {args.rounds} rounds"
    )
    print(f"{'kind':8} {'ms/step':>9} {'/ axial':>8}")
    rounds = [
        {kind: step_ms(cfg, kind, batch, args.steps) for kind in KINDS} for _ in range(args.rounds)
    ]
    for kind in KINDS:
        ms = statistics.median(r[kind] for r in rounds)
        ratio = statistics.median(r[kind] / r["axial"] for r in rounds)
        print(f"{kind:8} {ms:9.1f} {ratio:8.2f}")


if __name__ == "__main__":
    main()
