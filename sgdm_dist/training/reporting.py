"""What the training loop reports: loss terms reduced over ranks, throughput, the metrics file, MLflow."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from sgdm_dist import __version__
from sgdm_dist.config import Config
from sgdm_dist.data.manifest import Manifest, manifest_hash
from sgdm_dist.utils.tracking import Tracker, default_tracking_uri


def grad_norm_value(accelerator: Accelerator, grad_norm: Any) -> float | None:
    """The last step's gradient norm before clipping, as a float (a host read: logging steps only)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        wrapped = accelerator.deepspeed_engine_wrapped
        norm = None if wrapped is None else wrapped.engine.get_global_grad_norm()
        return None if norm is None else float(norm)
    return None if grad_norm is None else float(grad_norm)


def reduce_terms(accelerator: Accelerator, out: dict[str, torch.Tensor]) -> dict[str, float]:
    names = sorted(out)
    values = torch.stack([out[n].detach().float().reshape(()) for n in names])
    values = accelerator.reduce(values, reduction="mean")
    return {n: float(v) for n, v in zip(names, values, strict=True)}


def start_tracking(
    cfg: Config, accelerator: Accelerator, manifest: Manifest, env_uri: str | None
) -> Tracker:
    enabled = cfg.experiment.tracking and accelerator.is_main_process
    uri = default_tracking_uri(cfg.experiment.tracking_uri, cfg.experiment.output_dir, env_uri)
    tracker = Tracker(
        uri,
        cfg.experiment.name,
        run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
        enabled=enabled,
        request_timeout=cfg.experiment.tracking_timeout_s,
    )
    tracker.log_params(cfg.flat())
    tracker.set_tags(
        {
            "data.manifest_sha256": manifest_hash(cfg.data.shard_dir),
            "sgdm_dist.version": __version__,
            "distributed_type": str(accelerator.distributed_type),
            "num_processes": str(accelerator.num_processes),
        }
    )
    return tracker


class MetricsFile:
    """Append-only ``metrics.jsonl`` beside the checkpoints: the loss curve without a server."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": step, **metrics}) + "\n")


class Throughput:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.samples = 0

    def add(self, n: int) -> None:
        self.samples += n

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.samples / max(now - self.start, 1e-9)
        self.start, self.samples = now, 0
        return rate
