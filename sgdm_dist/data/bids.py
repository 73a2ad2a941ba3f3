"""BIDS EEG datasets (MNE-BIDS): the field's layout for EEG, read beside THINGS-EEG2's own files.

Layout (``data.source=bids``, ``data.raw_dir`` = the BIDS root)::

    sub-01/ses-01/eeg/sub-01_ses-01_task-training_eeg.vhdr   (+ .eeg/.vmrk; or .edf/.bdf/.set)
    sub-01/ses-01/eeg/sub-01_ses-01_task-training_events.tsv
    sub-01/ses-01/eeg/sub-01_ses-01_task-test_eeg.vhdr  …

The BIDS ``task`` names the THINGS partition (``training`` | ``test``); a dataset without sessions
is read as session 1. Each events.tsv row is one stimulus: ``onset`` (s from the first sample) and
``stim_file`` (BIDS: the image's path under ``stimuli/``, e.g.
``training_images/00001_aardvark/aardvark_01b.jpg``), matched to the same file under
``data.image_dir``; without a ``stim_file`` column, ``value`` is the 1-based image number of the
partition (THINGS' stimulus-channel code). Rows whose stimulus is ``n/a`` (catch or response events)
are skipped.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np

from sgdm_dist.data import DataError
from sgdm_dist.data.sources import PARTITIONS, Recording, SessionFiles, check_finite, scan_images

# BIDS task label of each THINGS partition.
TASKS: dict[str, str] = {"training": "training", "test": "test"}
EXTENSIONS = (".vhdr", ".edf", ".bdf", ".set")
_NA = ("", "n/a")


def find_bids_sessions(root: Path, subjects: list[int] | None = None) -> list[SessionFiles]:
    """Every (subject, session) of a BIDS root with both partitions' EEG recordings."""
    from mne_bids import find_matching_paths

    root = Path(root)
    if not (root / "dataset_description.json").is_file():
        raise DataError(f"{root}: not a BIDS dataset (no dataset_description.json)")
    found: dict[tuple[int, int], dict[str, Path]] = defaultdict(dict)
    part_of_task = {t: p for p, t in TASKS.items()}
    for bp in find_matching_paths(
        root, tasks=list(TASKS.values()), datatypes="eeg", suffixes="eeg", extensions=EXTENSIONS
    ):
        try:
            sub, ses = int(bp.subject), int(bp.session or 1)
        except ValueError:
            raise DataError(
                f"{bp.fpath}: subject/session labels must be numbers (sub-01, ses-01), found "
                f"sub-{bp.subject} ses-{bp.session}"
            ) from None
        if subjects is None or sub in subjects:
            found[(sub, ses)][part_of_task[bp.task]] = bp.fpath
    if not found:
        want = f" for subjects {subjects}" if subjects else ""
        raise DataError(
            f"no EEG recordings with task-{'/task-'.join(TASKS.values())}{want} under {root}"
        )
    out = []
    for (sub, ses), files in sorted(found.items()):
        missing = [p for p in PARTITIONS if p not in files]
        if missing:
            raise DataError(
                f"{root}: sub-{sub:02d} ses-{ses:02d} has no task-{TASKS[missing[0]]} EEG recording"
            )
        out.append(SessionFiles(sub, ses, files["training"], files["test"]))
    return out


def read_bids(path: Path, image_dir: Path | None) -> Recording:
    """One BIDS EEG recording → raw (EEG channels, loaded) + events [n, 3] (sample, 0, condition).

    The partition comes from the file's ``task``; conditions are the images' 1-based numbers in
    ``scan_images(image_dir)`` order, i.e. the numbering ``sgdm prepare`` uses for THINGS files.
    """
    from mne_bids import get_bids_path_from_fname, read_raw_bids

    bp = get_bids_path_from_fname(path)
    partition = {t: p for p, t in TASKS.items()}.get(bp.task or "")
    if partition is None:
        raise DataError(f"{path}: task-{bp.task} is not one of {sorted(TASKS.values())}")
    try:
        raw = read_raw_bids(bp, verbose="error")
        raw.load_data(verbose="error")
    except Exception as exc:
        raise DataError(f"{path}: MNE-BIDS cannot read it ({exc})") from None
    raw.pick("eeg")
    check_finite(raw.get_data(), raw.ch_names, str(path))
    table = bp.copy().update(suffix="events", extension=".tsv").fpath
    if not Path(table).is_file():
        raise DataError(f"{path}: no events table {Path(table).name} beside it")
    images = _image_numbers(image_dir, partition) if image_dir is not None else None
    events = read_bids_events(Path(table), raw.info["sfreq"], raw.first_samp, images)
    return Recording(raw, events, str(path))


def _image_numbers(image_dir: Path, partition: str) -> dict[str, int]:
    """``training_images/<concept>/<file>`` → condition, for matching ``stim_file`` entries."""
    return {
        f"{partition}_images/{r.concept}/{r.path.name}": r.condition
        for r in scan_images(image_dir)[partition]
    }


def read_bids_events(
    table: Path, sfreq: float, first_samp: int, images: dict[str, int] | None
) -> np.ndarray:
    """BIDS events.tsv → MNE events ``[n, 3]`` (sample incl. ``first_samp``, 0, condition)."""
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    cols = set(rows[0]) if rows else set()
    by_file = "stim_file" in cols
    if "onset" not in cols or not (by_file or "value" in cols):
        raise DataError(f"{table}: needs columns 'onset' and 'stim_file' or 'value', has {cols}")
    if by_file and images is None:
        raise DataError(f"{table}: has stim_file entries; set data.image_dir to the stimuli")
    events = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        stim = row["stim_file"] if by_file else row["value"]
        if stim in _NA or row["onset"] in _NA:
            continue
        if by_file:
            key = "/".join(PurePosixPath(stim.replace("\\", "/")).parts[-3:])
            if key not in images:  # type: ignore[operator]
                raise DataError(
                    f"{table}: line {i}: stim_file '{stim}' is not an image under data.image_dir "
                    f"(expected <partition>_images/<concept>/<file>)"
                )
            cond = images[key]  # type: ignore[index]
        else:
            try:
                cond = int(float(stim))
            except ValueError:
                raise DataError(
                    f"{table}: line {i}: value '{stim}' is not an image number"
                ) from None
        events.append((round(float(row["onset"]) * sfreq) + first_samp, 0, cond))
    if not events:
        raise DataError(f"{table}: no stimulus events (every stim_file/value is n/a)")
    return np.asarray(events, dtype=np.int64)
