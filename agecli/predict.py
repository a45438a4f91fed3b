"""Photos in, ages out: find images, detect faces, crop them as `age prepare` does, estimate, draw, save.

    predictor = Predictor("run/best.pt")            # or an exported .onnx / .torchscript.pt
    for result in predictor.predict(["group.jpg", "holiday/"]):
        print(result.path, [(f.age, f.std) for f in result.faces])

Three model backends share one interface, `run(crops) -> (ages, stds | None)` on uint8 RGB crops of
`crop_size` pixels:
  * a checkpoint (.pt): PyTorch, with cache.center_crop + to_model_input, as training feeds the model;
  * an ONNX export: onnxruntime only. torch is never imported on this path, so a service without torch
    can use it. The graph does the centre crop and normalisation itself (see agecli.export);
  * a TorchScript export: the same graph, run by torch.jit.
"""

from __future__ import annotations

import glob
import json
import warnings
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agecli.data import faces as face_lib
from agecli.data.imageio import load_image, safe_name
from agecli.errors import AgeCliError
from agecli.utils import atomic_path, write_csv_atomic, write_json_atomic

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".jfif"}
METADATA_KEY = "agecli"  # ONNX metadata_props key / TorchScript extra file stem holding the export metadata
NO_FACE = "no face found"


# ---------------------------------------------------------------------------- inputs

class ImageItem(NamedTuple):
    path: Path
    problem: str | None  # why this item cannot be processed (missing path, empty folder...), else None


def iter_images(paths: Iterable[str | Path]) -> Iterator[ImageItem]:
    """Expand files, folders (recursively, image extensions only, sorted) and glob patterns.

    A path that does not exist, a glob without matches or a folder without images is yielded with a
    problem, so the caller reports it and goes on. Each file is yielded once.
    """
    seen: set[Path] = set()

    def once(path: Path) -> Iterator[ImageItem]:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            yield ImageItem(path, None)

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_image_name(p) and p.is_file())
            if not found:
                yield ImageItem(path, "no images in this folder")
            for p in found:
                yield from once(p)
        elif path.exists():
            yield from once(path)  # named explicitly: let the decoder judge whatever it is
        elif glob.has_magic(str(raw)):
            matches = sorted(Path(m) for m in glob.glob(str(raw), recursive=True))
            files = [m for m in matches if m.is_file() and _is_image_name(m)]
            if not files:
                yield ImageItem(path, "no image files match this pattern")
            for p in files:
                yield from once(p)
        else:
            yield ImageItem(path, "no such file or folder")


def _is_image_name(path: Path) -> bool:
    # dot-files are editor/OS litter (._IMG_1.jpg from macOS), not photos
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


BUILTIN_MODEL = Path(__file__).resolve().parent / "weights" / "default.pt"


def default_model_path() -> Path:
    """The built-in model shipped inside the package, once there is one."""
    if not BUILTIN_MODEL.is_file():
        raise AgeCliError("no built-in model is installed yet; pass --model CHECKPOINT")
    return BUILTIN_MODEL


# ---------------------------------------------------------------------------- model backends

def age_and_spread(out: dict, ages):
    """(age, std of the predicted distribution or None) from a model's forward dict; torch tensors.

    Uses only tensor methods, so this module needs no torch import; the same formula as
    engine.predict_crops, and the one the exported graphs compute.
    """
    age = out["age"].float()
    if "logits" not in out or ages is None:
        return age, None
    p = out["logits"].float().softmax(1)
    var = (p * (ages[None, :].to(p.dtype) - age[:, None]) ** 2).sum(1)
    return age, var.sqrt()


class TorchBackend:
    """An agecli checkpoint run by PyTorch, preprocessed exactly as training does."""

    kind = "pytorch"

    def __init__(self, path: Path, device: str = "auto"):
        from agecli.checkpoint import load_model
        from agecli.engine import select_device

        self.model, self.preprocess, self.state = load_model(path)
        self.model_name = self.state["model"]["name"]
        self.device = select_device(device)
        self.model.to(self.device)
        self.crop_size = int(self.preprocess.get("cache_size") or self.preprocess["size"])

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        from agecli.data.cache import center_crop, to_model_input

        p = self.preprocess
        with torch.no_grad():
            batch = center_crop(torch.from_numpy(np.ascontiguousarray(crops)), int(p["size"]))
            x = to_model_input(batch.to(self.device), p["mean"], p["std"], p["channel_order"])
            age, std = age_and_spread(self.model(x), getattr(self.model, "ages", None))
        return age.cpu().numpy(), None if std is None else std.cpu().numpy()


class OnnxBackend:
    """An `age export --format onnx` file run by onnxruntime; needs no torch."""

    kind = "onnx"

    def __init__(self, path: Path, device: str = "auto"):
        import onnxruntime as ort

        available = ort.get_available_providers()
        wants_cuda = device.startswith("cuda") or device == "auto"
        providers = ["CUDAExecutionProvider"] if wants_cuda and "CUDAExecutionProvider" in available else []
        if device.startswith("cuda") and not providers:
            raise AgeCliError(f"--device {device}: this onnxruntime has no CUDA provider; use --device cpu")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers + ["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise AgeCliError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0][:160]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise AgeCliError(f"{path}: not exported by `age export` (no '{METADATA_KEY}' metadata)")
        _read_metadata(self, json.loads(meta[METADATA_KEY]))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outs = dict(zip(self.output_names, self.session.run(None, {self.input_name: np.ascontiguousarray(crops)})))
        return outs["age"].astype(np.float32), outs["std"].astype(np.float32) if "std" in outs else None


class TorchScriptBackend:
    """An `age export --format torchscript` file: the same graph as the ONNX export, run by torch.jit."""

    kind = "torchscript"

    def __init__(self, path: Path, device: str = "auto"):
        import torch

        from agecli.engine import select_device

        extra = {f"{METADATA_KEY}.json": ""}
        self.device = select_device(device)
        with warnings.catch_warnings():  # torch.jit.load warns that TorchScript is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
        _read_metadata(self, json.loads(extra[f"{METADATA_KEY}.json"]))

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        with torch.no_grad():
            outs = self.module(torch.from_numpy(np.ascontiguousarray(crops)).to(self.device))
        age = outs[0].float().cpu().numpy()
        return age, outs[1].float().cpu().numpy() if len(outs) > 1 else None


def _read_metadata(backend, meta: dict) -> None:
    backend.preprocess = meta["preprocess"]
    backend.model_name = meta.get("model", "?")
    backend.crop_size = int(meta["input"]["size"])


def _is_torchscript(path: Path) -> bool:
    """Our TorchScript exports are zip archives holding extra/agecli.json; checkpoints are not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(f"extra/{METADATA_KEY}.json") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_backend(path: str | Path, device: str = "auto"):
    path = Path(path)
    if not path.is_file():
        raise AgeCliError(f"{safe_name(path)}: no such model file")
    if path.suffix.lower() == ".onnx":
        return OnnxBackend(path, device)
    if _is_torchscript(path):
        return TorchScriptBackend(path, device)
    return TorchBackend(path, device)


# ---------------------------------------------------------------------------- prediction

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

    def draw(self) -> np.ndarray:
        return draw(self.image, self.faces)


class Predictor:
    """Model + face detector. detector='none' treats each whole image as one face (pre-cropped faces)."""

    def __init__(self, model: str | Path | None = None, detector: str | None = "default", device: str = "auto",
                 batch_size: int = 64, **detector_options):
        self.model_path = Path(model) if model else default_model_path()
        self.backend = load_backend(self.model_path, device)
        self.preprocess = self.backend.preprocess
        self.detector = None if detector in (None, "none") else face_lib.create_detector(detector, **detector_options)
        self.batch_size = batch_size

    @property
    def detector_name(self) -> str:
        return self.detector.name if self.detector else "none"

    def predict(self, paths: Iterable[str | Path]) -> Iterator[PhotoResult]:
        """One PhotoResult per photo (and per missing path), as each is done."""
        return self.predict_items(iter_images(paths))

    def predict_items(self, items: Iterable[ImageItem]) -> Iterator[PhotoResult]:
        for item in items:
            if item.problem:
                yield PhotoResult(item.path, "error", error=item.problem)
                continue
            try:
                image = load_image(item.path)
            except AgeCliError as err:  # ImageError: one line already naming the file
                yield PhotoResult(item.path, "error", error=str(err))
                continue
            yield self.predict_image(image, item.path)

    def predict_image(self, image: np.ndarray, path: str | Path = "<array>") -> PhotoResult:
        """Every face of one upright RGB uint8 photo, estimated in batches."""
        h, w = image.shape[:2]
        result = PhotoResult(Path(path), "ok", size=(w, h), image=image)
        if self.detector is None:  # the whole image is the face; there is no detector score
            boxes, scores = [(0.0, 0.0, float(w), float(h))], [None]
        else:
            found = self.detector.detect(image)
            boxes, scores = [f.box for f in found], [f.score for f in found]
        if not boxes:
            result.status, result.error = "no face", NO_FACE
            return result
        crops = self.crops(image, None if self.detector is None else boxes)
        for start in range(0, len(crops), self.batch_size):
            ages, stds = self.backend.run(crops[start: start + self.batch_size])
            for i, age in enumerate(ages, start):
                std = None if stds is None else float(stds[i - start])
                result.faces.append(FacePrediction(boxes[i], scores[i], float(age), std))
        return result

    def crops(self, image: np.ndarray, boxes: list | None) -> np.ndarray:
        """(N, S, S, 3) uint8 crops, S = crop_size: the geometry `age prepare` caches (boxes=None: whole image)."""
        return crop_batch(image, boxes, self.backend.crop_size, self.preprocess)


def crop_batch(image: np.ndarray, boxes: list | None, crop_size: int, preprocess: dict) -> np.ndarray:
    margin, shift = float(preprocess["margin"]), float(preprocess.get("shift", 0.0))
    if boxes is None:  # as prepare does for pre-cropped datasets: whole image, no margin
        return face_lib.crop_face(image, None, crop_size, 0.0)[None]
    return np.stack([face_lib.crop_face(image, box, crop_size, margin, shift) for box in boxes])


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
    return f"{face.age:.1f}" if face.std is None else f"{face.age:.1f} {pm}{face.std:.1f}"


def draw(image_rgb: np.ndarray, faces: Iterable[FacePrediction]) -> np.ndarray:
    """An annotated copy: a box and an "age ±spread" label per face, scaled to the photo's size."""
    img = Image.fromarray(np.ascontiguousarray(image_rgb)).convert("RGB")
    w, h = img.size
    short = min(w, h)
    line = max(1, round(short / 250))  # 1 px on a 64-px crop, 16 px on a 4000-px photo
    font_size = max(9, round(short * 0.035))
    font, pm = _font(font_size)
    pen = ImageDraw.Draw(img)
    for i, face in enumerate(faces):
        colour = PALETTE[i % len(PALETTE)]
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w) - 1, min(y1, h) - 1
        pen.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        text = label_text(face, pm)
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
CSV_COLUMNS = ["path", "face", "x0", "y0", "x1", "y1", "score", "age", "std", "width", "height", "status", "error",
               "drawn"]


class ResultWriter:
    """Collects PhotoResults into OUT/predictions.json and .csv; with draw=True saves annotated copies in OUT.

    Copies keep the input's file name, numbered (photo_2.jpg) when two inputs share a name, and never
    land on one of the inputs. Every file is written atomically.
    """

    def __init__(self, out_dir: str | Path, draw: bool = False, inputs: Iterable[str | Path] = ()):
        self.out_dir = Path(out_dir)
        self.draw = draw
        self.protected = {Path(p).resolve() for p in inputs}
        self.used: set[str] = set()
        self.photos: list[dict] = []

    def add(self, result: PhotoResult) -> dict:
        drawn = None
        if self.draw and result.faces and result.image is not None:
            drawn = self._save_drawn(result)
        record = {"path": str(result.path), "status": result.status, "error": result.error,
                  "width": result.size[0] if result.size else None, "height": result.size[1] if result.size else None,
                  "drawn": str(drawn) if drawn else None,
                  "faces": [{"face": i + 1, "box": [round(v, 1) for v in f.box], "score": _round(f.score, 4),
                             "age": round(f.age, 3), "std": _round(f.std, 3)} for i, f in enumerate(result.faces)]}
        self.photos.append(record)
        return record

    def summary(self) -> dict:
        count = {s: sum(p["status"] == s for p in self.photos) for s in ("ok", "no face", "error")}
        faces = sum(len(p["faces"]) for p in self.photos)
        return {"photos": len(self.photos), "with_faces": count["ok"], "faces": faces, "no_face": count["no face"],
                "errors": count["error"]}

    def close(self, info: dict | None = None) -> dict:
        """Write predictions.json and predictions.csv; returns the summary counts."""
        summary = self.summary()
        payload = {**(info or {}), "summary": summary, "photos": self.photos}
        write_json_atomic(self.out_dir / "predictions.json", payload)
        write_csv_atomic(self.out_dir / "predictions.csv", csv_rows(self.photos), CSV_COLUMNS)
        return summary

    def _target(self, src: Path) -> Path:
        suffix = src.suffix.lower() if src.suffix.lower() in WRITABLE else ".png"
        stem = src.stem or "image"
        for n in range(1, 1_000_000):
            candidate = self.out_dir / (f"{stem}{suffix}" if n == 1 else f"{stem}_{n}{suffix}")
            resolved = candidate.resolve()
            if candidate.name.lower() not in self.used and resolved not in self.protected and resolved != src.resolve():
                self.used.add(candidate.name.lower())  # lower: two names differing in case collide on macOS
                return candidate
        raise AgeCliError(f"no free output name for {src} in {self.out_dir}")

    def _save_drawn(self, result: PhotoResult) -> Path:
        target = self._target(result.path)
        fmt = WRITABLE[target.suffix]
        with atomic_path(target) as tmp:
            Image.fromarray(result.draw()).save(tmp, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
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
                   "age": f["age"], "std": f["std"]}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
