"""``sgdm tune``: Ray Tune sweeps with leave-subject-out folds."""

from __future__ import annotations

from sgdm_dist.cli.common import ConfigArg, OverridesArg, not_implemented


def tune(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Cross-subject hyper-parameter sweep with Ray Tune (leave-subject-out folds), tracked in MLflow."""
    not_implemented("tune", 7)
