"""``run_sweep``: the driver of a cross-subject sweep — Ray, the Tuner, MLflow, best.yaml.

Layout of a sweep folder ``<tune.storage_path>/<tune.name>/`` (Ray Tune's experiment folder):
Ray's own state and per-trial result files, ``sweep.yaml`` (the config the sweep was started
with), ``trials/<trial_id>/fold-<k>/`` (each fold's training outputs, ``fold.json``),
``trials/<trial_id>/trial.json`` (written when the trial scored every fold), ``summary.csv``
and ``best.yaml``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgdm_dist.config import Config, ConfigError, flatten
from sgdm_dist.config.loader import yaml_load
from sgdm_dist.data.io import atomic_write_text
from sgdm_dist.data.manifest import Manifest, manifest_hash, read_manifest
from sgdm_dist.tune import summary
from sgdm_dist.tune.folds import Fold, fold_config, make_folds
from sgdm_dist.tune.space import check_space, search_space
from sgdm_dist.tune.tracking import SweepRun
from sgdm_dist.utils.tracking import default_tracking_uri

log = logging.getLogger(__name__)

SWEEP_CONFIG = "sweep.yaml"
BEST_CONFIG = "best.yaml"
SUMMARY = "summary.csv"
# What a trial's result depends on; a resume must not change them (registry, launch, evaluate
# settings may differ).
SWEEP_SECTIONS = ("experiment", "data", "model", "train", "tune")
# A multi-worker trial's own process only waits on its TorchTrainer; its workers hold the CPUs.
DRIVER_CPUS = 0.1


class SweepError(RuntimeError):
    """A sweep that produced no score; the message names each failed trial and its error."""


@dataclass
class SweepResult:
    path: Path  # the sweep folder
    best_config: Path  # best.yaml
    best: summary.TrialRow
    rows: list[summary.TrialRow]  # every trial, ranked
    folds: list[Fold]
    parent_run_id: str | None
    table: str


def sweep_dir(cfg: Config) -> Path:
    tc = cfg.tune
    return tc.resolved_storage(cfg.experiment.output_dir) / tc.resolved_name(cfg.experiment.name)


def run_sweep(
    cfg: Config,
    *,
    resume: bool = False,
    address: str | None = None,
    env_tracking_uri: str | None = None,
) -> SweepResult:
    """Run (or, with ``resume``, continue) the sweep ``cfg.tune`` describes; blocks until done.

    Ray: the running instance if this process already joined one, else ``address`` (an existing
    cluster, e.g. $RAY_ADDRESS read by the CLI), else a local instance sized by
    ``tune.ray_num_cpus``; a Ray this function started is shut down before it returns.
    """
    # Everything that can be refused is checked before Ray (and torch) are imported.
    check_space(cfg)
    check_schedule_fixed(cfg)
    manifest = read_manifest(cfg.data.shard_dir)
    manifest.check_compatible(cfg)
    folds = make_folds(cfg, list(manifest.subjects))
    path = sweep_dir(cfg)
    restoring = _check_resume(cfg, path, resume)

    space = search_space(cfg)
    started_ray = _init_ray(cfg, address)
    parent: SweepRun | None = None
    status = "FAILED"
    try:
        if cfg.experiment.tracking:
            parent = _start_parent_run(cfg, path, folds, env_tracking_uri)
        tuner = _tuner(cfg, manifest, folds, path, parent, space, restoring)
        results = tuner.fit()
        result = _summarise(cfg, results, folds, path, parent)
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"  # Ctrl-C: Ray saved its state; `--resume` continues
        raise
    finally:
        if parent is not None:
            parent.finish(status)
        if started_ray:
            import ray

            ray.shutdown()


# Keys that set how many validations a fold reports: ASHA needs that number before trials sample.
SCHEDULE_KEYS = (
    "data.loader.batch_size",
    "train.align_steps",
    "train.align_epochs",
    "train.diffusion_steps",
    "train.eval_every",
    "train.eval_every_epochs",
    "train.grad_accum",
)


def reports_per_fold(
    cfg: Config, manifest: Manifest | None = None, fold: Fold | None = None
) -> int:
    """Reports one fold makes: one per validation (every ``train.eval_every`` steps and at the
    end), or a single one for multi-worker trials. Schedules in epochs (``train.align_epochs``,
    ``train.eval_every_epochs``) are resolved for the fold's training subjects in ``manifest``."""
    if cfg.tune.workers_per_trial > 1:
        return 1
    if manifest is not None:
        from sgdm_dist.training.selection import resolve_epochs  # torch: not before refusals

        fold_cfg = cfg if fold is None else fold_config(cfg, fold, str(cfg.experiment.output_dir))
        cfg = resolve_epochs(fold_cfg, manifest, world_size=1)
    total, every = cfg.train.total_steps, cfg.train.eval_every
    return total // every + (1 if total % every else 0)


def check_schedule_fixed(cfg: Config) -> None:
    """ASHA stops a trial at a report count fixed before the search samples: refuse a space that
    would change it (the trial would be cut off before its last fold is exported)."""
    sampled = [key for key in cfg.tune.space if key in SCHEDULE_KEYS]
    if cfg.tune.scheduler == "asha" and sampled:
        raise ConfigError(
            f"tune.space samples {sampled}, which change how many validations a trial reports; "
            "ASHA needs that fixed: drop them from the space or set tune.scheduler=fifo"
        )


# ---------------------------------------------------------------------------------------------


def _check_resume(cfg: Config, path: Path, resume: bool) -> bool:
    """True when Ray Tune state in ``path`` is to be restored; refuses what would mix two sweeps."""
    saved = path / SWEEP_CONFIG
    if not resume:
        if saved.is_file():
            raise ConfigError(
                f"a sweep already exists in {path}: pass --resume to continue it, or set "
                "tune.name (or tune.storage_path) for a new one"
            )
        atomic_write_text(saved, cfg.to_yaml())
        return False
    if not saved.is_file():
        log.info("--resume: no sweep in %s yet, starting one", path)
        atomic_write_text(saved, cfg.to_yaml())
        return False
    before = flatten(yaml_load(saved.read_text()))
    now = cfg.flat()
    changed = sorted(
        k
        for k in before.keys() | now.keys()
        if k.split(".", 1)[0] in SWEEP_SECTIONS and before.get(k) != now.get(k)
    )
    if changed:
        raise ConfigError(
            f"--resume: the config differs from the one {path} was started with "
            f"({saved}) at: {', '.join(changed)}"
        )
    from ray import tune

    if not tune.Tuner.can_restore(str(path)):
        # The driver died before Ray saved any state: start over in the same folder.
        log.info("--resume: %s has no Ray Tune state yet, starting the sweep", path)
        return False
    return True


def _start_parent_run(
    cfg: Config, path: Path, folds: list[Fold], env_tracking_uri: str | None
) -> SweepRun:
    """The sweep's MLflow parent run, tagged with the data manifest, with the sweep's params."""
    uri = default_tracking_uri(
        cfg.experiment.tracking_uri, cfg.experiment.output_dir, env_tracking_uri
    )
    parent = SweepRun.start(
        uri,
        cfg.experiment.name,
        path,
        path.name,
        {"data.manifest_sha256": manifest_hash(cfg.data.shard_dir)},
    )
    parent.log_params(_sweep_params(cfg, folds))
    return parent


def _tuner(
    cfg: Config,
    manifest: Manifest,
    folds: list[Fold],
    path: Path,
    parent: SweepRun | None,
    space: dict[str, Any],
    restoring: bool,
) -> Any:
    """A Tuner restored from ``path`` (unfinished and errored trials resume), or a new one."""
    from ray import tune

    trainable = _trainable(cfg, folds, path)
    if restoring:
        log.info("resuming the sweep in %s", path)
        return tune.Tuner.restore(
            str(path), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=_tune_config(cfg, manifest, folds),
        run_config=_run_config(cfg, path, parent),
    )


def _init_ray(cfg: Config, address: str | None) -> bool:
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # No dashboard (one server fewer). Ray's other servers bind to this node's address and
        # turn a requested 127.0.0.1 into it: see docs/tune.md on exposure.
        ray.init(num_cpus=cfg.tune.ray_num_cpus, include_dashboard=False)
    return True


def _trainable(cfg: Config, folds: list[Fold], path: Path) -> Any:
    from ray import tune

    from sgdm_dist.tune.trial import TrialSpec, run_trial  # torch, diffusers: only when running

    spec = TrialSpec(base=cfg.to_dict(), folds=[f.to_dict() for f in folds], sweep_dir=str(path))
    tc = cfg.tune
    if tc.workers_per_trial > 1:
        resources: dict[str, float] = {"cpu": DRIVER_CPUS}
    else:
        resources = {"cpu": tc.cpus_per_trial, "gpu": tc.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, spec=spec), resources)


def _tune_config(cfg: Config, manifest: Manifest, folds: list[Fold]) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    tc = cfg.tune
    seed = cfg.experiment.seed if tc.seed is None else tc.seed
    if tc.search == "optuna":
        searcher: Any = OptunaSearch(seed=seed)
    else:
        searcher = BasicVariantGenerator(random_state=seed)
    if tc.scheduler == "asha":
        scheduler: Any = ASHAScheduler(
            time_attr="training_iteration",
            # One past the last report: at max_t ASHA stops a trial, which would kill it before
            # its last fold is exported and recorded; ending by itself, it finishes that work.
            max_t=sum(reports_per_fold(cfg, manifest, f) for f in folds) + 1,
            grace_period=tc.grace_period,
            reduction_factor=tc.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(
        metric=tc.metric,
        mode=tc.mode,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=tc.num_samples,
        max_concurrent_trials=tc.max_concurrent,
        reuse_actors=tc.reuse_actors,
    )


def _run_config(cfg: Config, path: Path, parent: SweepRun | None) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=path.name,
        storage_path=str(path.parent),
        failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
        # A checkpoint is a few bytes of fold scores: keeping all avoids forced state snapshots.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        callbacks=[parent.child_callback()] if parent is not None else [],
    )


def _sweep_params(cfg: Config, folds: list[Fold]) -> dict[str, Any]:
    params = {f"tune.{k}": v for k, v in flatten(cfg.tune.model_dump(mode="json")).items()}
    params["folds"] = "; ".join(f"{f.index}: hold out {f.held_out}, train {f.train}" for f in folds)
    return params


def _summarise(
    cfg: Config, results: Any, folds: list[Fold], path: Path, parent: SweepRun | None
) -> SweepResult:
    tc = cfg.tune
    rows = summary.rank(summary.trial_rows(results, tc.metric, len(folds)), tc.mode)
    errors = summary.trial_errors(results)
    if errors:
        log.warning("%d trial(s) failed:\n  %s", len(errors), "\n  ".join(errors))
    scored = [r for r in rows if r.score is not None]
    if not scored:
        raise SweepError(
            f"sweep {path}: no trial reported {tc.metric} ({len(errors)} of {len(rows)} failed)"
            + "".join(f"\n  {e}" for e in errors[:5])
        )
    best = scored[0]
    best_path = path / BEST_CONFIG
    summary.write_best(cfg, best, best_path)
    csv_path = summary.write_csv(rows, tc.metric, path / SUMMARY)
    text = summary.table(rows, tc.metric, tc.top_k)
    log.info("top configurations (%s, %s):\n%s", tc.metric, tc.mode, text)
    log.info("best configuration: %s", best_path)
    if parent is not None:
        parent.log_params({f"best.{k}": v for k, v in best.params.items()})
        parent.log_metrics(
            {
                f"best_{tc.metric}": float(best.score),
                "trials_complete": sum(r.status == "complete" for r in rows),
                "trials_stopped_early": sum(r.status == "stopped early" for r in rows),
            }
        )
        for artifact in (best_path, csv_path, path / SWEEP_CONFIG):
            parent.log_artifact(artifact)
    return SweepResult(
        path=path,
        best_config=best_path,
        best=best,
        rows=rows,
        folds=folds,
        parent_run_id=parent.run_id if parent else None,
        table=text,
    )
