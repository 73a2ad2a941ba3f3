"""MNE preprocessing speed: recording-seconds processed per wall-second (one synthetic session).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/preprocess.py [configs/tiny.yaml] [overrides...]

Writes one synthetic subject/session (63 channels, 1000 Hz) with the config's synthetic knobs, then
times the whole per-session preprocessing (read → [filters/ICA] → epochs → resample → sort → MVNN).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from sgdm_dist.config import load_config
from sgdm_dist.data.eeg import preprocess_session
from sgdm_dist.data.sources import read_recording
from sgdm_dist.data.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    args = sys.argv[1:]
    path = Path(args[0]) if args and args[0].endswith(".yaml") else REPO / "configs/tiny.yaml"
    overrides = args[1:] if args and args[0].endswith(".yaml") else args
    cfg = load_config(
        path, ["data.synthetic.n_subjects=1", "data.synthetic.n_sessions=1", *overrides]
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(
            cfg.data.synthetic, Path(tmp) / "raw", Path(tmp) / "images", cfg.experiment.seed
        )
        ses = Path(tmp) / "raw" / "sub-01" / "ses-01"
        t0 = time.perf_counter()
        train, test = (
            read_recording(ses / "raw_eeg_training.npy"),
            read_recording(ses / "raw_eeg_test.npy"),
        )
        seconds = (train.raw.n_times + test.raw.n_times) / train.raw.info["sfreq"]
        out = preprocess_session(train, test, cfg.data.preprocess, cfg.experiment.seed)
        wall = time.perf_counter() - t0
    p = cfg.data.preprocess
    print(
        f"recording: {seconds:.1f} s of 63-ch {train.raw.info['sfreq']:g} Hz EEG; epochs "
        f"train {out.train.data.shape}, test {out.test.data.shape}"
    )
    print(
        f"steps: notch={p.notch_hz} band=({p.l_freq}, {p.h_freq}) ica={p.ica} resample={p.resample_hz:g} Hz "
        f"channels={p.channels if isinstance(p.channels, str) else len(p.channels)} mvnn={p.mvnn}"
    )
    print(f"preprocess: {wall:.2f} s wall → {seconds / wall:.1f} recording-s per wall-s")


if __name__ == "__main__":
    main()
