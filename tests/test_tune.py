"""``sgdm tune``: real Ray Tune sweeps (local Ray, 1 CPU per trial) on the tiny synthetic shards.

Ray's servers bind to this machine's address; these tests only ever talk to the Ray instance
they start on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from sgdm_dist.config import Config, ConfigError, load_config, validate
from sgdm_dist.data.manifest import read_manifest
from sgdm_dist.tune import (
    apply_params,
    make_folds,
    reports_per_fold,
    run_sweep,
    search_space,
    sweep_dir,
)

REPO = Path(__file__).resolve().parents[1]
TUNE_TINY = REPO / "configs" / "tune" / "tiny.yaml"
SGDM = Path(sys.executable).with_name("sgdm")


def tiny_tune(tiny_shards: list[str], out: Path, *extra: str) -> Config:
    return load_config(TUNE_TINY, [*tiny_shards, f"experiment.output_dir={out}", *extra])


@pytest.fixture
def ray_shutdown():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    yield
    import ray

    ray.shutdown()


# ---------------------------------------------------------------------------------------------
# folds and search spaces (no Ray cluster)


def test_leave_one_subject_out_holds_each_subject_out_once() -> None:
    cfg = load_config(TUNE_TINY)
    folds = make_folds(cfg, [3, 1, 2])
    assert [f.held_out for f in folds] == [[1], [2], [3]]
    assert [f.train for f in folds] == [[2, 3], [1, 3], [1, 2]]
    assert [f.index for f in folds] == [0, 1, 2]
    capped = make_folds(load_config(TUNE_TINY, ["tune.max_folds=2"]), [1, 2, 3])
    assert [f.held_out for f in capped] == [[1], [2]]


def test_group_kfold_groups_subjects() -> None:
    cfg = load_config(TUNE_TINY, ["tune.folds=group_kfold", "tune.n_folds=2"])
    folds = make_folds(cfg, [1, 2, 3, 4, 5])
    assert [f.held_out for f in folds] == [[1, 2, 3], [4, 5]]
    assert [f.train for f in folds] == [[4, 5], [1, 2, 3]]
    only = load_config(TUNE_TINY, ["tune.folds=group_kfold", "tune.subjects=[2, 4, 5]"])
    assert [f.held_out for f in make_folds(only, [1, 2, 3, 4, 5])] == [[2], [4], [5]]


def test_fold_errors_name_the_problem() -> None:
    cfg = load_config(TUNE_TINY)
    with pytest.raises(ConfigError, match="at least 2 subjects"):
        make_folds(cfg, [1])
    with pytest.raises(ConfigError, match=r"tune.subjects: \[7\] not in the shards"):
        make_folds(load_config(TUNE_TINY, ["tune.subjects=[1, 7]"]), [1, 2])
    with pytest.raises(ConfigError, match="tune.n_folds=4 exceeds the 3 subjects"):
        make_folds(load_config(TUNE_TINY, ["tune.folds=group_kfold", "tune.n_folds=4"]), [1, 2, 3])
    with pytest.raises(ConfigError, match="n_folds applies to folds: group_kfold only"):
        load_config(TUNE_TINY, ["tune.n_folds=2"])


def test_space_keys_and_values_are_checked_before_any_trial() -> None:
    with pytest.raises(ConfigError, match=r"'train.lrr' is not a config key \(keys in that"):
        search_space(
            load_config(TUNE_TINY, ["tune.space={train.lrr: {type: uniform, low: 0.1, high: 1}}"])
        )
    with pytest.raises(ConfigError, match=r"tune.space\['model.encoder.dropout'\] can produce 1.5"):
        search_space(
            load_config(
                TUNE_TINY,
                ["tune.space={model.encoder.dropout: {type: uniform, low: 0.1, high: 1.5}}"],
            )
        )
    with pytest.raises(ConfigError, match="'train.subjects' is set by the sweep itself"):
        load_config(TUNE_TINY, ["tune.space={train.subjects: {type: choice, values: [[1]]}}"])
    with pytest.raises(ConfigError, match="grid dimensions need search: random"):
        load_config(TUNE_TINY, ["tune.space={train.lr: {type: grid, values: [0.1, 0.2]}}"])
    with pytest.raises(ConfigError, match="loguniform needs low > 0"):
        load_config(TUNE_TINY, ["tune.space={train.lr: {type: loguniform, low: 0, high: 1}}"])
    with pytest.raises(ConfigError, match="tune.space is empty"):
        search_space(load_config(TUNE_TINY, ["tune.space={}"]))


def test_space_becomes_ray_domains_and_samples_become_configs() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    cfg = load_config(
        TUNE_TINY,
        [
            "tune.search=random",
            "tune.space={train.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}, "
            "model.encoder.depth: {type: randint, low: 1, high: 3}, "
            "train.lr_schedule: {type: choice, values: [constant, cosine]}, "
            "train.weight_decay: {type: grid, values: [0.0, 0.1]}}",
        ],
    )
    space = search_space(cfg)
    assert isinstance(space["train.lr"], Float)
    assert isinstance(space["model.encoder.depth"], Integer)
    assert isinstance(space["train.lr_schedule"], Categorical)
    assert space["train.weight_decay"] == {"grid_search": [0.0, 0.1]}
    # Searchers hand back NumPy scalars; the config gets plain, validated values.
    tuned = apply_params(cfg, {"train.lr": np.float64(3e-4), "model.encoder.depth": np.int64(2)})
    assert tuned.train.lr == 3e-4 and type(tuned.train.lr) is float
    assert tuned.model.encoder.depth == 2
    assert tuned.train.align_steps == cfg.train.align_steps
    with pytest.raises(ConfigError, match="train.lr"):
        apply_params(cfg, {"train.lr": -1.0})


def test_reports_per_fold_counts_validations() -> None:
    cfg = load_config(TUNE_TINY, ["train.align_steps=5", "train.eval_every=2"])
    assert reports_per_fold(cfg) == 3  # steps 2, 4 and the end (5)
    assert reports_per_fold(load_config(TUNE_TINY)) == 2  # 4 steps, eval every 2
    assert reports_per_fold(load_config(TUNE_TINY, ["tune.workers_per_trial=2"])) == 1


def test_reports_per_fold_resolves_epoch_schedules_for_the_folds_subjects(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    """ASHA's budget counts validations: in epochs they follow the fold's own training trials."""
    from sgdm_dist.tune.folds import Fold

    cfg = tiny_tune(tiny_shards, tmp_path, "train.align_epochs=4", "train.eval_every_epochs=1")
    manifest = read_manifest(cfg.data.shard_dir)
    per_subject = manifest.splits["train"].per_subject
    assert reports_per_fold(cfg, manifest, Fold(0, [2], [1])) == 4  # 4 epochs, 1 per validation
    steps = load_config(TUNE_TINY, [*tiny_shards, "train.align_epochs=4", "train.eval_every=1"])
    batch = steps.data.loader.batch_size
    one, both = Fold(0, [2], [1]), Fold(1, [], [1, 2])
    assert reports_per_fold(steps, manifest, one) == -(-4 * per_subject[1] // batch)
    assert reports_per_fold(steps, manifest, both) == -(-4 * sum(per_subject.values()) // batch)


def test_asha_refuses_a_space_that_changes_the_schedule() -> None:
    from sgdm_dist.tune.sweep import check_schedule_fixed

    tree = load_config(TUNE_TINY).to_dict()
    tree["tune"]["space"]["train.align_epochs"] = {"type": "uniform", "low": 5, "high": 10}
    assert tree["tune"]["scheduler"] == "asha"
    with pytest.raises(ConfigError, match=r"train.align_epochs.*tune.scheduler=fifo"):
        check_schedule_fixed(validate(tree))
    tree["tune"]["scheduler"] = "fifo"
    check_schedule_fixed(validate(tree))


def test_held_out_score_uses_the_unseen_subject_path(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    from sgdm_dist.data.loader import make_loader
    from sgdm_dist.data.splits import split_image_embeddings
    from sgdm_dist.models import build_model
    from sgdm_dist.tune.score import score_held_out

    cfg = tiny_tune(tiny_shards, tmp_path)
    m = read_manifest(cfg.data.shard_dir)
    torch.manual_seed(0)
    model = build_model(cfg.model, n_channels=m.n_channels, n_times=m.n_times, n_subjects=2)
    with torch.no_grad():  # make subject embeddings matter, so passing id 0 is observable
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    scores = score_held_out(cfg, model, [2])
    assert scores["n_trials"] == m.splits["val"].per_subject[2]
    assert 0.0 <= scores["top1"] <= scores["top5"] <= 1.0

    loader = make_loader(cfg, "val", shuffle=False, subjects=[2], batch_size=64, drop_last=False)
    batch = next(iter(loader))
    assert set(batch["subject"].tolist()) == {2}
    index, targets = split_image_embeddings(cfg.data.shard_dir, "val")
    true = targets[[index.tolist().index(i) for i in batch["image_index"].tolist()]]

    def cosine(subject_ids: torch.Tensor) -> float:
        pred = model.predict_clip(batch["eeg"], subject_ids)
        centred = model.semantic.center(true)  # the head's own space
        return float((F.normalize(pred, dim=1) * centred).sum(1).mean())

    n = batch["eeg"].shape[0]
    assert n == scores["n_trials"]  # the whole held-out val split in one batch
    assert scores["cosine"] == pytest.approx(cosine(torch.zeros(n, dtype=torch.long)), abs=1e-5)
    assert scores["cosine"] != pytest.approx(cosine(batch["subject"]), abs=1e-5)


def test_objective_puts_a_constant_predictor_at_chance(
    tiny_shards: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#13.4: heldout_cosine ranked a model that ignores the EEG first; retrieval scores cannot."""
    from sgdm_dist.data.splits import split_image_embeddings
    from sgdm_dist.models import build_model
    from sgdm_dist.tune.score import score_held_out

    cfg = tiny_tune(tiny_shards, tmp_path)
    m = read_manifest(cfg.data.shard_dir)
    model = build_model(cfg.model, n_channels=m.n_channels, n_times=m.n_times, n_subjects=2)
    _, targets = split_image_embeddings(cfg.data.shard_dir, "val")
    model.semantic.observe(targets)
    constant = model.semantic.center(targets[:1])  # always "the first validation image"

    def predict(eeg: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        return constant.expand(eeg.shape[0], -1)

    monkeypatch.setattr(model, "predict_clip", predict)
    scores = score_held_out(cfg, model, [2])
    # Every image has the same number of trials, so a constant ranking averages to chance exactly.
    assert scores["mrr"] == pytest.approx(scores["chance_mrr"])
    assert scores["top1"] == pytest.approx(1 / m.splits["val"].n_images)


def test_leave_subject_out_refuses_an_untrained_fallback(tmp_path: Path) -> None:
    cfg = load_config(TUNE_TINY, ["model.encoder.subject_dropout=0"])
    with pytest.raises(ConfigError, match="subject_dropout"):
        make_folds(cfg, [1, 2])
    ok = load_config(TUNE_TINY, ["model.encoder.subject_dropout=0", "model.encoder.kind=nice"])
    assert len(make_folds(ok, [1, 2])) == 2  # NICE ignores subject ids: nothing untrained
    atms = ["model.encoder.subject_dropout=0", "model.encoder.kind=atms"]
    with pytest.raises(ConfigError, match="subject_dropout"):  # its subject token's entry 0
        make_folds(load_config(TUNE_TINY, atms), [1, 2])
    # The error's advice works for every kind: without the token there is no fallback to train.
    no_token = load_config(TUNE_TINY, [*atms, "model.encoder.subject_conditioning=none"])
    assert len(make_folds(no_token, [1, 2])) == 2


# ---------------------------------------------------------------------------------------------
# real sweeps


def _shard_subjects(shard: Path) -> set[int]:
    with tarfile.open(shard) as tar:
        return {
            json.load(tar.extractfile(member))["subject"]
            for member in tar.getmembers()
            if member.name.endswith(".json")
        }


def test_sweep_folds_asha_mlflow_and_best_yaml(
    tiny_shards: list[str], tmp_path: Path, ray_shutdown: None
) -> None:
    from mlflow.tracking import MlflowClient

    cfg = tiny_tune(tiny_shards, tmp_path, "experiment.tracking=true")
    result = run_sweep(cfg)

    # Fold structure: 2 subjects, each held out in turn; never in its fold's training data.
    assert [(f.held_out, f.train) for f in result.folds] == [([1], [2]), ([2], [1])]
    manifest = read_manifest(cfg.data.shard_dir)
    trial_dirs = sorted((result.path / "trials").iterdir())
    assert len(trial_dirs) == 4 == len(result.rows)
    checked_models = 0
    for trial in trial_dirs:
        for fold_dir in sorted(trial.glob("fold-*")):
            record = json.loads((fold_dir / "fold.json").read_text())
            assert not set(record["held_out"]) & set(record["train"])
            expected = {
                s.name for s in manifest.splits["train"].shards if s.subject in record["train"]
            }
            assert set(record["train_shards"]) == expected
            for name in record["train_shards"]:
                assert _shard_subjects(Path(cfg.data.shard_dir) / name) == set(record["train"])
            exported = fold_dir / "model" / "experiment.yaml"
            if exported.is_file():
                assert load_config(exported).train.subjects == record["train"]
                checked_models += 1
    assert checked_models >= 2  # at least the complete trial's two folds

    # ASHA: every report is one validation of one fold; some trial stopped before the last.
    manifest = read_manifest(cfg.data.shard_dir)
    max_reports = sum(reports_per_fold(cfg, manifest, f) for f in result.folds)
    complete = [r for r in result.rows if r.status == "complete"]
    stopped = [r for r in result.rows if r.status == "stopped early"]
    assert complete and stopped, [(r.status, r.iterations) for r in result.rows]
    assert all(r.iterations == max_reports and r.folds_done == 2 for r in complete)
    assert all(r.iterations < max_reports for r in stopped)

    # The score of a complete trial is the mean over folds of its held-out final scores.
    best = result.best
    assert best.status == "complete"
    record = json.loads((result.path / "trials" / best.trial_id / "trial.json").read_text())
    fold_scores = [record["folds"][str(i)]["mrr"] for i in range(2)]
    assert best.score == pytest.approx(sum(fold_scores) / 2)

    # best.yaml: a full config load_config accepts, with the best parameters, on all subjects.
    best_cfg = load_config(result.best_config)
    assert best_cfg.train.lr == pytest.approx(best.params["train.lr"])
    assert best_cfg.model.encoder.dropout == pytest.approx(best.params["model.encoder.dropout"])
    assert best_cfg.train.subjects is None
    assert best_cfg.data.shard_dir == cfg.data.shard_dir

    # MLflow: one parent run for the sweep, one child run per trial, best.yaml logged.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics[f"best_{cfg.tune.metric}"] == pytest.approx(best.score)
    assert "best.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    assert all("train.lr" in c.data.params and "heldout_cosine" in c.data.metrics for c in children)


def _trial_states(path: Path) -> dict[str, str]:
    """trial id → status in Ray Tune's newest saved experiment state (what a restore reads).

    Each driver session writes its own ``experiment_state-<start time>.json``.
    """
    files = sorted(path.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text())
    except (json.JSONDecodeError, OSError):  # being rewritten right now
        return {}
    return {
        trial["trial_id"]: trial["status"]
        for trial in (json.loads(trial_json) for trial_json, _ in data["trial_data"])
    }


def test_resume_after_the_driver_is_killed(tiny_shards: list[str], tmp_path: Path) -> None:
    overrides = [
        *tiny_shards,
        f"experiment.output_dir={tmp_path}",
        "tune.scheduler=fifo",
        "tune.max_folds=1",
        "tune.num_samples=3",  # run one at a time: some are still to run when the driver dies
        # A fresh process per trial (slower trials) and Ray's state saved at every step: the
        # driver is killed after a trial is recorded finished and well before the last one is.
        "tune.reuse_actors=false",
    ]
    cfg = load_config(TUNE_TINY, overrides)
    path = sweep_dir(cfg)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    with open(tmp_path / "first.log", "w") as log:
        # Own session: SIGKILL takes the driver and the local Ray it started, like a lost node.
        first = subprocess.Popen(
            [str(SGDM), "tune", str(TUNE_TINY), *overrides],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, "TUNE_GLOBAL_CHECKPOINT_S": "0"},
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 400
            while "TERMINATED" not in _trial_states(path).values():
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no trial finished in time"
                time.sleep(0.5)  # polling Ray's state file, which it rewrites every few seconds
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=60)
    at_kill = _trial_states(path)
    finished = {t for t, s in at_kill.items() if s == "TERMINATED"}
    assert len(finished) < 3, "the sweep ended before the driver was killed"
    assert not (path / "best.yaml").exists()

    resumed = subprocess.run(
        [str(SGDM), "tune", str(TUNE_TINY), *overrides, "--resume"],
        capture_output=True,
        text=True,
        env=env,
        timeout=500,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = _trial_states(path)
    assert len(final) == 3 and set(final.values()) == {"TERMINATED"}
    assert finished <= set(final)
    for trial_id in final:
        starts = (path / "trials" / trial_id / "starts.log").read_text().splitlines()
        assert (path / "trials" / trial_id / "trial.json").is_file()
        if trial_id in finished:
            assert len(starts) == 1, f"finished trial {trial_id} ran again"
    assert load_config(path / "best.yaml").train.lr > 0
    assert "best configuration:" in resumed.stdout

    # The same folder again without --resume (the real CLI: exit 2, one line), or with a changed
    # config (the ConfigError run_sweep raises, which the CLI prints the same way): refused before
    # Ray starts, nothing run.
    again = subprocess.run(
        [str(SGDM), "tune", str(TUNE_TINY), *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert again.returncode == 2
    assert "pass --resume to continue it" in again.stderr
    with pytest.raises(ConfigError, match=r"differs from the one .* at: .*train\.align_steps"):
        run_sweep(load_config(TUNE_TINY, [*overrides, "train.align_steps=6"]), resume=True)
    assert yaml.safe_load((path / "sweep.yaml").read_text())["train"]["align_steps"] == 4


def test_a_sweep_whose_every_trial_failed_names_each_error(tmp_path: Path) -> None:
    """No score at all: a SweepError listing each trial's exception and traceback file, which
    `sgdm tune` prints as one red error (exit 1) instead of a driver traceback."""
    from types import SimpleNamespace

    from sgdm_dist.tune import SweepError
    from sgdm_dist.tune.sweep import _summarise

    failed = []
    for n, text in enumerate(
        ["Traceback (most recent call last):\n  ...\nValueError: bad lr", "RayTaskError\n\nOOM: x"]
    ):
        trial = tmp_path / f"trial_{n}"
        trial.mkdir()
        if n == 0:
            (trial / "error.txt").write_text(text)
        failed.append(
            SimpleNamespace(error=RuntimeError(text), path=str(trial), metrics={}, config={})
        )
    cfg = load_config(REPO / "configs" / "tune" / "tiny.yaml")
    with pytest.raises(SweepError) as err:
        _summarise(cfg, failed, [], tmp_path, None)
    message = str(err.value)
    assert "no trial reported heldout_mrr (2 of 2 failed)" in message
    assert (
        f"trial_0: ValueError: bad lr (traceback: {tmp_path / 'trial_0' / 'error.txt'})" in message
    )
    assert "trial_1: OOM: x" in message and "trial_1: OOM: x (traceback" not in message
