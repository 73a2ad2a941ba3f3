"""SGDM persistence (safetensors + config.json, no pickle) and Stable-Diffusion UNet initialisation."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from sgdm_dist.config import load_config
from sgdm_dist.config.model import ModelConfig
from sgdm_dist.models import SGDM, build_model
from sgdm_dist.models.unet import unet_kwargs


def tiny(*overrides: str) -> ModelConfig:
    return load_config("configs/tiny.yaml", list(overrides)).model


def build(cfg: ModelConfig) -> SGDM:
    torch.manual_seed(0)
    return build_model(cfg, n_channels=7, n_times=40, n_subjects=3)


def eeg_batch(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 7, 40, generator=g), torch.tensor([1, 3, 0])[:b]


@pytest.mark.parametrize("variant", ["sgdm", "reference"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path, variant: str) -> None:
    model = build(tiny(f"model.variant={variant}", "model.n_classes=5"))
    with torch.no_grad():  # move every parameter off its init so a fresh init cannot pass
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "scheduler",
        "unet",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp folders left behind

    header_len = struct.unpack("<Q", (out / "model.safetensors").read_bytes()[:8])[0]
    assert header_len > 0  # a safetensors header, not a pickle
    config = json.loads((out / "config.json").read_text())
    assert (config["n_channels"], config["n_times"], config["n_subjects"]) == (7, 40, 3)
    assert config["model"]["variant"] == variant

    loaded = SGDM.from_pretrained(out)
    eeg, subject = eeg_batch()
    assert torch.equal(model.predict_clip(eeg, subject), loaded.predict_clip(eeg, subject))
    kw = dict(vae=None, steps=3, seed=4)
    assert torch.equal(
        model.reconstruct(eeg, subject, **kw), loaded.reconstruct(eeg, subject, **kw)
    )
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_exported_unet_and_scheduler_load_with_plain_diffusers(tmp_path: Path) -> None:
    """The folder is in diffusers' layout: a diffusers user needs no sgdm code for the UNet."""
    from diffusers import DDPMScheduler

    model = build(tiny())
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = model.save_pretrained(tmp_path / "m")
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    for (name, a), b in zip(
        model.unet.state_dict().items(), unet.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    scheduler = DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    assert scheduler.config.num_train_timesteps == model.noise_scheduler.config.num_train_timesteps
    assert scheduler.config.prediction_type == model.noise_scheduler.config.prediction_type
    # model.safetensors holds only the SGDM parts: the UNet is stored once, in unet/.
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if k.startswith("unet.")]


def test_format_1_folders_still_load(tmp_path: Path) -> None:
    """Models exported before the diffusers layout (UNet inside model.safetensors) stay readable."""
    from safetensors.torch import save_model

    model = build(tiny())
    old = tmp_path / "v1"
    old.mkdir()
    save_model(model, str(old / "model.safetensors"))
    config = {
        **model.config_dict(),
        "format_version": 1,
        "unet": {k: v for k, v in model.unet.config.items() if not k.startswith("_")},
    }
    (old / "config.json").write_text(json.dumps(config))
    loaded = SGDM.from_pretrained(old)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_missing_unet_folder_is_named(tmp_path: Path) -> None:
    import shutil

    from sgdm_dist.models.io import ModelFileError

    out = build(tiny()).save_pretrained(tmp_path / "m")
    shutil.rmtree(out / "unet")
    with pytest.raises(ModelFileError, match=r"missing unet/config.json.*diffusers' layout"):
        SGDM.from_pretrained(out)


def test_save_replaces_existing_folder_atomically(tmp_path: Path) -> None:
    first, second = build(tiny()), build(tiny("model.encoder.depth=2"))
    first.save_pretrained(tmp_path / "m")
    second.save_pretrained(tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert SGDM.from_pretrained(tmp_path / "m").cfg.encoder.depth == 2


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        SGDM.from_pretrained(tmp_path)
    build(tiny()).save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    data = json.loads(cfg_path.read_text())
    data["n_channels"] = 8
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"(?s)do not match config.json.*encoder.channel_pos"):
        SGDM.from_pretrained(tmp_path / "m")
    cfg_path.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        SGDM.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("cut", ["inside_tensor_data", "inside_header", "empty"])
def test_truncated_weights_name_file_tensor_and_sizes(tmp_path: Path, cut: str) -> None:
    from sgdm_dist.models.io import ModelFileError

    out = build(tiny()).save_pretrained(tmp_path / "m")
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    keep = {"inside_tensor_data": len(data) - 1000, "inside_header": 8 + header_len // 2}
    weights.write_bytes(data[: keep.get(cut, 0)])
    with pytest.raises(ModelFileError) as err:
        SGDM.from_pretrained(out)
    message = str(err.value)
    assert message.startswith(f"{weights}: truncated")
    if cut == "inside_tensor_data":
        assert f"expected {len(data)} bytes" in message and f"found {len(data) - 1000}" in message
        assert "is cut off" in message  # names the tensor whose bytes are missing
    assert isinstance(err.value, ValueError)  # the CLI's model loaders turn it into exit 2


@pytest.mark.parametrize("layout", ["sd_repo", "unet_folder"])
def test_pretrained_unet_initialisation_adapts_conditioning_width(
    tmp_path: Path, layout: str
) -> None:
    # A "Stable-Diffusion" UNet with its own conditioning width (24) different from the config's (32).
    source_cfg = tiny("model.unet.cross_attention_dim=24").unet
    torch.manual_seed(7)
    sd_unet = UNet2DConditionModel(**unet_kwargs(source_cfg, None)).eval()
    folder = tmp_path / "sd"
    sd_unet.save_pretrained(folder / "unet" if layout == "sd_repo" else folder)

    model = build(tiny(f"model.unet.pretrained={folder}")).eval()
    assert model.unet.config.cross_attention_dim == 24
    assert model.conditioning.cross_attention_dim == 24
    pretrained = sd_unet.state_dict()
    ours = model.unet.state_dict()
    assert all(torch.equal(pretrained[k], ours[k]) for k in pretrained)
    assert set(ours) - set(pretrained) == {
        f"class_embedding.linear_{i}.{w}" for i in (1, 2) for w in ("weight", "bias")
    }
    # The new added-embedding starts at zero: the UNet behaves exactly like the pretrained one.
    eeg, subject = eeg_batch()
    with torch.no_grad():
        cond = model.condition(eeg, subject)
        latents = torch.randn(3, *model.latent_shape)
        t = torch.tensor([5, 50, 90])
        expected = sd_unet(latents, t, encoder_hidden_states=cond.tokens).sample
        assert torch.allclose(model.denoise(latents, t, cond), expected, atol=1e-5)

    # It trains, and it saves/loads without needing the pretrained folder again.
    model.train()
    batch = {
        "eeg": eeg,
        "subject": subject,
        "clip": torch.nn.functional.normalize(torch.randn(3, 32), dim=-1),
        "latent": torch.randn(3, *model.latent_shape),
    }
    model(batch, "diffusion")["loss"].backward()
    assert model.unet.class_embedding.linear_2.weight.grad.abs().sum() > 0
    saved = model.save_pretrained(tmp_path / "trained")
    for p in folder.rglob("*"):
        if p.is_file():
            p.unlink()
    assert SGDM.from_pretrained(saved).unet.config.cross_attention_dim == 24


def test_pretrained_unet_with_wrong_latent_channels_is_refused(tmp_path: Path) -> None:
    src = tiny("model.unet.latent_channels=8").unet
    UNet2DConditionModel(**unet_kwargs(src, None)).save_pretrained(tmp_path / "sd")
    with pytest.raises(ValueError, match="latent channels"):
        build(tiny(f"model.unet.pretrained={tmp_path / 'sd'}"))


def test_profile_counts_match_a_real_model_and_backward_costs_more() -> None:
    from sgdm_dist.models.profile import count_parameters, profile_model

    cfg = tiny()
    prof = profile_model(cfg, n_channels=7, n_times=40, n_subjects=3, batch=2)
    real = count_parameters(build(cfg))
    assert prof.params == real
    assert real["total"] == sum(p.numel() for p in build(cfg).parameters())
    assert 0 < prof.forward_flops < prof.backward_flops
    bigger = profile_model(cfg, n_channels=7, n_times=40, n_subjects=3, batch=4)
    # Linear in batch size up to the B × B contrastive logits.
    assert abs(bigger.forward_flops - 2 * prof.forward_flops) < 1e-3 * bigger.forward_flops
