"""`age report RUN_DIR`: (re)build report.html from the files a train, eval or lopo run wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agecli.cli.common import METRIC_COLUMNS, JsonOpt, emit_json, err_console, metrics_table, out_console
from agecli.errors import AgeCliError
from agecli.report.progress import markup_text


def report(
    run_dir: Annotated[Path, typer.Argument(
        metavar="RUN_DIR", help="A run folder of age train, age eval or age lopo (runs/KIND/NAME).")],
    json_path: JsonOpt = None,
) -> None:
    """Build RUN_DIR/report.html: metrics, plots, spread calibration and face thumbnails in one offline page.

    Train, eval and lopo write it themselves; this rebuilds it from the files the run wrote. A LOPO run's
    finished folds (from every --shard) are merged first into report.json, subjects.csv, predictions.csv and
    error_by_age.png, and the merged result is shown (--json: written as JSON).
    """
    if (run_dir / "lopo.json").is_file():
        show_lopo_run(run_dir, json_path)
        return
    if json_path is not None:
        raise AgeCliError(f"--json: only a LOPO run has a merged result to write; {run_dir} keeps its results "
                          f"in results.json or metrics.json")
    from agecli.report import build_report  # imports pandas: only for this command

    path = build_report(run_dir)
    err_console.print(f"Report saved to [bold]{markup_text(path)}[/]", highlight=False)


def show_lopo_run(run_dir: Path, json_path: Optional[Path] = None) -> None:
    """Merge a LOPO run's folds (and shards), rebuild its report, and show the result."""
    from agecli.training import lopo as lib  # imports torch

    show_lopo_summary(lib.report(run_dir), run_dir, json_path)


def show_lopo_summary(summary: dict, run_dir: Path, json_path: Optional[Path]) -> None:
    """The per-subject table, the overall figures and what is still missing."""
    title = f"LOPO · {summary['model']} · {summary['preset']} · {summary['data']}"
    rows = [dict(r, subject=str(r["subject"])) for r in summary["subjects"]]
    out_console.print(metrics_table(f"{title}: per subject", rows, [("subject", "subject", "")] + METRIC_COLUMNS))
    o = summary["overall"]
    overall = [{"set": "all test images", **o},
               {"set": f"mean of per-subject MAEs ({summary['folds_done']} subjects)", "n": "", "mae": summary["mean_subject_mae"],
                "ca3": "", "ca5": ""}]
    out_console.print(metrics_table(title, overall, [("set", "", "")] + METRIC_COLUMNS))
    err_console.print(f"held-out subjects predicted with the {summary['test_weights']} epoch's weights; "
                      f"validation: {summary['val_fraction']:g} of training {summary['val_mode']} "
                      f"{'subjects' if summary['val_mode'] == 'subject' else 'images'}")
    if not summary["complete"]:
        missing = summary["missing"]
        listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        err_console.print(f"[yellow]incomplete: {summary['folds_done']} of {summary['folds_total']} folds done; "
                          f"missing {listed}[/] (rerun the same command, or the remaining shards)")
    emit_json(summary, json_path)
    err_console.print(f"Results saved to [bold]{markup_text(run_dir)}[/] (report.html, report.json, subjects.csv, predictions.csv, error_by_age.png)")
