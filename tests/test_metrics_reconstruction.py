"""Known-answer tests for PixCorr and SSIM (MindEye/ATM protocol: 425 px, grayscale SSIM)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from skimage.metrics import structural_similarity

from sgdm_dist.metrics import pixcorr, pixcorr_per_image, ssim, ssim_per_image


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_identical_images_score_perfectly() -> None:
    gt = _images(4)
    assert pixcorr(gt, gt) == pytest.approx(1.0, abs=1e-12)
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-12)


def test_pixcorr_affine_and_inverted_images() -> None:
    gt = _images(3)
    # Bilinear resizing is linear, so an affine change of intensity keeps r = 1; inversion gives −1.
    assert pixcorr(0.5 * gt + 0.25, gt) == pytest.approx(1.0, abs=1e-9)
    assert pixcorr(1 - gt, gt) == pytest.approx(-1.0, abs=1e-9)


def test_pixcorr_of_unrelated_images_is_near_zero() -> None:
    # At 425 px the resize is the identity, so every pixel is an independent sample: r ~ N(0, 1/√m).
    n, size = 4, 425
    r = pixcorr_per_image(_images(n, size, seed=1), _images(n, size, seed=2))
    sigma = 1 / math.sqrt(3 * size * size * n)
    assert abs(float(r.mean())) < 5 * sigma


def test_blank_reconstruction_scores_zero_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    gt = _images(20, size=8)  # more than one resize chunk: the warning names the global index
    recon = gt.clone()
    recon[17] = 0.5
    with caplog.at_level(logging.WARNING):
        r = pixcorr_per_image(recon, gt)
    assert r[0] == pytest.approx(1.0) and r[17] == 0.0
    assert "PixCorr" in caplog.text and "images [17]" in caplog.text


def test_ssim_of_constant_images_matches_the_formula() -> None:
    # Constant images: σx = σy = σxy = 0, so SSIM = (2ab + C1) / (a² + b² + C1), C1 = (0.01 · L)².
    # Gray of an (a, a, a) pixel is a (the BT.709 weights sum to 1).
    a, b = 0.2, 0.6
    gt = torch.full((1, 3, 16, 16), a)
    recon = torch.full((1, 3, 16, 16), b)
    c1 = (0.01 * 1.0) ** 2
    assert ssim(recon, gt) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)


def test_ssim_matches_skimage_with_the_protocol_parameters() -> None:
    # At 425 px the resize is the identity; gray inputs make rgb2gray the identity too.
    gen = torch.Generator().manual_seed(3)
    g = torch.rand(2, 1, 425, 425, generator=gen)
    r = (g + 0.3 * torch.rand(2, 1, 425, 425, generator=gen)).clamp(0, 1)
    ours = ssim_per_image(r.expand(-1, 3, -1, -1), g.expand(-1, 3, -1, -1))
    for i in range(2):
        ref = structural_similarity(
            r[i, 0].double().numpy(),
            g[i, 0].double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert float(ours[i]) == pytest.approx(ref, abs=1e-5)
    assert 0.0 < float(ours.mean()) < 1.0


def test_resolution_mismatch_is_allowed_and_resized() -> None:
    base = _images(2, size=8)  # smooth images: a 32 px copy keeps nearly all of the 64 px content
    gt = torch.nn.functional.interpolate(base, size=64, mode="bilinear")
    recon = torch.nn.functional.interpolate(base, size=32, mode="bilinear")
    assert pixcorr(recon, gt) > 0.95
    assert pixcorr(recon, gt.flip(0)) < 0.5  # and it is the pairing that matters


@pytest.mark.parametrize(
    ("recon", "match"),
    [
        ((torch.rand(2, 3, 8, 8) * 255).byte(), "recon must be a float tensor"),
        (torch.rand(2, 3, 8, 8) * 2 - 1, r"recon must hold values in \[0, 1\]"),
        (torch.rand(3, 3, 8, 8), "same number of images, got 3 and 2"),
        (torch.rand(2, 1, 8, 8), r"recon must have shape \[N, 3, H, W\]"),
    ],
)
def test_bad_images_are_named(recon: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ssim(recon, torch.rand(2, 3, 8, 8))
