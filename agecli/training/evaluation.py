"""`age eval` as one library call: evaluate a checkpoint on a prepared dataset and write its run folder
(predictions.csv, metrics.json, error_by_age.png, report.html), so a caller from Python gets the same
files as the command."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from agecli.data.cache import open_crops
from agecli.errors import AgeCliError
from agecli.files.atomic import write_csv_atomic, write_json_atomic
from agecli.files.outputs import check_output_dir
from agecli.files.run_dirs import increment_dir
from agecli.metrics import age_metrics
from agecli.modelio.checkpoint import (
    load_checkpoint,
)
from agecli.report import build_report_or_warn
from agecli.report.plots import plot_error_by_age
from agecli.system.device import select_device
from agecli.system.reproducibility import library_versions
from agecli.training.engine import load_data, predict_crops

EVAL_PROJECT = Path("runs/eval")
EVAL_FILES = ("report.html", "metrics.json", "predictions.csv", "error_by_age.png")


def run_eval(checkpoint: str | Path, data: str | Path | None = None, split: str = "test", device: str = "auto",
             out: str | Path | None = None, warn: Callable[[str], None] | None = None) -> dict:
    """Evaluate `checkpoint` on `split` of `data` (default: the dataset it was trained on) and write the
    run folder `out` (default: a new runs/eval/NAME). Returns evaluate_checkpoint's result plus
    "out_dir" and "summary" (what metrics.json holds without the model record). `warn` receives a
    warning line when report.html cannot be built (the other files are kept)."""
    checkpoint = Path(checkpoint)
    if out is not None:
        check_output_dir(out, "--out")
    if data is None:
        data = recorded_dataset(checkpoint)
    result = evaluate_checkpoint(checkpoint, data, split, device)
    out_dir = Path(out) if out is not None else increment_dir(EVAL_PROJECT, eval_label(checkpoint))
    result["summary"] = write_eval_outputs(result, checkpoint, out_dir, warn)
    result["out_dir"] = out_dir
    return result


def recorded_dataset(checkpoint: Path) -> str:
    """The prepared dataset a checkpoint was trained on, as its config records it."""
    data = load_checkpoint(checkpoint).get("config", {}).get("data", {}).get("manifest")
    if not data:
        raise AgeCliError(f"{checkpoint}: records no dataset; pass --data")
    return data


def eval_label(checkpoint: Path) -> str:
    """runs/eval/RUN for runs/train/RUN/best.pt; the file's stem for a checkpoint in the working folder."""
    return checkpoint.stem if checkpoint.parent.name in ("", ".") else checkpoint.parent.name


def write_eval_outputs(result: dict, checkpoint: str | Path, out_dir: str | Path,
                       warn: Callable[[str], None] | None = None) -> dict:
    """Write an evaluation's files into out_dir (created if needed); returns the metrics summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds, split = result["predictions"], result["split"]
    write_csv_atomic(out_dir / "predictions.csv", preds.to_dict("records"), list(preds.columns))
    plot_error_by_age(preds["pred"], preds["age"], out_dir / "error_by_age.png", title=f"{checkpoint} on {split}")
    summary = {"checkpoint": str(checkpoint), "data": result["data"], "split": split, **result["metrics"],
               "by_age": result["by_age"]}
    write_json_atomic(out_dir / "metrics.json", {**summary, **result["record"]})
    build_report_or_warn(out_dir, warn)
    return summary


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "test",
                        device: str = "auto") -> dict:
    """`age eval`: metrics of a checkpoint on one split of a prepared dataset, plus per-image predictions."""
    from agecli.metrics import mae_by_age_group
    from agecli.modelio.checkpoint import load_model

    model, preprocess, state = load_model(checkpoint)
    prepared, df = load_data(data)
    rows = df if split in ("", "all") else df[df["split"] == split]
    if rows.empty:
        raise AgeCliError(f"{prepared / 'manifest.csv'}: no rows in split '{split}' "
                          f"(splits present: {sorted(set(df['split']))}); pass --split all to use every row")
    crops = open_crops(prepared, preprocess.crop_size)
    dev = select_device(device)
    model.to(dev)
    pred = predict_crops(model, crops, rows["cache_row"].to_numpy(), preprocess, device=dev)
    predictions = pd.DataFrame({"path": rows["path"].to_numpy(), "age": rows["age"].to_numpy(), "pred": pred["age"]})
    if "std" in pred:
        predictions["std"] = pred["std"]
    return {"metrics": age_metrics(pred["age"], rows["age"].to_numpy()),
            "by_age": mae_by_age_group(pred["age"], rows["age"].to_numpy()),
            "predictions": predictions, "split": split, "data": str(prepared),
            "record": {"model": state.get("model", {}), "config": state.get("config", {}),  # for report.html
                       "data_dir": str(prepared.resolve()), "cache_size": preprocess.crop_size,
                       "versions": library_versions()}}
