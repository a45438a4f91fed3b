"""Options shared by several commands, defined once so flags and help read the same everywhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from agecli.errors import AgeCliError
from agecli.files.atomic import write_text_atomic
from agecli.files.outputs import check_output_file, json_with_keys

err_console = Console(stderr=True)  # messages and progress
out_console = Console()  # data

DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", help="Where to run: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1 or mps.")]
DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Prepared dataset: a name under prepared/, its folder, or its manifest.csv.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override any config value, repeatable: --set optim.lr=0.0005 --set train.epochs=30.")]
PresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", help="Preset name (paper, v1, v2, softmax; or family/name) or a YAML file of your own.")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON to this file ('-' for stdout).")]


SEED_LIMIT = 2**32 - 1  # numpy's seeds are 32-bit


def check_int(option: str, value: int | None, low: int | None = None, high: int | None = None) -> None:
    """One line naming the option when a number is out of its range (None: not given)."""
    if value is None:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"between {low} and {high}" if low is not None and high is not None else (
            f"at least {low}" if low is not None else f"at most {high}")
        raise AgeCliError(f"{option} {value}: must be {span}")


def check_number(option: str, value: float | None, low: float, high: float, low_open: bool = False,
                 high_open: bool = False) -> None:
    """Like check_int for a float option; open ends exclude the bound itself. NaN is always refused."""
    if value is None:
        return
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):  # also catches NaN
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise AgeCliError(f"{option} {value:g}: must be in {span}")


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
        # replaces only an earlier --json of the same command (a JSON object with these keys), never a user's file
        recognise = json_with_keys(data, exact=False) if isinstance(data, dict) else None
        check_output_file(path, "--json", written_by_us=recognise)
        write_text_atomic(path, text + "\n")
        err_console.print(f"JSON saved to [bold]{path}[/]")
