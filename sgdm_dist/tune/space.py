"""Search spaces: ``tune.space`` (YAML data) → Ray Tune domains, and sampled values → a Config.

A space key is any dotted config key (``train.lr``, ``model.encoder.dropout``); every sampled
configuration is validated like a YAML file, so a value the config rejects fails with the key named.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from sgdm_dist.config import Config, ConfigError, validate
from sgdm_dist.config.tune import SearchDim


def search_space(cfg: Config) -> dict[str, Any]:
    """``{dotted key: ray.tune domain}`` for ``cfg.tune.space`` (keys checked against ``cfg``)."""
    from ray import tune

    check_space(cfg)
    builders = {
        "uniform": lambda d: tune.uniform(d.low, d.high),
        "loguniform": lambda d: tune.loguniform(d.low, d.high),
        "randint": lambda d: tune.randint(int(d.low), int(d.high)),
        "choice": lambda d: tune.choice(d.values),
        "grid": lambda d: tune.grid_search(d.values),
    }
    return {key: builders[dim.type](dim) for key, dim in cfg.tune.space.items()}


def check_space(cfg: Config) -> None:
    """Refuse unknown keys and values the config would reject, before any trial starts."""
    if not cfg.tune.space:
        raise ConfigError("tune.space is empty: nothing to search (see configs/tune/tiny.yaml)")
    known = cfg.flat()
    for key, dim in cfg.tune.space.items():
        if key not in known:
            close = sorted(k for k in known if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])
            hint = f" (keys in that section: {', '.join(close)})" if close else ""
            raise ConfigError(f"tune.space: '{key}' is not a config key{hint}")
        for value in _probe_values(dim):
            try:
                apply_params(cfg, {key: value})
            except ConfigError as exc:
                raise ConfigError(f"tune.space['{key}'] can produce {value!r}: {exc}") from None


def apply_params(cfg: Config, params: Mapping[str, Any]) -> Config:
    """``cfg`` with each dotted key of ``params`` replaced, validated as a whole."""
    tree = copy.deepcopy(cfg.to_dict())
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"tune parameter '{key}': '{part}' is not a config section")
            node = node[part]
        node[leaf] = _plain(value)
    return validate(tree, {key: "tune.space" for key in params})


def _probe_values(dim: SearchDim) -> list[Any]:
    if dim.values is not None:
        return list(dim.values)
    if dim.type == "randint":
        return [int(dim.low), int(dim.high) - 1]
    return [dim.low, dim.high]


def _plain(value: Any) -> Any:
    """NumPy scalars from the searchers → Python numbers (pydantic and YAML want plain types)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, list | dict) else value
