"""The decoding benchmark's table (bench/decoding.py, docs/decoding.md): one row per dataset × method
× setting, its text form, and the summary lines that compare the default recipe with ridge.

A method may be trained at several seeds (``bench/decoding.py --train-seeds N``): its rows then share
a ``base`` name (``default``, ``default-s1``, ... all have base ``default``), and the summary compares
the mean over those seeds, so one lucky seed cannot carry a claim.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

HEADER = (
    f"{'dataset':<18} {'method':<15} {'setting':<8} "
    f"{'single top-1':>15} {'single top-5':>15} {'avg top-1':>15} {'avg top-5':>15} "
    f"{'hubs':>5} {'pw-cos':>6} {'chance':>6} {'s':>5}"
)


def pool_subjects(parts: list[dict[str, float]]) -> dict[str, float]:
    """Per-subject scores → pooled over subjects (equal trial counts: mean; s.e. of the pool)."""
    n = sum(p["n"] for p in parts)
    out = {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}
    for k in ("top1", "top5"):
        out[f"{k}_se"] = (out[k] * (1 - out[k]) / n) ** 0.5
    out["n"] = n
    return out


def table_row(
    dataset: str, method: str, base: str, setting: str, scores: dict, seconds: float
) -> dict:
    """One row: ``scores`` {"single": {...}, "averaged": {...}} flattened as ``single_top1``, ..."""
    row = {
        "dataset": dataset,
        "method": method,
        "base": base,
        "setting": setting,
        "seconds": seconds,
    }
    for mode in ("single", "averaged"):
        for k, v in scores[mode].items():
            row[f"{mode}_{k}"] = v
    return row


def format_row(r: dict) -> str:
    def pm(key: str) -> str:
        return f"{r[key]:.3f}±{r[key + '_se']:.3f}"

    return (
        f"{r['dataset']:<18} {r['method']:<15} {r['setting']:<8} "
        f"{pm('single_top1'):>15} {pm('single_top5'):>15} {pm('averaged_top1'):>15} "
        f"{pm('averaged_top5'):>15} {r['single_distinct_top1']:>5.0f} "
        f"{r['single_pairwise_cos']:>6.2f} {r['single_chance_top1']:>6.3f} {r['seconds']:>5.0f}"
    )


def seed_means(rows: list[dict], base: str) -> dict[tuple[str, str], float]:
    """(dataset, setting) → single-trial top-1 of method ``base``, averaged over its seeds."""
    seen: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["base"] == base:
            seen[(r["dataset"], r["setting"])].append(r["single_top1"])
    return {key: float(np.mean(v)) for key, v in seen.items()}


def summary(rows: list[dict]) -> list[str]:
    """The last lines: the default's LOSO top-1 over chance and default/ridge intra-subject top-1,
    each the minimum over datasets (and folds) of the mean over the default's seeds. Three decimals:
    a goal such as 1.3 is not met by a 1.297 that two decimals would print as 1.30."""
    default, ridge = seed_means(rows, "default"), seed_means(rows, "ridge")
    chance = {(r["dataset"], r["setting"]): r["single_chance_top1"] for r in rows}
    n_seeds = len({r["method"] for r in rows if r["base"] == "default"})
    ratios = [
        top1 / max(ridge[key], 1e-9)
        for key, top1 in default.items()
        if key[1] == "intra" and key in ridge
    ]
    loso = [top1 / chance[key] for key, top1 in default.items() if key[1].startswith("loso")]
    lines = [f"decoding: default = the mean of {n_seeds} training seeds"] if n_seeds > 1 else []
    if any(key[1].endswith("+al") for key in default):
        lines.append("decoding: LOSO subjects latency-aligned to the training subjects (+al)")
    if loso:
        lines.append(f"decoding: default LOSO top-1 / chance min={min(loso):.3f}")
    reference = seed_means(rows, "noise-free")
    room = [
        f"{d} {top1 / max(ridge[(d, s)], 1e-9):.2f}"
        for (d, s), top1 in reference.items()
        if (d, s) in ridge
    ]
    if room:  # how far above ridge a kernel decoder of the noise-free sources gets (no EEG noise)
        lines.append(f"decoding: noise-free/ridge top-1: {', '.join(room)}")
    ratio = min(ratios) if ratios else float("nan")
    return [*lines, f"decoding: default/ridge top-1 ratio min={ratio:.3f}"]
