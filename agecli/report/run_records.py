"""What a run folder of `age train`, `age eval` or `age lopo` already holds, read into one RunRecord.

The report is rebuilt from these files alone, so `age report RUN_DIR` works long after the run:
  train  config.yaml, env.json, metrics.csv, results.json (absent while a run is unfinished)
  eval   metrics.json (with the checkpoint's config and the versions), predictions.csv
  lopo   lopo.json, report.json, subjects.csv, predictions.csv
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from agecli.errors import AgeCliError


@dataclass
class RunRecord:
    kind: str  # train | eval | lopo
    run_dir: Path
    title: str
    facts: list[tuple[str, str]]  # (label, value) shown under the title
    metrics: list[dict]  # rows: label, n, mae, ca3, ca5
    config: dict
    versions: dict
    data_dir: Path | None = None  # the prepared dataset, for thumbnails from its crop cache
    cache_size: int | None = None
    split: str = ""  # eval: the manifest split that was predicted
    notes: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # train: one row per epoch
    predictions: pd.DataFrame | None = None  # eval, lopo: path, age, pred[, std][, subject]
    subjects: list[dict] = field(default_factory=list)  # lopo: one row per held-out subject


def read_run(run_dir: str | Path) -> RunRecord:
    """The record of a run folder, whichever command made it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AgeCliError(f"{run_dir}: no such run folder")
    if (run_dir / "lopo.json").is_file():
        return read_lopo(run_dir)
    if (run_dir / "metrics.json").is_file():
        return read_eval(run_dir)
    if (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file():
        return read_train(run_dir)
    raise AgeCliError(f"{run_dir}: not a run folder of age train, eval or lopo (expected config.yaml and "
                      f"metrics.csv, metrics.json, or lopo.json)")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AgeCliError(f"{path}: unreadable ({err})") from None


def _csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise AgeCliError(f"{path}: missing; the run did not finish writing its outputs")
    try:  # ids such as '001' stay text
        return pd.read_csv(path, dtype={"subject": str, "path": str}, keep_default_na=False,
                           encoding_errors="surrogateescape")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise AgeCliError(f"{path}: not a readable CSV ({str(err).splitlines()[0][:120]})") from None


def _predictions(path: Path) -> pd.DataFrame:
    df = _csv(path)
    missing = [c for c in ("path", "age", "pred") if c not in df.columns]
    if missing:
        raise AgeCliError(f"{path}: lacks column(s) {', '.join(missing)}")
    for column in ("age", "pred", "std"):
        if column in df.columns:
            df[column] = pd.to_numeric(df[column], errors="coerce")
    return df


def _metric_row(label: str, metrics: dict) -> dict:
    return {"label": label, **{k: metrics.get(k) for k in ("n", "mae", "ca3", "ca5")}}


def _preset_label(config: dict) -> str:
    return str(config.get("preset", "")) or "-"


def read_train(run_dir: Path) -> RunRecord:
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    env = _json(run_dir / "env.json") if (run_dir / "env.json").is_file() else {}
    history = _csv(run_dir / "metrics.csv").to_dict("records")
    model = config.get("model", {}).get("name", "?")
    notes, metrics, facts = [], [], [("model", model), ("preset", _preset_label(config)),
                                      ("data", str(env.get("data", config.get("data", {}).get("manifest", "?")))),
                                      ("seed", str(env.get("seed", "?")))]
    if (run_dir / "results.json").is_file():
        results = _json(run_dir / "results.json")
        metrics.append(_metric_row(f"validation (best epoch {results['best_epoch']})", results["val"]))
        if "test" in results:
            metrics.append(_metric_row("test (best epoch's weights)", results["test"]))
    else:
        notes.append("No results.json yet: the run has not finished (or was interrupted); "
                     "the metrics are the last epoch's validation numbers.")
        if history:
            last = history[-1]
            metrics.append(_metric_row(f"validation (epoch {last['epoch']})",
                                       {"mae": last["val_mae"], "ca3": last["val_ca3"], "ca5": last["val_ca5"]}))
    facts.append(("epochs", f"{len(history)} of {config.get('train', {}).get('epochs', '?')}"))
    if env.get("train_rows") is not None:
        facts.append(("images", f"{env['train_rows']} training, {env.get('val_rows', 0)} validation"))
    data_dir = Path(env["data"]) if env.get("data") else None
    return RunRecord("train", run_dir, f"Training · {model} · {_preset_label(config)}", facts, metrics, config,
                     env.get("versions", {}), data_dir, config.get("data", {}).get("cache_size"), notes=notes,
                     history=history)


def read_eval(run_dir: Path) -> RunRecord:
    meta = _json(run_dir / "metrics.json")
    predictions = _predictions(run_dir / "predictions.csv")
    config = meta.get("config", {})
    model = meta.get("model", {}).get("name") or config.get("model", {}).get("name", "?")
    split = str(meta.get("split", ""))
    metrics = [_metric_row(f"split {split or 'all'}", meta)]
    facts = [("checkpoint", str(meta.get("checkpoint", "?"))), ("model", model),
             ("data", str(meta.get("data", "?"))), ("split", split or "all")]
    notes = [] if config else ["metrics.json records no checkpoint config (made by an older agecli)."]
    data_dir = meta.get("data_dir") or meta.get("data")
    return RunRecord("eval", run_dir, f"Evaluation · {model} · {Path(str(meta.get('checkpoint', '?'))).name}",
                     facts, metrics, config, meta.get("versions", {}), Path(data_dir) if data_dir else None,
                     meta.get("cache_size"), split, notes=notes, predictions=predictions)


def read_lopo(run_dir: Path) -> RunRecord:
    meta = _json(run_dir / "lopo.json")
    if not (run_dir / "report.json").is_file():
        raise AgeCliError(f"{run_dir}: no report.json yet; merge the finished folds first: age lopo report {run_dir}")
    summary = _json(run_dir / "report.json")
    config = meta.get("config", {})
    metrics = [_metric_row("all test images", summary["overall"]),
               {"label": f"mean of per-subject MAEs ({summary['folds_done']} subjects)", "n": None,
                "mae": summary["mean_subject_mae"], "ca3": None, "ca5": None}]
    facts = [("model", summary.get("model", "?")), ("preset", summary.get("preset") or "-"),
             ("data", str(meta.get("data", "?"))),
             ("folds", f"{summary['folds_done']} of {summary['folds_total']}"),
             ("tested with", f"the {summary.get('test_weights', 'best')} validation epoch's weights"),
             ("validation", f"{summary['val_fraction']:.0%} of the training "
                            f"{'subjects' if summary['val_mode'] == 'subject' else 'images'}, at random")]
    notes = []
    if summary["missing"]:
        shown = ", ".join(summary["missing"][:10]) + (" ..." if len(summary["missing"]) > 10 else "")
        notes.append(f"Incomplete: {len(summary['missing'])} folds missing ({shown}).")
    return RunRecord("lopo", run_dir, f"Leave one person out · {summary.get('model', '?')} · "
                     f"{summary.get('preset') or '-'}", facts, metrics, config, meta.get("versions", {}),
                     Path(meta["data"]) if meta.get("data") else None, config.get("data", {}).get("cache_size"),
                     notes=notes, predictions=_predictions(run_dir / "predictions.csv"), subjects=summary["subjects"])
