"""Parameter counts and forward/backward FLOP estimates of an SGDM config, without allocating weights.

The model is built on PyTorch's ``meta`` device (shapes only) and one training step is traced with
``torch.utils.flop_counter.FlopCounterMode``, which counts matmul/conv/attention FLOPs (2 per
multiply-add); elementwise ops and norms are not counted, so figures are slight underestimates.

    python -m sgdm_dist.models.profile configs/tiny.yaml --channels 17 --times 100 --batch 1
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from sgdm_dist.config import load_config
from sgdm_dist.config.model import ModelConfig
from sgdm_dist.models.build import build_model
from sgdm_dist.models.sgdm import SGDM, Stage

GROUPS = ("encoder", "semantic", "conditioning", "classifier", "unet")


@dataclass
class Profile:
    params: dict[str, int]  # per top-level group, plus "total"
    forward_flops: int  # one training forward at the given batch
    backward_flops: int

    @property
    def total_flops(self) -> int:
        return self.forward_flops + self.backward_flops


def count_parameters(model: SGDM) -> dict[str, int]:
    counts = {g: 0 for g in GROUPS}
    for name, p in model.named_parameters():
        counts[name.split(".", 1)[0]] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


def profile_model(
    cfg: ModelConfig,
    *,
    n_channels: int,
    n_times: int,
    n_subjects: int = 10,
    batch: int = 1,
    stage: Stage = "diffusion",
) -> Profile:
    """Parameters and FLOPs of one ``forward(batch, stage)`` + backward, traced on the meta device."""
    with torch.device("meta"):
        model = build_model(
            cfg.model_copy(update={"n_classes": None, "lambda_cls": 0.0}),
            n_channels=n_channels,
            n_times=n_times,
            n_subjects=n_subjects,
        )
        data = {
            "eeg": torch.empty(batch, n_channels, n_times),
            "clip": torch.empty(batch, cfg.clip_dim),
            "latent": torch.empty(batch, *model.latent_shape),
            "subject": torch.ones(batch, dtype=torch.long),
            "image_index": torch.arange(batch),
        }
    params = count_parameters(model)
    with FlopCounterMode(display=False) as fwd:
        loss = model(data, stage)["loss"]
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    return Profile(params, fwd.get_total_flops(), bwd.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--channels", type=int, default=17)
    parser.add_argument("--times", type=int, default=100)
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--stage", default="diffusion", choices=["align", "diffusion"])
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides).model
    prof = profile_model(
        cfg,
        n_channels=args.channels,
        n_times=args.times,
        n_subjects=args.subjects,
        batch=args.batch,
        stage=args.stage,
    )
    for group, n in prof.params.items():
        print(f"params/{group}: {n:,}")
    print(f"forward GFLOP: {prof.forward_flops / 1e9:.3f}")
    print(f"backward GFLOP: {prof.backward_flops / 1e9:.3f}")
    print(f"fwd+bwd GFLOP: {prof.total_flops / 1e9:.3f}")


if __name__ == "__main__":
    main()
