"""MNE preprocessing: the THINGS-EEG2 reference pipeline, every step a config switch.

Per session and partition: [notch, band-pass, ICA blink removal on the continuous data] → drop catch
trials → channel pick → epochs (tmin..tmax, baseline) → resample → [crop] → sort by image condition,
keeping ``max_reps`` repetitions chosen by a seeded shuffle. Then MVNN whitening per session.
The steps and their order are those of gifale95/eeg_encoding ``02_eeg_preprocessing`` (see
docs/data.md for how equality was checked).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mne
import numpy as np
import scipy.linalg
from sklearn.utils import shuffle as sk_shuffle
from threadpoolctl import threadpool_limits

from sgdm_dist.config.data import PreprocessConfig
from sgdm_dist.data import DataError
from sgdm_dist.data.sources import Recording

log = logging.getLogger(__name__)

# The official pick: channel names starting with O or P (17 channels on THINGS-EEG2's cap).
OCCIPITAL_PARIETAL = "^O *|^P *"


@dataclass
class Epoched:
    """Sorted epochs of one partition: ``data`` [n_conditions, n_reps, n_channels, n_times]."""

    data: np.ndarray
    conditions: np.ndarray  # [n_conditions] 1-based condition codes, ascending
    ch_names: list[str]
    times: np.ndarray  # [n_times] s, 0 = stimulus onset
    sfreq: float


def pick_channels(ch_names: list[str], spec: str | list[str], where: str) -> list[str]:
    """Channel names to keep, in file order (the reference keeps file order too)."""
    if spec == "all":
        return list(ch_names)
    if spec == "occipital_parietal":
        idx = mne.pick_channels_regexp(ch_names, OCCIPITAL_PARIETAL)
        return [ch_names[i] for i in idx]
    missing = [c for c in spec if c not in ch_names]
    if missing:
        raise DataError(
            f"{where}: channel(s) {missing} not in the recording ({len(ch_names)} channels)"
        )
    return [c for c in ch_names if c in spec]


def clean_continuous(rec: Recording, cfg: PreprocessConfig, seed: int) -> mne.io.BaseRaw:
    """Optional filtering and ICA on the continuous EEG (the reference does neither)."""
    raw = rec.raw
    if cfg.notch_hz:
        raw.notch_filter(cfg.notch_hz, picks="eeg", verbose="error")
    if cfg.l_freq is not None or cfg.h_freq is not None:
        raw.filter(cfg.l_freq, cfg.h_freq, picks="eeg", verbose="error")
    if cfg.ica:
        # One BLAS thread: ICA's matrices are small, and threaded BLAS on a busy machine (or beside
        # other session processes, data.workers) oversubscribes the cores: 10× slower measured.
        with threadpool_limits(1):
            raw = _remove_blinks(raw, cfg, seed, rec.source)
    return raw


def _remove_blinks(
    raw: mne.io.BaseRaw, cfg: PreprocessConfig, seed: int, where: str
) -> mne.io.BaseRaw:
    eog = [c for c in cfg.eog_channels if c in raw.ch_names]
    if not eog:
        raise DataError(f"{where}: ICA needs EOG proxy channels {cfg.eog_channels}, none present")
    # ICA is fitted on a 1 Hz high-passed copy (slow drifts break its independence assumption).
    fit_raw = raw.copy().filter(1.0, None, picks="eeg", verbose="error")
    ica = mne.preprocessing.ICA(
        n_components=cfg.ica_n_components, method="fastica", random_state=seed, max_iter=200
    )
    decim = max(1, int(raw.info["sfreq"] // cfg.ica_fit_hz))
    ica.fit(fit_raw, picks="eeg", decim=decim, verbose="error")
    bad, _ = ica.find_bads_eog(raw, ch_name=eog, verbose="error")
    ica.exclude = bad
    log.info("%s: ICA removed %d blink component(s) %s", where, len(bad), bad)
    return ica.apply(raw, verbose="error")


def epoch_partition(
    rec: Recording, cfg: PreprocessConfig, max_reps: int | None, seed: int
) -> Epoched:
    """Continuous recording → sorted epochs [cond, rep, ch, t] (reference steps 1-5)."""
    raw = clean_continuous(rec, cfg, seed)
    eeg_names = [raw.ch_names[i] for i in mne.pick_types(raw.info, eeg=True)]
    keep = pick_channels(eeg_names, cfg.channels, rec.source)
    raw = raw.copy().pick(keep)
    events = rec.events[rec.events[:, 2] != cfg.target_event]
    if len(events) == 0:
        raise DataError(f"{rec.source}: no stimulus events left after dropping catch trials")
    epochs = mne.Epochs(
        raw,
        events,
        tmin=cfg.tmin,
        tmax=cfg.tmax,
        baseline=cfg.baseline,
        preload=True,
        verbose="error",
    )
    if len(epochs) < len(events):
        raise DataError(
            f"{rec.source}: {len(events) - len(epochs)} event(s) too close to the recording edge "
            f"for a {cfg.tmin}..{cfg.tmax} s epoch"
        )
    if cfg.resample_hz != raw.info["sfreq"]:
        epochs.resample(cfg.resample_hz, verbose="error")
    if cfg.crop is not None:
        epochs.crop(*cfg.crop, include_tmax=False, verbose="error")
    data = epochs.get_data(copy=False)
    codes = epochs.events[:, 2]
    conditions = np.unique(codes)
    counts = {int(c): int((codes == c).sum()) for c in conditions}
    reps = min(counts.values()) if max_reps is None else max_reps
    short = {c: n for c, n in counts.items() if n < reps}
    if short:
        raise DataError(
            f"{rec.source}: {len(short)} condition(s) have fewer than {reps} repetitions "
            f"(e.g. condition {next(iter(short))}: {next(iter(short.values()))})"
        )
    sorted_data = np.zeros((len(conditions), reps, data.shape[1], data.shape[2]))
    for i, cond in enumerate(conditions):
        idx = np.flatnonzero(codes == cond)
        # Same call as the reference, so the same repetitions are kept for the same seed.
        idx = sk_shuffle(idx, random_state=seed, n_samples=reps)
        sorted_data[i] = data[idx]
    return Epoched(
        sorted_data, conditions, list(epochs.ch_names), epochs.times.copy(), epochs.info["sfreq"]
    )


def shrunk_covariance(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf covariance of standardised features, rescaled; batched over leading axes.

    ``x`` [..., n_samples, n_features] → [..., n_features, n_features]. Equals scikit-learn's
    ``discriminant_analysis._cov(X, shrinkage="auto")`` (the reference's estimator) per batch item,
    vectorised because the reference calls it n_conditions × n_times times.
    """
    n = x.shape[-2]
    p = x.shape[-1]
    xc = x - x.mean(axis=-2, keepdims=True)
    scale = xc.std(axis=-2, keepdims=True)
    scale = np.where(scale == 0, 1.0, scale)
    z = xc / scale
    emp = np.swapaxes(z, -1, -2) @ z / n
    mu = np.trace(emp, axis1=-2, axis2=-1) / p
    z2 = z**2
    beta_ = (np.swapaxes(z2, -1, -2) @ z2).sum(axis=(-2, -1))
    delta_ = (emp**2).sum(axis=(-2, -1))
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2 * mu * np.trace(emp, axis1=-2, axis2=-1) + p * mu**2) / p
    beta = np.minimum(beta, delta)
    shrink = np.where(beta == 0, 0.0, beta / np.where(delta == 0, 1.0, delta))
    eye = np.eye(p)
    cov = (1 - shrink)[..., None, None] * emp + (shrink * mu)[..., None, None] * eye
    s = scale[..., 0, :]
    return s[..., :, None] * cov * s[..., None, :]


def _empirical_covariance(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=-2, keepdims=True)
    return np.swapaxes(xc, -1, -2) @ xc / x.shape[-2]


def partition_covariance(data: np.ndarray, mode: str) -> np.ndarray:
    """[cond, rep, ch, t] → [ch, ch] noise covariance, averaged over conditions (reference step 6).

    ``time``: across repetitions at each time point (Ledoit-Wolf), averaged over time;
    ``epochs``: across time within each repetition (empirical), averaged over repetitions.
    """
    if mode == "time":
        per = shrunk_covariance(np.moveaxis(data, 3, 1))  # [cond, t, rep, ch] → [cond, t, ch, ch]
        return per.mean(axis=1).mean(axis=0)
    per = _empirical_covariance(np.swapaxes(data, -1, -2))  # [cond, rep, t, ch]
    return per.mean(axis=1).mean(axis=0)


def mvnn(
    train: np.ndarray, test: np.ndarray, mode: str, fit: str = "both"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whiten both partitions of a session with Σ^(-1/2); returns (train, test, Σ^(-1/2)).

    ``fit="both"`` averages the test and training covariances (the official code); ``"train"`` uses
    the training partition only, so nothing about the test data leaks into its whitening.
    """
    if mode == "none":
        return train, test, np.eye(train.shape[2])
    sigmas = [partition_covariance(train, mode)]
    if fit == "both":
        sigmas.insert(0, partition_covariance(test, mode))
    sigma = np.mean(sigmas, axis=0)
    inv_sqrt = np.real(scipy.linalg.fractional_matrix_power(sigma, -0.5))

    def whiten(x: np.ndarray) -> np.ndarray:
        return np.einsum("...ct,cd->...dt", x, inv_sqrt)

    return whiten(train), whiten(test), inv_sqrt


@dataclass
class SessionEpochs:
    train: Epoched
    test: Epoched


def preprocess_session(
    train_rec: Recording, test_rec: Recording, cfg: PreprocessConfig, seed: int
) -> SessionEpochs:
    """Both partitions of one session → whitened, sorted epochs."""
    tr = epoch_partition(train_rec, cfg, cfg.max_train_reps, seed)
    te = epoch_partition(test_rec, cfg, cfg.max_test_reps, seed)
    if tr.ch_names != te.ch_names or tr.data.shape[-1] != te.data.shape[-1]:
        raise DataError(
            f"{train_rec.source} and {test_rec.source}: partitions differ: "
            f"{len(tr.ch_names)} vs {len(te.ch_names)} channels {tr.ch_names} vs {te.ch_names}, "
            f"{tr.data.shape[-1]} vs {te.data.shape[-1]} samples"
        )
    tr.data, te.data, _ = mvnn(tr.data, te.data, cfg.mvnn, cfg.mvnn_fit)
    if cfg.average_test_reps:
        te.data = te.data.mean(axis=1, keepdims=True)
    return SessionEpochs(tr, te)
