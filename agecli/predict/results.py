"""What a prediction is: the estimate for one face, and the outcome for one photo."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np


class FacePrediction(NamedTuple):
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the upright photo
    score: float | None  # detector confidence; None without detection
    age: float
    std: float | None  # spread of the predicted age distribution (years), for distribution heads



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
