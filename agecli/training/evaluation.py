"""`age eval` as one library call: evaluate a checkpoint on a prepared dataset and write its run folder
(predictions.csv, metrics.json, error_by_age.png, report.html), so a caller from Python gets the same
files as the command."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from agecli.data.manifest import source_label
from agecli.data.prepare import prepared_align
from agecli.data.preprocess import ALIGNS
from agecli.errors import AgeCliError
from agecli.files.atomic import write_csv_atomic, write_json_atomic
from agecli.files.locks import folder_lock
from agecli.files.outputs import check_output_dir, check_output_file, csv_starting_with, json_with_keys
from agecli.files.run_dirs import increment_dir
from agecli.modelio.builtin import is_shipped, resolve_model_path
from agecli.modelio.checkpoint import (
    load_checkpoint,
)
from agecli.models import describe
from agecli.report import build_report_or_warn
from agecli.report.plots import plot_error_by_age
from agecli.system.device import select_device
from agecli.system.reproducibility import library_versions
from agecli.training.datasets import load_sources, source_specs, stack_sources
from agecli.training.scoring import metrics_by_source, predictions_table, scored_metrics

EVAL_PROJECT = Path("runs/eval")
EVAL_FILES = ("report.html", "metrics.json", "predictions.csv", "error_by_age.png")
PREDICTION_COLUMNS = ["path", "age", "pred"]  # how predictions.csv begins ("spread" and others may follow)
METRICS_KEYS = ("checkpoint", "data", "split", "by_age")  # what marks a metrics.json as one `age eval` wrote


def run_eval(checkpoint: str | Path, data: str | Path | None = None, split: str = "test", device: str = "auto",
             out: str | Path | None = None, warn: Callable[[str], None] | None = None) -> dict:
    """Evaluate `checkpoint` on `split` of `data` (default: the dataset it was trained on) and write the
    run folder `out` (default: a new runs/eval/NAME). Returns evaluate_checkpoint's result plus
    "out_dir" and "summary" (what metrics.json holds without the model record). `warn` receives a
    warning line when report.html cannot be built (the other files are kept)."""
    checkpoint = resolve_model_path(checkpoint)  # a file, or a shipped model's name (--model lite0)
    if out is not None:
        check_eval_outputs(out)
    if data is None:
        data = recorded_dataset(checkpoint)
    result = evaluate_checkpoint(checkpoint, data, split, device)
    for note in eval_notes(result, checkpoint):
        (warn or _print_note)(note)
    check_finite_predictions(result["predictions"], checkpoint)
    with folder_lock(out if out is not None else increment_dir(EVAL_PROJECT, eval_label(checkpoint))) as out_dir:
        if out is not None:
            check_eval_outputs(out)  # again, now that no other run can write there
        result["summary"] = write_eval_outputs(result, checkpoint, out_dir, warn)
    result["out_dir"] = out_dir
    return result


def check_eval_outputs(out: str | Path) -> None:
    """`--out` may hold an earlier evaluation's files (they are replaced), never a user's files of the same names.

    The figure and the page are recognised through the metrics.json beside them.
    """
    out = Path(out)
    check_output_dir(out, "--out")
    metrics_ours = json_with_keys(METRICS_KEYS, exact=False)
    check_output_file(out / "predictions.csv", "--out", written_by_us=csv_starting_with(PREDICTION_COLUMNS))
    check_output_file(out / "metrics.json", "--out", written_by_us=metrics_ours)

    def beside_our_metrics(_path: Path) -> bool:
        return (out / "metrics.json").is_file() and metrics_ours(out / "metrics.json")

    check_output_file(out / "error_by_age.png", "--out", written_by_us=beside_our_metrics)
    check_output_file(out / "report.html", "--out", written_by_us=beside_our_metrics)


def check_finite_predictions(predictions: pd.DataFrame, checkpoint: Path) -> None:
    """A NaN or infinite age (broken weights, a zero std in the preprocessing) is an error, never a metric."""
    columns = [c for c in ("pred", "spread") if c in predictions.columns]
    finite = np.isfinite(predictions[columns].to_numpy(dtype=float)).all(axis=1)
    if not finite.all():
        first = predictions["path"].to_numpy()[~finite][0]
        raise AgeCliError(f"{checkpoint}: the model gave a non-finite age for {int((~finite).sum())} of {len(finite)} "
                          f"photos (first: {first}); check its weights and preprocessing (mean/std); nothing written")


def recorded_dataset(checkpoint: Path) -> str | list[str]:
    """The prepared dataset(s) a checkpoint was trained on, as its config records them (data.sources or
    data.manifest)."""
    specs = source_specs(load_checkpoint(checkpoint).get("config", {}).get("data", {}))
    if not specs:
        raise AgeCliError(f"{checkpoint}: records no dataset; pass --data")
    return specs[0][0] if len(specs) == 1 else [data for data, _ in specs]


def eval_notes(result: dict, checkpoint: Path) -> list[str]:
    """One line per evaluated source the checkpoint was never trained on (by name; nothing when it records none),
    and per source whose faces were cut otherwise than the model's own (predict cuts them the model's way)."""
    unseen = [f"note: {name} is not among the data {checkpoint} was trained on ({', '.join(result['trained_on'])}); "
              f"its metrics measure the model on a dataset it has never seen" for name in result["unseen"]]
    model_cut = result.get("align", "none")
    return unseen + [f"note: {name}'s faces are {ALIGNS.get(align, align)}, but {checkpoint} expects faces "
                     f"{ALIGNS.get(model_cut, model_cut)}, as age predict cuts them; for the figures predict "
                     f"gives, prepare the data with --align {model_cut}"
                     for name, align in result.get("cut_otherwise", {}).items()]


def _print_note(text: str) -> None:
    import sys

    print(text, file=sys.stderr)


def eval_label(checkpoint: Path) -> str:
    """runs/eval/RUN for runs/train/RUN/best.pt; the file's stem for a checkpoint in the working folder or a
    shipped model (runs/eval/lite0)."""
    return checkpoint.stem if is_shipped(checkpoint) or checkpoint.parent.name in ("", ".") else checkpoint.parent.name


def write_eval_outputs(result: dict, checkpoint: str | Path, out_dir: str | Path,
                       warn: Callable[[str], None] | None = None) -> dict:
    """Write an evaluation's files into out_dir (created if needed); returns the metrics summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds, split = result["predictions"], result["split"]
    write_csv_atomic(out_dir / "predictions.csv", preds.to_dict("records"), list(preds.columns))
    plot_error_by_age(preds["pred"], preds["age"], out_dir / "error_by_age.png", title=f"{checkpoint} on {split}")
    summary = {"checkpoint": str(checkpoint), "data": result["data"], "split": split, **result["metrics"],
               "by_age": result["by_age"], "sources": {name: {split: m} for name, m in result["sources"].items()},
               "trained_on": result["trained_on"], "unseen_sources": result["unseen"]}
    write_json_atomic(out_dir / "metrics.json", {**summary, **result["record"]})
    build_report_or_warn(out_dir, warn)
    return summary


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path | list, split: str = "test",
                        device: str = "auto") -> dict:
    """`age eval`: metrics of a checkpoint on one split of a prepared dataset (or of several: `data` a list),
    overall and per source, plus per-image predictions and the sources it was not trained on."""
    from agecli.metrics import mae_by_age_group
    from agecli.modelio.checkpoint import load_model

    model, preprocess, state = load_model(checkpoint)
    sources = load_sources([(d, 1.0) for d in ([data] if isinstance(data, (str, Path)) else data)])
    crops, df = stack_sources(sources, preprocess.crop_size)
    prepared = sources[0].prepared
    rows = df if split in ("", "all") else df[df["split"] == split]
    if rows.empty:
        where = prepared / "manifest.csv" if len(sources) == 1 else "data"
        raise AgeCliError(f"{where}: no rows in split '{split}' "
                          f"(splits present: {sorted(set(df['split']))}); pass --split all to use every row")
    dev = select_device(device)
    model.to(dev)
    table = predictions_table(model, crops, rows, preprocess, dev)
    # predictions.csv begins path, age, pred[, spread]; over several sources each face's source comes last
    predictions = table[[c for c in table.columns if c != "source"] + (["source"] if len(sources) > 1 else [])]
    trained_on = [source_label(d) for d, _ in source_specs(state.get("config", {}).get("data", {}))]
    return {"metrics": scored_metrics(table["pred"], table["age"], table.get("spread")),
            "by_age": mae_by_age_group(table["pred"], table["age"], table.get("spread")),
            "sources": metrics_by_source(table), "trained_on": trained_on,
            "unseen": [s.name for s in sources if trained_on and s.name not in trained_on],
            "cut_otherwise": {name: align for name, align in ((s.name, prepared_align(s.prepared)) for s in sources)
                              if align != preprocess.align}, "align": preprocess.align,
            "predictions": predictions, "split": split, "data": ", ".join(str(s.prepared) for s in sources),
            "record": {"model": state.get("model", {}), "architecture": describe(state["model"]) if "model" in state
                       else "?", "config": state.get("config", {}),  # for report.html
                       "data_dirs": [str(s.prepared.resolve()) for s in sources], "cache_size": preprocess.crop_size,
                       "versions": library_versions()}}
