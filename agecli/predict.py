"""Photos in, ages out: find images, detect faces, crop them as `age prepare` does, estimate.

Drawing and saving the results live in agecli.results.

    predictor = Predictor("run/best.pt")            # or an exported .onnx / .torchscript.pt
    for result in predictor.predict(["group.jpg", "holiday/"]):
        print(result.path, [(f.age, f.std) for f in result.faces])

Three model backends share one interface, `run(crops) -> (ages, stds | None)` on uint8 RGB crops of
`crop_size` pixels, and say what they expect in `preprocess` (an agecli.preprocess.Preprocess):
  * a checkpoint (.pt): PyTorch, with cache.center_crop + to_model_input, as training feeds the model;
  * an ONNX export: onnxruntime only. torch is never imported on this path, so a service without torch
    can use it. The graph does the centre crop and normalisation itself (see agecli.export);
  * a TorchScript export: the same graph, run by torch.jit.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from agecli.data import faces as face_lib
from agecli.data.imageio import load_image, load_image_reduced, safe_name
from agecli.errors import AgeCliError
from agecli.paths import file_kind, file_problem
from agecli.preprocess import Preprocess
from agecli.utils import idle_threads_sleep

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".jfif"}
METADATA_KEY = "agecli"  # ONNX metadata_props key / TorchScript extra file stem holding the export metadata
NO_FACE = "no face found"
THREAD_SAFE_DETECTORS = {"retinaface"}  # one onnxruntime session, whose run() is thread-safe


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
        try:
            key = path.resolve()
        except (OSError, RuntimeError):  # a symbolic link loop cannot be resolved
            key = path.absolute()
        if key not in seen:
            seen.add(key)
            # a FIFO, device, socket, folder or broken link named like a photo is reported, never opened
            yield ImageItem(path, file_problem(path))

    for raw in paths:
        path = Path(raw)
        if not str(raw).strip():  # Path("") is the working directory: never scan it by accident
            yield ImageItem(path, "empty path")
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_image_name(p))
            if not found:
                yield ImageItem(path, "no images in this folder")
            for p in found:
                yield from once(p)
        elif os.path.lexists(path):
            yield from once(path)  # named explicitly: let the decoder judge whatever it is
        elif glob.has_magic(str(raw)):
            files = sorted(Path(m) for m in glob.glob(str(raw), recursive=True) if _is_image_name(Path(m)))
            if not files:
                yield ImageItem(path, "no image files match this pattern")
            for p in files:
                yield from once(p)
        else:
            yield ImageItem(path, "no such file or folder")


def _is_image_name(path: Path) -> bool:
    # dot-files are editor/OS litter (._IMG_1.jpg from macOS), not photos
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # the models shipped in the package (`age models`)
BUILTIN_MODEL = WEIGHTS_DIR / "default.pt"


def default_model_path() -> Path:
    """The built-in model shipped inside the package, once there is one."""
    if not BUILTIN_MODEL.is_file():
        raise AgeCliError("no built-in model is installed yet; pass --model CHECKPOINT")
    return BUILTIN_MODEL


def resolve_model_path(model: str | Path | None) -> Path:
    """--model as given: a file, or the bare name of a shipped model (`--model lite0`); none: the built-in one.
    A file of that name in the working folder wins over a shipped model."""
    if not model or not str(model).strip():
        return default_model_path()
    path, shipped = Path(model), WEIGHTS_DIR / f"{Path(model).name}.pt"
    if str(model) == path.name and not os.path.lexists(path) and shipped.is_file():
        return shipped
    return path


# ---------------------------------------------------------------------------- model backends

def age_and_spread(out: dict, ages):
    """(age, spread or None) from a model's forward dict, as torch tensors; the spread is
    agecli.models.base.distribution_stats', the one formula eval and the exported graphs use too."""
    age = out["age"].float()
    if "logits" not in out or ages is None:
        return age, None
    from agecli.models.base import distribution_stats  # here: the ONNX path of this module never imports torch

    return age, distribution_stats(out["logits"], ages)[1]


class TorchBackend:
    """An agecli checkpoint run by PyTorch, preprocessed exactly as training does."""

    kind = "pytorch"

    def __init__(self, path: Path, device: str = "auto", fold: bool = True):
        import torch

        from agecli.checkpoint import load_model
        from agecli.distributed import select_device
        from agecli.models.fuse import fold_batchnorm

        self.model, self.preprocess, self.state = load_model(path)
        if fold:  # the same ages to float rounding; Lite0 1.5x faster on CPU (benchmarks/model_speed.py)
            fold_batchnorm(self.model)
        self.model_name = self.state["model"]["name"]
        self.device = select_device(device)
        # channels_last on CPU: 1.45x faster for EfficientNet-Lite0 at batch 64, no slower for small ResNets
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model.to(self.device, memory_format=self.memory_format)
        self.crop_size = self.preprocess.crop_size

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        from agecli.data.cache import center_crop, to_model_input

        p = self.preprocess
        with torch.no_grad():
            batch = center_crop(torch.from_numpy(np.ascontiguousarray(crops)), p.input_size)
            x = to_model_input(batch.to(self.device), p.mean, p.std, p.channel_order)
            x = x.contiguous(memory_format=self.memory_format)
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

        from agecli.distributed import select_device

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
    backend.metadata = meta  # all the export recorded (licence, metrics), for those who describe the model
    # the graph takes crops of input.size pixels, whatever the preprocess block says of the crop
    backend.preprocess = replace(Preprocess.from_dict(meta["preprocess"]), crop_size=int(meta["input"]["size"]))
    backend.model_name = meta.get("model", "?")
    backend.crop_size = backend.preprocess.crop_size


def load_backend(path: str | Path, device: str = "auto", allow_torchscript: bool = False):
    """The backend for a model file, chosen by what the file is, never by its name alone.

    A TorchScript file is a program: torch.jit.load runs code from it. It is loaded only with
    allow_torchscript (`--allow-torchscript`); ONNX is the way to ship a model that is data.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise AgeCliError(f"{safe_name(path)}: {'no such model file' if problem == 'no such file' else problem}")
    if path.suffix.lower() == ".onnx":
        return OnnxBackend(path, device)
    if file_kind(path) == "torchscript":
        if not allow_torchscript:
            raise AgeCliError(f"{safe_name(path)}: is a TorchScript program, which runs code from the file when "
                              f"loaded; pass --allow-torchscript only for a file you trust, or use the .onnx export")
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
        from agecli.results import draw

        return draw(self.image, self.faces)


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
        self.batch_size = batch_size
        self._detect_lock = threading.Lock()

    @property
    def detector_name(self) -> str:
        return self.detector.name if self.detector else "none"

    def predict(self, paths: Iterable[str | Path]) -> Iterator[PhotoResult]:
        """One PhotoResult per photo (and per missing path), as each is done."""
        return self.predict_items(iter_images(paths))

    def predict_items(self, items: Iterable[ImageItem]) -> Iterator[PhotoResult]:
        """One photo at a time (agecli.pipeline batches faces across photos for large jobs)."""
        for item in items:
            if item.problem:
                result = PhotoResult(item.path, "error", error=item.problem)
            else:
                try:
                    pixels, size, full = self.read(item.path, keep_image=True)
                    result = self.predict_image(pixels, item.path, size)
                    result.image = full
                except Exception as err:
                    result = failed_photo(item.path, err)
            yield result

    def read(self, path: str | Path, keep_image: bool = False) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
        """(pixels for find_faces, the photo's full (width, height), the full photo if keep_image).

        Without a detector the face is the whole image and only crop_size pixels of it are used, so a
        JPEG is decoded at reduced scale (about twice as fast for 200-px chips, see load_image_reduced);
        keep_image then decodes it in full too, unless no smaller scale fitted.
        """
        if self.detector is None:
            pixels, size = load_image_reduced(path, self.preprocess.crop_size)
            if not keep_image:
                return pixels, size, None
            return pixels, size, pixels if (pixels.shape[1], pixels.shape[0]) == size else load_image(path)
        image = load_image(path)
        return image, (image.shape[1], image.shape[0]), image if keep_image else None

    def predict_image(self, image: np.ndarray, path: str | Path = "<array>",
                      size: tuple[int, int] | None = None) -> PhotoResult:
        """Every face of one upright RGB uint8 photo, estimated in batches (size: see find_faces)."""
        h, w = image.shape[:2]
        result = PhotoResult(Path(path), "ok", size=size or (w, h), image=image)
        boxes, scores, crops = self.find_faces(image, size)
        if not boxes:
            result.status, result.error = "no face", NO_FACE
            return result
        for start in range(0, len(crops), self.batch_size):
            ages, stds = self.backend.run(crops[start: start + self.batch_size])
            for i, age in enumerate(ages, start):
                std = None if stds is None else float(stds[i - start])
                result.faces.append(FacePrediction(boxes[i], scores[i], float(age), std))
        return result

    def find_faces(self, image: np.ndarray, size: tuple[int, int] | None = None) -> tuple[list, list, np.ndarray | None]:
        """Boxes, detector scores and crops (see crops) of every face in one upright RGB photo.

        size: the photo's full (width, height) when `image` was decoded at reduced scale (see read).

        Safe to call from several threads (agecli.pipeline does): detectors that keep state between
        calls (YuNet sets its input size, Haar's cascade is not documented as thread-safe) take turns.
        """
        w, h = size or (image.shape[1], image.shape[0])
        if self.detector is None:  # the whole image is the face; there is no detector score
            return [(0.0, 0.0, float(w), float(h))], [None], self.crops(image, None)
        if self.detector_name in THREAD_SAFE_DETECTORS:
            found = self.detector.detect(image)
        else:
            with self._detect_lock:
                found = self.detector.detect(image)
        boxes, scores = [f.box for f in found], [f.score for f in found]
        return boxes, scores, self.crops(image, boxes) if boxes else None

    def crops(self, image: np.ndarray, boxes: list | None) -> np.ndarray:
        """(N, S, S, 3) uint8 crops, S = crop_size: the geometry `age prepare` caches (boxes=None: whole image)."""
        return crop_batch(image, boxes, self.preprocess)


def failed_photo(path: Path, err: Exception) -> PhotoResult:
    """The result of a photo that could not be read or processed: a batch job reports it and carries on."""
    if isinstance(err, AgeCliError):  # ImageError: one line already naming the file
        return PhotoResult(path, "error", error=str(err))
    if os.environ.get("AGECLI_DEBUG"):
        raise err
    return PhotoResult(path, "error", error=f"{safe_name(path)}: {type(err).__name__}: {err}")


def crop_batch(image: np.ndarray, boxes: list | None, preprocess: Preprocess) -> np.ndarray:
    """(N, S, S, 3) uint8 crops, S = preprocess.crop_size (boxes=None: the whole image, as prepare crops chips)."""
    size = preprocess.crop_size
    if boxes is None:  # as prepare does for pre-cropped datasets: whole image, no margin
        return face_lib.crop_face(image, None, size, 0.0)[None]
    return np.stack([face_lib.crop_face(image, box, size, preprocess.margin, preprocess.shift) for box in boxes])
