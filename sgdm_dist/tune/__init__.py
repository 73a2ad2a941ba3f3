"""Cross-subject hyper-parameter sweeps on Ray Tune (``sgdm tune``); see docs/tune.md.

``run_sweep(cfg)`` samples configurations from ``cfg.tune.space``; each trial trains every
leave-subject-out fold with the real training loop and reports the held-out subjects' validation
retrieval; ASHA stops weak trials, MLflow nests one child run per trial under the sweep's run, and
the best configuration lands in ``best.yaml``.
"""

from sgdm_dist.tune.folds import Fold, make_folds
from sgdm_dist.tune.space import apply_params, search_space
from sgdm_dist.tune.sweep import SweepError, SweepResult, reports_per_fold, run_sweep, sweep_dir

__all__ = [
    "Fold",
    "SweepError",
    "SweepResult",
    "apply_params",
    "make_folds",
    "reports_per_fold",
    "run_sweep",
    "search_space",
    "sweep_dir",
]
