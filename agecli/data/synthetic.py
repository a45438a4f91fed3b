"""Seeded synthetic faces and photos: data that ships with the code, for checks that must run anywhere.

`age export` compares the exported model with PyTorch on these, and `age bench` times training and
`age predict` on them when no real data is given. They are drawn (an oval face with eyes, brows and a
mouth on a textured background), so their statistics are closer to photos than noise is; the same seed
gives the same pixels on every machine. They are not meant to look real, and nothing learns age from them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agecli.files.atomic import write_csv_atomic


def _texture(rng: np.random.Generator, size: int, cells: int = 8, noise: float = 12.0) -> np.ndarray:
    """A smooth random colour field plus fine noise, (size, size, 3) float32."""
    low = (rng.uniform(30, 220, (cells, cells, 1)) * rng.uniform(0.7, 1.3, (cells, cells, 3))).astype(np.float32)
    smooth = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    return smooth + rng.normal(0, noise, smooth.shape).astype(np.float32)


def synthetic_face(size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 RGB face crop: the face fills the square as in a prepared crop."""
    img = _texture(rng, size)
    s = size / 100.0  # drawing units: percent of the side
    skin = rng.uniform(110, 240) * np.array([1.0, 0.8, 0.68]) * rng.uniform(0.93, 1.07, 3)  # pale to dark
    centre = (int(50 * s + rng.uniform(-3, 3) * s), int(52 * s + rng.uniform(-3, 3) * s))
    cv2.ellipse(img, centre, (int(rng.uniform(30, 36) * s), int(rng.uniform(38, 45) * s)), 0, 0, 360, skin.tolist(), -1)
    dark = (skin * rng.uniform(0.2, 0.45)).tolist()
    eye_y, eye_dx = centre[1] - int(8 * s), int(rng.uniform(11, 15) * s)
    for side in (-1, 1):
        eye = (centre[0] + side * eye_dx, eye_y)
        cv2.ellipse(img, eye, (max(1, int(5 * s)), max(1, int(2.5 * s))), 0, 0, 360, dark, -1)
        cv2.line(img, (eye[0] - int(6 * s), eye[1] - int(7 * s)), (eye[0] + int(6 * s), eye[1] - int(8 * s)),
                 dark, max(1, int(2 * s)))
    cv2.line(img, (centre[0], eye_y + int(4 * s)), (centre[0] - int(2 * s), centre[1] + int(10 * s)), dark, max(1, int(s)))
    cv2.ellipse(img, (centre[0], centre[1] + int(22 * s)), (int(rng.uniform(8, 13) * s), max(1, int(3 * s))),
                0, 0, 360, (skin * np.array([0.75, 0.4, 0.4])).tolist(), -1)
    img = cv2.GaussianBlur(img, (0, 0), max(0.5, 0.8 * s))
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_faces(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 face crops, the same for the same arguments everywhere."""
    rng = np.random.default_rng(seed)
    return np.stack([synthetic_face(size, rng) for _ in range(n)])


def synthetic_photo(size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) uint8 RGB photo holding one face of a quarter to a half of its side."""
    photo = np.clip(_texture(rng, size, cells=6, noise=8.0), 0, 255).astype(np.uint8)
    side = int(rng.uniform(0.25, 0.5) * size)
    top, left = (int(v) for v in rng.integers(0, size - side, 2))
    photo[top:top + side, left:left + side] = synthetic_face(side, rng)
    return photo


def write_synthetic_dataset(folder: str | Path, n: int, size: int = 128, seed: int = 0) -> Path:
    """n face crops as PNG files and a labels.csv (filename,age) for `age prepare csv`; returns folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        name = f"face{i:05d}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(synthetic_face(size, rng), cv2.COLOR_RGB2BGR))
        rows.append({"filename": name, "age": int(rng.integers(1, 91))})
    write_csv_atomic(folder / "labels.csv", rows, ["filename", "age"])
    return folder


def write_synthetic_photos(folder: str | Path, n: int, size: int = 448, seed: int = 0) -> list[Path]:
    """n photos (JPEG), each with one synthetic face somewhere in it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        paths.append(folder / f"photo{i:04d}.jpg")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(synthetic_photo(size, rng), cv2.COLOR_RGB2BGR))
    return paths


def write_moving_faces_video(path: str | Path, faces: list[np.ndarray], frames: int = 30, size=(160, 120),
                             fps: float = 10.0, step: float = 3.0, seed: int = 0) -> list[list[tuple]]:
    """A short mp4v video of `faces` (square RGB crops) moving over a still background.

    Face k lives in its own column of the frame and moves up and down in it (`step` pixels a frame,
    bouncing at the edges; odd faces start the other way) and a little sideways, so faces never meet.
    Returns each frame's true boxes (x0, y0, x1, y1), face by face, to test tracking.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    background = np.clip(_texture(rng, max(size), cells=5, noise=4.0), 0, 255).astype(np.uint8)[:height, :width]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    column = width / len(faces)
    truth = []
    for t in range(frames):
        canvas, boxes = background.copy(), []
        for k, face in enumerate(faces):
            side = face.shape[0]
            span = height - side
            travel = (step * t + (span / 2 if k % 2 else 0)) % (2 * span)  # a triangle wave: bounce at the edges
            y = int(round(travel if travel <= span else 2 * span - travel))
            slack = (column - side) / 2
            x = int(round(k * column + slack + slack * 0.5 * np.sin(t / 4 + k)))
            canvas[y:y + side, x:x + side] = face
            boxes.append((x, y, x + side, y + side))
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        truth.append(boxes)
    writer.release()
    return truth
