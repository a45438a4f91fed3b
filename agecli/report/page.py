"""report.html: a run record rendered into one self-contained page.

The page is a Jinja2 template shipped with the package (templates/report.html.j2); figures come from
agecli.report.plots and, like the face thumbnails, are inlined as base64 PNG, so the file opens anywhere with no
network and no JavaScript.
"""

from __future__ import annotations

import base64
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import yaml

from agecli.errors import AgeCliError
from agecli.files.atomic import write_text_atomic
from agecli.metrics import CA_DEFINITION, mae_by_age_group, spread_calibration
from agecli.report import plots
from agecli.report.run_records import RunRecord, read_run

REPORT_NAME = "report.html"
TEMPLATE = "report.html.j2"
KIND_LABELS = {"train": "age train", "eval": "age eval", "lopo": "age lopo"}


def _number(value, digits: int = 3) -> str:
    """Numbers for tables: fixed digits, and a dash for a missing value rather than 'None' or 'nan'."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int) or digits == 0:
        return f"{round(value):,}"
    return f"{float(value):.{digits}f}"


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("agecli.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _number
    env.filters["age"] = lambda value: f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    env.filters["pct"] = lambda value: "–" if value is None else f"{100 * value:.1f}%"
    return env


def _figure(title: str, fig, caption: str = "") -> dict:
    src = "data:image/png;base64," + base64.b64encode(plots.figure_png(fig)).decode("ascii")
    return {"title": title, "src": src, "caption": caption}


def _has_spread(record: RunRecord) -> bool:
    p = record.predictions
    return p is not None and "spread" in p.columns and bool(p["spread"].notna().any())


def _errors_section(record: RunRecord) -> dict | None:
    p = record.predictions
    if p is None or p.empty:
        return None
    p = p[p["pred"].notna()]
    figure = _figure("Predicted against true age, and MAE by age group",
                     plots.predicted_vs_true_figure(p["pred"], p["age"]),
                     "Each dot is one face; on the dashed line the prediction is exact.")
    spread = p["spread"] if _has_spread(record) else None
    return {"figure": figure, "by_age": mae_by_age_group(p["pred"], p["age"], spread)}


def _calibration_section(record: RunRecord) -> dict | None:
    if not _has_spread(record):
        return None
    p = record.predictions.dropna(subset=["pred", "spread"])
    calibration = spread_calibration(p["pred"], p["age"], p["spread"])
    figure = _figure("Calibration of the spread", plots.calibration_figure(calibration),
                     "Left: the share of faces whose error lies within k predicted standard deviations, against "
                     "a calibrated Gaussian. Right: MAE of each quarter of the faces, by predicted spread.")
    return {**calibration, "figure": figure}


def _sources_section(record: RunRecord) -> dict | None:
    """Metrics per source dataset (and for all of them together, when there are several), from results.json
    of a training run or metrics.json of an evaluation; which evaluated datasets the model never trained on.
    None for one source the model trained on: the metrics table above holds the same figures."""
    import json

    name = {"train": "results.json", "eval": "metrics.json"}.get(record.kind)
    path = record.run_dir / name if name else None
    try:
        summary = json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else {}
    except (OSError, ValueError):
        return None
    sources = summary.get("sources") if isinstance(summary, dict) else None
    if not isinstance(sources, dict) or not sources:
        return None
    unseen = [str(name) for name in summary.get("unseen_sources") or [] if isinstance(name, str)]
    if len(sources) == 1 and not unseen:  # the metrics table says it all
        return None
    rows = [_source_row(source, split, metrics) for source, splits in sources.items() if isinstance(splits, dict)
            for split, metrics in splits.items() if isinstance(metrics, dict)]
    if len(sources) > 1:
        together = {"train": {s: summary.get(s) for s in ("val", "test")},
                    "eval": {summary.get("split", "") or "all": summary}}[record.kind]
        rows += [_source_row("all sources", split, metrics) for split, metrics in together.items()
                 if isinstance(metrics, dict)]
    trained_on = [str(name) for name in summary.get("trained_on") or [] if isinstance(name, str)]
    note = (f"Not trained on {', '.join(unseen)} (trained on {', '.join(trained_on)}): "
            "these metrics measure the model on data it has never seen.") if unseen else ""
    has_spread = any(row["within_1"] is not None for row in rows)
    return {"rows": rows, "note": note, "has_spread": has_spread} if rows else None


def _source_row(label, split, metrics: dict) -> dict:
    """A table row of the numbers a per-source entry holds (anything not a number shows as a dash)."""
    def number(value):
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return {"label": str(label), "split": str(split),
            **{key: number(metrics.get(key)) for key in ("n", "mae", "ca3", "ca5", "within_1", "within_2")}}


def _faces_section(record: RunRecord) -> dict | None:
    """Thumbnails from the crop cache, or a note saying why there are none (never a failure)."""
    if record.predictions is None or record.predictions.empty:
        return None
    from agecli.report.thumbnails import face_grids

    if not record.data_dirs:
        return {"note": "the run does not record its prepared dataset", "worst": [], "sample": [], "missing": 0}
    try:
        return {"note": "", **face_grids(record.predictions, record.data_dirs, record.cache_size, record.split)}
    except (AgeCliError, OSError, ValueError) as err:
        return {"note": f"no thumbnails: {err}", "worst": [], "sample": [], "missing": 0}


def _subjects_section(record: RunRecord) -> dict | None:
    if not record.subjects:
        return None
    return {"figure": _figure("MAE per held-out subject", plots.subject_mae_figure(record.subjects)),
            "rows": record.subjects}


def _files(run_dir: Path) -> list[dict]:
    entries = []
    for path in sorted(run_dir.iterdir()):
        if path.name.startswith(".") or path.name == REPORT_NAME:
            continue
        entries.append({"name": path.name + ("/" if path.is_dir() else ""),
                        "size": "" if path.is_dir() else _size(path.stat().st_size)})
    return entries


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    return f"{nbytes / 1024:.1f} KB" if nbytes < 1024**2 else f"{nbytes / 1024**2:.1f} MB"


def render(record: RunRecord) -> str:
    """The page's HTML for one run record."""
    import agecli

    curves = (_figure("Training curves", plots.curves_figure(record.history),
                      "Training loss, and validation MAE and CA(n), per epoch.") if record.history else None)
    context = {
        "record": record, "kind_label": KIND_LABELS[record.kind], "ca_definition": CA_DEFINITION,
        "curves": curves, "errors": _errors_section(record), "subjects": _subjects_section(record),
        "sources": _sources_section(record),
        "calibration": _calibration_section(record), "faces": _faces_section(record),
        "config_yaml": yaml.safe_dump(record.config, sort_keys=False) if record.config else "",
        "files": _files(record.run_dir), "agecli_version": agecli.__version__,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return _environment().get_template(TEMPLATE).render(**context)


def build_report(run_dir: str | Path) -> Path:
    """(Re)build RUN_DIR/report.html from the files the run wrote; written atomically."""
    record = read_run(run_dir)
    path = record.run_dir / REPORT_NAME
    write_text_atomic(path, render(record))
    return path


def _print_warning(text: str) -> None:
    print(text, file=sys.stderr)


def build_report_or_warn(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """build_report for the end of a run: a failure is one warning line, never the run's failure."""
    try:
        return build_report(run_dir)
    except Exception as err:  # noqa: BLE001 - the run's own outputs matter more than its report
        message = " ".join(f"{type(err).__name__}: {err}".split())
        (warn or _print_warning)(f"warning: {Path(run_dir) / REPORT_NAME} not written ({message[:300]}); "
                                 f"rebuild it with: age report {run_dir}")
        return None
