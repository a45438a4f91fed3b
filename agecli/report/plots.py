"""Pictures people would rather see than read: training curves, errors by age, per subject and by spread.

Each `*_figure` function builds a matplotlib figure; `plot_*` saves one as a PNG file in a run folder and
`figure_png` gives the bytes that report.html inlines.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from agecli.files.atomic import atomic_path
from agecli.metrics import mae_by_age_group

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _grid(*axes) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)


def curves_figure(history: list[dict]):
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_mae, ax_ca) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker=".")
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_mae.plot(epochs, [r["val_mae"] for r in history], marker=".", color="tab:red")
    ax_mae.set(title="validation MAE (years)", xlabel="epoch")
    ax_ca.plot(epochs, [r["val_ca3"] for r in history], marker=".", label="CA(3)")
    ax_ca.plot(epochs, [r["val_ca5"] for r in history], marker=".", label="CA(5)")
    ax_ca.set(title="validation CA(n)", xlabel="epoch", ylim=(0, 1))
    ax_ca.legend()
    for ax in (ax_loss, ax_mae, ax_ca):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    _grid(ax_loss, ax_mae, ax_ca)
    return fig


def plot_curves(history: list[dict], path: Path) -> None:
    _save(curves_figure(history), path)


def _age_group_bars(ax, pred, target) -> None:
    groups = mae_by_age_group(pred, target)
    ax.bar([g["group"] for g in groups], [g["mae"] for g in groups], color="tab:orange")
    for i, g in enumerate(groups):
        ax.text(i, g["mae"], f"n={g['n']}", ha="center", va="bottom", fontsize=7)
    ax.set(xlabel="true age group", ylabel="MAE (years)", title="MAE by age group")


def error_by_age_figure(pred, target, title: str = ""):
    """Signed error against true age (scatter) and MAE per decade (bars)."""
    plt = _pyplot()
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    fig, (ax_scatter, ax_bars) = plt.subplots(1, 2, figsize=(11, 4))
    ax_scatter.scatter(target, pred - target, s=6, alpha=0.4)
    ax_scatter.axhline(0, color="black", lw=0.8)
    ax_scatter.set(xlabel="true age", ylabel="predicted - true (years)", title=title or "error by age")
    _age_group_bars(ax_bars, pred, target)
    _grid(ax_scatter, ax_bars)
    return fig


def plot_error_by_age(pred, target, path: Path, title: str = "") -> None:
    _save(error_by_age_figure(pred, target, title), path)


def predicted_vs_true_figure(pred, target):
    """Predicted against true age with the line of perfect answers, and MAE per decade (bars)."""
    plt = _pyplot()
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    fig, (ax_scatter, ax_bars) = plt.subplots(1, 2, figsize=(11, 4.2))
    alpha = float(np.clip(30 / max(len(pred), 1) ** 0.5, 0.15, 0.8))  # dense clouds stay readable
    ax_scatter.scatter(target, pred, s=7, alpha=alpha, edgecolors="none")
    top = float(max(target.max(initial=1), pred.max(initial=1))) * 1.05
    ax_scatter.plot([0, top], [0, top], color="black", lw=0.8, ls="--", label="predicted = true")
    ax_scatter.set(xlim=(0, top), ylim=(0, top), xlabel="true age", ylabel="predicted age",
                   title="predicted against true age", aspect="equal")
    ax_scatter.legend(loc="upper left")
    _age_group_bars(ax_bars, pred, target)
    _grid(ax_scatter, ax_bars)
    return fig


def subject_mae_figure(subjects: list[dict]):
    """MAE of every held-out subject (bars, in subject order), or their histogram when there are too many."""
    plt = _pyplot()
    maes = np.array([s["mae"] for s in subjects], float)
    label = f"mean of per-subject MAEs: {maes.mean():.2f}"
    fig, ax = plt.subplots(figsize=(11, 3.6))
    if len(subjects) <= 120:
        ax.bar(range(len(maes)), maes, color="tab:blue")
        ticks = list(range(0, len(maes), max(1, len(maes) // 40)))
        ax.set_xticks(ticks, [str(subjects[i]["subject"]) for i in ticks], rotation=90, fontsize=7)
        ax.set(xlabel="held-out subject", ylabel="MAE (years)")
        ax.axhline(maes.mean(), color="tab:red", lw=1, label=label)
    else:
        ax.hist(maes, bins=40, color="tab:blue")
        ax.set(xlabel="MAE of a held-out subject (years)", ylabel="subjects")
        ax.axvline(maes.mean(), color="tab:red", lw=1, label=label)
    ax.set_title(f"MAE per held-out subject ({len(subjects)} subjects)")
    ax.legend()
    _grid(ax)
    return fig


def calibration_figure(calibration: dict):
    """Share of faces within k predicted spreads against a calibrated Gaussian, and MAE by spread quartile."""
    plt = _pyplot()
    curve, quartiles = calibration["curve"], calibration["quartiles"]
    fig, (ax_cover, ax_q) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax_cover.plot(curve["k"], curve["expected"], color="black", ls="--", lw=1, label="calibrated Gaussian")
    ax_cover.plot(curve["k"], curve["observed"], color="tab:purple", lw=2, label="this model")
    for w in calibration["within"]:
        ax_cover.plot([w["k"]], [w["observed"]], "o", color="tab:purple")
        ax_cover.annotate(f"{w['observed']:.0%} (vs {w['expected']:.0%})", (w["k"], w["observed"]),
                          textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax_cover.set(xlabel="k (predicted standard deviations)", ylabel="share of faces with |error| <= k sd",
                 title="calibration of the spread", ylim=(0, 1.02), xlim=(0, 3))
    ax_cover.legend(loc="lower right")
    labels = [f"{q['quartile']}\n{q['spread_min']:.1f}-{q['spread_max']:.1f}" for q in quartiles]
    ax_q.bar(labels, [q["mae"] for q in quartiles], color="tab:purple", alpha=0.8)
    ax_q.set(xlabel="quartile of predicted spread (years)", ylabel="MAE (years)", title="MAE by spread quartile")
    _grid(ax_cover, ax_q)
    return fig
