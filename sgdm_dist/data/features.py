"""Frozen image encoders whose outputs are cached in the shards: open_clip embeddings, VAE latents.

Encoders come from real weights (open_clip pretrained tag or local checkpoint; diffusers hub id or
local folder) or, when none are given, from a seeded random init that is LOUDLY warned about and
saved under ``{shard_dir}/encoders/`` so that later stages decode with the very same VAE.
Features are cached per image in a content-addressed store: ``{cache_dir}/{kind}-{model_key}/
{image_sha256}.npy``, so re-running ``prepare`` never recomputes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sgdm_dist.config.data import FeatureConfig
from sgdm_dist.data import DataError
from sgdm_dist.data.io import atomic_write_json, sha256_file
from sgdm_dist.utils.atomic import atomic_write, write_dir_atomically

log = logging.getLogger(__name__)


TINY_CLIP = "sgdm-tiny-clip"


TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
}


def register_tiny_clip(config_dir: Path) -> None:
    """Make ``sgdm-tiny-clip`` known to open_clip (``add_model_config`` reads JSON files)."""
    import open_clip

    if TINY_CLIP in open_clip.list_models():
        return
    path = Path(config_dir) / f"{TINY_CLIP}.json"
    if not path.exists():
        atomic_write_json(path, TINY_CLIP_CONFIG)
    open_clip.add_model_config(path)


def _device(cfg: FeatureConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _warn_random(what: str, path: Path) -> None:
    msg = (
        f"\n{'!' * 78}\n!! {what}: NO WEIGHTS GIVEN → RANDOM INIT (seeded). Features are meaningless for"
        f"\n!! real images; fine for tests and the synthetic demo. Saved to {path}\n{'!' * 78}"
    )
    log.warning(msg)


@dataclass
class EncoderInfo:
    """What the manifest records about an encoder: id, where to reload it, cache key."""

    model_id: str
    path: str | None  # saved weights (random init) or the local/hub id used
    key: str  # content-addressed cache key
    random_init: bool
    saved_with_shards: bool = False  # weights made by prepare (random or trained), under encoders/
    training: dict[str, Any] | None = None  # a trained autoencoder's record (data/autoencoder.py)


class ClipEncoder:
    """open_clip model → L2-normalised image embeddings [N, D] and text embeddings [K, D]."""

    def __init__(self, cfg: FeatureConfig, encoders_dir: Path, seed: int) -> None:
        import open_clip

        register_tiny_clip(Path(encoders_dir) / "clip")
        self.device = _device(cfg)
        arch = cfg.clip_model
        if cfg.clip_pretrained is None:
            save = Path(encoders_dir) / "clip"
            weights = save / "model.safetensors"
            if not weights.exists():
                torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
            if weights.exists():
                _load_safetensors(model, weights)
            else:
                _save_clip(model, arch, save)
                _warn_random(f"CLIP {arch}", save)
            self.info = EncoderInfo(
                f"{arch}:random-seed-{seed}", str(save), sha256_file(weights), True
            )
        else:
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch, pretrained=cfg.clip_pretrained
                )
            except Exception as exc:
                raise DataError(
                    f"data.features: cannot load open_clip {arch} / {cfg.clip_pretrained}: {exc}"
                ) from None
            mid = f"{arch}:{cfg.clip_pretrained}"
            self.info = EncoderInfo(mid, cfg.clip_pretrained, cache_key(mid), False)
        self.model = model.eval().to(self.device)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.dim = int(open_clip.get_model_config(arch)["embed_dim"])

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> np.ndarray:
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        e = self.model.encode_image(x).float()
        return torch.nn.functional.normalize(e, dim=-1).cpu().numpy()

    @torch.no_grad()
    def texts(self, texts: list[str]) -> np.ndarray:
        tok = self.tokenizer(texts).to(self.device)
        e = self.model.encode_text(tok).float()
        return torch.nn.functional.normalize(e, dim=-1).cpu().numpy()


class VaeEncoder:
    """diffusers AutoencoderKL → latent means × scaling factor [N, 4, H/8, W/8].

    With ``cfg.vae`` None: the autoencoder saved under ``encoders_dir/vae`` (a resumed prepare), else
    one trained on ``train_images`` (``cfg.autoencoder_steps`` > 0, data/autoencoder.py) and scored
    on ``held_out`` images, else a seeded random one (loudly warned about)."""

    def __init__(
        self,
        cfg: FeatureConfig,
        encoders_dir: Path,
        seed: int,
        train_images: list[Path] | None = None,
        held_out: list[Path] | None = None,
    ) -> None:
        from diffusers import AutoencoderKL

        self.device = _device(cfg)
        self.size = cfg.image_size
        if cfg.vae is None:
            save = Path(encoders_dir) / "vae"
            if not (save / "config.json").exists():
                self._make_local(cfg, save, seed, train_images or [], held_out or [])
            vae = AutoencoderKL.from_pretrained(save)
            weights = next(save.glob("*.safetensors"))
            record = _read_training(save)
            kind = "trained-ae" if record else "tiny-vae:random"
            self.info = EncoderInfo(
                f"{kind}-seed-{seed}",
                str(save),
                sha256_file(weights),
                record is None,
                saved_with_shards=True,
                training=record,
            )
        else:
            if cfg.vae.startswith(("/", ".", "~")) and not Path(cfg.vae).expanduser().is_dir():
                raise DataError(
                    f"data.features.vae: cannot load AutoencoderKL '{cfg.vae}': no such folder"
                )
            try:
                vae = AutoencoderKL.from_pretrained(cfg.vae)
            except Exception as exc:
                raise DataError(
                    f"data.features.vae: cannot load AutoencoderKL '{cfg.vae}': {exc}"
                ) from None
            self.info = EncoderInfo(cfg.vae, cfg.vae, cache_key(cfg.vae), False)
        self.info.key = cache_key(f"{self.info.key}|{self.size}")
        self.vae = vae.eval().to(self.device)
        self.scaling = float(vae.config.scaling_factor)

    def _make_local(
        self, cfg: FeatureConfig, save: Path, seed: int, train: list[Path], held_out: list[Path]
    ) -> None:
        from diffusers import AutoencoderKL

        from sgdm_dist.data import autoencoder as ae

        if cfg.autoencoder_steps == 0 or not train:
            torch.manual_seed(seed)
            vae = AutoencoderKL(sample_size=cfg.image_size, **TINY_VAE_CONFIG)
            write_dir_atomically(save, vae.save_pretrained)
            _warn_random("VAE", save)
            return
        log.info(
            "no VAE weights given: training a small autoencoder on %d training stimuli (%d steps)",
            len(train),
            cfg.autoencoder_steps,
        )
        load = lambda ps: torch.stack([to_tensor(open_image(p), cfg.image_size) for p in ps])  # noqa: E731
        vae, record = ae.train_autoencoder(
            load(train),
            steps=cfg.autoencoder_steps,
            batch_size=cfg.autoencoder_batch_size,
            lr=cfg.autoencoder_lr,
            seed=seed,
        )
        if len(held_out) >= 2:
            record["held_out_round_trip"] = ae.round_trip_scores(vae, load(held_out))
            log.info(
                "autoencoder round trip on held-out stimuli: %s", record["held_out_round_trip"]
            )
        ae.save_autoencoder(vae, record, save)

    @torch.no_grad()
    def latents(self, images: list[Image.Image]) -> np.ndarray:
        x = torch.stack([to_tensor(im, self.size) for im in images]).to(self.device)
        lat = self.vae.encode(x * 2 - 1).latent_dist.mean * self.scaling
        return lat.float().cpu().numpy()


def _read_training(save: Path) -> dict[str, Any] | None:
    """The training record of an autoencoder trained by prepare, without its loss curve."""
    from sgdm_dist.data.autoencoder import LOSS_CURVE

    path = save / LOSS_CURVE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    record.pop("curve", None)
    return {**record, "loss_curve": LOSS_CURVE}


def to_tensor(im: Image.Image, size: int) -> torch.Tensor:
    """PIL → float [3, size, size] in [0, 1]: centre-crop to square, bicubic resize."""
    im = im.convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != size:
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def cache_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _load_safetensors(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(path))


def _save_clip(model: torch.nn.Module, arch: str, save: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    save.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        save / "open_clip_config.json",
        {"model_name": arch, "model_cfg": open_clip.get_model_config(arch)},
    )
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(save / "model.safetensors", lambda tmp: save_file(state, str(tmp)))


def open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def load_vae(manifest_or_path: Any) -> Any:
    """The AutoencoderKL the shards were made with: from a Manifest, a shard dir, or a VAE folder/id."""
    from diffusers import AutoencoderKL

    from sgdm_dist.data.manifest import Manifest, read_manifest

    m = manifest_or_path
    if not isinstance(m, Manifest):
        p = Path(str(m))
        if (p / "manifest.json").exists():
            m = read_manifest(str(p))
        else:
            return AutoencoderKL.from_pretrained(str(m))
    return AutoencoderKL.from_pretrained(m.encoder_path("vae"))


def load_clip(manifest_or_path: Any) -> Any:
    """The open_clip model the shards were made with (random-init ones reloaded from their file)."""
    import open_clip

    from sgdm_dist.data.manifest import Manifest, read_manifest

    m = (
        manifest_or_path
        if isinstance(manifest_or_path, Manifest)
        else read_manifest(str(manifest_or_path))
    )
    path = Path(m.encoder_path("clip"))
    if (path / "model.safetensors").exists():
        cfg = json.loads((path / "open_clip_config.json").read_text())
        register_tiny_clip(path)
        model = open_clip.create_model(cfg["model_name"], pretrained=None)
        _load_safetensors(model, path / "model.safetensors")
        return model.eval()
    return open_clip.create_model(
        m.features["clip_model"], pretrained=m.encoder_path("clip")
    ).eval()
