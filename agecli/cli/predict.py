"""`age predict`: ages of the faces in photos and videos."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from agecli.cli.common import (
    DetectorOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    ShardOpt,
    deprecated,
    err_console,
    note_deprecated,
    option,
    out_console,
)
from agecli.report.progress import markup_text

MAX_TABLE_ROWS = 50  # beyond this the table scrolls past unread; predictions.csv holds every row

DrawOpt = Annotated[bool, typer.Option("--draw", help="Save copies of the photos with every face boxed and labelled 'age ±spread' (videos: an annotated .mp4 labelled '#track age ±spread').")]
OutOpt = Annotated[Optional[Path], option("--out", default="runs/predict/predict, numbered")]
BatchOpt = Annotated[int, option("--batch")]
WorkersOpt = Annotated[Optional[int], option("--workers", default="one per core, 2 to 8")]
ResumeOpt = Annotated[bool, option("--resume")]
NoDetectOpt = Annotated[bool, deprecated("--no-detect", "--detector none")]
CsvOpt = Annotated[Optional[Path], typer.Option("--csv", help="Also write the per-face CSV to this file.")]
TorchScriptOpt = Annotated[bool, typer.Option("--allow-torchscript", help="Accept a TorchScript --model. A TorchScript file is a program: loading and running it runs code from the file. Use only files you made or trust; .pt checkpoints and .onnx exports are data and need no flag.")]
MergeOpt = Annotated[bool, typer.Option("--merge", help="PATHS are the --out folders of every --shard of one job: combine them into --out, as one run would have written it.")]
EveryOpt = Annotated[int, typer.Option("--every", help="Videos and streams: process every N-th frame.")]
SourceOpt = Annotated[Optional[str], typer.Option("--source", help="A camera number (0) or a stream URL that OpenCV can open; Ctrl-C ends it.")]


def predict(
    paths: Annotated[Optional[list[str]], typer.Argument(help="Photos, folders (searched recursively), glob patterns or videos (.mp4, .avi, .mov, .mkv); with --merge, shard folders.", show_default=False)] = None,
    model: ModelOpt = None, detector: DetectorOpt = "default", draw: DrawOpt = False,
    out: OutOpt = None, json_path: JsonOpt = None, csv_path: CsvOpt = None, device: DeviceOpt = "auto",
    allow_torchscript: TorchScriptOpt = False, batch: BatchOpt = 64, workers: WorkersOpt = None,
    resume: ResumeOpt = False, shard: ShardOpt = None, merge: MergeOpt = False, every: EveryOpt = 1,
    source: SourceOpt = None, no_detect: NoDetectOpt = False,
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

    if no_detect:
        note_deprecated("--no-detect", "--detector none")
        detector = "none"
    if not paths and source is None:
        raise AgeCliError("name photos, folders or videos to predict (or --source for a camera or stream)")
    if merge:
        run = merge_predictions(paths or [], out, csv_path, json_path, shard=shard, resume=resume)
    else:
        options = PredictOptions(model, detector, detector == "none", draw, out, csv_path, json_path, device or "auto",
                                 allow_torchscript, batch, workers, resume, shard, every, source)
        run = run_predict(paths or [], options, RichWorkProgress(err_console))
    to_stdout = json_path is not None and str(json_path) == "-"
    console = err_console if to_stdout else out_console  # stdout: JSON only
    _show(console, run)
    if to_stdout:
        with open(run.json_path, encoding="utf-8", errors="surrogateescape") as f:
            shutil.copyfileobj(f, sys.stdout)
    elif json_path is not None:
        err_console.print(f"JSON saved to [bold]{markup_text(json_path)}[/]")
    err_console.print(_summary_line(run.kind, run.summary), style=None if run.ok else "yellow")
    err_console.print(f"Results saved to [bold]{markup_text(run.out_dir)}[/]")
    if not run.ok:
        raise typer.Exit(1)


def _show(console, run) -> None:
    """The results table: one row per face (photos, first 50) or per track (videos)."""
    title = f"{markup_text(Path(run.info['model']).name)} · detector {markup_text(run.info['detector'])}"
    if run.kind == "videos":
        rows = [(markup_text(v["path"]), str(t["track"]), f"{t['first_frame']}-{t['last_frame']}", str(t["frames"]),
                 f"{t['age']:.1f}", "" if t["spread"] is None else f"{t['spread']:.1f}") for v in run.preview for t in v["tracks"]]
        rows += [(markup_text(v["path"]), "", f"[red]{markup_text(v['error'])}[/]", "", "", "") for v in run.preview if not v["tracks"]]
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

    name = markup_text(safe_name(record["path"]))
    if not record["faces"]:
        message = markup_text((record["error"] or "").removeprefix(f"{safe_name(record['path'])}: "))  # the photo column already names the file
        return [(name, "", f"[red]{message}[/]" if record["status"] == "error" else f"[yellow]{message}[/]", "", "")]
    return [(name, str(f["face"]), ",".join(str(round(v)) for v in f["box"]), f"{f['age']:.1f}",
             "" if f["spread"] is None else f"{f['spread']:.1f}") for f in record["faces"]]


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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary_line(kind: str, s: dict) -> str:
    if kind == "videos":
        parts = [f"{_count(s['videos'], 'video')}: {_count(s['frames'], 'frame')} processed, "
                 f"{_count(s['faces'], 'face')} in {_count(s['tracks'], 'track')}"]
    else:
        parts = [f"{_count(s['photos'], 'photo')}: {s['with_faces']} with faces ({_count(s['faces'], 'face')})"]
    if s["no_face"]:
        parts.append(f"{s['no_face']} without a face")
    if s["errors"]:
        parts.append(f"{s['errors']} failed (missing or unreadable)")
    return ", ".join(parts)
