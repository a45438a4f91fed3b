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

from agecli.data.manifest import sources_text
from agecli.errors import AgeCliError
from agecli.files.safe_yaml import read_yaml

HISTORY_COLUMNS = ("epoch", "train_loss", "val_mae", "val_ca3", "val_ca5")  # what the report reads of metrics.csv
METRIC_KEYS = ("n", "mae", "ca3", "ca5")


@dataclass
class RunRecord:
    kind: str  # train | eval | lopo
    run_dir: Path
    title: str
    facts: list[tuple[str, str]]  # (label, value) shown under the title
    metrics: list[dict]  # rows: label, n, mae, ca3, ca5
    config: dict
    versions: dict
    data_dirs: tuple[Path, ...] = ()  # the prepared datasets, for thumbnails from their crop caches
    cache_size: int | None = None
    split: str = ""  # eval: the manifest split that was predicted
    notes: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # train: one row per epoch
    predictions: pd.DataFrame | None = None  # eval, lopo: path, age, pred[, spread][, subject]
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
    """A JSON object (a run folder's files are all objects), or one line naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AgeCliError(f"{path}: unreadable ({err})") from None
    except RecursionError:
        raise AgeCliError(f"{path}: unreadable (nested too deep)") from None
    if not isinstance(data, dict):
        raise AgeCliError(f"{path}: expected a JSON object, got {_type(data)}")
    return data


def _type(value) -> str:
    return "null" if value is None else type(value).__name__


def _mapping(data: dict, key: str, path: Path) -> dict:
    """data[key] when it is a mapping; {} when absent; one line naming the file and the field otherwise."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AgeCliError(f"{path}: {key} must be a mapping, got {_type(value)}")
    return value


def _required(data: dict, key: str, path: Path):
    if key not in data:
        raise AgeCliError(f"{path}: lacks '{key}'; the file was edited or written by another program")
    return data[key]


def _metrics(value, path: Path, field: str) -> dict:
    """A metrics mapping whose n, mae, ca3 and ca5 are numbers (or absent), as the report prints them."""
    if not isinstance(value, dict):
        raise AgeCliError(f"{path}: {field} must be a mapping of metrics, got {_type(value)}")
    for key in METRIC_KEYS:
        number = value.get(key)
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
            raise AgeCliError(f"{path}: {field}.{key} must be a number, got {_type(number)} {number!r:.40}")
    return value


def _yaml_config(path: Path) -> dict:
    config = read_yaml(path)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise AgeCliError(f"{path}: expected a mapping of sections (model, data, ...), got {_type(config)}")
    for section in ("model", "data", "train"):
        _mapping(config, section, path)
    _cache_size(_mapping(config, "data", path), path)
    return config


def _history(path: Path) -> list[dict]:
    """metrics.csv: one row per epoch, with at least the columns the curves plot, read as numbers."""
    df = _csv(path)
    missing = [c for c in HISTORY_COLUMNS if c not in df.columns]
    if missing:
        raise AgeCliError(f"{path}: lacks column(s) {', '.join(missing)} (has {', '.join(map(str, df.columns))[:120]})")
    for column in HISTORY_COLUMNS:
        values = pd.to_numeric(df[column].replace("", "nan"), errors="coerce")
        bad = values.isna() & ~df[column].astype(str).str.lower().isin(("", "nan"))
        if bad.any():
            row = int(bad.to_numpy().argmax())
            shown = str(df[column].iloc[row])[:40]
            raise AgeCliError(f"{path}: row {row + 2}, column {column}: {shown!r} is not a number")
        df[column] = values
    return df.to_dict("records")


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
    df = df.rename(columns={"std": "spread"})  # files written before the spread had one name
    for column in ("age", "pred", "spread"):
        if column in df.columns:
            df[column] = pd.to_numeric(df[column], errors="coerce")
    return df


def _metric_row(label: str, metrics: dict) -> dict:
    return {"label": label, **{k: metrics.get(k) for k in METRIC_KEYS}}


def _preset_label(config: dict) -> str:
    return str(config.get("preset", "")) or "-"


def read_train(run_dir: Path) -> RunRecord:
    config_path = run_dir / "config.yaml"
    config = _yaml_config(config_path)
    env = _env(run_dir / "env.json") if (run_dir / "env.json").is_file() else {}
    history = _history(run_dir / "metrics.csv")
    model = str(_mapping(config, "model", config_path).get("name", "?"))
    data_section = _mapping(config, "data", config_path)
    sources = env.get("sources") if isinstance(env.get("sources"), dict) else {}
    data = (sources_text((str(s.get("data", name)), float(s.get("weight", 1))) for name, s in sources.items())
            if len(sources) > 1 else str(env.get("data", data_section.get("manifest", "?"))))
    notes, metrics, facts = [], [], [("model", model), ("preset", _preset_label(config)), ("data", data),
                                      ("seed", str(env.get("seed", "?")))]
    if (run_dir / "results.json").is_file():
        path = run_dir / "results.json"
        results = _json(path)
        best_epoch, val = _required(results, "best_epoch", path), _required(results, "val", path)
        metrics.append(_metric_row(f"validation (best epoch {best_epoch})", _metrics(val, path, "val")))
        if "test" in results:
            metrics.append(_metric_row("test (best epoch's weights)", _metrics(results["test"], path, "test")))
    else:
        notes.append("No results.json yet: the run has not finished (or was interrupted); "
                     "the metrics are the last epoch's validation numbers.")
        if history:
            last = history[-1]
            metrics.append(_metric_row(f"validation (epoch {last['epoch']})",
                                       {"mae": last["val_mae"], "ca3": last["val_ca3"], "ca5": last["val_ca5"]}))
    facts.append(("epochs", f"{len(history)} of {_mapping(config, 'train', config_path).get('epochs', '?')}"))
    if env.get("train_rows") is not None:
        facts.append(("images", f"{env['train_rows']} training, {env.get('val_rows', 0)} validation"))
    data_dirs = (Path(str(env["data"])),) if env.get("data") else ()
    return RunRecord("train", run_dir, f"Training · {model} · {_preset_label(config)}", facts, metrics, config,
                     _mapping(env, "versions", run_dir / "env.json"), data_dirs,
                     _cache_size(data_section, config_path), notes=notes, history=history)


def _cache_size(data_section: dict, path: Path) -> int | None:
    value = data_section.get("cache_size")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise AgeCliError(f"{path}: data.cache_size must be an integer, got {_type(value)} {value!r:.40}")
    return value


def _env(path: Path) -> dict:
    """env.json, with the types the report reads: data and seed single values, row counts integers, versions a
    mapping."""
    env = _json(path)
    _mapping(env, "versions", path)
    for key in ("train_rows", "val_rows"):
        value = env.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise AgeCliError(f"{path}: {key} must be an integer, got {_type(value)} {value!r:.40}")
    for key in ("data", "seed"):
        if isinstance(env.get(key), (dict, list)):
            raise AgeCliError(f"{path}: {key} must be a single value, got {_type(env[key])}")
    return env


def read_eval(run_dir: Path) -> RunRecord:
    path = run_dir / "metrics.json"
    meta = _metrics(_json(path), path, "metrics")
    predictions = _predictions(run_dir / "predictions.csv")
    config = _mapping(meta, "config", path)
    model = str(meta.get("architecture") or _mapping(meta, "model", path).get("name")
                or _mapping(config, "model", path).get("name", "?"))  # architecture: what a packaged model holds
    split = str(meta.get("split", ""))
    metrics = [_metric_row(f"split {split or 'all'}", meta)]
    facts = [("checkpoint", str(meta.get("checkpoint", "?"))), ("model", model),
             ("data", str(meta.get("data", "?"))), ("split", split or "all")]
    notes = [] if config else ["metrics.json records no checkpoint config (made by an older agecli)."]
    # every source's folder (data_dirs); one folder in metrics.json written before several sources were read
    data_dirs = meta.get("data_dirs") or [meta.get("data_dir") or meta.get("data")]
    return RunRecord("eval", run_dir, f"Evaluation · {model} · {Path(str(meta.get('checkpoint', '?'))).name}",
                     facts, metrics, config, _mapping(meta, "versions", path),
                     tuple(Path(str(d)) for d in data_dirs if d),
                     _cache_size(meta, path), split, notes=notes, predictions=predictions)


def read_lopo(run_dir: Path) -> RunRecord:
    meta = _json(run_dir / "lopo.json")
    if not (run_dir / "report.json").is_file():
        raise AgeCliError(f"{run_dir}: no report.json yet; merge the finished folds first: age report {run_dir}")
    summary = _lopo_summary(run_dir / "report.json")
    config = _mapping(meta, "config", run_dir / "lopo.json")
    metrics = [_metric_row("all test images", summary["overall"]),
               {"label": f"mean of per-subject MAEs ({summary['folds_done']} subjects)", "n": None,
                "mae": summary["mean_subject_mae"], "ca3": None, "ca5": None}]
    facts = [("model", summary.get("model", "?")), ("preset", summary.get("preset") or "-"),
             ("data", str(meta.get("data", "?"))),
             ("folds", f"{summary['folds_done']} of {summary['folds_total']}"),
             ("tested with", f"the {summary.get('test_weights', 'best')} validation epoch's weights"),
             ("validation", (f"{summary['val_fraction']:.0%} of the training "
                             f"{'subjects' if summary['val_mode'] == 'subject' else 'images'}, at random"))]
    notes = []
    if summary["missing"]:
        shown = ", ".join(summary["missing"][:10]) + (" ..." if len(summary["missing"]) > 10 else "")
        notes.append(f"Incomplete: {len(summary['missing'])} folds missing ({shown}).")
    return RunRecord("lopo", run_dir, f"Leave one person out · {summary.get('model', '?')} · "
                     f"{summary.get('preset') or '-'}", facts, metrics, config,
                     _mapping(meta, "versions", run_dir / "lopo.json"),
                     (Path(str(meta["data"])),) if meta.get("data") else (),
                     _cache_size(_mapping(config, "data", run_dir / "lopo.json"), run_dir / "lopo.json"),
                     notes=notes, predictions=_predictions(run_dir / "predictions.csv"), subjects=summary["subjects"])


def _lopo_summary(path: Path) -> dict:
    """report.json of a LOPO run, with every key the report reads present and of the type it reads."""
    summary = _json(path)
    for key in ("overall", "folds_done", "folds_total", "mean_subject_mae", "val_fraction", "val_mode", "missing",
                "subjects"):
        _required(summary, key, path)
    _metrics(summary["overall"], path, "overall")
    _metrics({"mae": summary["mean_subject_mae"], "n": summary["folds_done"]}, path, "summary")
    if isinstance(summary["val_fraction"], bool) or not isinstance(summary["val_fraction"], (int, float)):
        raise AgeCliError(f"{path}: val_fraction must be a number, got {_type(summary['val_fraction'])}")
    for key in ("missing", "subjects"):
        if not isinstance(summary[key], list):
            raise AgeCliError(f"{path}: {key} must be a list, got {_type(summary[key])}")
    summary["missing"] = [str(m) for m in summary["missing"]]
    return summary
