"""EEG → images on disk: find the model, its VAE and the EEG, sample with a seed, write PNGs + a grid.

``sgdm reconstruct`` runs :func:`reconstruct_to_dir`; ``sgdm evaluate`` reuses the pieces. EEG comes
from shards (one split; the trials of each subject are grouped by image and their repetitions
averaged, as the THINGS-EEG2 test protocol does) or from a ``.npy`` array [N, C, T] of single
trials/averages. Every input is checked against the model before any sampling starts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sgdm_dist.data.io import atomic_write_text
from sgdm_dist.models import SGDM
from sgdm_dist.reconstruct.inputs import SplitEEG, read_npy_eeg, read_split
from sgdm_dist.reconstruct.model import (
    ReconstructError,
    TrainingData,
    find_vae,
    load_model,
    model_folder,
    model_subjects,
    training_data,
)
from sgdm_dist.reconstruct.sampling import (
    GRID_CELL,
    GRID_COLUMNS,
    GRID_MAX_ITEMS,
    SamplingOptions,
    sample_images,
    save_comparison_grid,
    save_png,
)
from sgdm_dist.utils.grids import fit_square, save_image_grid

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

log = logging.getLogger(__name__)


INDEX_FILE = "reconstructions.json"


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
    plan, data = _read_plan(
        eeg, model, trained, split, subject, limit, options.batch_size, progress
    )
    vae_model, vae_source = find_vae(
        model_dir,
        model.latent_shape[0],
        vae=vae,
        shard_dir=None if is_file else eeg,
        trained=trained,
    )
    vae_model = vae_model.to(dev)
    files, items, columns = _sample_plan(plan, model, vae_model, options, out_dir, progress)
    grid = _write_grid(out_dir, plan, columns, data=data)
    record = {
        "model": str(model_ref),
        "model_dir": str(model_dir),
        "eeg": eeg,
        "split": None if is_file else split,
        "vae": vae_source,
        "sampling": asdict(options),
        "grid": grid.name,
        "items": items,
    }
    index = atomic_write_text(out_dir / INDEX_FILE, json.dumps(record, indent=2) + "\n")
    log.info(
        "wrote %d reconstructions, %s and %s to %s", len(files), grid.name, index.name, out_dir
    )
    return ReconstructResult(out_dir=out_dir, files=files, grid=grid, index=index)


def _read_plan(
    eeg: str,
    model: SGDM,
    trained: TrainingData,
    split: str,
    subject: int | None,
    limit: int | None,
    batch_size: int,
    progress: bool,
) -> tuple[list[_Group], SplitEEG | None]:
    """Read and check ``eeg`` (a ``.npy`` file or a shard dir) and group its rows for sampling;
    the split read is returned too (None for a file), for the grid's stimuli."""
    if eeg.endswith(".npy"):
        rows = read_npy_eeg(Path(eeg), model, trained)[:limit]
        return _file_plan(rows, subject or 0, model), None
    data = read_split(
        eeg,
        split,
        model=model,
        trained=trained,
        subjects=[subject] if subject is not None else None,
        batch_size=batch_size,
        progress=progress,
    )
    return _shard_plan(data, model, limit), data


def _sample_plan(
    plan: list[_Group],
    model: SGDM,
    vae: AutoencoderKL,
    options: SamplingOptions,
    out_dir: Path,
    progress: bool,
) -> tuple[list[Path], list[dict[str, Any]], list[tuple[str, Tensor]]]:
    """Sample every group and save its PNGs; returns the files, their index entries and one
    (label, images [N, 3, H, W]) column per group for the grid."""
    files: list[Path] = []
    items: list[dict[str, Any]] = []
    columns: list[tuple[str, Tensor]] = []
    for group in plan:
        images = sample_images(
            model,
            group.eeg,
            group.model_subject,
            vae,
            options,
            desc=group.label,
            progress=progress,
        )
        for n, (name, item) in enumerate(zip(group.names, group.items, strict=True)):
            files.append(save_png(images[n], out_dir / name))
            items.append({"file": name, **item})
        columns.append((group.label, images))
    return files, items, columns


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
        cells = torch.stack([fit_square(x, GRID_CELL) for x in images])
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
