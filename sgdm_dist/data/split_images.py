"""The image side of ``prepare``: stimulus tables per split, their CLIP/VAE features and text embeddings.

The training partition's images are split into train/val (seeded), the test partition is the test
split. Every split gets its features (content-addressed cache), its concept text embeddings and a
``{split}_images.npz`` table (the retrieval targets); :mod:`sgdm_dist.data.prepare` then cuts the EEG
trials against these tables.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sgdm_dist.config import Config
from sgdm_dist.data import DataError
from sgdm_dist.data.sources import ImageRecord, scan_images
from sgdm_dist.utils.atomic import atomic_write

if TYPE_CHECKING:
    from sgdm_dist.config.data import FeatureConfig
    from sgdm_dist.data.feature_cache import FeatureCache, ImageFeatures
    from sgdm_dist.data.features import ClipEncoder, VaeEncoder

log = logging.getLogger(__name__)


@dataclass
class SplitImages:
    """The unique images of one split, in image_index order."""

    records: list[ImageRecord]
    concepts: list[str]  # concept folder names; index = concept id within the split
    clip: np.ndarray  # [N, D]
    latent: np.ndarray  # [N, 4, h, w]
    png: list[bytes] | None  # stimulus at features.image_size, when the split stores images


def assign_splits(train_records: list[ImageRecord], cfg: Config) -> dict[int, str]:
    """Training-partition condition → "train" | "val" (seeded; never touches the test partition)."""
    rng = np.random.default_rng([cfg.experiment.seed, 3])
    frac = cfg.data.val_fraction
    if cfg.data.val_by == "concept":
        concepts = sorted({r.concept for r in train_records})
        n_val = round(frac * len(concepts))
        if frac > 0 and len(concepts) > 1:
            n_val = max(n_val, 1)
        val = set(rng.permutation(concepts)[:n_val].tolist())
        return {r.condition: "val" if r.concept in val else "train" for r in train_records}
    by_concept: dict[str, list[ImageRecord]] = {}
    for r in train_records:
        by_concept.setdefault(r.concept, []).append(r)
    out = {}
    for recs in by_concept.values():
        n_val = round(frac * len(recs))
        chosen = {recs[i].condition for i in rng.permutation(len(recs))[:n_val]}
        out.update({r.condition: "val" if r.condition in chosen else "train" for r in recs})
    return out


def build_images(
    cfg: Config, out_dir: Path, progress: bool = True
) -> tuple[dict[str, SplitImages], dict, dict]:
    """Image tables, features (cached) and text embeddings; writes ``{split}_images.npz`` files."""
    from sgdm_dist.data.feature_cache import FeatureCache, compute_features, text_features

    per_split = _records_per_split(cfg)
    fcfg = cfg.data.features
    clip, vae = _encoders(cfg, out_dir / "encoders", per_split)
    cache = FeatureCache(cfg.data.cache_dir)
    images: dict[str, SplitImages] = {}
    text: dict[str, np.ndarray] = {}
    for split, recs in per_split.items():
        feats = compute_features(
            [r.path for r in recs], clip, vae, cache, fcfg.batch_size, progress=progress
        )
        # Shards store float16; keep the retrieval table bit-identical to what batches carry.
        feats.clip = feats.clip.astype(np.float16).astype(np.float32)
        concepts = sorted({r.concept for r in recs})
        pngs = (
            [_png(r.path, fcfg.image_size) for r in recs]
            if split in cfg.data.image_splits
            else None
        )
        images[split] = SplitImages(recs, concepts, feats.clip, feats.latent, pngs)
        names = [ImageRecord("training", 0, c, Path()).concept_name for c in concepts]
        text[f"{split}_names"] = np.array(concepts)
        text[f"{split}_text"] = text_features(names, clip, cache, fcfg.batch_size)
        _write_image_table(out_dir / f"{split}_images.npz", recs, concepts, feats)
    _write_npz(out_dir / "text_embeddings.npz", **text)
    log.info(
        "features: %d cache hits, %d misses (%s)", cache.hits, cache.misses, cfg.data.cache_dir
    )
    enc = {"clip": clip.info, "vae": vae.info}
    return images, enc, _feature_meta(fcfg, clip, vae, cache)


def _records_per_split(cfg: Config) -> dict[str, list[ImageRecord]]:
    """The stimulus images of ``data.image_dir`` by split: train, val (seeded), test."""
    if cfg.data.image_dir is None:
        raise DataError("data.image_dir is not set: stimulus images are needed for features")
    table = scan_images(cfg.data.image_dir)
    split_of = assign_splits(table["training"], cfg)
    return {
        "train": [r for r in table["training"] if split_of[r.condition] == "train"],
        "val": [r for r in table["training"] if split_of[r.condition] == "val"],
        "test": list(table["test"]),
    }


def _encoders(
    cfg: Config, enc_dir: Path, per_split: dict[str, list[ImageRecord]]
) -> tuple[ClipEncoder, VaeEncoder]:
    """The CLIP and VAE encoders, loaded, or made under ``enc_dir`` when no weights are given."""
    from sgdm_dist.data.features import ClipEncoder, VaeEncoder

    fcfg = cfg.data.features
    clip = ClipEncoder(fcfg, enc_dir, cfg.experiment.seed)
    # No VAE weights given → an autoencoder trained on the train split, scored on val + test (#14).
    vae = VaeEncoder(
        fcfg,
        enc_dir,
        cfg.experiment.seed + 1,
        train_images=[r.path for r in per_split["train"]],
        held_out=[r.path for r in per_split["val"] + per_split["test"]],
    )
    return clip, vae


def _feature_meta(
    fcfg: FeatureConfig, clip: ClipEncoder, vae: VaeEncoder, cache: FeatureCache
) -> dict[str, Any]:
    """What the manifest records about the features (``cache`` is the run's hit count, not kept)."""
    return {
        "clip_model": fcfg.clip_model,
        "clip_pretrained": fcfg.clip_pretrained,
        "clip_id": clip.info.model_id,
        "vae": fcfg.vae,
        "vae_id": vae.info.model_id,
        "vae_scaling_factor": vae.scaling,
        "vae_training": vae.info.training,
        "image_size": fcfg.image_size,
        "random_init": {"clip": clip.info.random_init, "vae": vae.info.random_init},
        "cache_keys": {"clip": clip.info.key, "vae": vae.info.key},
        "cache": {"hits": cache.hits, "misses": cache.misses},
    }


def _write_image_table(
    path: Path, recs: list[ImageRecord], concepts: list[str], feats: ImageFeatures
) -> None:
    """One split's ``{split}_images.npz``: image_index [N], clip [N, D] and ids of every image."""
    _write_npz(
        path,
        image_index=np.arange(len(recs), dtype=np.int64),
        clip=feats.clip,
        image_id=np.array([r.image_id for r in recs]),
        concept=np.array([concepts.index(r.concept) for r in recs], dtype=np.int64),
        condition=np.array([r.condition for r in recs], dtype=np.int64),
        sha256=np.array(feats.sha256),
    )


def _png(path: Path, size: int) -> bytes:
    """The stimulus at ``path`` resized to ``size`` × ``size`` px, as PNG bytes."""
    from PIL import Image

    from sgdm_dist.data.features import to_tensor

    with Image.open(path) as im:
        arr = (to_tensor(im, size).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` of ``arrays`` to ``path``, atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
