"""The one crop geometry used everywhere: a square box around the face, its margin and shift, and the crop;
or, for a model whose preprocess says align="five_point", the face turned upright on its five landmarks.

Dataset preparation and prediction both cut faces here, so a model sees the same framing at training and
at prediction time.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from agecli.data.preprocess import Preprocess

Box = tuple[float, float, float, float]

# Where align="five_point" puts a face's five landmarks, as (x, y) shares of the crop's side, in the order the
# detectors give them: the eye, then the mouth corner, on the image's left first (the person's right), the nose
# between. UTKFace's chips were aligned by their authors, so their average landmarks frame a face like a chip:
# RetinaFace's landmarks on 500 chips (seeded sample, none missed) averaged, per point (left, right):
#   eyes (0.296, 0.291) (0.690, 0.289), nose (0.487, 0.520), mouth (0.319, 0.680) (0.668, 0.678); spread <= 0.036.
# The template is that average made mirror-symmetric about x = 0.5 (a flipped aligned face is aligned too;
# the chips' faces sit 0.007 of the side left of centre, 1.4 px of 200).
FIVE_POINT_TEMPLATE = np.array([
    [0.3031, 0.2903], [0.6969, 0.2903],  # eyes
    [0.5000, 0.5203],  # nose tip
    [0.3256, 0.6793], [0.6744, 0.6793],  # mouth corners
])


def _round(value: float) -> int:
    # Round half up: Python's round() rounds half to even, which is harder to reason about.
    return math.floor(value + 0.5)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when they do not overlap."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


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
    image_rgb: np.ndarray, box: Box | None, size: int, margin: float, shift: float = 0.0,
    landmarks: np.ndarray | None = None,
) -> np.ndarray:
    """Cut the square around ``box`` (see square_box) and resize it to size x size.

    Parts of the square outside the image are padded BLACK, as UTKFace's own chips are.
    ``box=None`` takes the whole image and just resizes it (no margin; a non-square
    image is stretched). Resizing uses PIL bilinear, as the reference model's training
    data did. Returns a new uint8 array of shape (size, size, 3).
    ``landmarks`` (the face's five points, see FIVE_POINT_TEMPLATE): the crop is align_face's
    instead, and box, margin and shift are not used.
    """
    _check_rgb(image_rgb)
    if size < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    if landmarks is not None:
        return align_face(image_rgb, landmarks, size)
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


def crop_batch(image: np.ndarray, boxes: list | None, preprocess: Preprocess,
               landmarks: list | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8 crops, S = preprocess.crop_size (boxes=None: the whole image, as prepare crops chips).

    landmarks: per box, its five points or None (a detector without them). They are used when
    preprocess.align is "five_point"; a face without them gets the box crop, as `age prepare` gave it.
    """
    boxes = boxes if boxes is not None else [None]
    points = landmarks if preprocess.align == "five_point" and landmarks is not None else [None] * len(boxes)
    return np.stack([crop_face(image, box, preprocess.crop_size, preprocess.margin, preprocess.shift, face_points)
                     for box, face_points in zip(boxes, points, strict=True)])


def five_point_transform(landmarks, size: float, template: np.ndarray = FIVE_POINT_TEMPLATE) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift; no mirroring) that best maps ``landmarks``
    (N x 2 image pixels) onto ``template * size``, fitted by least squares (Umeyama 1991).

    Coordinates are continuous (a pixel's centre is at i + 0.5), as the detectors' boxes are.
    """
    source = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    target = np.asarray(template, dtype=np.float64).reshape(-1, 2) * size
    if len(source) != len(target) or not np.isfinite(source).all():
        raise ValueError(f"expected {len(target)} finite landmarks, got {np.asarray(landmarks).tolist()}")
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = (source_centred ** 2).sum() / len(source)
    if source_variance < 1e-6:
        raise ValueError(f"landmarks all at one point: {source.tolist()}")
    u, singular, vt = np.linalg.svd(target_centred.T @ source_centred / len(source))
    signs = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])  # a rotation, not a mirror
    rotation = u @ np.diag(signs) @ vt
    scale = (singular * signs).sum() / source_variance
    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]])


def align_face(image_rgb: np.ndarray, landmarks, size: int, template: np.ndarray = FIVE_POINT_TEMPLATE) -> np.ndarray:
    """The face turned upright and scaled so its five landmarks land on ``template`` (shares of the side):
    a new size x size uint8 RGB crop; parts outside the image are black, as in crop_face.

    A face larger than the crop is warped at its own resolution, then shrunk with PIL bilinear as
    crop_face shrinks (warping straight to a small size would skip pixels and alias). Landmarks may lie
    outside the image. Deterministic: the same image and landmarks give the same bytes.
    """
    _check_rgb(image_rgb)
    if size < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    matrix = five_point_transform(landmarks, size, template)
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    # no wider than twice the image: a face cannot be much larger than the photo it is in
    side = size if scale >= 1 else min(_round(size / scale), max(size, 2 * max(image_rgb.shape[:2])))
    matrix = matrix * (side / size)
    # continuous coordinates -> OpenCV's, where a pixel's centre is at i: x_index = x - 0.5 on both sides
    matrix[:, 2] += matrix[:, :2].sum(1) * 0.5 - 0.5
    warped = cv2.warpAffine(np.ascontiguousarray(image_rgb), matrix, (side, side), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    if side == size:
        return warped
    return np.array(Image.fromarray(warped).resize((size, size), Image.Resampling.BILINEAR))


def _check_rgb(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"expected an RGB image of shape HxWx3, got {getattr(image, 'shape', image)}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
