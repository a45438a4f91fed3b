"""Options shared by several commands, defined once so flags and help read the same everywhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from agecli.errors import AgeCliError
from agecli.files.atomic import non_finite_key, strict_json, write_text_atomic
from agecli.files.outputs import check_output_file, json_with_keys
from agecli.report.progress import markup_text

err_console = Console(stderr=True)  # messages and progress
out_console = Console()  # data

# One help text per flag, whatever command shows it; a command's own default is shown beside it (option()).
HELP = {
    "--model": "The model to use: a checkpoint (.pt) made by age train or age import, or a shipped model's name "
               "(age models lists them); predict and serve also take an `age export` file (.onnx, or .torchscript.pt: "
               "predict needs --allow-torchscript for it).",
    "--out": "Folder this command writes into (its description lists what goes there).",
    "--output": "File this command writes.",
    "--data": "Prepared dataset: a name under prepared/, its folder, or its manifest.csv; repeat to use several.",
    "--root": "The dataset as downloaded (csv: the CSV file or its folder; bench: a folder holding utkface/ and "
              "fairface/). lopo prepares it into prepared/DATASET first (resumable, a no-op when done).",
    "--device": "Where to run: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1 or mps.",
    "--preset": "Preset name (paper, v1, v2, softmax; or family/name such as mvloss/paper) or a YAML file of your own.",
    "--set": "Override any config value, repeatable: --set optim.lr=0.0005 --set train.epochs=30.",
    "--json": "Also write the results as JSON to this file ('-' for stdout).",
    "--detector": "Face detector: default, retinaface, yunet or haar; none treats each whole image as one face "
                  "(photos that are already face crops).",
    "--workers": "Threads decoding and detecting ahead of the model.",
    "--resume": "Continue the unfinished run in --out with its own settings, skipping the work already done "
                "(predict without --out: the newest unfinished run under runs/predict).",
    "--seed": "Seed of what is random: prepare's test split; train's initialisation and shuffling "
              "(a shortcut for --set train.seed=N).",
    "--pretrained": "Starting weights of the backbone: imagenet, none or PATH (ResNets, EfficientNet-Lite; imagenet is "
                    "offline for efficientnet_lite0); a shortcut for --set model.pretrained=...",
    "--epochs": "Training epochs (lopo: of each fold); a shortcut for --set train.epochs=N.",
    "--batch": "Faces per model call (train: per optimiser step, a shortcut for --set train.batch_size=N; predict: "
               "gathered across photos or frames).",
    "--shard": "I/N: do only share I of N of the work (predict: of the photos, lopo: of the folds), numbered from 1 "
               "like a job array: --shard $SLURM_ARRAY_TASK_ID/16 with --array=1-16.",
}


def option(flag: str, *short: str, default: str | None = None, **extra) -> typer.models.OptionInfo:
    """typer.Option for a shared flag with its one help text; `default` says what leaving it out does."""
    return typer.Option(flag, *short, help=HELP[flag], show_default=default if default is not None else True,
                        **extra)


def deprecated(flag: str, instead: str, **extra) -> typer.models.OptionInfo:
    """A hidden old spelling kept for one release; the command calls note_deprecated when it is used."""
    return typer.Option(flag, hidden=True, help=f"Deprecated: use {instead}.", **extra)


def note_deprecated(old: str, new: str) -> None:
    """One line on stderr: the old spelling still works this release, the new one is what to write."""
    typer.echo(f"note: {old} is deprecated; use {new}", err=True)


def note_project_name(name: str | None, project: Path | None, out: Path | None) -> None:
    """--project/--name still choose the run folder this release; --out replaces both."""
    if out is not None:
        raise AgeCliError("--out and --project/--name both name the run folder; give only --out")
    note_deprecated("--project/--name", "--out RUN_DIR")


def output_file(output: Optional[Path], out: Optional[Path]) -> Optional[Path]:
    """--output/-o, or this release still the old --out of export and import (with a note)."""
    if out is None:
        return output
    if output is not None:
        raise AgeCliError("--out and --output both name the output file; give only --output")
    note_deprecated("--out FILE", "--output FILE (or -o FILE)")
    return out


ModelOpt = Annotated[Optional[Path], option("--model", default="the built-in model")]
DeviceOpt = Annotated[Optional[str], option("--device")]
DataOpt = Annotated[Optional[list[str]], option("--data")]
SetOpt = Annotated[Optional[list[str]], option("--set")]
PresetOpt = Annotated[Optional[str], option("--preset", default="the family's paper, or its only preset")]
JsonOpt = Annotated[Optional[Path], option("--json")]
DetectorOpt = Annotated[str, option("--detector")]
PretrainedOpt = Annotated[Optional[str], option("--pretrained", default="the preset's")]
EpochsOpt = Annotated[Optional[int], option("--epochs", default="the preset's")]
ShardOpt = Annotated[Optional[str], option("--shard", default="all of it")]




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
SPREAD_COLUMNS = [("within_1", "±1", ".1%"), ("within_2", "±2", ".1%")]
SPREAD_NOTE = ("±1, ±2: share of images whose error is within 1 and 2 predicted spreads (68.3% and 95.4% if the "
               "spread were a Gaussian standard deviation).")


def metric_columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """METRIC_COLUMNS, and the spread's coverage where the model predicts a spread."""
    return METRIC_COLUMNS + (SPREAD_COLUMNS if any("within_1" in row for row in rows) else [])


def emit_json(data, path: Optional[Path]) -> None:
    if path is None:
        return
    try:
        text = strict_json(data, indent=2)  # a reader of --json gets valid JSON or nothing
    except ValueError:
        raise AgeCliError(f"--json {path}: not written, {non_finite_key(data)} is not a finite number") from None
    if str(path) == "-":
        sys.stdout.write(text + "\n")
    else:
        # replaces only an earlier --json of the same command (a JSON object with these keys), never a user's file
        recognise = json_with_keys(data, exact=False) if isinstance(data, dict) else None
        check_output_file(path, "--json", written_by_us=recognise)
        write_text_atomic(path, text + "\n")
        err_console.print(f"JSON saved to [bold]{markup_text(path)}[/]")
