"""Frozen encoders: tiny random CLIP/VAE built, saved and reloaded; the content-addressed cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgdm_dist.config.data import FeatureConfig
from sgdm_dist.data import DataError
from sgdm_dist.data.feature_cache import FeatureCache, compute_features, text_features
from sgdm_dist.data.features import ClipEncoder, VaeEncoder

CFG = FeatureConfig(
    clip_model="sgdm-tiny-clip", clip_pretrained=None, vae=None, image_size=64, batch_size=3
)


def _images(root: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_features_shapes_cache_hits_and_reload(tmp_path: Path) -> None:
    paths = _images(tmp_path, 5)
    enc = tmp_path / "encoders"
    clip, vae = ClipEncoder(CFG, enc, seed=0), VaeEncoder(CFG, enc, seed=1)
    assert (enc / "clip" / "model.safetensors").exists() and (enc / "vae" / "config.json").exists()
    cache = FeatureCache(tmp_path / "cache")
    first = compute_features(paths, clip, vae, cache, CFG.batch_size)
    assert first.clip.shape == (5, 32) and first.latent.shape == (5, 4, 8, 8)
    np.testing.assert_allclose(np.linalg.norm(first.clip, axis=1), 1.0, atol=1e-5)
    assert (cache.hits, cache.misses) == (0, 10)
    # New encoder objects reload the saved weights: same cache key, every lookup hits.
    clip2, vae2 = ClipEncoder(CFG, enc, seed=123), VaeEncoder(CFG, enc, seed=456)
    assert (clip2.info.key, vae2.info.key) == (clip.info.key, vae.info.key)
    cache2 = FeatureCache(tmp_path / "cache")
    second = compute_features(paths, clip2, vae2, cache2, CFG.batch_size)
    assert (cache2.hits, cache2.misses) == (10, 0)
    np.testing.assert_array_equal(second.clip, first.clip)
    # ... and the reloaded models compute the same features from scratch.
    np.testing.assert_allclose(clip2.images([Image.open(paths[0])]), first.clip[:1], atol=1e-6)
    # A changed image misses only for itself (content-addressed).
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(paths[2])
    cache3 = FeatureCache(tmp_path / "cache")
    compute_features(paths, clip2, vae2, cache3, CFG.batch_size)
    assert (cache3.hits, cache3.misses) == (8, 2)
    names = ["aardvark", "zebra crossing"]
    t = text_features(names, clip2, cache3, 4)
    assert t.shape == (2, 32) and not np.allclose(t[0], t[1])
    text_features(names, clip2, cache3, 4)
    assert cache3.hits == 10


def test_unreadable_image_and_missing_weights_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    enc = tmp_path / "encoders"
    clip, vae = ClipEncoder(CFG, enc, seed=0), VaeEncoder(CFG, enc, seed=1)
    with pytest.raises(DataError, match="broken.png: cannot read image"):
        compute_features([bad], clip, vae, FeatureCache(tmp_path / "c"), 2)
    missing = CFG.model_copy(update={"vae": str(tmp_path / "no-such-vae")})
    with pytest.raises(DataError, match="data.features.vae: cannot load AutoencoderKL"):
        VaeEncoder(missing, enc, seed=1)


def test_stimuli_change_with_every_factor_a_viewer_judges() -> None:
    from sgdm_dist.data.stimuli import ATTRIBUTES, attributes, render

    z = np.zeros(9)
    base = render(z, 32).astype(float)
    for k, name in enumerate(ATTRIBUTES):
        moved = z.copy()
        moved[k] = 1.5
        assert np.abs(render(moved, 32).astype(float) - base).mean() > 1.0, name
    kinds = {attributes(np.full(9, v))["kind"] for v in (-2.0, 0.0, 2.0)}
    assert kinds == {0.0, 1.0, 2.0}  # circle, square, triangle


def test_prepare_trains_a_small_autoencoder_when_no_vae_is_given(tmp_path: Path) -> None:
    from sgdm_dist.data.stimuli import render

    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"s{i}.png")
        Image.fromarray(render(rng.standard_normal(8), 64)).save(paths[-1])
    cfg = CFG.model_copy(update={"autoencoder_steps": 3, "autoencoder_batch_size": 5})
    enc = tmp_path / "encoders"
    vae = VaeEncoder(cfg, enc, seed=1, train_images=paths[:4], held_out=paths[4:])
    assert not vae.info.random_init and vae.info.saved_with_shards
    record = vae.info.training
    assert record["steps"] == 3 and record["n_train_images"] == 4
    assert record["batch_size"] == 5  # the config's, recorded beside the curve
    assert set(record["held_out_round_trip"]) == {"PixCorr", "SSIM", "n_images"}
    assert (enc / "vae" / "loss_curve.png").is_file() and (
        enc / "vae" / "loss_curve.json"
    ).is_file()
    # The scaling factor makes the cached latents of the training stimuli unit-variance.
    latents = vae.latents([Image.open(p) for p in paths[:4]])
    assert latents.std() == pytest.approx(1.0, abs=1e-3)
    # A resumed prepare reloads it (same weights → same cache key) instead of training again.
    again = VaeEncoder(cfg, enc, seed=1, train_images=paths[:4], held_out=paths[4:])
    assert again.info.key == vae.info.key and again.info.training == record
