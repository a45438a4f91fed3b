"""What a prediction is: the estimate for one face, and the outcome for one photo."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from agecli.data.imageio import safe_name


class FacePrediction(NamedTuple):
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the upright photo
    score: float | None  # detector confidence; None without detection
    age: float
    spread: float | None  # one standard deviation of the predicted age distribution (years); distribution heads



@dataclass
class PhotoResult:
    path: Path
    status: str  # "ok", "no face" or "error"
    faces: list[FacePrediction] = field(default_factory=list)
    error: str | None = None  # why there is no estimate: unreadable file, no face found...
    size: tuple[int, int] | None = None  # (width, height) of the upright photo
    image: np.ndarray | None = field(default=None, repr=False)  # the decoded RGB photo, for draw()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


NON_FINITE = "the model gave a non-finite age"

# exceptions whose own text says nothing to a user ("MemoryError: ", "StopIteration: ")
PLAIN_WORDS = {MemoryError: "not enough memory to decode this image (too many pixels for this machine)",
               StopIteration: "the image has no frames"}


def readable_error(err: BaseException) -> str:
    """One line saying why a photo failed, for errors that are not already an AgeCliError."""
    for kind, words in PLAIN_WORDS.items():
        if isinstance(err, kind):
            return words
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else f"{type(err).__name__} (no details)"


def reject_non_finite(result: PhotoResult) -> PhotoResult:
    """Make `result` an error when the model gave a NaN or infinite age or spread for any of its faces.

    Broken weights, a zero std in the preprocessing or a broken export give NaN for every face: that is
    a failure to report, never an age. Called where ages are attached (agecli.predict.pipeline, Predictor).
    """
    for number, face in enumerate(result.faces, 1):
        values = [face.age] + ([] if face.spread is None else [face.spread])
        if not all(np.isfinite(values)):
            result.status, result.faces = "error", []
            result.error = (f"{safe_name(result.path)}: {NON_FINITE} ({face.age}"
                            f"{'' if face.spread is None else f' ±{face.spread}'}) for face {number}; "
                            f"check the model file and its preprocessing")
            break
    return result
