"""Photos in, ages out: decode, detect faces, crop them as `age prepare` does, estimate.

    predictor = Predictor("run/best.pt")            # or an exported .onnx, or a shipped model's name
    for result in predictor.predict(["group.jpg", "holiday/"]):
        print(result.path, [(f.age, f.spread) for f in result.faces])

Drawing and saving the results live in agecli.predict.outputs; the batched, threaded path for many photos
in agecli.predict.pipeline.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from agecli.data import detectors as face_lib
from agecli.data.crops import crop_batch
from agecli.data.image_files import ImageItem, iter_images
from agecli.data.imageio import load_image, safe_name
from agecli.errors import AgeCliError
from agecli.modelio.backends import load_backend
from agecli.modelio.builtin import resolve_model_path
from agecli.predict.results import FacePrediction, PhotoResult, readable_error, reject_non_finite
from agecli.system.device import idle_threads_sleep

NO_FACE = "no face found"



THREAD_SAFE_DETECTORS = {"retinaface"}  # one onnxruntime session, whose run() is thread-safe



class Predictor:
    """Model + face detector. detector='none' treats each whole image as one face (pre-cropped faces).

    allow_torchscript: load a TorchScript model, which runs code from its file (see load_backend).
    """

    def __init__(self, model: str | Path | None = None, detector: str | None = "default", device: str = "auto",
                 batch_size: int = 64, allow_torchscript: bool = False, **detector_options):
        if detector not in (None, "none"):
            idle_threads_sleep()  # before torch loads: detection shares the cores with the model
        self.model_path = resolve_model_path(model)
        self.backend = load_backend(self.model_path, device, allow_torchscript)
        self.preprocess = self.backend.preprocess
        self.detector = None if detector in (None, "none") else face_lib.create_detector(detector, **detector_options)
        # `age prepare` aligned an aligned model's chips on landmarks found in each chip: without a face
        # detector those landmarks are still looked for, so the model gets the crops it was trained on
        self.landmark_detector = None
        if self.detector is None and self.preprocess.align != "none":
            found = face_lib.create_detector(self.preprocess.detector or "default")
            self.landmark_detector = found if found.has_landmarks else None  # none: whole chips, as without alignment
        self.batch_size = batch_size
        self._detect_lock = threading.Lock()

    @property
    def detector_name(self) -> str:
        return self.detector.name if self.detector else "none"

    def predict(self, paths: Iterable[str | Path]) -> Iterator[PhotoResult]:
        """One PhotoResult per photo (and per missing path), as each is done."""
        return self.predict_items(iter_images(paths))

    def predict_items(self, items: Iterable[ImageItem]) -> Iterator[PhotoResult]:
        """One photo at a time (agecli.predict.pipeline batches faces across photos for large jobs)."""
        for item in items:
            if item.problem:
                result = PhotoResult(item.path, "error", error=item.problem)
            else:
                try:
                    result = self.predict_image(load_image(item.path), item.path)
                except Exception as err:
                    result = failed_photo(item.path, err)
            yield result

    def predict_image(self, image: np.ndarray, path: str | Path = "<array>") -> PhotoResult:
        """Every face of one upright RGB uint8 photo, estimated in batches.

        Photos are decoded in full (agecli.data.imageio.load_image), with or without a detector: the model
        learned from crops that `age prepare` cut from fully decoded photos (the SSR-Net port from
        cv2.imread's), and a reduced-scale JPEG decode, though faster, shows it other pixels and moves its ages.
        """
        h, w = image.shape[:2]
        result = PhotoResult(Path(path), "ok", size=(w, h), image=image)
        boxes, scores, crops = self.find_faces(image)
        if not boxes:
            result.status, result.error = "no face", NO_FACE
            return result
        for start in range(0, len(crops), self.batch_size):
            ages, stds = self.backend.run(crops[start: start + self.batch_size])
            for i, age in enumerate(ages, start):
                std = None if stds is None else float(stds[i - start])
                result.faces.append(FacePrediction(boxes[i], scores[i], float(age), std))
        return reject_non_finite(result)  # a NaN age is an error, never an estimate

    def find_faces(self, image: np.ndarray) -> tuple[list, list, np.ndarray | None]:
        """Boxes, detector scores and crops (see crops) of every face in one upright RGB photo.

        Safe to call from several threads (agecli.predict.pipeline does): detectors that keep state between
        calls (YuNet sets its input size, Haar's cascade is not documented as thread-safe) take turns.
        """
        h, w = image.shape[:2]
        if self.detector is None:  # the whole image is the face; there is no detector score
            landmarks = None
            if self.landmark_detector is not None:
                found = self._detect(self.landmark_detector, image)
                landmarks = [found[0].landmarks if found else None]
            return [(0.0, 0.0, float(w), float(h))], [None], self.crops(image, None, landmarks)
        found = self._detect(self.detector, image)
        boxes, scores = [f.box for f in found], [f.score for f in found]
        return boxes, scores, self.crops(image, boxes, [f.landmarks for f in found]) if boxes else None

    def _detect(self, detector, image: np.ndarray) -> list:
        if detector.name in THREAD_SAFE_DETECTORS:
            return detector.detect(image)
        with self._detect_lock:
            return detector.detect(image)

    def crops(self, image: np.ndarray, boxes: list | None, landmarks: list | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8 crops, S = crop_size: the geometry `age prepare` caches (boxes=None: whole image)."""
        return crop_batch(image, boxes, self.preprocess, landmarks)  # landmarks: used by an aligned model



def failed_photo(path: Path, err: Exception) -> PhotoResult:
    """The result of a photo that could not be read or processed: a batch job reports it and carries on."""
    if isinstance(err, AgeCliError):  # ImageError: one line already naming the file
        return PhotoResult(path, "error", error=str(err))
    if os.environ.get("AGECLI_DEBUG"):
        raise err
    return PhotoResult(path, "error", error=f"{safe_name(path)}: {readable_error(err)}")

