"""Test-split scoring per subject: retrieval (repetition-averaged and single-trial, k-way top-k with
chance levels) and reconstruction (one image per stimulus, PixCorr/SSIM/2-way identification)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sgdm_dist.config import Config
from sgdm_dist.config.evaluate import EvaluateConfig
from sgdm_dist.data.splits import split_image_embeddings
from sgdm_dist.evaluation.reconstruction import ReconScores, score_subject
from sgdm_dist.metrics import (
    average_by_index,
    mean_over_groups,
    retrieval_accuracy,
)
from sgdm_dist.models import SGDM
from sgdm_dist.reconstruct.inputs import SplitEEG
from sgdm_dist.reconstruct.model import ReconstructError, find_vae, model_subjects, training_data
from sgdm_dist.reconstruct.sampling import SamplingOptions, save_png

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


TEST_SPLIT = "test"


AVERAGED = "repetitions_averaged"


SINGLE = "single_trial"


MEAN_ROW = "mean"


CHANCE_ROW = "chance"


RECON_DIR = "reconstructions"


class EvaluationError(ValueError):
    """The evaluation cannot run on this input; the message names the model, shards or setting."""


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
    vae, vae_source = _load_vae(cfg, model, model_dir, device)
    backbones = _load_backbones(cfg, device)
    shown = grid_index(test, ecfg).tolist()
    scores = ReconScores()
    grid_recons = []
    for s in test.subjects:
        index, stimuli = _subject_stimuli(test, s, ecfg.recon_max_images)
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


def _load_vae(
    cfg: Config, model: SGDM, model_dir: Path, device: torch.device
) -> tuple[AutoencoderKL, str]:
    """The VAE that decodes the model's latents, on ``device``, and where it came from."""
    try:
        vae, vae_source = find_vae(
            model_dir,
            model.latent_shape[0],
            shard_dir=cfg.data.shard_dir,
            trained=training_data(model_dir),
        )
    except ReconstructError as exc:
        raise EvaluationError(str(exc)) from None
    return vae.to(device), vae_source


def _subject_stimuli(test: SplitEEG, subject: int, limit: int | None) -> tuple[Tensor, Tensor]:
    """The first ``limit`` image indices [K] of ``subject`` and their stimuli [K, 3, H, W]."""
    index = test.image_index[subject][:limit]
    if len(index) < 2:
        raise EvaluationError(
            f"subject {subject}: {len(index)} test image(s); reconstruction metrics need at least 2"
        )
    try:
        stimuli = test.stimuli(index)
    except ReconstructError as exc:
        raise EvaluationError(f"{exc}; or set evaluate.reconstruct=false") from None
    return index, stimuli


def grid_index(test: SplitEEG, ecfg: EvaluateConfig) -> Tensor:
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
