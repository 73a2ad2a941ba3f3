"""Floors, ceilings, bootstrap CIs and condition sensitivity (sgdm_dist/metrics/baselines.py and
sgdm_dist/evaluation/reconstruction.py) on a tiny model whose structure head is fitted so the EEG matters."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from sgdm_dist.config import load_config
from sgdm_dist.data.features import TINY_VAE_CONFIG
from sgdm_dist.evaluation.reconstruction import CEILING, FLOOR, MODEL, ReconScores, score_subject
from sgdm_dist.metrics.baselines import bootstrap_ci, condition_sensitivity, derangement
from sgdm_dist.metrics.reconstruction import pixcorr_per_image
from sgdm_dist.models import SGDM, build_model
from sgdm_dist.reconstruct.sampling import SamplingOptions

N = 12


def test_derangement_moves_every_item_and_is_a_permutation() -> None:
    for seed in range(5):
        perm = derangement(N, seed)
        assert sorted(perm.tolist()) == list(range(N))
        assert not (perm == torch.arange(N)).any()
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_more_images() -> None:
    g = torch.Generator().manual_seed(0)
    small = torch.randn(20, generator=g, dtype=torch.float64)
    large = torch.randn(2000, generator=g, dtype=torch.float64)
    lo, hi = bootstrap_ci(small)
    assert lo < float(small.mean()) < hi
    lo2, hi2 = bootstrap_ci(large)
    assert lo2 < float(large.mean()) < hi2
    assert (hi2 - lo2) < (hi - lo) / 3  # ~ 1/sqrt(n)
    assert bootstrap_ci(small, seed=1) != bootstrap_ci(small, seed=2)


def test_condition_sensitivity_is_eeg_change_over_seed_change() -> None:
    a = torch.zeros(2, 3, 4, 4)
    out = condition_sensitivity(a, a + 0.4, a + 0.1)
    assert out["condition_sensitivity"] == pytest.approx(4.0)
    assert out["pixel_change_eeg_swapped"] == pytest.approx(0.4)
    assert out["pixel_change_seed_changed"] == pytest.approx(0.1)


@pytest.fixture(scope="module")
def setup() -> dict:
    """A tiny SGDM whose structure head maps EEG to each stimulus's latent (fitted here), a seeded
    random VAE, 12 stimuli it decodes and EEG that is a fixed linear function of their latents."""
    torch.manual_seed(0)
    cfg = load_config("configs/tiny.yaml").model
    model = build_model(cfg, n_channels=4, n_times=20, n_subjects=1)
    vae = AutoencoderKL(sample_size=64, **TINY_VAE_CONFIG).eval()
    # The "stimuli" are what this (random) decoder draws from unit-variance latents, so a model
    # that predicts the latent draws the stimulus; a random VAE could not draw rendered ones.
    latents = torch.randn(N, *model.latent_shape)
    stimuli = SGDM.decode_latents(latents, vae)
    mixing = torch.randn(latents[0].numel(), 4 * 20)
    eeg = (latents.flatten(1) @ mixing).reshape(N, 4, 20)
    eeg = eeg / eeg.std()
    ids = torch.ones(N, dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):  # the structure route only: enough for the EEG to decide the latent
        loss = (model.structure(model.encoder(eeg, ids).z) - latents).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return {"model": model, "vae": vae, "stimuli": stimuli, "eeg": eeg, "ids": ids, "lat": latents}


def _score(setup: dict, eeg: torch.Tensor, strength: float) -> ReconScores:
    scores = ReconScores()
    options = SamplingOptions(steps=4, guidance_scale=1.0, strength=strength, batch_size=N)
    score_subject(
        scores,
        "sub-01",
        setup["model"],
        eeg,
        setup["ids"],
        setup["stimuli"],
        setup["vae"],
        options,
        None,
        baselines=True,
        progress=False,
        metric_kw={},
    )
    return scores


@pytest.fixture(scope="module")
def exact(setup: dict) -> ReconScores:
    """Strength 0: each image is the decoded structure the EEG predicts."""
    return _score(setup, setup["eeg"], strength=0.0)


def test_ceiling_is_the_autoencoder_round_trip(setup: dict, exact: ReconScores) -> None:
    scores = exact
    vae = setup["vae"]
    with torch.no_grad():  # what prepare caches (posterior mean × scaling), decoded
        lat = vae.encode(setup["stimuli"] * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    round_trip = SGDM.decode_latents(lat, vae)
    expected = pixcorr_per_image(round_trip, setup["stimuli"])
    got = scores.per_image[CEILING]["sub-01"]["PixCorr"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    table = scores.tables(seed=0)
    assert table[CEILING]["sub-01"]["PixCorr"] == pytest.approx(float(expected.mean()), abs=1e-5)
    row = table[MODEL]["mean"]
    assert row["PixCorr.ci_low"] <= row["PixCorr"] <= row["PixCorr.ci_high"]


def test_eeg_decides_the_image_and_zeroed_eeg_scores_at_the_floor(
    setup: dict, exact: ReconScores
) -> None:
    real = _score(setup, setup["eeg"], strength=0.3)
    sens = real.sensitivity_table()["mean"]
    assert sens["condition_sensitivity"] > 1.0
    assert exact.sensitivity_table()["mean"]["pixel_change_seed_changed"] == 0.0
    # With strength 0 the image is the decoded structure: its pixels follow the EEG's latent.
    exact = exact.tables(seed=0)
    ident = "Pixel(2-way)"
    assert exact[MODEL]["mean"][ident] > exact[FLOOR]["mean"][f"{ident}.ci_high"]
    zeroed = _score(setup, torch.zeros_like(setup["eeg"]), strength=0.0).tables(seed=0)
    floor = exact[FLOOR]["mean"]
    # One image for every trial: identification at chance, i.e. at the shuffled-EEG floor.
    assert floor[f"{ident}.ci_low"] - 0.05 <= zeroed[MODEL]["mean"][ident]
    assert zeroed[MODEL]["mean"][ident] <= floor[f"{ident}.ci_high"] + 0.05
    assert zeroed[MODEL]["mean"][ident] < exact[MODEL]["mean"][ident]
