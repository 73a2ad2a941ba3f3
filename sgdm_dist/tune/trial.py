"""One trial: a configuration trained and scored on every cross-subject fold, one fold after another.

Folds run sequentially inside the trial (not as separate trials) because ASHA must compare
configurations, not (configuration, fold) pairs: a trial reports after every validation of every
fold, so all trials report the same (fold, step) sequence and ASHA's ``training_iteration`` means the
same thing for each. What ASHA ranks is the running cross-subject score: the mean of the final
scores of the folds already finished and the current score of the fold in progress — after the last
report it is exactly the configuration's mean over folds. A finished fold is saved as a Tune
checkpoint, so a trial restored after the driver died skips the folds it already scored.

With ``tune.workers_per_trial > 1`` each fold trains under a Ray Train ``TorchTrainer`` (DDP over
the workers); the trial then reports once per fold, after scoring the exported model.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgdm_dist.config import Config, validate
from sgdm_dist.data.io import atomic_write_text
from sgdm_dist.data.manifest import read_manifest
from sgdm_dist.data.splits import select_shards
from sgdm_dist.tune.folds import Fold, fold_config
from sgdm_dist.tune.score import held_out_shifts, score_held_out
from sgdm_dist.tune.space import apply_params

log = logging.getLogger(__name__)

FINISHED_FOLDS = "finished_folds.json"  # inside a Tune checkpoint: {fold index: scores}
TRIAL_RECORD = "trial.json"  # written when every fold of the trial is scored
WORKERS_RECORD = "workers.json"  # multi-worker folds: the process group the fold trained in
STARTS_LOG = "starts.log"  # one line per (re)start of the trial: resumed sweeps are auditable
SCORES = ("top1", "top5", "mrr", "cosine")


@dataclass(frozen=True)
class TrialSpec:
    """What the driver hands every trial (plain data: Ray pickles it to the trial processes)."""

    base: dict[str, Any]  # the sweep's resolved config
    folds: list[dict[str, Any]]
    sweep_dir: str


def run_trial(params: dict[str, Any], spec: TrialSpec) -> None:
    """Ray Tune function trainable: ``params`` = {dotted key: sampled value}."""
    from ray import tune

    cfg = apply_params(validate(spec.base), params)
    _trial_threads(cfg)
    trial_dir = Path(spec.sweep_dir) / "trials" / tune.get_context().get_trial_id()
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(trial_dir / STARTS_LOG, "a") as handle:
        handle.write(f"{time.time():.3f}\n")
    finished = _restore_finished(tune.get_checkpoint())
    folds = [Fold.from_dict(f) for f in spec.folds]
    for fold in folds:
        if fold.index in finished:
            log.info("fold %d already scored before a restore: skipped", fold.index)
            continue
        fold_dir = trial_dir / f"fold-{fold.index}"
        # A fold restarted after a resume starts clean: a killed attempt's checkpoints must not
        # mix with the new run's (the fold's reports restart from its first validation).
        shutil.rmtree(fold_dir, ignore_errors=True)
        fold_cfg = fold_config(cfg, fold, str(fold_dir))
        write_fold_record(fold_cfg, fold)
        if cfg.tune.workers_per_trial > 1:
            scores = _train_distributed(fold_cfg, fold)
            report(fold, fold_cfg.train.total_steps, scores, finished, final=True)
        else:
            from sgdm_dist.training.loop import train

            train(fold_cfg, on_eval=_FoldReporter(fold_cfg, fold, finished))
        _tidy(fold_cfg)
    record = {
        "params": params,
        "folds": {str(i): s for i, s in sorted(finished.items())},
        **{f"heldout_{k}": _mean(finished, k) for k in SCORES},
    }
    atomic_write_text(trial_dir / TRIAL_RECORD, json.dumps(record, indent=2))


class _FoldReporter:
    """``on_eval`` hook: score the held-out subjects and report to Tune at every validation."""

    def __init__(self, cfg: Config, fold: Fold, finished: dict[int, dict[str, float]]) -> None:
        self.cfg = cfg
        self.fold = fold
        self.finished = finished
        self.shifts: dict[int, int] | None = None  # latency alignment, read at the first call

    def __call__(self, step: int, model: Any) -> dict[str, float]:
        if self.shifts is None:
            self.shifts = held_out_shifts(self.cfg, self.fold.held_out)
        scores = score_held_out(self.cfg, model, self.fold.held_out, self.shifts)
        report(self.fold, step, scores, self.finished, final=step >= self.cfg.train.total_steps)
        return {f"heldout/{k}": scores[k] for k in SCORES}


def report(
    fold: Fold,
    step: int,
    scores: dict[str, float],
    finished: dict[int, dict[str, float]],
    *,
    final: bool,
) -> None:
    """``tune.report`` the running cross-subject score; at a fold's end, with a checkpoint.

    ``finished`` (fold index → final scores) is updated in place when ``final``.
    """
    from ray import tune

    running = {**finished, fold.index: scores}
    metrics: dict[str, Any] = {f"heldout_{k}": _mean(running, k) for k in SCORES}
    metrics.update({f"fold_{k}": scores[k] for k in SCORES})
    metrics.update(
        fold=fold.index,
        folds_done=len(finished) + int(final),
        heldout_subjects=",".join(map(str, fold.held_out)),
        step=step,
    )
    if not final:
        tune.report(metrics)
        return
    finished[fold.index] = {k: scores[k] for k in SCORES}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / FINISHED_FOLDS).write_text(json.dumps(finished))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def write_fold_record(cfg: Config, fold: Fold) -> Path:
    """``fold.json``: who is held out and which training shards the fold reads.

    Guards the protocol: a held-out subject's shard in the training selection is a bug, not a
    configuration choice, so it stops the trial.
    """
    manifest = read_manifest(cfg.data.shard_dir)
    shards = select_shards(manifest, "train", cfg.train.subjects)
    leaked = sorted({s.name for s in shards if s.subject in fold.held_out})
    if leaked:
        raise RuntimeError(f"fold {fold.index}: held-out subjects' shards selected: {leaked}")
    record = {**fold.to_dict(), "train_shards": [s.name for s in shards]}
    out = cfg.experiment.output_dir / "fold.json"
    return atomic_write_text(out, json.dumps(record, indent=2))


def _restore_finished(checkpoint: Any) -> dict[int, dict[str, float]]:
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as folder:
        data = json.loads((Path(folder) / FINISHED_FOLDS).read_text())
    return {int(k): v for k, v in data.items()}


def _mean(by_fold: dict[int, dict[str, float]], key: str) -> float:
    return sum(s[key] for s in by_fold.values()) / len(by_fold)


def _tidy(cfg: Config) -> None:
    """Drop what only an interrupted fold would need (resume checkpoints) and, unless asked to keep
    them, the fold's weights; ``model/experiment.yaml`` and ``metrics.jsonl`` stay."""
    out = cfg.experiment.output_dir
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    if not cfg.tune.keep_fold_models:
        for weights in (out / "model").glob("*.safetensors"):
            weights.unlink()


# ---------------------------------------------------------------------------------------------
# multi-worker trials: Ray Train TorchTrainer


def _train_distributed(cfg: Config, fold: Fold) -> dict[str, float]:
    """Train the fold with ``tune.workers_per_trial`` DDP workers, then score the exported model."""
    from ray import train as ray_train
    from ray.train.torch import TorchConfig, TorchTrainer

    from sgdm_dist.models import SGDM

    tc = cfg.tune
    per_worker: dict[str, float] = {"CPU": tc.cpus_per_trial}
    if tc.gpus_per_trial > 0:
        per_worker["GPU"] = tc.gpus_per_trial
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": cfg.to_dict()},
        torch_config=TorchConfig(backend="nccl" if tc.gpus_per_trial > 0 else "gloo"),
        scaling_config=ray_train.ScalingConfig(
            num_workers=tc.workers_per_trial,
            use_gpu=tc.gpus_per_trial > 0,
            resources_per_worker=per_worker,
        ),
        run_config=ray_train.RunConfig(
            name="ray-train", storage_path=str(cfg.experiment.output_dir.resolve())
        ),
    )
    trainer.fit()
    model = SGDM.from_pretrained(cfg.experiment.output_dir / "model")
    return score_held_out(cfg, model, fold.held_out, held_out_shifts(cfg, fold.held_out))


def _trial_threads(cfg: Config) -> None:
    """A trial (or each of its workers) computes with the CPUs Ray reserved for it."""
    from sgdm_dist.utils.threads import HostInfo, configure_threads

    cores = max(1, int(cfg.tune.cpus_per_trial))
    configure_threads(HostInfo(cores=cores, local_processes=1), cfg.experiment.threads)


def _train_worker(loop_config: dict[str, Any]) -> None:
    """One DDP rank: Ray Train has set WORLD_SIZE/RANK and the process group; train() joins it.

    Rank 0 records the process group it trained in (``workers.json`` beside ``fold.json``).
    """
    import torch.distributed as dist

    from sgdm_dist.training.loop import train

    cfg = validate(loop_config["config"])
    _trial_threads(cfg)
    # Read before training: train() ends by tearing the process group down.
    group = {"world_size": dist.get_world_size(), "backend": str(dist.get_backend())}
    rank = dist.get_rank()
    result = train(cfg)
    if rank == 0:
        record = {**group, "steps": result.step}
        atomic_write_text(cfg.experiment.output_dir / WORKERS_RECORD, json.dumps(record))
