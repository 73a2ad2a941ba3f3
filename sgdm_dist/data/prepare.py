"""``sgdm prepare``: raw EEG + stimulus images → preprocessed WebDataset shards + manifest.

Steps: [write synthetic raw data] → image table and train/val/test assignment → CLIP/VAE features
(content-addressed cache) → per session (in parallel processes): MNE preprocessing → shards of the
session's train/val/test trials → manifest assembled from the per-unit records.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sgdm_dist.atomic import atomic_write
from sgdm_dist.config import Config
from sgdm_dist.data import DataError
from sgdm_dist.data.io import scheme
from sgdm_dist.data.manifest import Manifest, write_manifest
from sgdm_dist.data.publish import _upload, assemble_manifest, summary_rows  # noqa: F401 (re-export)
from sgdm_dist.data.shard_dir import check_settings, clean_leftovers, locked, settings_of
from sgdm_dist.data.shards import Trial, read_unit_record, write_unit
from sgdm_dist.data.sources import (
    ImageRecord,
    find_preprocessed,
    find_sessions,
    read_recording,
    read_things_preprocessed,
    scan_images,
)

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class SplitImages:
    """The unique images of one split, in image_index order."""

    records: list[ImageRecord]
    concepts: list[str]  # concept folder names; index = concept id within the split
    clip: np.ndarray  # [N, D]
    latent: np.ndarray  # [N, 4, h, w]
    png: list[bytes] | None  # stimulus at features.image_size, when the split stores images


@dataclass
class Plan:
    """What every worker needs: the config, image tables per split, lookups from conditions."""

    cfg: Config
    out_dir: Path
    images: dict[str, SplitImages]
    # partition ("training"/"test") → condition (1-based) → (split, image_index)
    lookup: dict[str, dict[int, tuple[str, int]]]
    fingerprint: str


def local_out_dir(cfg: Config) -> Path:
    """Shards are written locally; an fsspec URL is staged under the cache and uploaded at the end."""
    url = cfg.data.shard_dir
    if scheme(url) == "pipe":
        raise DataError(
            f"data.shard_dir={url!r}: `sgdm prepare` cannot write through a pipe: command; write "
            "to s3://, gs:// (or a local folder) and read the shards back with pipe: if you like"
        )
    if scheme(url) == "file":
        return Path(url.removeprefix("file://"))
    safe = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(cfg.data.cache_dir) / "staging" / safe


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


def _png(path: Path, size: int) -> bytes:
    from PIL import Image

    from sgdm_dist.data.features import to_tensor

    with Image.open(path) as im:
        arr = (to_tensor(im, size).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def build_images(cfg: Config, out_dir: Path) -> tuple[dict[str, SplitImages], dict, dict]:
    """Image tables, features (cached) and text embeddings; writes ``{split}_images.npz`` files."""
    from sgdm_dist.data.features import (
        ClipEncoder,
        FeatureCache,
        VaeEncoder,
        compute_features,
        text_features,
    )

    if cfg.data.image_dir is None:
        raise DataError("data.image_dir is not set: stimulus images are needed for features")
    table = scan_images(cfg.data.image_dir)
    split_of = assign_splits(table["training"], cfg)
    per_split = {
        "train": [r for r in table["training"] if split_of[r.condition] == "train"],
        "val": [r for r in table["training"] if split_of[r.condition] == "val"],
        "test": list(table["test"]),
    }
    fcfg = cfg.data.features
    enc_dir = out_dir / "encoders"
    clip = ClipEncoder(fcfg, enc_dir, cfg.experiment.seed)
    # No VAE weights given → an autoencoder trained on the train split, scored on val + test (#14).
    vae = VaeEncoder(
        fcfg,
        enc_dir,
        cfg.experiment.seed + 1,
        train_images=[r.path for r in per_split["train"]],
        held_out=[r.path for r in per_split["val"] + per_split["test"]],
    )
    cache = FeatureCache(cfg.data.cache_dir)
    images: dict[str, SplitImages] = {}
    text: dict[str, np.ndarray] = {}
    for split, recs in per_split.items():
        feats = compute_features([r.path for r in recs], clip, vae, cache, fcfg.batch_size)
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
        _write_npz(
            out_dir / f"{split}_images.npz",
            image_index=np.arange(len(recs), dtype=np.int64),
            clip=feats.clip,
            image_id=np.array([r.image_id for r in recs]),
            concept=np.array([concepts.index(r.concept) for r in recs], dtype=np.int64),
            condition=np.array([r.condition for r in recs], dtype=np.int64),
            sha256=np.array(feats.sha256),
        )
    _write_npz(out_dir / "text_embeddings.npz", **text)
    log.info(
        "features: %d cache hits, %d misses (%s)", cache.hits, cache.misses, cfg.data.cache_dir
    )
    enc = {"clip": clip.info, "vae": vae.info}
    feature_meta = {
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
    return images, enc, feature_meta


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def make_plan(
    cfg: Config, out_dir: Path, images: dict[str, SplitImages], feature_keys: dict
) -> Plan:
    lookup: dict[str, dict[int, tuple[str, int]]] = {"training": {}, "test": {}}
    for split, si in images.items():
        for i, r in enumerate(si.records):
            lookup[r.partition][r.condition] = (split, i)
    settings = {
        "format": 1,
        "data": cfg.data.model_dump(
            mode="json",
            include={
                "source",
                "preprocess",
                "shard_max_samples",
                "val_fraction",
                "val_by",
                "image_splits",
            },
        ),
        "features": feature_keys,
        "seed": cfg.experiment.seed,
    }
    fp = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return Plan(cfg, out_dir, images, lookup, fp)


def _trials(
    plan: Plan,
    partition: str,
    subject: int,
    session: int,
    data: np.ndarray,
    conditions: np.ndarray,
    averaged: bool,
) -> dict[str, list[Trial]]:
    """Sorted epochs [cond, rep, ch, t] → trials grouped by split, in (condition, rep) order."""
    out: dict[str, list[Trial]] = {s: [] for s in SPLITS}
    for ci, cond in enumerate(conditions):
        if int(cond) not in plan.lookup[partition]:
            raise DataError(
                f"sub-{subject:02d} ses-{session:02d} {partition}: event code {cond} has no image "
                f"(only {len(plan.lookup[partition])} {partition} images)"
            )
        split, idx = plan.lookup[partition][int(cond)]
        si = plan.images[split]
        rec = si.records[idx]
        for rep in range(data.shape[1]):
            meta = {
                "subject": subject,
                "session": session,
                "split": split,
                "image_id": rec.image_id,
                "image_index": idx,
                "concept": si.concepts.index(rec.concept),
                "concept_name": rec.concept,
                "condition": int(cond),
                "rep": -1 if averaged else rep,
            }
            key = (
                f"{subject:02d}_{session:02d}_{rec.image_id}_{'avg' if averaged else f'{rep:02d}'}"
            )
            png = si.png[idx] if si.png is not None else None
            out[split].append(Trial(key, data[ci, rep], si.clip[idx], si.latent[idx], meta, png))
    return out


def _unit(subject: int, session: int) -> str:
    return f"sub-{subject:02d}_ses-{session:02d}"


def process_session(
    plan: Plan, subject: int, session: int, files: dict[str, Path] | None
) -> list[dict]:
    """Preprocess one session (or one subject's preprocessed files) and write its three units."""
    from sgdm_dist.data.eeg import preprocess_session

    unit = _unit(subject, session)
    done = [read_unit_record(plan.out_dir, s, unit, plan.fingerprint) for s in SPLITS]
    if all(r is not None for r in done):
        return done  # type: ignore[return-value]
    cfg = plan.cfg
    p = cfg.data.preprocess
    if cfg.data.source == "things_preprocessed":
        assert files is not None
        tr, te = (read_things_preprocessed(files[k]) for k in ("training", "test"))
        ch_names, times, sfreq = (
            tr["ch_names"],
            tr["times"],
            1.0 / float(np.diff(tr["times"]).mean()),
        )
        tr_d, te_d = tr["data"], te["data"]
        if p.average_test_reps:
            te_d = te_d.mean(axis=1, keepdims=True)
        unit_scale, eeg_unit = 1.0, "as-provided"
        tr_c, te_c = np.arange(1, len(tr_d) + 1), np.arange(1, len(te_d) + 1)
    else:
        assert files is not None
        seed = cfg.experiment.seed
        read = read_recording
        if cfg.data.source == "bids":
            from sgdm_dist.data.bids import read_bids

            read = partial(read_bids, image_dir=cfg.data.image_dir)
        ep = preprocess_session(read(files["training"]), read(files["test"]), p, seed)
        ch_names, times, sfreq = ep.train.ch_names, ep.train.times, ep.train.sfreq
        tr_d, te_d, tr_c, te_c = (
            ep.train.data,
            ep.test.data,
            ep.train.conditions,
            ep.test.conditions,
        )
        # float16 shards: whitened data is O(1); raw volts would underflow, so they are stored in µV.
        unit_scale, eeg_unit = (1.0, "whitened") if p.mvnn != "none" else (1e6, "uV")
    trials = _trials(plan, "training", subject, session, tr_d * unit_scale, tr_c, False)
    trials["test"] = _trials(
        plan, "test", subject, session, te_d * unit_scale, te_c, p.average_test_reps
    )["test"]
    meta = {
        "subject": subject,
        "session": session,
        "ch_names": list(ch_names),
        "times": [round(float(t), 6) for t in times],
        "sfreq": float(sfreq),
        "eeg_unit": eeg_unit,
    }
    return [
        write_unit(
            plan.out_dir, s, unit, trials[s], cfg.data.shard_max_samples, plan.fingerprint, meta
        )
        for s in SPLITS
    ]


def _jobs(cfg: Config) -> list[tuple[int, int, dict[str, Path]]]:
    if cfg.data.source == "things_preprocessed":
        return [
            (s, 0, files)
            for s, files in find_preprocessed(cfg.data.raw_dir, cfg.data.subjects).items()
        ]
    find = find_sessions
    if cfg.data.source == "bids":
        from sgdm_dist.data.bids import find_bids_sessions as find
    return [
        (f.subject, f.session, {"training": f.training, "test": f.test})
        for f in find(cfg.data.raw_dir, cfg.data.subjects)
    ]


def prepare(
    cfg: Config, synthetic: bool = False, progress: bool = True, overwrite: bool = False
) -> Manifest:
    """Run the whole preparation; idempotent and resumable. Returns the written manifest.

    Holds the shard folder's lock throughout, cleans what a killed run left, refuses a folder made
    with other settings (``overwrite`` empties it instead); the manifest is written last, after
    every shard is in place, so a folder with a manifest is always complete.
    """
    if synthetic or cfg.data.source == "synthetic":
        from sgdm_dist.data.synthetic import write_synthetic

        if cfg.data.image_dir is None:
            raise DataError("data.image_dir must be set to write the synthetic images")
        write_synthetic(
            cfg.data.synthetic, cfg.data.raw_dir, cfg.data.image_dir, cfg.experiment.seed
        )
    out_dir = local_out_dir(cfg)
    with locked(out_dir):
        removed = clean_leftovers(out_dir)
        if removed:
            log.info("removed %d leftover(s) of a killed run: %s", len(removed), removed[:5])
        check_settings(out_dir, settings_of(cfg), overwrite)
        return _prepare_locked(cfg, out_dir, progress)


def _prepare_locked(cfg: Config, out_dir: Path, progress: bool) -> Manifest:
    images, enc, feature_meta = build_images(cfg, out_dir)
    plan = make_plan(cfg, out_dir, images, feature_meta["cache_keys"])
    jobs = _jobs(cfg)
    records: list[dict] = []
    bar = tqdm(total=len(jobs), desc="sessions", unit="session", disable=not progress)
    if cfg.data.workers > 1 and len(jobs) > 1:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(min(cfg.data.workers, len(jobs)), mp_context=ctx) as pool:
            futures = [pool.submit(process_session, plan, s, ses, f) for s, ses, f in jobs]
            for fut in futures:
                records.extend(fut.result())
                bar.update()
    else:
        for s, ses, f in jobs:
            records.extend(process_session(plan, s, ses, f))
            bar.update()
    bar.close()
    manifest = assemble_manifest(cfg, out_dir, plan, records, enc, feature_meta)
    write_manifest(manifest, out_dir)
    _upload(cfg, out_dir)
    return manifest
