"""Results of `age predict` made visible and durable: annotated copies, predictions.json and .csv."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agecli.errors import AgeCliError
from agecli.files.atomic import atomic_path
from agecli.files.outputs import (
    check_output_dir,
    check_output_file,
    csv_with_header,
    json_with_keys,
)
from agecli.predict.results import FacePrediction, PhotoResult

# ---------------------------------------------------------------------------- drawing

PALETTE = [(255, 56, 56), (0, 194, 255), (255, 178, 29), (72, 249, 10), (207, 56, 255), (255, 112, 31)]


@lru_cache(maxsize=16)
def _font(size: int) -> tuple[ImageFont.ImageFont, str]:
    """A scalable font and the plus-minus sign it can draw (the old bitmap font only knows ASCII)."""
    for name in ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size), "±"
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size), "±"  # Pillow >= 10.1 with FreeType
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default(), "+/-"


def label_text(face: FacePrediction, pm: str = "±") -> str:
    return f"{face.age:.1f}" if face.spread is None else f"{face.age:.1f} {pm}{face.spread:.1f}"


def draw(image_rgb: np.ndarray, faces: Iterable[FacePrediction], labels: list[str] | None = None,
         colour_ids: list[int] | None = None) -> np.ndarray:
    """An annotated copy: a box and an "age ±spread" label per face, scaled to the photo's size.

    labels / colour_ids replace the label text and palette index of each face (video: track id and age).
    """
    img = Image.fromarray(np.ascontiguousarray(image_rgb)).convert("RGB")
    w, h = img.size
    short = min(w, h)
    line = max(1, round(short / 250))  # 1 px on a 64-px crop, 16 px on a 4000-px photo
    font_size = max(9, round(short * 0.035))
    font, pm = _font(font_size)
    pen = ImageDraw.Draw(img)
    for i, face in enumerate(faces):
        colour = PALETTE[(i if colour_ids is None else colour_ids[i]) % len(PALETTE)]
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w) - 1, min(y1, h) - 1
        pen.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        text = label_text(face, pm) if labels is None else labels[i].replace("±", pm)
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        pad = max(1, font_size // 6)
        bw, bh = right - left + 2 * pad, bottom - top + 2 * pad
        lx = min(x0, max(0, w - bw))
        ly = y0 - bh if y0 - bh >= 0 else min(y0, max(0, h - bh))  # above the box, else inside its top
        pen.rectangle([lx, ly, lx + bw - 1, ly + bh - 1], fill=colour)  # filled: readable on any background
        dark = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 150
        pen.text((lx + pad - left, ly + pad - top), text, fill=(0, 0, 0) if dark else (255, 255, 255), font=font)
    return np.asarray(img)


# ---------------------------------------------------------------------------- saving

# Drawn copies keep the input's format where PIL can write it; anything else becomes PNG.
WRITABLE = {".jpg": "JPEG", ".jpeg": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP",
            ".tif": "TIFF", ".tiff": "TIFF"}
CSV_COLUMNS = ["path", "face", "x0", "y0", "x1", "y1", "score", "age", "spread", "width", "height", "status",
               "error", "drawn"]


PREDICTIONS_JSON_KEYS = ("summary", "photos")  # what marks a JSON file as one `age predict` wrote
VIDEO_JSON_KEYS = ("summary", "videos")
VIDEO_CSV_COLUMNS = ["path", "frame", "time", "track", "x0", "y0", "x1", "y1", "score", "age", "spread",
                     "track_age", "track_spread"]
OLD_SPREAD_NAMES = {"spread": "std", "track_spread": "track_std"}  # the spread's names in files of older agecli


def older_header(columns: list[str]) -> list[str]:
    """The same CSV header as an older agecli wrote it (the spread named "std"): still recognised as ours."""
    return [OLD_SPREAD_NAMES.get(c, c) for c in columns]
META_NAME = "predictions.meta.json"  # what a run folder holds: model, detector, shard, inputs, finished
META_KEYS = ("model", "backend", "detector", "shard", "inputs", "finished")


def jsonl_of_predictions(path: Path) -> bool:
    """Recogniser for check_output_file: empty, or a first line that is one of predict's JSON records."""
    import json

    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    if not first.strip():
        return True
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and {"path", "faces"} <= set(record)


def check_outputs(out_dir: Path | None, inputs: Iterable[Path], csv_path: Path | None = None,
                  json_path: Path | None = None) -> None:
    """Before any work: refuse outputs that would replace an input or a file predict did not write."""
    inputs = list(inputs)
    headers = [csv_with_header(h) for c in (CSV_COLUMNS, VIDEO_CSV_COLUMNS) for h in (c, older_header(c))]
    written_csv = lambda path: any(recognise(path) for recognise in headers)  # noqa: E731
    photo_json, video_json = json_with_keys(PREDICTIONS_JSON_KEYS, exact=False), json_with_keys(VIDEO_JSON_KEYS, exact=False)
    written_json = lambda path: photo_json(path) or video_json(path)  # noqa: E731
    if out_dir is not None:
        check_output_dir(out_dir, "--out")
        check_output_file(out_dir / "predictions.csv", "--out", inputs, written_csv)
        check_output_file(out_dir / "predictions.json", "--out", inputs, written_json)
        check_output_file(out_dir / "predictions.jsonl", "--out", inputs, jsonl_of_predictions)
        check_output_file(out_dir / META_NAME, "--out", inputs, json_with_keys(META_KEYS))
    if csv_path is not None:
        check_output_file(csv_path, "--csv", inputs, written_csv)
    if json_path is not None and str(json_path) != "-":
        check_output_file(json_path, "--json", inputs, written_json)


def earlier_drawn(out_dir: Path) -> set[str]:
    """Names of the annotated copies listed in out_dir/predictions.json, when an earlier predict wrote it."""
    import json

    listing = out_dir / "predictions.json"
    if not listing.is_file():
        return set()
    try:
        data = json.loads(listing.read_text(encoding="utf-8"))
    except ValueError:
        return set()
    if not isinstance(data, dict) or "summary" not in data:
        return set()
    listed = data.get("photos", []) + data.get("videos", [])  # annotated photos, or annotated videos
    return {Path(p["drawn"]).name for p in listed if isinstance(p, dict) and p.get("drawn")}


class ResultWriter:
    """The JSON record of each PhotoResult (agecli.predict.run_files streams them to OUT); with draw=True it saves
    annotated copies in OUT.

    Copies keep the input's file name, numbered (photo_2.jpg) when two inputs share a name, and never
    land on one of the inputs. Every file is written atomically.
    """

    def __init__(self, out_dir: str | Path, draw: bool = False, inputs: Iterable[str | Path] = ()):
        self.out_dir = Path(out_dir)
        self.draw = draw
        self.protected = {Path(p).resolve() for p in inputs}
        self.replaceable = earlier_drawn(self.out_dir) if draw else set()  # copies an earlier predict drew may be redrawn
        self.used: set[str] = set()

    def record(self, result: PhotoResult) -> dict:
        """The JSON-ready record of one photo (saving its annotated copy with draw=True)."""
        drawn = None
        if self.draw and result.faces and result.image is not None:
            drawn = self._save_drawn(result)
        record = {"path": str(result.path), "status": result.status, "error": result.error,
                  "width": result.size[0] if result.size else None, "height": result.size[1] if result.size else None,
                  "drawn": str(drawn) if drawn else None,
                  "faces": [{"face": i + 1, "box": [round(v, 1) for v in f.box], "score": _round(f.score, 4),
                             "age": round(f.age, 3), "spread": _round(f.spread, 3)}
                            for i, f in enumerate(result.faces)]}
        return record

    def copy_name(self, src: Path, suffix: str | None = None) -> Path:
        """The next free name for a copy of src in out_dir (suffix: the copy's own, e.g. .mp4 for video)."""
        suffix = suffix or (src.suffix.lower() if src.suffix.lower() in WRITABLE else ".png")
        stem = src.stem or "image"
        for n in range(1, 1_000_000):
            candidate = self.out_dir / (f"{stem}{suffix}" if n == 1 else f"{stem}_{n}{suffix}")
            if os.path.lexists(candidate) and (candidate.name not in self.replaceable or candidate.is_symlink()
                                               or not candidate.is_file()):
                continue  # never a file this command did not write, never through a link
            if candidate.name.lower() not in self.used and candidate.resolve() not in self.protected:
                self.used.add(candidate.name.lower())  # lower: two names differing in case collide on macOS
                return candidate
        raise AgeCliError(f"no free output name for {src} in {self.out_dir}")

    def _save_drawn(self, result: PhotoResult) -> Path:
        target = self.copy_name(result.path)
        fmt = WRITABLE[target.suffix]
        with atomic_path(target) as tmp:
            Image.fromarray(draw(result.image, result.faces)).save(tmp, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
        return target


def csv_rows(photos: list[dict]) -> Iterator[dict]:
    """One row per face; a photo without a face (or unreadable) gets one row with its status and error."""
    for p in photos:
        base = {k: p[k] for k in ("path", "width", "height", "status", "error", "drawn")}
        if not p["faces"]:
            yield base
        for f in p["faces"]:
            x0, y0, x1, y1 = f["box"]
            yield {**base, "face": f["face"], "x0": x0, "y0": y0, "x1": x1, "y1": y1, "score": f["score"],
                   "age": f["age"], "spread": f["spread"]}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
