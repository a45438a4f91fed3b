"""Calibrating the spread: a model's ± should mean what a standard deviation means.

A distribution model's spread is the standard deviation of its predicted age distribution. Trained with
cross-entropy it is informative (larger where errors are larger) but often too narrow. Temperature
scaling widens the distribution, p -> p^(1/T) renormalised, with one T chosen on validation so that the
shares of faces within ±1 and ±2 spreads come closest to a Gaussian's 68.3% and 95.4%: the larger of the two
misses, each counted in standard errors of its share (sqrt(p(1 - p)), sample size aside), is made as small as
it can be. Real errors have heavier tails than a Gaussian, so no T matches both shares; an unweighted sum gives
up the ±2 share (whose sampling noise is half as large) to win the ±1 one, and this balances them. The age
itself is not changed (AgeEnsemble takes it from the untempered average). A model trained on several
datasets gets the best T among those that put each dataset's validation shares within 68% ± 5 / 95% ± 3,
where one exists.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from agecli.metrics import GAUSSIAN_WITHIN, share_within
from agecli.models.base import distribution_stats

TEMPERATURES = np.round(np.arange(0.5, 6.01, 0.05), 2)
TARGET_BAND = {1: (0.68, 0.05), 2: (0.95, 0.03)}  # what "calibrated" asks of each source: 68% ± 5, 95% ± 3
SHARE_SD = {k: math.sqrt(p * (1 - p)) for k, p in GAUSSIAN_WITHIN.items()}  # a share's sampling sd, times sqrt(n)


def coverage(error: np.ndarray, spread: np.ndarray) -> tuple[float, float]:
    """Shares of |error| within 1 and 2 spreads (agecli.metrics.share_within, as the report counts them)."""
    return share_within(error, spread, 1), share_within(error, spread, 2)


def shares_by_temperature(logits: np.ndarray, ages: torch.Tensor, pred: np.ndarray,
                          target: np.ndarray) -> dict[float, tuple[float, float]]:
    """For every T of the grid, the shares of |pred - target| within ±1 and ±2 spreads of softmax(logits / T):
    one pass, from which the best T, the T within a band and the shares at any grid T are all read."""
    error = np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64))
    logits_t = torch.as_tensor(logits, dtype=torch.float32)
    return {float(t): coverage(error, distribution_stats(logits_t / float(t), ages)[1].numpy()) for t in TEMPERATURES}


def best_temperature(shares: dict[float, tuple[float, float]]) -> float:
    """The T whose shares come closest to a Gaussian's: the larger miss, in standard errors, made smallest."""
    return min(shares, key=lambda t: max(abs(c - GAUSSIAN_WITHIN[k]) / SHARE_SD[k] for k, c in zip((1, 2), shares[t])))


def in_band(shares: dict[float, tuple[float, float]], band: dict = TARGET_BAND) -> list[float]:
    """Every T at which the ±1 and ±2 shares both fall in `band` ({k: (share, tolerance)}): none when the
    errors' shape, not only their scale, differs from the spreads' too much for any one temperature."""
    return [t for t, cov in shares.items()
            if all(abs(c - band[k][0]) <= band[k][1] + 1e-9 for k, c in zip((1, 2), cov))]


def fit_temperature(logits: np.ndarray, ages: torch.Tensor, pred: np.ndarray, target: np.ndarray,
                    sources: np.ndarray | None = None) -> dict:
    """The T whose spreads cover the validation errors most like a Gaussian: {temperature, before, after,
    sources_in_band}. With `sources` (each face's dataset), the T is chosen among those that put every source's
    shares in TARGET_BAND, when there are such T: the pooled best alone follows the largest source."""
    shares, common = shares_by_temperature(logits, ages, pred, target), set()
    sources = None if sources is None else np.asarray(sources)
    if sources is not None and len(set(sources)) > 1:
        common = set(shares)
        for name in dict.fromkeys(sources):
            own = sources == name
            common &= set(in_band(shares_by_temperature(logits[own], ages, pred[own], target[own])))
    best = best_temperature({t: shares[t] for t in common} if common else shares)
    return {"temperature": best, "before": shares[1.0], "after": shares[best], "sources_in_band": bool(common)}
