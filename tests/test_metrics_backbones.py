"""Reconstruction metrics through the real backbones (random init: no weights exist here).

AlexNet, Inception-v3, EfficientNet-B1 and ResNet-50 are the real torchvision networks at the
protocol's input sizes; CLIP is a tiny open_clip ViT registered for the test (ViT-L/14 is too slow
for a 2-core CPU, and the CLIP code path is the same).
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from torchvision import models as tvm

from sgdm_dist.config.evaluate import EvaluateConfig
from sgdm_dist.metrics import (
    METRIC_ORDER,
    correlation_distance,
    load_backbone,
    load_backbones,
    random_init_metrics,
    reconstruction_metrics,
    two_way_identification,
)
from sgdm_dist.metrics.backbones import weight_candidates

TINY_CLIP = "sgdm-test-tiny-clip"
N = 4


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 1000,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    path = tmp_path_factory.mktemp("clip") / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return TINY_CLIP


@pytest.fixture(scope="module")
def backbones(tiny_clip: str) -> dict:
    cfg = EvaluateConfig(clip_model=tiny_clip, metric_batch_size=N)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return load_backbones(cfg)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    # Smooth random images (8 px noise upsampled): closer to photos than white noise.
    base = torch.rand(N, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(base, size=32, mode="bilinear").clamp(0, 1)


def test_identical_images_give_perfect_scores(backbones: dict, images: torch.Tensor) -> None:
    out = reconstruction_metrics(images, images, backbones)
    assert [m for m in METRIC_ORDER if m in out] == METRIC_ORDER
    assert out["PixCorr"] == pytest.approx(1.0) and out["SSIM"] == pytest.approx(1.0)
    assert out["Pixel(2-way)"] == 1.0
    for metric in ("AlexNet(2)", "AlexNet(5)", "Inception", "CLIP"):
        assert out[metric] == 1.0, metric
    for metric in ("EffNet-B", "SwAV"):
        assert out[metric] == pytest.approx(0.0, abs=1e-6), metric
    # Random-init backbones are flagged so nobody reads these as paper numbers.
    assert sorted(random_init_metrics(out)) == sorted(METRIC_ORDER[3:])
    assert out["n_images"] == N


def test_permuted_images_lose_identification(backbones: dict, images: torch.Tensor) -> None:
    perm = torch.roll(torch.arange(N), 1)  # no image stays in place
    # Eval-mode networks treat images independently: features of a permuted batch are the permuted
    # features, so one forward pass serves (and the slow Inception runs once).
    for backbone in backbones.values():
        feats = backbone.features(images)
        for metric, f in feats.items():
            if backbone.spec.kind == "two_way":
                # Reconstruction j *is* ground truth π(j), which always beats j's own ground truth:
                # at most N − 2 of the N − 1 comparisons can be won.
                assert two_way_identification(f, f[perm]) <= (N - 2) / (N - 1), metric
            else:
                assert correlation_distance(f, f[perm]) > 1e-5, metric
    low = reconstruction_metrics(images[perm], images, None)
    assert low["PixCorr"] < 0.9 and low["SSIM"] < 0.9


def test_features_of_an_image_set_are_computed_once(backbones: dict, images: torch.Tensor) -> None:
    """An evaluation scores the model, its floor and its ceiling against the same stimuli: their
    features come from the memo, equal to a fresh computation; other images are computed anew."""
    alexnet = backbones["alexnet"]
    calls: list[int] = []
    hook = alexnet.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        alexnet._memo.clear()
        first = alexnet.features(images)
        assert len(calls) == 1
        again = alexnet.features(images.clone())  # same bytes, another tensor
        assert len(calls) == 1
        for metric, f in first.items():
            assert torch.equal(again[metric], f), metric
        other = alexnet.features(images.flip(-1))
        assert len(calls) == 2
        assert not torch.equal(other["AlexNet(2)"], first["AlexNet(2)"])
        alexnet.features(images[:2])  # a third set evicts the oldest (the memo holds two)
        alexnet.features(images)
        assert len(calls) == 4
        assert torch.equal(alexnet._compute(images, 16)["AlexNet(5)"], first["AlexNet(5)"])
    finally:
        hook.remove()


def test_no_backbones_gives_low_level_metrics_only(images: torch.Tensor) -> None:
    out = reconstruction_metrics(images, images, None)
    assert set(out) == {"n_images", "PixCorr", "SSIM", "Pixel(2-way)"}


def test_weights_are_loaded_from_a_torch_hub_cache_folder(tmp_path: Path) -> None:
    torch.manual_seed(123)
    reference = tvm.alexnet(weights=None).eval()
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(reference.state_dict(), hub / "alexnet-owt-7be5be79.pth")
    assert weight_candidates("alexnet", tmp_path)[-1] == hub / "alexnet-owt-7be5be79.pth"

    backbone = load_backbone("alexnet", weights_dir=tmp_path, allow_random=False)
    assert not backbone.random_init and backbone.source.endswith("alexnet-owt-7be5be79.pth")
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    feats = backbone.features(x)
    # The protocol's input: 256 px bilinear + ImageNet normalisation; taps after ReLU 2 and 5.
    prepped = torch.nn.functional.interpolate(x, size=256, mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        h2 = reference.features[:5]((prepped - mean) / std)
        h5 = reference.features[:12]((prepped - mean) / std)
    torch.testing.assert_close(feats["AlexNet(2)"], h2.flatten(1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feats["AlexNet(5)"], h5.flatten(1), atol=1e-4, rtol=1e-4)


def test_swav_checkpoint_layout_loads(tmp_path: Path) -> None:
    torch.manual_seed(5)
    net = tvm.resnet50(weights=None)
    # SwAV's checkpoint: DDP "module." prefix, extra heads, no classifier.
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.zeros(4, 4)
    torch.save(state, tmp_path / "swav_800ep_pretrain.pth.tar")
    backbone = load_backbone("swav", weights_dir=tmp_path, allow_random=False)
    assert not backbone.random_init
    got = dict(backbone.model.named_parameters())["conv1.weight"]
    torch.testing.assert_close(got, net.conv1.weight)

    del state["module.conv1.weight"]
    torch.save(state, tmp_path / "swav_800ep_pretrain.pth.tar")
    with pytest.raises(ValueError, match=r"swav_800ep_pretrain.pth.tar lack ResNet-50 keys.*conv1"):
        load_backbone("swav", weights_dir=tmp_path)


def test_clip_weights_load_from_a_file(tmp_path: Path, tiny_clip: str) -> None:
    torch.manual_seed(9)
    model = open_clip.create_model(tiny_clip)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    backbone = load_backbone(
        "clip", weights_dir=tmp_path, clip_model=tiny_clip, clip_weights="tiny.pt"
    )
    assert not backbone.random_init
    assert backbone.size == 64  # the architecture's own input size, not ViT-L/14's 224
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    with torch.no_grad():
        expected = model.eval().encode_image((x - mean) / std)
    torch.testing.assert_close(backbone.features(x)["CLIP"], expected, atol=1e-4, rtol=1e-4)


def test_missing_or_bad_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"alexnet-owt-7be5be79.pth.*not allowed"):
        load_backbone("alexnet", weights_dir=tmp_path, allow_random=False)
    (tmp_path / "efficientnet_b1-c27df63c.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read backbone weights .*efficientnet_b1"):
        load_backbone("effnet", weights_dir=tmp_path)
    torch.save(
        tvm.alexnet(weights=None).state_dict(), tmp_path / "inception_v3_google-0cc3c7bd.pth"
    )
    with pytest.raises(ValueError, match="does not fit torchvision inception"):
        load_backbone("inception", weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="evaluate.clip_weights: no checkpoint file"):
        load_backbone("clip", weights_dir=tmp_path, clip_weights="missing.pt")
    with pytest.raises(ValueError, match="evaluate.clip_model: open_clip has no model config"):
        load_backbone("clip", clip_model="no-such-model")
    with pytest.raises(ValueError, match="unknown metric backbone 'vgg'"):
        load_backbone("vgg")


def test_a_config_dict_selects_the_backbones(images: torch.Tensor) -> None:
    with pytest.warns(UserWarning, match="backbone alexnet: no weights"):
        out = reconstruction_metrics(images, images, {"backbones": ["alexnet"]})
    assert set(out) == {
        "n_images",
        "PixCorr",
        "SSIM",
        "Pixel(2-way)",
        "AlexNet(2)",
        "AlexNet(2).random_init",
        "AlexNet(5)",
        "AlexNet(5).random_init",
    }
