"""MNE preprocessing: epoch alignment, shapes, the reference's shrinkage covariance and MVNN."""

from __future__ import annotations

import mne
import numpy as np
import pytest
import scipy.linalg
from sklearn.discriminant_analysis import _cov as sklearn_shrunk_cov

from sgdm_dist.config.data import PreprocessConfig
from sgdm_dist.data import DataError
from sgdm_dist.data.eeg import epoch_partition, mvnn, pick_channels, shrunk_covariance
from sgdm_dist.data.sources import THINGS_CHANNELS, Recording

OFFICIAL_17 = set(
    [
        "Pz",
        "P3",
        "P7",
        "O1",
        "Oz",
        "O2",
        "P4",
        "P8",
        "P1",
        "P5",
        "PO7",
        "PO3",
        "POz",
        "PO4",
        "PO8",
        "P6",
        "P2",
    ]
)


def _recording(
    events: list[tuple[int, int]], n: int, sfreq: float = 1000.0, peak_at: int | None = None
) -> Recording:
    """63-ch noise-free recording whose every channel peaks sharply at each event sample."""
    x = np.zeros((len(THINGS_CHANNELS), n))
    for sample, _ in events:
        t = np.arange(n) - sample
        x += np.exp(-0.5 * (t / 3.0) ** 2)[None]  # 3 ms wide bump centred on the event
    info = mne.create_info(THINGS_CHANNELS, sfreq, "eeg")
    raw = mne.io.RawArray(x, info, verbose="error")
    ev = np.array([(s, 0, c) for s, c in events], dtype=np.int64)
    return Recording(raw, ev, "test-recording")


def test_event_at_known_sample_lands_at_t0_without_resampling() -> None:
    rec = _recording([(1500, 1), (2500, 2)], 4000)
    cfg = PreprocessConfig(resample_hz=1000.0, baseline=None, channels="all", mvnn="none")
    ep = epoch_partition(rec, cfg, None, seed=0)
    assert ep.data.shape == (2, 1, 63, 1001)
    t0 = int(np.flatnonzero(np.isclose(ep.times, 0.0))[0])
    assert t0 == 200
    assert np.argmax(ep.data[0, 0, 0]) == t0
    assert np.argmax(ep.data[1, 0, 30]) == t0


def test_reference_shapes_17_channels_100hz_t0_at_index_20() -> None:
    # Events 1.2 s apart, so each epoch holds only its own bump.
    events = [(1000 + 1200 * i, 1 + i % 3) for i in range(9)]
    rec = _recording(events, 12000)
    ep = epoch_partition(rec, PreprocessConfig(mvnn="none"), None, seed=0)
    assert ep.data.shape == (3, 3, 17, 100)
    assert set(ep.ch_names) == OFFICIAL_17
    # File order is kept, as in the reference.
    assert ep.ch_names == [c for c in THINGS_CHANNELS if c in OFFICIAL_17]
    assert ep.sfreq == 100.0
    assert ep.times[0] == pytest.approx(-0.2) and ep.times[-1] == pytest.approx(0.79)
    assert ep.times[20] == pytest.approx(0.0)
    assert np.argmax(ep.data[0, 0, 0]) == 20


def test_catch_trials_dropped_and_conditions_sorted() -> None:
    rec = _recording([(1000, 2), (1200, 99999), (1400, 1), (1600, 2), (1800, 1)], 3000)
    ep = epoch_partition(rec, PreprocessConfig(mvnn="none"), None, seed=0)
    assert ep.conditions.tolist() == [1, 2]
    assert ep.data.shape[:2] == (2, 2)


def test_too_few_repetitions_is_a_clear_error() -> None:
    rec = _recording([(1000, 1), (1200, 1), (1400, 2)], 3000)
    with pytest.raises(DataError, match="fewer than 2 repetitions"):
        epoch_partition(rec, PreprocessConfig(mvnn="none"), 2, seed=0)


def test_unknown_channel_is_named() -> None:
    with pytest.raises(DataError, match=r"\['Fz'\]"):
        pick_channels(THINGS_CHANNELS, ["Oz", "Fz"], "rec.npy")


def test_shrunk_covariance_equals_the_references_estimator() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4, 6)) * rng.uniform(
        0.5, 2, 6
    )  # batch [3, 5], 4 samples, 6 features
    ours = shrunk_covariance(x)
    for i in range(3):
        for j in range(5):
            np.testing.assert_allclose(
                ours[i, j], sklearn_shrunk_cov(x[i, j], shrinkage="auto"), rtol=1e-10, atol=1e-12
            )


def _reference_mvnn(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official algorithm written plainly (loops), to check the vectorised one."""
    sig_part = []
    for part in (test, train):
        sig_cond = [
            np.mean(
                [
                    sklearn_shrunk_cov(part[c][:, :, t], shrinkage="auto")
                    for t in range(part.shape[3])
                ],
                axis=0,
            )
            for c in range(part.shape[0])
        ]
        sig_part.append(np.mean(sig_cond, axis=0))
    inv = scipy.linalg.fractional_matrix_power(np.mean(sig_part, axis=0), -0.5)

    def whiten(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(-1, x.shape[2], x.shape[3])
        return (flat.swapaxes(1, 2) @ inv).swapaxes(1, 2).reshape(x.shape)

    return whiten(train), whiten(test)


def test_mvnn_matches_reference_algorithm() -> None:
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((5, 5))
    train = np.einsum("ij,crjt->crit", mix, rng.standard_normal((6, 2, 5, 7)))
    test = np.einsum("ij,crjt->crit", mix, rng.standard_normal((3, 4, 5, 7)))
    ours_tr, ours_te, _ = mvnn(train, test, "time", "both")
    ref_tr, ref_te = _reference_mvnn(train, test)
    np.testing.assert_allclose(ours_tr, np.real(ref_tr), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours_te, np.real(ref_te), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mode", ["time", "epochs"])
def test_mvnn_whitening_makes_noise_covariance_identity(mode: str) -> None:
    rng = np.random.default_rng(2)
    n_ch = 6
    a = rng.standard_normal((n_ch, n_ch))
    sigma = a @ a.T + 0.5 * np.eye(n_ch)  # correlated channel noise
    chol = np.linalg.cholesky(sigma)
    # Ledoit-Wolf's shrinkage is biased by design and fades as 1/n: with many repetitions the
    # estimate converges to the true noise covariance (at 2 reps, THINGS' case, it is mostly prior).
    evoked = rng.standard_normal((4, 1, n_ch, 5))  # per-condition signal, shared across reps
    noise = np.einsum("ij,crjt->crit", chol, rng.standard_normal((4, 2000, n_ch, 5)))
    train = evoked + noise
    test = evoked[:2] + np.einsum("ij,crjt->crit", chol, rng.standard_normal((2, 2000, n_ch, 5)))
    white_tr, _, _ = mvnn(train, test, mode, "train")
    resid = white_tr - white_tr.mean(axis=1, keepdims=True)  # remove the evoked part
    cov = np.einsum("crit,crjt->ij", resid, resid) / (
        resid.shape[0] * (resid.shape[1] - 1) * resid.shape[3]
    )
    raw_cov = np.einsum("crit,crjt->ij", noise, noise) / noise[..., 0, 0].size / noise.shape[3]
    assert np.abs(raw_cov - np.eye(n_ch)).max() > 1.0  # the test is not trivial
    # 'epochs' mode also absorbs the evoked variance over time, so it over-whitens a little.
    np.testing.assert_allclose(cov, np.eye(n_ch), atol=0.1 if mode == "time" else 0.35)


@pytest.mark.parametrize(
    ("preset", "shape"), [("things-official.yaml", (17, 100)), ("things-nice.yaml", (63, 250))]
)
def test_presets_give_the_published_epoch_shapes(preset: str, shape: tuple[int, int]) -> None:
    from pathlib import Path

    from sgdm_dist.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / preset)
    events = [(1000 + 1500 * i, 1 + i % 2) for i in range(4)]
    p = cfg.data.preprocess.model_copy(update={"mvnn": "none"})
    ep = epoch_partition(_recording(events, 8000), p, None, seed=0)
    assert ep.data.shape[2:] == shape
    assert ep.data.shape[:2] == (2, 2)


def test_ica_removes_synthetic_blinks(tmp_path) -> None:
    from sgdm_dist.config.data import SyntheticConfig
    from sgdm_dist.data.eeg import clean_continuous
    from sgdm_dist.data.sources import read_recording
    from sgdm_dist.data.synthetic import write_synthetic

    syn = SyntheticConfig(
        n_subjects=1, n_train_concepts=10, images_per_concept=4, blink_rate_hz=0.5
    )
    write_synthetic(syn, tmp_path / "raw", tmp_path / "img", seed=0)
    rec = read_recording(tmp_path / "raw" / "sub-01" / "ses-01" / "raw_eeg_training.npy")
    fp1, oz = rec.raw.ch_names.index("Fp1"), rec.raw.ch_names.index("Oz")
    before = np.ptp(rec.raw.get_data()[[fp1, oz]], axis=1)
    cfg = PreprocessConfig(ica=True)
    after = np.ptp(clean_continuous(rec, cfg, seed=0).get_data()[[fp1, oz]], axis=1)
    assert before[0] > 80e-6  # blinks are there (~100 µV on frontal channels)
    assert after[0] < 0.6 * before[0]  # ... and mostly gone
    assert after[1] > 0.8 * before[1]  # posterior channels, where the signal is, keep their range
