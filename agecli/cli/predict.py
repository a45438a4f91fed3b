"""`age predict` and `age export`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from agecli.cli.common import DeviceOpt, JsonOpt, err_console, out_console

MAX_TABLE_ROWS = 50  # beyond this the table scrolls past unread; predictions.csv holds every row

ModelOpt = Annotated[Optional[Path], typer.Option("--model", help="A checkpoint (.pt) or an `age export --format onnx` file (.onnx); a .torchscript.pt only with --allow-torchscript; or a shipped model's name (age models lists them: lite0). \\[default: the built-in model]")]
DetectorOpt = Annotated[str, typer.Option("--detector", help="Face detector: default, retinaface, yunet, haar.")]
NoDetectOpt = Annotated[bool, typer.Option("--no-detect", help="Treat each whole image as one face (for photos that are already face crops).")]
DrawOpt = Annotated[bool, typer.Option("--draw", help="Save copies of the photos with every face boxed and labelled 'age ±spread' (videos: an annotated .mp4 labelled '#track age ±spread').")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Folder for predictions.json/.jsonl/.csv and drawn copies. \\[default: runs/predict/predict, numbered]")]
CsvOpt = Annotated[Optional[Path], typer.Option("--csv", help="Also write the per-face CSV to this file.")]
TorchScriptOpt = Annotated[bool, typer.Option("--allow-torchscript", help="Accept a TorchScript --model. A TorchScript file is a program: loading and running it runs code from the file. Use only files you made or trust; .pt checkpoints and .onnx exports are data and need no flag.")]
BatchOpt = Annotated[int, typer.Option("--batch", help="Faces per model call, gathered across photos (or frames).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Threads decoding and detecting ahead of the model. \\[default: one per core, 2 to 8]")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the unfinished run in --out (default: the newest unfinished one under runs/predict), skipping the photos already done.")]
ShardOpt = Annotated[Optional[str], typer.Option("--shard", help="I/N: only every N-th photo of the sorted inputs, from the I-th (1/4 ... 4/4, as in age lopo), e.g. --shard $SLURM_ARRAY_TASK_ID/16 with --array=1-16.")]
MergeOpt = Annotated[bool, typer.Option("--merge", help="PATHS are the --out folders of every --shard of one job: combine them into --out, as one run would have written it.")]
EveryOpt = Annotated[int, typer.Option("--every", help="Videos and streams: process every N-th frame.")]
SourceOpt = Annotated[Optional[str], typer.Option("--source", help="A camera number (0) or a stream URL that OpenCV can open; Ctrl-C ends it.")]


def predict(
    paths: Annotated[Optional[list[str]], typer.Argument(help="Photos, folders (searched recursively), glob patterns or videos (.mp4, .avi, .mov, .mkv); with --merge, shard folders.", show_default=False)] = None,
    model: ModelOpt = None, detector: DetectorOpt = "default", no_detect: NoDetectOpt = False, draw: DrawOpt = False,
    out: OutOpt = None, json_path: JsonOpt = None, csv_path: CsvOpt = None, device: DeviceOpt = "auto",
    allow_torchscript: TorchScriptOpt = False, batch: BatchOpt = 64, workers: WorkersOpt = None,
    resume: ResumeOpt = False, shard: ShardOpt = None, merge: MergeOpt = False, every: EveryOpt = 1,
    source: SourceOpt = None,
) -> None:
    """Find the faces in photos or videos and estimate each one's age.

    Each face gets an age in years and, for distribution models, its spread (± one standard deviation).

    Results stream to a run folder as they are done: predictions.jsonl and predictions.csv, then predictions.json;
    with --draw, annotated copies. A rerun with --resume continues where a killed run stopped.

    Videos: faces are tracked across frames and each track gets a smoothed age.

    Input files are never modified.

    Exit status: 0 when every photo (video) was read and had at least one face.

    Exit status 1: a path was missing or unreadable, or a photo had no face (the others are still saved).
    """
    from agecli.errors import AgeCliError
    from agecli.predict.job import PredictOptions, merge_predictions, run_predict
    from agecli.report.progress import RichWorkProgress

    if not paths and source is None:
        raise AgeCliError("name photos, folders or videos to predict (or --source for a camera or stream)")
    if merge:
        run = merge_predictions(paths or [], out, csv_path, json_path)
    else:
        options = PredictOptions(model, detector, no_detect, draw, out, csv_path, json_path, device or "auto",
                                 allow_torchscript, batch, workers, resume, shard, every, source)
        run = run_predict(paths or [], options, RichWorkProgress(err_console))
    to_stdout = json_path is not None and str(json_path) == "-"
    console = err_console if to_stdout else out_console  # stdout: JSON only
    _show(console, run)
    if to_stdout:
        with open(run.json_path, encoding="utf-8", errors="surrogateescape") as f:
            shutil.copyfileobj(f, sys.stdout)
    elif json_path is not None:
        err_console.print(f"JSON saved to [bold]{json_path}[/]")
    err_console.print(_summary_line(run.kind, run.summary), style=None if run.ok else "yellow")
    err_console.print(f"Results saved to [bold]{run.out_dir}[/]")
    if not run.ok:
        raise typer.Exit(1)


def _show(console, run) -> None:
    """The results table: one row per face (photos, first 50) or per track (videos)."""
    title = f"{Path(run.info['model']).name} · detector {run.info['detector']}"
    if run.kind == "videos":
        rows = [(v["path"], str(t["track"]), f"{t['first_frame']}-{t['last_frame']}", str(t["frames"]),
                 f"{t['age']:.1f}", "" if t["std"] is None else f"{t['std']:.1f}") for v in run.preview for t in v["tracks"]]
        rows += [(v["path"], "", f"[red]{v['error']}[/]", "", "", "") for v in run.preview if not v["tracks"]]
        headers = ("video", "track", "frames", "seen", "age", "±")
    else:
        rows = [row for record in run.preview for row in _rows(record)]
        headers = ("photo", "face", "box", "age", "±")
    if rows:
        console.print(_table(title, headers, rows))
    total = run.summary["faces"] + run.summary.get("photos", 0) - run.summary.get("with_faces", 0)
    if run.kind == "photos" and total > MAX_TABLE_ROWS:
        err_console.print(f"(first {MAX_TABLE_ROWS} of {total} rows shown; all of them are in predictions.csv)")


def _rows(record: dict) -> list[tuple]:
    """Table rows for one photo record: (photo, face #, box, age, ±) per face, or one row saying what went wrong."""
    from agecli.data.imageio import safe_name

    name = safe_name(record["path"])
    if not record["faces"]:
        message = (record["error"] or "").removeprefix(f"{name}: ")  # the photo column already names the file
        return [(name, "", f"[red]{message}[/]" if record["status"] == "error" else f"[yellow]{message}[/]", "", "")]
    return [(name, str(f["face"]), ",".join(str(round(v)) for v in f["box"]), f"{f['age']:.1f}",
             "" if f["std"] is None else f"{f['std']:.1f}") for f in record["faces"]]


def _table(title: str, headers: tuple, rows: list[tuple]) -> Table:
    with_std = any(row[-1] for row in rows)  # only distribution models have a spread
    table = Table(title=title)
    for name in headers:
        if name != "±" or with_std:
            table.add_column(name, justify="left" if name in ("photo", "video", "box", "frames") else "right",
                             overflow="fold")  # fold: a path stays whole, never "…"
    for row in rows[:MAX_TABLE_ROWS]:
        table.add_row(*(row if with_std else row[:-1]))
    return table


def _summary_line(kind: str, s: dict) -> str:
    if kind == "videos":
        parts = [f"{s['videos']} video{'s' if s['videos'] != 1 else ''}: {s['frames']} frames processed, "
                 f"{s['faces']} faces in {s['tracks']} tracks"]
    else:
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

    Input: uint8 RGB face crops (N, S, S, 3), N free, as cut by agecli.data.crops.crop_face.

    The model does the centre crop, channel order and normalisation itself.

    Outputs: "age" (N,) in years and, for distribution models, "std" (N,).

    Metadata ("agecli" JSON): input size, margin, mean/std, channel order, age range, model, version.

    Nothing is written if any age differs from PyTorch's by more than 0.01 years.
    """
    from agecli.modelio.export import PARITY_TOLERANCE
    from agecli.modelio.export import export as run_export

    result = run_export(checkpoint, format, out, parity_images)
    meta = result.metadata
    err_console.print(f"exported [bold]{meta['model']}[/] to {format}: input {meta['input']['dtype']} "
                      f"{meta['input']['layout']} {meta['input']['channels']} {meta['input']['size']}px, "
                      f"outputs {', '.join(meta['outputs'])}")
    out_console.print(f"parity: max |Δ age| {result.max_abs_diff:.2e} years on {result.parity_images} "
                      f"{result.parity_source} (limit {PARITY_TOLERANCE}) [green]passed[/]")
    err_console.print(f"Results saved to [bold]{result.path}[/]")
