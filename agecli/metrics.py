"""Age metrics with one definition each, shared by train, eval, lopo and the benchmarks.

CA(n), the cumulative accuracy, counts |prediction - age| < n on the continuous prediction
(no rounding), as the SSR-Net reference code does.
"""

from __future__ import annotations

import numpy as np

AGE_GROUPS = [(0, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, None)]


def mae(pred, target) -> float:
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    return float(np.abs(pred - target).mean()) if pred.size else float("nan")


def cumulative_accuracy(pred, target, n: float) -> float:
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    return float((np.abs(pred - target) < n).mean()) if pred.size else float("nan")


def age_metrics(pred, target) -> dict[str, float]:
    """The headline numbers: MAE, CA(3), CA(5) and the count they were computed on."""
    return {
        "mae": mae(pred, target),
        "ca3": cumulative_accuracy(pred, target, 3),
        "ca5": cumulative_accuracy(pred, target, 5),
        "n": int(np.asarray(target).size),
    }


def group_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def mae_by_age_group(pred, target) -> list[dict]:
    """MAE per decade of true age (0-9, ..., 70+), so weak spots are visible rather than averaged away."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    rows = []
    for lo, hi in AGE_GROUPS:
        mask = (target >= lo) & (target < (hi + 1 if hi is not None else np.inf))
        if mask.any():
            rows.append({"group": group_label(lo, hi), "n": int(mask.sum()), **age_metrics(pred[mask], target[mask])})
    return rows
