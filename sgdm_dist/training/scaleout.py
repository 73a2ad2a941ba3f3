"""Scale-out performance settings: DeepSpeed ZeRO communication, TF32, channels_last, torch.compile.

accelerate's YAML has no keys for ZeRO's communication knobs, so sgdm fills them into the DeepSpeed
config it builds at start-up (:func:`tune_deepspeed_config`), on GPUs only: overlapping
communication needs CUDA streams, and the CPU/gloo runs (tests, demo) keep DeepSpeed's defaults.
A value already present (a ``deepspeed_config_file`` that sets it) wins. The rest is opt-in config:
``train.compile`` (accelerate's TorchDynamo plugin), ``train.channels_last`` (the UNet's convolutions),
``train.tf32`` (fp32 matmuls and convolutions on Ampere+ tensor cores).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# DeepSpeed's defaults are 5e8-element buckets (1 GB in bf16 per bucket, several alive at once) with
# communication not overlapped. 5e7 elements keeps a few buckets in flight while backward runs.
BUCKET = 50_000_000
ZERO_TUNING: dict[int, dict[str, Any]] = {
    2: {
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "reduce_bucket_size": BUCKET,
        "allgather_bucket_size": BUCKET,
    },
    3: {
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": BUCKET,
        "stage3_prefetch_bucket_size": BUCKET,
        # Small tensors (norms, biases, the conditioning heads) stay gathered: fewer tiny all-gathers.
        "stage3_param_persistence_threshold": 100_000,
        "stage3_max_live_parameters": 1_000_000_000,
        "stage3_max_reuse_distance": 1_000_000_000,
    },
}


def tune_deepspeed_config(ds: dict[str, Any], mixed_precision: str, *, on_gpu: bool) -> list[str]:
    """Fill the ZeRO communication knobs into ``ds`` in place; returns the keys it set."""
    if not on_gpu:
        return []
    zero = ds.setdefault("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    added = [k for k in ZERO_TUNING.get(stage, {}) if k not in zero]
    for key in added:
        zero[key] = ZERO_TUNING[stage][key]
    if mixed_precision == "bf16" and "communication_data_type" not in ds:
        ds["communication_data_type"] = "bf16"  # gradients reduced in bf16: half the bytes
        added.append("communication_data_type")
    if added:
        log.info("DeepSpeed ZeRO-%d tuned: %s", stage, ", ".join(added))
    return added


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls and cuDNN convolutions (no effect on CPU or in bf16 autocast regions)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def to_channels_last(model: nn.Module) -> nn.Module:
    """NHWC weights for the UNet's convolutions (faster cuDNN kernels on tensor cores)."""
    unet = getattr(model, "unet", model)
    unet.to(memory_format=torch.channels_last)
    return model


def dynamo_backend(compile_model: bool) -> str | None:
    """accelerate's ``dynamo_backend``: inductor when opted in, else whatever the launch said."""
    return "inductor" if compile_model else None
