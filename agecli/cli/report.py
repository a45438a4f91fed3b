"""`age report RUN_DIR`: (re)build report.html from the files a train, eval or lopo run wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agecli.cli.common import err_console


def report(
    run_dir: Annotated[Path, typer.Argument(
        metavar="RUN_DIR", help="A run folder of age train, age eval or age lopo (runs/KIND/NAME).")],
) -> None:
    """Build RUN_DIR/report.html: metrics, plots, spread calibration and face thumbnails in one offline page.

    Train, eval and lopo write it themselves; this rebuilds it from the files the run wrote.
    (`age lopo report RUN_DIR` also merges the folds of a LOPO run first.)
    """
    from agecli.report import build_report  # imports pandas: only for this command

    path = build_report(run_dir)
    err_console.print(f"Report saved to [bold]{path}[/]", highlight=False)
