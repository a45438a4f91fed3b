"""Pictures people would rather see than read: training curves and error by age."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agecli.utils import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_curves(history: list[dict], path: Path) -> None:
    plt = _pyplot()
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
        ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_error_by_age(pred, target, path: Path, title: str = "") -> None:
    """Signed error against true age (scatter) and MAE per decade (bars)."""
    from agecli.metrics import mae_by_age_group

    plt = _pyplot()
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    fig, (ax_scatter, ax_bars) = plt.subplots(1, 2, figsize=(11, 4))
    ax_scatter.scatter(target, pred - target, s=6, alpha=0.4)
    ax_scatter.axhline(0, color="black", lw=0.8)
    ax_scatter.set(xlabel="true age", ylabel="predicted - true (years)", title=title or "error by age")
    groups = mae_by_age_group(pred, target)
    ax_bars.bar([g["group"] for g in groups], [g["mae"] for g in groups], color="tab:orange")
    for i, g in enumerate(groups):
        ax_bars.text(i, g["mae"], f"n={g['n']}", ha="center", va="bottom", fontsize=7)
    ax_bars.set(xlabel="true age group", ylabel="MAE (years)", title="MAE by age group")
    for ax in (ax_scatter, ax_bars):
        ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
