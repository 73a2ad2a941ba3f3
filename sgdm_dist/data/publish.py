"""The end of ``prepare``: the manifest assembled from the unit records, its upload, the summary.

Kept apart from the orchestration in :mod:`sgdm_dist.data.prepare` (one concept per module).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sgdm_dist import __version__
from sgdm_dist.config import Config
from sgdm_dist.data import DataError
from sgdm_dist.data.io import scheme
from sgdm_dist.data.manifest import Manifest, ShardEntry, SplitInfo

if TYPE_CHECKING:
    from sgdm_dist.data.prepare import Plan

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def assemble_manifest(
    cfg: Config, out_dir: Path, plan: Plan, records: list[dict], enc: dict, feature_meta: dict
) -> Manifest:
    """The manifest of the shard set from every unit's record (all units must share one layout)."""
    _check_same_layout(records)
    first = records[0]
    splits = {split: _split_info(plan, split, records) for split in SPLITS}
    sessions = _sessions(records)
    lat = plan.images["train"].latent.shape[1:] if len(plan.images["train"].records) else (4, 0, 0)
    encoders = _encoder_paths(enc, out_dir)
    fm = {k: v for k, v in feature_meta.items() if k != "cache"}
    return Manifest(
        package_version=__version__,
        source=cfg.data.source,
        ch_names=first["ch_names"],
        sfreq=first["sfreq"],
        times=first["times"],
        n_channels=len(first["ch_names"]),
        n_times=len(first["times"]),
        eeg_unit=first["eeg_unit"],
        clip_dim=int(plan.images["test"].clip.shape[1]),
        latent_shape=tuple(int(x) for x in lat),
        image_size=cfg.data.features.image_size,
        subjects=sorted(sessions),
        sessions={k: sorted(v) for k, v in sorted(sessions.items())},
        n_concepts=len(plan.images["train"].concepts),
        splits=splits,
        preprocess=cfg.data.preprocess.model_dump(mode="json"),
        features=fm,
        encoders=encoders,
        text_embeddings="text_embeddings.npz",
        seed=cfg.experiment.seed,
    )


def _check_same_layout(records: list[dict]) -> None:
    """Every unit has the first unit's channels and time points, or a DataError naming both."""
    first = records[0]
    for r in records:
        if r["ch_names"] != first["ch_names"] or r["times"] != first["times"]:
            raise DataError(
                f"sub-{r['subject']:02d} ses-{r['session']:02d}: {len(r['ch_names'])} channels × "
                f"{len(r['times'])} samples, but sub-{first['subject']:02d} "
                f"ses-{first['session']:02d} has {len(first['ch_names'])} × {len(first['times'])} "
                f"(channels {r['ch_names']} vs {first['ch_names']})"
            )


def _split_info(plan: Plan, split: str, records: list[dict]) -> SplitInfo:
    """One split's shards (in unit order), sample counts per subject and image table facts."""
    recs = sorted((r for r in records if r["split"] == split), key=lambda r: r["unit"])
    shards = [
        ShardEntry(subject=r["subject"], session=r["session"], **s)
        for r in recs
        for s in r["shards"]
    ]
    per_subject: dict[int, int] = {}
    for e in shards:
        per_subject[e.subject] = per_subject.get(e.subject, 0) + e.n_samples
    si = plan.images[split]
    return SplitInfo(
        shards=shards,
        n_samples=sum(e.n_samples for e in shards),
        per_subject=dict(sorted(per_subject.items())),
        n_images=len(si.records),
        concepts=si.concepts,
        images_file=f"{split}_images.npz",
        has_images=si.png is not None,
    )


def _sessions(records: list[dict]) -> dict[int, list[int]]:
    """Subject → its sessions, in the order the records first name them."""
    sessions: dict[int, list[int]] = {}
    for r in records:
        sessions.setdefault(r["subject"], [])
        if r["session"] not in sessions[r["subject"]]:
            sessions[r["subject"]].append(r["session"])
    return sessions


def _encoder_paths(enc: dict, out_dir: Path) -> dict[str, str]:
    """Encoder name → where to reload it: relative to the shards when prepare made the weights."""
    return {
        name: (
            _rel(info.path, out_dir)
            if info.random_init or info.saved_with_shards
            else str(info.path)
        )
        for name, info in enc.items()
    }


def _rel(path: str | None, root: Path) -> str:
    p = Path(str(path))
    try:
        return str(p.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def _upload(cfg: Config, out_dir: Path) -> None:
    """Copy the staged folder to the fsspec URL; manifest.json last, so readers never see a
    manifest whose shards are not all there yet."""
    url = cfg.data.shard_dir
    if scheme(url) == "file":
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    path = path.rstrip("/")
    files = sorted(
        p
        for p in out_dir.rglob("*")
        if p.is_file() and not p.name.startswith(".") and ".units" not in p.parts
    )
    manifest = out_dir / "manifest.json"
    for f in [f for f in files if f != manifest] + [manifest]:
        fs.put_file(str(f), f"{path}/{f.relative_to(out_dir).as_posix()}")
    log.info("uploaded %s → %s (%d files)", out_dir, url, len(files))


def summary_rows(m: Manifest) -> list[tuple[str, str, int, int]]:
    """(split, subject, samples, shards) rows for the summary table."""
    rows = []
    for split, info in m.splits.items():
        for subject, n in info.per_subject.items():
            n_shards = sum(1 for e in info.shards if e.subject == subject)
            rows.append((split, f"sub-{subject:02d}", n, n_shards))
    return rows
