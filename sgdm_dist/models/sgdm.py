"""SGDM: EEG encoder → semantic head (EEG → CLIP) → multi-scale conditioning → conditional latent UNet.

Training (``forward(batch, stage)``):
  align      contrastive(ẑ_sem, clip) (+ λ_mse cosine, + λ_cls concept CE); the UNet is not run.
  diffusion  λ_diff·diffusion + λ_align·(align terms); condition dropped to a learned null at
  joint      ``cond_dropout`` for classifier-free guidance. "joint" is "diffusion" from step 0.
Sampling (``reconstruct``): DDIM or DPM-Solver++, CFG between the EEG condition and the null condition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn

from sgdm_dist.config.model import ModelConfig
from sgdm_dist.models import export
from sgdm_dist.models.conditioning import Condition, MultiScaleConditioning, dropout_mask
from sgdm_dist.models.diffusion import (
    Sampler,
    diffusion_target,
    guide,
    make_sampler,
    make_train_scheduler,
    min_snr_weights,
    timestep_batch,
)
from sgdm_dist.models.encoder import EEGEncoder, EncoderOutput
from sgdm_dist.models.encoders import make_encoder
from sgdm_dist.models.reference import ReferenceConditioning, ReferenceEncoder
from sgdm_dist.models.semantic import (
    SemanticHead,
    classification_loss,
    contrastive_loss,
    cosine_loss,
    in_batch_top1,
)
from sgdm_dist.models.structure import (
    StructureHead,
    noised_start,
    start_timesteps,
    structure_loss,
)

Stage = Literal["align", "diffusion", "joint"]
STAGES: tuple[str, ...] = ("align", "diffusion", "joint")


class SGDM(nn.Module):
    """The whole trainable model. Holds no frozen CLIP or VAE: their features come from the shards."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        n_channels: int,
        n_times: int,
        n_subjects: int,
        unet: UNet2DConditionModel,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_channels, self.n_times, self.n_subjects = n_channels, n_times, n_subjects
        cross = unet.config.cross_attention_dim
        dims = dict(n_channels=n_channels, n_times=n_times, n_subjects=n_subjects)
        if cfg.variant == "reference":
            self.encoder: EEGEncoder | ReferenceEncoder = ReferenceEncoder(cfg.encoder, **dims)
            self.conditioning: MultiScaleConditioning | ReferenceConditioning = (
                ReferenceConditioning(
                    eeg_dim=cfg.encoder.dim, clip_dim=cfg.clip_dim, cross_attention_dim=cross
                )
            )
        else:
            self.encoder = make_encoder(cfg.encoder, **dims)
            self.conditioning = MultiScaleConditioning(
                cfg.conditioning,
                eeg_dim=cfg.encoder.dim,
                n_eeg_tokens=cfg.encoder.n_tokens,
                clip_dim=cfg.clip_dim,
                cross_attention_dim=cross,
            )
        self.semantic = SemanticHead(cfg.semantic, in_dim=cfg.encoder.dim, clip_dim=cfg.clip_dim)
        self.classifier = (
            nn.Linear(cfg.encoder.dim, cfg.n_classes) if cfg.n_classes is not None else None
        )
        self.unet = unet
        self.noise_scheduler = make_train_scheduler(cfg.diffusion)
        self._check_unet()
        # Structure guidance (models/structure.py): z_eeg → the coarse latent sampling starts from.
        self.structure = (
            StructureHead(cfg.encoder.dim, self.latent_shape, hidden=2 * cfg.encoder.dim)
            if cfg.lambda_structure > 0
            else None
        )

    # ---------------------------------------------------------------- building blocks
    def _check_unet(self) -> None:
        want = self.conditioning.vector_dim
        have = self.unet.config.projection_class_embeddings_input_dim
        if self.unet.config.class_embed_type not in (None, "projection") or (want != have):
            raise ValueError(
                f"UNet added-embedding input {have} (class_embed_type "
                f"{self.unet.config.class_embed_type!r}) does not match the conditioning's {want}"
            )
        if self.unet.config.in_channels != self.cfg.unet.latent_channels:
            raise ValueError(
                f"UNet takes {self.unet.config.in_channels} latent channels, "
                f"model.unet.latent_channels is {self.cfg.unet.latent_channels}"
            )
        size = self.cfg.unet.latent_size
        self.latent_shape = (self.cfg.unet.latent_channels, size, size)

    @property
    def device(self) -> torch.device:
        return self.semantic.logit_scale.device

    def encode(self, eeg: Tensor, subject: Tensor) -> tuple[EncoderOutput, Tensor]:
        """eeg [B, C, T], subject [B] (1-based, 0 = unknown) → (encoder output, ẑ_sem [B, D_clip]).

        ẑ_sem is the head's unit direction in centred CLIP space (see SemanticHead); ``predict_clip``
        maps it onto the raw CLIP sphere."""
        out = self.encoder(eeg, subject)
        return out, self.semantic(out.z)

    def condition(self, eeg: Tensor, subject: Tensor) -> Condition:
        """The UNet condition for a batch of EEG (no dropout)."""
        out, z_sem = self.encode(eeg, subject)
        return self.conditioning(out.z, out.tokens, z_sem)

    def null_condition(self, batch: int) -> Condition:
        return self.conditioning.null(batch)

    def denoise(self, latents: Tensor, timesteps: Tensor, cond: Condition) -> Tensor:
        """UNet prediction (ε or v, per config) [B, 4, h, w] for noisy latents at timesteps [B]."""
        return self.unet(
            latents,
            timesteps,
            encoder_hidden_states=cond.tokens,
            class_labels=cond.vector,
            return_dict=False,
        )[0]

    def guided_prediction(
        self, latents: Tensor, t: Tensor | int, cond: Condition, guidance_scale: float
    ) -> Tensor:
        """CFG prediction: one UNet call on [null; cond], combined with ``guide``."""
        b = latents.shape[0]
        both = self.null_condition(b).cat(cond)
        timesteps = timestep_batch(t, 2 * b, latents.device)
        uncond, conditional = self.denoise(torch.cat([latents, latents]), timesteps, both).chunk(2)
        return guide(uncond, conditional, guidance_scale)

    # ---------------------------------------------------------------- training
    def forward(self, batch: dict[str, Tensor], stage: Stage) -> dict[str, Tensor]:
        """Losses for one batch: ``loss`` (the total to backpropagate), each term and scalars."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
        self._check_batch(batch, stage)
        cfg = self.cfg
        out, z_sem = self.encode(batch["eeg"], batch["subject"])
        image_index = batch.get("image_index")
        clip = batch["clip"].to(z_sem.dtype)
        if self.training:
            self.semantic.observe(clip)
        target = self.semantic.center(clip)
        scale = self.semantic.scale()
        terms: dict[str, Tensor] = {
            "loss/align": contrastive_loss(z_sem, target, scale, image_index),
            "loss/mse": cosine_loss(z_sem, target),
        }
        align = cfg.lambda_align * terms["loss/align"] + cfg.lambda_mse * terms["loss/mse"]
        if self.classifier is not None:
            terms["loss/cls"] = classification_loss(self.classifier(out.z), batch["concept"])
            align = align + cfg.lambda_cls * terms["loss/cls"]
        scalars = {
            "logit_scale": scale.detach(),
            "acc/align_top1": in_batch_top1(z_sem.detach(), target, image_index),
        }
        if self.structure is not None and "latent" in batch:
            terms["loss/structure"] = structure_loss(self.structure(out.z), batch["latent"])
            align = align + cfg.lambda_structure * terms["loss/structure"]
        if stage == "align":
            return {"loss": align, **terms, **scalars}

        latent = batch["latent"]
        b = latent.shape[0]
        cond = self.conditioning(out.z, out.tokens, z_sem)
        dropped = dropout_mask(b, cfg.diffusion.cond_dropout, latent.device)
        # torch.where keeps the null parameters in the graph even when no row is dropped (DDP-safe).
        cond = cond.select(dropped, self.null_condition(b))
        noise = torch.randn_like(latent)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (b,), device=latent.device
        )
        noisy = self.noise_scheduler.add_noise(latent, noise, timesteps)
        target = diffusion_target(self.noise_scheduler, latent, noise, timesteps)
        pred = self.denoise(noisy, timesteps, cond)
        per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        weights = min_snr_weights(self.noise_scheduler, timesteps, cfg.diffusion.min_snr_gamma)
        if weights is not None:
            per_sample = per_sample * weights
        terms["loss/diffusion"] = per_sample.mean()
        scalars["cond_drop_frac"] = dropped.float().mean()
        return {"loss": terms["loss/diffusion"] + align, **terms, **scalars}

    def _check_batch(self, batch: dict[str, Tensor], stage: str) -> None:
        needed = ["eeg", "subject", "clip"]
        if stage != "align" or self.structure is not None:
            needed.append("latent")
        if self.classifier is not None:
            needed.append("concept")
        missing = [k for k in needed if k not in batch]
        if missing:
            raise KeyError(f"batch for stage '{stage}' lacks key(s) {missing}; has {sorted(batch)}")
        if batch["clip"].shape[-1] != self.cfg.clip_dim:
            raise ValueError(
                f"batch 'clip' has width {batch['clip'].shape[-1]}, model.clip_dim is "
                f"{self.cfg.clip_dim}"
            )
        if "latent" in needed and tuple(batch["latent"].shape[1:]) != self.latent_shape:
            raise ValueError(
                f"batch 'latent' has shape {list(batch['latent'].shape[1:])} per sample, the UNet "
                f"takes {list(self.latent_shape)} (model.unet.latent_channels / latent_size)"
            )

    def enable_gradient_checkpointing(self) -> None:
        """Recompute encoder blocks and UNet blocks in backward to save activation memory."""
        self.unet.enable_gradient_checkpointing()
        self.encoder.gradient_checkpointing = True

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_clip(self, eeg: Tensor, subject: Tensor) -> Tensor:
        """The EEG-predicted CLIP image embedding [B, D_clip], L2-normalised, in eval mode (for
        retrieval against raw cached CLIP embeddings)."""
        with _eval_mode(self):
            z_sem = self.encode(eeg.to(self.device), subject.to(self.device))[1]
            return self.semantic.to_clip(z_sem)

    @torch.no_grad()
    def sample_latents(
        self,
        eeg: Tensor,
        subject: Tensor,
        *,
        steps: int = 25,
        guidance_scale: float = 3.0,
        scheduler: Sampler = "ddim",
        seed: int = 0,
        batch_size: int = 16,
        strength: float | None = None,
    ) -> Tensor:
        """Latents [B, 4, h, w] sampled with CFG; the same seed gives the same latents for any
        ``batch_size`` (all initial noise is drawn up front from a CPU generator).

        ``strength`` (None → ``model.structure_strength``): with a structure head, sampling starts
        from the EEG's predicted latent noised that far into the schedule (models/structure.py);
        1 (or no head) starts from pure noise."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        strength = self.cfg.structure_strength if strength is None else strength
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"structure strength must be in [0, 1], got {strength}")
        if self.structure is None:
            strength = 1.0
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((eeg.shape[0], *self.latent_shape), generator=generator)
        chunks = []
        with _eval_mode(self):
            for start in range(0, eeg.shape[0], batch_size):
                sl = slice(start, start + batch_size)
                out, z_sem = self.encode(eeg[sl].to(self.device), subject[sl].to(self.device))
                cond = self.conditioning(out.z, out.tokens, z_sem)
                sampler = make_sampler(self.noise_scheduler, scheduler)
                sampler.set_timesteps(steps, device=self.device)
                timesteps = sampler.timesteps
                latents = noise[sl].to(self.device) * sampler.init_noise_sigma
                if strength < 1.0:
                    assert self.structure is not None
                    timesteps, _ = start_timesteps(sampler, steps, strength)
                    structure = self.structure(out.z)
                    latents = (
                        noised_start(sampler, structure, noise[sl].to(self.device), timesteps[0])
                        if len(timesteps)
                        else structure
                    )
                for t in timesteps:
                    model_in = sampler.scale_model_input(latents, t)
                    pred = self.guided_prediction(model_in, t, cond, guidance_scale)
                    latents = sampler.step(pred, t, latents, return_dict=False)[0]
                chunks.append(latents.float())
        return torch.cat(chunks)

    @staticmethod
    def decode_raw(latents: Tensor, vae: AutoencoderKL) -> Tensor:
        """One batch of VAE latents (× scaling factor, as cached) → images [B, 3, H, W] in about
        [0, 1]: unclamped and differentiable (the structure refit trains through it)."""
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        x = vae.decode(latents / vae.config.scaling_factor + shift, return_dict=False)[0]
        return (x.float() + 1) / 2

    @staticmethod
    @torch.no_grad()
    def decode_latents(latents: Tensor, vae: AutoencoderKL, batch_size: int = 16) -> Tensor:
        """VAE latents (× scaling factor, as cached in the shards) → images [B, 3, H, W] in [0, 1]."""
        param = next(vae.parameters())
        images = []
        for start in range(0, latents.shape[0], batch_size):
            z = latents[start : start + batch_size].to(param.device, param.dtype)
            images.append(SGDM.decode_raw(z, vae).clamp(0, 1))
        return torch.cat(images)

    def reconstruct(
        self,
        eeg: Tensor,
        subject: Tensor,
        *,
        vae: AutoencoderKL | None,
        steps: int = 25,
        guidance_scale: float = 3.0,
        scheduler: Sampler = "ddim",
        seed: int = 0,
        batch_size: int = 16,
        strength: float | None = None,
    ) -> Tensor:
        """Images [B, 3, H, W] in [0, 1] decoded by ``vae``; latents [B, 4, h, w] when vae is None."""
        latents = self.sample_latents(
            eeg,
            subject,
            steps=steps,
            guidance_scale=guidance_scale,
            scheduler=scheduler,
            seed=seed,
            batch_size=batch_size,
            strength=strength,
        )
        if vae is None:
            return latents
        return self.decode_latents(latents, vae, batch_size=batch_size)

    # ---------------------------------------------------------------- persistence
    def config_dict(self) -> dict[str, Any]:
        return export.config_dict(self)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the model folder (diffusers layout: :mod:`sgdm_dist.models.export`) atomically."""
        return export.write_model_dir(self, path)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu") -> SGDM:
        """Load a folder written by :meth:`save_pretrained` (safetensors only, nothing unpickled)."""
        parts = export.read_model_parts(path)
        model = cls(parts.cfg, unet=parts.unet, **parts.dims)
        export.load_weights(model, parts)  # on the CPU: safetensors rejects strings like "cpu:0"
        return model.to(device)


class _eval_mode:
    """Context manager: eval mode inside, the previous train/eval flag restored after."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> nn.Module:
        self.was_training = self.module.training
        self.module.eval()
        return self.module

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)
