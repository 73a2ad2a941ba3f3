"""A synthetic THINGS-EEG2-like dataset written in the dataset's own raw format.

Generative model (docs/data.md has the full story):

* every image ``i`` has latent factors ``z_i = c_concept + image_spread · ε`` in R^F; its pixels are a
  smooth nonlinear rendering of ``z_i`` (coloured blobs and gratings), so image encoders see them;
* F "content" sources respond to an image plus two content-free sources (P1/N1-like). How depends on
  ``family`` (docs/decoding.md): ``additive`` — ``z_if · w_f(t)``, ERP-like bumps peaking at 80-200 ms, so
  the EEG carries the image factors linearly; ``latency`` — the factors shift each bump's latency and
  width (±30 ms) and only weakly scale it; ``nonlinear`` — damped oscillations whose amplitudes are
  rectified random mixtures of the factors. Subjects may differ in latency and gain, trials in latency;
* sources reach the 63 scalp channels through a subject-specific mixing matrix
  ``A_s = (1 − v) · A_common + v · A_subject`` (v = ``subject_variability``), posterior topographies;
* background: spatially mixed pink noise, occipital alpha bursts, line noise, slow drifts, frontal
  eye blinks, white sensor noise. Volts, 1000 Hz, RSVP with an image every 200 ms.

Output layout: ``{raw_dir}/sub-XX/ses-YY/raw_eeg_{training,test}.npy`` and
``{image_dir}/{training,test}_images/NNNNN_concept/concept_NN.png``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mne
import numpy as np
from PIL import Image

from sgdm_dist.config.data import SyntheticConfig
from sgdm_dist.data.io import atomic_save_npy
from sgdm_dist.data.sources import THINGS_CHANNELS
from sgdm_dist.data.stimuli import render as render_stimulus
from sgdm_dist.utils.atomic import atomic_write

log = logging.getLogger(__name__)

SFREQ = 1000.0
SOA_S = 0.2  # RSVP: one image every 200 ms
RESPONSE_S = 0.6  # evoked responses last this long (they overlap the next 2 trials, as in RSVP)
LEAD_S, TAIL_S = 2.0, 1.5
TARGET_EVENT = 99999
PULSE_SAMPLES = 10  # stim pulses wider than MNE's shortest_event default
SIGNAL_V = 8e-6  # source peak amplitude at snr = 1, volts
PINK_V = 8e-6  # background pink-noise RMS per channel, volts
RENDER_GAIN = 1.0  # sigmoid gain of the image rendering: lower = pixels closer to linear in z
_SYLLABLES = [
    "ba",
    "be",
    "bi",
    "bo",
    "bu",
    "da",
    "de",
    "di",
    "do",
    "ka",
    "ke",
    "ki",
    "ko",
    "lu",
    "ma",
    "me",
    "mi",
    "mo",
    "na",
    "ne",
    "no",
    "pa",
    "pe",
    "po",
    "ra",
    "re",
    "ri",
    "ro",
    "sa",
    "se",
    "so",
    "ta",
    "te",
    "ti",
    "to",
    "va",
    "ve",
    "zu",
]


@dataclass
class World:
    """Everything shared by all subjects: images, their factors, the source model."""

    concepts: dict[str, list[str]]  # partition → concept folder names
    factors: dict[str, np.ndarray]  # partition → [n_images, F] (condition order)
    concept_of: dict[str, np.ndarray]  # partition → [n_images] concept index
    waveforms: np.ndarray  # [F + 2, L] source time courses (unit peak)
    a_common: np.ndarray  # [63, F + 2] common spatial patterns
    positions: np.ndarray  # [63, 3] channel positions, m
    latency: np.ndarray  # [F + 2] bump latencies, s
    width: np.ndarray  # [F + 2] bump widths, s
    sign: np.ndarray  # [F + 2] bump polarities
    mixing: np.ndarray  # [F, F] factor mixing of the nonlinear family
    freq: np.ndarray  # [F + 2] oscillation frequencies of the nonlinear family, Hz


def write_synthetic(
    cfg: SyntheticConfig, raw_dir: Path, image_dir: Path, seed: int, overwrite: bool = False
) -> list[Path]:
    """Write the dataset; returns the recording files. Skips files that already exist (resumable)."""
    rng = np.random.default_rng([seed, 7])
    world = _make_world(cfg, rng)
    _write_images(cfg, world, image_dir, np.random.default_rng([seed, 11]), overwrite)
    written: list[Path] = []
    for subject in range(1, cfg.n_subjects + 1):
        a_subject = _subject_mixing(cfg, world, np.random.default_rng([seed, 13, subject]))
        srng = np.random.default_rng([seed, 19, subject])
        shift = cfg.subject_latency_s * float(srng.standard_normal())
        gain = float(np.exp(cfg.subject_gain * srng.standard_normal()))
        for session in range(1, cfg.n_sessions + 1):
            ses_dir = Path(raw_dir) / f"sub-{subject:02d}" / f"ses-{session:02d}"
            for p_idx, part in enumerate(("training", "test")):
                path = ses_dir / f"raw_eeg_{part}.npy"
                written.append(path)
                if path.exists() and not overwrite:
                    continue
                srng = np.random.default_rng([seed, 17, subject, session, p_idx])
                reps = cfg.train_reps if part == "training" else cfg.test_reps
                data = _record(cfg, world, part, reps, a_subject * gain, srng, shift)
                atomic_save_npy(path, data, allow_pickle=True)
    log.info("synthetic dataset: %d recordings under %s", len(written), raw_dir)
    return written


def _concept_names(n: int, offset: int, rng: np.random.Generator) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        word = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))
        if word not in {c.split("_", 1)[1] for c in names}:
            names.append(f"{offset + len(names) + 1:05d}_{word}")
    return names


def _make_world(cfg: SyntheticConfig, rng: np.random.Generator) -> World:
    f = cfg.n_factors
    names = _concept_names(cfg.n_train_concepts + cfg.n_test_concepts, 0, rng)
    concepts = {
        "training": names[: cfg.n_train_concepts],
        # THINGS numbers test concept folders independently of training ones.
        "test": [
            f"{i + 1:05d}_{n.split('_', 1)[1]}" for i, n in enumerate(names[cfg.n_train_concepts :])
        ],
    }
    per = {"training": cfg.images_per_concept, "test": 1}
    factors, concept_of = {}, {}
    for part, cs in concepts.items():
        centres = rng.standard_normal((len(cs), f))
        idx = np.repeat(np.arange(len(cs)), per[part])
        factors[part] = centres[idx] + cfg.image_spread * rng.standard_normal((len(idx), f))
        concept_of[part] = idx
    t = np.arange(int(RESPONSE_S * SFREQ)) / SFREQ
    params = []
    for k in range(f + 2):
        if k < 2:  # content-free P1 (~100 ms, +) and N1 (~170 ms, −)
            lat, width, sign = (0.1, 0.025, 1.0) if k == 0 else (0.17, 0.035, -1.0)
        else:
            lat, width, sign = rng.uniform(0.08, 0.2), rng.uniform(0.02, 0.05), rng.choice([-1, 1])
        params.append((lat, width, float(sign)))
    lat, width, sign = (np.array(v) for v in zip(*params, strict=True))
    waves = sign[:, None] * np.exp(-0.5 * ((t[None] - lat[:, None]) / width[:, None]) ** 2)
    positions = _positions()
    a_common = _topographies(positions, f + 2, rng)
    # Drawn after everything above so the additive family's world is unchanged by the other families.
    mixing = rng.standard_normal((f, f)) / np.sqrt(f)
    freq = rng.uniform(4.0, 12.0, size=f + 2)
    return World(
        concepts, factors, concept_of, waves, a_common, positions, lat, width, sign, mixing, freq
    )


def _response(cfg: SyntheticConfig, world: World, z: np.ndarray, shift: float) -> np.ndarray:
    """Source time courses [F + 2, L] evoked by an image with factors z [F], delayed by shift s."""
    if cfg.family == "additive" and shift == 0.0:
        return np.concatenate([[1.0, 1.0], z])[:, None] * world.waveforms
    t = np.arange(world.waveforms.shape[1]) / SFREQ
    lat, width = world.latency + shift, world.width.copy()
    amp = np.ones(len(lat))
    if cfg.family == "additive":
        amp[2:] = z
    elif cfg.family == "latency":
        # Which factor moves which property is scrambled, so no single source is linear in one z.
        lat[2:] += 0.03 * np.tanh(np.roll(z, 1))
        width[2:] *= np.exp(0.25 * np.tanh(np.roll(z, 2)))
        amp[2:] = 1.0 + 0.3 * z
    else:  # nonlinear: rectified mixtures drive damped oscillations
        amp[2:] = 1.5 * (np.maximum(world.mixing @ z, 0.0) - 0.4)
    dt = t[None] - lat[:, None]
    bump = np.exp(-0.5 * (dt / width[:, None]) ** 2)
    if cfg.family == "nonlinear":
        damp = np.where(dt > -width[:, None], np.exp(-np.maximum(dt, 0) / 0.12), 0.0)
        osc = np.cos(2 * np.pi * world.freq[:, None] * dt) * damp
        bump = np.concatenate([bump[:2], osc[2:]])
    return (amp * world.sign)[:, None] * bump


def noise_free_sources(
    cfg: SyntheticConfig, seed: int, part: str, conditions: np.ndarray
) -> np.ndarray:
    """The noise-free source time courses [N, F + 2, L] (1000 Hz, from stimulus onset) that images
    ``conditions`` (1-based, in ``part`` "training"/"test") evoke in the dataset written by
    ``write_synthetic(cfg, ..., seed)``: no subject shift, gain or mixing, no jitter, no noise.
    Everything an EEG decoder can learn about an image passes through these."""
    world = _make_world(cfg, np.random.default_rng([seed, 7]))
    factors = world.factors[part][np.asarray(conditions) - 1]
    return np.stack([_response(cfg, world, z, 0.0) for z in factors])


def _positions() -> np.ndarray:
    montage = mne.channels.make_standard_montage("easycap-M1")
    pos = montage.get_positions()["ch_pos"]
    return np.stack([pos[name] for name in THINGS_CHANNELS])


def _topographies(
    positions: np.ndarray, n: int, rng: np.random.Generator, posterior: bool = True
) -> np.ndarray:
    """[63, n] smooth dipole-like patterns centred on (mostly posterior) channels, unit norm."""
    candidates = np.flatnonzero(positions[:, 1] < -0.02) if posterior else np.arange(len(positions))
    centres = positions[rng.choice(candidates, size=n)]
    d2 = ((positions[:, None, :] - centres[None]) ** 2).sum(-1)
    width = rng.uniform(0.03, 0.05, size=n)
    topo = np.exp(-d2 / (2 * width**2))
    return topo / np.linalg.norm(topo, axis=0, keepdims=True)


def _subject_mixing(cfg: SyntheticConfig, world: World, rng: np.random.Generator) -> np.ndarray:
    own = _topographies(world.positions, world.a_common.shape[1], rng)
    v = cfg.subject_variability
    mix = (1 - v) * world.a_common + v * own
    return mix / np.linalg.norm(mix, axis=0, keepdims=True)


def _record(
    cfg: SyntheticConfig,
    world: World,
    part: str,
    reps: int,
    mixing: np.ndarray,
    rng: np.random.Generator,
    shift: float = 0.0,
) -> dict:
    """One continuous recording in THINGS-EEG2's raw dict format (63 EEG channels + stim)."""
    n_img = len(world.factors[part])
    codes = np.repeat(np.arange(1, n_img + 1), reps)
    n_catch = round(cfg.catch_fraction * len(codes))
    codes = rng.permutation(np.concatenate([codes, np.full(n_catch, TARGET_EVENT)]))
    n = int((LEAD_S + len(codes) * SOA_S + TAIL_S) * SFREQ)
    onsets = (LEAD_S * SFREQ + np.arange(len(codes)) * SOA_S * SFREQ).astype(int)
    # Evoked responses: a catch trial shows a random training-set image.
    sources = np.zeros((world.waveforms.shape[0], n))
    L = world.waveforms.shape[1]
    for onset, code in zip(onsets, codes, strict=True):
        z = (
            world.factors[part][code - 1]
            if code != TARGET_EVENT
            else rng.standard_normal(cfg.n_factors)
        )
        gain = 1 + 0.1 * rng.standard_normal()
        jitter = cfg.latency_jitter_s * rng.standard_normal() if cfg.latency_jitter_s else 0.0
        sources[:, onset : onset + L] += gain * _response(cfg, world, z, shift + jitter)
    eeg = cfg.snr * SIGNAL_V * (mixing @ sources)
    eeg += _background(cfg, world, n, rng)
    stim = np.zeros((1, n))
    for onset, code in zip(onsets, codes, strict=True):
        stim[0, onset : onset + PULSE_SAMPLES] = code
    return {
        "raw_eeg_data": np.concatenate([eeg, stim]).astype(np.float64),
        "ch_names": [*THINGS_CHANNELS, "stim"],
        "ch_types": ["eeg"] * len(THINGS_CHANNELS) + ["stim"],
        "sfreq": SFREQ,
        "highpass": 0.01,
        "lowpass": 100.0,
    }


def _pink(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(shape), axis=-1)
    freqs = np.fft.rfftfreq(shape[-1], 1 / SFREQ)
    spec /= np.sqrt(np.maximum(freqs, 0.5))
    x = np.fft.irfft(spec, n=shape[-1], axis=-1)
    return x / x.std(axis=-1, keepdims=True)


def _background(cfg: SyntheticConfig, world: World, n: int, rng: np.random.Generator) -> np.ndarray:
    n_ch = len(THINGS_CHANNELS)
    t = np.arange(n) / SFREQ
    pos = world.positions
    n_bg = 24
    bg = _topographies(pos, n_bg, rng, posterior=False) @ _pink((n_bg, n), rng)
    bg *= PINK_V / bg.std()
    # Alpha: 9-11 Hz with a slowly varying envelope, strongest over occipital channels.
    envelope = np.abs(_pink((1, n), rng)) * 0.7
    occipital = np.exp(-((pos[:, 1] + 0.1) ** 2) / (2 * 0.04**2))
    alpha = occipital[:, None] * envelope * np.sin(2 * np.pi * rng.uniform(9, 11) * t)[None]
    line = rng.uniform(0.5, 2.0, (n_ch, 1)) * 1e-6 * np.sin(2 * np.pi * cfg.line_hz * t)[None]
    drift = np.cumsum(rng.standard_normal((n_ch, n)), axis=1) * 2e-8
    frontal = np.exp(-((pos[:, 1] - 0.1) ** 2) / (2 * 0.03**2))
    blinks = np.zeros(n)
    n_blinks = rng.poisson(cfg.blink_rate_hz * n / SFREQ)
    shape = np.exp(-0.5 * ((np.arange(400) - 200) / 60.0) ** 2) * 100e-6
    for start in rng.integers(0, max(n - 400, 1), size=n_blinks):
        blinks[start : start + 400] += shape[: n - start]
    white = 1e-6 * rng.standard_normal((n_ch, n))
    return bg + 5e-6 * alpha + line + drift + frontal[:, None] * blinks[None] + white


def _render(z: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Factors [F] → RGB uint8 [P, P, 3]: a smooth nonlinear function of z."""
    field = np.tensordot(z, basis, axes=1) / np.sqrt(len(z))  # [3, P, P]
    img = 1 / (1 + np.exp(-RENDER_GAIN * field))
    return (img.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def _image_basis(f: int, px: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:px, 0:px] / px
    basis = np.zeros((f, 3, px, px))
    for k in range(f):
        colour = rng.standard_normal(3)
        if k % 2 == 0:  # a blob
            cy, cx, w = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.12, 0.3)
            pattern = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w**2))
        else:  # a low-frequency oriented grating
            theta, freq = rng.uniform(0, np.pi), rng.uniform(1.0, 3.0)
            pattern = np.cos(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)))
        basis[k] = 2.0 * colour[:, None, None] * pattern[None]
    return basis


def _write_images(
    cfg: SyntheticConfig, world: World, image_dir: Path, rng: np.random.Generator, overwrite: bool
) -> None:
    for part, names in world.concepts.items():
        counts = np.zeros(len(names), dtype=int)
        for z, c in zip(world.factors[part], world.concept_of[part], strict=True):
            counts[c] += 1
            word = names[c].split("_", 1)[1]
            path = Path(image_dir) / f"{part}_images" / names[c] / f"{word}_{counts[c]:02d}.png"
            if path.exists() and not overwrite:
                continue
            # The image is drawn from the same factors z that drive the EEG (data/stimuli.py).
            img = Image.fromarray(render_stimulus(z, cfg.image_px))
            atomic_write(path, lambda tmp, img=img: img.save(tmp, format="PNG"))
