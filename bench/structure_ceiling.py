"""How far the structure route (EEG → coarse VAE latent → decoded image) can go on a shard set, without
training an SGDM: closed-form readouts scored with the project's PixCorr / pixel two-way code.

    python bench/structure_ceiling.py CONFIG [--curve] [--model DIR] [overrides...]

Rows (test split, repetition-averaged EEG, per-subject readouts fitted on the train split only):

* ``ceiling``: the true cached latent decoded (the autoencoder round trip);
* ``ridge EEG → latent``: RidgeCV from flattened EEG to the latent, decoded (the head's linear form);
* ``ridge EEG → pixels``: RidgeCV to the decoded training latents' pixels, scored as is (no decoder);
* synthetic data only (the generator's factors z are known): how well z is decodable, ``render(ẑ)``
  (the information the EEG carries), and kernel ridge ẑ → latent (a smooth nonlinear readout);
* ``--model DIR``: a trained SGDM's structure head on the same EEG, against closed-form readouts
  (ridge, RBF kernel ridge; penalties by cross-validation on the train split) from its own z_eeg;
* ``--curve``: kernel ridge on noisy true factors (s.d. 0.25, about the demo's decoding error) →
  latent of freshly rendered stimuli, for more training images than the shards hold.

docs/model.md ("Structure guidance", "What limits it") records the demo's numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GridSearchCV
from sklearn.preprocessing import StandardScaler

from sgdm_dist.config import Config, load_config
from sgdm_dist.data.loader import make_loader
from sgdm_dist.data.stimuli import render
from sgdm_dist.data.synthetic import _make_world
from sgdm_dist.metrics.suite import per_image_metrics
from sgdm_dist.models.sgdm import SGDM
from sgdm_dist.reconstruct.model import find_vae, load_model, model_subjects

KRR_GRID = {"alpha": [1e-2, 1e-1, 1.0], "gamma": [0.03, 0.1, 0.3]}
CURVE_SIZES = (216, 500, 1000, 2000)
FACTOR_NOISE = 0.25  # s.d. of ẑ − z when per-factor decoding r ≈ 0.97 (measured on the demo)


def read_means(cfg: Config, split: str) -> dict[str, np.ndarray]:
    """Repetition means per (subject, image): eeg [M, C, T], latent, subject, image_index (+ image)."""
    sums: dict[tuple[int, int], list] = {}
    for batch in make_loader(cfg, split, shuffle=False, drop_last=False):
        for row, key in enumerate(
            zip(batch["subject"].tolist(), batch["image_index"].tolist(), strict=True)
        ):
            if bool(batch["pad"][row]):
                continue
            entry = sums.setdefault(key, [0.0, 0, batch["latent"][row].numpy(), None])
            entry[0] = entry[0] + batch["eeg"][row].double().numpy()
            entry[1] += 1
            if "image" in batch:
                entry[3] = batch["image"][row].numpy()
    keys = sorted(sums)
    out = {
        "subject": np.array([k[0] for k in keys]),
        "image_index": np.array([k[1] for k in keys]),
        "eeg": np.stack([sums[k][0] / sums[k][1] for k in keys]).astype(np.float32),
        "latent": np.stack([sums[k][2] for k in keys]),
    }
    if all(sums[k][3] is not None for k in keys):
        out["image"] = np.stack([sums[k][3] for k in keys])
    return out


def score(images: torch.Tensor, test: dict[str, np.ndarray]) -> dict[str, float]:
    """PixCorr, SSIM and Pixel(2-way) per subject (the evaluation's sets), averaged over subjects."""
    gt = torch.from_numpy(test["image"]).float()
    rows = []
    for s in np.unique(test["subject"]):
        keep = torch.from_numpy(test["subject"] == s)
        per_image, _ = per_image_metrics(images[keep].clamp(0, 1), gt[keep], None)
        rows.append({m: float(v.mean()) for m, v in per_image.items()})
    return {m: round(float(np.mean([r[m] for r in rows])), 3) for m in rows[0]}


def ridge_per_subject(
    train: dict[str, np.ndarray], target: np.ndarray, test: dict[str, np.ndarray]
) -> np.ndarray:
    """RidgeCV (standardised flattened EEG → target rows), one per subject; test predictions."""
    pred = np.zeros((len(test["subject"]), target.shape[1]), dtype=np.float32)
    for s in np.unique(test["subject"]):
        a, b = train["subject"] == s, test["subject"] == s
        x_train = train["eeg"][a].reshape(a.sum(), -1)
        scaler = StandardScaler().fit(x_train)
        model = RidgeCV(alphas=np.logspace(-1, 6, 15)).fit(scaler.transform(x_train), target[a])
        pred[b] = model.predict(scaler.transform(test["eeg"][b].reshape(b.sum(), -1)))
    return pred


def true_factors(cfg: Config, data: dict[str, np.ndarray], split: str) -> np.ndarray:
    """The synthetic generator's factors z [M, F] of each row's image (via the split's conditions)."""
    world = _make_world(cfg.data.synthetic, np.random.default_rng([cfg.experiment.seed, 7]))
    table = np.load(f"{cfg.data.shard_dir}/{split}_images.npz")
    condition = dict(zip(table["image_index"].tolist(), table["condition"].tolist(), strict=True))
    part = "test" if split == "test" else "training"
    return np.stack([world.factors[part][condition[i] - 1] for i in data["image_index"].tolist()])


def rendered(z: np.ndarray, px: int) -> np.ndarray:
    return (np.stack([render(v, px) for v in z]).transpose(0, 3, 1, 2) / 255.0).astype(np.float32)


def linear_rows(vae, train, test) -> dict[str, dict[str, float]]:
    shape = test["latent"].shape[1:]
    decode = lambda lat: SGDM.decode_latents(torch.from_numpy(lat).float(), vae)  # noqa: E731
    mean_latent = np.broadcast_to(train["latent"].mean(0), test["latent"].shape).copy()
    train_pixels = decode(train["latent"]).numpy()  # what the autoencoder can draw of each image
    lat = ridge_per_subject(train, train["latent"].reshape(len(train["latent"]), -1), test)
    pix = ridge_per_subject(train, train_pixels.reshape(len(train_pixels), -1), test)
    return {
        "ceiling (true latent decoded)": score(decode(test["latent"]), test),
        "training-mean latent decoded": score(decode(mean_latent), test),
        "ridge EEG → latent, decoded": score(decode(lat.reshape(-1, *shape)), test),
        "ridge EEG → pixels (no decoder)": score(
            torch.from_numpy(pix.reshape(-1, *train_pixels.shape[1:])), test
        ),
    }


def factor_rows(cfg: Config, vae, train, test) -> dict[str, dict[str, float]]:
    """Synthetic only: decodability of z, the information ceiling and a smooth readout ẑ → latent."""
    px = cfg.data.synthetic.image_px
    z_train, z_test = true_factors(cfg, train, "train"), true_factors(cfg, test, "test")
    z_hat = ridge_per_subject(train, z_train, test)
    r = [np.corrcoef(z_hat[:, k], z_test[:, k])[0, 1] for k in range(z_test.shape[1])]
    print(f"EEG → z: per-factor r on the test split {np.round(r, 2).tolist()}", flush=True)
    flat = train["latent"].reshape(len(train["latent"]), -1)
    krr = GridSearchCV(KernelRidge(kernel="rbf"), KRR_GRID, cv=5).fit(z_train, flat)
    decode = lambda lat: SGDM.decode_latents(torch.from_numpy(lat).float(), vae)  # noqa: E731
    shape = test["latent"].shape[1:]
    return {
        "render(ẑ): generator known (information ceiling)": score(
            torch.from_numpy(rendered(z_hat, px)), test
        ),
        "kernel ridge true z → latent, decoded": score(
            decode(krr.predict(z_test).reshape(-1, *shape).astype(np.float32)), test
        ),
        "kernel ridge ẑ (EEG) → latent, decoded": score(
            decode(krr.predict(z_hat).reshape(-1, *shape).astype(np.float32)), test
        ),
    }


@torch.no_grad()
def model_rows(model_dir: Path, vae, train, test) -> dict[str, dict[str, float]]:
    """The model's structure head against closed-form readouts from the same z_eeg features."""
    model = load_model(model_dir).eval()
    if model.structure is None:
        raise SystemExit(f"{model_dir}: the model has no structure head (lambda_structure 0)")

    def features(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        ids = model_subjects(torch.from_numpy(data["subject"]), model.n_subjects)
        out, _ = model.encode(torch.from_numpy(data["eeg"]), ids)
        return out.z.numpy(), model.structure(out.z).numpy()

    (z_train, _), (z_test, head) = features(train), features(test)
    scaler = StandardScaler().fit(z_train)
    x_train, x_test = scaler.transform(z_train), scaler.transform(z_test)
    flat = train["latent"].reshape(len(z_train), -1)
    ridge = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(x_train, flat)
    grid = {"alpha": KRR_GRID["alpha"], "gamma": [0.003, 0.01, 0.03, 0.1]}
    krr = GridSearchCV(KernelRidge(kernel="rbf"), grid, cv=5).fit(x_train, flat)
    shape = test["latent"].shape[1:]

    def decoded(pred: np.ndarray) -> dict[str, float]:
        latent = torch.from_numpy(pred.reshape(-1, *shape).astype(np.float32))
        return score(SGDM.decode_latents(latent, vae), test)

    return {
        "model's structure head (strength 0)": decoded(head),
        "ridge z_eeg → latent, decoded": decoded(ridge.predict(x_test)),
        "kernel ridge z_eeg → latent, decoded": decoded(krr.predict(x_test)),
    }


@torch.no_grad()
def learning_curve(cfg: Config, vae) -> dict[str, dict[str, float]]:
    """Kernel ridge (noisy true z → latent) for more training images: 5 sets of 20 test renders."""
    rng = np.random.default_rng(0)
    px, f = cfg.data.synthetic.image_px, cfg.data.synthetic.n_factors
    scale = vae.config.scaling_factor

    def encode(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images) * 2 - 1
        return (vae.encode(x).latent_dist.mean * scale).numpy()

    z_test = rng.standard_normal((100, f))
    test_images = torch.from_numpy(rendered(z_test, px))
    z_noisy = z_test + FACTOR_NOISE * rng.standard_normal(z_test.shape)
    rows = {}
    for n in CURVE_SIZES:
        z = rng.standard_normal((n, f))
        latent = encode(rendered(z, px))
        noisy = z + FACTOR_NOISE * rng.standard_normal(z.shape)
        krr = GridSearchCV(KernelRidge(kernel="rbf"), KRR_GRID, cv=3).fit(
            noisy, latent.reshape(n, -1)
        )
        pred = krr.predict(z_noisy).reshape(-1, *latent.shape[1:]).astype(np.float32)
        images = SGDM.decode_latents(torch.from_numpy(pred), vae)
        sets = {"subject": np.repeat(np.arange(5), 20), "image": test_images.numpy()}
        rows[f"kernel ridge, {n} training images"] = score(images, sets)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--curve", action="store_true", help="also the learning curve (minutes)")
    parser.add_argument("--model", type=Path, help="a trained SGDM folder: its head vs readouts")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    train, test = read_means(cfg, "train"), read_means(cfg, "test")
    vae, _ = find_vae(Path(cfg.data.shard_dir), 4, shard_dir=cfg.data.shard_dir)
    vae.eval()
    rows = linear_rows(vae, train, test)
    if args.model is not None:
        rows.update(model_rows(args.model, vae, train, test))
    if cfg.data.source == "synthetic":
        rows.update(factor_rows(cfg, vae, train, test))
        if args.curve:
            rows.update(learning_curve(cfg, vae))
    print("| readout | PixCorr | SSIM | Pixel(2-way) |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['PixCorr']} | {row['SSIM']} | {row['Pixel(2-way)']} |")


if __name__ == "__main__":
    main()
