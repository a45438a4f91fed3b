"""Scoring a model on cached crops: its ages (and spreads) for a table of rows, and the metrics of each split
and each source that results.json, `age eval` and the report show."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from agecli.data.cache import Batches
from agecli.data.preprocess import Preprocess
from agecli.metrics import age_metrics, spread_calibration


@torch.no_grad()
def predict_crops(model, crops: np.ndarray, rows, preprocess: Preprocess, batch_size: int = 256,
                  device: torch.device | str = "cpu", keep_logits: bool = False) -> dict[str, np.ndarray]:
    """Ages (and, for distribution heads, the predicted spread, and with keep_logits the logits) for the
    given cache rows."""
    model.eval()
    batches = Batches(crops, rows, np.zeros(len(rows)), batch_size, preprocess=preprocess, device=device)
    outputs: dict[str, list] = {"age": [], "spread": [], "logits": []}
    for x, _ in batches:
        out = model(x)
        outputs["age"].append(out["age"].float().cpu())
        if model.is_distribution:
            outputs["spread"].append(model.spread(out).cpu())
            if keep_logits:
                outputs["logits"].append(out["logits"].float().cpu())
    result = {"age": torch.cat(outputs["age"]).numpy() if outputs["age"] else np.zeros(0)}
    result.update({k: torch.cat(v).numpy() for k, v in outputs.items() if k != "age" and v})
    return result


def evaluate(model, crops, df: pd.DataFrame, preprocess: Preprocess, device="cpu", batch_size: int = 256) -> dict:
    pred = predict_crops(model, crops, df["cache_row"].to_numpy(), preprocess, batch_size, device)
    return age_metrics(pred["age"], df["age"].to_numpy())


def scored_metrics(pred, age, spread=None) -> dict:
    """age_metrics, plus for distribution models the share of faces within 1 and 2 predicted spreads."""
    metrics = age_metrics(pred, age)
    if spread is not None and len(age):
        within = spread_calibration(pred, age, spread)["within"]
        metrics.update({"within_1": within[0]["observed"], "within_2": within[1]["observed"]})
    return metrics


def metrics_by_source(predictions: pd.DataFrame) -> dict[str, dict]:
    """scored_metrics of each source of a predictions table (columns source, age, pred[, spread])."""
    return {name: scored_metrics(rows["pred"].to_numpy(), rows["age"].to_numpy(),
                                 rows["spread"].to_numpy() if "spread" in rows else None)
            for name, rows in predictions.groupby("source", sort=False)}


def predictions_table(model, crops, rows: pd.DataFrame, preprocess: Preprocess, device="cpu") -> pd.DataFrame:
    """One row per face: path, source, age, pred[, spread]."""
    pred = predict_crops(model, crops, rows["cache_row"].to_numpy(), preprocess, device=device)
    table = pd.DataFrame({"path": rows["path"].to_numpy(), "source": rows["source"].to_numpy(),
                          "age": rows["age"].to_numpy(), "pred": pred["age"]})
    if "spread" in pred:
        table["spread"] = pred["spread"]
    return table


def score_splits(model, crops, splits: dict[str, pd.DataFrame], preprocess: Preprocess) -> dict[str, dict]:
    """{split: {"all": metrics, "sources": {source: metrics}}} of the best model, for results.json."""
    device = next(model.parameters()).device
    scores = {}
    for split, rows in splits.items():
        if len(rows):
            table = predictions_table(model, crops, rows, preprocess, device)
            scores[split] = {"all": scored_metrics(table["pred"], table["age"], table.get("spread")),
                             "sources": metrics_by_source(table)}
    return scores
