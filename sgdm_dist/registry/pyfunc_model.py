"""The SGDM as an MLflow pyfunc, logged as a "model from code" (no pickled Python objects).

MLflow stores this file with the model and runs it at load time; ``set_model`` at the bottom tells
MLflow which object is the model. The weights, configs and VAE travel as one artifact folder
(``context.artifacts["sgdm"]``, the layout of ``{output_dir}/model/`` plus ``vae/``), verified
against its ``checksums.json`` before anything is loaded, and that list against the sha256 the
registry recorded (:mod:`sgdm_dist.registry.verify`; this file itself can only be vouched for by
``registry.verify.load_verified``, which checks it before MLflow runs it).

``predict`` input: ``{"eeg": float32 [B, C, T], "subject": int64 [B]}`` (a dict of arrays, or a
DataFrame with those columns); subject ids are 1-based and ids the model was not trained on fall
back to 0, the subject-agnostic embedding. Output: float32 images [B, 3, H, W] in [0, 1].
Params (all optional): steps, guidance_scale, scheduler ("ddim" | "dpm++"), seed, batch_size.
Device: ``mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"})``; default a GPU if any.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

ARTIFACT_KEY = "sgdm"
MODEL_CONFIG = {"device": "auto"}  # logged with the model, so load_model may override it
DEFAULT_PARAMS: dict[str, Any] = {
    "steps": 25,
    "guidance_scale": 3.0,
    "scheduler": "ddim",
    "seed": 0,
    "batch_size": 16,
}


class SGDMPyfunc(PythonModel):
    """EEG trials → reconstructed images, with the VAE the training shards were made with."""

    def load_context(self, context: Any) -> None:
        import torch

        from sgdm_dist.models import SGDM
        from sgdm_dist.registry.verify import anchored_digest, describe
        from sgdm_dist.utils.checksums import verify_folder

        root = Path(context.artifacts[ARTIFACT_KEY])
        config = getattr(context, "model_config", None) or {}
        digest = anchored_digest(root, config)  # before any weight or config is read
        verify_folder(root, expected_digest=digest)
        level = logging.INFO if digest else logging.WARNING
        logging.getLogger(__name__).log(level, "SGDM pyfunc %s: %s", root, describe(digest))
        # load_model(..., model_config={"device": "cpu"}) pins the device; default: a GPU if any.
        wanted = config.get("device", "auto")
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(wanted)
        self.model = SGDM.from_pretrained(root, device=self.device).eval()
        self.vae = _load_vae(root).to(self.device).eval()

    # model_input stays unannotated: MLflow has no type hint for a dict of named tensors, and the
    # tensor signature logged with the model already validates the input (MLflow warns about it).
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None):
        import torch

        eeg, subject = _arrays(model_input, self.model.n_channels, self.model.n_times)
        # Ids beyond the trained subjects mean "unknown person": the agnostic fallback, id 0.
        subject = np.where((subject >= 1) & (subject <= self.model.n_subjects), subject, 0)
        p = {**DEFAULT_PARAMS, **(params or {})}
        images = self.model.reconstruct(
            torch.from_numpy(eeg),
            torch.from_numpy(subject),
            vae=self.vae,
            steps=int(p["steps"]),
            guidance_scale=float(p["guidance_scale"]),
            scheduler=str(p["scheduler"]),
            seed=int(p["seed"]),
            batch_size=int(p["batch_size"]),
        )
        return images.cpu().numpy().astype(np.float32)


def _load_vae(root: Path) -> Any:
    """The VAE bundled as ``vae/`` (default), else the one of the shards named in experiment.yaml."""
    from diffusers import AutoencoderKL

    if (root / "vae" / "config.json").is_file():
        return AutoencoderKL.from_pretrained(root / "vae", use_safetensors=True)
    import yaml

    from sgdm_dist.data.features import load_vae

    trained = yaml.safe_load((root / "experiment.yaml").read_text()) or {}
    shard_dir = (trained.get("data") or {}).get("shard_dir")
    if not shard_dir:
        raise ValueError(f"{root}: no vae/ folder and no data.shard_dir in experiment.yaml")
    return load_vae(shard_dir)


def _arrays(model_input: Any, n_channels: int, n_times: int) -> tuple[np.ndarray, np.ndarray]:
    """``eeg`` float32 [B, C, T] and ``subject`` int64 [B] from a dict of arrays or a DataFrame."""
    if hasattr(model_input, "columns"):  # pandas DataFrame: one row per trial, nested lists
        model_input = {c: np.stack([np.asarray(v) for v in model_input[c]]) for c in model_input}
    if not isinstance(model_input, dict) or "eeg" not in model_input:
        raise ValueError(
            "SGDM pyfunc input must be {'eeg': [B, C, T], 'subject': [B]} (subject optional); "
            f"got {type(model_input).__name__}"
        )
    eeg = np.asarray(model_input["eeg"], dtype=np.float32)
    if eeg.ndim == 2:
        eeg = eeg[None]
    if eeg.ndim != 3 or eeg.shape[1:] != (n_channels, n_times):
        raise ValueError(
            f"SGDM pyfunc input 'eeg' has shape {list(eeg.shape)}; the model takes "
            f"[B, {n_channels}, {n_times}] (channels × time samples)"
        )
    if "subject" in model_input and model_input["subject"] is not None:
        subject = np.asarray(model_input["subject"], dtype=np.int64).reshape(-1)
    else:
        subject = np.zeros(eeg.shape[0], dtype=np.int64)
    if subject.shape[0] != eeg.shape[0]:
        raise ValueError(
            f"SGDM pyfunc input: {subject.shape[0]} subject ids for {eeg.shape[0]} EEG trials"
        )
    return eeg, subject


mlflow.models.set_model(SGDMPyfunc())
