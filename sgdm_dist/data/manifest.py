"""``manifest.json`` beside the shards: what they contain and how they were made.

Training refuses shards whose manifest does not match its config (:meth:`Manifest.check_compatible`);
:func:`manifest_hash` is the dataset's identity for MLflow tags.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, PrivateAttr

from sgdm_dist.data import DataError
from sgdm_dist.data.io import atomic_write_text, join_url, open_url, read_url

if TYPE_CHECKING:
    from sgdm_dist.config import Config

# The reference pick (names starting with O or P); same pattern as sgdm_dist.data.eeg.
OCCIPITAL_PARIETAL = "^O *|^P *"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
FORMAT_VERSIONS = (1,)  # manifest formats this version reads


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # path relative to the shard dir, e.g. "train/sub-01_ses-01-000000.tar"
    n_samples: int
    sha256: str
    subject: int
    session: int


class SplitInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shards: list[ShardEntry]
    n_samples: int
    per_subject: dict[int, int]  # subject → samples
    n_images: int
    concepts: list[str]  # index = the ``concept`` value of samples of this split
    images_file: str  # npz with image_index, clip, image_id, concept of the split's unique images
    has_images: bool  # samples carry img.png


class Manifest(BaseModel):
    """Everything a consumer needs to know about a shard set; see docs/data.md for the schema."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    package_version: str
    source: str
    ch_names: list[str]
    sfreq: float
    times: list[float]
    n_channels: int
    n_times: int
    eeg_unit: str  # "whitened" (MVNN) or "uV"
    clip_dim: int
    latent_shape: tuple[int, int, int]
    image_size: int
    subjects: list[int]
    sessions: dict[int, list[int]]  # subject → sessions
    n_concepts: int  # concepts of the train split (classifier classes)
    splits: dict[str, SplitInfo]
    preprocess: dict[str, Any]
    features: dict[str, Any]
    encoders: dict[str, str]  # "clip"/"vae" → saved folder (relative to the shard dir) or model id
    text_embeddings: str  # npz: per split, concept prompts' CLIP text embeddings
    seed: int
    _root: str = PrivateAttr(default="")

    @property
    def root(self) -> str:
        return self._root

    def encoder_path(self, name: str) -> str:
        """Absolute folder for encoders saved with the shards; the id itself for hub models."""
        value = self.encoders[name]
        if "://" in value or Path(value).is_absolute() or not self._root:
            return value
        local = Path(self._root) / value
        return str(local) if local.exists() else value

    def check_compatible(self, cfg: Config) -> None:
        """Raise :class:`DataError` naming every mismatch between these shards and ``cfg``."""
        problems: list[str] = []
        ch_problem = _channel_problem(cfg, self.ch_names)
        if ch_problem:
            problems.append(ch_problem)
        if abs(cfg.data.preprocess.resample_hz - self.sfreq) > 1e-6:
            problems.append(
                f"sfreq: data.preprocess.resample_hz={cfg.data.preprocess.resample_hz}, shards {self.sfreq}"
            )
        t0 = self.times[0] if self.times else None
        want_t0 = (
            cfg.data.preprocess.crop[0] if cfg.data.preprocess.crop else cfg.data.preprocess.tmin
        )
        if t0 is None or abs(t0 - want_t0) > 0.5 / self.sfreq:
            problems.append(f"times: config starts epochs at {want_t0} s, shards at {t0} s")
        if cfg.model.clip_dim != self.clip_dim:
            problems.append(
                f"clip_dim: model.clip_dim={cfg.model.clip_dim}, shards {self.clip_dim}"
            )
        u = cfg.model.unet
        want_lat = (u.latent_channels, u.latent_size, u.latent_size)
        if tuple(self.latent_shape) != want_lat:
            problems.append(
                f"latent shape: model.unet latent_channels/latent_size give {list(want_lat)}, "
                f"shards {list(self.latent_shape)}"
            )
        if problems:
            raise DataError(
                f"shards in {self._root or '?'} do not match the config:\n  "
                + "\n  ".join(problems)
            )


def _channel_problem(cfg: Config, ch_names: list[str]) -> str | None:
    spec = cfg.data.preprocess.channels
    if isinstance(spec, list):
        if list(spec) != ch_names:
            return (
                f"channels: config wants {len(spec)} {list(spec)}, "
                f"shards have {len(ch_names)} {ch_names}"
            )
    elif spec == "occipital_parietal":
        other = [c for c in ch_names if not re.match(OCCIPITAL_PARIETAL, c)]
        if other:
            return f"channels: config wants occipital/parietal channels, shards also have {other}"
    return None


def _join(root: str, name: str) -> str:
    return join_url(root, name)


def manifest_path(shard_dir: str) -> str:
    return _join(str(shard_dir), MANIFEST)


def read_manifest(shard_dir: str) -> Manifest:
    path = manifest_path(shard_dir)
    try:
        raw = read_url(path)
    except FileNotFoundError:
        raise DataError(f"no {MANIFEST} in {shard_dir}: run `sgdm prepare` first") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    try:
        m = Manifest.model_validate(json.loads(raw))
    except Exception as exc:
        raise DataError(f"{path}: not a valid manifest ({exc})") from None
    if m.format_version not in FORMAT_VERSIONS:
        raise DataError(
            f"{path}: format_version {m.format_version}, this sgdm-dist reads "
            f"{list(FORMAT_VERSIONS)}: re-run `sgdm prepare` with this version"
        )
    m._root = str(shard_dir)
    return m


def manifest_hash(shard_dir: str) -> str:
    """sha256 of the manifest file: identifies the exact shard set (it lists every shard's sha256)."""
    return hashlib.sha256(read_url(manifest_path(shard_dir))).hexdigest()


def manifest_json(m: Manifest) -> str:
    return json.dumps(m.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def write_manifest(m: Manifest, shard_dir: str | Path) -> Path:
    """Atomic, deterministic (sorted keys, no timestamps) so a re-run yields the same bytes."""
    return atomic_write_text(Path(shard_dir) / MANIFEST, manifest_json(m))


def verify_shards(shard_dir: str, splits: tuple[str, ...] = SPLITS) -> list[str]:
    """Names of shards whose sha256 differs from the manifest (or that are missing)."""
    m = read_manifest(shard_dir)
    bad: list[str] = []
    for split in splits:
        for entry in m.splits[split].shards if split in m.splits else []:
            h = hashlib.sha256()
            try:
                with open_url(_join(str(shard_dir), entry.name)) as f:
                    while block := f.read(1 << 20):
                        h.update(block)
            except OSError:
                bad.append(entry.name)
                continue
            if h.hexdigest() != entry.sha256:
                bad.append(entry.name)
    return bad


def check_shard_set(
    shard_dir: str, samples: bool = True, manifest: Manifest | None = None
) -> tuple[int, int, list[str]]:
    """(shards, samples, problems): every shard's sha256 and count against the manifest and, with
    ``samples``, every sample's arrays (dtype, shape, finite) and subject; one message per shard."""
    from sgdm_dist.data.samples import SampleSpec
    from sgdm_dist.data.shards import decode, iter_shard

    m = manifest or read_manifest(shard_dir)
    spec = SampleSpec.from_manifest(m)
    n_shards = n_samples = 0
    problems: list[str] = []
    for split in SPLITS:
        for entry in m.splits[split].shards if split in m.splits else []:
            url = _join(str(shard_dir), entry.name)
            n_shards += 1
            try:
                raw = list(iter_shard(url, entry.n_samples, sha256=entry.sha256))
                for sample in raw if samples else []:
                    decode(sample, spec.with_subject(entry.subject))
                n_samples += len(raw)
            except DataError as exc:
                problems.append(str(exc))
    return n_shards, n_samples, problems
