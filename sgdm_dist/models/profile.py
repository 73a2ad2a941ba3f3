"""Parameter counts and forward/backward FLOP estimates of an SGDM config, without allocating weights.

The model is built on PyTorch's ``meta`` device (shapes only) and one training step is traced with
``torch.utils.flop_counter.FlopCounterMode``, which counts matmul/conv/attention FLOPs (2 per
multiply-add); elementwise ops and norms are not counted, so figures are slight underestimates.
Attention: torch's counter knows the CUDA SDPA kernels and the math path (meta tensors take it), but
not the fused CPU kernel, so a count on CPU tensors silently dropped every attention FLOP (small:
326.8 instead of 474.5 GFLOP per sample); :func:`flop_counter` adds it.

    python -m sgdm_dist.models.profile configs/tiny.yaml --channels 17 --times 100 --batch 1
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_flop_count,
)

from sgdm_dist.config import load_config
from sgdm_dist.config.model import ModelConfig
from sgdm_dist.models.build import build_model
from sgdm_dist.models.sgdm import SGDM, Stage

GROUPS = ("encoder", "semantic", "conditioning", "classifier", "unet")
aten = torch.ops.aten


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    # Model FLOPs, as the math path counts them (two matmuls per forward matmul); the fused
    # kernel's recomputation of the scores is hardware work, not model work (MFU convention).
    return 2 * sdpa_flop_count(query, key, value)


# Arguments arrive as shapes: FlopCounterMode wraps non-raw formulas in its shape_wrapper.
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def flop_counter() -> FlopCounterMode:
    """``FlopCounterMode`` that also counts the fused CPU attention kernel (torch's misses it)."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)


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
        group = name.split(".", 1)[0]  # models grow new parts (e.g. a structure branch)
        counts[group] = counts.get(group, 0) + p.numel()
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
    device: str = "meta",
) -> Profile:
    """Parameters and FLOPs of one ``forward(batch, stage)`` + backward.

    Traced on the ``meta`` device (no weights allocated) unless ``device`` says otherwise; the
    count is the same on every device.
    """
    with torch.device(device):
        model = build_model(
            cfg.model_copy(update={"n_classes": None, "lambda_cls": 0.0}),
            n_channels=n_channels,
            n_times=n_times,
            n_subjects=n_subjects,
        )
        data = {
            "eeg": torch.zeros(batch, n_channels, n_times),
            "clip": torch.zeros(batch, cfg.clip_dim),
            "latent": torch.zeros(batch, *model.latent_shape),
            "subject": torch.ones(batch, dtype=torch.long),
            "image_index": torch.arange(batch),
        }
    params = count_parameters(model)
    with flop_counter() as fwd:
        loss = model(data, stage)["loss"]
    with flop_counter() as bwd:
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
