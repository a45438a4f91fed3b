"""Age metrics with one definition each, shared by train, eval, lopo and the benchmarks.

CA(n), the cumulative accuracy, counts |prediction - age| < n on the continuous prediction
(no rounding), as the SSR-Net reference code does.
"""

from __future__ import annotations

import math

import numpy as np

CA_DEFINITION = ("CA(n) is the share of images with |predicted - true age| < n years, computed on the "
                 "unrounded prediction.")
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


def mae_by_age_group(pred, target, spread=None) -> list[dict]:
    """MAE per decade of true age (0-9, ..., 70+), so weak spots are visible rather than averaged away; with
    the predicted spreads, also each group's share of faces within ±1 and ±2 of them (within_1, within_2)."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    rows = []
    for lo, hi in AGE_GROUPS:
        mask = (target >= lo) & (target < (hi + 1 if hi is not None else np.inf))
        if mask.any():
            row = {"group": group_label(lo, hi), "n": int(mask.sum()), **age_metrics(pred[mask], target[mask])}
            if spread is not None:
                error, group_spread = pred[mask] - target[mask], np.asarray(spread, dtype=np.float64)[mask]
                row.update(within_1=share_within(error, group_spread, 1), within_2=share_within(error, group_spread, 2))
            rows.append(row)
    return rows


def paired_mae_difference(error, baseline_error, resamples: int = 2000, seed: int = 0) -> dict:
    """MAE minus the baseline's MAE on the same faces, with a 95% bootstrap interval over faces.

    Two models' errors on one validation set move together (hard faces are hard for both), so this
    interval is much narrower than either MAE's own; one that spans 0 means these faces cannot tell
    the models apart. Negative: better than the baseline.
    """
    error, baseline_error = (np.abs(np.asarray(e, dtype=np.float64)) for e in (error, baseline_error))
    if error.ndim != 1 or error.shape != baseline_error.shape or not error.size:
        raise ValueError("paired_mae_difference needs the errors of both models on the same, non-empty faces")
    diff = error - baseline_error
    draws = np.random.default_rng(seed).integers(0, diff.size, (resamples, diff.size))
    means = diff[draws].mean(1)
    return {"difference": float(diff.mean()), "low": float(np.percentile(means, 2.5)),
            "high": float(np.percentile(means, 97.5)), "n": int(diff.size)}


GAUSSIAN_WITHIN = {1: math.erf(1 / math.sqrt(2)), 2: math.erf(2 / math.sqrt(2))}  # 0.683 and 0.954


def share_within(error, spread, k: float) -> float:
    """The share of faces whose |error| is at most k predicted spreads (standard deviations); the one coverage
    formula, used by the report's calibration and by fitting the spread temperature."""
    error, spread = np.abs(np.asarray(error, dtype=np.float64)), np.asarray(spread, dtype=np.float64)
    return float((error <= k * spread).mean())


def spread_calibration(pred, target, std) -> dict:
    """Does a distribution model's spread (one predicted standard deviation) say how far off it is?

    within: share of faces with |error| <= k spreads, for k = 1 and 2, beside what a calibrated Gaussian
    gives (68.3% and 95.4%). quartiles: MAE of the faces in each quarter of the spread, lowest first; an
    informative spread makes it rise. curve: the observed share within k spreads for k from 0 to 3.
    """
    pred, target, std = (np.asarray(a, dtype=np.float64) for a in (pred, target, std))
    error = np.abs(pred - target)
    within = [{"k": k, "observed": share_within(error, std, k), "expected": GAUSSIAN_WITHIN[k]} for k in (1, 2)]
    quartiles = []
    for i, rows in enumerate(np.array_split(np.argsort(std, kind="stable"), 4)):  # equal counts, even with ties
        if rows.size:
            quartiles.append({"quartile": f"Q{i + 1}", "n": int(rows.size), "spread_min": float(std[rows].min()),
                              "spread_max": float(std[rows].max()), "mae": float(error[rows].mean())})
    ks = np.linspace(0, 3, 31)
    curve = {"k": ks.tolist(), "observed": [share_within(error, std, k) for k in ks],
             "expected": [math.erf(k / math.sqrt(2)) for k in ks]}
    return {"n": int(error.size), "within": within, "quartiles": quartiles, "curve": curve}
