"""The content-addressed feature cache and the batched CLIP + VAE (and text) feature computation:
each unique image is encoded once, keyed by its sha256 and the encoder's identity."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sgdm_dist.data.features import ClipEncoder, VaeEncoder, cache_key, open_image
from sgdm_dist.data.io import atomic_save_npy, sha256_file

log = logging.getLogger(__name__)


class FeatureCache:
    """Per-image features keyed by (encoder key, image sha256): ``{root}/{kind}-{key}/{sha}.npy``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, key: str, sha: str) -> Path:
        return self.root / f"{kind}-{key[:16]}" / f"{sha}.npy"

    def get(self, kind: str, key: str, sha: str) -> np.ndarray | None:
        p = self.path(kind, key, sha)
        if p.exists():
            try:
                value = np.load(p, allow_pickle=False)
                self.hits += 1
                return value
            except (ValueError, OSError, EOFError) as exc:
                # A damaged cache entry is only a cache miss: name it, drop it, recompute it.
                log.warning("feature cache: %s is corrupt (%s); recomputing it", p, exc)
                p.unlink(missing_ok=True)
        self.misses += 1
        return None

    def put(self, kind: str, key: str, sha: str, value: np.ndarray) -> None:
        atomic_save_npy(self.path(kind, key, sha), value)


@dataclass
class ImageFeatures:
    clip: np.ndarray  # [N, D] float32, L2-normalised
    latent: np.ndarray  # [N, 4, h, w] float32, × scaling factor
    sha256: list[str]


def compute_features(
    paths: list[Path],
    clip: ClipEncoder,
    vae: VaeEncoder,
    cache: FeatureCache,
    batch_size: int,
    progress: bool = True,
) -> ImageFeatures:
    """CLIP + VAE features of every image, computing only cache misses (batched)."""
    shas = [sha256_file(p) for p in paths]
    clips: list[np.ndarray | None] = [cache.get("clip", clip.info.key, s) for s in shas]
    lats: list[np.ndarray | None] = [cache.get("vae", vae.info.key, s) for s in shas]
    todo = [i for i in range(len(paths)) if clips[i] is None or lats[i] is None]
    # The long part of `sgdm prepare` on real data (16.7k THINGS images through CLIP and the VAE).
    bar = tqdm(
        total=len(todo),
        desc="image features (CLIP + VAE)",
        unit="img",
        disable=not (progress and todo),
    )
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        ims = [open_image(paths[i]) for i in idx]
        c, z = clip.images(ims), vae.latents(ims)
        for j, i in enumerate(idx):
            clips[i], lats[i] = c[j], z[j]
            cache.put("clip", clip.info.key, shas[i], c[j])
            cache.put("vae", vae.info.key, shas[i], z[j])
        bar.update(len(idx))
    bar.close()
    return ImageFeatures(
        np.stack(clips).astype(np.float32), np.stack(lats).astype(np.float32), shas
    )


def text_features(
    names: list[str], clip: ClipEncoder, cache: FeatureCache, batch_size: int
) -> np.ndarray:
    """Text embeddings [K, D] of prompts like ``"a photo of a aardvark"``, cached by prompt hash."""
    prompts = [f"a photo of a {n}" for n in names]
    keys = [cache_key(p) for p in prompts]
    out: list[np.ndarray | None] = [cache.get("text", clip.info.key, k) for k in keys]
    todo = [i for i, v in enumerate(out) if v is None]
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        emb = clip.texts([prompts[i] for i in idx])
        for j, i in enumerate(idx):
            out[i] = emb[j]
            cache.put("text", clip.info.key, keys[i], emb[j])
    if not out:
        return np.zeros((0, clip.dim), np.float32)
    return np.stack(out).astype(np.float32)
