"""`age predict` and `age export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from agecli.cli.common import DeviceOpt, JsonOpt, emit_json, err_console, out_console

MAX_TABLE_ROWS = 50  # beyond this the table scrolls past unread; predictions.csv holds every row


def predict(
    paths: Annotated[list[str], typer.Argument(help="Photos, folders (searched recursively) or glob patterns.",
                                               show_default=False)],
    model: Annotated[Optional[Path], typer.Option("--model", help="A checkpoint (.pt) or an `age export --format onnx` file (.onnx); a .torchscript.pt only with --allow-torchscript. \\[default: the built-in model]")] = None,
    detector: Annotated[str, typer.Option("--detector", help="Face detector: default, retinaface, yunet, haar.")] = "default",
    no_detect: Annotated[bool, typer.Option("--no-detect", help="Treat each whole image as one face (for photos that are already face crops).")] = False,
    draw: Annotated[bool, typer.Option("--draw", help="Save copies of the photos with every face boxed and labelled 'age ±spread'.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for predictions.json/.csv and drawn copies. \\[default: runs/predict/predict, numbered]")] = None,
    json_path: JsonOpt = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Also write the per-face CSV to this file.")] = None,
    device: DeviceOpt = "auto",
    allow_torchscript: Annotated[bool, typer.Option("--allow-torchscript", help="Accept a TorchScript --model. A TorchScript file is a program: loading and running it runs code from the file. Use only files you made or trust; .pt checkpoints and .onnx exports are data and need no flag.")] = False,
) -> None:
    """Find the faces in photos and estimate each one's age.

    Each face gets an age in years and, for distribution models, its spread (± one standard deviation).

    Results go to a run folder: predictions.json, predictions.csv and, with --draw, annotated copies.

    Input files are never modified.

    Exit status: 0 when every photo was read and had at least one face.

    Exit status 1: a path was missing or unreadable, or a photo had no face (the others are still saved).
    """
    from agecli.predict import Predictor, iter_images
    from agecli.reporting import progress_bar
    from agecli.results import ResultWriter, check_outputs
    from agecli.utils import increment_dir

    items = list(iter_images(paths))
    check_outputs(out, [i.path for i in items if i.problem is None], csv_path, json_path)
    predictor = Predictor(model, detector="none" if no_detect else detector, device=device,
                          allow_torchscript=allow_torchscript)
    out_dir = out or increment_dir("runs/predict", "predict")
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = ResultWriter(out_dir, draw=draw, inputs=[i.path for i in items if i.problem is None])
    rows: list[tuple] = []
    with progress_bar(err_console, transient=True) as bar:
        task = bar.add_task("predict", total=len(items), info="", visible=len(items) > 1)
        for result in predictor.predict_items(items):
            writer.add(result)
            bar.update(task, advance=1, info=result.path.name)
            rows.extend(_rows(result))
    info = {"model": str(predictor.model_path), "backend": predictor.backend.kind,
            "detector": predictor.detector_name}
    summary = writer.close(info)
    console = err_console if json_path is not None and str(json_path) == "-" else out_console  # stdout: JSON only
    if rows:
        console.print(_table(f"{predictor.model_path.name} · detector {predictor.detector_name}", rows))
    if len(rows) > MAX_TABLE_ROWS:
        err_console.print(f"(first {MAX_TABLE_ROWS} of {len(rows)} rows shown; all of them are in predictions.csv)")
    if json_path is not None:
        emit_json({**info, "summary": summary, "photos": writer.photos}, json_path)
    if csv_path is not None:
        import shutil

        from agecli.utils import atomic_path

        with atomic_path(csv_path) as tmp:
            shutil.copyfile(out_dir / "predictions.csv", tmp)
    ok = summary["no_face"] == 0 and summary["errors"] == 0
    err_console.print(_summary_line(summary), style=None if ok else "yellow")
    err_console.print(f"Results saved to [bold]{out_dir}[/]")
    if not ok:
        raise typer.Exit(1)


def _rows(result) -> list[tuple]:
    """Table rows for one photo: (photo, face #, box, age, ±) per face, or one row saying what went wrong."""
    from agecli.data.imageio import safe_name

    name = safe_name(result.path)
    if not result.faces:
        message = (result.error or "").removeprefix(f"{name}: ")  # the photo column already names the file
        return [(name, "", f"[red]{message}[/]" if result.status == "error" else f"[yellow]{message}[/]", "", "")]
    return [(name, str(i), ",".join(str(round(v)) for v in face.box), f"{face.age:.1f}",
             "" if face.std is None else f"{face.std:.1f}") for i, face in enumerate(result.faces, 1)]


def _table(title: str, rows: list[tuple]) -> Table:
    with_std = any(row[4] for row in rows)  # only distribution models have a spread
    table = Table(title=title)
    for name, justify in (("photo", "left"), ("face", "right"), ("box", "left"), ("age", "right"), ("±", "right")):
        if name != "±" or with_std:
            table.add_column(name, justify=justify, overflow="fold")  # fold: a path stays whole, never "…"
    for row in rows[:MAX_TABLE_ROWS]:
        table.add_row(*(row if with_std else row[:4]))
    return table


def _summary_line(s: dict) -> str:
    parts = [f"{s['photos']} photo{'s' if s['photos'] != 1 else ''}: {s['with_faces']} with faces ({s['faces']} faces)"]
    if s["no_face"]:
        parts.append(f"{s['no_face']} without a face")
    if s["errors"]:
        parts.append(f"{s['errors']} failed (missing or unreadable)")
    return ", ".join(parts)


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (.pt) made by age train or age import.")],
    format: Annotated[str, typer.Option("--format", help="onnx (runs with onnxruntime, no torch) or torchscript.")] = "onnx",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output file. \\[default: beside the checkpoint, best.onnx / best.torchscript.pt]")] = None,
    parity_images: Annotated[Optional[list[str]], typer.Option("--parity-images", help="Face images to check parity on. \\[default: 32 seeded synthetic faces]")] = None,
) -> None:
    """Export a checkpoint for serving, then check that the exported model gives PyTorch's ages.

    Input: uint8 RGB face crops (N, S, S, 3), N free, as cut by agecli.data.faces.crop_face.

    The model does the centre crop, channel order and normalisation itself.

    Outputs: "age" (N,) in years and, for distribution models, "std" (N,).

    Metadata ("agecli" JSON): input size, margin, mean/std, channel order, age range, model, version.

    Nothing is written if any age differs from PyTorch's by more than 0.01 years.
    """
    from agecli.export import PARITY_TOLERANCE
    from agecli.export import export as run_export

    result = run_export(checkpoint, format, out, parity_images)
    meta = result.metadata
    err_console.print(f"exported [bold]{meta['model']}[/] to {format}: input {meta['input']['dtype']} "
                      f"{meta['input']['layout']} {meta['input']['channels']} {meta['input']['size']}px, "
                      f"outputs {', '.join(meta['outputs'])}")
    out_console.print(f"parity: max |Δ age| {result.max_abs_diff:.2e} years on {result.parity_images} "
                      f"{result.parity_source} (limit {PARITY_TOLERANCE}) [green]passed[/]")
    err_console.print(f"Results saved to [bold]{result.path}[/]")
