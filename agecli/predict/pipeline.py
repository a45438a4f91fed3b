"""The predict pipeline: decoding and face detection run ahead of the model, the model sees full batches.

    for result in predict_photos(predictor, iter_images(["archive/"]), workers=2):
        ...  # PhotoResults in input order, as soon as each is done

Stages:
  1. a thread pool decodes each photo (or takes a video frame), detects its faces and cuts their
     crops (`prepare`). Decoders, OpenCV and onnxruntime release the GIL, so threads run in parallel;
  2. the calling thread stacks the crops of many photos into batches of `batch` faces and runs the
     model on them (torch and onnxruntime spread one batch over the cores themselves);
  3. results come out in input order: a photo leaves once all its faces have their ages.

At most `window` photos are in flight, so memory does not grow with the number of photos. Batches
are full except the last: every face is then computed in a batch of the same size (the last one is
padded), so its age does not depend on which photos happened to share its batch, and a resumed or
sharded run gives the same bytes. A live stream instead runs a part-filled batch, unpadded, when no
new face came for `max_wait` seconds, so it gets answers without waiting for a full batch.
"""

from __future__ import annotations

import os
import queue as queue_lib
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from agecli.data.image_files import ImageItem
from agecli.data.imageio import load_image
from agecli.errors import AgeCliError
from agecli.predict.predictor import (
    NO_FACE,
    FacePrediction,
    PhotoResult,
    Predictor,
    failed_photo,
)
from agecli.predict.results import reject_non_finite

DEFAULT_BATCH = 64  # faces per model call: past this CPU throughput stops growing (see README, speed table)
MAX_BATCH = 1024  # every batch is padded to full size: --batch 100000 on one photo would allocate GBs
STREAM_WAIT = 0.25  # live streams: seconds a part-filled batch waits for more faces before it runs anyway


def default_workers() -> int:
    """Decode/detect threads: one per core, at least two so decoding overlaps the model, at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


@dataclass
class Prepared:
    """One photo (or frame) after stage 1: decoded, faces found and cropped; ages still to come."""

    job: Any
    result: PhotoResult
    boxes: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    crops: np.ndarray | None = None
    waiting: int = 0  # faces still without an age


def prepare_image(predictor: Predictor, image: np.ndarray, path: str | Path, job: Any = None,
                  kept: np.ndarray | None = None) -> Prepared:
    """Stage 1 for a decoded RGB image: detect and crop (thread-safe, see Predictor.find_faces).
    kept: the image to keep for an annotated copy."""
    boxes, scores, crops = predictor.find_faces(image)
    result = PhotoResult(Path(path), "ok" if boxes else "no face", error=None if boxes else NO_FACE,
                         size=(image.shape[1], image.shape[0]), image=kept)
    return Prepared(job, result, boxes, scores, crops, len(boxes))


def prepare_photo(predictor: Predictor, item: ImageItem, keep_image: bool = False) -> Prepared:
    """Stage 1 for a photo file; a file that cannot be read becomes an error result, never an exception."""
    if item.problem:
        return Prepared(item, PhotoResult(item.path, "error", error=item.problem))
    try:
        image = load_image(item.path)
        return prepare_image(predictor, image, item.path, item, image if keep_image else None)
    except Exception as err:  # AGECLI_DEBUG=1 stops here
        return Prepared(item, failed_photo(item.path, err))


def run_batched(predictor: Predictor, jobs: Iterable, prepare: Callable[[Any], Prepared], batch: int = DEFAULT_BATCH,
                workers: int | None = None, window: int | None = None,
                max_wait: float | None = None) -> Iterator[Prepared]:
    """prepare(job) in a thread pool, the model on batches of faces across jobs; Prepared in job order.

    max_wait: None for throughput (full batches, the last one padded); seconds for a live stream.
    """
    if not 1 <= batch <= MAX_BATCH:
        raise AgeCliError(f"--batch {batch}: must be from 1 to {MAX_BATCH}")
    workers = workers or default_workers()
    window = window or max(2 * batch, 4 * workers)  # enough photos in flight to fill the next batch
    with ThreadPoolExecutor(workers, thread_name_prefix="age-prepare") as pool:
        flow = _Flow(predictor, iter(jobs), prepare, pool, batch, window, max_wait)
        try:
            yield from flow.run()
        finally:
            for future in flow.futures:  # stopped early (an error, Ctrl-C): do not decode the rest
                future.cancel()


class _Flow:
    """The state of one run_batched: jobs submitted, photos in order, faces waiting for the model."""

    def __init__(self, predictor, jobs, prepare, pool, batch, window, max_wait):
        self.predictor, self.jobs, self.prepare, self.pool = predictor, jobs, prepare, pool
        self.batch, self.window, self.max_wait = batch, window, max_wait
        self.futures: deque[Future] = deque()  # submitted to the pool, in job order
        self.in_order: deque[Prepared] = deque()  # prepared, in job order, some still waiting for ages
        self.faces: list[tuple[Prepared, int]] = []  # faces waiting for the model, in job order

    def run(self) -> Iterator[Prepared]:
        self.refill()
        while self.futures or self.faces:
            while self.futures and len(self.faces) < self.batch:  # gather faces until a batch is full
                try:
                    prepared = self.futures[0].result(timeout=self.max_wait if self.faces else None)
                except FutureTimeout:
                    break  # a live stream lags: run what is there rather than keep the answers waiting
                self.futures.popleft()
                self.in_order.append(prepared)
                self.faces.extend((prepared, i) for i in range(prepared.waiting))
                self.refill()
                yield from self.finished()
            if self.faces:
                _run_model(self.predictor, self.faces[:self.batch], None if self.max_wait else self.batch)
                del self.faces[:self.batch]
                yield from self.finished()
                self.refill()

    def refill(self) -> None:
        while len(self.futures) + len(self.in_order) < self.window:
            job = next(self.jobs, _END)
            if job is _END:
                return
            self.futures.append(self.pool.submit(self.prepare, job))

    def finished(self) -> Iterator[Prepared]:
        while self.in_order and not self.in_order[0].waiting:
            yield self.in_order.popleft()


_END = object()


def _run_model(predictor: Predictor, faces: list[tuple[Prepared, int]], pad_to: int | None) -> None:
    crops = np.stack([p.crops[i] for p, i in faces])
    if pad_to and len(crops) < pad_to:  # a face's age must not depend on how many faces shared its batch
        # (CPU kernels choose their blocking by batch size): a resumed or sharded run gives the same bytes
        crops = np.concatenate([crops, np.zeros((pad_to - len(crops), *crops.shape[1:]), crops.dtype)])
    ages, stds = predictor.backend.run(crops)
    for k, (prepared, i) in enumerate(faces):
        std = None if stds is None else float(stds[k])
        prepared.result.faces.append(FacePrediction(prepared.boxes[i], prepared.scores[i], float(ages[k]), std))
        prepared.waiting -= 1
        if not prepared.waiting:
            prepared.crops = None  # done with: free the memory before the photo leaves the window
            reject_non_finite(prepared.result)  # a NaN age is an error, never an estimate


def predict_photos(predictor: Predictor, items: Iterable[ImageItem], batch: int = DEFAULT_BATCH,
                   workers: int | None = None, keep_images: bool = False) -> Iterator[PhotoResult]:
    """One PhotoResult per item, in order, through the pipeline (keep_images: for annotated copies)."""
    prepare = lambda item: prepare_photo(predictor, item, keep_images)  # noqa: E731
    for prepared in run_batched(predictor, items, prepare, batch, workers):
        yield prepared.result


def read_ahead(source: Iterable, size: int = 8) -> Iterator:
    """Iterate `source` in a background thread, up to `size` items ahead (a video's frames: decoding
    must be sequential, but it can run while the model works). Exceptions reach the consumer."""
    buffer: queue_lib.Queue = queue_lib.Queue(maxsize=size)
    stop = threading.Event()

    def put(message) -> bool:
        while not stop.is_set():  # the consumer may have stopped: never block on a full buffer forever
            try:
                buffer.put(message, timeout=0.1)
                return True
            except queue_lib.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as err:  # handed to the consumer, raised there
            put(("error", err))

    thread = threading.Thread(target=produce, name="age-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)
