"""The one crop geometry used everywhere: a square box around the face, its margin and shift, and the crop.

Dataset preparation and prediction both cut faces here, so a model sees the same framing at training and
at prediction time.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# the framing measured per detector (margin, shift) lives with the rest of a model's preprocessing
from agecli.data.preprocess import (  # noqa: F401
    DEFAULT_MARGIN,
    DEFAULT_SHIFT,
    MARGINS,
    SHIFTS,
    Preprocess,
)

Box = tuple[float, float, float, float]


def _round(value: float) -> int:
    # Round half up: Python's round() rounds half to even, which is harder to reason about.
    return math.floor(value + 0.5)


def square_box(box: Box, margin: float, shift: float = 0.0) -> tuple[int, int, int, int]:
    """Square crop box (x0, y0, x1, y1), integer pixels, x1/y1 exclusive.

    side = round(max(w, h) * (1 + 2 * margin)), i.e. ``margin`` is the fraction of the
    face box's longer side added on EACH side (0.25 -> side 1.5x the box; a negative
    margin crops inside the box). The square is centred on the face box, then moved
    down by ``shift * side`` (negative moves up). It may extend outside the image.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        raise ValueError(f"empty face box {box}")
    side = max(w, h) * (1 + 2 * margin)
    if side < 1:
        raise ValueError(f"margin {margin} leaves nothing of box {box}")
    side_px = _round(side)
    cx = (x0 + x1) / 2
    cy = (y0 + y1) / 2 + shift * side
    left = _round(cx - side_px / 2)
    top = _round(cy - side_px / 2)
    return left, top, left + side_px, top + side_px


def crop_face(
    image_rgb: np.ndarray, box: Box | None, size: int, margin: float, shift: float = 0.0
) -> np.ndarray:
    """Cut the square around ``box`` (see square_box) and resize it to size x size.

    Parts of the square outside the image are padded BLACK, as UTKFace's own chips are.
    ``box=None`` takes the whole image and just resizes it (no margin; a non-square
    image is stretched). Resizing uses PIL bilinear, as the reference model's training
    data did. Returns a new uint8 array of shape (size, size, 3).
    """
    _check_rgb(image_rgb)
    if size < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    if box is None:
        region = image_rgb
    else:
        left, top, right, bottom = square_box(box, margin, shift)
        region = np.zeros((bottom - top, right - left, 3), dtype=np.uint8)
        height, width = image_rgb.shape[:2]
        ix0, iy0 = max(left, 0), max(top, 0)
        ix1, iy1 = min(right, width), min(bottom, height)
        if ix1 > ix0 and iy1 > iy0:
            region[iy0 - top : iy1 - top, ix0 - left : ix1 - left] = image_rgb[iy0:iy1, ix0:ix1]
    pil = Image.fromarray(np.ascontiguousarray(region))
    return np.array(pil.resize((size, size), Image.Resampling.BILINEAR))


def crop_batch(image: np.ndarray, boxes: list | None, preprocess: Preprocess) -> np.ndarray:
    """(N, S, S, 3) uint8 crops, S = preprocess.crop_size (boxes=None: the whole image, as prepare crops chips)."""
    return np.stack([crop_face(image, box, preprocess.crop_size, preprocess.margin, preprocess.shift)
                     for box in (boxes if boxes is not None else [None])])


def _check_rgb(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"expected an RGB image of shape HxWx3, got {getattr(image, 'shape', image)}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
