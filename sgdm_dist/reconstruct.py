"""EEG → images on disk: find the model, its VAE and the EEG, sample with a seed, write PNGs + a grid.

``sgdm reconstruct`` runs :func:`reconstruct_to_dir`; ``sgdm evaluate`` reuses the pieces. EEG comes
from shards (one split; the trials of each subject are grouped by image and their repetitions
averaged, as the THINGS-EEG2 test protocol does) or from a ``.npy`` array [N, C, T] of single
trials/averages. Every input is checked against the model before any sampling starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from sgdm_dist.atomic import atomic_write
from sgdm_dist.data import DataError
from sgdm_dist.data.io import atomic_write_text
from sgdm_dist.data.loader import ShardStream, select_shards
from sgdm_dist.data.manifest import Manifest, read_manifest
from sgdm_dist.data.samples import SampleSpec
from sgdm_dist.models import SGDM
from sgdm_dist.report import save_image_grid

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

log = logging.getLogger(__name__)

MODELS_SCHEME = "models:/"
GRID_CELL = 128  # px per grid cell: small reconstructions stay visible, large ones stay light
GRID_COLUMNS = 8  # cells per grid row
GRID_MAX_ITEMS = 24  # stimuli (or EEG rows) shown in grid.png
INDEX_FILE = "reconstructions.json"


class ReconstructError(ValueError):
    """Bad input for reconstruction; the message names the file, shard or model and what is wrong."""


@dataclass(frozen=True)
class SamplingOptions:
    """How images are sampled: steps, CFG scale, sampler, seed and EEG rows per batch (same seed
    and batch size → identical images; see :func:`sample_images`)."""

    steps: int = 25
    guidance_scale: float = 3.0
    scheduler: Literal["ddim", "dpm++"] = "ddim"
    seed: int = 0
    batch_size: int = 16
    strength: float | None = None  # img2img start from the EEG's structure; None → model default


# ------------------------------------------------------------------------------------ the model


def model_folder(
    ref: str | Path, *, tracking_uri: str | None = None, dst: Path | None = None
) -> Path:
    """A local model folder for ``ref``: a folder path, or ``models:/NAME@ALIAS`` /
    ``models:/NAME/VERSION`` pulled (verified) from the MLflow registry into ``dst`` (None → the
    registry's cache). Folders with a ``checksums.json`` (pulled copies) are verified too."""
    text = str(ref)
    if not text.startswith(MODELS_SCHEME):
        text = str(Path(text).expanduser())
    if not text.startswith(MODELS_SCHEME) and not Path(text).is_dir():
        raise ReconstructError(
            f"model {text}: no such folder (give a trained model folder such as "
            "outputs/tiny/model, or models:/NAME@ALIAS)"
        )
    from sgdm_dist.registry import RegistryError, resolve_model

    try:
        return Path(resolve_model(text, tracking_uri=tracking_uri, dst=dst))
    except RegistryError as exc:
        raise ReconstructError(f"model {text}: {exc}") from None


def load_model(model_dir: Path, device: str | torch.device = "cpu") -> SGDM:
    """The saved SGDM in eval mode; a folder that is not a model is a :class:`ReconstructError`."""
    try:
        return SGDM.from_pretrained(model_dir, device=device).eval()
    except (FileNotFoundError, ValueError) as exc:
        raise ReconstructError(f"cannot load model: {exc}") from None


@dataclass(frozen=True)
class TrainingData:
    """What a model folder records about its training data (``data_manifest.json``,
    ``experiment.yaml``); fields are None when the folder does not say."""

    ch_names: list[str] | None = None
    sfreq: float | None = None
    shard_dir: str | None = None


def training_data(model_dir: Path) -> TrainingData:
    ch_names, sfreq, shard_dir = None, None, None
    manifest = model_dir / "data_manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        ch_names, sfreq = data.get("ch_names"), data.get("sfreq")
    experiment = model_dir / "experiment.yaml"
    if experiment.is_file():
        import yaml

        data = yaml.safe_load(experiment.read_text()) or {}
        shard_dir = (data.get("data") or {}).get("shard_dir")
    return TrainingData(ch_names=ch_names, sfreq=sfreq, shard_dir=shard_dir)


def check_eeg_shape(
    n_channels: int, n_times: int, model: SGDM, trained: TrainingData, where: str
) -> None:
    """Raise a :class:`ReconstructError` naming ``where`` when [C, T] does not fit the model."""
    problems = []
    if n_channels != model.n_channels:
        names = f" ({', '.join(trained.ch_names)})" if trained.ch_names else ""
        problems.append(
            f"{n_channels} channels per trial, the model takes {model.n_channels}{names}"
        )
    if n_times != model.n_times:
        secs = (
            f" ({model.n_times / trained.sfreq:g} s at {trained.sfreq:g} Hz)"
            if trained.sfreq
            else ""
        )
        problems.append(f"{n_times} time samples per trial, the model takes {model.n_times}{secs}")
    if problems:
        raise ReconstructError(f"{where}: " + "; ".join(problems))


def model_subjects(subject: Tensor, n_subjects: int, agnostic: bool = False) -> Tensor:
    """Subject ids the model can embed [B]: ids outside 1..n_subjects (never trained) → 0, the
    subject-agnostic fallback; every id → 0 when ``agnostic``."""
    if agnostic:
        return torch.zeros_like(subject)
    known = (subject >= 1) & (subject <= n_subjects)
    return torch.where(known, subject, torch.zeros_like(subject))


# -------------------------------------------------------------------------------------- the VAE


def find_vae(
    model_dir: Path,
    latent_channels: int,
    *,
    vae: str | None = None,
    shard_dir: str | None = None,
    trained: TrainingData | None = None,
) -> tuple[AutoencoderKL, str]:
    """The VAE to decode with and where it came from, the first of: ``vae`` (a VAE folder or a shard
    dir), ``model_dir/vae`` (registered models carry one), the manifest of ``shard_dir``, the shard dir
    the model was trained on (its ``experiment.yaml``)."""
    from diffusers import AutoencoderKL

    from sgdm_dist.data.features import load_vae

    tried: list[str] = []
    found: tuple[Any, str] | None = None
    if vae is not None:
        found = _load_vae_from(load_vae, vae, "--vae")
    elif (model_dir / "vae" / "config.json").is_file():
        found = _load_vae_from(AutoencoderKL.from_pretrained, str(model_dir / "vae"), "model")
    else:
        tried.append(f"{model_dir / 'vae'} (absent)")
        for origin, candidate in (
            ("EEG shards", shard_dir),
            ("training shards", trained.shard_dir if trained else None),
        ):
            if candidate is None:
                continue
            if not _has_manifest(candidate):
                tried.append(f"{candidate} ({origin}: no manifest.json)")
                continue
            found = _load_vae_from(load_vae, candidate, origin)
            break
    if found is None:
        raise ReconstructError(
            "no VAE to decode latents with; looked in " + ", ".join(tried or ["nothing"]) + ". "
            "Pass --vae with a VAE folder or the shard dir the model was trained on."
        )
    model, source = found
    if model.config.latent_channels != latent_channels:
        raise ReconstructError(
            f"VAE from {source} has {model.config.latent_channels} latent channels, the model "
            f"samples {latent_channels}"
        )
    return model.eval(), source


def _load_vae_from(loader: Any, where: str, origin: str) -> tuple[Any, str]:
    try:
        return loader(where), f"{where} ({origin})"
    except (OSError, ValueError, DataError) as exc:
        raise ReconstructError(f"cannot load the VAE from {where} ({origin}): {exc}") from None


def _has_manifest(shard_dir: str) -> bool:
    try:
        read_manifest(shard_dir)
    except (DataError, OSError):
        return False
    return True


# -------------------------------------------------------------------------------------- the EEG


@dataclass
class SplitEEG:
    """One split of a shard set, grouped by subject and image.

    Per subject s: ``mean_eeg[s]`` [M_s, C, T] float32, the mean over the repetitions of each image;
    ``image_index[s]`` [M_s] sorted; ``n_reps[s]`` [M_s]; and, when read with a model, single-trial
    CLIP predictions ``trial_pred[s]`` [N_s, D] with their ``trial_index[s]`` [N_s].
    ``images``: image index → stimulus [3, H, W] uint8 (when the split stores them);
    ``concepts``: image index → concept name.
    """

    shard_dir: str
    split: str
    manifest: Manifest
    mean_eeg: dict[int, Tensor] = field(default_factory=dict)
    image_index: dict[int, Tensor] = field(default_factory=dict)
    n_reps: dict[int, Tensor] = field(default_factory=dict)
    trial_pred: dict[int, Tensor] = field(default_factory=dict)
    trial_index: dict[int, Tensor] = field(default_factory=dict)
    images: dict[int, Tensor] = field(default_factory=dict)
    concepts: dict[int, str] = field(default_factory=dict)

    @property
    def subjects(self) -> list[int]:
        return sorted(self.mean_eeg)

    def stimuli(self, index: Tensor) -> Tensor:
        """Stimuli [K, 3, H, W] float in [0, 1] of image indices [K]."""
        missing = [int(i) for i in index if int(i) not in self.images]
        if missing:
            raise ReconstructError(
                f"{self.shard_dir}: split '{self.split}' stores no stimulus image for image "
                f"indices {missing[:5]} (prepare the shards with images to score reconstructions)"
            )
        return torch.stack([self.images[int(i)] for i in index]).float() / 255.0


def read_split(
    shard_dir: str,
    split: str,
    *,
    model: SGDM,
    trained: TrainingData,
    subjects: list[int] | None = None,
    predict: bool = False,
    agnostic: bool = False,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = True,
) -> SplitEEG:
    """Read ``split`` once (checking its EEG shape and channels against the model first): repetition
    means per subject and image, stimuli, and with ``predict`` the single-trial CLIP predictions."""
    from sgdm_dist.data.loader import EEGLoader

    manifest = read_manifest(shard_dir)
    check_eeg_shape(manifest.n_channels, manifest.n_times, model, trained, f"shards {shard_dir}")
    if trained.ch_names is not None and list(trained.ch_names) != list(manifest.ch_names):
        raise ReconstructError(
            f"shards {shard_dir}: channels {manifest.ch_names} differ from the model's training "
            f"channels {trained.ch_names} (same names in the same order are required)"
        )
    shards = select_shards(manifest, split, subjects)
    if not shards:
        raise ReconstructError(f"shards {shard_dir}: split '{split}' has no shards")
    stream = ShardStream(
        shard_dir,
        shards,
        batch_size=batch_size,
        seed=0,
        epoch=0,
        rank=0,
        world_size=1,
        num_workers=num_workers,
        shuffle=False,
        shuffle_buffer=0,
        resampled=False,
        drop_last=False,
        skip_corrupt=False,
        spec=SampleSpec.from_manifest(manifest),
    )
    loader = EEGLoader(stream, num_workers, manifest)
    concepts = manifest.splits[split].concepts
    out = SplitEEG(shard_dir=shard_dir, split=split, manifest=manifest)
    sums: dict[tuple[int, int], Tensor] = {}
    counts: dict[tuple[int, int], int] = {}
    preds: dict[int, list[Tensor]] = {}
    pred_index: dict[int, list[Tensor]] = {}
    for batch in tqdm(
        loader, total=len(loader), desc=f"read {split}", unit="batch", disable=not progress
    ):
        eeg, subject, index = batch["eeg"], batch["subject"], batch["image_index"]
        for row, (s, i) in enumerate(zip(subject.tolist(), index.tolist(), strict=True)):
            key = (s, i)
            sums[key] = sums.get(key, 0) + eeg[row].double()
            counts[key] = counts.get(key, 0) + 1
            out.concepts.setdefault(i, concepts[int(batch["concept"][row])])
            if "image" in batch and i not in out.images:
                out.images[i] = batch["image"][row].mul(255).round().to(torch.uint8)
        if predict:
            pred = model.predict_clip(eeg, model_subjects(subject, model.n_subjects, agnostic))
            for s in subject.unique().tolist():
                rows = subject == s
                preds.setdefault(s, []).append(pred[rows].float().cpu())
                pred_index.setdefault(s, []).append(index[rows])
    for s in sorted({s for s, _ in sums}):
        images = sorted(i for t, i in sums if t == s)
        out.image_index[s] = torch.tensor(images, dtype=torch.long)
        out.n_reps[s] = torch.tensor([counts[(s, i)] for i in images])
        out.mean_eeg[s] = torch.stack([(sums[(s, i)] / counts[(s, i)]).float() for i in images])
        if predict:
            out.trial_pred[s] = torch.cat(preds[s])
            out.trial_index[s] = torch.cat(pred_index[s])
    if not out.mean_eeg:
        raise ReconstructError(f"shards {shard_dir}: split '{split}' holds no trials")
    return out


def read_npy_eeg(path: Path, model: SGDM, trained: TrainingData) -> Tensor:
    """EEG [N, C, T] float32 from a ``.npy`` file ([C, T] is one row), checked against the model."""
    if not path.is_file():
        raise ReconstructError(f"EEG file {path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ReconstructError(f"EEG file {path}: not a readable .npy array ({exc})") from None
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ReconstructError(f"EEG file {path}: dtype {array.dtype} is not numeric")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ReconstructError(
            f"EEG file {path}: shape {list(array.shape)}, expected [N, C, T] "
            f"(trials × {model.n_channels} channels × {model.n_times} samples)"
        )
    if array.shape[0] == 0:
        raise ReconstructError(f"EEG file {path}: holds no trials (shape {list(array.shape)})")
    check_eeg_shape(array.shape[1], array.shape[2], model, trained, f"EEG file {path}")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=(1, 2)))
    if bad.size:
        raise ReconstructError(f"EEG file {path}: non-finite values in rows {bad[:5].tolist()}")
    return torch.from_numpy(array.astype(np.float32))


# ------------------------------------------------------------------------------------- sampling


def sample_images(
    model: SGDM,
    eeg: Tensor,
    subject: Tensor,
    vae: AutoencoderKL,
    options: SamplingOptions,
    *,
    desc: str = "sampling",
    progress: bool = True,
) -> Tensor:
    """EEG [N, C, T] + model subject ids [N] → images [N, 3, H, W] float in [0, 1] on the CPU.

    The same seed and batch size give identical images. The model draws all noise up front, so
    another batch size starts from the same noise; batched float maths may then differ in the last
    bits (at most about one 8-bit level per pixel).
    """
    total = math.ceil(eeg.shape[0] / options.batch_size) * options.steps  # at most (img2img: fewer)
    with _denoising_progress(model, total, desc, progress):
        images = model.reconstruct(
            eeg,
            subject,
            vae=vae,
            steps=options.steps,
            guidance_scale=options.guidance_scale,
            scheduler=options.scheduler,
            seed=options.seed,
            batch_size=options.batch_size,
            strength=options.strength,
        )
    return images.float().cpu()


@contextlib.contextmanager
def _denoising_progress(model: SGDM, total: int, desc: str, enabled: bool) -> Iterator[None]:
    """A progress bar ticked by each UNet call (one per denoising step and batch), so sampling itself
    stays untouched."""
    bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled)

    def tick(*_: Any) -> None:  # a hook returning a value would replace the UNet's output
        bar.update(1)

    handle = model.unet.register_forward_hook(tick)
    try:
        yield
    finally:
        handle.remove()
        bar.close()


# ------------------------------------------------------------------------------------- writing


def save_png(image: Tensor, path: Path) -> Path:
    """image [3, H, W] float in [0, 1] → an 8-bit RGB PNG, written atomically (same pixels → same bytes)."""
    array = image.detach().float().cpu().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(array.numpy(), mode="RGB").save(buf, format="PNG")
    return atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


def save_comparison_grid(
    path: Path,
    columns: list[tuple[str, Tensor]],
    row_labels: list[str],
    max_rows: int = GRID_MAX_ITEMS,
) -> Path:
    """One row per item, one column per image set: ``columns`` = [(label, images [N, 3, H, W])], e.g.
    ("stimulus", ...), ("sub-01", ...). Cells are resized to ``GRID_CELL`` px; the first ``max_rows``
    items, as many side by side as fit in ``GRID_COLUMNS`` cells."""
    n = min(len(row_labels), max_rows)
    cells, labels = [], []
    for row in range(n):
        for label, images in columns:
            cells.append(_fit(images[row], GRID_CELL))
            labels.append(f"{row_labels[row]} {label}" if label == "stimulus" else label)
    per_row = max(1, GRID_COLUMNS // len(columns))
    return save_image_grid(torch.stack(cells), path, nrow=per_row * len(columns), labels=labels)


def _fit(image: Tensor, size: int) -> Tensor:
    out = TF.resize(image.float()[None], [size], antialias=True)
    return TF.center_crop(out, [size, size])[0].clamp(0, 1)


# ---------------------------------------------------------------------------------- the command


@dataclass
class ReconstructResult:
    """What ``sgdm reconstruct`` wrote: ``files`` (PNGs), ``grid`` (grid.png), ``index``
    (reconstructions.json, one entry per PNG) under ``out_dir``."""

    out_dir: Path
    files: list[Path]
    grid: Path
    index: Path


def reconstruct_to_dir(
    model_ref: str,
    eeg: str,
    out_dir: Path,
    options: SamplingOptions,
    *,
    subject: int | None = None,
    split: str = "test",
    limit: int | None = None,
    vae: str | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> ReconstructResult:
    """Reconstruct images from ``eeg`` (a shard dir, or a ``.npy`` file [N, C, T]) into ``out_dir``.

    Shards: for each subject of ``split`` (or only ``subject``), one image per stimulus from the
    repetition-averaged EEG → ``sub-XX/NNNNN.png`` (NNNNN = image index), and a grid
    stimulus | subject reconstructions. ``.npy``: one image per row → ``row-NNNNN.png``, all with
    ``subject`` (default 0, subject-agnostic). ``limit`` keeps the first images/rows.
    """
    if options.steps < 1 or options.batch_size < 1:
        raise ReconstructError("--steps and --batch-size must be >= 1")
    if limit is not None and limit < 1:
        raise ReconstructError(f"--limit must be >= 1, got {limit}")
    out_dir = Path(out_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_dir = model_folder(model_ref, tracking_uri=tracking_uri)
    model = load_model(model_dir, dev)
    trained = training_data(model_dir)
    is_file = eeg.endswith(".npy")
    if is_file:
        rows = read_npy_eeg(Path(eeg), model, trained)[:limit]
        plan = _file_plan(rows, subject or 0, model)
    else:
        data = read_split(
            eeg,
            split,
            model=model,
            trained=trained,
            subjects=[subject] if subject is not None else None,
            batch_size=options.batch_size,
            progress=progress,
        )
        plan = _shard_plan(data, model, limit)
    vae_model, vae_source = find_vae(
        model_dir,
        model.latent_shape[0],
        vae=vae,
        shard_dir=None if is_file else eeg,
        trained=trained,
    )
    vae_model = vae_model.to(dev)
    files: list[Path] = []
    items: list[dict[str, Any]] = []
    columns: list[tuple[str, Tensor]] = []
    for group in plan:
        images = sample_images(
            model,
            group.eeg,
            group.model_subject,
            vae_model,
            options,
            desc=group.label,
            progress=progress,
        )
        for n, (name, item) in enumerate(zip(group.names, group.items, strict=True)):
            files.append(save_png(images[n], out_dir / name))
            items.append({"file": name, **item})
        columns.append((group.label, images))
    grid = _write_grid(out_dir, plan, columns, data=None if is_file else data)
    index = atomic_write_text(
        out_dir / INDEX_FILE,
        json.dumps(
            {
                "model": str(model_ref),
                "model_dir": str(model_dir),
                "eeg": eeg,
                "split": None if is_file else split,
                "vae": vae_source,
                "sampling": asdict(options),
                "grid": grid.name,
                "items": items,
            },
            indent=2,
        )
        + "\n",
    )
    log.info(
        "wrote %d reconstructions, %s and %s to %s", len(files), grid.name, index.name, out_dir
    )
    return ReconstructResult(out_dir=out_dir, files=files, grid=grid, index=index)


@dataclass
class _Group:
    """EEG rows sampled together and the names/metadata of their PNGs."""

    label: str
    eeg: Tensor
    model_subject: Tensor
    names: list[str]
    items: list[dict[str, Any]]
    image_index: Tensor | None = None


def _file_plan(rows: Tensor, subject: int, model: SGDM) -> list[_Group]:
    ids = model_subjects(torch.full((rows.shape[0],), subject), model.n_subjects)
    if subject and int(ids[0]) == 0:
        log.warning(
            "subject %d was not trained (the model knows 1..%d): using the subject-agnostic 0",
            subject,
            model.n_subjects,
        )
    names = [f"row-{n:05d}.png" for n in range(rows.shape[0])]
    items = [
        {"row": n, "subject": subject, "model_subject": int(ids[n])} for n in range(len(names))
    ]
    return [_Group("reconstruction", rows, ids, names, items)]


def _shard_plan(data: SplitEEG, model: SGDM, limit: int | None) -> list[_Group]:
    groups = []
    for s in data.subjects:
        index = data.image_index[s][:limit]
        ids = model_subjects(torch.full((len(index),), s), model.n_subjects)
        label = f"sub-{s:02d}"
        names = [f"{label}/{int(i):05d}.png" for i in index]
        items = [
            {
                "subject": s,
                "model_subject": int(ids[n]),
                "image_index": int(i),
                "concept": data.concepts.get(int(i)),
                "n_reps": int(data.n_reps[s][n]),
            }
            for n, i in enumerate(index)
        ]
        groups.append(_Group(label, data.mean_eeg[s][:limit], ids, names, items, index))
    return groups


def _write_grid(
    out_dir: Path, plan: list[_Group], columns: list[tuple[str, Tensor]], data: SplitEEG | None
) -> Path:
    path = out_dir / "grid.png"
    if data is None:  # .npy rows: reconstructions only
        images = columns[0][1][:GRID_MAX_ITEMS]
        labels = [f"row {n}" for n in range(images.shape[0])]
        cells = torch.stack([_fit(x, GRID_CELL) for x in images])
        return save_image_grid(cells, path, nrow=GRID_COLUMNS, labels=labels)
    # Rows = images every subject has (all of them in THINGS-EEG2), stimulus first when stored.
    common = sorted(set.intersection(*(set(g.image_index.tolist()) for g in plan)))
    if not common:  # subjects saw disjoint images: show the first subject's alone
        common, plan, columns = plan[0].image_index.tolist(), plan[:1], columns[:1]
    picked: list[tuple[str, Tensor]] = []
    if all(i in data.images for i in common):
        picked.append(("stimulus", data.stimuli(torch.tensor(common))))
    for group, (label, images) in zip(plan, columns, strict=True):
        rows = {int(i): n for n, i in enumerate(group.image_index)}
        picked.append((label, images[[rows[i] for i in common]]))
    return save_comparison_grid(path, picked, [f"{i:05d}" for i in common])
