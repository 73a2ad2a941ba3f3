"""The semantic head learns EEG → CLIP retrieval far above chance on the synthetic tiny dataset.

Real pipeline: `sgdm prepare configs/tiny.yaml --synthetic` writes shards, `make_loader` streams them, the
alignment stage trains for a fixed number of steps, and test trials (unseen images, zero-shot) are ranked
against every test image's CLIP embedding. The bound comes from chance, not from a timing: the observed
single-trial top-1 must exceed the 99.9th percentile of its null distribution, obtained by permuting which
test image each group of trials belongs to (this keeps the dependence between trials of one image).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from sgdm_dist.config import load_config
from sgdm_dist.data.loader import make_loader, split_image_embeddings
from sgdm_dist.data.manifest import read_manifest
from sgdm_dist.models import build_model

STEPS = 120
BATCH = 32


def _prepare(tmp: Path) -> list[str]:
    overrides = [
        f"data.raw_dir={tmp / 'raw'}",
        f"data.image_dir={tmp / 'raw' / 'images'}",
        f"data.shard_dir={tmp / 'shards'}",
        f"data.cache_dir={tmp / 'cache'}",
    ]
    cmd = [sys.executable, "-m", "sgdm_dist.cli", "prepare", "configs/tiny.yaml", *overrides]
    subprocess.run([*cmd, "--synthetic"], check=True, timeout=300, capture_output=True)
    return overrides


def _permutation_null(
    pred: torch.Tensor, labels: torch.Tensor, n_images: int, n_perm: int = 2000
) -> torch.Tensor:
    """Top-1 accuracies [n_perm] when image identities are shuffled among the trial groups."""
    g = torch.Generator().manual_seed(0)
    perms = torch.stack([torch.randperm(n_images, generator=g) for _ in range(n_perm)])
    return (perms[:, labels] == pred[None, :]).float().mean(dim=1)


def test_semantic_head_retrieves_test_images_far_above_chance(tmp_path: Path) -> None:
    overrides = _prepare(tmp_path)
    cfg = load_config("configs/tiny.yaml", overrides)
    manifest = read_manifest(cfg.data.shard_dir)
    torch.manual_seed(0)
    model = build_model(
        cfg.model,
        n_channels=manifest.n_channels,
        n_times=manifest.n_times,
        n_subjects=len(manifest.subjects),
    )
    params = [p for n, p in model.named_parameters() if not n.startswith("unet.")]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    step, epoch = 0, 0
    while step < STEPS:
        for batch in make_loader(cfg, "train", epoch=epoch, batch_size=BATCH):
            opt.zero_grad()
            model(batch, "align")["loss"].backward()
            opt.step()
            step += 1
            if step == STEPS:
                break
        epoch += 1

    image_index, image_clip = split_image_embeddings(cfg.data.shard_dir, "test")
    n_images = len(image_index)
    preds, labels, subjects = [], [], []
    for batch in make_loader(cfg, "test", shuffle=False, batch_size=64, drop_last=False):
        preds.append(model.predict_clip(batch["eeg"], batch["subject"]))
        labels.append(torch.searchsorted(image_index, batch["image_index"]))
        subjects.append(batch["subject"])
    z, label, subject = torch.cat(preds), torch.cat(labels), torch.cat(subjects)
    assert torch.equal(image_index[label], torch.cat([image_index[label]]))  # all test images known

    # Single trials.
    ranking = (z @ image_clip.T).argsort(dim=1, descending=True)  # [n_trials, n_images]
    top1 = (ranking[:, 0] == label).float().mean().item()
    null = _permutation_null(ranking[:, 0], label, n_images)
    bound = torch.quantile(null, 0.999).item()

    # Repetitions averaged per (subject, image), the field's usual protocol.
    hits1 = hits5 = queries = 0
    for s in subject.unique():
        for j in range(n_images):
            rows = (subject == s) & (label == j)
            query = torch.nn.functional.normalize(z[rows].mean(dim=0), dim=-1)
            order = (image_clip @ query).argsort(descending=True)
            hits1 += int(order[0] == j)
            hits5 += int(j in order[:5])
            queries += 1
    print(
        f"\nN = {n_images} test images (chance top-1 {1 / n_images:.3f}, top-5 {5 / n_images:.3f}); "
        f"single-trial top-1 {top1:.3f} (null 99.9 % {bound:.3f}, null mean {null.mean():.3f}); "
        f"averaged top-1 {hits1 / queries:.3f}, top-5 {hits5 / queries:.3f} over {queries} queries"
    )
    assert top1 > bound
    assert hits1 / queries > 1 / n_images
