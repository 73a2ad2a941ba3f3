"""What a finished sweep says: one row per trial, the top configurations first, and best.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgdm_dist.config import Config
from sgdm_dist.data.io import atomic_write_text
from sgdm_dist.tune.space import apply_params


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    status: str  # complete | stopped early | error
    folds_done: int
    iterations: int
    score: float | None  # the sweep metric: mean over folds when complete, running mean otherwise
    params: dict[str, Any]


def trial_rows(results: Any, metric: str, n_folds: int) -> list[TrialRow]:
    """Rows of a ``ray.tune.ResultGrid`` (errored trials included)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        folds_done = int(metrics.get("folds_done", 0))
        if result.error is not None:
            status = "error"
        else:
            status = "complete" if folds_done >= n_folds else "stopped early"
        rows.append(
            TrialRow(
                trial_id=str(metrics.get("trial_id", Path(result.path).name)),
                status=status,
                folds_done=folds_done,
                iterations=int(metrics.get("training_iteration", 0)),
                score=metrics.get(metric),
                params=dict(result.config or {}),
            )
        )
    return rows


def rank(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Complete trials first (their score is the full mean over folds), then those stopped early,
    then failed ones; best score first within each."""
    order = {"complete": 0, "stopped early": 1, "error": 2}
    sign = -1.0 if mode == "max" else 1.0

    def key(r: TrialRow) -> tuple[int, int, float]:
        missing = r.score is None
        return order[r.status], int(missing), 0.0 if missing else sign * float(r.score)

    return sorted(rows, key=key)


def table(rows: list[TrialRow], metric: str, top_k: int) -> str:
    """A plain-text table of the first ``top_k`` rows."""
    keys = sorted({k for r in rows for k in r.params})
    header = ["rank", "trial", "status", "folds", metric, *keys]
    body = [
        [
            str(i + 1),
            r.trial_id,
            r.status,
            str(r.folds_done),
            "-" if r.score is None else f"{r.score:.4f}",
            *[_fmt(r.params.get(k)) for k in keys],
        ]
        for i, r in enumerate(rows[:top_k])
    ]
    widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(rows: list[TrialRow], metric: str, path: Path) -> Path:
    import csv
    import io

    keys = sorted({k for r in rows for k in r.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "status", "folds_done", "iterations", metric, *keys])
    for r in rows:
        writer.writerow(
            [
                r.trial_id,
                r.status,
                r.folds_done,
                r.iterations,
                r.score,
                *[r.params.get(k) for k in keys],
            ]
        )
    return atomic_write_text(path, buffer.getvalue())


def write_best(base: Config, best: TrialRow, path: Path) -> Config:
    """``best.yaml``: the sweep's config with the best parameters, training on every subject again
    (the folds only existed to score configurations), as a file ``load_config`` accepts."""
    cfg = apply_params(base, best.params)
    atomic_write_text(path, cfg.to_yaml())
    return cfg


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trial_errors(results: Any) -> list[str]:
    """One line per failed trial: its folder, the exception it raised, where the traceback is.

    Ray wraps a trial's exception (``RayTaskError``) in a text whose last line is the original
    ``Type: message``; the full traceback is in the trial folder's ``error.txt``.
    """
    out = []
    for result in results:
        if result.error is None:
            continue
        lines = [line.strip() for line in str(result.error).splitlines() if line.strip()]
        cause = lines[-1] if lines else type(result.error).__name__
        where = Path(result.path) / "error.txt"
        out.append(
            f"{Path(result.path).name}: {cause}"
            + (f" (traceback: {where})" if where.is_file() else "")
        )
    return out
