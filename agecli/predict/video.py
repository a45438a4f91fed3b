"""`age predict` on videos and live streams: frames through the pipeline, faces tracked, ages smoothed.

Any file OpenCV can read (.mp4, .avi, .mov, .mkv, ...), a camera (`--source 0`) or a stream URL that
OpenCV opens. Frames are decoded in order on a reader thread; every `every`-th goes through
agecli.predict.pipeline (detection in the pool, faces of many frames in one model batch); results come back
in frame order to agecli.predict.tracking, which gives each face a track id and a smoothed age.

Outputs: predictions.csv (one row per face per processed frame: frame, time, track, box, the frame's
age and spread, the track's running age and spread), predictions.jsonl (one record per processed frame),
predictions.json (per video: frames, tracks with their final ages) and, with draw, an annotated copy
(same size and frame rate, mp4v codec) whose labels read "#track age ±spread".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from agecli.data.imageio import MAX_PIXELS, safe_name
from agecli.errors import AgeCliError
from agecli.files.atomic import write_json_atomic
from agecli.files.outputs import file_problem
from agecli.predict.outputs import META_NAME, VIDEO_CSV_COLUMNS, ResultWriter, draw
from agecli.predict.pipeline import (
    DEFAULT_BATCH,
    MAX_BATCH,
    STREAM_WAIT,
    prepare_image,
    read_ahead,
    run_batched,
)
from agecli.predict.predictor import Predictor
from agecli.predict.run_files import StreamedPredictions
from agecli.predict.tracking import IoUTracker, Track
from agecli.report.progress import WorkProgress

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
FOURCC = "mp4v"  # MPEG-4 part 2: the encoder every opencv-python wheel has
FALLBACK_FPS = 25.0  # for streams that do not report a frame rate
# --source URLs OpenCV may open: network streams only. file:, pipe: and the like would read a local FIFO or
# standard input, which can block forever.
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp", "mms", "mmsh")
STREAM_TIMEOUT_MS = 15_000  # a network stream that sends nothing for this long fails instead of hanging


def is_video_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class Frame:
    index: int  # position in the video, from 0
    time: float  # seconds from the start
    image: np.ndarray  # RGB
    between: list[np.ndarray] = field(default_factory=list)  # the BGR frames --every skipped after it (for draw)


def quiet_capture(*args) -> cv2.VideoCapture:
    """cv2.VideoCapture(*args) with OpenCV's own log silenced: a source that cannot be opened is reported in
    one line of ours, not in the backends' warnings (V4L2, FFmpeg, each camera driver) on stderr."""
    log = cv2.utils.logging
    previous = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(*args)
    finally:
        log.setLogLevel(previous)


class VideoSource:
    """An opened video file, camera or stream. spec: a path, a camera number ('0') or a URL."""

    def __init__(self, spec: str, stream: bool = False):
        self.spec, self.stream = spec, stream
        if stream:
            check_stream_spec(spec)
        else:
            problem = file_problem(spec)
            if problem:
                raise AgeCliError(f"{safe_name(spec)}: {problem}")
        target = int(spec) if stream and spec.isdigit() else spec  # never opened as a URL unless given as one
        if is_url(spec):
            self.capture = quiet_capture(spec, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                                                cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])
        else:
            self.capture = quiet_capture(target)
        if not self.capture.isOpened():
            what = f"camera {spec}" if isinstance(target, int) else ("stream" if stream else "file")
            raise AgeCliError(f"{safe_name(spec)}: cannot open this {what} as a video with OpenCV")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 0.0
        self.count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not stream else 0
        self.size = (int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.check_frame_size(*self.size)
        if not stream and 0 in self.size:  # FFmpeg found frames too large, or too damaged, to give their size
            self.close()
            raise AgeCliError(f"{safe_name(spec)}: OpenCV cannot decode its frames (no frame size; frames over the "
                              f"{MAX_PIXELS // 1_000_000}-megapixel limit, or damaged)")

    def check_frame_size(self, width: int, height: int) -> None:
        """Frames are refused above the photo limit, as a photo is, before any of them is decoded."""
        if width * height > MAX_PIXELS:
            self.close()
            raise AgeCliError(f"{safe_name(self.spec)}: frames are {width}x{height}, over the "
                              f"{MAX_PIXELS // 1_000_000}-megapixel limit")

    @property
    def name(self) -> Path:
        return Path(f"camera{self.spec}" if self.stream and self.spec.isdigit() else
                    "stream" if self.stream else self.spec)

    def frames(self, every: int = 1, keep_between: bool = False) -> Iterator[Frame]:
        """Every `every`-th frame from the first; skipped ones are only grabbed, not decoded, unless kept."""
        index, current = 0, None
        while True:
            if not self.capture.grab():
                break
            if index % every == 0:
                ok, bgr = self.capture.retrieve()
                if not ok:
                    break
                self.check_frame_size(bgr.shape[1], bgr.shape[0])  # a stream may change size mid-way
                if current is not None:
                    yield current
                time = index / self.fps if self.fps else self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                current = Frame(index, round(time, 3), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            elif keep_between and current is not None:
                ok, bgr = self.capture.retrieve()
                if ok:
                    current.between.append(bgr)
            index += 1
        if current is not None:
            yield current
        self.read = index

    def close(self) -> None:
        self.capture.release()


def is_url(spec: str) -> bool:
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.replace("+", "").isalnum()


def check_stream_spec(spec: str) -> None:
    """A --source is a camera number, a network stream URL or a regular video file; never a FIFO, a device or
    standard input, which OpenCV would open and then wait on forever."""
    if spec.isdigit():
        return
    if is_url(spec):
        scheme = spec.partition("://")[0].lower()
        if scheme not in NETWORK_SCHEMES:
            raise AgeCliError(f"--source {safe_name(spec)}: '{scheme}://' is not a network stream "
                              f"(use one of {', '.join(NETWORK_SCHEMES)}, or a camera number)")
        return
    problem = file_problem(spec)
    if problem == "no such file":
        raise AgeCliError(f"--source {safe_name(spec)}: not a camera number, a stream URL (rtsp://, http://, ...) "
                          "or a video file")
    if problem:
        raise AgeCliError(f"--source {safe_name(spec)}: {problem}; give a camera number (0) or a stream URL")


def video_rows(records: Iterable[dict]) -> Iterator[dict]:
    """predictions.csv rows of frame records: one per face (frames without a face have no row)."""
    for r in records:
        for f in r["faces"]:
            x0, y0, x1, y1 = f["box"]
            yield {"path": r["path"], "frame": r["frame"], "time": r["time"], "track": f["track"], "x0": x0, "y0": y0,
                   "x1": x1, "y1": y1, "score": f["score"], "age": f["age"], "spread": f["spread"],
                   "track_age": f["track_age"], "track_spread": f["track_spread"]}


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def frame_record(name: str, frame: Frame, faces, tracks: list[Track]) -> dict:
    return {"path": name, "frame": frame.index, "time": frame.time,
            "faces": [{"track": t.id, "box": [round(v, 1) for v in f.box], "score": _r(f.score, 4), "age": _r(f.age),
                       "spread": _r(f.spread), "track_age": _r(t.age), "track_spread": _r(t.std)}
                      for f, t in zip(faces, tracks)]}


def predict_videos(predictor: Predictor, sources: list[tuple[str, bool]], out_dir: Path, every: int = 1,
                   draw_copy: bool = False, batch: int = DEFAULT_BATCH, workers: int | None = None,
                   progress: WorkProgress | None = None, info: dict | None = None) -> tuple[dict, list[dict]]:
    """Each (spec, is_stream) source through detection, the model and the tracker; (summary, per-video records)."""
    if every < 1:
        raise AgeCliError(f"--every {every}: must be at least 1")
    if not 1 <= batch <= MAX_BATCH:  # before any video is opened
        raise AgeCliError(f"--batch {batch}: must be from 1 to {MAX_BATCH}")
    progress = progress or WorkProgress()
    info = info or {}
    meta = {**{k: info.get(k) for k in ("model", "backend", "detector")}, "shard": None, "inputs": len(sources)}
    namer = ResultWriter(out_dir, draw=draw_copy, inputs=[s for s, is_stream in sources if not is_stream])
    stream = StreamedPredictions(out_dir, meta, columns=VIDEO_CSV_COLUMNS, rows_of=video_rows)
    videos = []
    for spec, is_stream in sources:
        videos.append(_one_video(predictor, spec, is_stream, stream, namer, every, draw_copy, batch, workers, progress))
    stream.close()
    summary = {"videos": len(videos), "frames": sum(v["processed"] for v in videos),
               "faces": sum(v["faces"] for v in videos), "tracks": sum(len(v["tracks"]) for v in videos),
               "no_face": sum(v["status"] == "no face" for v in videos),
               "errors": sum(v["status"] == "error" for v in videos)}
    write_json_atomic(out_dir / "predictions.json", {**info, "summary": summary, "videos": videos})
    write_json_atomic(out_dir / META_NAME, {**meta, "finished": True})
    return summary, videos


def _one_video(predictor, spec, is_stream, stream, namer, every, draw_copy, batch, workers, progress) -> dict:
    record = {"path": spec, "status": "ok", "error": None, "fps": None, "width": None, "height": None,
              "frames": 0, "processed": 0, "faces": 0, "drawn": None, "tracks": []}
    try:
        source = VideoSource(spec, is_stream)
    except AgeCliError as err:  # a bad video is reported and the others are still done
        return {**record, "status": "error", "error": str(err)}
    fps = source.fps or FALLBACK_FPS
    record.update(fps=round(fps, 3), width=source.size[0], height=source.size[1])
    tracker = IoUTracker(max_missed=max(2, round(fps / every)))  # a track survives about a second unseen
    writer = None
    if draw_copy:
        target = namer.copy_name(source.name, ".mp4")
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*FOURCC), fps, source.size)
        if not writer.isOpened():
            raise AgeCliError(f"{target}: OpenCV cannot write an {FOURCC} video here")
        record["drawn"] = str(target)
    progress.start(-(-source.count // every) if source.count else None, "frames", safe_name(source.name))
    prepare = lambda f: prepare_image(predictor, f.image, spec, f, kept=f.image if draw_copy else None)  # noqa: E731
    window = max(4, 32 // every) if draw_copy else 32  # frames are big: fewer in flight than photos
    frames = read_ahead(source.frames(every, keep_between=draw_copy), size=8)
    try:
        wait = STREAM_WAIT if is_stream else None  # a live stream answers without waiting for a full batch
        for prepared in run_batched(predictor, frames, prepare, batch, workers, window, wait):
            frame, faces = prepared.job, prepared.result.faces
            if prepared.result.status == "error":  # the model gave a NaN age: the video's result is an error
                record["status"], record["error"] = "error", prepared.result.error
            tracks = tracker.update(frame.index, [f.box for f in faces])
            for face, track in zip(faces, tracks):
                track.add(face.age, face.spread)
            stream.add(frame_record(spec, frame, faces, tracks))
            if len(stream.pending) >= batch:
                stream.flush()
            if writer is not None:
                _write_annotated(writer, frame, faces, tracks)
            record["processed"] += 1
            record["faces"] += len(faces)
            progress.advance(faces=len(faces))
    except KeyboardInterrupt:  # Ctrl-C ends a live stream: keep what was done
        record["error"] = "interrupted"
    except AgeCliError as err:  # e.g. a frame over the pixel limit: this video is an error, the others go on
        record["status"], record["error"] = "error", str(err)
    finally:
        frames.close()  # stops the reader thread before its capture is released
        stream.flush()
        progress.stop()
        source.close()
        if writer is not None:
            writer.release()
    record["frames"] = getattr(source, "read", record["processed"])
    record["tracks"] = [t.summary() for t in tracker.all_tracks()]
    if not record["faces"] and record["status"] != "error":
        record["status"], record["error"] = "no face", record["error"] or "no face found in any frame"
    return record


def _write_annotated(writer, frame: Frame, faces, tracks: list[Track]) -> None:
    """The processed frame with each face's track id and track age; the frames skipped after it carry
    the same boxes, so the copy keeps every frame and the frame rate."""
    labels = [f"#{t.id} {t.age:.1f}" + ("" if t.std is None else f" ±{t.std:.1f}") for t in tracks]
    ids = [t.id - 1 for t in tracks]
    writer.write(cv2.cvtColor(draw(frame.image, faces, labels, ids), cv2.COLOR_RGB2BGR))
    for bgr in frame.between:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        writer.write(cv2.cvtColor(draw(rgb, faces, labels, ids), cv2.COLOR_RGB2BGR))
