"""``sgdm evaluate``: the THINGS-EEG2 test protocol for one trained model, end to end.

Reads the TEST split once (never val: choosing anything by these numbers would leak), then:

1. retrieval per subject, from repetition-averaged EEG and from single trials (both are written;
   ``evaluate.average_reps`` picks the headline), k-way top-k with chance levels;
2. reconstruction per subject: one image per test stimulus, sampled from that subject's
   repetition-averaged EEG, scored against the stimulus stored in the shards;
3. ``metrics.json``, the HTML report and, when tracking is on or a run is active, MLflow.

Definitions of every number: docs/metrics.md; the pipeline and file layout: docs/evaluate.md.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import sgdm_dist
from sgdm_dist.baselines.checks import decoding_checks
from sgdm_dist.config import Config, flatten
from sgdm_dist.config.evaluate import EvaluateConfig
from sgdm_dist.data.io import atomic_write_text
from sgdm_dist.data.loader import split_image_embeddings
from sgdm_dist.data.manifest import manifest_hash
from sgdm_dist.evaluate_recon import ReconScores, baseline_rows, score_subject
from sgdm_dist.metrics import (
    HIGHER_IS_BETTER,
    METRIC_ORDER,
    average_by_index,
    mean_over_groups,
    retrieval_accuracy,
    to_mlflow_metrics,
)
from sgdm_dist.models import SGDM
from sgdm_dist.reconstruct import (
    ReconstructError,
    SamplingOptions,
    SplitEEG,
    find_vae,
    load_model,
    model_folder,
    model_subjects,
    read_split,
    save_comparison_grid,
    save_png,
    training_data,
)
from sgdm_dist.report import write_report
from sgdm_dist.tracking import default_tracking_uri, experiment_id

log = logging.getLogger(__name__)

TEST_SPLIT = "test"
AVERAGED = "repetitions_averaged"
SINGLE = "single_trial"
MEAN_ROW = "mean"
CHANCE_ROW = "chance"
METRICS_FILE = "metrics.json"
RECON_DIR = "reconstructions"

# Published THINGS-EEG2 numbers (200-way, test repetitions averaged; docs/metrics.md), shown beside
# ours only when the test set has the 200 images they were measured on.
PUBLISHED_RETRIEVAL = {
    "NICE-GA (intra-subject)": {"top1_200way": 0.156, "top5_200way": 0.428},
    "ATM-S (intra-subject)": {"top1_200way": 0.285, "top5_200way": 0.604},
    "UBP (intra-subject)": {"top1_200way": 0.509, "top5_200way": 0.797},
}
PUBLISHED_RECONSTRUCTION = {
    "ATM (subject 8)": {
        "PixCorr": 0.160,
        "SSIM": 0.345,
        "AlexNet(2)": 0.776,
        "AlexNet(5)": 0.866,
        "Inception": 0.734,
        "CLIP": 0.786,
        "SwAV": 0.582,
    }
}
PUBLISHED_N_IMAGES = 200
BASELINE_TITLE = (
    "Reconstruction: model vs floor (shuffled EEG) and ceiling (autoencoder round trip); "
    "all images, mean [95% bootstrap CI]"
)


class EvaluationError(ValueError):
    """The evaluation cannot run on this input; the message names the model, shards or setting."""


@dataclass
class EvaluationResult:
    """``metrics`` is what ``metrics.json`` holds; files are under ``out_dir``."""

    metrics: dict[str, Any]
    out_dir: Path
    metrics_path: Path
    report_path: Path
    grid_path: Path | None
    run_id: str | None


def evaluate(
    cfg: Config,
    model: str | Path,
    *,
    out_dir: Path | None = None,
    env_tracking_uri: str | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate the model at ``model`` (folder or ``models:/NAME@ALIAS``) on ``cfg``'s test shards.

    Writes ``out_dir`` (default ``{experiment.output_dir}/evaluation``): ``metrics.json``,
    ``report.html``, ``reconstructions.png`` and ``reconstructions/sub-XX/NNNNN.png``.
    ``env_tracking_uri`` is $MLFLOW_TRACKING_URI as read by the caller.
    """
    ecfg = cfg.evaluate
    out_dir = Path(out_dir or cfg.experiment.output_dir / "evaluation")
    device = torch.device(ecfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tracking_uri = default_tracking_uri(
        cfg.experiment.tracking_uri, cfg.experiment.output_dir, env_tracking_uri
    )
    try:
        model_dir = model_folder(model, tracking_uri=tracking_uri)
        net = load_model(model_dir, device)
        trained = training_data(model_dir)
        test = read_split(
            cfg.data.shard_dir,
            TEST_SPLIT,
            model=net,
            trained=trained,
            subjects=ecfg.subjects,
            predict=True,
            agnostic=ecfg.subject_agnostic,
            batch_size=cfg.data.loader.batch_size,
            num_workers=cfg.data.loader.num_workers,
            progress=progress,
        )
    except ReconstructError as exc:
        raise EvaluationError(str(exc)) from None
    _warn_unknown_subjects(test.subjects, net, ecfg.subject_agnostic)

    retrieval, similarity, target_index = score_retrieval(cfg, net, test)
    # Model vs ridge on the same shards, in centred CLIP, with the collapse guard (#13).
    decoding = decoding_checks(cfg, net, agnostic=ecfg.subject_agnostic)
    reconstruction: dict[str, dict[str, float]] = {}
    baselines: dict[str, Any] = {}
    grid_images = grid_recons = None
    grid_path = None
    sampling = SamplingOptions(
        steps=ecfg.steps,
        guidance_scale=ecfg.guidance_scale,
        scheduler=ecfg.scheduler,
        seed=cfg.experiment.seed,
        batch_size=ecfg.recon_batch_size,
        strength=ecfg.structure_strength,
    )
    vae_source = None
    if ecfg.reconstruct:
        baselines, grid_images, grid_recons, vae_source = score_reconstruction(
            cfg, net, model_dir, test, sampling, out_dir, device, progress
        )
        reconstruction = baselines.pop("model")
        grid_path = save_comparison_grid(
            out_dir / "reconstructions.png",
            [("stimulus", grid_images)]
            + [(f"sub-{s:02d}", grid_recons[:, n]) for n, s in enumerate(test.subjects)],
            [f"{i:05d}" for i in _grid_index(test, ecfg).tolist()],
            max_rows=ecfg.report_max_images,
        )

    metrics = {
        "summary": _summary(cfg, retrieval, reconstruction, test, baselines),
        "retrieval": retrieval,
        "reconstruction": reconstruction,
        "reconstruction_baselines": baselines,
        "decoding": decoding,
        "protocol": _protocol(cfg, model, model_dir, test, sampling, vae_source),
    }
    metrics_path = atomic_write_text(out_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    report_path = write_report(
        out_dir,
        report_view(metrics),
        images=grid_images,
        recons=grid_recons,
        recon_labels=[f"sub-{s:02d}" for s in test.subjects],
        retrieval_images=_retrieval_candidates(cfg, test),
        similarity=similarity,
        title=f"sgdm-dist evaluation: {model}",
        max_images=ecfg.report_max_images,
        target_index=target_index,
    )
    run_id = log_to_mlflow(
        cfg, metrics, [metrics_path, report_path, grid_path], tracking_uri, str(model)
    )
    return EvaluationResult(metrics, out_dir, metrics_path, report_path, grid_path, run_id)


# ------------------------------------------------------------------------------------ retrieval


def score_retrieval(
    cfg: Config, model: SGDM, test: SplitEEG
) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Per-subject k-way retrieval against every test image's CLIP embedding.

    Returns ({"repetitions_averaged": table, "single_trial": table}, similarity [R, M] of the
    headline predictions of all subjects stacked, true candidate of each row [R]); a table is
    {"sub-XX": scores, "mean": scores, "chance": chance levels}.
    """
    ecfg = cfg.evaluate
    image_index, targets = split_image_embeddings(cfg.data.shard_dir, TEST_SPLIT)
    if targets.shape[1] != model.cfg.clip_dim:
        raise EvaluationError(
            f"shards {cfg.data.shard_dir}: test CLIP embeddings have {targets.shape[1]} dims, "
            f"the model predicts {model.cfg.clip_dim} (model.clip_dim)"
        )
    position = {int(i): n for n, i in enumerate(image_index.tolist())}

    def positions(index: Tensor) -> Tensor:
        return torch.tensor([position[int(i)] for i in index], dtype=torch.long)

    def score(pred: Tensor, index: Tensor) -> dict[str, float]:
        return retrieval_accuracy(
            pred,
            targets,
            positions(index),
            n_way=ecfg.n_way,
            top_k=ecfg.top_k,
            seed=cfg.experiment.seed,
            n_trials=ecfg.retrieval_trials,
        )

    averaged, single = {}, {}
    rows, truth = [], []
    for s in test.subjects:
        pred, index = _averaged_predictions(cfg, model, test, s)
        averaged[f"sub-{s:02d}"] = score(pred, index)
        single[f"sub-{s:02d}"] = score(test.trial_pred[s], test.trial_index[s])
        headline = (pred, index) if ecfg.average_reps else (test.trial_pred[s], test.trial_index[s])
        rows.append(headline[0])
        truth.append(positions(headline[1]))
    pred_all = torch.cat(rows)
    similarity = torch.nn.functional.normalize(pred_all.double(), dim=1) @ (
        torch.nn.functional.normalize(targets.double(), dim=1).T
    )
    tables = {AVERAGED: _with_mean_and_chance(averaged), SINGLE: _with_mean_and_chance(single)}
    return tables, similarity, torch.cat(truth)


def _averaged_predictions(
    cfg: Config, model: SGDM, test: SplitEEG, subject: int
) -> tuple[Tensor, Tensor]:
    """One prediction per test image of ``subject`` [M, D] and its image index [M]."""
    if cfg.evaluate.average_space == "prediction":
        return average_by_index(test.trial_pred[subject], test.trial_index[subject])
    eeg = test.mean_eeg[subject]
    ids = model_subjects(
        torch.full((eeg.shape[0],), subject), model.n_subjects, cfg.evaluate.subject_agnostic
    )
    step = cfg.data.loader.batch_size
    pred = torch.cat(
        [
            model.predict_clip(eeg[i : i + step], ids[i : i + step]).float().cpu()
            for i in range(0, eeg.shape[0], step)
        ]
    )
    return pred, test.image_index[subject]


def _with_mean_and_chance(per_subject: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Subject rows without chance keys, their mean, and one "chance" row (k / n per accuracy)."""
    rows = {
        name: {k: v for k, v in scores.items() if not k.startswith("chance_")}
        for name, scores in per_subject.items()
    }
    first = next(iter(per_subject.values()))
    chance = {k.removeprefix("chance_"): v for k, v in first.items() if k.startswith("chance_")}
    return {**rows, MEAN_ROW: mean_over_groups(rows), CHANCE_ROW: chance}


# ------------------------------------------------------------------------------- reconstruction


def score_reconstruction(
    cfg: Config,
    model: SGDM,
    model_dir: Path,
    test: SplitEEG,
    sampling: SamplingOptions,
    out_dir: Path,
    device: torch.device,
    progress: bool,
) -> tuple[dict[str, Any], Tensor, Tensor, str]:
    """Reconstruct each subject's test images from its repetition-averaged EEG and score them,
    with the floor, ceiling and condition sensitivity unless ``evaluate.baselines`` is off.

    Returns ({"model" | "floor" | "ceiling": {"sub-XX": metrics, "mean": metrics},
    "condition_sensitivity": {"sub-XX": …, "mean": …}}, stimuli [K, 3, H, W] and reconstructions
    [K, S, 3, H', W'] of the first ``report_max_images`` images for the report, the VAE's source).
    """
    ecfg = cfg.evaluate
    try:
        vae, vae_source = find_vae(
            model_dir,
            model.latent_shape[0],
            shard_dir=cfg.data.shard_dir,
            trained=training_data(model_dir),
        )
    except ReconstructError as exc:
        raise EvaluationError(str(exc)) from None
    vae = vae.to(device)
    backbones = _load_backbones(cfg, device)
    shown = _grid_index(test, ecfg).tolist()
    scores = ReconScores()
    grid_recons = []
    for s in test.subjects:
        index = test.image_index[s][: ecfg.recon_max_images]
        if len(index) < 2:
            raise EvaluationError(
                f"subject {s}: {len(index)} test image(s); reconstruction metrics need at least 2"
            )
        try:
            stimuli = test.stimuli(index)
        except ReconstructError as exc:
            raise EvaluationError(f"{exc}; or set evaluate.reconstruct=false") from None
        ids = model_subjects(torch.full((len(index),), s), model.n_subjects, ecfg.subject_agnostic)
        recon = score_subject(
            scores,
            f"sub-{s:02d}",
            model,
            test.mean_eeg[s][: len(index)],
            ids,
            stimuli,
            vae,
            sampling,
            backbones,
            baselines=ecfg.baselines,
            progress=progress,
            metric_kw={"device": device, "batch_size": ecfg.metric_batch_size},
        )
        if ecfg.save_images:
            for image, i in zip(recon, index.tolist(), strict=True):
                save_png(image, out_dir / RECON_DIR / f"sub-{s:02d}" / f"{i:05d}.png")
        rows = {int(i): n for n, i in enumerate(index.tolist())}
        grid_recons.append(recon[[rows[i] for i in shown]])
    grid_images = test.stimuli(torch.tensor(shown))
    tables = scores.tables(cfg.experiment.seed)
    sensitivity = scores.sensitivity_table()
    if sensitivity:
        tables["condition_sensitivity"] = sensitivity
    return tables, grid_images, torch.stack(grid_recons, dim=1), vae_source


def _grid_index(test: SplitEEG, ecfg: EvaluateConfig) -> Tensor:
    """The images shown in the grids: the first ``report_max_images`` that every subject
    reconstructs (all test images in THINGS-EEG2), sorted."""
    limit = ecfg.recon_max_images
    common = set.intersection(*(set(test.image_index[s][:limit].tolist()) for s in test.subjects))
    return torch.tensor(sorted(common)[: ecfg.report_max_images], dtype=torch.long)


def _load_backbones(cfg: Config, device: torch.device) -> dict[str, Any]:
    """The metric backbones, built once for every subject."""
    from sgdm_dist.data.features import TINY_CLIP, register_tiny_clip
    from sgdm_dist.metrics import load_backbones

    if "clip" in cfg.evaluate.backbones and cfg.evaluate.clip_model == TINY_CLIP:
        # open_clip reads the config file at registration; the folder need not outlive it.
        with tempfile.TemporaryDirectory() as config_dir:
            register_tiny_clip(Path(config_dir))
    try:
        return load_backbones(cfg.evaluate, device)
    except (FileNotFoundError, ValueError) as exc:
        raise EvaluationError(f"evaluate backbones: {exc}") from None


# -------------------------------------------------------------------------------------- results


def _summary(
    cfg: Config,
    retrieval: dict[str, Any],
    reconstruction: dict[str, dict[str, float]],
    test: SplitEEG,
    baselines: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Headline numbers: mean over subjects of the headline retrieval mode (with chance levels)
    and of the reconstruction metrics, their floors and ceilings and the condition sensitivity."""
    mode = AVERAGED if cfg.evaluate.average_reps else SINGLE
    table = retrieval[mode]
    out: dict[str, Any] = {
        "retrieval_mode": _mode_text(cfg, mode),
        "n_subjects": len(test.subjects),
        "n_test_images": int(table[MEAN_ROW]["n_candidates"]),
    }
    for key, value in table[MEAN_ROW].items():
        if key.startswith("top"):
            out[key] = value
            out[f"chance_{key}"] = table[CHANCE_ROW][key]
    for key, value in reconstruction.get(MEAN_ROW, {}).items():
        if key != "n_images":
            out[key] = value
    for kind in ("floor", "ceiling"):
        for key, value in (baselines or {}).get(kind, {}).get(MEAN_ROW, {}).items():
            if key in METRIC_ORDER:
                out[f"{key}.{kind}"] = value
    sensitivity = (baselines or {}).get("condition_sensitivity", {}).get(MEAN_ROW)
    if sensitivity:
        out["condition_sensitivity"] = sensitivity["condition_sensitivity"]
    return out


def _retrieval_candidates(cfg: Config, test: SplitEEG) -> Tensor | None:
    """Every test stimulus in candidate order (the similarity matrix's columns), or None when the
    shards store no images."""
    image_index, _ = split_image_embeddings(cfg.data.shard_dir, TEST_SPLIT)
    if not all(int(i) in test.images for i in image_index):
        return None
    return test.stimuli(image_index)


def _mode_text(cfg: Config, mode: str) -> str:
    if mode == SINGLE:
        return "single trials"
    if cfg.evaluate.average_space == "eeg":
        return "repetitions averaged (EEG averaged per image, then encoded)"
    return "repetitions averaged (single-trial predictions averaged per image)"


def _protocol(
    cfg: Config,
    model: str | Path,
    model_dir: Path,
    test: SplitEEG,
    sampling: SamplingOptions,
    vae_source: str | None,
) -> dict[str, Any]:
    """How the numbers were made: enough to reproduce them and to tell comparable runs apart."""
    ecfg = cfg.evaluate
    n_images = max(len(test.image_index[s]) for s in test.subjects)
    n_recon = min(n_images, ecfg.recon_max_images or n_images)
    return {
        "split": TEST_SPLIT,
        "model": str(model),
        "model_dir": str(model_dir),
        "shard_dir": str(cfg.data.shard_dir),
        "data.manifest_sha256": manifest_hash(cfg.data.shard_dir),
        "subjects": test.subjects,
        "subject_agnostic": ecfg.subject_agnostic,
        "retrieval_headline": _mode_text(cfg, AVERAGED if ecfg.average_reps else SINGLE),
        "retrieval_average_space": ecfg.average_space,
        "retrieval_trials": ecfg.retrieval_trials,
        "similarity": "cosine of L2-normalised CLIP embeddings",
        "reconstruction": (
            "one image per test image and subject, from the subject's repetition-averaged EEG"
            if ecfg.reconstruct
            else "skipped (evaluate.reconstruct=false)"
        ),
        "reconstruction_images": n_recon if ecfg.reconstruct else 0,
        "reconstruction_all_test_images": n_recon == n_images,
        "ground_truth": "stimulus images stored in the shards",
        "steps": sampling.steps,
        "guidance_scale": sampling.guidance_scale,
        "scheduler": sampling.scheduler,
        "seed": sampling.seed,
        "vae": vae_source,
        # A random VAE cannot draw anything: reconstructions then test the pipeline only.
        "vae_random_init": (test.manifest.features.get("random_init") or {}).get("vae"),
        "vae_held_out_round_trip": (test.manifest.features.get("vae_training") or {}).get(
            "held_out_round_trip"
        ),
        "sgdm_dist_version": sgdm_dist.__version__,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def report_view(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics.json`` arranged for ``write_report``: a summary, one table per result group."""
    retrieval = metrics["retrieval"]
    view: dict[str, Any] = dict(metrics["summary"])
    view["Retrieval, repetitions averaged, per subject"] = retrieval[AVERAGED]
    view["Retrieval, single trials, per subject"] = retrieval[SINGLE]
    if metrics["reconstruction"]:
        baselines = metrics.get("reconstruction_baselines", {})
        if baselines:
            view[BASELINE_TITLE] = baseline_rows(metrics["reconstruction"], baselines, METRIC_ORDER)
        view["Reconstruction, per subject"] = _without_ci(metrics["reconstruction"])
        for kind, title in (
            ("floor", "Floor: reconstructions from shuffled EEG, per subject"),
            ("ceiling", "Ceiling: autoencoder round trip of the stimuli, per subject"),
        ):
            if kind in baselines:
                view[title] = _without_ci(baselines[kind])
        if "condition_sensitivity" in baselines:
            view["Condition sensitivity (pixel change: EEG swapped / seed changed)"] = baselines[
                "condition_sensitivity"
            ]
    view["Protocol"] = metrics["protocol"]
    return view


def _without_ci(table: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        row: {k: v for k, v in vals.items() if not k.endswith((".ci_low", ".ci_high"))}
        for row, vals in table.items()
    }


def comparison_tables(metrics: Mapping[str, Any]) -> list[Any]:
    """rich Tables for the terminal: retrieval per subject and mode, reconstruction per subject,
    with chance levels and (on the 200 THINGS-EEG2 test images) published numbers beside them."""
    from rich.table import Table

    retrieval = metrics["retrieval"]
    keys = [k for k in retrieval[AVERAGED][MEAN_ROW] if k.startswith("top")]
    n_images = metrics["summary"]["n_test_images"]
    table = Table(title=f"Retrieval on the test split ({n_images} images, k-way top-k)")
    table.add_column("subject")
    table.add_column("EEG")
    for key in keys:
        table.add_column(key, justify="right")
    for mode, label in ((AVERAGED, "averaged"), (SINGLE, "single trial")):
        for row, scores in retrieval[mode].items():
            if row == CHANCE_ROW:
                continue
            style = "bold" if row == MEAN_ROW else None
            table.add_row(row, label, *(_pct(scores.get(k)) for k in keys), style=style)
    table.add_row(CHANCE_ROW, "", *(_pct(retrieval[AVERAGED][CHANCE_ROW].get(k)) for k in keys))
    if n_images == PUBLISHED_N_IMAGES:
        for name, scores in PUBLISHED_RETRIEVAL.items():
            table.add_row(name, "averaged", *(_pct(scores.get(k)) for k in keys), style="dim")
    tables = [table]
    recon = metrics["reconstruction"]
    if recon:
        random_init = {
            k.removesuffix(".random_init")
            for k, v in recon[MEAN_ROW].items()
            if k.endswith(".random_init") and v
        }
        columns = [m for m in METRIC_ORDER if m in recon[MEAN_ROW]]
        rtable = Table(
            title="Reconstruction per subject (↑ higher is better, ↓ lower)",
            caption="* random-init backbone: tests the pipeline, NOT comparable with papers"
            if random_init
            else None,
        )
        rtable.add_column("subject")
        for m in columns:
            arrow = "↑" if HIGHER_IS_BETTER[m] else "↓"
            rtable.add_column(f"{m} {arrow}" + ("*" if m in random_init else ""), justify="right")
        for row, scores in recon.items():
            style = "bold" if row == MEAN_ROW else None
            rtable.add_row(row, *(f"{scores[m]:.3f}" for m in columns), style=style)
        if n_images == PUBLISHED_N_IMAGES:
            for name, scores in PUBLISHED_RECONSTRUCTION.items():
                rtable.add_row(name, *(_num(scores.get(m)) for m in columns), style="dim")
        tables.append(rtable)
        baselines = metrics.get("reconstruction_baselines", {})
        if baselines:
            tables.append(_baseline_table(recon, baselines, columns, random_init))
    return tables


def _baseline_table(
    recon: Mapping[str, Any],
    baselines: Mapping[str, Any],
    columns: list[str],
    random_init: set[str],
) -> Any:
    """Model vs floor vs ceiling per metric, with the condition sensitivity in the caption."""
    from rich.table import Table

    rows = baseline_rows(dict(recon), dict(baselines), columns)
    sens = baselines.get("condition_sensitivity", {}).get(MEAN_ROW)
    caption = (
        f"condition sensitivity {sens['condition_sensitivity']:.2f} (pixel change when the EEG is "
        f"swapped {sens['pixel_change_eeg_swapped']:.3f} / when only the seed changes "
        f"{sens['pixel_change_seed_changed']:.3f}; >= 1: the EEG decides the image)"
        if sens
        else None
    )
    table = Table(
        title=BASELINE_TITLE,
        caption=caption,
    )
    table.add_column("metric")
    for name in next(iter(rows.values()), {}):
        table.add_column(name, justify="right")
    for metric, cells in rows.items():
        arrow = "↑" if HIGHER_IS_BETTER[metric] else "↓"
        table.add_row(f"{metric} {arrow}" + ("*" if metric in random_init else ""), *cells.values())
    return table


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _warn_unknown_subjects(subjects: list[int], model: SGDM, agnostic: bool) -> None:
    unknown = [s for s in subjects if s > model.n_subjects]
    if unknown and not agnostic:
        log.warning(
            "test subjects %s were never trained (the model knows 1..%d): they are encoded as the "
            "subject-agnostic 0",
            unknown,
            model.n_subjects,
        )


# -------------------------------------------------------------------------------------- MLflow


def log_to_mlflow(
    cfg: Config,
    metrics: Mapping[str, Any],
    files: list[Path | None],
    tracking_uri: str,
    model: str,
) -> str | None:
    """Log metrics (MLflow-safe names under ``test/``), the protocol (tags ``evaluation.*``) and the
    files (artifact folder ``evaluation``) to the active run, else to a new run in the configured store
    when ``experiment.tracking`` is on. Returns the run id; a tracking failure is a warning only,
    since every result is already on disk."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    active = mlflow.active_run()
    if active is None and not cfg.experiment.tracking:
        return None
    keys = ("summary", "retrieval", "reconstruction", "reconstruction_baselines")
    flat = flatten({k: metrics[k] for k in keys if k in metrics}, sep="/")
    numbers = to_mlflow_metrics(
        {k: v for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)},
        prefix="test/",
    )
    stamp = int(time.time() * 1000)
    tags = {f"evaluation.{k}": str(v)[:5000] for k, v in metrics["protocol"].items()}
    try:
        if active is not None:
            client, run_id = MlflowClient(), active.info.run_id
        else:
            client = MlflowClient(tracking_uri)
            run_id = client.create_run(
                experiment_id(client, cfg.experiment.name, tracking_uri),
                run_name=f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}",
            ).info.run_id
            tags.update(
                {
                    "data.manifest_sha256": str(metrics["protocol"]["data.manifest_sha256"]),
                    "sgdm_dist.version": sgdm_dist.__version__,
                    "sgdm.stage": "evaluate",
                }
            )
            params = [Param(k, str(v)[:6000]) for k, v in cfg.flat().items()]
            for i in range(0, len(params), 100):  # MLflow caps a batch at 100 params
                client.log_batch(run_id, params=params[i : i + 100])
        items = [Metric(k, v, stamp, 0) for k, v in numbers.items()]
        for i in range(0, len(items), 1000):  # and at 1000 metrics
            client.log_batch(run_id, metrics=items[i : i + 1000])
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for path in files:
            if path is not None:
                client.log_artifact(run_id, str(path), "evaluation")
        if active is None:
            client.set_terminated(run_id)
    except Exception as exc:  # a tracking outage must not lose results that are already written
        log.warning(
            "MLflow at %s: evaluation not tracked (%s); results are in files", tracking_uri, exc
        )
        return None
    log.info("evaluation of %s logged to MLflow run %s", model, run_id)
    return run_id
