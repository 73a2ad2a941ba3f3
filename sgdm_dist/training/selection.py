"""Model selection for the alignment stage: epochs → steps, best-weights selection, early stopping.

* ``resolve_epochs``: ``train.align_epochs`` (passes over the training split) → ``train.align_steps``
  for this manifest, batch size and world size, so one recipe neither over- nor under-fits when the
  dataset is 10x larger or smaller (docs/decoding.md, cause 5); ``train.eval_every_epochs`` →
  ``train.eval_every`` likewise, so early stopping's patience is the same number of epochs.
* ``Selection`` watches every validation of an alignment-only run (``train.diffusion_steps = 0``): it
  scores the evaluation copy by retrieval of the validation trials among the validation images, in the
  space the head was trained in (centred CLIP, ``baselines.scoring``), keeps the best weights
  (``train.select_best``) and asks the loop to stop after ``train.early_stop_patience`` validations
  without improvement. The validation split is carved from the *training* concepts: no test image is
  read. Two-stage runs are not selected (the UNet would be trained on an encoder that is then swapped).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch

from sgdm_dist.config import Config
from sgdm_dist.data import DataError
from sgdm_dist.data.manifest import Manifest

log = logging.getLogger(__name__)


def resolve_epochs(cfg: Config, manifest: Manifest, world_size: int) -> Config:
    """``cfg`` with ``train.align_steps`` and ``train.eval_every`` computed from
    ``train.align_epochs`` and ``train.eval_every_epochs`` (each only when set)."""
    train = cfg.train
    if train.align_epochs is None and train.eval_every_epochs is None:
        return cfg
    per_subject = manifest.splits["train"].per_subject
    subjects = train.subjects or list(per_subject)
    n_train_samples = sum(per_subject.get(s, 0) for s in subjects)
    per_step = cfg.data.loader.batch_size * world_size * train.grad_accum

    def steps(epochs: float) -> int:
        return max(1, math.ceil(epochs * n_train_samples / per_step))

    update: dict[str, int] = {}
    if train.align_epochs is not None:
        update["align_steps"] = steps(train.align_epochs)
    if train.eval_every_epochs is not None:
        update["eval_every"] = steps(train.eval_every_epochs)
    log.info("epochs → steps for %d training samples: %s", n_train_samples, update)
    return cfg.model_copy(update={"train": train.model_copy(update=update)})


class Selection:
    """Best-weights selection and early stopping on the validation split (rank 0 decides)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        align_only = cfg.train.diffusion_steps == 0
        self.select = align_only and bool(cfg.train.select_best)
        self.patience = cfg.train.early_stop_patience if align_only else None
        self.best_score = -math.inf
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad = 0
        self.stopped = False
        self._val: Any = None

    @property
    def active(self) -> bool:
        return self.select or self.patience is not None

    def hook(self, inner: Any) -> Any:
        """Wrap the loop's ``on_eval(step, model)`` so every validation is also scored here."""
        if not self.active:
            return inner

        def on_eval(step: int, model: Any) -> dict[str, float]:
            out = self.observe(step, model)
            if inner is not None:
                out.update(inner(step, model))
            return out

        return on_eval

    def observe(self, step: int, model: Any) -> dict[str, float]:
        """Score the evaluation copy; remember its weights when it is the best so far."""
        scores = self._score(model)
        if not scores:
            return {}
        value = scores["val/centred_top1"] + scores["val/centred_top5"]
        if value > self.best_score:
            self.best_score, self.best_step, self.bad = value, step, 0
            if self.select:
                self.best_state = copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
        else:
            self.bad += 1
        scores["val/best_step"] = float(self.best_step or 0)
        return scores

    def check_stop(self, accelerator: Any) -> bool:
        """Collective (after each validation): sets ``stopped`` on every rank once rank 0 ran out of
        patience. No-op without ``train.early_stop_patience``."""
        if self.patience is None:
            return False
        mine = float(self.bad >= self.patience)
        flag = torch.tensor([mine], device=accelerator.device)
        self.stopped = accelerator.reduce(flag, reduction="sum").item() > 0
        if self.stopped:
            log.info("early stop: %d validations without improvement", self.bad)
        return self.stopped

    def restore(self, model: Any) -> None:
        """Load the best weights seen into the (rank-0, full-weight) export copy."""
        if self.best_state is not None and model is not None:
            model.load_state_dict(self.best_state)
            log.info("exporting the best validation weights (step %s)", self.best_step)

    def _score(self, model: Any) -> dict[str, float]:
        from sgdm_dist.baselines.arrays import load_split
        from sgdm_dist.baselines.model_space import centred_candidates, predict_centred
        from sgdm_dist.baselines.scoring import score_decoder

        if self._val is None:
            try:
                self._val = load_split(self.cfg, "val", self.cfg.train.subjects)
            except (DataError, ValueError) as exc:  # no validation split: nothing to select on
                log.warning("model selection off: %s", exc)
                self._val = False
        if self._val is False:
            return {}
        val = self._val
        pred = predict_centred(model, val.eeg, val.subject)
        single = score_decoder(
            pred, val.image_index, val.image_ids, centred_candidates(model, val.clip)
        )["single"]
        return {
            "val/centred_top1": single["top1"],
            "val/centred_top5": single["top5"],
            "val/pairwise_cos": single["pairwise_cos"],
        }
