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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import sgdm_dist
from sgdm_dist.baselines.checks import decoding_checks
from sgdm_dist.config import Config
from sgdm_dist.data.io import atomic_write_text
from sgdm_dist.data.manifest import manifest_hash, read_manifest
from sgdm_dist.data.splits import select_shards, split_image_embeddings
from sgdm_dist.evaluation.mlflow_log import log_to_mlflow
from sgdm_dist.evaluation.report import write_report
from sgdm_dist.evaluation.scoring import (
    AVERAGED,
    CHANCE_ROW,
    MEAN_ROW,
    SINGLE,
    TEST_SPLIT,
    EvaluationError,
    grid_index,
    score_reconstruction,
    score_retrieval,
)
from sgdm_dist.evaluation.tables import report_view
from sgdm_dist.metrics import METRIC_ORDER
from sgdm_dist.models import SGDM
from sgdm_dist.reconstruct.alignment import unseen_subject_shifts
from sgdm_dist.reconstruct.inputs import SplitEEG, read_split
from sgdm_dist.reconstruct.model import (
    ReconstructError,
    TrainingData,
    load_model,
    model_folder,
    training_data,
)
from sgdm_dist.reconstruct.sampling import SamplingOptions, save_comparison_grid
from sgdm_dist.utils.tracking import default_tracking_uri

log = logging.getLogger(__name__)


METRICS_FILE = "metrics.json"


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
    model_dir, net, test = _load_model_and_test(cfg, model, device, tracking_uri, progress)
    _warn_unknown_subjects(test.subjects, net, ecfg.subject_agnostic)

    retrieval, similarity, target_index = score_retrieval(cfg, net, test)
    # Model vs ridge on the same shards, in centred CLIP, with the collapse guard (#13).
    decoding = decoding_checks(cfg, net, agnostic=ecfg.subject_agnostic, shifts=test.shifts)
    sampling = _sampling_options(cfg)
    recon = _Reconstructions()
    if ecfg.reconstruct:
        recon = _reconstruct(cfg, net, model_dir, test, sampling, out_dir, device, progress)

    metrics = {
        "summary": _summary(cfg, retrieval, recon.scores, test, recon.baselines),
        "retrieval": retrieval,
        "reconstruction": recon.scores,
        "reconstruction_baselines": recon.baselines,
        "decoding": decoding,
        "protocol": _protocol(cfg, model, model_dir, test, sampling, recon.vae_source),
    }
    metrics_path = atomic_write_text(out_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    report_path = write_report(
        out_dir,
        report_view(metrics),
        images=recon.grid_images,
        recons=recon.grid_recons,
        recon_labels=[f"sub-{s:02d}" for s in test.subjects],
        retrieval_images=_retrieval_candidates(cfg, test),
        similarity=similarity,
        title=f"sgdm-dist evaluation: {model}",
        max_images=ecfg.report_max_images,
        target_index=target_index,
    )
    run_id = log_to_mlflow(
        cfg, metrics, [metrics_path, report_path, recon.grid_path], tracking_uri, str(model)
    )
    return EvaluationResult(metrics, out_dir, metrics_path, report_path, recon.grid_path, run_id)


def _load_model_and_test(
    cfg: Config, model: str | Path, device: torch.device, tracking_uri: str, progress: bool
) -> tuple[Path, SGDM, SplitEEG]:
    """The model's folder, the model on ``device`` and the TEST split read through it."""
    ecfg = cfg.evaluate
    try:
        model_dir = model_folder(model, tracking_uri=tracking_uri)
        net = load_model(model_dir, device)
        trained = training_data(model_dir)
        shifts = _latency_shifts(cfg, net, trained)
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
            shifts=shifts,
        )
    except ReconstructError as exc:
        raise EvaluationError(str(exc)) from None
    return model_dir, net, test


def _latency_shifts(cfg: Config, model: SGDM, trained: TrainingData) -> dict[int, int]:
    """With ``evaluate.align_unseen_s``: the shift (samples) of each test subject the model was not
    trained on (reconstruct/alignment.py); empty when off or every test subject was trained."""
    ecfg = cfg.evaluate
    if ecfg.align_unseen_s <= 0:
        return {}
    known = trained.subjects or list(range(1, model.n_subjects + 1))
    shards = select_shards(read_manifest(cfg.data.shard_dir), TEST_SPLIT, ecfg.subjects)
    unseen = sorted({shard.subject for shard in shards} - set(known))
    shifts = unseen_subject_shifts(
        str(cfg.data.shard_dir),
        TEST_SPLIT,
        unseen=unseen,
        trained=known,
        max_lag_s=ecfg.align_unseen_s,
    )
    if shifts:
        log.info("latency alignment of untrained subjects (samples, + = delayed): %s", shifts)
    return shifts


def _sampling_options(cfg: Config) -> SamplingOptions:
    """How reconstructions are sampled, from ``evaluate.*`` and the experiment seed."""
    ecfg = cfg.evaluate
    return SamplingOptions(
        steps=ecfg.steps,
        guidance_scale=ecfg.guidance_scale,
        scheduler=ecfg.scheduler,
        seed=cfg.experiment.seed,
        batch_size=ecfg.recon_batch_size,
        strength=ecfg.structure_strength,
    )


@dataclass
class _Reconstructions:
    """Reconstruction results; the defaults stand for ``evaluate.reconstruct=false``.

    ``grid_images`` [K, 3, H, W] stimuli and ``grid_recons`` [K, S, 3, H', W'] per subject feed
    the report; ``grid_path`` is ``reconstructions.png``.
    """

    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    grid_images: Tensor | None = None
    grid_recons: Tensor | None = None
    grid_path: Path | None = None
    vae_source: str | None = None


def _reconstruct(
    cfg: Config,
    net: SGDM,
    model_dir: Path,
    test: SplitEEG,
    sampling: SamplingOptions,
    out_dir: Path,
    device: torch.device,
    progress: bool,
) -> _Reconstructions:
    """Reconstruct and score every subject's test images, and write the comparison grid."""
    ecfg = cfg.evaluate
    baselines, grid_images, grid_recons, vae_source = score_reconstruction(
        cfg, net, model_dir, test, sampling, out_dir, device, progress
    )
    scores = baselines.pop("model")
    grid_path = save_comparison_grid(
        out_dir / "reconstructions.png",
        [("stimulus", grid_images)]
        + [(f"sub-{s:02d}", grid_recons[:, n]) for n, s in enumerate(test.subjects)],
        [f"{i:05d}" for i in grid_index(test, ecfg).tolist()],
        max_rows=ecfg.report_max_images,
    )
    return _Reconstructions(scores, baselines, grid_images, grid_recons, grid_path, vae_source)


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
        "align_unseen_s": ecfg.align_unseen_s,
        "latency_shifts": {f"sub-{s:02d}": k for s, k in sorted(test.shifts.items())},
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


def _warn_unknown_subjects(subjects: list[int], model: SGDM, agnostic: bool) -> None:
    unknown = [s for s in subjects if s > model.n_subjects]
    if unknown and not agnostic:
        log.warning(
            "test subjects %s were never trained (the model knows 1..%d): they are encoded as the "
            "subject-agnostic 0",
            unknown,
            model.n_subjects,
        )
