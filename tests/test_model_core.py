"""SGDM model: shapes, gradients, subject fallback, condition dropout, CFG and sampling determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from sgdm_dist.config import load_config
from sgdm_dist.config.model import ModelConfig
from sgdm_dist.models import SGDM, build_model
from sgdm_dist.models.conditioning import dropout_mask

N_SUBJECTS = 2


def tiny(*overrides: str) -> ModelConfig:
    return load_config("configs/tiny.yaml", list(overrides)).model


def make_batch(model: SGDM, b: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c, h, w = model.latent_shape
    return {
        "eeg": torch.randn(b, model.n_channels, model.n_times, generator=g),
        "clip": F.normalize(torch.randn(b, model.cfg.clip_dim, generator=g), dim=-1),
        "latent": torch.randn(b, c, h, w, generator=g),
        "subject": torch.arange(b) % (N_SUBJECTS + 1),  # includes 0 = unknown subject
        "concept": torch.arange(b) % 3,
        "image_index": torch.arange(b) // 2,  # two trials per image
    }


def build(cfg: ModelConfig, c: int = 17, t: int = 100) -> SGDM:
    torch.manual_seed(0)
    return build_model(cfg, n_channels=c, n_times=t, n_subjects=N_SUBJECTS)


@pytest.mark.parametrize("variant", ["sgdm", "reference"])
@pytest.mark.parametrize(("c", "t"), [(17, 100), (63, 250), (5, 33)])
def test_shapes_for_several_channel_and_time_counts(variant: str, c: int, t: int) -> None:
    model = build(tiny(f"model.variant={variant}"), c, t)
    batch = make_batch(model, b=3)
    out, z_sem = model.encode(batch["eeg"], batch["subject"])
    assert out.z.shape == (3, model.cfg.encoder.dim)
    assert z_sem.shape == (3, model.cfg.clip_dim)
    assert torch.allclose(z_sem.norm(dim=-1), torch.ones(3), atol=1e-5)
    cond = model.condition(batch["eeg"], batch["subject"])
    assert cond.tokens.shape == (
        3,
        model.conditioning.n_tokens,
        model.unet.config.cross_attention_dim,
    )
    losses = model(batch, "diffusion")
    assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])
    assert {"loss/align", "loss/diffusion", "loss/mse", "logit_scale"} <= set(losses)


def test_wrong_eeg_shape_and_missing_keys_are_named() -> None:
    model = build(tiny())
    batch = make_batch(model)
    with pytest.raises(ValueError, match=r"\[B, 16, 100\].*\[B, 17, 100\]"):
        model.encode(batch["eeg"][:, :16], batch["subject"])
    with pytest.raises(KeyError, match="latent"):
        model({k: v for k, v in batch.items() if k != "latent"}, "diffusion")
    with pytest.raises(ValueError, match="clip_dim"):
        model({**batch, "clip": batch["clip"][:, :8]}, "align")
    with pytest.raises(ValueError, match="stage"):
        model(batch, "pretrain")  # type: ignore[arg-type]


@pytest.mark.parametrize("subject_mode", ["embedding", "layer"])
def test_gradients_reach_every_trainable_parameter(subject_mode: str) -> None:
    cfg = tiny(
        f"model.encoder.subject_conditioning={subject_mode}",
        "model.n_classes=3",
        "model.lambda_cls=0.5",
        "model.lambda_mse=0.5",
        "model.diffusion.cond_dropout=0.5",
    )
    model = build(cfg)
    torch.manual_seed(3)
    out = model(make_batch(model, b=8), "diffusion")
    assert 0 < out["cond_drop_frac"] < 1  # both the null and the EEG condition are in play
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert no_grad == []


def test_align_stage_trains_encoder_and_head_only() -> None:
    model = build(tiny())
    model(make_batch(model), "align")["loss"].backward()
    for name, p in model.named_parameters():
        reached = p.grad is not None and bool(p.grad.abs().sum())
        expect = name.startswith(("encoder.", "semantic.", "structure."))
        assert reached == expect, name


def test_forward_randomness_comes_from_global_rng() -> None:
    model = build(tiny("model.diffusion.cond_dropout=0.5"))
    batch = make_batch(model)
    torch.manual_seed(11)
    a = model(batch, "joint")
    torch.manual_seed(11)
    b = model(batch, "joint")
    torch.manual_seed(12)
    c = model(batch, "joint")
    assert torch.equal(a["loss"], b["loss"])
    assert not torch.equal(a["loss"], c["loss"])


def test_unknown_subject_uses_fallback_and_subject_dropout_trains_it() -> None:
    cfg = tiny(
        "model.encoder.dropout=0",
        "model.semantic.dropout=0",
        "model.encoder.subject_dropout=1.0",
    )
    model = build(cfg)
    eeg = make_batch(model, b=4)["eeg"]
    unknown = model.predict_clip(eeg, torch.zeros(4, dtype=torch.long))
    unseen = model.predict_clip(eeg, torch.full((4,), 99))
    known = model.predict_clip(eeg, torch.ones(4, dtype=torch.long))
    assert torch.equal(unknown, unseen)
    assert not torch.allclose(unknown, known)
    model.train()
    _, dropped = model.encode(eeg, torch.ones(4, dtype=torch.long))  # p = 1: always the fallback
    assert torch.allclose(dropped, unknown, atol=1e-6)


def test_condition_dropout_rate_matches_config() -> None:
    torch.manual_seed(0)
    n, p = 20000, 0.25
    frac = dropout_mask(n, p, "cpu").float().mean().item()
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert not dropout_mask(100, 0.0, "cpu").any()
    assert dropout_mask(100, 1.0, "cpu").all()


@pytest.mark.parametrize(("p", "all_null"), [(1.0, True), (0.0, False)])
def test_unet_sees_the_learned_null_condition_when_dropped(p: float, all_null: bool) -> None:
    model = build(tiny(f"model.diffusion.cond_dropout={p}"))
    seen: dict[str, torch.Tensor] = {}

    def grab(_module, _args, kwargs):
        seen["tokens"] = kwargs["encoder_hidden_states"]
        seen["vector"] = kwargs["class_labels"]

    model.unet.register_forward_pre_hook(grab, with_kwargs=True)
    model(make_batch(model), "diffusion")
    null = model.null_condition(6)
    is_null = torch.isclose(seen["tokens"], null.tokens).flatten(1).all(dim=1)
    vec_null = torch.isclose(seen["vector"], null.vector).all(dim=1)
    assert bool(is_null.all()) is all_null and bool(is_null.any()) is all_null
    assert torch.equal(is_null, vec_null)


def test_reference_variant_null_is_zero_and_single_concat_token() -> None:
    model = build(tiny("model.variant=reference"))
    null = model.null_condition(3)
    assert null.tokens.shape == (3, 1, model.unet.config.cross_attention_dim)
    assert not null.tokens.any() and null.vector is None
    assert model.unet.config.class_embed_type is None


def _cond_and_latents(model: SGDM):
    batch = make_batch(model, b=4)
    model.eval()
    cond = model.condition(batch["eeg"], batch["subject"])
    latents = torch.randn(4, *model.latent_shape)
    return batch, cond, latents


@torch.no_grad()
def test_cfg_scale_one_equals_conditional_and_zero_unconditional() -> None:
    model = build(tiny())
    _, cond, latents = _cond_and_latents(model)
    t = torch.full((4,), 40)
    conditional = model.denoise(latents, t, cond)
    unconditional = model.denoise(latents, t, model.null_condition(4))
    assert not torch.allclose(conditional, unconditional, atol=1e-4)  # the condition matters
    assert torch.allclose(model.guided_prediction(latents, 40, cond, 1.0), conditional, atol=1e-5)
    assert torch.allclose(model.guided_prediction(latents, 40, cond, 0.0), unconditional, atol=1e-5)
    guided = model.guided_prediction(latents, 40, cond, 3.0)
    assert torch.allclose(guided, unconditional + 3 * (conditional - unconditional), atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_reconstruct_is_deterministic_per_seed_and_batch_size(sampler: str) -> None:
    model = build(tiny())
    batch = make_batch(model, b=5)
    kw = dict(vae=None, steps=4, guidance_scale=2.0, scheduler=sampler)
    a = model.reconstruct(batch["eeg"], batch["subject"], seed=1, batch_size=5, **kw)
    b = model.reconstruct(batch["eeg"], batch["subject"], seed=1, batch_size=2, **kw)
    c = model.reconstruct(batch["eeg"], batch["subject"], seed=2, batch_size=5, **kw)
    assert a.shape == (5, *model.latent_shape)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)
    assert model.training  # restored after sampling


def test_reconstruct_decodes_with_vae_to_unit_range() -> None:
    model = build(tiny())
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=16,
    ).eval()
    batch = make_batch(model, b=3)
    images = model.reconstruct(batch["eeg"], batch["subject"], vae=vae, steps=2, seed=0)
    again = model.reconstruct(batch["eeg"], batch["subject"], vae=vae, steps=2, seed=0)
    assert images.shape == (3, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    assert torch.equal(images, again)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_short_training_lowers_diffusion_loss(prediction: str) -> None:
    model = build(tiny(f"model.diffusion.prediction_type={prediction}", "model.lambda_align=0"))
    batch = make_batch(model, b=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def eval_loss() -> float:
        torch.manual_seed(123)  # the same timesteps and noise each time
        with torch.no_grad():
            return model(batch, "diffusion")["loss/diffusion"].item()

    before = eval_loss()
    for step in range(40):
        torch.manual_seed(step)
        opt.zero_grad()
        model(batch, "diffusion")["loss"].backward()
        opt.step()
    after = eval_loss()
    assert after < 0.8 * before


def test_gradient_checkpointing_gives_same_gradients() -> None:
    cfg = tiny("model.encoder.dropout=0", "model.semantic.dropout=0")
    ref, ckpt = build(cfg), build(cfg)
    ckpt.enable_gradient_checkpointing()
    batch = make_batch(ref)
    for m in (ref, ckpt):
        torch.manual_seed(5)
        m(batch, "diffusion")["loss"].backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name


def test_structure_head_is_a_loss_term_in_every_stage_and_can_be_off() -> None:
    model = build(tiny())
    batch = make_batch(model)
    for stage in ("align", "diffusion"):
        model.zero_grad()
        out = model(batch, stage)
        assert "loss/structure" in out
        out["loss"].backward()
        grad = model.structure.net[-1].weight.grad
        assert grad is not None and grad.abs().sum() > 0
    off = build(tiny("model.lambda_structure=0"))
    assert off.structure is None and "loss/structure" not in off(batch, "align")


def test_structure_strength_sets_where_sampling_starts() -> None:
    model = build(tiny()).eval()
    batch = make_batch(model, b=3)
    eeg, subject = batch["eeg"], batch["subject"]
    with torch.no_grad():
        structure = model.structure(model.encoder(eeg, subject).z)
    # 0: the EEG's predicted structure itself, whatever the seed.
    for seed in (0, 1):
        got = model.sample_latents(eeg, subject, steps=4, strength=0.0, seed=seed)
        torch.testing.assert_close(got, structure)
    # 1: pure noise; the structure head plays no part.
    full = model.sample_latents(eeg, subject, steps=4, strength=1.0)
    with torch.no_grad():
        model.structure.net[-1].bias.add_(5.0)
    torch.testing.assert_close(model.sample_latents(eeg, subject, steps=4, strength=1.0), full)
    # In between: fewer denoising steps run, and the start depends on the structure.
    partial = model.sample_latents(eeg, subject, steps=4, strength=0.5)
    assert not torch.allclose(partial, full)
    with pytest.raises(ValueError, match="strength must be in"):
        model.sample_latents(eeg, subject, steps=4, strength=1.5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_the_paper(prediction: str) -> None:
    """Min-SNR-γ (Hang et al. 2023): ε-loss weight min(SNR, γ)/SNR; v-loss weight min(SNR, γ)/(SNR+1)."""
    from diffusers import DDPMScheduler

    from sgdm_dist.models.diffusion import min_snr_weights

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction)
    t = torch.tensor([0, 10, 300, 999])
    a = scheduler.alphas_cumprod[t].double()
    snr = a / (1 - a)
    expected = snr.clamp(max=5.0) / (snr + 1 if prediction == "v_prediction" else snr)
    got = min_snr_weights(scheduler, t, 5.0)
    assert got.shape == (4,)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)
    assert got[-1] == pytest.approx(
        1.0 if prediction == "epsilon" else float(expected[-1]), rel=1e-4
    )
    assert min_snr_weights(scheduler, t, None) is None
