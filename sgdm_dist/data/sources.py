"""Readers: THINGS-EEG2 raw/preprocessed files, any MNE-readable recording + events table, image trees.

Every reader returns MNE objects or plain arrays and raises :class:`DataError` naming the file (and
channel or key) when the input is unusable.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import mne
import numpy as np

from sgdm_dist.data import DataError

# THINGS-EEG2's 63-channel 10-10 cap (no Fz), as listed in PROTOCOL.md.
THINGS_CHANNELS: list[str] = [
    "Fp1",
    "Fp2",
    "AF7",
    "AF3",
    "AFz",
    "AF4",
    "AF8",
    "F7",
    "F5",
    "F3",
    "F1",
    "F2",
    "F4",
    "F6",
    "F8",
    "FT9",
    "FT7",
    "FC5",
    "FC3",
    "FC1",
    "FCz",
    "FC2",
    "FC4",
    "FC6",
    "FT8",
    "FT10",
    "T7",
    "C5",
    "C3",
    "C1",
    "Cz",
    "C2",
    "C4",
    "C6",
    "T8",
    "TP9",
    "TP7",
    "CP5",
    "CP3",
    "CP1",
    "CPz",
    "CP2",
    "CP4",
    "CP6",
    "TP8",
    "TP10",
    "P7",
    "P5",
    "P3",
    "P1",
    "Pz",
    "P2",
    "P4",
    "P6",
    "P8",
    "PO7",
    "PO3",
    "POz",
    "PO4",
    "PO8",
    "O1",
    "Oz",
    "O2",
]
PARTITIONS = ("training", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MNE_SUFFIXES = (".fif", ".fif.gz", ".edf", ".bdf", ".vhdr", ".set")
_SUB_RE = re.compile(r"^sub-(\d+)$")
_SES_RE = re.compile(r"^ses-(\d+)$")


@dataclass(frozen=True)
class ImageRecord:
    """One stimulus image. ``condition`` is 1-based within its partition (the stim-channel code)."""

    partition: str  # "training" | "test"
    condition: int
    concept: str  # folder name, e.g. "00001_aardvark"
    path: Path

    @property
    def concept_name(self) -> str:
        """``00001_aardvark`` → ``aardvark`` (underscores → spaces), the text prompt for CLIP."""
        return self.concept.split("_", 1)[-1].replace("_", " ")

    @property
    def image_id(self) -> str:
        # WebDataset splits keys at the first dot, so ids never carry one.
        return self.path.stem.replace(".", "_")


@dataclass
class Recording:
    """A continuous recording and its stimulus events ([n, 3]: sample, previous, code)."""

    raw: mne.io.BaseRaw
    events: np.ndarray
    source: str


@dataclass(frozen=True)
class SessionFiles:
    subject: int
    session: int
    training: Path
    test: Path


def scan_images(image_dir: Path) -> dict[str, list[ImageRecord]]:
    """``{image_dir}/{training,test}_images/<concept>/<file>`` → records in sorted (condition) order."""
    out: dict[str, list[ImageRecord]] = {}
    for part in PARTITIONS:
        root = Path(image_dir) / f"{part}_images"
        if not root.is_dir():
            raise DataError(f"image folder not found: {root} (expected {part}_images/<concept>/)")
        records: list[ImageRecord] = []
        for concept_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(p for p in concept_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for f in files:
                records.append(ImageRecord(part, len(records) + 1, concept_dir.name, f))
        if not records:
            raise DataError(f"no images under {root}")
        out[part] = records
    return out


def find_sessions(raw_dir: Path, subjects: list[int] | None = None) -> list[SessionFiles]:
    """THINGS-EEG2 layout ``sub-XX/ses-YY/raw_eeg_{training,test}.npy`` (or MNE files, same stems)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"raw data folder not found: {raw_dir}")
    found: list[SessionFiles] = []
    for sub_dir in sorted(raw_dir.iterdir()):
        m = _SUB_RE.match(sub_dir.name)
        if not m or (subjects is not None and int(m.group(1)) not in subjects):
            continue
        for ses_dir in sorted(sub_dir.iterdir()):
            s = _SES_RE.match(ses_dir.name)
            if not s:
                continue
            files = {part: _partition_file(ses_dir, part) for part in PARTITIONS}
            found.append(SessionFiles(int(m.group(1)), int(s.group(1)), **files))
    if not found:
        want = f" for subjects {subjects}" if subjects else ""
        raise DataError(f"no sub-XX/ses-YY session folders{want} under {raw_dir}")
    return found


def _partition_file(ses_dir: Path, part: str) -> Path:
    for name in [f"raw_eeg_{part}.npy", *(f"raw_eeg_{part}{ext}" for ext in MNE_SUFFIXES)]:
        if (ses_dir / name).is_file():
            return ses_dir / name
    raise DataError(f"{ses_dir}: missing raw_eeg_{part}.npy (or an MNE file with that stem)")


def read_recording(path: Path, stim_channel: str = "stim") -> Recording:
    """Dispatch on the file type: THINGS-EEG2 ``.npy`` dict or an MNE file + events table."""
    if path.suffix == ".npy":
        return read_things_raw(path, stim_channel)
    return read_mne(path)


def read_things_raw(path: Path, stim_channel: str = "stim") -> Recording:
    """A THINGS-EEG2 ``raw_eeg_*.npy``: a pickled dict (raw_eeg_data, ch_names, ch_types, sfreq).

    ``allow_pickle=True`` is needed because the dataset stores a dict; it runs code from the file, so
    only point this at files from the dataset or written by :mod:`sgdm_dist.data.synthetic`.
    """
    try:
        obj = np.load(path, allow_pickle=True)
        data = obj.item() if obj.dtype == object else None
    except Exception as exc:
        raise DataError(f"{path}: cannot read THINGS-EEG2 raw file ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a pickled dict, got an array of {obj.dtype}")
    for key in ("raw_eeg_data", "ch_names", "ch_types", "sfreq"):
        if key not in data:
            raise DataError(f"{path}: missing key '{key}' (have {sorted(data)})")
    x = np.asarray(data["raw_eeg_data"])
    ch_names, ch_types = list(data["ch_names"]), list(data["ch_types"])
    if x.ndim != 2 or x.shape[0] != len(ch_names) or len(ch_types) != len(ch_names):
        raise DataError(
            f"{path}: raw_eeg_data has shape {x.shape} but {len(ch_names)} ch_names and "
            f"{len(ch_types)} ch_types"
        )
    if stim_channel not in ch_names:
        raise DataError(f"{path}: no stimulus channel '{stim_channel}' in ch_names")
    _check_things_cap(ch_names, ch_types, path)
    check_finite(x, ch_names, str(path))
    raw = mne.io.RawArray(
        x, mne.create_info(ch_names, float(data["sfreq"]), ch_types), verbose="error"
    )
    events = mne.find_events(raw, stim_channel=stim_channel, verbose="error")
    if len(events) == 0:
        raise DataError(f"{path}: stimulus channel '{stim_channel}' holds no events")
    return Recording(raw, events, str(path))


def _check_things_cap(ch_names: list[str], ch_types: list[str], path: Path) -> None:
    """Every THINGS-EEG2 recording has the same 63 EEG channels; a file without them is broken
    (other caps go through ``data.source=mne``)."""
    eeg = [c for c, t in zip(ch_names, ch_types, strict=True) if t == "eeg"]
    if sorted(eeg) != sorted(THINGS_CHANNELS):
        missing = [c for c in THINGS_CHANNELS if c not in eeg]
        extra = [c for c in eeg if c not in THINGS_CHANNELS]
        raise DataError(
            f"{path}: expected the {len(THINGS_CHANNELS)} THINGS-EEG2 EEG channels, found "
            f"{len(eeg)} (missing {missing}, unexpected {extra})"
        )


def read_mne(path: Path) -> Recording:
    """Any MNE-readable file plus ``<stem>_events.tsv`` (columns: ``sample`` or ``onset`` s, ``condition``)."""
    try:
        raw = mne.io.read_raw(path, preload=True, verbose="error")
    except Exception as exc:
        raise DataError(f"{path}: MNE cannot read it ({exc})") from None
    raw.pick("eeg")
    check_finite(raw.get_data(), raw.ch_names, str(path))
    table = _events_table_path(path)
    events = read_events_table(table, raw.info["sfreq"], raw.first_samp)
    return Recording(raw, events, str(path))


def _events_table_path(path: Path) -> Path:
    stem = path.name
    for ext in MNE_SUFFIXES:
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    for cand in (path.with_name(f"{stem}_events.tsv"), path.with_name(f"{stem}_events.csv")):
        if cand.is_file():
            return cand
    raise DataError(f"{path}: no events table {stem}_events.tsv beside it")


def read_events_table(path: Path, sfreq: float, first_samp: int = 0) -> np.ndarray:
    """TSV/CSV with ``condition`` (1-based image number) and ``sample`` or ``onset`` (s) → MNE events."""
    delim = "\t" if path.suffix == ".tsv" else ","
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=delim))
    if not rows:
        raise DataError(f"{path}: events table is empty")
    cols = set(rows[0])
    if "condition" not in cols or not cols & {"sample", "onset"}:
        raise DataError(f"{path}: needs columns 'condition' and 'sample' or 'onset', has {cols}")
    events = np.zeros((len(rows), 3), dtype=np.int64)
    for i, row in enumerate(rows):
        try:
            sample = (
                int(row["sample"])
                if row.get("sample") not in (None, "")
                else round(float(row["onset"]) * sfreq) + first_samp
            )
            events[i] = (sample, 0, int(row["condition"]))
        except ValueError as exc:
            raise DataError(f"{path}: row {i + 2}: {exc}") from None
    return events


def check_finite(x: np.ndarray, ch_names: list[str], where: str) -> None:
    """Raise naming the first channels that hold NaN/Inf (a broken export, not a filter problem)."""
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        names = [ch_names[r] for r in rows[:5]]
        first = int(np.flatnonzero(bad[rows[0]])[0])
        raise DataError(
            f"{where}: non-finite values (NaN/Inf) in channel(s) {names}"
            f"{' …' if len(rows) > 5 else ''}; first at sample {first} of {names[0]}"
        )


def read_things_preprocessed(path: Path) -> dict:
    """``preprocessed_eeg_{training,test}.npy``: dict with ``preprocessed_eeg_data`` [img, rep, ch, t],
    ``ch_names`` and ``times`` (s). Pickled like the raw files (same ``allow_pickle`` caveat)."""
    try:
        data = np.load(path, allow_pickle=True).item()
    except Exception as exc:
        raise DataError(f"{path}: cannot read THINGS-EEG2 preprocessed file ({exc})") from None
    for key in ("preprocessed_eeg_data", "ch_names", "times"):
        if key not in data:
            raise DataError(f"{path}: missing key '{key}'")
    x = np.asarray(data["preprocessed_eeg_data"])
    if x.ndim != 4 or x.shape[2] != len(data["ch_names"]) or x.shape[3] != len(data["times"]):
        raise DataError(
            f"{path}: preprocessed_eeg_data shape {x.shape} does not match "
            f"{len(data['ch_names'])} channels × {len(data['times'])} times"
        )
    if not np.isfinite(x).all():
        idx = np.argwhere(~np.isfinite(x))[0]
        raise DataError(
            f"{path}: non-finite value at image {idx[0]}, rep {idx[1]}, "
            f"channel {data['ch_names'][idx[2]]}"
        )
    return {"data": x, "ch_names": list(data["ch_names"]), "times": np.asarray(data["times"])}


def find_preprocessed(
    raw_dir: Path, subjects: list[int] | None = None
) -> dict[int, dict[str, Path]]:
    """``sub-XX/preprocessed_eeg_{training,test}.npy`` per subject."""
    out: dict[int, dict[str, Path]] = {}
    for sub_dir in sorted(Path(raw_dir).glob("sub-*")):
        m = _SUB_RE.match(sub_dir.name)
        if not m or (subjects is not None and int(m.group(1)) not in subjects):
            continue
        files = {p: sub_dir / f"preprocessed_eeg_{p}.npy" for p in PARTITIONS}
        for p, f in files.items():
            if not f.is_file():
                raise DataError(f"{sub_dir}: missing preprocessed_eeg_{p}.npy")
        out[int(m.group(1))] = files
    if not out:
        raise DataError(f"no sub-XX/preprocessed_eeg_*.npy under {raw_dir}")
    return out
