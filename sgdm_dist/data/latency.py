"""Unsupervised latency alignment of a new subject's EEG to the subjects a model was trained on.

People differ in how soon their visual responses arrive (tens of milliseconds). A decoder trained on
some subjects reads a new one worse when that subject's responses come earlier or later, and with two
or three training subjects it cannot learn the spread. No label is needed to measure the delay: the
new subject's evoked response (the mean over all of its trials) is compared with the training
subjects' by global field power (GFP: the spread across channels at each time point, which does not
depend on how each head mixes the sources onto the scalp), and the trials are shifted by the whole
number of samples that matches them best. Used for leave-one-subject-out scoring
(``bench/decoding.py --align-unseen``; ``evaluate.align_unseen_s`` in `sgdm evaluate` and the tuning
objective, reconstruct/alignment.py; docs/decoding.md has the measurement).
"""

from __future__ import annotations

import numpy as np


def global_field_power(eeg: np.ndarray) -> np.ndarray:
    """GFP of the evoked response: trials [N, C, T] → the s.d. over channels of their mean, [T]."""
    if eeg.ndim != 3 or len(eeg) == 0:
        raise ValueError(f"expected EEG trials [N, C, T] with N ≥ 1, got shape {eeg.shape}")
    return evoked_gfp(eeg.mean(axis=0, dtype=np.float64))


def shift_trials(eeg: np.ndarray, shift: int) -> np.ndarray:
    """Trials [..., T] delayed by ``shift`` samples (negative: advanced); the edge sample is held
    where the shift leaves a gap, so no zeros enter the window."""
    if shift == 0:
        return eeg.copy()
    out = np.roll(eeg, shift, axis=-1)
    if shift > 0:
        out[..., :shift] = eeg[..., :1]
    else:
        out[..., shift:] = eeg[..., -1:]
    return out


def evoked_gfp(evoked: np.ndarray) -> np.ndarray:
    """GFP of an evoked response [C, T] (a mean over trials): the s.d. over channels, [T]."""
    if evoked.ndim != 2:
        raise ValueError(f"expected an evoked response [C, T], got shape {evoked.shape}")
    return evoked.astype(np.float64).std(axis=0)


def best_shift(reference_gfp: np.ndarray, eeg: np.ndarray, max_shift: int) -> int:
    """The shift (samples, for :func:`shift_trials`) that best lines ``eeg``'s trials [N, C, T] up
    with ``reference_gfp`` [T]; see :func:`best_gfp_shift`."""
    return best_gfp_shift(reference_gfp, global_field_power(eeg), max_shift)


def best_gfp_shift(reference_gfp: np.ndarray, gfp: np.ndarray, max_shift: int) -> int:
    """The shift (samples) that best lines ``gfp`` [T] up with ``reference_gfp`` [T]: the largest
    correlation over ``-max_shift..max_shift``, scored on the samples no shift moves past an edge.
    Ties go to the smaller shift."""
    n_times = reference_gfp.shape[-1]
    if gfp.shape[-1] != n_times:
        raise ValueError(f"EEG has {gfp.shape[-1]} time samples, the reference GFP {n_times}")
    if max_shift < 0 or n_times - 2 * max_shift < 3:
        raise ValueError(
            f"max_shift must be in 0..{(n_times - 3) // 2} for {n_times} time samples, "
            f"got {max_shift}"
        )
    inner = slice(max_shift, n_times - max_shift)
    best, best_corr = 0, -np.inf
    for shift in sorted(range(-max_shift, max_shift + 1), key=abs):
        corr = np.corrcoef(reference_gfp[inner], shift_trials(gfp, shift)[inner])[0, 1]
        if corr > best_corr + 1e-12:
            best, best_corr = shift, corr
    return best


def align_latency(
    reference: np.ndarray, eeg: np.ndarray, sfreq: float, max_lag_s: float
) -> tuple[np.ndarray, int]:
    """``eeg`` trials [N, C, T] of one new subject shifted so their evoked GFP best matches the
    ``reference`` trials' (the training subjects', [M, C, T]), by at most ``max_lag_s`` seconds at
    ``sfreq`` Hz. Returns (aligned trials, the shift in samples)."""
    shift = best_shift(global_field_power(reference), eeg, round(max_lag_s * sfreq))
    return shift_trials(eeg, shift), shift
