"""The training loop: one Accelerate loop for DDP, FSDP and DeepSpeed ZeRO-2/3.

Reads top to bottom: set up → resume → for each optimiser step: forward/backward, clip, step, EMA,
log, validate, checkpoint → export. Strategy, precision and process count come from the accelerate
config the job was launched with (``configs/accelerate/*.yaml``, ``launch/train.sh``).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from sgdm_dist import __version__
from sgdm_dist.checkpoint import (
    CheckpointError,
    TrainerState,
    complete_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from sgdm_dist.config import Config
from sgdm_dist.data.loader import make_loader
from sgdm_dist.data.manifest import Manifest, manifest_hash, manifest_json, read_manifest
from sgdm_dist.distributed import (
    LaunchRequest,
    check_replicas,
    is_zero3,
    make_accelerator,
    register_zero3_external_params,
)
from sgdm_dist.ema import EMA
from sgdm_dist.models import SGDM, build_model
from sgdm_dist.tracking import Tracker, default_tracking_uri
from sgdm_dist.validation import reconstruction_grid, validate_retrieval

log = logging.getLogger(__name__)

EvalHook = Callable[[int, SGDM], dict[str, float]]
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped by a signal", so a job controller restarts it


class Preempted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was written and training stopped cleanly."""

    def __init__(self, checkpoint: Path, step: int) -> None:
        super().__init__(f"stopped by signal at step {step}; checkpoint {checkpoint}")
        self.checkpoint = checkpoint
        self.step = step


@dataclass
class TrainResult:
    step: int
    model_dir: Path | None
    checkpoint: Path | None
    run_id: str | None
    metrics: dict[str, float]


def train(
    cfg: Config,
    *,
    resume: str | None = None,
    request: LaunchRequest | None = None,
    env_tracking_uri: str | None = None,
    on_eval: EvalHook | None = None,
) -> TrainResult:
    """Train ``cfg`` in this process (one of N under a launcher). Collective: all ranks call it.

    ``on_eval(step, model)`` runs on rank 0 at every validation with a full-weight single-process
    copy of the model (EMA weights when enabled) in eval mode; the metrics it returns are logged
    with the built-in ones (Ray Tune reports held-out-subject scores through it).
    """
    accelerator = make_accelerator(cfg, request or LaunchRequest.from_env())
    set_seed(cfg.experiment.seed)
    out_dir = cfg.experiment.output_dir
    manifest = read_manifest(cfg.data.shard_dir)
    manifest.check_compatible(cfg)

    model = build_model(
        cfg.model,
        n_channels=manifest.n_channels,
        n_times=manifest.n_times,
        n_subjects=max(manifest.subjects),
    )
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.train.lr,
        betas=cfg.train.adam_betas,
        weight_decay=cfg.train.weight_decay,
    )
    lr_scheduler = get_scheduler(
        cfg.train.lr_schedule,
        optimizer,
        num_warmup_steps=cfg.train.warmup_steps,
        num_training_steps=cfg.train.total_steps,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    register_zero3_external_params(accelerator, model)
    ema = None
    if cfg.train.ema_decay is not None:
        ema = EMA(
            accelerator.unwrap_model(model),
            cfg.train.ema_decay,
            keep=accelerator.is_main_process,
            zero3=is_zero3(accelerator),
        )

    ckpt_root = out_dir / "checkpoints"
    state = TrainerState()
    start_from = resolve_resume(ckpt_root, resume)
    if start_from is None and complete_checkpoints(ckpt_root):
        # A fresh run would interleave its checkpoints with the earlier run's.
        raise CheckpointError(
            f"{ckpt_root} holds checkpoints of an earlier run: pass --resume auto to continue it, "
            "or set another experiment.output_dir"
        )
    if start_from is not None:
        state = load_checkpoint(accelerator, start_from, ema)
        log.info("resumed from %s at step %d", start_from, state.step)

    tracker = _start_tracking(cfg, accelerator, manifest, env_tracking_uri)
    stop = _StopFlag.install()
    history = _MetricsFile(out_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    progress = tqdm(
        total=cfg.train.total_steps,
        initial=state.step,
        disable=not accelerator.is_main_process,
        desc="train",
        unit="step",
    )
    last_metrics: dict[str, float] = {}
    status = "FAILED"
    try:
        model.train()
        window = _Throughput()
        while state.step < cfg.train.total_steps:
            for batch in _epoch_batches(cfg, accelerator, state):
                stage = cfg.train.stage_at(state.step)
                out, grad_norm = train_step(
                    accelerator, model, optimizer, batch, stage, cfg.train.max_grad_norm
                )
                state.batch_in_epoch += 1
                state.samples_seen += batch["eeg"].shape[0] * accelerator.num_processes
                window.add(batch["eeg"].shape[0] * accelerator.num_processes)
                if not accelerator.sync_gradients:
                    continue

                lr_scheduler.step()
                state.step += 1
                if ema is not None:
                    ema.update(accelerator.unwrap_model(model))
                progress.update(1)

                if state.step % cfg.train.log_every == 0 or state.step == cfg.train.total_steps:
                    logged = _reduce_terms(accelerator, out)
                    logged.update(
                        lr=lr_scheduler.get_last_lr()[0],
                        samples_per_s=window.rate(),
                        epoch=state.epoch,
                        stage=1.0 if stage == "align" else 2.0,
                    )
                    if grad_norm is not None:
                        logged["grad_norm"] = grad_norm
                    if torch.cuda.is_available():
                        logged["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                    tracker.log_metrics(logged, state.step)
                    history.write(state.step, logged)
                    progress.set_postfix(
                        loss=f"{logged['loss']:.4f}", sps=f"{logged['samples_per_s']:.0f}"
                    )
                    last_metrics.update(logged)

                if state.step % cfg.train.eval_every == 0 or state.step == cfg.train.total_steps:
                    val = _validate(cfg, accelerator, model, ema, state.step, on_eval)
                    if val:
                        tracker.log_metrics(val, state.step)
                        history.write(state.step, val)
                        last_metrics.update(val)

                if state.step % cfg.train.checkpoint_every == 0:
                    save_checkpoint(accelerator, ckpt_root, state, ema, cfg.train.keep_last)
                if stop.agreed(accelerator):
                    ckpt = save_checkpoint(accelerator, ckpt_root, state, ema, cfg.train.keep_last)
                    status = "KILLED"
                    raise Preempted(ckpt, state.step)
                if state.step >= cfg.train.total_steps:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0

        fingerprint = check_replicas(accelerator, model)
        if fingerprint is not None and accelerator.num_processes > 1:
            log.info(
                "replicas identical on %d ranks (fingerprint %.10e)",
                accelerator.num_processes,
                fingerprint,
            )
        final_ckpt = save_checkpoint(accelerator, ckpt_root, state, ema, cfg.train.keep_last)
        model_dir = _export(cfg, accelerator, model, ema, out_dir / "model", manifest)
        grid = _reconstruction_grid(cfg, accelerator, model_dir, out_dir)
        if grid is not None:
            tracker.log_artifact(grid, "reconstructions")
        if model_dir is not None:
            tracker.log_artifact(model_dir / "experiment.yaml")
        status = "FINISHED"
        return TrainResult(state.step, model_dir, final_ckpt, tracker.run_id, last_metrics)
    finally:
        progress.close()
        stop.restore()
        tracker.close(status)
        accelerator.wait_for_everyone()
        accelerator.end_training()


def train_step(
    accelerator: Accelerator,
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    stage: str,
    max_grad_norm: float | None,
) -> tuple[dict[str, torch.Tensor], float | None]:
    """One micro-batch: forward, backward, and — at an accumulation boundary — clip and step.

    Returns the model's loss terms and the gradient norm (None between boundaries or unclipped).
    """
    grad_norm = None
    with accelerator.accumulate(model):
        out = model(batch, stage=stage)
        accelerator.backward(out["loss"])
        if accelerator.sync_gradients and max_grad_norm is not None:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return out, None if grad_norm is None else float(grad_norm)


# ---------------------------------------------------------------------------------------------
# data


def _epoch_batches(cfg: Config, accelerator: Accelerator, state: TrainerState) -> Iterator[dict]:
    """Batches of ``state.epoch`` on this rank, skipping those a resumed run already consumed.

    Ranks can hold different numbers of batches (whole shards go to each rank); every rank stops
    at the first batch any rank lacks, or DDP's collectives would wait forever.
    """
    loader = make_loader(
        cfg,
        "train",
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        epoch=state.epoch,
        subjects=cfg.train.subjects,
    )
    batches = iter(loader)
    for _ in range(state.batch_in_epoch):
        if next(batches, None) is None:
            break
    while True:
        batch = next(batches, None)
        exhausted = torch.tensor([float(batch is None)], device=accelerator.device)
        if accelerator.reduce(exhausted, reduction="sum").item() > 0:
            return
        yield {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# logging, validation, export


def _reduce_terms(accelerator: Accelerator, out: dict[str, torch.Tensor]) -> dict[str, float]:
    names = sorted(out)
    values = torch.stack([out[n].detach().float().reshape(()) for n in names])
    values = accelerator.reduce(values, reduction="mean")
    return {n: float(v) for n, v in zip(names, values, strict=True)}


def _eval_copy(cfg: Config, accelerator: Accelerator, model: Any, ema: EMA | None) -> SGDM | None:
    """Full weights (EMA when enabled) in a fresh single-process model on rank 0; collective.

    Gathering a state dict works the same for DDP, FSDP and ZeRO-3, so validation and export never
    run a forward pass through a sharded engine on one rank only.
    """
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    unwrapped = accelerator.unwrap_model(model)
    # Building a model draws from the global RNG; fork it so validating never changes what training
    # draws next (a resumed run must replay the same noise and dropout).
    with torch.random.fork_rng(devices=[]):
        copy = build_model(
            cfg.model,
            n_channels=unwrapped.n_channels,
            n_times=unwrapped.n_times,
            n_subjects=unwrapped.n_subjects,
        )
    state_dict = {k: v.detach().float().cpu() for k, v in state_dict.items()}
    if ema is not None:
        state_dict.update(ema.shadow)
    copy.load_state_dict(state_dict)
    return copy.to(accelerator.device).eval()


def _validate(
    cfg: Config,
    accelerator: Accelerator,
    model: Any,
    ema: EMA | None,
    step: int,
    on_eval: EvalHook | None,
) -> dict[str, float]:
    copy = _eval_copy(cfg, accelerator, model, ema)
    result: dict[str, float] = {}
    if copy is not None:
        result = validate_retrieval(cfg, copy, accelerator.device)
        if on_eval is not None:
            result.update(on_eval(step, copy))
    accelerator.wait_for_everyone()
    model.train()
    return result


def _export(
    cfg: Config,
    accelerator: Accelerator,
    model: Any,
    ema: EMA | None,
    target: Path,
    manifest: Manifest,
) -> Path | None:
    copy = _eval_copy(cfg, accelerator, model, ema)
    if copy is None:
        accelerator.wait_for_everyone()
        return None
    copy.save_pretrained(target)
    (target / "experiment.yaml").write_text(cfg.to_yaml())
    (target / "data_manifest.json").write_text(manifest_json(manifest))
    log.info("model exported to %s (%s weights)", target, "EMA" if ema is not None else "raw")
    accelerator.wait_for_everyone()
    return target


def _reconstruction_grid(
    cfg: Config, accelerator: Accelerator, model_dir: Path | None, out_dir: Path
) -> Path | None:
    if model_dir is None or cfg.train.recon_images == 0 or cfg.train.diffusion_steps == 0:
        return None
    return reconstruction_grid(
        cfg,
        SGDM.from_pretrained(model_dir, device=accelerator.device),
        out_dir / "reconstructions.png",
    )


def _start_tracking(
    cfg: Config, accelerator: Accelerator, manifest: Manifest, env_uri: str | None
) -> Tracker:
    enabled = cfg.experiment.tracking and accelerator.is_main_process
    uri = default_tracking_uri(cfg.experiment.tracking_uri, cfg.experiment.output_dir, env_uri)
    tracker = Tracker(
        uri,
        cfg.experiment.name,
        run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
        enabled=enabled,
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


class _MetricsFile:
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


class _Throughput:
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


class _StopFlag:
    """SIGTERM/SIGINT → finish the current step, checkpoint, exit. Ranks agree by all-reduce."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    @classmethod
    def install(cls) -> _StopFlag:
        flag = cls()
        if threading.current_thread() is not threading.main_thread():
            return flag  # e.g. a Ray Tune trial thread: its host process owns the signals
        for sig in (signal.SIGTERM, signal.SIGINT):
            flag._previous[sig] = signal.signal(sig, flag._handle)
        return flag

    def _handle(self, signum: int, _frame: Any) -> None:
        if not self.requested:
            log.warning("received %s: checkpointing after this step", signal.Signals(signum).name)
        self.requested = True

    def agreed(self, accelerator: Accelerator) -> bool:
        flag = torch.tensor([float(self.requested)], device=accelerator.device)
        return accelerator.reduce(flag, reduction="sum").item() > 0

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
