"""The end-of-training structure refit (training/structure_refit.py) on the real tiny shards."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from sgdm_dist.config import load_config
from sgdm_dist.data.features import load_vae
from sgdm_dist.data.manifest import read_manifest
from sgdm_dist.models import build_model
from sgdm_dist.training.structure_refit import Targets, read_averaged, refit_structure_head

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _setup(tiny_shards: list[str], *overrides: str):
    cfg = load_config(TINY, [*tiny_shards, *overrides])
    m = read_manifest(cfg.data.shard_dir)
    torch.manual_seed(0)
    model = build_model(cfg.model, n_channels=m.n_channels, n_times=m.n_times, n_subjects=2).eval()
    return cfg, model, load_vae(cfg.data.shard_dir)


def test_refit_lowers_the_validation_pixel_error_of_an_untrained_head(
    tiny_shards: list[str],
) -> None:
    cfg, model, vae = _setup(tiny_shards, "train.structure_refit.steps=40")
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.structure.state_dict().items()}
    result = refit_structure_head(model, cfg, vae)
    assert result is not None
    assert result["structure_refit/val_pixel_mse"] < result["structure_refit/val_pixel_mse_before"]
    assert result["structure_refit/best_step"] > 0
    head_after = model.structure.state_dict()
    assert any(not torch.equal(head_before[k], head_after[k]) for k in head_before)
    # Only the head moves: the encoder (and so the semantic route) is frozen.
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(encoder_before[name], value), name


def test_a_refit_that_only_gets_worse_keeps_the_original_head(tiny_shards: list[str]) -> None:
    # A learning rate this large throws the head far off at the first step: no step beats step 0.
    cfg, model, vae = _setup(
        tiny_shards, "train.structure_refit.steps=6", "train.structure_refit.lr=1.0e4"
    )
    head_before = {k: v.clone() for k, v in model.structure.state_dict().items()}
    result = refit_structure_head(model, cfg, vae)
    assert result is not None and result["structure_refit/best_step"] == 0
    for name, value in model.structure.state_dict().items():
        assert torch.equal(head_before[name], value), name


def test_refit_is_off_without_steps_or_head(tiny_shards: list[str]) -> None:
    cfg, model, vae = _setup(tiny_shards)
    assert cfg.train.structure_refit.steps == 0
    assert refit_structure_head(model, cfg, vae) is None
    cfg, model, vae = _setup(
        tiny_shards, "model.lambda_structure=0", "train.structure_refit.steps=5"
    )
    assert model.structure is None and refit_structure_head(model, cfg, vae) is None


def test_read_averaged_gives_one_row_per_subject_and_image(tiny_shards: list[str]) -> None:
    cfg, model, _ = _setup(tiny_shards)
    data = read_averaged(cfg, "val", model)
    assert data is not None
    m = read_manifest(cfg.data.shard_dir)
    n_images = len(m.splits["val"].concepts) * cfg.data.synthetic.images_per_concept
    assert data.eeg.shape == (len(data.subject), m.n_channels, m.n_times)
    assert data.latent.shape[0] == len(data.subject)
    assert sorted(set(data.subject.tolist())) == [1, 2]
    assert len(data.subject) == 2 * n_images


def test_refit_is_reproducible_whatever_the_global_rng(tiny_shards: list[str]) -> None:
    cfg, model, vae = _setup(tiny_shards, "train.structure_refit.steps=5")
    twin = copy.deepcopy(model)
    torch.manual_seed(1)
    refit_structure_head(model, cfg, vae)
    torch.manual_seed(2)
    refit_structure_head(twin, cfg, vae)
    for name, value in model.structure.state_dict().items():
        assert torch.equal(twin.structure.state_dict()[name], value), name


def test_targets_too_big_to_keep_are_decoded_per_batch_to_the_same_images(
    tiny_shards: list[str],
) -> None:
    cfg, model, vae = _setup(tiny_shards)
    data = read_averaged(cfg, "val", model)
    assert data is not None
    kept, streamed = Targets(vae, data.latent), Targets(vae, data.latent, cache_bytes=0)
    assert kept.cache is not None and streamed.cache is None and len(streamed) == len(data.latent)
    idx = torch.tensor([3, 0, 5])
    torch.testing.assert_close(streamed[idx], kept[idx])
    torch.testing.assert_close(streamed[1:4], kept[1:4])
