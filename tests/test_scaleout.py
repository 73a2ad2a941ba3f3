"""Scale-out settings (#18.6): ZeRO communication knobs on GPUs only, explicit values win; opt-ins."""

from __future__ import annotations

import torch
from torch import nn

from sgdm_dist.training.scaleout import set_tf32, to_channels_last, tune_deepspeed_config


def test_zero_knobs_are_filled_on_gpus_only_and_never_override() -> None:
    cpu = {"zero_optimization": {"stage": 2}}
    assert tune_deepspeed_config(cpu, "bf16", on_gpu=False) == []
    assert cpu == {"zero_optimization": {"stage": 2}}  # gloo runs keep DeepSpeed's defaults

    gpu = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 123}}
    added = tune_deepspeed_config(gpu, "bf16", on_gpu=True)
    zero = gpu["zero_optimization"]
    assert zero["overlap_comm"] is True and zero["contiguous_gradients"] is True
    assert zero["reduce_bucket_size"] == 123 and "reduce_bucket_size" not in added
    assert gpu["communication_data_type"] == "bf16"

    z3 = {"zero_optimization": {"stage": 3}}
    tune_deepspeed_config(z3, "no", on_gpu=True)
    assert z3["zero_optimization"]["stage3_prefetch_bucket_size"] > 0
    assert "communication_data_type" not in z3  # fp32 training communicates in fp32


def test_channels_last_and_tf32_opt_ins() -> None:
    model = nn.Module()
    model.unet = nn.Conv2d(4, 8, 3)
    to_channels_last(model)
    assert model.unet.weight.is_contiguous(memory_format=torch.channels_last)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
