"""``sgdm evaluate``: the THINGS-EEG2 test protocol, its tables, figures and HTML report.

``evaluate`` runs the protocol top to bottom; ``scoring`` (retrieval and reconstruction per subject),
``reconstruction`` (model vs floor vs ceiling with bootstrap CIs), ``tables`` (comparison tables,
published numbers), ``figures`` and ``report`` (plots, the self-contained HTML page), ``mlflow_log``.

Public API: :func:`evaluate`, :class:`EvaluationResult`, :class:`EvaluationError`,
:func:`write_report`.
"""

from sgdm_dist.evaluation.evaluate import EvaluationResult, evaluate
from sgdm_dist.evaluation.report import write_report
from sgdm_dist.evaluation.scoring import EvaluationError

__all__ = ["EvaluationError", "EvaluationResult", "evaluate", "write_report"]
