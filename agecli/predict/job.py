"""One `age predict` job as a library call: inputs in, a run folder of streamed predictions out.

    run = run_predict(["archive/"], PredictOptions(out=Path("ages"), resume=True))
    run.summary  # {"photos": ..., "with_faces": ..., "faces": ..., "no_face": ..., "errors": ...}

Photos go through agecli.predict.pipeline and agecli.predict.run_files (streamed, resumable, sharded); videos and
streams through agecli.predict.video. Everything is checked before any photo is read: outputs that would
replace an input or a file predict did not write are refused (agecli.predict.outputs.check_outputs). The run
folder is locked while the job writes it (agecli.files.locks), so a second run into it is refused.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from agecli.data.image_files import iter_images
from agecli.errors import AgeCliError
from agecli.files.atomic import atomic_path
from agecli.files.locks import folder_lock
from agecli.files.run_dirs import increment_dir
from agecli.files.shards import parse_shard, take_shard
from agecli.predict.outputs import ResultWriter, check_outputs
from agecli.predict.pipeline import DEFAULT_BATCH, MAX_BATCH, predict_photos
from agecli.predict.predictor import Predictor
from agecli.predict.run_files import (
    JSON,
    JSONL,
    StreamedPredictions,
    iter_records,
    merge_runs,
    read_meta,
)
from agecli.predict.video import is_video_name, predict_videos
from agecli.report.progress import WorkProgress

PREVIEW_ROWS = 51  # the screen shows 50 rows; one more says that there are more


@dataclass
class PredictOptions:
    model: Path | None = None  # None: the built-in model
    detector: str = "default"
    no_detect: bool = False  # each whole image is one face
    draw: bool = False
    out: Path | None = None  # None: runs/predict/predict[N]
    csv: Path | None = None  # also copy predictions.csv here
    json: Path | None = None  # also copy predictions.json here ('-': the caller prints it)
    device: str = "auto"
    allow_torchscript: bool = False
    batch: int = DEFAULT_BATCH
    workers: int | None = None  # decode/detect threads; None: agecli.predict.pipeline.default_workers()
    resume: bool = False
    shard: str | None = None  # "I/N"
    every: int = 1  # video: every N-th frame
    source: str | None = None  # video: a camera number or a stream URL


@dataclass
class PredictRun:
    out_dir: Path
    kind: str  # "photos" or "videos"
    info: dict
    summary: dict
    preview: list[dict] = field(default_factory=list)  # the first records (photos) or every video's record

    @property
    def ok(self) -> bool:
        """Every photo (video) was read and had a face."""
        return self.summary["no_face"] == 0 and self.summary["errors"] == 0

    @property
    def json_path(self) -> Path:
        return self.out_dir / JSON


def run_predict(paths: list[str], options: PredictOptions, progress: WorkProgress | None = None) -> PredictRun:
    """Predict every photo (or video) of `paths`; see PredictOptions and the module docstring."""
    progress = progress or WorkProgress()
    videos = [p for p in paths if is_video_name(p)]
    if videos or options.source is not None:
        if len(videos) != len(paths):
            raise AgeCliError("photos and videos in one run: pass them to separate `age predict` runs")
        return _run_videos(videos, options, progress)
    _check_photo_options(options)
    items = list(iter_images(paths))
    total = len(items)
    shard = parse_shard(options.shard)
    items = take_shard(items, shard)  # every N-th of the stable input order
    inputs = [i.path for i in items if i.problem is None]
    out = _resume_folder(options) if options.resume and options.out is None else options.out
    check_outputs(out, inputs, options.csv, options.json)
    predictor = _predictor(options)
    with folder_lock(out or increment_dir("runs/predict", "predict"), "--out") as out_dir:
        check_outputs(out_dir, inputs, options.csv, options.json)  # again, now that no other run can write there
        return _predict_photos_into(out_dir, items, total, shard, inputs, predictor, options, progress)


def _predict_photos_into(out_dir: Path, items: list, total: int, shard: tuple[int, int], inputs: list[Path],
                         predictor: Predictor, options: PredictOptions, progress: WorkProgress) -> PredictRun:
    info = _info(predictor)
    meta = {**info, "shard": options.shard and f"{shard[0]}/{shard[1]}", "inputs": total}
    drawer = ResultWriter(out_dir, draw=options.draw, inputs=inputs)  # first: it reads the earlier predictions.json
    stream = StreamedPredictions(out_dir, meta, resume=options.resume)
    todo = [i for i in items if str(i.path) not in stream.done]
    progress.start(len(todo), "photos")
    try:
        for result in predict_photos(predictor, todo, options.batch, options.workers, keep_images=options.draw):
            stream.add(drawer.record(result))
            if len(stream.pending) >= options.batch:
                stream.flush()
            progress.advance(faces=len(result.faces))
    finally:
        stream.close()  # what is done stays on disk, whatever stopped the run
        progress.stop()
    summary = stream.finish_photos([str(i.path) for i in items], info)
    _copy_outputs(out_dir, options)
    return PredictRun(out_dir, "photos", info, summary, list(islice(iter_records(out_dir / JSONL), PREVIEW_ROWS)))


def merge_predictions(folders: list[str], out: Path | None, csv: Path | None = None,
                      json: Path | None = None, shard: str | None = None, resume: bool = False) -> PredictRun:
    """`age predict --merge DIR...`: the shard folders of one job combined into one run folder."""
    if out is None:
        raise AgeCliError("--merge needs --out, the folder for the merged predictions")
    if shard is not None or resume:
        raise AgeCliError(f"--merge: cannot be combined with {'--shard' if shard is not None else '--resume'}; "
                          f"merging combines finished shard folders into a new --out")
    if not folders:
        raise AgeCliError("--merge: name the shard folders to merge")
    if any(Path(f).resolve() == out.resolve() for f in folders):
        raise AgeCliError(f"--out {out}: is one of the shard folders; choose another folder")
    check_outputs(out, [], csv, json)
    with folder_lock(out, "--out"):
        check_outputs(out, [], csv, json)
        info, summary = merge_runs(folders, out)
        _copy_outputs(out, PredictOptions(csv=csv, json=json))
    return PredictRun(out, "photos", info, summary, list(islice(iter_records(out / JSONL), PREVIEW_ROWS)))


def _check_photo_options(options: PredictOptions) -> None:
    if options.every != 1:
        raise AgeCliError("--every: applies to videos and --source streams, not photos")
    if not 1 <= options.batch <= MAX_BATCH:
        raise AgeCliError(f"--batch {options.batch}: must be from 1 to {MAX_BATCH}")
    if options.workers is not None and options.workers < 1:
        raise AgeCliError(f"--workers {options.workers}: must be at least 1")


def _predictor(options: PredictOptions) -> Predictor:
    return Predictor(options.model, detector="none" if options.no_detect else options.detector, device=options.device,
                     batch_size=options.batch, allow_torchscript=options.allow_torchscript)


def _info(predictor: Predictor) -> dict:
    """What predictions.json says about how its ages were made."""
    return {"model": str(predictor.model_path), "backend": predictor.backend.kind, "detector": predictor.detector_name}


def _resume_folder(options: PredictOptions) -> Path:
    """--resume without --out: the newest unfinished run under runs/predict."""
    runs = [p for p in Path("runs/predict").glob("predict*") if (meta := read_meta(p)) and not meta["finished"]]
    if not runs:
        raise AgeCliError("--resume: no unfinished run under runs/predict; name the run folder with --out")
    return max(runs, key=lambda p: p.stat().st_mtime)


def _copy_outputs(out_dir: Path, options: PredictOptions) -> None:
    """--csv FILE and --json FILE: copies of the run folder's files, each written atomically."""
    for wanted, name in ((options.csv, "predictions.csv"), (options.json, JSON)):
        if wanted is not None and str(wanted) != "-":
            with atomic_path(wanted) as tmp:
                shutil.copyfile(out_dir / name, tmp)


def _run_videos(videos: list[str], options: PredictOptions, progress: WorkProgress) -> PredictRun:
    if options.resume or options.shard:
        raise AgeCliError(f"{'--resume' if options.resume else '--shard'}: applies to photos, not videos")
    sources = [(v, False) for v in videos] + ([(options.source, True)] if options.source is not None else [])
    check_outputs(options.out, [Path(v) for v in videos], options.csv, options.json)
    predictor = _predictor(options)
    with folder_lock(options.out or increment_dir("runs/predict", "predict"), "--out") as out_dir:
        check_outputs(out_dir, [Path(v) for v in videos], options.csv, options.json)
        info = _info(predictor)
        summary, records = predict_videos(predictor, sources, out_dir, options.every, options.draw, options.batch,
                                          options.workers, progress, info)
        _copy_outputs(out_dir, options)
    return PredictRun(out_dir, "videos", info, summary, records)
