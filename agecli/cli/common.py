"""Options shared by several commands, defined once so flags and help read the same everywhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

err_console = Console(stderr=True)  # messages and progress
out_console = Console()  # data

DeviceOpt = Annotated[str, typer.Option("--device", help="auto picks CUDA, then MPS, then CPU; or cpu, cuda, cuda:1.")]
DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Prepared dataset: a name under prepared/, its folder, or its manifest.csv.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override any config value, repeatable: --set optim.lr=0.0005 --set train.epochs=30.")]
PresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", help="Preset name (paper, v1, v2, softmax; or family/name) or a YAML file of your own.")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON to this file ('-' for stdout).")]


def metrics_table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> Table:
    """columns: (key, header, format)."""
    table = Table(title=title)
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*[format(row[key], fmt) if isinstance(row.get(key), (int, float)) else str(row.get(key, ""))
                        for key, _, fmt in columns])
    return table


METRIC_COLUMNS = [("n", "images", "d"), ("mae", "MAE", ".3f"), ("ca3", "CA(3)", ".3f"), ("ca5", "CA(5)", ".3f")]


def emit_json(data, path: Optional[Path]) -> None:
    if path is None:
        return
    text = json.dumps(data, indent=2, default=str)
    if str(path) == "-":
        sys.stdout.write(text + "\n")
    else:
        from agecli.utils import write_text_atomic

        write_text_atomic(path, text + "\n")
        err_console.print(f"JSON saved to [bold]{path}[/]")
