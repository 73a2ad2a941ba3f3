"""`sgdm prepare` on an MNE-BIDS dataset: a tiny one written with mne_bids.write_raw_bids from the
synthetic THINGS recordings, prepared beside the same recordings read as THINGS files (#20)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from support import tiny_data_overrides

from sgdm_dist.config import Config, load_config
from sgdm_dist.data import DataError
from sgdm_dist.data.manifest import read_manifest
from sgdm_dist.data.shards import decode, iter_shard
from sgdm_dist.data.sources import read_things_raw, scan_images

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "data.synthetic.n_subjects=1",
    "data.synthetic.n_train_concepts=4",
    "data.synthetic.images_per_concept=2",
    "data.synthetic.n_test_concepts=2",
    "data.synthetic.train_reps=2",
    "data.synthetic.test_reps=3",
    "data.val_fraction=0.25",
]


def _config(root: Path, *extra: str) -> Config:
    return load_config(REPO / "configs/tiny.yaml", [*tiny_data_overrides(root), *SMALL, *extra])


def write_bids(cfg: Config, bids_root: Path) -> None:
    """THINGS .npy recordings → BrainVision + events.tsv with a BIDS ``stim_file`` per stimulus."""
    from mne_bids import BIDSPath, write_raw_bids

    images = scan_images(cfg.data.image_dir)
    for part in ("training", "test"):
        rec = read_things_raw(cfg.data.raw_dir / "sub-01" / "ses-01" / f"raw_eeg_{part}.npy")
        codes = sorted({int(c) for c in rec.events[:, 2]})
        bp = BIDSPath(subject="01", session="01", task=part, datatype="eeg", root=bids_root)
        write_raw_bids(
            rec.raw.copy().pick("eeg"),
            bp,
            events=rec.events,
            event_id={f"stim/{c}": c for c in codes},
            format="BrainVision",
            allow_preload=True,
            overwrite=True,
            verbose="error",
        )
        by_code = {r.condition: r for r in images[part]}
        table = bp.copy().update(suffix="events", extension=".tsv").fpath
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        for row in rows:  # catch trials (no image) keep stim_file n/a, as BIDS asks
            r = by_code.get(int(row["value"]))
            row["stim_file"] = f"{part}_images/{r.concept}/{r.path.name}" if r else "n/a"
            row["value"] = "n/a"  # the image comes from stim_file alone
        with open(table, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
            w.writeheader()
            w.writerows(rows)


def _samples(cfg: Config) -> dict[str, dict[str, tuple[str, np.ndarray]]]:
    """split → sample key → (image_id, eeg [C, T])."""
    m = read_manifest(cfg.data.shard_dir)
    out: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    for split, info in m.splits.items():
        out[split] = {}
        for entry in info.shards:
            for s in iter_shard(str(Path(cfg.data.shard_dir) / entry.name)):
                d = decode(s)
                out[split][d["key"]] = (d["meta"]["image_id"], np.asarray(d["eeg"], np.float32))
    return out


@pytest.fixture(scope="module")
def things_and_bids(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Config]:
    from sgdm_dist.data.prepare import prepare

    root = tmp_path_factory.mktemp("bids")
    things = _config(root)
    prepare(things, synthetic=True, progress=False)
    write_bids(things, root / "bids")
    bids = _config(
        root, "data.source=bids", f"data.raw_dir={root}/bids", f"data.shard_dir={root}/bshards"
    )
    prepare(bids, progress=False)
    return things, bids


def test_bids_dataset_goes_through_prepare(things_and_bids: tuple[Config, Config]) -> None:
    things, bids = things_and_bids
    m = read_manifest(bids.data.shard_dir)
    syn = bids.data.synthetic
    assert m.source == "bids" and m.subjects == [1] and m.n_channels == 17
    n_train_images = syn.n_train_concepts * syn.images_per_concept
    assert (
        m.splits["train"].n_samples + m.splits["val"].n_samples == n_train_images * syn.train_reps
    )
    assert m.splits["test"].n_samples == syn.n_test_concepts * syn.test_reps
    # Same trials, same images, same EEG as the THINGS files they were written from (BrainVision
    # stores float32 µV, the shards float16: equal to float16 precision).
    ref, got = _samples(things), _samples(bids)
    for split in ("train", "val", "test"):
        assert sorted(got[split]) == sorted(ref[split]) and got[split]
        for key, (image_id, eeg) in got[split].items():
            assert image_id == ref[split][key][0]
            np.testing.assert_allclose(eeg, ref[split][key][1], rtol=2e-2, atol=2e-2)


def test_stim_file_not_among_the_images_is_named(
    things_and_bids: tuple[Config, Config], tmp_path: Path
) -> None:
    from sgdm_dist.data.bids import read_bids_events

    _, bids = things_and_bids
    table = next(Path(bids.data.raw_dir).rglob("*task-test_events.tsv"))
    text = table.read_text().replace("test_images/", "test_imgs/", 1)
    bad = tmp_path / table.name
    bad.write_text(text)
    images = {
        f"test_images/{r.concept}/{r.path.name}": r.condition
        for r in scan_images(bids.data.image_dir)["test"]
    }
    with pytest.raises(DataError, match=r"line \d+: stim_file 'test_imgs/.*' is not an image"):
        read_bids_events(bad, 1000.0, 0, images)


def test_events_without_stim_file_use_value_and_skip_na(tmp_path: Path) -> None:
    from sgdm_dist.data.bids import read_bids_events

    table = tmp_path / "sub-01_task-test_events.tsv"
    table.write_text(
        "onset\tduration\ttrial_type\tvalue\n"
        "0.5\t0\tstim\t3\n"
        "1.25\t0\tresponse\tn/a\n"
        "2.0\t0\tstim\t1\n"
    )
    events = read_bids_events(table, 200.0, 7, None)
    np.testing.assert_array_equal(events, [[107, 0, 3], [407, 0, 1]])
    table.write_text("onset\ttrial_type\n0.5\tstim\n")
    with pytest.raises(DataError, match="needs columns 'onset' and 'stim_file' or 'value'"):
        read_bids_events(table, 200.0, 0, None)
