"""Comparison tables for the report and the log: model vs ridge vs chance, reconstruction vs floor and
ceiling, and the published THINGS-EEG2 numbers (shown only when the test set matches theirs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sgdm_dist.evaluation.reconstruction import baseline_rows
from sgdm_dist.evaluation.scoring import AVERAGED, CHANCE_ROW, MEAN_ROW, SINGLE
from sgdm_dist.metrics import (
    HIGHER_IS_BETTER,
    METRIC_ORDER,
)

PUBLISHED_RETRIEVAL = {
    "NICE-GA (intra-subject)": {"top1_200way": 0.156, "top5_200way": 0.428},
    "ATM-S (intra-subject)": {"top1_200way": 0.285, "top5_200way": 0.604},
    "UBP (intra-subject)": {"top1_200way": 0.509, "top5_200way": 0.797},
}


PUBLISHED_RECONSTRUCTION = {
    "ATM (subject 8)": {
        "PixCorr": 0.160,
        "SSIM": 0.345,
        "AlexNet(2)": 0.776,
        "AlexNet(5)": 0.866,
        "Inception": 0.734,
        "CLIP": 0.786,
        "SwAV": 0.582,
    }
}


PUBLISHED_N_IMAGES = 200


BASELINE_TITLE = (
    "Reconstruction: model vs floor (shuffled EEG) and ceiling (autoencoder round trip); "
    "all images, mean [95% bootstrap CI]"
)


def report_view(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics.json`` arranged for ``write_report``: a summary, one table per result group."""
    retrieval = metrics["retrieval"]
    view: dict[str, Any] = dict(metrics["summary"])
    view["Retrieval, repetitions averaged, per subject"] = retrieval[AVERAGED]
    view["Retrieval, single trials, per subject"] = retrieval[SINGLE]
    if metrics["reconstruction"]:
        baselines = metrics.get("reconstruction_baselines", {})
        if baselines:
            view[BASELINE_TITLE] = baseline_rows(metrics["reconstruction"], baselines, METRIC_ORDER)
        view["Reconstruction, per subject"] = _without_ci(metrics["reconstruction"])
        for kind, title in (
            ("floor", "Floor: reconstructions from shuffled EEG, per subject"),
            ("ceiling", "Ceiling: autoencoder round trip of the stimuli, per subject"),
        ):
            if kind in baselines:
                view[title] = _without_ci(baselines[kind])
        if "condition_sensitivity" in baselines:
            view["Condition sensitivity (pixel change: EEG swapped / seed changed)"] = baselines[
                "condition_sensitivity"
            ]
    view["Protocol"] = metrics["protocol"]
    return view


def _without_ci(table: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        row: {k: v for k, v in vals.items() if not k.endswith((".ci_low", ".ci_high"))}
        for row, vals in table.items()
    }


def comparison_tables(metrics: Mapping[str, Any]) -> list[Any]:
    """rich Tables for the terminal: retrieval per subject and mode, reconstruction per subject,
    with chance levels and (on the 200 THINGS-EEG2 test images) published numbers beside them."""
    from rich.table import Table

    retrieval = metrics["retrieval"]
    keys = [k for k in retrieval[AVERAGED][MEAN_ROW] if k.startswith("top")]
    n_images = metrics["summary"]["n_test_images"]
    table = Table(title=f"Retrieval on the test split ({n_images} images, k-way top-k)")
    table.add_column("subject")
    table.add_column("EEG")
    for key in keys:
        table.add_column(key, justify="right")
    for mode, label in ((AVERAGED, "averaged"), (SINGLE, "single trial")):
        for row, scores in retrieval[mode].items():
            if row == CHANCE_ROW:
                continue
            style = "bold" if row == MEAN_ROW else None
            table.add_row(row, label, *(_pct(scores.get(k)) for k in keys), style=style)
    table.add_row(CHANCE_ROW, "", *(_pct(retrieval[AVERAGED][CHANCE_ROW].get(k)) for k in keys))
    if n_images == PUBLISHED_N_IMAGES:
        for name, scores in PUBLISHED_RETRIEVAL.items():
            table.add_row(name, "averaged", *(_pct(scores.get(k)) for k in keys), style="dim")
    tables = [table]
    recon = metrics["reconstruction"]
    if recon:
        random_init = {
            k.removesuffix(".random_init")
            for k, v in recon[MEAN_ROW].items()
            if k.endswith(".random_init") and v
        }
        columns = [m for m in METRIC_ORDER if m in recon[MEAN_ROW]]
        rtable = Table(
            title="Reconstruction per subject (↑ higher is better, ↓ lower)",
            caption="* random-init backbone: tests the pipeline, NOT comparable with papers"
            if random_init
            else None,
        )
        rtable.add_column("subject")
        for m in columns:
            arrow = "↑" if HIGHER_IS_BETTER[m] else "↓"
            rtable.add_column(f"{m} {arrow}" + ("*" if m in random_init else ""), justify="right")
        for row, scores in recon.items():
            style = "bold" if row == MEAN_ROW else None
            rtable.add_row(row, *(f"{scores[m]:.3f}" for m in columns), style=style)
        if n_images == PUBLISHED_N_IMAGES:
            for name, scores in PUBLISHED_RECONSTRUCTION.items():
                rtable.add_row(name, *(_num(scores.get(m)) for m in columns), style="dim")
        tables.append(rtable)
        baselines = metrics.get("reconstruction_baselines", {})
        if baselines:
            tables.append(_baseline_table(recon, baselines, columns, random_init))
    return tables


def _baseline_table(
    recon: Mapping[str, Any],
    baselines: Mapping[str, Any],
    columns: list[str],
    random_init: set[str],
) -> Any:
    """Model vs floor vs ceiling per metric, with the condition sensitivity in the caption."""
    from rich.table import Table

    rows = baseline_rows(dict(recon), dict(baselines), columns)
    sens = baselines.get("condition_sensitivity", {}).get(MEAN_ROW)
    caption = (
        f"condition sensitivity {sens['condition_sensitivity']:.2f} (pixel change when the EEG is "
        f"swapped {sens['pixel_change_eeg_swapped']:.3f} / when only the seed changes "
        f"{sens['pixel_change_seed_changed']:.3f}; >= 1: the EEG decides the image)"
        if sens
        else None
    )
    table = Table(
        title=BASELINE_TITLE,
        caption=caption,
    )
    table.add_column("metric")
    for name in next(iter(rows.values()), {}):
        table.add_column(name, justify="right")
    for metric, cells in rows.items():
        arrow = "↑" if HIGHER_IS_BETTER[metric] else "↓"
        table.add_row(f"{metric} {arrow}" + ("*" if metric in random_init else ""), *cells.values())
    return table


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
