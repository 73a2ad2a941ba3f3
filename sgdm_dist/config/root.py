"""The whole experiment configuration: one typed object made of the per-concern sections."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from sgdm_dist.config.base import Section
from sgdm_dist.config.data import DataConfig
from sgdm_dist.config.evaluate import EvaluateConfig
from sgdm_dist.config.experiment import ExperimentConfig
from sgdm_dist.config.launch import LaunchConfig
from sgdm_dist.config.model import ModelConfig
from sgdm_dist.config.registry import RegistryConfig
from sgdm_dist.config.train import TrainConfig
from sgdm_dist.config.tune import TuneConfig


class Config(Section):
    experiment: ExperimentConfig = ExperimentConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    registry: RegistryConfig = RegistryConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    launch: LaunchConfig = LaunchConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (paths as strings)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 1e-4, ...}``: the form MLflow params and Ray Tune search spaces use."""
        return flatten(self.to_dict())


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings → one level with joined keys: ``{"a": {"b": 1}}`` → ``{"a.b": 1}``.

    An empty mapping stays a value, so a flattened config still says the key exists.
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        joined = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, joined + sep, sep))
        else:
            out[joined] = value
    return out
