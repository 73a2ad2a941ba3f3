"""The training loop: one Accelerate loop for DDP, FSDP and DeepSpeed ZeRO-2/3.

Reads top to bottom: :func:`train` = set up → resume → loop → finish. Each optimiser step: forward,
backward, clip, step, EMA; at a cadence the ranks agree on the stop signal and finite losses
(sgdm_dist/training/guard.py), then log, validate, checkpoint. The alignment stage trains its own
engine; the diffusion stage rebuilds it around the whole model (sgdm_dist/training/stages.py). Strategy,
precision and process count come from the accelerate config the job was launched with
(``configs/accelerate/*.yaml``, ``launch/train.sh``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from sgdm_dist.config import Config
from sgdm_dist.data.manifest import Manifest, manifest_json, read_manifest
from sgdm_dist.models import SGDM, build_model
from sgdm_dist.training.checkpoint import (
    CheckpointError,
    TrainerState,
    complete_checkpoints,
    resume_checkpoint,
    save_checkpoint,
)
from sgdm_dist.training.distributed import (
    LaunchRequest,
    check_replicas,
    make_accelerator,
    micro_batch_seed,
)
from sgdm_dist.training.ema import EMA
from sgdm_dist.training.guard import NonFiniteLossError, StepGuard, StopSignal
from sgdm_dist.training.reporting import (
    MetricsFile,
    Throughput,
    grad_norm_value,
    reduce_terms,
    start_tracking,
)
from sgdm_dist.training.selection import Selection, resolve_epochs
from sgdm_dist.training.stages import (
    Engine,
    Group,
    build_engine,
    eval_copy,
    group_of,
    switch_engine,
)
from sgdm_dist.training.step import epoch_batches, train_step
from sgdm_dist.training.structure_refit import refit_for_export
from sgdm_dist.training.validation import final_grid, validate_retrieval
from sgdm_dist.utils.atomic import atomic_write
from sgdm_dist.utils.tracking import Tracker

log = logging.getLogger(__name__)

EvalHook = Callable[[int, SGDM], dict[str, float]]
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped by a signal", so a job controller restarts it
__all__ = ["PREEMPTED_EXIT_CODE", "NonFiniteLossError", "Preempted", "TrainResult", "train"]


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


@dataclass
class _Run:
    """Everything one training run holds; the functions below read and update it."""

    cfg: Config
    accelerator: Accelerator
    manifest: Manifest
    engine: Engine
    ema: EMA | None
    state: TrainerState
    guard: StepGuard
    tracker: Tracker | None = None
    history: MetricsFile | None = None
    progress: Any = None
    on_eval: EvalHook | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    local_processes: int = 1  # this launch's processes on this node (their threads, see _export)
    selection: Selection | None = (
        None  # best weights / early stopping (sgdm_dist/training/selection.py)
    )

    @property
    def ckpt_root(self) -> Path:
        return self.cfg.experiment.output_dir / "checkpoints"


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
    run = _setup(cfg, request or LaunchRequest.from_env(), on_eval)
    cfg = run.cfg  # train.align_epochs resolved to steps
    _resume(run, resume)
    run.tracker = start_tracking(cfg, run.accelerator, run.manifest, env_tracking_uri)
    run.history = MetricsFile(
        cfg.experiment.output_dir / "metrics.jsonl", run.accelerator.is_main_process
    )
    run.progress = tqdm(
        total=run.cfg.train.total_steps,
        initial=run.state.step,
        disable=not run.accelerator.is_main_process,
        desc="train",
        unit="step",
    )
    status = "FAILED"
    try:
        _loop(run)
        result = _finish(run)
        status = "FINISHED"
        return result
    except Preempted:
        status = "KILLED"
        raise
    finally:
        run.progress.close()
        run.guard.stop.restore()
        run.tracker.close(status, timeout=cfg.experiment.tracking_close_timeout_s)
        run.accelerator.wait_for_everyone()
        run.accelerator.end_training()


def _setup(cfg: Config, request: LaunchRequest, on_eval: EvalHook | None) -> _Run:
    """Accelerator, data manifest, and the engine of the first stage (fresh weights)."""
    accelerator = make_accelerator(cfg, request)
    set_seed(cfg.experiment.seed)  # the initial weights: identical on every rank
    manifest = read_manifest(cfg.data.shard_dir)
    manifest.check_compatible(cfg)
    cfg = resolve_epochs(cfg, manifest, accelerator.num_processes)
    model = build_model(
        cfg.model,
        n_channels=manifest.n_channels,
        n_times=manifest.n_times,
        n_subjects=max(manifest.subjects),
    )
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    engine = build_engine(accelerator, cfg, model, group_of(cfg.train.stage_at(0)), 0)
    log.info(
        "training on %d process(es): %s, mixed precision %s",
        accelerator.num_processes,
        accelerator.distributed_type,
        accelerator.mixed_precision,
    )
    guard = StepGuard(
        accelerator,
        StopSignal.install(),
        policy=cfg.train.nonfinite,
        limit=cfg.train.nonfinite_limit,
    )
    selection = Selection(cfg)
    run = _Run(cfg, accelerator, manifest, engine, None, TrainerState(), guard)
    run.on_eval, run.selection = selection.hook(on_eval), selection
    run.local_processes = request.local_world_size
    run.ema = _new_ema(run)
    return run


def _new_ema(run: _Run) -> EMA | None:
    """EMA of the engine's weights (sharded like them; sgdm_dist/training/ema.py)."""
    if run.cfg.train.ema_decay is None:
        return None
    return EMA(run.engine.unwrapped, run.cfg.train.ema_decay, keep=run.accelerator.is_main_process)


def _resume(run: _Run, resume: str | None) -> None:
    """Load ``resume`` (``auto``: the newest checkpoint that loads, walking back past damaged ones)
    into an engine of the stage that wrote it."""
    if resume is None and complete_checkpoints(run.ckpt_root):
        # A fresh run would interleave its checkpoints with the earlier run's.
        raise CheckpointError(
            f"{run.ckpt_root} holds checkpoints of an earlier run: pass --resume auto to continue "
            "it, or set another experiment.output_dir"
        )
    state, start_from = resume_checkpoint(
        run.accelerator, run.ckpt_root, resume, run.ema, prepare=lambda s: _prepare_for(run, s)
    )
    if start_from is not None:
        run.state = state
        log.info("resumed from %s at step %d", start_from, state.step)


def _prepare_for(run: _Run, state: TrainerState) -> EMA | None:
    """Make the engine the one that wrote a checkpoint at ``state.step`` (the stage of its last
    step) and return the EMA to load it into; collective."""
    _switch_to(run, group_of(run.cfg.train.stage_at(max(state.step - 1, 0))), state.step)
    return run.ema


def _enter_stage(run: _Run, stage: str) -> None:
    """At the stage switch: rebuild the engine around what this stage trains; collective."""
    if group_of(stage) != run.engine.group:
        log.info("step %d: stage %s starts; engine rebuilt", run.state.step, stage)
        _switch_to(run, group_of(stage), run.state.step)


def _switch_to(run: _Run, group: Group, step: int) -> None:
    if group == run.engine.group:
        return
    run.engine = switch_engine(run.accelerator, run.cfg, run.engine, group, step)
    if run.ema is not None:  # shadows carry over by name; new parameters start from their weights
        run.ema.track(run.engine.unwrapped)


def _loop(run: _Run) -> None:
    """Optimiser steps until ``train.total_steps``; epochs replay from the resumed position."""
    cfg, state, accelerator = run.cfg, run.state, run.accelerator
    window = Throughput()
    micro = 0  # micro-batches since the last optimiser step
    run.engine.model.train()
    while state.step < cfg.train.total_steps and not run.selection.stopped:
        for batch in epoch_batches(cfg, accelerator, state):
            stage = cfg.train.stage_at(state.step)
            _enter_stage(run, stage)
            # Each rank's own noise/timestep/dropout stream, a function of (seed, rank, step).
            torch.manual_seed(
                micro_batch_seed(cfg.experiment.seed, accelerator.process_index, state.step, micro)
            )
            engine = run.engine
            out, grad_norm = train_step(
                accelerator,
                engine.model,
                engine.optimizer,
                batch,
                stage,
                cfg.train.max_grad_norm,
                guard=run.guard,
                step=state.step,
            )
            micro += 1
            state.batch_in_epoch += 1
            n = batch["eeg"].shape[0] * accelerator.num_processes
            state.samples_seen += n
            window.add(n)
            if not accelerator.sync_gradients:
                continue
            micro = 0
            _after_step(run, stage, out, grad_norm, window)
            if state.step >= cfg.train.total_steps or run.selection.stopped:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0


def _after_step(
    run: _Run, stage: str, out: dict[str, torch.Tensor], grad_norm: Any, window: Throughput
) -> None:
    """Schedule, EMA; then — only at their cadence — agree, log, validate, checkpoint, stop."""
    cfg, state = run.cfg, run.state
    run.engine.scheduler.step()
    state.step += 1
    if run.ema is not None:
        run.ema.update(run.engine.unwrapped)
    run.progress.update(1)
    last = state.step == cfg.train.total_steps
    log_now = state.step % cfg.train.log_every == 0 or last
    eval_now = state.step % cfg.train.eval_every == 0 or last
    save_now = state.step % cfg.train.checkpoint_every == 0
    stop = False
    if log_now or eval_now or save_now or state.step % cfg.train.sync_every == 0:
        stop = run.guard.agree(state.step)  # raises NonFiniteLossError before anything is saved
    if log_now:
        _log_step(run, stage, out, grad_norm, window)
    if eval_now:
        _record(run, _validate(run))
        run.selection.check_stop(run.accelerator)  # early stopping: collective
    if save_now:
        save_checkpoint(run.accelerator, run.ckpt_root, state, run.ema, cfg.train.keep_last)
    if stop:
        ckpt = save_checkpoint(run.accelerator, run.ckpt_root, state, run.ema, cfg.train.keep_last)
        raise Preempted(ckpt, state.step)


def _finish(run: _Run) -> TrainResult:
    """Replica check, last checkpoint, export, reconstruction grid; collective."""
    accelerator = run.accelerator
    fingerprint = check_replicas(accelerator, run.engine.model)
    if fingerprint is not None and accelerator.num_processes > 1:
        log.info(
            "replicas identical on %d ranks (fingerprint %.10e)",
            accelerator.num_processes,
            fingerprint,
        )
    final_ckpt = save_checkpoint(
        accelerator, run.ckpt_root, run.state, run.ema, run.cfg.train.keep_last
    )
    out_dir = run.cfg.experiment.output_dir
    model_dir = _export(run, out_dir / "model")
    grid = final_grid(run.cfg, accelerator, model_dir, out_dir)
    if grid is not None:
        run.tracker.log_artifact(grid, "reconstructions")
    if model_dir is not None:
        run.tracker.log_artifact(model_dir / "experiment.yaml")
        run.tracker.log_model(model_dir)  # for `sgdm register --run RUN_ID` (registry/lineage.py)
    return TrainResult(run.state.step, model_dir, final_ckpt, run.tracker.run_id, run.last_metrics)


# ---------------------------------------------------------------------------------------------
# logging, validation, export


def _log_step(
    run: _Run, stage: str, out: dict[str, torch.Tensor], grad_norm: Any, window: Throughput
) -> None:
    """Reduce the loss terms over ranks and log them (a logging step: host syncs are fine here)."""
    logged = reduce_terms(run.accelerator, out)
    logged.update(
        lr=run.engine.scheduler.get_last_lr()[0],
        samples_per_s=window.rate(),
        epoch=run.state.epoch,
        stage=1.0 if stage == "align" else 2.0,
    )
    norm = grad_norm_value(run.accelerator, grad_norm)
    if norm is not None:
        logged["grad_norm"] = norm
    if run.guard.skipped:
        logged["nonfinite_skipped"] = float(run.guard.skipped)
    if torch.cuda.is_available():
        logged["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    run.progress.set_postfix(loss=f"{logged['loss']:.4f}", sps=f"{logged['samples_per_s']:.0f}")
    _record(run, logged)


def _record(run: _Run, metrics: dict[str, float]) -> None:
    if metrics:
        run.tracker.log_metrics(metrics, run.state.step)
        run.history.write(run.state.step, metrics)
        run.last_metrics.update(metrics)


def _validate(run: _Run) -> dict[str, float]:
    copy = eval_copy(run.accelerator, run.cfg, run.engine, run.ema)
    result: dict[str, float] = {}
    if copy is not None:
        result = validate_retrieval(run.cfg, copy, run.accelerator.device)
        if run.on_eval is not None:
            result.update(run.on_eval(run.state.step, copy))
    run.accelerator.wait_for_everyone()
    run.engine.model.train()
    return result


def _export(run: _Run, target: Path) -> Path | None:
    copy = eval_copy(run.accelerator, run.cfg, run.engine, run.ema)
    if copy is None:
        run.accelerator.wait_for_everyone()
        return None
    run.selection.restore(copy)
    _record(run, refit_for_export(copy, run.cfg, run.local_processes))  # rank 0 alone
    copy.save_pretrained(target)
    # Atomic (a full disk raises DiskFullError naming the file, never leaves half a file).
    config_text, manifest_text = run.cfg.to_yaml(), manifest_json(run.manifest)
    atomic_write(target / "experiment.yaml", lambda tmp: tmp.write_text(config_text))
    atomic_write(target / "data_manifest.json", lambda tmp: tmp.write_text(manifest_text))
    log.info("model exported to %s (%s weights)", target, "EMA" if run.ema is not None else "raw")
    run.accelerator.wait_for_everyone()
    return target
