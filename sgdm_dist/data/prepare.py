"""``sgdm prepare``: raw EEG + stimulus images → preprocessed WebDataset shards + manifest.

Steps: [write synthetic raw data] → image table and train/val/test assignment → CLIP/VAE features
(content-addressed cache) → per session (in parallel processes): MNE preprocessing → shards of the
session's train/val/test trials → manifest assembled from the per-unit records. The image steps live
in :mod:`sgdm_dist.data.split_images`, the manifest and upload in :mod:`sgdm_dist.data.publish`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sgdm_dist.config import Config
from sgdm_dist.data import DataError
from sgdm_dist.data.io import scheme
from sgdm_dist.data.manifest import Manifest, write_manifest
from sgdm_dist.data.publish import _upload, assemble_manifest, summary_rows  # noqa: F401 (re-export)
from sgdm_dist.data.shard_dir import check_settings, clean_leftovers, locked, settings_of
from sgdm_dist.data.shards import Trial, read_unit_record, write_unit
from sgdm_dist.data.sources import (
    find_preprocessed,
    find_sessions,
    read_recording,
    read_things_preprocessed,
)
from sgdm_dist.data.split_images import SplitImages, build_images

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


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


@dataclass
class SessionEEG:
    """One session's sorted epochs, before the float16 unit scaling (see ``scale``)."""

    ch_names: list[str]
    times: np.ndarray  # [t] s, 0 = stimulus onset
    sfreq: float  # Hz
    train: np.ndarray  # [cond, rep, ch, t] training partition
    test: np.ndarray  # [cond, rep, ch, t] test partition (one averaged rep when asked)
    train_conditions: np.ndarray  # [cond] 1-based condition codes
    test_conditions: np.ndarray  # [cond] 1-based condition codes
    scale: float  # multiplies the data into ``eeg_unit``
    eeg_unit: str


def process_session(
    plan: Plan, subject: int, session: int, files: dict[str, Path] | None
) -> list[dict]:
    """Preprocess one session (or one subject's preprocessed files) and write its three units."""
    unit = _unit(subject, session)
    done = [read_unit_record(plan.out_dir, s, unit, plan.fingerprint) for s in SPLITS]
    if all(r is not None for r in done):
        return done  # type: ignore[return-value]
    cfg = plan.cfg
    assert files is not None
    if cfg.data.source == "things_preprocessed":
        eeg = _read_preprocessed_session(files, cfg.data.preprocess.average_test_reps)
    else:
        eeg = _preprocess_raw_session(cfg, files)
    trials = _trials(
        plan, "training", subject, session, eeg.train * eeg.scale, eeg.train_conditions, False
    )
    trials["test"] = _trials(
        plan,
        "test",
        subject,
        session,
        eeg.test * eeg.scale,
        eeg.test_conditions,
        cfg.data.preprocess.average_test_reps,
    )["test"]
    meta = {
        "subject": subject,
        "session": session,
        "ch_names": list(eeg.ch_names),
        "times": [round(float(t), 6) for t in eeg.times],
        "sfreq": float(eeg.sfreq),
        "eeg_unit": eeg.eeg_unit,
    }
    return [
        write_unit(
            plan.out_dir, s, unit, trials[s], cfg.data.shard_max_samples, plan.fingerprint, meta
        )
        for s in SPLITS
    ]


def _read_preprocessed_session(files: dict[str, Path], average_test_reps: bool) -> SessionEEG:
    """A subject's THINGS preprocessed files (epoched already), kept in their own unit."""
    tr, te = (read_things_preprocessed(files[k]) for k in ("training", "test"))
    tr_d, te_d = tr["data"], te["data"]
    if average_test_reps:
        te_d = te_d.mean(axis=1, keepdims=True)
    return SessionEEG(
        ch_names=tr["ch_names"],
        times=tr["times"],
        sfreq=1.0 / float(np.diff(tr["times"]).mean()),
        train=tr_d,
        test=te_d,
        train_conditions=np.arange(1, len(tr_d) + 1),
        test_conditions=np.arange(1, len(te_d) + 1),
        scale=1.0,
        eeg_unit="as-provided",
    )


def _preprocess_raw_session(cfg: Config, files: dict[str, Path]) -> SessionEEG:
    """A raw session (THINGS files or BIDS) through the MNE pipeline of ``data.preprocess``."""
    from sgdm_dist.data.eeg import preprocess_session

    p = cfg.data.preprocess
    read = read_recording
    if cfg.data.source == "bids":
        from sgdm_dist.data.bids import read_bids

        read = partial(read_bids, image_dir=cfg.data.image_dir)
    ep = preprocess_session(read(files["training"]), read(files["test"]), p, cfg.experiment.seed)
    # float16 shards: whitened data is O(1); raw volts would underflow, so they are stored in µV.
    scale, eeg_unit = (1.0, "whitened") if p.mvnn != "none" else (1e6, "uV")
    return SessionEEG(
        ch_names=ep.train.ch_names,
        times=ep.train.times,
        sfreq=ep.train.sfreq,
        train=ep.train.data,
        test=ep.test.data,
        train_conditions=ep.train.conditions,
        test_conditions=ep.test.conditions,
        scale=scale,
        eeg_unit=eeg_unit,
    )


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
    images, enc, feature_meta = build_images(cfg, out_dir, progress)
    plan = make_plan(cfg, out_dir, images, feature_meta["cache_keys"])
    jobs = _jobs(cfg)
    records: list[dict] = []
    # Each session preprocesses its EEG and writes its shards (train, val, test units).
    bar = tqdm(total=len(jobs), desc="sessions → shards", unit="session", disable=not progress)
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
