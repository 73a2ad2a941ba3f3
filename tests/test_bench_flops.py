"""Honest FLOP counts (#18.4): attention is counted on CPU tensors as it is on the meta device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgdm_dist.config import load_config
from sgdm_dist.models.profile import flop_counter, profile_model


def test_cpu_attention_is_counted_like_the_math_path() -> None:
    counts = {}
    for device in ("cpu", "meta"):
        q = torch.zeros(2, 4, 16, 8, device=device, requires_grad=True)
        with flop_counter() as fwd:
            out = F.scaled_dot_product_attention(q, q, q)
        with flop_counter() as bwd:
            out.sum().backward()
        counts[device] = (fwd.get_total_flops(), bwd.get_total_flops())
    attention = 2 * 2 * (2 * 4 * 16 * 16 * 8)  # QK^T and AV, 2 FLOPs per multiply-add
    assert counts["cpu"] == counts["meta"] == (attention, 2 * attention)


def test_model_profile_on_cpu_equals_the_meta_profile(repo) -> None:
    cfg = load_config(repo / "configs" / "tiny.yaml").model
    shape = dict(n_channels=17, n_times=100, n_subjects=2, batch=2)
    meta = profile_model(cfg, **shape)
    cpu = profile_model(cfg, **shape, device="cpu")
    assert meta.params == cpu.params
    assert (meta.forward_flops, meta.backward_flops) == (cpu.forward_flops, cpu.backward_flops)
    assert meta.forward_flops > 0
