"""Latency alignment of a new subject (sgdm_dist/data/latency.py): the shift is found without labels,
and leave-one-subject-out scoring uses it on the held-out subject only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sgdm_dist.baselines.arrays import SplitArrays, align_held_out, load_split
from sgdm_dist.config import Config, load_config
from sgdm_dist.data.latency import align_latency, best_shift, global_field_power, shift_trials
from sgdm_dist.data.manifest import read_manifest
from sgdm_dist.evaluation.evaluate import _latency_shifts
from sgdm_dist.models import build_model
from sgdm_dist.reconstruct.alignment import unseen_subject_shifts
from sgdm_dist.reconstruct.inputs import read_split
from sgdm_dist.reconstruct.model import ReconstructError, TrainingData
from sgdm_dist.tune.score import held_out_shifts

REPO = Path(__file__).resolve().parents[1]
SFREQ = 100.0  # Hz: one sample is 10 ms
N_TIMES, N_SOURCES, N_CHANNELS = 100, 3, 12


def _subject(rng: np.random.Generator, delay: int, n_trials: int = 60) -> np.ndarray:
    """Trials [N, C, T] of one subject: three evoked sources (peaks at 150, 250, 400 ms), delayed
    by ``delay`` samples, mixed onto the scalp by the subject's own random matrix, plus noise."""
    t = np.arange(N_TIMES)
    peaks = np.array([15, 25, 40]) + delay
    sources = np.exp(-0.5 * ((t[None, :] - peaks[:, None]) / 3.0) ** 2)  # [S, T]
    mixing = rng.normal(size=(N_CHANNELS, N_SOURCES))
    evoked = mixing @ sources  # [C, T]
    amplitude = rng.uniform(0.5, 1.5, size=(n_trials, 1, 1))  # the image changes the response
    return (amplitude * evoked + 0.5 * rng.normal(size=(n_trials, N_CHANNELS, N_TIMES))).astype(
        np.float32
    )


@pytest.mark.parametrize("delay", [-3, -1, 0, 2, 4])
def test_best_shift_undoes_a_subjects_delay_whatever_its_scalp_mixing(delay: int) -> None:
    rng = np.random.default_rng(delay + 10)
    reference = np.concatenate([_subject(rng, 0), _subject(rng, 0)])  # two training subjects
    new = _subject(rng, delay)
    aligned, shift = align_latency(reference, new, SFREQ, max_lag_s=0.05)
    assert shift == -delay
    ref = global_field_power(reference)
    before = np.corrcoef(ref, global_field_power(new))[0, 1]
    after = np.corrcoef(ref, global_field_power(aligned))[0, 1]
    assert after >= before
    assert aligned.shape == new.shape and aligned.dtype == new.dtype


def test_shift_is_bounded_by_the_largest_lag() -> None:
    rng = np.random.default_rng(0)
    reference, new = _subject(rng, 0), _subject(rng, 6)  # 60 ms late
    assert align_latency(reference, new, SFREQ, max_lag_s=0.03)[1] == -3  # as far as allowed
    assert align_latency(reference, new, SFREQ, max_lag_s=0.0)[1] == 0  # 0: off


def test_shift_trials_holds_the_edges_and_keeps_the_rest() -> None:
    x = np.arange(10, dtype=np.float32)[None, None, :]  # [1, 1, T]
    assert shift_trials(x, 0).tolist() == x.tolist()
    assert shift_trials(x, 2)[0, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert shift_trials(x, -3)[0, 0].tolist() == [3, 4, 5, 6, 7, 8, 9, 9, 9, 9]
    assert x[0, 0].tolist() == list(range(10))  # the input is not modified


def test_bad_shapes_and_lags_are_named() -> None:
    rng = np.random.default_rng(1)
    trials = _subject(rng, 0)
    ref = global_field_power(trials)
    with pytest.raises(
        ValueError, match=r"max_shift must be in 0\.\.48 for 100 time samples, got 49"
    ):
        best_shift(ref, trials, 49)
    with pytest.raises(ValueError, match="EEG has 50 time samples, the reference GFP 100"):
        best_shift(ref, trials[..., :50], 2)
    with pytest.raises(ValueError, match=r"expected EEG trials \[N, C, T\]"):
        global_field_power(trials[0])


def test_leave_one_subject_out_aligns_the_held_out_subject_only() -> None:
    rng = np.random.default_rng(2)
    subjects = {1: _subject(rng, 0, 30), 2: _subject(rng, 0, 30), 3: _subject(rng, 3, 30)}

    def split(parts: dict[int, np.ndarray]) -> SplitArrays:
        eeg = np.concatenate(list(parts.values()))
        subject = np.repeat(list(parts), [len(p) for p in parts.values()])
        index = np.tile(np.arange(30), len(parts))
        return SplitArrays(eeg, subject, index, np.arange(30), np.eye(30, dtype=np.float32))

    train = split(subjects)
    test = split({s: _subject(rng, d, 30) for s, d in ((1, 0), (2, 0), (3, 3))})
    out = align_held_out(train, test, held=3, sfreq=SFREQ, max_lag_s=0.05)
    held = test.subject == 3
    assert np.array_equal(out.eeg[~held], test.eeg[~held])  # the training subjects: untouched
    assert np.array_equal(out.eeg[held], shift_trials(test.eeg[held], -3))
    assert np.array_equal(out.subject, test.subject) and out.eeg is not test.eeg
    with pytest.raises(ValueError, match="no test trials of subject 4"):
        align_held_out(train, test, held=4, sfreq=SFREQ, max_lag_s=0.05)


# --- the product path: `sgdm evaluate` and the tuning objective (reconstruct/alignment.py) ------


def _tiny(tiny_shards: list[str], *extra: str) -> Config:
    return load_config(REPO / "configs" / "tiny.yaml", [*tiny_shards, *extra])


def test_unseen_subject_shift_matches_an_independent_reading(tiny_shards: list[str]) -> None:
    cfg = _tiny(tiny_shards)
    shard_dir = str(cfg.data.shard_dir)
    sfreq = read_manifest(shard_dir).sfreq
    shifts = unseen_subject_shifts(shard_dir, "test", unseen=[2], trained=[1], max_lag_s=0.05)
    # The same question asked through the baselines' reader, which holds every trial in memory.
    reference = load_split(cfg, "train", [1]).eeg
    new = load_split(cfg, "test", [2]).eeg
    assert shifts == {2: best_shift(global_field_power(reference), new, round(0.05 * sfreq))}
    assert unseen_subject_shifts(shard_dir, "test", unseen=[2], trained=[1], max_lag_s=0) == {}
    with pytest.raises(ReconstructError, match=r"needs the 'train' trials .* \[7\]"):
        unseen_subject_shifts(shard_dir, "test", unseen=[2], trained=[7], max_lag_s=0.05)
    with pytest.raises(ReconstructError, match=r"align_unseen_s=0.6 at 100 Hz: max_shift must be"):
        unseen_subject_shifts(shard_dir, "test", unseen=[2], trained=[1], max_lag_s=0.6)


def test_read_split_moves_the_named_subjects_trials_only(tiny_shards: list[str]) -> None:
    cfg = _tiny(tiny_shards)
    model = build_model(cfg.model, n_channels=17, n_times=100, n_subjects=2).eval()
    common = {"model": model, "trained": TrainingData(), "predict": True, "progress": False}
    plain = read_split(str(cfg.data.shard_dir), "test", **common)
    moved = read_split(str(cfg.data.shard_dir), "test", shifts={2: 3, 9: 1}, **common)
    assert moved.shifts == {2: 3}  # subject 9 is not in the split
    assert torch.equal(moved.mean_eeg[1], plain.mean_eeg[1])
    assert torch.equal(moved.trial_pred[1], plain.trial_pred[1])
    expected = torch.from_numpy(shift_trials(plain.mean_eeg[2].numpy(), 3))
    torch.testing.assert_close(moved.mean_eeg[2], expected)
    assert not torch.allclose(moved.trial_pred[2], plain.trial_pred[2])


def test_evaluate_and_tuning_align_only_untrained_subjects(tiny_shards: list[str]) -> None:
    on = _tiny(tiny_shards, "evaluate.align_unseen_s=0.05")
    one_subject = build_model(on.model, n_channels=17, n_times=100, n_subjects=1)
    expected = unseen_subject_shifts(
        str(on.data.shard_dir), "test", unseen=[2], trained=[1], max_lag_s=0.05
    )
    assert _latency_shifts(on, one_subject, TrainingData()) == expected  # 2 > n_subjects
    assert _latency_shifts(on, one_subject, TrainingData(subjects=[1, 2])) == {}
    off = _tiny(tiny_shards)
    assert _latency_shifts(off, one_subject, TrainingData()) == {}
    # A tuning fold holding subject 2 out: its validation trials, against subject 1's training.
    fold = _tiny(tiny_shards, "evaluate.align_unseen_s=0.05", "train.subjects=[1]")
    assert held_out_shifts(fold, [2]) == unseen_subject_shifts(
        str(on.data.shard_dir), "val", unseen=[2], trained=[1], max_lag_s=0.05
    )
    assert held_out_shifts(off, [2]) == {}
