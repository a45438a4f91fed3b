"""`age eval --model CKPT`: MAE, CA(3) and CA(5) of a checkpoint on a prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agecli.cli.common import (
    METRIC_COLUMNS,
    SPREAD_NOTE,
    DeviceOpt,
    JsonOpt,
    emit_json,
    err_console,
    metric_columns,
    metrics_table,
    note_deprecated,
    option,
    out_console,
)
from agecli.errors import AgeCliError
from agecli.report.progress import markup_text

# extra positional arguments reach the command (ctx.args) rather than failing: the old `age eval CKPT`
CONTEXT = {"allow_extra_args": True}


def evaluate(
    ctx: typer.Context,
    model: Annotated[Optional[Path], option("--model", default="required")] = None,
    data: Annotated[Optional[list[str]], option("--data", default="the datasets the model was trained on")] = None,
    split: Annotated[str, typer.Option("--split", help="Manifest split to evaluate, or 'all'.")] = "test",
    device: DeviceOpt = "auto",
    json_path: JsonOpt = None,
    out: Annotated[Optional[Path], option("--out", default="runs/eval/NAME, numbered")] = None,
) -> None:
    """MAE, CA(3) and CA(5) of a checkpoint on a prepared dataset. CA(n) counts |error| < n years, unrounded.

    Writes predictions.csv, metrics.json, error_by_age.png and report.html into --out.
    """
    from agecli.training.evaluation import (  # imports torch: only for this command
        EVAL_FILES,
        run_eval,
    )

    checkpoint = _checkpoint(model, ctx.args)
    result = run_eval(checkpoint, (data[0] if len(data) == 1 else data) if data else None, split, device, out)
    m = result["metrics"]
    rows = [{"set": split, **m}] + [{"set": f"  age {g['group']}", **g} for g in result["by_age"]]
    sources = result.get("sources", {})
    if len(sources) > 1:  # one source's row would repeat the first
        rows += [{"set": f"  source {name}", **metrics} for name, metrics in sources.items()]
    columns = metric_columns(rows)
    out_console.print(metrics_table(f"{markup_text(checkpoint)} · {markup_text(result['data'])} · split {markup_text(split)}", rows,
                                    [("set", "", "")] + columns))
    err_console.print("CA(n): share of images with |predicted - true age| < n years, on the unrounded prediction.")
    if columns != METRIC_COLUMNS:
        err_console.print(SPREAD_NOTE)
    emit_json(result["summary"], json_path)
    err_console.print(f"Results saved to [bold]{markup_text(result['out_dir'])}[/] ({', '.join(EVAL_FILES)})")


def _checkpoint(model: Path | None, extra: list[str]) -> Path:
    """--model, or this release still the old positional checkpoint (with a note)."""
    if len(extra) > 1 or (extra and model is not None):
        raise AgeCliError(f"unexpected argument '{extra[-1]}': age eval --model CHECKPOINT --data DATASET")
    if extra:
        note_deprecated("age eval CHECKPOINT", "age eval --model CHECKPOINT")
        return Path(extra[0])
    if model is None:
        raise AgeCliError("missing --model: age eval --model CHECKPOINT --data DATASET")
    return model
