"""Typed, validated configuration: ``load_config("configs/tiny.yaml", ["train.lr=3e-4"])``."""

from sgdm_dist.config.loader import ConfigError, load_config, parse_override, validate
from sgdm_dist.config.root import Config, flatten

__all__ = ["Config", "ConfigError", "flatten", "load_config", "parse_override", "validate"]
