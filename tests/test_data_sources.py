"""Readers: THINGS-EEG2 raw/preprocessed dicts, MNE files + events tables, image trees."""

from __future__ import annotations

from pathlib import Path

import mne
import numpy as np
import pytest

from sgdm_dist.data import DataError
from sgdm_dist.data.sources import (
    THINGS_CHANNELS,
    read_mne,
    read_recording,
    read_things_preprocessed,
    read_things_raw,
    scan_images,
)


def _things_dict(n: int = 3000, codes: tuple[int, ...] = (5, 99999, 2)) -> dict:
    rng = np.random.default_rng(0)
    stim = np.zeros((1, n))
    for i, code in enumerate(codes):
        stim[0, 500 + 700 * i : 510 + 700 * i] = code
    return {
        "raw_eeg_data": np.concatenate([rng.standard_normal((63, n)) * 1e-5, stim]),
        "ch_names": [*THINGS_CHANNELS, "stim"],
        "ch_types": ["eeg"] * 63 + ["stim"],
        "sfreq": 1000.0,
    }


def test_things_raw_round_trip(tmp_path: Path) -> None:
    d = _things_dict()
    path = tmp_path / "raw_eeg_training.npy"
    np.save(path, d, allow_pickle=True)
    rec = read_recording(path)
    np.testing.assert_array_equal(rec.raw.get_data(picks="eeg"), d["raw_eeg_data"][:63])
    assert rec.raw.ch_names[:63] == THINGS_CHANNELS
    assert rec.raw.info["sfreq"] == 1000.0
    assert rec.events[:, 0].tolist() == [500, 1200, 1900]
    assert rec.events[:, 2].tolist() == [5, 99999, 2]


def test_nan_recording_names_file_and_channel(tmp_path: Path) -> None:
    d = _things_dict()
    d["raw_eeg_data"][THINGS_CHANNELS.index("Oz"), 1234] = np.nan
    path = tmp_path / "raw_eeg_test.npy"
    np.save(path, d, allow_pickle=True)
    with pytest.raises(DataError) as err:
        read_things_raw(path)
    msg = str(err.value)
    assert str(path) in msg and "'Oz'" in msg and "sample 1234" in msg


def test_missing_key_and_wrong_shape_are_named(tmp_path: Path) -> None:
    d = _things_dict()
    del d["sfreq"]
    np.save(tmp_path / "a.npy", d, allow_pickle=True)
    with pytest.raises(DataError, match="missing key 'sfreq'"):
        read_things_raw(tmp_path / "a.npy")
    d = _things_dict()
    d["ch_names"] = [*d["ch_names"][:-2], "stim"]
    d["ch_types"] = d["ch_types"][:-1]
    np.save(tmp_path / "b.npy", d, allow_pickle=True)
    with pytest.raises(DataError, match=r"shape \(64, 3000\) but 63 ch_names"):
        read_things_raw(tmp_path / "b.npy")


def test_mne_file_with_events_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    info = mne.create_info(THINGS_CHANNELS[:5], 500.0, "eeg")
    raw = mne.io.RawArray(rng.standard_normal((5, 2000)) * 1e-5, info, verbose="error")
    path = tmp_path / "raw_eeg_training.fif"
    raw.save(path, verbose="error")
    (tmp_path / "raw_eeg_training_events.tsv").write_text("onset\tcondition\n0.5\t3\n1.25\t1\n")
    rec = read_mne(path)
    np.testing.assert_allclose(rec.raw.get_data(), raw.get_data(), rtol=1e-6)
    assert rec.events.tolist() == [[250, 0, 3], [625, 0, 1]]


def test_preprocessed_round_trip_and_shape_check(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((4, 2, 3, 10))
    good = {
        "preprocessed_eeg_data": x,
        "ch_names": ["O1", "Oz", "O2"],
        "times": np.arange(10) / 100,
    }
    np.save(tmp_path / "p.npy", good, allow_pickle=True)
    out = read_things_preprocessed(tmp_path / "p.npy")
    np.testing.assert_array_equal(out["data"], x)
    bad = dict(good, ch_names=["O1", "Oz"])
    np.save(tmp_path / "q.npy", bad, allow_pickle=True)
    with pytest.raises(DataError, match="does not match 2 channels"):
        read_things_preprocessed(tmp_path / "q.npy")


def test_image_tree_is_sorted_into_conditions(tmp_path: Path) -> None:
    for part, names in (("training", ["00002_b", "00001_a"]), ("test", ["00001_c"])):
        for concept in names:
            d = tmp_path / f"{part}_images" / concept
            d.mkdir(parents=True)
            for f in ("y.jpg", "x.png", "notes.txt"):
                (d / f).write_bytes(b"")
    table = scan_images(tmp_path)
    train = table["training"]
    assert [(r.condition, r.concept, r.path.name) for r in train] == [
        (1, "00001_a", "x.png"),
        (2, "00001_a", "y.jpg"),
        (3, "00002_b", "x.png"),
        (4, "00002_b", "y.jpg"),
    ]
    assert train[0].concept_name == "a" and len(table["test"]) == 2
    with pytest.raises(DataError, match="image folder not found"):
        scan_images(tmp_path / "nowhere")
